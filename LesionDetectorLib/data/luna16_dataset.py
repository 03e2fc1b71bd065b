"""Reader of a data set in the LUNA16 layout (the real one, or ``lesion-detector synth`` output).

Layout::

    root/subset0 .. subset9/<seriesuid>.mhd (+ .raw / .zraw)
    root/annotations.csv            seriesuid,coordX,coordY,coordZ,diameter_mm   (world LPS mm)
    root/annotations_excluded.csv   same columns: findings that count neither as hit nor as FP
    root/seg-lungs-LUNA16/<seriesuid>.mhd   optional lung masks
    root/seriesuids.csv             optional, one UID a line (the evaluation's scan list)

Folds are the subsets (LUNA16's 10-fold cross-validation). Scans directly under ``root``
(no subset folder) get subset ``-1``. Malformed CSVs raise
:class:`~LesionDetectorLib.errors.EvaluationInputError` naming file and line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from ..errors import VolumeError
from ..luna16_format import DEFAULT_DIAMETER_MM, annotations_by_scan, read_annotations, read_seriesuids
_SUBSET = re.compile(r"^subset(\d+)$")


@dataclass(frozen=True)
class Luna16Scan:
    seriesuid: str
    subset: int
    path: Path                       # the .mhd header
    lung_mask_path: Optional[Path]   # seg-lungs-LUNA16/<uid>.mhd when present


def read_annotation_csv(path: Union[str, Path], excluded: bool = False) -> Dict[str, np.ndarray]:
    """``{seriesuid: float64 [N, 4] (x, y, z, diameter_mm)}`` from a LUNA16 annotation CSV
    (:mod:`LesionDetectorLib.luna16_format`). A nodule to learn needs a size, so a negative
    diameter is an error in ``annotations.csv``; in the excluded list (``excluded=True``) the
    challenge's ``-1`` gets the official script's 10 mm."""
    records = read_annotations(path, allow_unknown_size=excluded)
    return annotations_by_scan(records, unknown_size_mm=DEFAULT_DIAMETER_MM if excluded else None)


class Luna16Dataset:
    """Index of a LUNA16-layout folder; reads nothing but CSVs and directory listings up front."""

    def __init__(self, root: Union[str, Path]):
        self.root = Path(root)
        if not self.root.is_dir():
            raise VolumeError(f"LUNA16 data folder not found: {self.root}")
        masks = self.root / "seg-lungs-LUNA16"
        scans: List[Luna16Scan] = []
        folders = [(int(m.group(1)), p) for p in self.root.iterdir()
                   if p.is_dir() and (m := _SUBSET.match(p.name))]
        folders.sort()
        folders.append((-1, self.root))
        seen: Dict[str, Path] = {}
        for subset, folder in folders:
            for mhd in sorted(folder.glob("*.mhd")):
                uid = mhd.stem
                if uid in seen:
                    raise VolumeError(f"series {uid} appears twice: {seen[uid]} and {mhd}")
                seen[uid] = mhd
                mask = masks / f"{uid}.mhd"
                scans.append(Luna16Scan(uid, subset, mhd, mask if mask.is_file() else None))
        if not scans:
            raise VolumeError(f"no .mhd scans under {self.root} (expected subset0..subset9/<seriesuid>.mhd)")
        self.scans = scans
        self._by_uid = {s.seriesuid: s for s in scans}
        ann = self.root / "annotations.csv"
        exc = self.root / "annotations_excluded.csv"
        self.annotations_path = ann if ann.is_file() else None
        self.excluded_path = exc if exc.is_file() else None
        self._annotations = read_annotation_csv(ann) if self.annotations_path else {}
        self._excluded = read_annotation_csv(exc, excluded=True) if self.excluded_path else {}
        listed = self.root / "seriesuids.csv"
        self.listed_uids: Optional[List[str]] = None
        if listed.is_file():
            self.listed_uids = read_seriesuids(listed)

    def __len__(self) -> int:
        return len(self.scans)

    def __iter__(self):
        return iter(self.scans)

    def __contains__(self, uid: str) -> bool:
        return uid in self._by_uid

    def scan(self, uid: str) -> Luna16Scan:
        try:
            return self._by_uid[uid]
        except KeyError:
            raise VolumeError(f"series {uid} is not in {self.root}") from None

    def annotations(self, uid: str) -> np.ndarray:
        """float64 ``[N, 4]`` (x, y, z world LPS mm, diameter mm) of ``annotations.csv`` for ``uid``."""
        return self._annotations.get(uid, np.zeros((0, 4)))

    def excluded(self, uid: str) -> np.ndarray:
        """float64 ``[N, 4]`` of ``annotations_excluded.csv`` for ``uid``."""
        return self._excluded.get(uid, np.zeros((0, 4)))

    def annotated_uids_missing(self) -> List[str]:
        """Series named in the CSVs that have no scan here (a partial download, say)."""
        return sorted((set(self._annotations) | set(self._excluded)) - set(self._by_uid))

    def folds(self) -> Dict[int, List[str]]:
        """``{subset: [seriesuid, ...]}``."""
        out: Dict[int, List[str]] = {}
        for s in self.scans:
            out.setdefault(s.subset, []).append(s.seriesuid)
        return out

    def split(self, test_subsets, val_subsets=()) -> Tuple[List[str], List[str], List[str]]:
        """(train, val, test) series UIDs for the given test / validation subsets."""
        test_set, val_set = {int(v) for v in np.atleast_1d(test_subsets)}, {int(v) for v in np.atleast_1d(val_subsets)}
        if test_set & val_set:
            raise ValueError(f"subsets {sorted(test_set & val_set)} are both test and validation")
        train, val, test = [], [], []
        for s in self.scans:
            (test if s.subset in test_set else val if s.subset in val_set else train).append(s.seriesuid)
        return train, val, test

    def read(self, uid: str):
        """The scan as a :class:`~LesionDetectorLib.volume.Volume` (via :func:`LesionDetectorLib.io.read_volume`)."""
        from ..io import read_volume

        return read_volume(str(self.scan(uid).path))
