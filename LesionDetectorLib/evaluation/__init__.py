"""Evaluation: LUNA16 FROC/CPM (official rules), bootstrap CIs, TNP, operating points,
plots and reports, and the DeepLesion metrics of the paper's Tables V/VI.

Everything works on in-memory records; :mod:`LesionDetectorLib.luna16_format` reads and writes the
LUNA16 files.
"""
from ..luna16_format import DEFAULT_DIAMETER_MM, LUNA16_MAX_MARKS, Annotation, Prediction
from .froc import CPM_FP_RATES, FrocCurve, Matching, match_candidates
from .luna16_evaluation import FrocResult, evaluate_luna16, sensitivities_at
from .operating_points import OperatingPoint, operating_points
from .tnp import TnpResult, tnp_at_sensitivity, tnp_curve

__all__ = ["CPM_FP_RATES", "LUNA16_MAX_MARKS", "DEFAULT_DIAMETER_MM", "Annotation", "Prediction", "FrocCurve",
           "FrocResult", "Matching", "OperatingPoint", "TnpResult", "evaluate_luna16", "match_candidates",
           "operating_points", "sensitivities_at", "tnp_at_sensitivity", "tnp_curve"]
