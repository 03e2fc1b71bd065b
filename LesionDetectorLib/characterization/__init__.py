"""Nodule characterization: segmentation, size, volume, type and Lung-RADS v2022 per finding.

Computed, not learned: masks come from an adaptive-threshold region with morphological
vessel and chest-wall separation (:mod:`.segmentation`), sizes from the masks
(:mod:`.measurements`), type and calcification from the HU values inside them
(:mod:`.nodule_type`), and categories from the ACR's baseline rules (:mod:`.lung_rads`).
No part of it was trained on labelled nodules; its agreement with known truth is measured
by ``benchmarks/bench_characterization.py`` (``docs/benchmarks.md``).

Entry points: :func:`characterize` (findings in, findings with ``characterization`` per
candidate and a patient-level ``lung_rads`` out) and :func:`characterize_with_masks`, which
also returns the masks; :func:`label_volume` puts those masks into the scan's grid (label
``i`` = the ``i``-th segmented finding) for DICOM SEG or a Slicer segmentation.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..coordinates import Geometry, index_to_world, resample_to_grid, sub_grid, world_to_index
from ..findings import Candidate, Findings
from ..volume import Volume
from .lung_rads import CATEGORY_ORDER, baseline_category, category_rank, exam_category
from .measurements import axial_diameters, mean_hu, partial_volume_ml, volume_ml
from .nodule_type import SOLID_HU, NoduleType, classify
from .segmentation import NoduleSegmentation, segment_nodule

__all__ = ["characterize", "characterize_in_place", "remeasure_mask", "characterize_with_masks", "characterize_candidate", "label_volume",
           "exam_lung_rads", "selected_for_characterization", "CharacterizedNodule", "CATEGORY_ORDER",
           "baseline_category", "category_rank"]


log = logging.getLogger("lesion-detector.characterization")

_EMPTY = {"type": None, "calcified": None, "volume_ml": None, "long_axis_mm": None, "short_axis_mm": None,
          "mean_diameter_mm": None, "solid_component_mm": None, "mean_hu": None, "lung_rads": None}


@dataclass
class CharacterizedNodule:
    """One finding's segmentation and its measurements (``characterization`` dict of the findings)."""

    candidate_id: str
    segmentation: NoduleSegmentation
    nodule_type: Optional[NoduleType]
    characterization: Dict[str, Any]


def characterize_candidate(volume: Volume, candidate: Candidate,
                           lung_mask: Optional[Union[np.ndarray, Volume]] = None) -> CharacterizedNodule:
    """Segment and measure one candidate. An empty mask gives a characterization of nulls."""
    seg = segment_nodule(volume, candidate.center_lps, candidate.diameter_mm, lung_mask, candidate.id)
    if seg.empty:
        return CharacterizedNodule(candidate.id, seg, None,
                                   dict(_EMPTY, note="no nodule could be segmented at this candidate"))
    s = seg.spacing_mm
    kind = classify(seg)
    axes = axial_diameters(seg.mask, s)
    solid_mm = None
    if kind.type == "part-solid":
        solid_axes = axial_diameters(kind.solid_mask, s)
        solid_mm = solid_axes.mean_diameter_mm if solid_axes is not None else 0.0
    ch = {
        "type": kind.type,
        "calcified": bool(kind.calcified),
        # An unresolved nodule's segmentation measured its volume itself (blur-invariant sum).
        "volume_ml": round(seg.volume_ml if seg.volume_ml is not None else
                           partial_volume_ml(seg.hu, seg.mask, seg.lung, s, seg.background_hu, seg.edge_level_hu), 4),
        "mask_volume_ml": round(volume_ml(seg.mask, s), 4),
        "long_axis_mm": axes.long_axis_mm,
        "short_axis_mm": axes.short_axis_mm,
        "mean_diameter_mm": axes.mean_diameter_mm,
        "solid_component_mm": solid_mm,
        "mean_hu": round(float(mean_hu(seg.hu, seg.mask)), 1),
        # The computed perifissural flag is shown, not used for the category: its Hessian sheet
        # test also fires on airway walls and vessel forks (3 of 21 synthetic nodules with no
        # fissure in the scan), and a false "perifissural" would lower a 6-10 mm solid nodule to 2.
        "lung_rads": baseline_category(kind.type, axes.mean_diameter_mm, solid_mm, kind.calcified,
                                       kind.juxta_pleural, False, kind.benign_shape),
        "juxta_pleural": bool(kind.juxta_pleural),
        "perifissural": bool(kind.perifissural),
        "benign_shape": bool(kind.benign_shape),
        "calcification_pattern": kind.calcification_pattern,
        "solid_fraction": round(kind.solid_fraction, 3),
        "threshold_hu": round(seg.threshold_hu, 1),
        "method": AUTOMATIC_METHOD,
    }
    return CharacterizedNodule(candidate.id, seg, kind, ch)


#: ``characterization.method`` of this package's own measurement (an edited segment says otherwise).
AUTOMATIC_METHOD = "computed: adaptive threshold + morphology (not learned)"

