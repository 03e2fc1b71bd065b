"""Readers of the LUNA16 evaluation CSV files, with errors that name file and line.

* ``annotations.csv`` / ``annotations_excluded.csv``: header
  ``seriesuid,coordX,coordY,coordZ,diameter_mm`` (world LPS mm; ``-1`` diameter allowed).
* ``seriesuids.csv``: one series UID per row, first column; the official file has no header,
  a first row reading ``seriesuid`` is accepted as one.
* predictions (submission): header ``seriesuid,coordX,coordY,coordZ,probability``.

Extra columns are ignored, column order is free. Malformed input raises
:class:`~LesionDetectorLib.errors.EvaluationInputError` with ``path:line: cause``.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from ..errors import EvaluationInputError
from .records import Annotation, Prediction

PathLike = Union[str, Path]
ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
PREDICTION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "probability")


def _rows(path: Path) -> Iterator[Tuple[int, List[str]]]:
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
        raise EvaluationInputError(f"{path}: file is empty")


def _table(path: Path, columns: Sequence[str]) -> Iterator[Tuple[int, dict]]:
    rows = _rows(path)
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


def _number(path: Path, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise EvaluationInputError(f"{path}:{line}: {column} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise EvaluationInputError(f"{path}:{line}: {column} is not a finite number: {text!r}")
    return value


def _uid(path: Path, line: int, text: str) -> str:
    if not text:
        raise EvaluationInputError(f"{path}:{line}: empty seriesuid")
    return text


def read_annotations(path: PathLike) -> List[Annotation]:
    """Rows of ``annotations.csv`` or ``annotations_excluded.csv`` (header-only is fine)."""
    path = Path(path)
    out = []
    for line, row in _table(path, ANNOTATION_COLUMNS):
        xyz = [_number(path, line, c, row[c]) for c in ("coordX", "coordY", "coordZ")]
        diameter = _number(path, line, "diameter_mm", row["diameter_mm"])
        out.append(Annotation(_uid(path, line, row["seriesuid"]), *xyz, diameter))
    return out


def read_seriesuids(path: PathLike) -> List[str]:
    """Series UIDs of the evaluated scans, in file order; duplicates are an error."""
    path = Path(path)
    uids: List[str] = []
    first: dict = {}
    for line, cells in _rows(path):
        uid = _uid(path, line, cells[0])
        if not uids and not first and uid.lower() == "seriesuid":
            continue
        if uid in first:
            raise EvaluationInputError(f"{path}:{line}: series {uid} already listed on line {first[uid]}")
        first[uid] = line
        uids.append(uid)
    if not uids:
        raise EvaluationInputError(f"{path}: lists no series UID")
    return uids


def read_predictions(path: PathLike, seriesuids: Optional[Iterable[str]] = None) -> List[Prediction]:
    """Rows of a predictions (submission) CSV; with ``seriesuids``, unknown series are errors."""
    path = Path(path)
    known = set(seriesuids) if seriesuids is not None else None
    out = []
    for line, row in _table(path, PREDICTION_COLUMNS):
        uid = _uid(path, line, row["seriesuid"])
        if known is not None and uid not in known:
            raise EvaluationInputError(f"{path}:{line}: series {uid} is not listed in the seriesuids file")
        xyz = [_number(path, line, c, row[c]) for c in ("coordX", "coordY", "coordZ")]
        out.append(Prediction(uid, *xyz, _number(path, line, "probability", row["probability"])))
    return out
