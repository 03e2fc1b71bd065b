"""Calibration of a model card on validation scans: score fusion, operating points, patient probability.

Everything runs through the detection engine of the :class:`~LesionDetectorLib.inference.Detector`
that will apply the card: :func:`collect_marks` keeps each scan's raw engine rows (every owned
detection before fusion and NMS), so each candidate fusion is scored by exactly the
post-processing the detector applies (``engine.postprocess_rows``), with the same listing
floor and per-scan cap as ``lesion-detector evaluate --data``.

1. **Fusion.** Candidates: the paper's ``mean``, ``fprn``, ``geometric`` and a ``logistic``
   fusion whose weights are fitted on the validation marks (labels by the LUNA16 hit rule,
   marks on excluded findings left out). The chosen one has the highest validation CPM; ties
   within ``cpm_tolerance`` go to the higher TNP at sensitivity 0.95, then to ``mean``.
2. **Operating points** of the chosen fusion (``evaluate_luna16``'s, as the card stores them).
3. **Patient probability**: Platt scaling ``sigmoid(a * logit(max score) + b)`` of each validation
   patient's highest mark, labelled by whether the patient has a nodule.

Logistic fits are a few Newton steps with a small L2 penalty (three parameters: a library for
them would be a heavier dependency than the twenty lines here).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..inference.engine import EngineSettings, ScoreFusion, postprocess_rows

_EPS = 1e-6


@dataclass
class ScanMarks:
    """One validation scan: raw engine rows in crop voxels, the crop -> LPS affine ``[3, 4]``,
    and its truth as LUNA16 rows ``(uid, x, y, z, diameter)``."""
    uid: str
    raw_rows: np.ndarray
    affine: np.ndarray
    annotations: List[tuple]
    excluded: List[tuple]

    def to_world(self, zyx: np.ndarray) -> np.ndarray:
        from ..coordinates import apply_crop_affine

        return apply_crop_affine(self.affine, zyx)


def collect_marks(detector, dataset, seriesuids: Sequence[str], progress: bool = False) -> List[ScanMarks]:
    """Run ``detector``'s preprocessing and engine over the listed scans of a LUNA16-layout
    ``dataset`` (``data.luna16_dataset.Luna16Dataset``); lung masks are used when present."""
    from ..errors import NoLungsFoundError
    from ..io import read_volume
    from ..preprocess import PAD_HU, normalize_hu

    out = []
    for k, uid in enumerate(seriesuids):
        scan = dataset.scan(uid)
        volume = dataset.read(uid)
        mask = read_volume(str(scan.lung_mask_path), allow_non_ct=True) if scan.lung_mask_path else None
        annotations = [(uid, *a) for a in _truth_rows(dataset.annotations(uid))]
        excluded = [(uid, *a) for a in _truth_rows(dataset.excluded(uid))]
        try:
            pre = detector.preprocess(volume, mask)
        except NoLungsFoundError:
            out.append(ScanMarks(uid, np.zeros((0, 7)), np.concatenate([np.eye(3), np.zeros((3, 1))], 1),
                                 annotations, excluded))
            continue
        pad = float(normalize_hu(np.float32(PAD_HU), pre.hu_window))
        result = detector.engine.detect(pre.image, pad)
        out.append(ScanMarks(uid, result.raw_rows, pre.crop_to_world_affine(), annotations, excluded))
        if progress:
            print(f"calibration: {k + 1}/{len(seriesuids)} {uid[-16:]}: {len(result.rows)} marks", flush=True)
    return out


def _truth_rows(records) -> List[Tuple[float, float, float, float]]:
    """``Luna16Dataset.annotations(uid)`` rows ``[x, y, z, diameter]`` as tuples."""
    return [tuple(float(v) for v in r[:4]) for r in np.asarray(records, dtype=np.float64).reshape(-1, 4)]


def predictions_for(scans: Sequence[ScanMarks], settings: EngineSettings, min_score: float = 0.0,
                    max_marks: Optional[int] = 100) -> Tuple[List[tuple], Dict[str, np.ndarray]]:
    """LUNA16 predictions ``(uid, x, y, z, score)`` of ``settings`` and the post-processed rows per scan."""
    preds, per_scan = [], {}
    for s in scans:
        rows = postprocess_rows(s.raw_rows, settings)
        rows = rows[rows[:, 4] >= min_score]
        if max_marks is not None:
            rows = rows[:max_marks]
        per_scan[s.uid] = rows
        world = s.to_world(rows[:, :3]) if len(rows) else np.zeros((0, 3))
        preds += [(s.uid, float(w[0]), float(w[1]), float(w[2]), float(r[4])) for w, r in zip(world, rows)]
    return preds, per_scan


def _labels(scan: ScanMarks, rows: np.ndarray) -> np.ndarray:
    """Per row: 1 hit a nodule, 0 false positive, -1 on an excluded finding only (ignored)."""
    world = scan.to_world(rows[:, :3]) if len(rows) else np.zeros((0, 3))
    out = np.zeros(len(rows))

    def inside(truth):
        if not truth:
            return np.zeros(len(rows), dtype=bool)
        t = np.asarray([a[1:5] for a in truth], dtype=np.float64)
        diameter = np.where(t[:, 3] > 0, t[:, 3], 10.0)      # LUNA16: -1 (unknown) counts as 10 mm
        d2 = ((world[:, None, :] - t[None, :, :3]) ** 2).sum(-1)
        return (d2 < (diameter[None, :] / 2) ** 2).any(axis=1)

    hit, excl = inside(scan.annotations), inside(scan.excluded)
    out[hit] = 1
    out[~hit & excl] = -1
    return out


def fit_logistic(features: np.ndarray, labels: np.ndarray, l2: float = 1e-2, steps: int = 60) -> np.ndarray:
    """Weights ``[F + 1]`` (last: bias) of an L2-penalised logistic regression, by Newton's method."""
    x = np.concatenate([np.asarray(features, dtype=np.float64), np.ones((len(features), 1))], axis=1)
    y = np.asarray(labels, dtype=np.float64)
    w = np.zeros(x.shape[1])
    penalty = np.full(x.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -40, 40)))
        grad = x.T @ (p - y) + penalty * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return w


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def fit_logistic_fusion(scans: Sequence[ScanMarks], base: EngineSettings) -> ScoreFusion:
    """``logistic`` fusion fitted on the marks the ``mean`` fusion lists (hit = 1, FP = 0)."""
    feats, labels = [], []
    for s in scans:
        rows = postprocess_rows(s.raw_rows, replace(base, fusion=ScoreFusion("mean")))[:100]
        lab = _labels(s, rows)
        keep = lab >= 0
        feats.append(np.stack([_logit(rows[keep, 5]), _logit(rows[keep, 6])], axis=1))
        labels.append(lab[keep])
    x, y = np.concatenate(feats), np.concatenate(labels)
    if y.min(initial=1) == y.max(initial=0):
        raise ValueError("the validation marks are all hits or all false positives: no fusion can be fitted")
    a, b, c = fit_logistic(x, y)
    return ScoreFusion("logistic", (float(a), float(b), float(c)))


