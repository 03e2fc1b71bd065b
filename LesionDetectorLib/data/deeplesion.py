"""NIH DeepLesion as 3-D scans with {X, Y, Z, D} lesions (the paper, section V).

DeepLesion annotates each lesion with a RECIST measurement and a 2-D box on one *key slice*
and ships ~30 mm of slices above and below it (``Slice_range``). This module turns that into
the same task as LUNA16: scan chunks (:class:`DeepLesionScan`, loaded as a
:class:`~LesionDetectorLib.volume.Volume`) holding spherical lesions with a centre in world
LPS mm and in ``[z, y, x]`` index space plus a diameter.

Our reading of section V ("we merge multi-annotated lesions, remove very large lesions
during training and adjust the diameter of small lesions to the minimum of the long side of
the bounding box and long diameter"; "Z position is calculated by key slice indices and
slice intervals"):

* **Scan chunk.** The rows of one series whose slice ranges overlap or touch are stacked
  into one volume covering the union of their ranges; disjoint ranges give separate chunks
  (``seriesuid`` ``<patient>_<study>_<series>_<first>-<last>``). Geometry: see
  :mod:`.deeplesion_images` (axial, identity direction in LPS, origin 0 at the first slice).
* **Centre.** X, Y = centre of the bounding box (0-based pixel column/row, pixel centres at
  integers), Z = key slice number - first slice of the chunk; world = index x spacing,
  i.e. Z in mm = (key slice - first slice) x slice interval.
* **Diameter.** D = the long side of the bounding box in mm; for a *small* lesion, whose
  RECIST long axis is below ``small_lesion_mm`` (default 10 mm, the paper's smallest
  diameter bucket in Table VI; the paper gives no number), D = min(long side of the box,
  long axis). DeepLesion boxes are the RECIST extent padded by 5 pixels per side, which is
  what makes them "too large" for small lesions. ``small_lesion_mm=math.inf`` applies the
  minimum to every lesion.
* **Merging.** Annotations of one chunk whose centres lie inside *each other's* sphere
  (distance < the smaller radius) are one lesion (transitively): centre = mean of the
  centres, D = the largest D (a 2-D cross-section never exceeds the 3-D extent), type = the
  most frequent labelled type, noisy = any, ``rows`` = every CSV line.
* **Large lesions.** A lesion with D >= ``large_lesion_mm`` (48 mm) is *large*. For training
  and for the test variant "without large lesions" it moves to the scan's excluded list
  (LUNA16's ``annotations_excluded`` semantics: a mark on it is neither a hit nor a false
  positive); the variant "with large lesions" keeps it. See :meth:`DeepLesionScan.targets`.
* **Noisy rows** (``Possibly_noisy`` = 1) are dropped by default, as the paper's lesion
  counts do ("noisy annotations are removed").
"""
from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..coordinates import Geometry, index_to_world
from ..errors import EvaluationInputError, VolumeError
from ..volume import Volume
from .deeplesion_images import missing_slices, read_series_volume
from .deeplesion_info import LESION_TYPES, DLInfoRow, read_dl_info

log = logging.getLogger(__name__)

LARGE_LESION_MM = 48.0
SMALL_LESION_MM = 10.0

#: :meth:`DeepLesionScan.targets` variants: which lesions are targets and which are excluded.
VARIANTS = ("train", "test_all", "test_without_large")


@dataclass(frozen=True)
class DeepLesionLesion:
    """One 3-D lesion of a scan chunk.

    ``center_lps`` is ``(x, y, z)`` world LPS mm; ``center_zyx`` the continuous ``[z, y, x]``
    index in the chunk's volume (integers at voxel centres); ``diameter_mm`` is D.
    """

    center_lps: Tuple[float, float, float]
    center_zyx: Tuple[float, float, float]
    diameter_mm: float
    long_axis_mm: float           # largest RECIST long axis among the merged rows
    lesion_type: int              # 1..8, -1 unlabelled (see deeplesion_info.LESION_TYPES)
    possibly_noisy: bool
    large: bool                   # diameter_mm >= the large-lesion threshold
    rows: Tuple[int, ...]         # DL_info.csv line numbers merged into this lesion

    @property
    def lesion_type_name(self) -> str:
        return LESION_TYPES[self.lesion_type]


