"""Detection on whole scans: :class:`Detector` -> :class:`~LesionDetectorLib.findings.Findings`.

``Detector.from_pretrained(name_or_dir, device="auto")`` loads a verified model;
``detector(volume, progress=cb, cancel=token)`` runs the pipeline described in
:mod:`LesionDetectorLib.inference.detector` through the one detection engine
(:mod:`.engine`). Names load on first use, so ``inference.patient_flag`` (used by the CLI's
option parsing) and ``inference.progress`` import without torch.
"""
import importlib

_LAZY = {
    "Detector": "detector", "resolve_model_dir": "detector",
    "DetectionEngine": "engine", "EngineSettings": "engine", "ScoreFusion": "engine",
    "DEFAULT_OPERATING_POINT": "patient_flag", "OPERATING_POINTS": "patient_flag",
    "OPERATING_POINT_NAMES": "patient_flag", "patient_flag": "patient_flag",
    "patient_probability": "patient_flag", "resolve_operating_point": "patient_flag",
    "CancelToken": "progress", "ProgressCallback": "progress",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'LesionDetectorLib.inference' has no attribute {name!r}")