@dataclass
class Calibration:
    fusion: ScoreFusion
    candidates: Dict[str, Dict[str, Any]]            # method -> {"cpm", "tnp", "sensitivities", ...}
    operating_points: Dict[str, Dict[str, Any]]
    validation: Dict[str, Any]
    patient_probability: Optional[Dict[str, Any]]
    result: Any = field(repr=False, default=None)    # the chosen fusion's FrocResult


def calibrate(scans: Sequence[ScanMarks], base: EngineSettings, min_score: float = 0.0, max_marks: int = 100,
              methods: Sequence[str] = ("mean", "fprn", "geometric", "logistic"),
              cpm_tolerance: float = 0.005) -> Calibration:
    """Choose and calibrate the fusion on ``scans`` (see the module docstring)."""
    from .luna16_evaluation import evaluate_luna16
    from .operating_points import operating_points_dict

    annotations = [a for s in scans for a in s.annotations]
    excluded = [e for s in scans for e in s.excluded]
    uids = [s.uid for s in scans]
    if not annotations:
        raise ValueError("calibration needs validation scans with nodules")
    candidates: Dict[str, Dict[str, Any]] = {}
    results = {}
    for method in methods:
        try:
            fusion = fit_logistic_fusion(scans, base) if method == "logistic" else ScoreFusion(method)
        except ValueError as exc:
            # e.g. every listed mark a hit or a false positive: that fusion cannot be fitted, the others can
            candidates[method] = {"fusion": None, "cpm": float("nan"), "tnp": 0.0, "skipped": str(exc)}
            continue
        settings = replace(base, fusion=fusion)
        preds, per_scan = predictions_for(scans, settings, min_score, max_marks)
        result = evaluate_luna16(annotations, excluded, uids, preds, max_marks=max_marks, bootstrap=0)
        results[method] = (fusion, result, per_scan)
        candidates[method] = {"fusion": fusion.to_dict(), "cpm": float(result.cpm),
                              "tnp": _tnp(result), "tnp_reached": bool(result.tnp.operating_point.reached),
                              "sensitivities": {f"{k:g}": float(v) for k, v in result.sensitivities.items()}}
    fitted = [m for m in methods if m in results]
    if not fitted:
        raise ValueError("no score fusion could be evaluated on the validation scans")
    order = sorted(fitted, key=lambda m: (-candidates[m]["cpm"], m != "mean"))
    best = order[0]
    for m in order[1:]:
        if (candidates[best]["cpm"] - candidates[m]["cpm"] <= cpm_tolerance
                and candidates[m]["tnp"] > candidates[best]["tnp"] + 1e-9):
            best = m
    fusion, result, per_scan = results[best]
    probability = fit_patient_probability(scans, per_scan)
    validation = {"cpm": float(result.cpm), "sensitivities": {f"{k:g}": float(v) for k, v in result.sensitivities.items()},
                  "n_scans": len(scans), "n_nodules": len(annotations),
                  "tnp": {"tnp": _tnp(result), "threshold": float(result.tnp.operating_point.threshold),
                          "reached": bool(result.tnp.operating_point.reached),
                          "sensitivity": float(result.tnp.operating_point.sensitivity),
                          "fp_per_scan": float(result.tnp.operating_point.fp_per_scan),
                          "n_negative": int(result.tnp.n_negative),
                          "n_true_negative": int(result.tnp.n_true_negative)}}
    return Calibration(fusion, candidates, operating_points_dict(result.operating_points), validation,
                       probability, result)