#: The per-candidate errors that cost a finding its measurement, not the scan.
CANDIDATE_ERRORS = (ValueError, RuntimeError, MemoryError)


def characterize_outcomes(volume: Volume, candidates: Sequence[Candidate],
                          lung_mask: Optional[Union[np.ndarray, Volume]] = None) -> List[Tuple[str, Any]]:
    """``("ok", CharacterizedNodule)`` or ``("error", message)`` per candidate, in order (the loop
    that :mod:`.parallel`'s workers run on their share)."""
    out: List[Tuple[str, Any]] = []
    for c in candidates:
        try:
            out.append(("ok", characterize_candidate(volume, c, lung_mask)))
        except CANDIDATE_ERRORS as exc:
            out.append(("error", str(exc)))
    return out


#: At most this many unreviewed candidates are characterized per scan (by rank), besides every
#: accepted one: each costs ~0.2-0.3 s (docs/benchmarks.md), but a card whose operating point is
#: not reached lists up to 100 candidates above its threshold, whose false positives would then
#: set the exam's category.
MAX_CHARACTERIZED = 10


def selected_for_characterization(findings: Findings, min_score: Optional[float] = None,
                                  max_unreviewed: Optional[int] = MAX_CHARACTERIZED) -> List[Candidate]:
    """Candidates worth a reader's measurement: not rejected, and accepted or at/above ``min_score``
    (at most ``max_unreviewed`` of the unreviewed ones, highest ranks first; None: no cap).

    ``min_score`` defaults to the findings' operating-point threshold (every candidate when
    the model card has none).
    """
    thr = findings.operating_point.get("threshold") if min_score is None else min_score
    chosen, unreviewed = [], 0
    for c in sorted(findings.candidates, key=lambda c: c.rank):
        if c.review == "rejected":
            continue
        if c.review == "accepted":
            chosen.append(c)
        elif thr is None or c.score >= float(thr):
            if max_unreviewed is None or unreviewed < max_unreviewed:
                chosen.append(c)
                unreviewed += 1
    return chosen


def exam_lung_rads(findings: Findings) -> Dict[str, Any]:
    """Patient-level ``{category, finding_id}``: the highest category among characterized,
    non-rejected candidates (recompute it after a review changes)."""
    return exam_category((c.id, (c.characterization or {}).get("lung_rads"))
                         for c in findings.candidates if c.review != "rejected")


def characterize_with_masks(volume: Volume, findings: Findings,
                            lung_mask: Optional[Union[np.ndarray, Volume]] = None,
                            min_score: Optional[float] = None,
                            candidate_ids: Optional[Sequence[str]] = None,
                            workers=None) -> Tuple[Findings, List[CharacterizedNodule]]:
    """:func:`characterize` that also returns each characterized finding's mask.

    ``candidate_ids`` overrides the selection (:func:`selected_for_characterization`);
    ``workers``: a :class:`~.parallel.CharacterizationWorkers` that shares the candidates out
    (same results as without it).
    """

    t0 = time.perf_counter()
    out = copy.deepcopy(findings)
    if candidate_ids is not None:
        wanted = set(candidate_ids)
        chosen = [c for c in out.candidates if c.id in wanted]
    else:
        chosen = selected_for_characterization(out, min_score)
    results = []
    outcomes = (workers.outcomes(volume, chosen, lung_mask) if workers is not None
                else characterize_outcomes(volume, chosen, lung_mask))
    for c, (status, value) in zip(chosen, outcomes):
        if status != "ok":
            # One unmeasurable finding must not cost the scan its detections and exports.
            log.warning("characterization of %s failed: %s", c.id, value)
            c.characterization = dict(_EMPTY, note=f"characterization failed: {value}")
            continue
        c.characterization = value.characterization
        results.append(value)
    out.lung_rads = exam_lung_rads(out)
    out.timings_s = dict(out.timings_s, characterize=round(time.perf_counter() - t0, 3))
    return out, results


def characterize(volume: Volume, findings: Findings, lung_mask: Optional[Union[np.ndarray, Volume]] = None,
                 min_score: Optional[float] = None) -> Findings:
    """Findings with ``characterization`` on each selected candidate and the exam's ``lung_rads``.

    ``volume``: the scan the findings were detected on (HU); ``lung_mask``: optional bool
    array in its grid or a mask :class:`Volume`, which helps separate nodules wider than
    ~25 mm from the chest wall. The input findings are not modified.
    """
    return characterize_with_masks(volume, findings, lung_mask, min_score)[0]


def characterize_in_place(volume: Volume, findings: Findings,
                          lung_mask: Optional[Union[np.ndarray, Volume]] = None, workers=None) -> Optional[Volume]:
    """:func:`characterize` writing into ``findings`` itself: the batch runner's post-detection step.

    Returns the masks as :func:`label_volume` in ``volume``'s grid (for the DICOM SEG and the
    ``.seg.nrrd``), None when no finding was segmented.
    """
    out, nodules = characterize_with_masks(volume, findings, lung_mask, workers=workers)
    for mine, theirs in zip(findings.candidates, out.candidates):
        mine.characterization = theirs.characterization
    findings.lung_rads = out.lung_rads
    findings.timings_s["characterize"] = out.timings_s["characterize"]
    segmented = [n for n in nodules if not n.segmentation.empty]
    return label_volume(volume, segmented) if segmented else None


