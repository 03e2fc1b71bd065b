"""``lesion-detector synth`` on many cores: the same data set, scans generated in parallel.

    python scripts/device/synth_parallel.py --n 24 --seed 303 --out data/test --workers 16

Scan ``i`` depends only on ``(seed, i)``, so each worker generates and writes its own scans
with the library's ``generate_scan`` / ``write_scan`` / ``write_lung_mask``, and the parent
writes the lists afterwards. The result is file-for-file what ``lesion-detector synth --n N
--seed S`` writes (the CPU dry run of ``train_eval_bundle.sh`` diffs the two), so a test set
made here is the project's held-out test set when its seed and count are.

Each scan is written by ``data.synthetic.write_dataset_scan`` and the lists by
``write_dataset_lists``, the two halves of ``write_dataset`` (``--check`` compares the output
with it on a small set).
"""
from __future__ import annotations

import argparse
import filecmp
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

_LIBRARY = None


def _one(out: str, seed: int, index: int, size: str, subsets: int, lung_masks: bool, confusers: bool = True):
    from LesionDetectorLib.data.lidc_shapes import load_shape_library
    from LesionDetectorLib.data.synthetic import generate_scan, write_dataset_scan

    global _LIBRARY
    if _LIBRARY is None:
        _LIBRARY = load_shape_library()
    scan = generate_scan(seed, index, size, _LIBRARY, confusers=confusers)
    ann, exc, full = write_dataset_scan(Path(out), scan, index, subsets, lung_masks)
    return scan.series_uid, ann, exc, full, scan.info["timings_s"]["total"]


def write_dataset_parallel(out: Path, n: int, seed: int, size: str = "full", subsets: int = 10,
                           lung_masks: bool = True, workers: int = 1, confusers: bool = True) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # One thread per worker: the generator's torch convolutions would otherwise oversubscribe.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")  # SimpleITK's filters likewise
    # spawn, not fork: a parent that already ran torch / ITK (their thread pools) deadlocks forked children
    with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_one, [str(out)] * n, [seed] * n, range(n), [size] * n,
                                [subsets] * n, [lung_masks] * n, [confusers] * n))
    from LesionDetectorLib.data.synthetic import write_dataset_lists

    # Lists last, as write_dataset does: a partial run leaves no list naming a missing scan.
    return write_dataset_lists(out, [res[0] for res in results], [r for res in results for r in res[1]],
                               [r for res in results for r in res[2]], [r for res in results for r in res[3]],
                               [res[4] for res in results])


def check_against_library(n: int = 2, seed: int = 5) -> None:
    """Raise if this writer's files differ from ``data.synthetic.write_dataset``'s (small scans)."""
    from LesionDetectorLib.data.synthetic import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "lib", Path(tmp) / "par"
        for confusers in (True, False):
            sub_a, sub_b = a / str(confusers), b / str(confusers)
            write_dataset(sub_a, n, seed, "small", subsets=2, confusers=confusers)
            write_dataset_parallel(sub_b, n, seed, "small", subsets=2, workers=2, confusers=confusers)
        files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        if files_a != files_b:
            raise SystemExit(f"file lists differ: {files_a} vs {files_b}")
        _, mismatch, errors = filecmp.cmpfiles(a, b, [str(p) for p in files_a], shallow=False)
        if mismatch or errors:
            raise SystemExit(f"files differ from write_dataset's: {mismatch + errors}")
        print(f"synth_parallel: {len(files_a)} files identical to write_dataset's")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", choices=("full", "small"), default="full")
    p.add_argument("--subsets", type=int, default=10)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--no-confusers", action="store_true",
                   help="the generator without its confusers (as `lesion-detector synth --no-confusers`)")
    p.add_argument("--check", action="store_true", help="first compare with write_dataset on 2 small scans")
    args = p.parse_args(argv)
    if args.check:
        check_against_library()
    t0 = time.time()
    summary = write_dataset_parallel(args.out, args.n, args.seed, args.size, args.subsets, workers=args.workers,
                                     confusers=not args.no_confusers)
    summary["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
