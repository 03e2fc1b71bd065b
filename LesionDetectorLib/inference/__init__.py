"""Detection on whole scans: :class:`Detector` -> :class:`Findings` (ranked candidates, patient flag).

``Detector.from_pretrained(name_or_dir, device="auto")`` loads a verified model;
``detector(volume, progress=cb, cancel=token)`` runs the pipeline described in
:mod:`LesionDetectorLib.inference.detector`.
"""
from .detector import Detector, resolve_model_dir
from ..findings import Candidate, Findings
from .patient_flag import DEFAULT_OPERATING_POINT, OPERATING_POINT_NAMES, patient_flag, resolve_operating_point
from .progress import CancelToken, ProgressCallback

__all__ = ["Detector", "Findings", "Candidate", "CancelToken", "ProgressCallback", "patient_flag",
           "resolve_operating_point", "resolve_model_dir", "DEFAULT_OPERATING_POINT", "OPERATING_POINT_NAMES"]
