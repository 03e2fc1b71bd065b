"""LUNA16 submission CSV: ``seriesuid,coordX,coordY,coordZ,probability`` (+ ``review``).

Coordinates are world LPS mm, as in LUNA16's ``annotations.csv`` (ITK world). The
challenge's evaluation script reads columns by header name, so the trailing ``review``
column carries the reader's decision without breaking it. Columns and the writer are those of
:mod:`LesionDetectorLib.luna16_format`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, List, Optional

from ..atomic import PathLike
from ..findings import Findings
from ..luna16_format import SUBMISSION_COLUMNS, write_csv


def luna16_rows(findings: Findings, series_uid: Optional[str] = None) -> List[List[str]]:
    uid = series_uid or findings.series_uid
    if not uid:
        raise ValueError("the LUNA16 CSV needs a series UID: the scan has none in its metadata; pass series_uid "
                         "(--series-uid) or name the file by its seriesuid")
    for c in findings.candidates:
        if not all(math.isfinite(float(v)) for v in (*c.center_lps, c.score)):
            raise ValueError(f"candidate {c.id} has a NaN or infinite centre or score; the LUNA16 CSV was not "
                             "written")
    return [[uid, f"{c.center_lps[0]:.4f}", f"{c.center_lps[1]:.4f}", f"{c.center_lps[2]:.4f}",
             f"{c.score:.6f}", c.review] for c in findings.candidates]


def write_luna16_csv(findings_list: Iterable[Findings], path: PathLike,
                     series_uids: Optional[Iterable[Optional[str]]] = None) -> Path:
    """One CSV for one or many scans (a whole submission), written atomically."""
    items = list(findings_list)
    uids = list(series_uids) if series_uids is not None else [None] * len(items)
    if len(uids) != len(items):
        raise ValueError("series_uids must have one entry per findings")
    # Rows are built before the file opens, so a findings without a UID leaves no file behind.
    rows = [row for f, uid in zip(items, uids) for row in luna16_rows(f, uid)]
    return write_csv(path, SUBMISSION_COLUMNS, rows)
