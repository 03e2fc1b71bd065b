"""Pair a prior scan's findings with the current scan's, and measure change.

Each finding is reduced to a :class:`FollowupNodule` (centre in its own scan's LPS mm, mean
diameter, volume and where those sizes came from). The prior centres are mapped into the
current scan by the registration, then pairs are chosen by a Hungarian assignment
(:func:`scipy.optimize.linear_sum_assignment`) among the pairs allowed by a size-aware gate: a
prior and a current finding may pair only when their registered distance is at most
``max(gate_min_mm, gate_factor x the larger mean diameter)`` (10 mm and 1.5 by default), so a
30 mm mass may move more than a 4 mm nodule. A pair costs its registered distance plus the
difference of the two mean diameters; leaving a finding unpaired costs half its own gate (so a
pair is made when its distance plus diameter difference is below the mean of the two findings'
own gates: 10 mm for two small nodules, more for a growing one, whose larger size widens it). So
the assignment does not pair as many findings as it can at any price: with a hundred marks per
scan, that had paired a 22 mm tumour with a 4 mm mark 21 mm away so that a vessel mark could
take the tumour's true counterpart 1.6 mm away.

Status of a pair: ``new`` (current only), ``resolved`` (prior only), ``grown`` (mean diameter
up by more than 1.5 mm, the Lung-RADS v2022 growth definition), ``shrunk`` (down by more
than 1.5 mm, the same margin the other way) or ``stable``. Volume change is in percent of the
prior volume; the volume-doubling time is ``interval x ln 2 / ln(V_current / V_prior)`` in
days (negative: the volume halving time of a shrinking nodule; null when the volumes are
equal or the interval is unknown).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from .lung_rads_followup import GROWTH_MM, NoduleForRads, followup_category

GATE_MIN_MM = 10.0
GATE_FACTOR = 1.5
STATUSES = ("new", "resolved", "stable", "grown", "shrunk")
_FORBIDDEN = 1e9


def sphere_volume_ml(diameter_mm: float) -> float:
    return math.pi / 6.0 * float(diameter_mm) ** 3 / 1000.0


@dataclass
class FollowupNodule:
    """A finding as the comparison sees it. ``center_lps`` in its own scan's LPS mm."""

    id: str
    center_lps: np.ndarray
    mean_diameter_mm: float
    volume_ml: float
    size_source: str
    characterization: Optional[Dict[str, Any]] = field(default=None, repr=False)

    def to_dict(self) -> Dict[str, Any]:
        return {"id": self.id, "center_lps": [round(float(v), 3) for v in self.center_lps],
                "mean_diameter_mm": round(float(self.mean_diameter_mm), 2),
                "volume_ml": round(float(self.volume_ml), 5), "size_source": self.size_source}

    def for_rads(self) -> NoduleForRads:
        return NoduleForRads.from_characterization(self.characterization, self.mean_diameter_mm)


def _get(obj: Any, key: str, default=None):
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def nodule_from_candidate(candidate: Any) -> FollowupNodule:
    """A :class:`~LesionDetectorLib.findings.Candidate` (or its dict) -> :class:`FollowupNodule`.

    Sizes come from the candidate's ``characterization`` block (``mean_diameter_mm``,
    ``volume_ml``) when present; otherwise from the detector's box diameter with the volume of a
    sphere of that diameter, and ``size_source`` says so.
    """
    ch = _get(candidate, "characterization")
    ch = dict(ch) if isinstance(ch, Mapping) else None
    if ch and ch.get("mean_diameter_mm") is not None:
        d = float(ch["mean_diameter_mm"])
        if ch.get("volume_ml") is not None:
            v, source = float(ch["volume_ml"]), "characterization"
        else:
            v, source = sphere_volume_ml(d), "characterization diameter; volume of a sphere of that diameter"
    else:
        d = float(_get(candidate, "diameter_mm"))
        v, source = sphere_volume_ml(d), "detector box diameter; volume of a sphere of that diameter"
    return FollowupNodule(str(_get(candidate, "id")), np.asarray(_get(candidate, "center_lps"), dtype=np.float64),
                          d, v, source, ch)


def volume_doubling_days(v_prior: float, v_current: float, interval_days: Optional[float]) -> Optional[float]:
    """``interval x ln 2 / ln(V2 / V1)``; None when undefined (no interval, equal or non-positive volumes)."""
    if interval_days is None or v_prior <= 0 or v_current <= 0 or v_prior == v_current:
        return None
    return float(interval_days) * math.log(2.0) / math.log(v_current / v_prior)


def growth_status(diameter_change_mm: float) -> str:
    if diameter_change_mm > GROWTH_MM:
        return "grown"
    if diameter_change_mm < -GROWTH_MM:
        return "shrunk"
    return "stable"


