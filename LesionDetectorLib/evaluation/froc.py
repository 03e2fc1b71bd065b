"""LUNA16 FROC and CPM, computed by the rules of the official challenge script.

The reference is ``noduleCADEvaluationLUNA16.py`` of the LUNA16 challenge (Setio et al.,
Medical Image Analysis 42, 2017). Its rules, re-implemented here with numpy:

* **Mark cap.** Each scan keeps at most ``max_marks`` (100 in the challenge) marks, by the
  official rule of :func:`LesionDetectorLib.luna16_format.cap_marks`: marks tied with the
  101st are all dropped, so a scan can keep fewer than 100. ``max_marks <= 0`` keeps everything.
* **Hit.** A mark hits an annotation when the squared distance of the centres is strictly less
  than the squared radius. Negative diameters (``-1`` in ``annotations_excluded.csv``) become
  10 mm (:data:`~LesionDetectorLib.luna16_format.DEFAULT_DIAMETER_MM`).
* **Included nodules** (``annotations.csv``): a nodule hit by one or more marks is one true
  positive whose probability is the highest of those marks; the other marks on it are not
  counted at all. A nodule without a hit counts in the denominator only.
* **Excluded findings** (``annotations_excluded.csv``): marks on them are neither TP nor FP.
* **A mark hitting two included nodules** counts as a hit for *both* (the official script
  matches every nodule against the full mark list and only prints "This is strange"); a mark
  hitting an included and an excluded finding is a hit of the included one. So: a mark is a
  false positive exactly when it hits no annotation of either list.
* **Scans** are those of ``seriesuids.csv``; scans without marks still count in FP/scan;
  annotations of other scans are ignored (so one full ``annotations.csv`` serves every fold).
* **Curve.** The official script feeds TPs and FPs to ``sklearn.metrics.roc_curve`` and
  rescales: at each distinct probability ``t`` (descending) the vertex is
  ``(#FP with p >= t / #scans, #TP with p >= t / #nodules)``, after a ``(0, 0)`` vertex.
  Ties in probability enter one vertex together. ``drop_intermediate`` only removes collinear
  vertices; :class:`FrocCurve` keeps them all, the official reading below drops them too.
* **Sensitivity at r FP/scan, official rule** (:data:`OFFICIAL`, the default). The script turns
  the ``roc_curve`` output into floats, ``fps = fpr * #FP / #scans`` and
  ``sens = tpr * #TP / #nodules``, and interpolates them with ``np.interp`` on its plot grid
  ``np.linspace(1/8, 8, 10001)`` (:data:`OFFICIAL_FP_GRID`); the CPM points are read at the grid
  points nearest 1/8 ... 8, as the copies of the script that print the CPM do (DeepLung's loop
  accepts the grid point within 3e-4 of each rate, which is the nearest one). Only 1/8 and 8 lie
  on the grid; 4 is read at 4.000 29, for instance. :meth:`CurveEvents.official_sensitivity_at` repeats that arithmetic operation for
  operation, including ``roc_curve``'s ``drop_intermediate``, so the CPM equals the script's to
  the last digit (``Testing/Lib/test_froc.py`` holds a line-by-line port and compares).
* **Sensitivity at r FP/scan, exact rule** (:data:`EXACT`, an option). ``np.interp(r, fps, sens)``
  at the rate itself, with FP counts compared to ``r * #scans`` exactly: linear between
  vertices, the top of a vertical run when ``r`` equals a vertex's FP rate, and the last
  sensitivity beyond the curve's end. It differs from the official number by the grid offset
  (up to 0.018 CPM, 28 of the 60 randomized 3-40-scan cases of the test differ by more than 1e-9).
  Plots, operating points and the DeepLesion tables read the curve this way.
* CPM is the mean over r in 1/8 ... 8.

Deviation, documented: with no detected nodule but some FPs the official ``roc_curve`` gives
NaN sensitivities; here they are 0. With no included nodule at all the FROC is undefined and
:func:`match_candidates` callers get ``EvaluationInputError`` from :func:`require_nodules`.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import EvaluationInputError
from ..luna16_format import LUNA16_MAX_MARKS, Annotation, Prediction, cap_marks

#: FP-per-scan rates of the LUNA16 competition performance metric (CPM).
CPM_FP_RATES: Tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

#: The official script's FROC grid, ``np.linspace(FROC_minX, FROC_maxX, num=10001)``.
OFFICIAL_FP_GRID = np.linspace(0.125, 8.0, num=10001)

#: Names of the two ways of reading sensitivity at an FP rate (module doc).
OFFICIAL = "official"
EXACT = "exact"
FROC_RULES = (OFFICIAL, EXACT)


def official_grid_rates(fp_rates: Sequence[float]) -> np.ndarray:
    """The official grid point nearest each rate (the script reads the CPM points there)."""
    rates = np.asarray(fp_rates, dtype=np.float64).reshape(-1)
    lo, hi = OFFICIAL_FP_GRID[0], OFFICIAL_FP_GRID[-1]
    if rates.size and (rates.min() < lo or rates.max() > hi):
        raise ValueError(f"the official FROC grid spans {lo:g} .. {hi:g} FP/scan; got {rates.tolist()}")
    return OFFICIAL_FP_GRID[np.abs(OFFICIAL_FP_GRID[None, :] - rates[:, None]).argmin(axis=1)]


def check_rule(rule: str) -> str:
    if rule not in FROC_RULES:
        raise ValueError(f"unknown FROC rule {rule!r}; expected one of {', '.join(FROC_RULES)}")
    return rule


@dataclass(frozen=True)
class Matching:
    """Outcome of matching marks to annotations, one FROC "event" per TP nodule or FP mark.

    ``S`` scans, ``L`` included nodules, ``E`` events (detected nodules + false positives).

    Attributes:
        scan_ids: ``[S]`` series UIDs in evaluation order.
        event_scan: ``[E]`` int scan index of each event.
        event_prob: ``[E]`` float probability (a TP event carries its nodule's best hit).
        event_nodule: ``[E]`` int nodule index of a TP event, ``-1`` for a false positive.
        nodule_scan: ``[L]`` int scan index of each included nodule.
        nodule_prob: ``[L]`` best hit probability, NaN when the nodule was missed.
        scan_max_prob: ``[S]`` highest kept mark probability, ``-inf`` for a scan without marks.
        scan_n_nodules: ``[S]`` int included nodules per scan.
        counts: bookkeeping as in the official ``CADAnalysis.txt`` (marks read, kept after the
            cap, ignored on excluded findings, duplicate hits, TPs, FPs, FNs).
    """

    scan_ids: Tuple[str, ...]
    event_scan: np.ndarray
    event_prob: np.ndarray
    event_nodule: np.ndarray
    nodule_scan: np.ndarray
    nodule_prob: np.ndarray
    scan_max_prob: np.ndarray
    scan_n_nodules: np.ndarray
    counts: Dict[str, int]

    @property
    def n_scans(self) -> int:
        return len(self.scan_ids)

    @property
    def n_nodules(self) -> int:
        return int(self.nodule_scan.shape[0])

    @property
    def event_is_tp(self) -> np.ndarray:
        return self.event_nodule >= 0


@dataclass(frozen=True)
class FrocCurve:
    """FROC vertices ``[K+1]``: vertex 0 is ``(0, 0)`` at threshold ``+inf``, then one per
    distinct probability, descending. ``fps`` is FP/scan, ``sensitivity`` a fraction."""

    fps: np.ndarray
    sensitivity: np.ndarray
    thresholds: np.ndarray


def _points(items: Iterable, fields: Tuple[str, ...]) -> np.ndarray:
    return np.array([[getattr(it, f) for f in fields] for it in items], dtype=np.float64).reshape(-1, len(fields))


def match_candidates(annotations: Sequence[Annotation], excluded: Sequence[Annotation],
                     seriesuids: Sequence[str], predictions: Sequence[Prediction],
                     max_marks: int = LUNA16_MAX_MARKS) -> Matching:
    """Match marks to annotations scan by scan with the official LUNA16 rules (module doc).

    Args:
        annotations: included nodules (``annotations.csv``); rows of unlisted scans are ignored.
        excluded: findings whose marks are ignored (``annotations_excluded.csv``).
        seriesuids: the scans evaluated; duplicates are an error.
        predictions: marks; a mark of an unlisted scan is an error (a typo would otherwise
            silently drop a scan's marks and inflate sensitivity loss).
        max_marks: per-scan cap, ``<= 0`` for none.
    """
    scan_ids = tuple(str(s) for s in seriesuids)
    index = {uid: i for i, uid in enumerate(scan_ids)}
    if len(index) != len(scan_ids):
        raise EvaluationInputError("seriesuids: a series UID is listed twice")
    if not scan_ids:
        raise EvaluationInputError("seriesuids: no scans to evaluate")

    included_by_scan: Dict[int, List[Annotation]] = defaultdict(list)
    excluded_by_scan: Dict[int, List[Annotation]] = defaultdict(list)
    marks_by_scan: Dict[int, List[Prediction]] = defaultdict(list)
    for ann in annotations:
        if ann.seriesuid in index:
            included_by_scan[index[ann.seriesuid]].append(ann)
    for ann in excluded:
        if ann.seriesuid in index:
            excluded_by_scan[index[ann.seriesuid]].append(ann)
    for n, pred in enumerate(predictions):
        if pred.seriesuid not in index:
            raise EvaluationInputError(
                f"predictions: mark {n + 1} names series {pred.seriesuid!r}, which is not among the evaluated scans")
        if not np.isfinite(pred.probability):
            raise EvaluationInputError(f"predictions: mark {n + 1} has a non-finite probability")
        marks_by_scan[index[pred.seriesuid]].append(pred)

    ev_scan: List[np.ndarray] = []
    ev_prob: List[np.ndarray] = []
    ev_nod: List[np.ndarray] = []
    nod_scan: List[int] = []
    nod_prob: List[float] = []
    scan_max = np.full(len(scan_ids), -np.inf)
    scan_nod = np.zeros(len(scan_ids), dtype=np.int64)
    counts = dict(marks=0, kept_marks=0, ignored_on_excluded=0, duplicate_hits=0,
                  true_positives=0, false_positives=0, false_negatives=0)

    for s in range(len(scan_ids)):
        marks = marks_by_scan.get(s, [])
        probs = np.array([m.probability for m in marks], dtype=np.float64)
        keep = cap_marks(probs, max_marks)
        probs = probs[keep]
        centres = _points((m for m, k in zip(marks, keep) if k), ("x", "y", "z"))
        counts["marks"] += len(marks)
        counts["kept_marks"] += int(probs.shape[0])
        if probs.shape[0]:
            scan_max[s] = probs.max()

        incl = included_by_scan.get(s, [])
        excl = excluded_by_scan.get(s, [])
        scan_nod[s] = len(incl)
        is_fp = np.ones(probs.shape[0], dtype=bool)

        if incl:
            hits = _hits(centres, incl)                                     # [L_s, M]
            is_fp &= ~hits.any(axis=0)
            for j in range(len(incl)):
                nodule_index = len(nod_scan)
                nod_scan.append(s)
                if hits[j].any():
                    best = float(probs[hits[j]].max())
                    nod_prob.append(best)
                    counts["true_positives"] += 1
                    counts["duplicate_hits"] += int(hits[j].sum()) - 1
                    ev_scan.append(np.array([s]))
                    ev_prob.append(np.array([best]))
                    ev_nod.append(np.array([nodule_index]))
                else:
                    nod_prob.append(np.nan)
                    counts["false_negatives"] += 1
        if excl:
            on_excluded = _hits(centres, excl).any(axis=0) & is_fp
            counts["ignored_on_excluded"] += int(on_excluded.sum())
            is_fp &= ~on_excluded

        n_fp = int(is_fp.sum())
        counts["false_positives"] += n_fp
        ev_scan.append(np.full(n_fp, s, dtype=np.int64))
        ev_prob.append(probs[is_fp])
        ev_nod.append(np.full(n_fp, -1, dtype=np.int64))

    def cat(parts, dtype):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

    return Matching(scan_ids=scan_ids, event_scan=cat(ev_scan, np.int64), event_prob=cat(ev_prob, np.float64),
                    event_nodule=cat(ev_nod, np.int64), nodule_scan=np.array(nod_scan, dtype=np.int64),
                    nodule_prob=np.array(nod_prob, dtype=np.float64), scan_max_prob=scan_max,
                    scan_n_nodules=scan_nod, counts=counts)


def _hits(centres: np.ndarray, findings: Sequence[Annotation]) -> np.ndarray:
    """``[F, M]`` bool: mark m lies strictly inside finding f's hit radius."""
    f_xyz = _points(findings, ("x", "y", "z"))
    r2 = np.array([a.hit_radius_mm for a in findings], dtype=np.float64) ** 2
    d2 = ((f_xyz[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1)
    return d2 < r2[:, None]


def require_nodules(matching: Matching, what: str = "annotations") -> None:
    """FROC sensitivity divides by the nodule count; refuse an evaluation set without nodules."""
    if matching.n_nodules == 0:
        raise EvaluationInputError(
            f"{what}: the evaluated scans carry no annotated nodule, so sensitivity (FROC/CPM) is undefined")


class CurveEvents:
    """Events sorted by descending probability and grouped into distinct-threshold vertices.

    Shared by the point estimate, the bootstrap (with per-scan weights) and the operating
    points, so every number comes from the same vertices.
    """

    def __init__(self, matching: Matching, nodule_mask: Optional[np.ndarray] = None):
        order = np.argsort(-matching.event_prob, kind="stable")
        self.prob = matching.event_prob[order]
        self.scan = matching.event_scan[order]
        nodule = matching.event_nodule[order]
        self.is_fp = nodule < 0
        self.is_tp = nodule >= 0
        if nodule_mask is not None:
            mask = np.asarray(nodule_mask, dtype=bool).reshape(-1)
            if mask.shape[0] != matching.n_nodules:
                raise ValueError(f"nodule_mask has {mask.shape[0]} entries for {matching.n_nodules} nodules")
            if mask.shape[0]:
                self.is_tp &= mask[np.maximum(nodule, 0)]
            nodules_in = np.bincount(matching.nodule_scan[mask], minlength=matching.n_scans)
        else:
            nodules_in = matching.scan_n_nodules
        self.scan_nodules = nodules_in.astype(np.float64)
        self.n_scans = matching.n_scans
        # Index of the last event of each distinct probability: one vertex per index.
        if self.prob.shape[0]:
            self.group_end = np.flatnonzero(np.r_[self.prob[1:] != self.prob[:-1], True])
        else:
            self.group_end = np.zeros(0, dtype=np.int64)
        self.thresholds = np.r_[np.inf, self.prob[self.group_end]]

    def counts(self, weights: Optional[np.ndarray] = None,
               n_groups: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cumulative FP and TP counts per vertex and the nodule total.

        Args:
            weights: ``[B, S]`` multiplicity of each scan (bootstrap draw), or None for ones.
            n_groups: only the first ``n_groups`` distinct thresholds (a prefix of the curve).
        Returns:
            ``cum_fp [B, K+1]``, ``cum_tp [B, K+1]``, ``nodules [B]`` (B = 1 without weights).
        """
        ends = self.group_end if n_groups is None else self.group_end[:n_groups]
        n_events = int(ends[-1]) + 1 if ends.shape[0] else 0
        scan = self.scan[:n_events]
        if weights is None:
            w_ev = np.ones((1, n_events), dtype=np.float32)
            nodules = np.array([self.scan_nodules.sum()])
        else:
            # float32 holds these integer counts exactly (< 2**24) at half the memory traffic.
            w_ev = weights.astype(np.float32, copy=False)[:, scan]
            nodules = weights @ self.scan_nodules
        cum_fp = np.cumsum(w_ev * self.is_fp[:n_events], axis=1, dtype=np.float64)[:, ends]
        cum_tp = np.cumsum(w_ev * self.is_tp[:n_events], axis=1, dtype=np.float64)[:, ends]
        zero = np.zeros((w_ev.shape[0], 1))
        return np.hstack([zero, cum_fp]), np.hstack([zero, cum_tp]), nodules

    def curve(self) -> FrocCurve:
        cum_fp, cum_tp, nodules = self.counts()
        return FrocCurve(fps=cum_fp[0] / self.n_scans, sensitivity=_safe_div(cum_tp[0], nodules[0]),
                         thresholds=self.thresholds)

    def sensitivity_at(self, fp_rates: Sequence[float], weights: Optional[np.ndarray] = None) -> np.ndarray:
        """``[B, R]`` sensitivity at each FP/scan rate (``np.interp`` semantics, module doc)."""
        x = np.asarray(fp_rates, dtype=np.float64) * self.n_scans
        n_total = self.group_end.shape[0]
        # Interpolating at x needs the vertices only up to the first one past x; with 100 marks
        # per scan the 8 FP/scan point sits in the top few percent, so a prefix of the curve,
        # grown until every row has passed max(x), gives the same numbers far faster.
        unweighted_fp = np.cumsum(self.is_fp)[self.group_end] if n_total else np.zeros(0)
        n_groups = min(n_total, int(np.searchsorted(unweighted_fp, 2.0 * x.max(initial=0.0) + 64)) + 1)
        while True:
            cum_fp, cum_tp, nodules = self.counts(weights, n_groups)
            if n_groups >= n_total or cum_fp[:, -1].min() > x.max(initial=0.0):
                break
            n_groups = min(n_total, 2 * n_groups)
        tp = interp_rows(cum_fp, cum_tp, x)
        return _safe_div(tp, nodules[:, None])

    def official_sensitivity_at(self, fp_rates: Sequence[float], weights: Optional[np.ndarray] = None,
                                snap: bool = True) -> np.ndarray:
        """``[B, R]`` sensitivity read as the official script reads it (module doc).

        Args:
            fp_rates: FP/scan rates; with ``snap`` each is replaced by its nearest
                :data:`OFFICIAL_FP_GRID` point, as the script does for the CPM points.
            weights: ``[B, S]`` scan multiplicities (bootstrap), None for ones.
            snap: False to interpolate at the given rates themselves (a curve band).
        """
        q = official_grid_rates(fp_rates) if snap else np.asarray(fp_rates, dtype=np.float64).reshape(-1)
        w = np.ones((1, self.n_scans)) if weights is None else np.asarray(weights, dtype=np.float64)
        # Totals over the whole curve: the script divides by the last roc_curve vertex.
        fp_per_scan = np.bincount(self.scan[self.is_fp], minlength=self.n_scans).astype(np.float64)
        tp_per_scan = np.bincount(self.scan[self.is_tp], minlength=self.n_scans).astype(np.float64)
        total_fp, total_tp, nodules = w @ fp_per_scan, w @ tp_per_scan, w @ self.scan_nodules
        # Only the vertices up to two past the largest query matter (see sensitivity_at); two,
        # so that drop_intermediate sees the same neighbours as on the full curve.
        n_total = self.group_end.shape[0]
        need = float(q.max(initial=0.0)) * self.n_scans
        unweighted_fp = np.cumsum(self.is_fp)[self.group_end] if n_total else np.zeros(0)
        n_groups = min(n_total, int(np.searchsorted(unweighted_fp, 2.0 * need + 64)) + 2)
        while True:
            cum_fp, cum_tp, _ = self.counts(w, n_groups)
            past = (cum_fp > need).sum(axis=1)
            if n_groups >= n_total or past.min() >= 2:
                break
            n_groups = min(n_total, 2 * n_groups)
        out = np.empty((w.shape[0], q.shape[0]))
        for b in range(w.shape[0]):
            out[b] = _official_interp(cum_fp[b, 1:], cum_tp[b, 1:], total_fp[b], total_tp[b], nodules[b],
                                      self.n_scans, q)
        return out


def _official_interp(fp: np.ndarray, tp: np.ndarray, total_fp: float, total_tp: float, n_nodules: float,
                     n_scans: int, q: np.ndarray) -> np.ndarray:
    """One curve, the official way: ``roc_curve`` (with ``drop_intermediate``) on the cumulative
    counts ``fp``/``tp`` of the distinct thresholds, the script's float arithmetic, ``np.interp``.

    Deviations (module doc): no detected nodule gives 0 where the script gives NaN; no nodule
    at all gives NaN (a bootstrap draw without nodules, left out of the intervals).
    """
    if n_nodules <= 0:
        return np.full(q.shape[0], np.nan)
    if fp.shape[0] > 2:
        keep = np.r_[True, np.logical_or(np.diff(fp, 2), np.diff(tp, 2)), True]
        fp, tp = fp[keep], tp[keep]
    fp, tp = np.r_[0.0, fp], np.r_[0.0, tp]
    # Same operations in the same order as roc_curve and computeFROC, so the floats agree.
    fps = np.zeros(fp.shape[0]) if total_fp <= 0 else (fp / total_fp) * total_fp / n_scans
    sens = np.zeros(tp.shape[0]) if total_tp <= 0 else (tp / total_tp) * total_tp / n_nodules
    return np.interp(q, fps, sens)


def _safe_div(num: np.ndarray, den) -> np.ndarray:
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def interp_rows(xp: np.ndarray, fp: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Row-wise ``np.interp(x, xp[b], fp[b])`` for non-decreasing rows, vectorised.

    Args:
        xp: ``[B, K]`` non-negative, non-decreasing per row, ``xp[:, 0] == 0`` (FP counts).
        fp: ``[B, K]`` values at the vertices (TP counts).
        x: ``[Q]`` non-negative query points.
    Returns:
        ``[B, Q]``. Like ``np.interp``: at a repeated ``xp`` value the last vertex wins, and
        queries past a row's end take its last value.
    """
    b, k = xp.shape
    span = float(xp.max()) + 1.0 if xp.size else 1.0
    # Rows are laid end to end with a gap, so one searchsorted serves every row; queries are
    # clipped below the gap so that none leaks into the next row.
    offsets = np.arange(b, dtype=np.float64)[:, None] * (span + 1.0)
    flat = (xp + offsets).ravel()
    q = np.minimum(np.asarray(x, dtype=np.float64)[None, :], span - 0.5) + offsets
    j = np.searchsorted(flat, q.ravel(), side="right").reshape(b, -1) - 1
    j -= np.arange(b)[:, None] * k
    j = np.clip(j, 0, k - 1)
    nxt = np.minimum(j + 1, k - 1)
    rows = np.arange(b)[:, None]
    x0, x1 = xp[rows, j], xp[rows, nxt]
    y0, y1 = fp[rows, j], fp[rows, nxt]
    qx = np.broadcast_to(np.asarray(x, dtype=np.float64)[None, :], j.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(x1 > x0, (qx - x0) / np.where(x1 > x0, x1 - x0, 1.0), 0.0)
    return y0 + (y1 - y0) * frac


def cpm(sensitivities: Sequence[float]) -> float:
    """Competition performance metric: the mean of the sensitivities at the 7 FP rates."""
    return float(np.mean(sensitivities))
