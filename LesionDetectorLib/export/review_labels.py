"""Reviewed findings become training labels (torch-free).

A reader's decisions are labels: an **accepted** candidate is a lesion the model found, a
**rejected** one is a false positive the model should learn to suppress. From one or more
reviewed runs this writes, in the LUNA16 formats of :mod:`LesionDetectorLib.luna16_format`:

* ``annotations.csv``: accepted candidates (centre LPS mm, the detector's diameter);
* ``hard_negatives.csv``: rejected candidates, same columns (the diameter is the size of
  the region to sample around); the training sampler draws crops around them
  (:func:`LesionDetectorLib.training.sampler.hard_regions_from_world`, ``reviewed_regions``);
* ``seriesuids.csv``: every reviewed scan, so a scan whose candidates were all rejected
  still counts as a reviewed negative scan.

Unreviewed candidates are no label of either kind and are left out (counted in the summary).
Diameters are the model's estimates, not a reader's measurement; say so when training on them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Union

from ..findings import Findings
from ..luna16_format import Annotation, read_annotations, write_annotations, write_seriesuids

HARD_NEGATIVES_FILE = "hard_negatives.csv"


@dataclass
class ReviewLabels:
    annotations: List[Annotation] = field(default_factory=list)
    hard_negatives: List[Annotation] = field(default_factory=list)
    seriesuids: List[str] = field(default_factory=list)
    unreviewed: int = 0


def review_labels(findings: Iterable[Findings]) -> ReviewLabels:
    """Collect the labels of reviewed runs. Raises ``ValueError`` for a run without a series UID
    (LUNA16 files name scans by it) or for the same scan given twice."""
    out = ReviewLabels()
    for f in findings:
        uid = f.series_uid
        if not uid:
            raise ValueError(f"the run of '{f.volume.get('source', '?')}' has no series UID; LUNA16 labels need "
                             "one (detect with --series-uid)")
        if uid in out.seriesuids:
            raise ValueError(f"scan {uid} is given twice; keep one reviewed run per scan")
        out.seriesuids.append(uid)
        for c in f.candidates:
            row = Annotation(uid, *(float(v) for v in c.center_lps), float(c.diameter_mm))
            if c.review == "accepted":
                out.annotations.append(row)
            elif c.review == "rejected":
                out.hard_negatives.append(row)
            else:
                out.unreviewed += 1
    return out


def write_review_labels(findings: Iterable[Findings], out_dir: Union[str, Path]) -> Dict[str, object]:
    """Write ``annotations.csv``, ``hard_negatives.csv`` and ``seriesuids.csv`` into ``out_dir``
    (atomically); returns the paths and counts."""
    labels = review_labels(findings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {"annotations": str(write_annotations(out / "annotations.csv", labels.annotations)),
            "hard_negatives": str(write_annotations(out / HARD_NEGATIVES_FILE, labels.hard_negatives)),
            "seriesuids": str(write_seriesuids(out / "seriesuids.csv", labels.seriesuids)),
            "counts": {"scans": len(labels.seriesuids), "accepted": len(labels.annotations),
                       "rejected": len(labels.hard_negatives), "unreviewed": labels.unreviewed}}


def read_hard_negatives(path: Union[str, Path]) -> List[Annotation]:
    """The rows of a ``hard_negatives.csv`` (LUNA16 annotation columns)."""
    return read_annotations(path, allow_unknown_size=False)


def read_reviewed_run(path: Union[str, Path]) -> Findings:
    """A reviewed run from a findings JSON or a ``.mrk.json`` (the reviews its points record)."""
    from .findings_json import read_findings_json
    from .markups import read_markups_json

    text = str(path)
    return read_markups_json(path) if text.endswith(".mrk.json") else read_findings_json(path)