def assign(prior_in_current: np.ndarray, prior_diam: Sequence[float], current: np.ndarray,
           current_diam: Sequence[float], gate_min_mm: float = GATE_MIN_MM,
           gate_factor: float = GATE_FACTOR) -> List[tuple]:
    """Gated Hungarian assignment: ``[(i_prior, j_current, distance_mm)]`` (points in one frame, mm)."""
    prior_in_current = np.asarray(prior_in_current, dtype=np.float64).reshape(-1, 3)
    current = np.asarray(current, dtype=np.float64).reshape(-1, 3)
    if len(prior_in_current) == 0 or len(current) == 0:
        return []
    dist = np.linalg.norm(prior_in_current[:, None, :] - current[None, :, :], axis=-1)
    d_prior, d_current = np.asarray(prior_diam, float), np.asarray(current_diam, float)
    own_prior, own_current = (np.maximum(gate_min_mm, gate_factor * d) for d in (d_prior, d_current))
    allowed = dist <= np.maximum(own_prior[:, None], own_current[None, :])     # the larger diameter's gate
    n, m = dist.shape
    # Rows: prior findings, then one "unpaired" row per current finding; columns: current
    # findings, then one "unpaired" column per prior finding (the module docstring's costs).
    cost = np.full((n + m, m + n), _FORBIDDEN)
    cost[:n, :m] = np.where(allowed, dist + np.abs(d_prior[:, None] - d_current[None, :]), _FORBIDDEN)
    cost[np.arange(n), m + np.arange(n)] = 0.5 * own_prior
    cost[n + np.arange(m), np.arange(m)] = 0.5 * own_current
    cost[n:, m:] = 0.0
    rows, cols = linear_sum_assignment(cost)
    return [(int(i), int(j), float(dist[i, j])) for i, j in zip(rows, cols)
            if i < n and j < m and allowed[i, j]]


def match_nodules(prior: Sequence[FollowupNodule], current: Sequence[FollowupNodule],
                  prior_to_current: Callable[[np.ndarray], np.ndarray],
                  interval_days: Optional[float] = None, gate_min_mm: float = GATE_MIN_MM,
                  gate_factor: float = GATE_FACTOR) -> List[Dict[str, Any]]:
    """The comparison's ``pairs``: matched ones in current-finding order, then ``new``, then ``resolved``.

    ``prior_to_current`` maps ``[N, 3]`` prior LPS points to current LPS points (the registration).
    """
    mapped = prior_to_current(np.array([n.center_lps for n in prior]).reshape(-1, 3)) if prior else np.zeros((0, 3))
    matches = assign(mapped, [n.mean_diameter_mm for n in prior], np.array([n.center_lps for n in current]),
                     [n.mean_diameter_mm for n in current], gate_min_mm, gate_factor)
    by_current = {j: (i, d) for i, j, d in matches}
    matched_prior = {i for i, _, _ in matches}
    pairs = []
    for j, cur in enumerate(current):
        if j in by_current:
            i, dist = by_current[j]
            pairs.append(_pair(prior[i], cur, mapped[i], dist, interval_days))
        else:
            pairs.append(_pair(None, cur, None, None, interval_days))
    for i, pri in enumerate(prior):
        if i not in matched_prior:
            pairs.append(_pair(pri, None, mapped[i], None, interval_days))
    return pairs


def _pair(prior: Optional[FollowupNodule], current: Optional[FollowupNodule], prior_mapped, distance,
          interval_days: Optional[float]) -> Dict[str, Any]:
    d_change = v_change = vdt = None
    if prior is not None and current is not None:
        d_change = current.mean_diameter_mm - prior.mean_diameter_mm
        status = growth_status(d_change)
        v_change = 100.0 * (current.volume_ml - prior.volume_ml) / prior.volume_ml if prior.volume_ml > 0 else None
        vdt = volume_doubling_days(prior.volume_ml, current.volume_ml, interval_days)
    else:
        status = "new" if current is not None else "resolved"
    rads = followup_category(status, current.for_rads() if current is not None else None,
                             prior.for_rads() if prior is not None else None, interval_days)
    return {
        "current": current.to_dict() if current is not None else None,
        "prior": prior.to_dict() if prior is not None else None,
        "status": status,
        "diameter_change_mm": None if d_change is None else round(d_change, 2),
        "volume_change_pct": None if v_change is None else round(v_change, 1),
        "volume_doubling_days": None if vdt is None else round(vdt, 1),
        "lung_rads": rads,
        "registered_distance_mm": None if distance is None else round(distance, 2),
        "prior_center_in_current_lps": None if prior_mapped is None else [round(float(v), 3) for v in prior_mapped],
    }
