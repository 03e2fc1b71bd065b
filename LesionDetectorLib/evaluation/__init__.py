"""Evaluation: LUNA16 FROC/CPM (official rules), bootstrap CIs, TNP, operating points,
plots and reports, and the DeepLesion metrics of the paper's Tables V/VI.

Everything works on in-memory records; :mod:`.csv_io` reads the LUNA16 files.
"""
from .froc import CPM_FP_RATES, LUNA16_MAX_MARKS, FrocCurve, Matching, match_candidates
from .luna16_evaluation import FrocResult, evaluate_luna16, sensitivities_at
from .operating_points import OperatingPoint, operating_points
from .records import DEFAULT_DIAMETER_MM, Annotation, Prediction
from .tnp import TnpResult, tnp_at_sensitivity, tnp_curve

__all__ = ["CPM_FP_RATES", "LUNA16_MAX_MARKS", "DEFAULT_DIAMETER_MM", "Annotation", "Prediction", "FrocCurve",
           "FrocResult", "Matching", "OperatingPoint", "TnpResult", "evaluate_luna16", "match_candidates",
           "operating_points", "sensitivities_at", "tnp_at_sensitivity", "tnp_curve"]