@dataclass(frozen=True)
class DeepLesionScan:
    """One stacked chunk of a DeepLesion series and its lesions (nothing loaded until :meth:`load`).

    ``seriesuid`` identifies the chunk in evaluation files; ``split`` is the official
    patient-level split ("train" | "val" | "test").
    """

    seriesuid: str
    series_path: Path
    first_slice: int
    last_slice: int
    spacing: Tuple[float, float, float]      # (sx, sy, sz) mm, ITK order
    image_size: Tuple[int, int]
    split: str
    lesions: Tuple[DeepLesionLesion, ...] = field(default=())

    @property
    def geometry(self) -> Geometry:
        """The chunk's voxel grid (shape assumes square ``Image_size`` order; checked on load)."""
        rows, cols = self.image_size
        return Geometry((self.last_slice - self.first_slice + 1, rows, cols),
                        self.spacing, np.zeros(3), np.eye(3))

    def load(self) -> Volume:
        """Read the PNG slices into a HU :class:`Volume` (raises :class:`VolumeError`)."""
        volume = read_series_volume(self.series_path, self.first_slice, self.last_slice,
                                    self.spacing, self.image_size)
        volume.metadata["seriesuid"] = self.seriesuid
        return volume

    def targets(self, variant: str) -> Tuple[List[DeepLesionLesion], List[DeepLesionLesion]]:
        """``(targets, excluded)`` for ``variant``:

        * ``"train"`` and ``"test_without_large"``: large lesions (>= 48 mm) are excluded;
        * ``"test_all"``: every lesion is a target.
        """
        if variant not in VARIANTS:
            raise ValueError(f"unknown DeepLesion variant {variant!r}; expected one of {VARIANTS}")
        if variant == "test_all":
            return list(self.lesions), []
        return ([l for l in self.lesions if not l.large], [l for l in self.lesions if l.large])

    def boxes_lps(self, variant: str) -> Tuple[np.ndarray, np.ndarray]:
        """``(targets [M, 4], excluded [E, 4])`` float64 rows ``(x, y, z, d)`` in LPS mm, as in
        LUNA16's ``annotations.csv`` / ``annotations_excluded.csv``."""
        return tuple(_stack([(*l.center_lps, l.diameter_mm) for l in group])
                     for group in self.targets(variant))

    def annotations(self, variant: str):
        """``(targets, excluded)`` as evaluation :class:`~LesionDetectorLib.luna16_format.Annotation`
        lists keyed by this chunk's ``seriesuid`` (the LUNA16 hit criterion the paper uses)."""
        from ..luna16_format import Annotation

        return tuple([Annotation(self.seriesuid, *l.center_lps, l.diameter_mm) for l in group]
                     for group in self.targets(variant))

    def boxes_zyx(self, variant: str) -> Tuple[np.ndarray, np.ndarray]:
        """``(targets [M, 4], excluded [E, 4])`` float64 rows ``(z, y, x, d_mm)`` in this chunk's
        index space (the diameter stays in mm; spacing is anisotropic)."""
        return tuple(_stack([(*l.center_zyx, l.diameter_mm) for l in group])
                     for group in self.targets(variant))


