"""Fill the training cache on many cores: one worker per LUNA16 subset of each data folder.

    python scripts/device/cache_parallel.py --cache runs/gpu/cache --data data/train data/val --workers 16

``train`` preprocesses scans one after the other (``training.cache.build_luna16_cache``) and
skips the ones already cached; each worker here runs that same function on one subset, so
``train --cache`` afterwards finds every scan ready.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _one(data: str, cache: str, subset: int) -> int:
    from LesionDetectorLib.training.cache import build_luna16_cache

    return len(build_luna16_cache(data, cache, subsets=[subset]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--data", type=Path, nargs="+", required=True)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the workers, not threads, share the cores
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")  # SimpleITK's filters likewise
    jobs = [(str(d), str(args.cache), int(s.name[len("subset"):]))
            for d in args.data for s in sorted(d.glob("subset*")) if s.is_dir() and s.name[6:].isdigit()]
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        counts = list(pool.map(_one, *zip(*jobs))) if jobs else []
    print(json.dumps({"cache": str(args.cache), "jobs": len(jobs), "scans": sum(counts),
                      "wall_s": round(time.time() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
