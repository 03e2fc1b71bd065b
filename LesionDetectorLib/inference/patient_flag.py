"""The patient-level flag (the paper's "True Negative Patient" idea, section VI).

The threshold comes only from the model card's ``operating_points`` (measured on its
validation set by ``LesionDetectorLib.evaluation``); a card without them gives the
status ``"unavailable"`` with the reason, never an invented threshold.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

#: The one table of operating points: model-card key -> the label users see. The keys are the ones
#: ``evaluation.operating_points`` measures (a test holds them equal); the CLI's choices come from
#: here, and the Slicer module, which must load before the library is installed, keeps its own
#: label table that a test compares with this one.
OPERATING_POINTS = {
    "sensitivity_0.95": "Sensitivity 0.95",
    "sensitivity_0.90": "Sensitivity 0.90",
    "fp_per_scan_1": "1 FP per scan",
    "fp_per_scan_4": "4 FP per scan",
}
OPERATING_POINT_NAMES = tuple(OPERATING_POINTS)
DEFAULT_OPERATING_POINT = "sensitivity_0.95"


def resolve_operating_point(card: Mapping[str, Any], name: str = DEFAULT_OPERATING_POINT) -> Dict[str, Any]:
    """``{"name", "threshold", "sensitivity", "fp_per_scan", "reason"}`` for the chosen point.

    ``threshold`` is None (with ``reason``) when the card has no operating points; an
    unknown ``name`` on a card that has some raises ``ValueError`` naming the valid ones.
    """
    points = card.get("operating_points") or {}
    if not points:
        return {"name": name, "threshold": None, "sensitivity": None, "fp_per_scan": None,
                "reason": "the model card has no operating points (the model was not evaluated on a "
                          "validation set), so no patient-level threshold exists"}
    if name not in points:
        raise ValueError(f"operating point {name!r} is not in the model card; available: {', '.join(sorted(points))}")
    point = points[name]
    try:
        threshold = float(point["threshold"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"operating point {name!r} of the model card has no numeric threshold") from exc
    return {"name": name, "threshold": threshold, "sensitivity": point.get("sensitivity"),
            "fp_per_scan": point.get("fp_per_scan"), "reason": None}


def patient_flag(scores: Sequence[float], operating_point: Mapping[str, Any]) -> Dict[str, Any]:
    """Positive when any score reaches the operating point's threshold, else likely negative.

    Returns ``{"status", "operating_point", "threshold", "max_score"}`` (+ ``"reason"`` when
    the status is ``"unavailable"``). ``max_score`` is None for a scan without candidates.
    """
    max_score: Optional[float] = float(max(scores)) if len(scores) else None
    threshold = operating_point.get("threshold")
    flag: Dict[str, Any] = {"operating_point": operating_point["name"], "threshold": threshold,
                            "max_score": max_score}
    if threshold is None:
        flag["status"] = "unavailable"
        flag["reason"] = operating_point.get("reason") or "no threshold for this operating point"
    else:
        flag["status"] = "positive" if max_score is not None and max_score >= threshold else "likely negative"
    return flag


def patient_probability(max_score: Optional[float], card: Mapping[str, Any]) -> Optional[float]:
    """Calibrated probability that the patient has a nodule, from the scan's highest score.

    The card's ``patient_probability`` holds a Platt scaling ``sigmoid(a * logit(max_score) + b)``
    fitted on its validation patients (``evaluation.calibration``); None when the card has
    none. A scan without candidates counts as ``max_score`` = 0 (the most negative evidence).
    """
    import math

    spec = card.get("patient_probability") or {}
    if spec.get("method") != "platt":
        return None
    a, b = float(spec["a"]), float(spec["b"])
    s = min(max(float(max_score or 0.0), 1e-6), 1 - 1e-6)
    z = a * (math.log(s) - math.log1p(-s)) + b
    return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0
