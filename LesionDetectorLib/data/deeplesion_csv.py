"""Write DeepLesion's 3-D lesions as LUNA16-style evaluation files.

The paper evaluates DeepLesion with LUNA16's criterion (a mark hits a lesion when its centre
lies inside the lesion's sphere), so the converted lesions are written in LUNA16's formats and
the LUNA16 FROC code evaluates them unchanged:

* ``annotations.csv`` / ``annotations_excluded.csv``: ``seriesuid,coordX,coordY,coordZ,diameter_mm``
  (world LPS mm of each chunk's own frame, see :mod:`.deeplesion_images`);
* ``seriesuids.csv``: every chunk of the selection, lesion-free or not, one per line (no header,
  as the challenge's file);
* ``lesions.csv``: the same targets with ``lesion_type`` and ``long_axis_mm`` for the per-type
  and per-diameter tables of the paper (Table VI).

Usage::

    python -m LesionDetectorLib.data.deeplesion_csv /data/DeepLesion out/ --split test \\
        --variant test_without_large
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

from ..luna16_format import ANNOTATION_COLUMNS, write_csv, write_seriesuids
from .deeplesion import VARIANTS, DeepLesionDataset, DeepLesionScan
from .deeplesion_info import LESION_TYPES

LESION_HEADER = ANNOTATION_COLUMNS + ("lesion_type", "lesion_type_name", "long_axis_mm", "csv_lines")


def write_evaluation_csvs(scans: Sequence[DeepLesionScan], out_dir: Union[str, Path],
                          variant: str) -> Dict[str, Path]:
    """Write the four files above for ``scans`` under ``variant`` (see :data:`VARIANTS`).

    Returns ``{"annotations", "annotations_excluded", "seriesuids", "lesions"}`` -> path.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown DeepLesion variant {variant!r}; expected one of {VARIANTS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets, excluded, lesions = [], [], []
    for scan in scans:
        kept, dropped = scan.targets(variant)
        for lesion in kept:
            row = (scan.seriesuid, *(f"{v:.4f}" for v in lesion.center_lps), f"{lesion.diameter_mm:.4f}")
            targets.append(row)
            lesions.append(row + (lesion.lesion_type, LESION_TYPES[lesion.lesion_type],
                                  f"{lesion.long_axis_mm:.4f}", " ".join(map(str, lesion.rows))))
        excluded.extend((scan.seriesuid, *(f"{v:.4f}" for v in l.center_lps), f"{l.diameter_mm:.4f}")
                        for l in dropped)
    paths = {name: out_dir / f"{name}.csv"
             for name in ("annotations", "annotations_excluded", "seriesuids", "lesions")}
    write_csv(paths["annotations"], ANNOTATION_COLUMNS, targets)
    write_csv(paths["annotations_excluded"], ANNOTATION_COLUMNS, excluded)
    write_seriesuids(paths["seriesuids"], (s.seriesuid for s in scans))
    write_csv(paths["lesions"], LESION_HEADER, lesions)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m LesionDetectorLib.data.deeplesion_csv",
        description="Convert DeepLesion (DL_info.csv + Images_png) to LUNA16-style 3-D annotation CSVs.")
    parser.add_argument("root", type=Path, help="folder with DL_info.csv and Images_png/")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--split", choices=("train", "val", "test"), action="append",
                        help="official split(s) to keep (repeatable; default: all)")
    parser.add_argument("--variant", choices=VARIANTS, default="test_all")
    parser.add_argument("--include-noisy", action="store_true", help="keep Possibly_noisy rows")
    parser.add_argument("--strict", action="store_true", help="fail on a chunk with missing slices")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    data = DeepLesionDataset(args.root, splits=args.split, include_noisy=args.include_noisy,
                             strict=args.strict)
    paths = write_evaluation_csvs(data.scans, args.out_dir, args.variant)
    kept, dropped = data.lesion_count(args.variant)
    print(f"{len(data)} scan chunk(s), {kept} lesion(s), {dropped} excluded -> {paths['annotations']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
