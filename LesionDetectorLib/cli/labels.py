"""``lesion-detector labels``: reviewed runs -> LUNA16 annotations and hard negatives.

See :mod:`LesionDetectorLib.export.review_labels`; the ``hard_negatives.csv`` it writes is
what the training sampler's ``reviewed_regions`` are made from.
"""
from __future__ import annotations

import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "labels", help="turn reviewed findings into LUNA16 annotations and a hard-negatives CSV",
        description="Accepted candidates become annotations.csv (LUNA16 columns), rejected ones "
                    "hard_negatives.csv (same columns), and every reviewed scan is listed in seriesuids.csv. "
                    "Unreviewed candidates are left out. Inputs: findings JSON or .mrk.json files with review "
                    "decisions (lesion-detector detect, the Slicer module's export).")
    p.add_argument("--findings", nargs="+", type=Path, required=True, help="reviewed runs (.findings.json / .mrk.json)")
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..export.review_labels import read_reviewed_run, write_review_labels

    runs = []
    for path in args.findings:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        runs.append(read_reviewed_run(path))
    print(json.dumps(write_review_labels(runs, args.out), indent=2))
    return 0