def _stack(rows: Sequence[Tuple[float, ...]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


# --------------------------------------------------------------------------- 2-D -> 3-D


def lesion_diameter_mm(row: DLInfoRow, small_lesion_mm: float = SMALL_LESION_MM) -> float:
    """D of one annotation: the box's long side, or min(long side, RECIST long axis) when small."""
    if row.long_axis_mm < small_lesion_mm:
        return min(row.box_long_side_mm, row.long_axis_mm)
    return row.box_long_side_mm


def row_to_lesion(row: DLInfoRow, first_slice: int, small_lesion_mm: float = SMALL_LESION_MM,
                  large_lesion_mm: float = LARGE_LESION_MM) -> DeepLesionLesion:
    """Convert one ``DL_info.csv`` annotation to a 3-D lesion of the chunk starting at ``first_slice``."""
    x1, y1, x2, y2 = row.bounding_box
    index_zyx = np.array([row.key_slice_index - first_slice, (y1 + y2) / 2.0, (x1 + x2) / 2.0])
    geometry = Geometry((1, 1, 1), row.spacing, np.zeros(3), np.eye(3))
    diameter = lesion_diameter_mm(row, small_lesion_mm)
    return DeepLesionLesion(
        center_lps=tuple(float(v) for v in index_to_world(geometry, index_zyx)),
        center_zyx=tuple(float(v) for v in index_zyx),
        diameter_mm=float(diameter),
        long_axis_mm=float(row.long_axis_mm),
        lesion_type=row.lesion_type,
        possibly_noisy=row.possibly_noisy,
        large=bool(diameter >= large_lesion_mm),
        rows=(row.line,),
    )


def merge_lesions(lesions: Sequence[DeepLesionLesion], spacing: Sequence[float],
                  large_lesion_mm: float = LARGE_LESION_MM) -> List[DeepLesionLesion]:
    """Merge annotations of one chunk that describe the same lesion.

    Two lesions are the same when each centre lies inside the other's sphere (distance <
    min radius); groups are closed transitively. See the module docstring for the merged values.
    """
    n = len(lesions)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    centres = np.array([l.center_lps for l in lesions], dtype=np.float64).reshape(-1, 3)
    for i in range(n):
        for j in range(i + 1, n):
            limit = min(lesions[i].diameter_mm, lesions[j].diameter_mm) / 2.0
            if np.linalg.norm(centres[i] - centres[j]) < limit:
                parent[root(j)] = root(i)

    groups: Dict[int, List[int]] = defaultdict(list)
    for i in range(n):
        groups[root(i)].append(i)
    geometry = Geometry((1, 1, 1), spacing, np.zeros(3), np.eye(3))
    merged = []
    for members in groups.values():
        if len(members) == 1:
            merged.append(lesions[members[0]])
            continue
        group = [lesions[i] for i in members]
        zyx = np.array([l.center_zyx for l in group], dtype=np.float64).mean(axis=0)
        centre = index_to_world(geometry, zyx)
        diameter = max(l.diameter_mm for l in group)
        labelled = Counter(l.lesion_type for l in group if l.lesion_type != -1)
        merged.append(DeepLesionLesion(
            center_lps=tuple(float(v) for v in centre),
            center_zyx=tuple(float(v) for v in zyx),
            diameter_mm=float(diameter),
            long_axis_mm=float(max(l.long_axis_mm for l in group)),
            lesion_type=labelled.most_common(1)[0][0] if labelled else -1,
            possibly_noisy=any(l.possibly_noisy for l in group),
            large=bool(diameter >= large_lesion_mm),
            rows=tuple(sorted(r for l in group for r in l.rows)),
        ))
    merged.sort(key=lambda l: l.rows[0])
    return merged


# --------------------------------------------------------------------------- data set


def chunk_rows(rows: Iterable[DLInfoRow]) -> List[Tuple[int, int, List[DLInfoRow]]]:
    """Group one series' rows into chunks of overlapping or touching slice ranges.

    Returns ``[(first_slice, last_slice, rows), ...]`` sorted by ``first_slice``.
    """
    chunks: List[Tuple[int, int, List[DLInfoRow]]] = []
    for row in sorted(rows, key=lambda r: r.slice_range):
        first, last = row.slice_range
        if chunks and first <= chunks[-1][1] + 1:
            start, end, members = chunks[-1]
            chunks[-1] = (start, max(end, last), members + [row])
        else:
            chunks.append((first, last, [row]))
    return chunks


def _check_series_consistent(series_dir: str, rows: Sequence[DLInfoRow]) -> None:
    """Rows of one series must agree on what describes the whole series."""
    first = rows[0]
    for row in rows[1:]:
        for what in ("spacing", "image_size", "split"):
            if getattr(row, what) != getattr(first, what):
                raise EvaluationInputError(
                    f"DL_info.csv lines {first.line} and {row.line} ({series_dir}) disagree on "
                    f"{what}: {getattr(first, what)} vs {getattr(row, what)}")


def build_scans(
    rows: Iterable[DLInfoRow],
    images_dir: Union[str, Path],
    *,
    splits: Optional[Sequence[str]] = None,
    include_noisy: bool = False,
    merge: bool = True,
    small_lesion_mm: float = SMALL_LESION_MM,
    large_lesion_mm: float = LARGE_LESION_MM,
    strict: bool = False,
) -> List[DeepLesionScan]:
    """Turn ``DL_info.csv`` rows into scan chunks with 3-D lesions.

    Args:
        rows: from :func:`read_dl_info`.
        images_dir: the ``Images_png`` folder.
        splits: keep only these official splits (``"train"``, ``"val"``, ``"test"``); all by default.
        include_noisy: keep ``Possibly_noisy`` rows (dropped by default, as in the paper).
        merge: merge multi-annotated lesions (:func:`merge_lesions`).
        small_lesion_mm, large_lesion_mm: see the module docstring.
        strict: raise :class:`VolumeError` for a chunk with missing slices instead of skipping it.

    A chunk whose slices are not all present (a gap, or a series not downloaded) is skipped
    with a logged warning, never stacked with a hole. Output is sorted by ``seriesuid``.
    """
    images_dir = Path(images_dir)
    by_series: Dict[str, List[DLInfoRow]] = defaultdict(list)
    for row in rows:
        if (splits is None or row.split in splits) and (include_noisy or not row.possibly_noisy):
            by_series[row.series_dir].append(row)

    scans, skipped = [], 0
    for series_dir in sorted(by_series):
        series_rows = by_series[series_dir]
        _check_series_consistent(series_dir, series_rows)
        series_path = images_dir / series_dir
        for first, last, members in chunk_rows(series_rows):
            seriesuid = f"{series_dir}_{first:03d}-{last:03d}"
            absent = missing_slices(series_path, first, last)
            if absent:
                message = (f"DeepLesion chunk {seriesuid}: {len(absent)} of {last - first + 1} slices "
                           f"missing under {series_path} (first missing: {absent[0]}); "
                           f"skipping its {len(members)} annotation(s)")
                if strict:
                    raise VolumeError(message)
                log.warning(message)
                skipped += 1
                continue
            spacing = members[0].spacing
            lesions = [row_to_lesion(r, first, small_lesion_mm, large_lesion_mm) for r in members]
            if merge:
                lesions = merge_lesions(lesions, spacing, large_lesion_mm)
            scans.append(DeepLesionScan(
                seriesuid=seriesuid, series_path=series_path, first_slice=first, last_slice=last,
                spacing=tuple(spacing), image_size=tuple(members[0].image_size),
                split=members[0].split, lesions=tuple(lesions)))
    if skipped:
        log.warning("DeepLesion: skipped %d chunk(s) with missing slices; %d usable", skipped, len(scans))
    return scans


class DeepLesionDataset:
    """A DeepLesion root (``DL_info.csv`` + ``Images_png/``) as a list of scan chunks.

    Example::

        data = DeepLesionDataset("/data/DeepLesion", splits=["train"])
        for scan in data:
            volume = scan.load()                       # Volume, HU, [z, y, x]
            boxes, ignore = scan.boxes_lps("train")    # [M, 4] (x, y, z, d) LPS mm

    Keyword arguments are those of :func:`build_scans`; ``info_csv`` and ``images_dir``
    default to ``root/DL_info.csv`` and ``root/Images_png``.
    """

    def __init__(self, root: Union[str, Path], *, info_csv: Optional[Union[str, Path]] = None,
                 images_dir: Optional[Union[str, Path]] = None, **options):
        root = Path(root)
        self.info_csv = Path(info_csv) if info_csv is not None else root / "DL_info.csv"
        self.images_dir = Path(images_dir) if images_dir is not None else root / "Images_png"
        if not self.images_dir.is_dir():
            raise VolumeError(f"DeepLesion image folder not found: {self.images_dir}")
        self.rows = read_dl_info(self.info_csv)
        self.scans = build_scans(self.rows, self.images_dir, **options)

    def __len__(self) -> int:
        return len(self.scans)

    def __iter__(self) -> Iterator[DeepLesionScan]:
        return iter(self.scans)

    def __getitem__(self, index: int) -> DeepLesionScan:
        return self.scans[index]

    def by_split(self, split: str) -> List[DeepLesionScan]:
        return [s for s in self.scans if s.split == split]

    def lesion_count(self, variant: str = "test_all") -> Tuple[int, int]:
        """``(targets, excluded)`` totals over all scans for ``variant``."""
        counts = [tuple(len(g) for g in s.targets(variant)) for s in self.scans]
        return (sum(c[0] for c in counts), sum(c[1] for c in counts)) if counts else (0, 0)
