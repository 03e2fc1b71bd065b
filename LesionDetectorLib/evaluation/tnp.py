"""True Negative Patient score (the paper, section IV-G and Fig. 4c).

``TNP = N_TNP / N_NP``: among the *negative patients* — evaluated scans without any nodule
in ``annotations.csv`` (a scan whose only findings are in ``annotations_excluded.csv`` is
negative, as in LUNA16's 287 nodule-free scans of the paper) — the share in which no mark
reaches the threshold that gives the target sensitivity (default 0.95). A mark "reaches" the
threshold when ``probability >= threshold``, the rule the patient flag uses; every kept mark
counts, including marks on excluded findings, because the flag cannot know about them.
The threshold comes from :func:`.operating_points.threshold_at_sensitivity`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .froc import CurveEvents, Matching
from .operating_points import OperatingPoint, threshold_at_sensitivity


@dataclass(frozen=True)
class TnpResult:
    """TNP at one operating point; ``tnp`` is NaN when no negative patient was evaluated."""

    target_sensitivity: float
    operating_point: OperatingPoint
    n_negative: int
    n_true_negative: int

    @property
    def tnp(self) -> float:
        return self.n_true_negative / self.n_negative if self.n_negative else math.nan


@dataclass(frozen=True)
class TnpCurve:
    """One point per FROC vertex (threshold descending): ``[K]`` arrays."""

    thresholds: np.ndarray
    sensitivity: np.ndarray
    tnp: np.ndarray


def _negative_max_scores(matching: Matching) -> np.ndarray:
    return np.sort(matching.scan_max_prob[matching.scan_n_nodules == 0])


def tnp_at_sensitivity(matching: Matching, target: float = 0.95) -> TnpResult:
    """TNP at the highest threshold reaching ``target`` sensitivity."""
    op = threshold_at_sensitivity(CurveEvents(matching), target, name=f"sensitivity_{target:.2f}")
    neg = _negative_max_scores(matching)
    return TnpResult(target, op, int(neg.shape[0]), int(np.count_nonzero(neg < op.threshold)))


def tnp_curve(matching: Matching) -> TnpCurve:
    """TNP against sensitivity over every FROC vertex (for the TNP-vs-sensitivity plot)."""
    events = CurveEvents(matching)
    cum_fp, cum_tp, nodules = events.counts()
    thresholds = events.thresholds[1:]
    sens = cum_tp[0, 1:] / nodules[0] if nodules[0] > 0 else np.zeros(thresholds.shape[0])
    neg = _negative_max_scores(matching)
    if neg.shape[0]:
        tnp = np.searchsorted(neg, thresholds, side="left") / neg.shape[0]
    else:
        tnp = np.full(thresholds.shape[0], np.nan)
    return TnpCurve(thresholds=thresholds, sensitivity=sens, tnp=tnp)