def remeasure_mask(volume: Volume, mask: np.ndarray, characterization: Dict[str, Any],
                   spacing_mm: float = 0.5) -> Dict[str, Any]:
    """A characterization re-measured from an edited mask (bool ``[z, y, x]`` in ``volume``'s grid).

    Sizes, volume (voxel count: an edited mask is what the reader drew), mean HU and, for a
    part-solid nodule, the solid component are recomputed; type, calcification and position
    flags are kept (the reader edited the outline, not the density), and the Lung-RADS
    category follows the new sizes.
    """
    mask = np.asarray(mask, bool)
    out = dict(characterization)
    if not mask.any():
        out.update(volume_ml=0.0, long_axis_mm=None, short_axis_mm=None, mean_diameter_mm=None, mean_hu=None,
                   solid_component_mm=None, lung_rads=None, note="the segment is empty")
        return out
    idx = np.argwhere(mask)
    lo, hi = idx.min(0) - 1, idx.max(0) + 2
    lo, hi = np.maximum(lo, 0), np.minimum(hi, mask.shape)
    box = sub_grid(volume, lo, hi - lo)
    crop = Volume(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float32), box.spacing, box.origin,
                  box.direction)
    hu_crop = Volume(np.asarray(volume.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], np.float32), box.spacing,
                     box.origin, box.direction)
    extent = (np.asarray(box.shape_zyx) - 1) * box.spacing_zyx
    iso = Geometry(tuple(int(n) for n in np.floor(extent / spacing_mm + 1e-6).astype(int) + 1),
                   np.full(3, spacing_mm), box.origin, box.direction)
    local = resample_to_grid(crop, iso, "linear", 0.0, np.float32).array > 0.5
    hu = resample_to_grid(hu_crop, iso, "linear", -1024.0, np.float32).array
    axes = axial_diameters(local, spacing_mm)
    if axes is None:          # thinner than the fine grid's sampling: measure on the voxels
        return out
    solid_mm = None
    if out.get("type") == "part-solid":
        solid_axes = axial_diameters(local & (hu > SOLID_HU), spacing_mm)
        solid_mm = solid_axes.mean_diameter_mm if solid_axes is not None else 0.0
    out.update(volume_ml=round(float(mask.sum()) * float(np.prod(volume.spacing)) / 1000.0, 4),
               long_axis_mm=axes.long_axis_mm, short_axis_mm=axes.short_axis_mm,
               mean_diameter_mm=axes.mean_diameter_mm, mean_hu=round(float(np.asarray(volume.array)[mask].mean()), 1),
               solid_component_mm=solid_mm, method="re-measured from an edited segment")
    if out.get("type") in ("solid", "part-solid", "ground-glass"):
        out["lung_rads"] = baseline_category(out["type"], axes.mean_diameter_mm, solid_mm, bool(out.get("calcified")),
                                             bool(out.get("juxta_pleural")), bool(out.get("perifissural")),
                                             bool(out.get("benign_shape")))
    return out


def label_volume(volume: Volume, nodules: Sequence[CharacterizedNodule]) -> Volume:
    """A uint8 label :class:`Volume` in ``volume``'s grid: label ``i + 1`` = ``nodules[i]``'s mask
    (nearest-neighbour from the sub-mm local grid; a later nodule wins where two overlap)."""
    if len(nodules) > 255:
        raise ValueError("at most 255 nodules fit in a uint8 label volume")
    labels = np.zeros(volume.array.shape, np.uint8)
    for i, n in enumerate(nodules):
        if n.segmentation.empty:
            continue
        g = n.segmentation.geometry
        local = Volume(n.segmentation.mask.astype(np.uint8), g.spacing, g.origin, g.direction)
        # Only the scan voxels under the local cube: its corners' indices bound the sub-grid.
        corners = np.array([[a, b, c] for a in (0, g.shape_zyx[0] - 1) for b in (0, g.shape_zyx[1] - 1)
                            for c in (0, g.shape_zyx[2] - 1)], dtype=np.float64)
        idx = world_to_index(volume, index_to_world(g, corners))
        lo = np.clip(np.floor(idx.min(0)).astype(int), 0, np.array(labels.shape))
        hi = np.clip(np.ceil(idx.max(0)).astype(int) + 1, 0, np.array(labels.shape))
        if np.any(hi <= lo):
            continue
        box = sub_grid(volume, lo, hi - lo)
        # A scan voxel is in the nodule when its centre is (nearest sample of the finer local mask).
        hit = resample_to_grid(local, box, "nearest", 0, np.uint8).array > 0
        view = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        view[hit] = i + 1
    return Volume(labels, volume.spacing, volume.origin, volume.direction,
                  {"labels": {i + 1: n.candidate_id for i, n in enumerate(nodules)}})
