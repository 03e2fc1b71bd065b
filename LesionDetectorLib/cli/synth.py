"""``lesion-detector synth``: write a synthetic chest-CT data set in the exact LUNA16 layout.

Scans carry real LIDC-IDRI nodule shapes, per-patient nodule counts (some patients have
none), LUNA16's list rules and the confusers of real chest CT (``--no-confusers`` leaves them
out); see :mod:`LesionDetectorLib.data.synthetic` and :mod:`LesionDetectorLib.data.confusers`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from .options import positive_int

log = logging.getLogger("lesion-detector.synth")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth", help="write a synthetic chest-CT data set in the LUNA16 layout",
        description="Generate N synthetic chest CTs (body, lungs, airways, vessel trees, nodules of real LIDC "
                    "shapes) as subset<k>/<seriesuid>.mhd/.raw with annotations.csv, annotations_excluded.csv, "
                    "seriesuids.csv and seg-lungs-LUNA16 masks. Deterministic for a given --seed.")
    p.add_argument("--n", type=positive_int, required=True, help="number of scans, >= 1")
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0); scan i depends only on (seed, i)")
    p.add_argument("--size", choices=("full", "small"), default="full",
                   help="full: 512x512 at 0.6-0.9 mm, slices 0.7-2.5 mm (LUNA16-like); "
                        "small: ~160x160x~120 at ~2 mm, for tests (full)")
    p.add_argument("--subsets", type=positive_int, default=10, help="number of subset folders, scan i -> subset i %% K (10)")
    p.add_argument("--no-lung-masks", action="store_true", help="do not write seg-lungs-LUNA16 masks")
    p.add_argument("--no-confusers", action="store_true",
                   help="leave out fissures, end-on vessels, plaques, thick airway walls, ribs beside nodules and "
                        "calcified granulomas: the scans of the generator before them, bit for bit")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data.synthetic import write_dataset

    if args.seed < 0:
        raise ValueError("--seed must be >= 0")

    def progress(done: int, total: int, scan) -> None:
        log.info("%d/%d %s %s, %d nodule(s), %.1f s", done, total, scan.series_uid,
                 "x".join(str(v) for v in scan.hu.shape[::-1]), len(scan.nodules), scan.info["timings_s"]["total"])

    summary = write_dataset(args.out, args.n, args.seed, args.size, args.subsets,
                            lung_masks=not args.no_lung_masks, progress=progress,
                            confusers=not args.no_confusers)
    print(json.dumps(summary, indent=2))
    return 0