def _tnp(result) -> float:
    """TNP as a number for comparisons (0 when the set has no negative patient)."""
    value = float(result.tnp.tnp)
    return value if math.isfinite(value) else 0.0


def fit_patient_probability(scans: Sequence[ScanMarks], per_scan: Dict[str, np.ndarray]) -> Optional[Dict[str, Any]]:
    """Platt scaling of each patient's highest score; None without both kinds of patient."""
    x, y = [], []
    for s in scans:
        rows = per_scan[s.uid]
        top = float(rows[0, 4]) if len(rows) else 0.0
        x.append(_logit(np.array([top]))[0])
        y.append(1.0 if s.annotations else 0.0)
    y = np.asarray(y)
    if y.min() == y.max():
        return None
    a, b = fit_logistic(np.asarray(x)[:, None], y, l2=1e-1)
    p = 1.0 / (1.0 + np.exp(-(a * np.asarray(x) + b)))
    brier = float(np.mean((p - y) ** 2))
    return {"method": "platt", "a": float(a), "b": float(b), "n_patients": int(len(y)),
            "n_negative": int((y == 0).sum()), "brier": round(brier, 4),
            "fitted_on": "the model card's validation scans (synthetic CT): a probability for synthetic data, "
                         "not for real patients"}


def calibration_card_fields(cal: Calibration, data: str) -> Dict[str, Any]:
    """The card fields a calibration sets (``inference.score_fusion`` goes with the card's ``inference``)."""
    return {"score_fusion": cal.fusion.to_dict(), "operating_points": cal.operating_points,
            "validation": dict(cal.validation, data=data, fusion_candidates=cal.candidates),
            "patient_probability": cal.patient_probability}
