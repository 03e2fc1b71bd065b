"""DeepLesion metrics of the paper's Tables V and VI, with LUNA16's hit criterion.

Each DeepLesion key image (``DL_info.csv`` row group) is one "scan" of the LUNA16 machinery
in :mod:`.froc`: a mark hits a lesion when its centre lies strictly closer than the lesion's
radius (3D, world mm, lesions converted to ``{X, Y, Z, D}`` as in the paper, section V);
several marks on one lesion count once with the best probability; FP rates are per image.

* Table V: sensitivity at 0.5, 1, 2, 4, 8, 16 FP per image, their average, and the LUNA16-style
  FROC score (mean sensitivity at 1/8 ... 8 FP per image).
* Table VI: the same sensitivities by lesion type (``Coarse_lesion_type`` 1..8) and by long
  diameter bucket (< 10, 10-30, >= 30 mm as in Yan et al.). A subgroup's sensitivity is read
  at the thresholds of the *whole* set's FP rate (false positives have no type or size), i.e.
  its curve pairs the overall FP/image with the subgroup's TP fraction.
* "Without large lesions" (the tables' ``*`` rows): lesions with long diameter >= 48 mm leave
  the denominator and marks on them are ignored — neither TP nor FP — exactly like LUNA16's
  excluded findings. (The paper writes both "> 48" and ">= 48"; we use >= 48 from its text.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import EvaluationInputError
from ..luna16_format import Annotation, as_predictions
from .froc import CPM_FP_RATES, CurveEvents, Matching, match_candidates

#: FP-per-image rates of Table V.
DEEPLESION_FP_RATES: Tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
#: ``Coarse_lesion_type`` codes of ``DL_info.csv``.
LESION_TYPES: Dict[int, str] = {1: "bone", 2: "abdomen", 3: "mediastinum", 4: "liver", 5: "lung", 6: "kidney",
                                7: "soft tissue", 8: "pelvis"}
#: Long-diameter buckets (mm) of Table VI: name -> [low, high).
SIZE_BUCKETS: Dict[str, Tuple[float, float]] = {"<10": (0.0, 10.0), "10-30": (10.0, 30.0), ">=30": (30.0, np.inf)}
LARGE_LESION_MM = 48.0


@dataclass(frozen=True)
class DeepLesionLesion:
    """One annotated lesion of a key image.

    ``x, y, z`` world mm (z from the key slice index and slice interval); ``diameter_mm`` the
    hit diameter of the 3D ``{X, Y, Z, D}`` box; ``long_diameter_mm`` the RECIST long axis
    that defines size buckets and "large"; ``lesion_type`` 1..8, ``-1`` when unknown.
    """

    image_id: str
    x: float
    y: float
    z: float
    diameter_mm: float
    long_diameter_mm: float
    lesion_type: int = -1


@dataclass(frozen=True)
class SubsetMetrics:
    """Tables V/VI numbers for one lesion set (all, or without large lesions)."""

    n_images: int
    n_lesions: int
    sensitivities: Dict[float, float]
    average: float
    froc: float
    by_type: Dict[str, Dict[float, float]]
    by_size: Dict[str, Dict[float, float]]
    lesion_counts: Dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DeepLesionResult:
    all_lesions: SubsetMetrics
    without_large: SubsetMetrics

    def to_dict(self) -> Dict[str, dict]:
        def one(m: SubsetMetrics) -> dict:
            rate = lambda d: {f"{k:g}": v for k, v in d.items()}  # noqa: E731 - local formatter
            return {"n_images": m.n_images, "n_lesions": m.n_lesions, "sensitivities": rate(m.sensitivities),
                    "average": m.average, "froc": m.froc, "lesion_counts": dict(m.lesion_counts),
                    "by_type": {k: rate(v) for k, v in m.by_type.items()},
                    "by_size": {k: rate(v) for k, v in m.by_size.items()}}
        return {"all": one(self.all_lesions), "without_large": one(self.without_large)}


def _type_name(code: int) -> str:
    return LESION_TYPES.get(int(code), "unknown")


def _subset(lesions: List[DeepLesionLesion], ignored: List[DeepLesionLesion], image_ids: List[str],
            predictions, fp_rates: Sequence[float]) -> SubsetMetrics:
    as_ann = lambda items: [Annotation(l.image_id, l.x, l.y, l.z, l.diameter_mm) for l in items]  # noqa: E731
    matching: Matching = match_candidates(as_ann(lesions), as_ann(ignored), image_ids, predictions, max_marks=0)
    # match_candidates numbers nodules image by image in input order: rebuild that order.
    index = {uid: i for i, uid in enumerate(image_ids)}
    ordered = sorted(lesions, key=lambda l: index[l.image_id])

    def sens(mask: Optional[np.ndarray], rates: Sequence[float]) -> Dict[float, float]:
        values = CurveEvents(matching, mask).sensitivity_at(rates)[0]
        return {float(r): float(v) for r, v in zip(rates, values)}

    overall = sens(None, fp_rates)
    types = np.array([l.lesion_type for l in ordered])
    longd = np.array([l.long_diameter_mm for l in ordered])
    by_type, counts = {}, {}
    for code in sorted(set(types.tolist()), key=lambda c: (c < 1, c)):
        name = _type_name(code)
        mask = types == code
        by_type[name] = sens(mask, fp_rates)
        counts[name] = int(mask.sum())
    by_size = {}
    for name, (lo, hi) in SIZE_BUCKETS.items():
        mask = (longd >= lo) & (longd < hi)
        counts[name] = int(mask.sum())
        if mask.any():
            by_size[name] = sens(mask, fp_rates)
    froc = float(np.mean(list(sens(None, CPM_FP_RATES).values())))
    return SubsetMetrics(n_images=len(image_ids), n_lesions=len(lesions), sensitivities=overall,
                         average=float(np.mean(list(overall.values()))), froc=froc, by_type=by_type,
                         by_size=by_size, lesion_counts=counts)


def evaluate_deeplesion(lesions: Iterable[DeepLesionLesion], detections: Iterable,
                        image_ids: Optional[Sequence[str]] = None,
                        fp_rates: Sequence[float] = DEEPLESION_FP_RATES,
                        large_mm: float = LARGE_LESION_MM) -> DeepLesionResult:
    """Tables V/VI metrics over in-memory lists.

    Args:
        lesions: annotated lesions of the evaluated key images.
        detections: marks, as :class:`~LesionDetectorLib.luna16_format.Prediction` (``seriesuid`` = image id), dicts
            or ``(image_id, x, y, z, probability)`` tuples.
        image_ids: evaluated images (the FP/image divisor); default: the images of ``lesions``
            in first-seen order. A detection on another image is an error.
        fp_rates: FP-per-image rates.
        large_mm: long diameter from which a lesion counts as "very large".
    """
    lesions = list(lesions)
    if not lesions:
        raise EvaluationInputError("deeplesion: no annotated lesion, sensitivity is undefined")
    if image_ids is None:
        image_ids = list(dict.fromkeys(l.image_id for l in lesions))
    image_ids = [str(i) for i in image_ids]
    known = set(image_ids)
    for n, l in enumerate(lesions):
        if l.image_id not in known:
            raise EvaluationInputError(f"deeplesion: lesion {n + 1} is on image {l.image_id!r}, not evaluated")
        if not (np.isfinite([l.x, l.y, l.z, l.diameter_mm, l.long_diameter_mm]).all() and l.diameter_mm > 0):
            raise EvaluationInputError(f"deeplesion: lesion {n + 1} has a non-finite position or non-positive size")
    predictions = as_predictions(detections, "deeplesion detections")
    small = [l for l in lesions if l.long_diameter_mm < large_mm]
    large = [l for l in lesions if l.long_diameter_mm >= large_mm]
    full = _subset(lesions, [], image_ids, predictions, fp_rates)
    if not small:
        raise EvaluationInputError(f"deeplesion: every lesion is >= {large_mm:g} mm, nothing left without them")
    return DeepLesionResult(all_lesions=full, without_large=_subset(small, large, image_ids, predictions, fp_rates))


#: FP-per-image grid of the dense FROC curves (log-spaced, 1/8 .. 16, with Table V's rates on it).
CURVE_FPS = np.unique(np.concatenate([np.geomspace(0.125, 16.0, 449), DEEPLESION_FP_RATES]))


def curve_points(lesions: Iterable[DeepLesionLesion], detections: Iterable, image_ids: Sequence[str],
                 fps: Sequence[float] = CURVE_FPS) -> Dict[str, Dict[float, float]]:
    """Dense FROC curves ``{"all", "without_large"} -> {fp_rate: sensitivity}`` (for the figure of
    :func:`.report_deeplesion.plot_deeplesion_froc`)."""
    dense = evaluate_deeplesion(lesions, detections, image_ids, fp_rates=[float(f) for f in fps])
    return {"all": dense.all_lesions.sensitivities, "without_large": dense.without_large.sensitivities}
