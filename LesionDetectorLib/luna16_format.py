"""The LUNA16 file formats, in one place (no torch): columns, records, readers, writers and the
per-scan mark cap.

Files (world LPS mm, ``coordX, coordY, coordZ`` in ``x, y, z`` order, not the ``[z, y, x]``
array order):

* ``annotations.csv`` / ``annotations_excluded.csv``: :data:`ANNOTATION_COLUMNS`; the excluded
  list of the challenge gives ``-1`` as the diameter of findings without a size.
* ``seriesuids.csv``: one series UID per row, first column, no header (the challenge's file);
  a first row reading ``seriesuid`` is accepted as a header.
* candidates / predictions (a submission): :data:`PREDICTION_COLUMNS`; the library's own
  submission adds a ``review`` column (:data:`SUBMISSION_COLUMNS`), which the challenge's
  script, reading columns by header name, ignores.

Readers find columns by header name (extra columns ignored, order free) and raise
:class:`~LesionDetectorLib.errors.EvaluationInputError` with ``path:line: cause``. Writers go
through :mod:`LesionDetectorLib.atomic`, so no reader ever sees half a file.

Used by the evaluation (LUNA16 and DeepLesion, which the paper scores with LUNA16's hit
criterion and files), the LUNA16-layout data set reader, the synthetic data writer, the
DeepLesion converter and the submission exporter.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .atomic import atomic_open
from .errors import EvaluationInputError

PathLike = Union[str, Path]

#: Centre columns of every LUNA16 file.
COORD_COLUMNS: Tuple[str, str, str] = ("coordX", "coordY", "coordZ")
#: ``annotations.csv`` and ``annotations_excluded.csv``.
ANNOTATION_COLUMNS: Tuple[str, ...] = ("seriesuid", *COORD_COLUMNS, "diameter_mm")
#: A candidates / predictions (submission) file.
PREDICTION_COLUMNS: Tuple[str, ...] = ("seriesuid", *COORD_COLUMNS, "probability")
#: The library's submission: the challenge columns plus the reader's review decision.
SUBMISSION_COLUMNS: Tuple[str, ...] = (*PREDICTION_COLUMNS, "review")

#: Diameter the official script (noduleCADEvaluationLUNA16.py, ``evaluateCAD``) gives any
#: annotation whose ``diameter_mm`` is negative; ``annotations_excluded.csv`` marks
#: non-nodules and nodules < 3 mm with ``-1``, so their hit radius is 5 mm.
DEFAULT_DIAMETER_MM = 10.0

#: Marks per scan the challenge keeps (``maxNumberOfCADMarks=100`` in the official call).
LUNA16_MAX_MARKS = 100


# ------------------------------------------------------------------------------ records
@dataclass(frozen=True)
class Annotation:
    """One annotated finding of a scan (``annotations.csv`` / ``annotations_excluded.csv`` row).

    ``diameter_mm < 0`` means "size unknown"; :attr:`hit_radius_mm` then uses
    :data:`DEFAULT_DIAMETER_MM` as the official script does.
    """

    seriesuid: str
    x: float
    y: float
    z: float
    diameter_mm: float

    @property
    def hit_radius_mm(self) -> float:
        """A mark hits this finding when its centre lies strictly closer than this."""
        diameter = self.diameter_mm if self.diameter_mm >= 0.0 else DEFAULT_DIAMETER_MM
        return diameter / 2.0


@dataclass(frozen=True)
class Prediction:
    """One detector mark (a LUNA16 submission row): centre in LPS mm and its probability."""

    seriesuid: str
    x: float
    y: float
    z: float
    probability: float


def _coerce(items: Iterable, cls, keys: Tuple[str, ...], what: str) -> List:
    out = []
    for n, item in enumerate(items):
        if isinstance(item, cls):
            out.append(item)
            continue
        try:
            if isinstance(item, Mapping):
                values = [item[k] for k in keys]
            else:
                values = list(item)
                if len(values) != len(keys):
                    raise ValueError(f"{len(values)} fields")
            out.append(cls(str(values[0]), *(float(v) for v in values[1:])))
        except (KeyError, TypeError, ValueError) as exc:
            raise EvaluationInputError(
                f"{what}: item {n + 1} is not a {cls.__name__} nor a {'/'.join(keys)} row ({exc})") from None
    return out


def as_annotations(items: Iterable, what: str = "annotations") -> List[Annotation]:
    """Accept :class:`Annotation` objects, dicts with the LUNA16 column names or
    ``(seriesuid, x, y, z, diameter_mm)`` tuples, so callers need no files."""
    return _coerce(items, Annotation, ANNOTATION_COLUMNS, what)


def as_predictions(items: Iterable, what: str = "predictions") -> List[Prediction]:
    """Accept :class:`Prediction` objects, dicts with the LUNA16 column names or
    ``(seriesuid, x, y, z, probability)`` tuples."""
    return _coerce(items, Prediction, PREDICTION_COLUMNS, what)


# ------------------------------------------------------------------------------ readers
def _rows(path: Path, columns: Sequence[str] = ()) -> Iterator[Tuple[int, List[str]]]:
    """Yield ``(line_number, cells)`` for non-blank rows; missing/empty files are errors."""
    if not path.is_file():
        raise EvaluationInputError(f"{path}: file not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            seen = False
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                seen = True
                yield reader.line_num, [c.strip() for c in cells]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise EvaluationInputError(f"{path}: not a readable CSV text file ({exc})") from None
    if not seen:
        expected = f"; expected the header {','.join(columns)}" if columns else ""
        raise EvaluationInputError(f"{path}: file is empty (an empty file has no header{expected})")


def read_table(path: PathLike, columns: Sequence[str]) -> Iterator[Tuple[int, Dict[str, str]]]:
    """``(line, {column: text})`` per data row of a CSV whose header names ``columns``."""
    path = Path(path)
    rows = _rows(path, columns)
    line, header = next(rows)
    missing = [c for c in columns if c not in header]
    if missing:
        raise EvaluationInputError(
            f"{path}:{line}: missing column(s) {', '.join(missing)} (header must name {', '.join(columns)})")
    where = {c: header.index(c) for c in columns}
    for line, cells in rows:
        if len(cells) < len(header):
            raise EvaluationInputError(f"{path}:{line}: {len(cells)} fields where the header has {len(header)}")
        yield line, {c: cells[i] for c, i in where.items()}


def parse_number(path: PathLike, line: int, column: str, text: str) -> float:
    """A finite float, else ``EvaluationInputError`` naming file, line and column."""
    try:
        value = float(text)
    except ValueError:
        raise EvaluationInputError(f"{path}:{line}: {column} is not a number: {text!r} "
                                   f"(coordinates, diameters and probabilities are numbers)") from None
    if not math.isfinite(value):
        raise EvaluationInputError(f"{path}:{line}: {column} is not a finite number: {text!r}")
    return value


def parse_uid(path: PathLike, line: int, text: str) -> str:
    if not text:
        raise EvaluationInputError(f"{path}:{line}: empty seriesuid")
    return text


def _centre(path: Path, line: int, row: Dict[str, str]) -> List[float]:
    return [parse_number(path, line, c, row[c]) for c in COORD_COLUMNS]


def read_annotations(path: PathLike, allow_unknown_size: bool = True) -> List[Annotation]:
    """Rows of ``annotations.csv`` or ``annotations_excluded.csv`` (header-only is fine).

    ``allow_unknown_size=False`` refuses negative diameters (a nodule the model must learn
    needs a size); the evaluation keeps them (:attr:`Annotation.hit_radius_mm`).
    """
    path = Path(path)
    out = []
    for line, row in read_table(path, ANNOTATION_COLUMNS):
        xyz = _centre(path, line, row)
        diameter = parse_number(path, line, "diameter_mm", row["diameter_mm"])
        if diameter < 0 and not allow_unknown_size:
            raise EvaluationInputError(f"{path}:{line}: negative diameter {diameter:g} (size unknown) "
                                       f"where every finding needs a size")
        out.append(Annotation(parse_uid(path, line, row["seriesuid"]), *xyz, diameter))
    return out


def annotations_by_scan(annotations: Iterable[Annotation], unknown_size_mm: Optional[float] = None
                        ) -> Dict[str, np.ndarray]:
    """``{seriesuid: float64 [N, 4] (x, y, z, diameter_mm)}``; with ``unknown_size_mm`` a
    negative diameter becomes that size (:data:`DEFAULT_DIAMETER_MM`, the official one)."""
    rows: Dict[str, List[Tuple[float, float, float, float]]] = defaultdict(list)
    for a in annotations:
        d = a.diameter_mm if (a.diameter_mm >= 0 or unknown_size_mm is None) else unknown_size_mm
        rows[a.seriesuid].append((a.x, a.y, a.z, d))
    return {uid: np.array(r, dtype=np.float64).reshape(-1, 4) for uid, r in rows.items()}


def read_seriesuids(path: PathLike) -> List[str]:
    """Series UIDs of the evaluated scans, in file order; duplicates are an error."""
    path = Path(path)
    uids: List[str] = []
    first: dict = {}
    for line, cells in _rows(path, ("seriesuid",)):
        uid = parse_uid(path, line, cells[0])
        if not uids and not first and uid.lower() == "seriesuid":
            continue
        if uid in first:
            raise EvaluationInputError(f"{path}:{line}: series {uid} already listed on line {first[uid]}")
        first[uid] = line
        uids.append(uid)
    if not uids:
        raise EvaluationInputError(f"{path}: lists no series UID")
    return uids


def read_predictions(path: PathLike, seriesuids: Optional[Iterable[str]] = None,
                     unknown: str = "series {uid} is not listed in the seriesuids file") -> List[Prediction]:
    """Rows of a predictions (submission) CSV; with ``seriesuids``, other series are errors
    whose message after ``path:line:`` is ``unknown.format(uid=...)``."""
    path = Path(path)
    known = set(seriesuids) if seriesuids is not None else None
    out = []
    for line, row in read_table(path, PREDICTION_COLUMNS):
        uid = parse_uid(path, line, row["seriesuid"])
        if known is not None and uid not in known:
            raise EvaluationInputError(f"{path}:{line}: {unknown.format(uid=uid)}")
        xyz = _centre(path, line, row)
        out.append(Prediction(uid, *xyz, parse_number(path, line, "probability", row["probability"])))
    return out


# ------------------------------------------------------------------------------ writers
def write_csv(path: PathLike, columns: Sequence[str], rows: Iterable[Sequence]) -> Path:
    """Write a header and rows atomically (``\\n`` line ends); cells are written as given, so
    callers choose the number format."""
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    return Path(path)


def _cells(record, fields: Tuple[str, ...]) -> List[str]:
    return [record.seriesuid, *(repr(float(getattr(record, f))) for f in fields)]


def write_annotations(path: PathLike, annotations: Iterable[Annotation]) -> Path:
    """``annotations.csv`` / ``annotations_excluded.csv`` from records (numbers as ``repr``, exact)."""
    return write_csv(path, ANNOTATION_COLUMNS, (_cells(a, ("x", "y", "z", "diameter_mm")) for a in annotations))


def write_predictions(path: PathLike, predictions: Iterable[Prediction]) -> Path:
    """A candidates / predictions CSV from records (numbers as ``repr``, exact)."""
    return write_csv(path, PREDICTION_COLUMNS, (_cells(p, ("x", "y", "z", "probability")) for p in predictions))


def write_seriesuids(path: PathLike, uids: Iterable[str]) -> Path:
    """``seriesuids.csv`` as the challenge ships it: one UID a line, no header."""
    with atomic_open(path, "w", newline="") as fh:
        fh.writelines(f"{uid}\n" for uid in uids)
    return Path(path)


# ------------------------------------------------------------------------------ mark cap
def cap_marks(probs: Sequence[float], max_marks: int = LUNA16_MAX_MARKS) -> np.ndarray:
    """Boolean mask ``[N]`` of the marks of one scan that the official cap keeps.

    When a scan has more than ``max_marks`` marks the script takes
    ``t = probs_sorted_desc[max_marks]`` and keeps the marks with probability strictly greater
    than ``t``: marks tied with the first one over the cap all go, so a scan can keep fewer
    than ``max_marks``. ``max_marks <= 0`` keeps everything. DeepLesion uses the same rule:
    the paper scores it with LUNA16's criterion, and its own metric defines no cap.
    """
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if max_marks <= 0 or probs.shape[0] <= max_marks:
        return np.ones(probs.shape[0], dtype=bool)
    cut = np.sort(probs)[::-1][max_marks]
    return probs > cut


def cap_predictions(predictions: Sequence[Prediction], max_marks: int = LUNA16_MAX_MARKS
                    ) -> Tuple[List[Prediction], int]:
    """Apply :func:`cap_marks` scan by scan; returns ``(kept in input order, number dropped)``."""
    predictions = list(predictions)
    if max_marks <= 0:
        return predictions, 0
    by_scan: Dict[str, List[int]] = defaultdict(list)
    for i, p in enumerate(predictions):
        by_scan[p.seriesuid].append(i)
    keep = np.ones(len(predictions), dtype=bool)
    for idx in by_scan.values():
        keep[idx] = cap_marks([predictions[i].probability for i in idx], max_marks)
    kept = [p for p, k in zip(predictions, keep) if k]
    return kept, len(predictions) - len(kept)
