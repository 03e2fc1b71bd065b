"""Operating points for a model card: score thresholds at target sensitivities and FP rates.

A mark counts at threshold ``t`` when ``probability >= t``. Every operating point is a vertex
of the FROC curve of :mod:`.froc` (same cap, hit and exclusion rules), so its sensitivity and
FP/scan are what the FROC reports at that threshold.

* ``sensitivity_0.90`` / ``sensitivity_0.95``: the *highest* threshold whose sensitivity is
  at least the target (fewest false positives). When no threshold reaches it, the threshold is
  the lowest probability of any counted mark (every mark kept, the most the model can give)
  and ``"reached": false``.
* ``fp_per_scan_1`` / ``fp_per_scan_4``: the *lowest* threshold whose FP/scan stays at or
  below the target (most sensitive within the FP budget). When even the top-scored vertex
  exceeds it, the threshold is just above the highest probability (nothing is flagged).

The patient flag of the detection pipeline reads the ``threshold`` of these entries. This module
computes only; ``operating_points.json`` is written by :mod:`.report_luna16`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Union

import numpy as np

from .froc import CurveEvents, Matching

SENSITIVITY_TARGETS = (0.90, 0.95)
FP_TARGETS = (1.0, 4.0)
#: Threshold used when there is no mark at all: probabilities live in [0, 1].
_NO_MARK_THRESHOLD = 1.0
_EPS = 1e-12


@dataclass(frozen=True)
class OperatingPoint:
    """One model-card operating point; ``threshold`` applies as ``probability >= threshold``."""

    name: str
    threshold: float
    sensitivity: float
    fp_per_scan: float
    reached: bool

    def to_dict(self) -> Dict[str, Union[float, bool]]:
        return {"threshold": self.threshold, "sensitivity": self.sensitivity,
                "fp_per_scan": self.fp_per_scan, "reached": self.reached}


def sensitivity_key(target: float) -> str:
    return f"sensitivity_{target:.2f}"


def fp_key(target: float) -> str:
    return f"fp_per_scan_{target:g}"


class _Vertices:
    def __init__(self, events: CurveEvents):
        cum_fp, cum_tp, nodules = events.counts()
        self.thresholds = events.thresholds
        self.fps = cum_fp[0] / events.n_scans
        self.sens = cum_tp[0] / nodules[0] if nodules[0] > 0 else np.zeros_like(cum_tp[0])

    def point(self, name: str, k: int, reached: bool, threshold: Optional[float] = None) -> OperatingPoint:
        thr = float(self.thresholds[k]) if threshold is None else threshold
        return OperatingPoint(name, thr, float(self.sens[k]), float(self.fps[k]), reached)


def threshold_at_sensitivity(events: CurveEvents, target: float, name: Optional[str] = None) -> OperatingPoint:
    """Highest threshold reaching ``target`` sensitivity (module doc for the unreachable case)."""
    v = _Vertices(events)
    name = name or sensitivity_key(target)
    if v.thresholds.shape[0] == 1:
        return OperatingPoint(name, _NO_MARK_THRESHOLD, 0.0, 0.0, False)
    ok = np.flatnonzero(v.sens[1:] >= target - _EPS)
    if ok.shape[0]:
        return v.point(name, int(ok[0]) + 1, True)
    return v.point(name, v.thresholds.shape[0] - 1, False)


def threshold_at_fp_rate(events: CurveEvents, target: float, name: Optional[str] = None) -> OperatingPoint:
    """Lowest threshold whose FP/scan is ``<= target`` (module doc for the over-budget case)."""
    v = _Vertices(events)
    name = name or fp_key(target)
    if v.thresholds.shape[0] == 1:
        return OperatingPoint(name, _NO_MARK_THRESHOLD, 0.0, 0.0, True)
    within = np.flatnonzero(v.fps[1:] <= target + _EPS)
    if within.shape[0]:
        return v.point(name, int(within[-1]) + 1, True)
    above_all = float(np.nextafter(v.thresholds[1], math.inf))
    return v.point(name, 0, True, threshold=above_all)


def operating_points(matching: Matching, sensitivity_targets: Sequence[float] = SENSITIVITY_TARGETS,
                     fp_targets: Sequence[float] = FP_TARGETS) -> Dict[str, OperatingPoint]:
    """The model card's operating points, keyed ``sensitivity_0.90`` ... ``fp_per_scan_4``."""
    events = CurveEvents(matching)
    points = {sensitivity_key(t): threshold_at_sensitivity(events, t) for t in sensitivity_targets}
    points.update({fp_key(t): threshold_at_fp_rate(events, t) for t in fp_targets})
    return points


def operating_points_dict(points: Dict[str, OperatingPoint]) -> Dict[str, Dict[str, Union[float, bool]]]:
    return {k: p.to_dict() for k, p in points.items()}
