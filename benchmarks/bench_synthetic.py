#!/usr/bin/env python
"""Time full-size synthetic scan generation on one core; print a Markdown table.

Usage: python benchmarks/bench_synthetic.py [--n 3] [--seed 0] [--size full] [--write DIR]
(--write also times writing the .mhd/.raw; the table's "total" is generation only.)
"""
from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from LesionDetectorLib.data.synthetic import generate_scan, write_scan  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", default="full", choices=("full", "small"))
    ap.add_argument("--write", default=None, help="folder to write the scans to (times the .mhd write)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"Synthetic CT generation, {args.size} size, 1 thread, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}\n")
    print("| scan | shape (x, y, z) | spacing (mm) | nodules | anatomy s | trees s | nodules s | scanner s "
          "| total s | write s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    totals = []
    for i in range(args.n):
        scan = generate_scan(args.seed, i, args.size)
        t = scan.info["timings_s"]
        write_s = float("nan")
        if args.write:
            os.makedirs(args.write, exist_ok=True)
            t0 = time.perf_counter()
            write_scan(scan, os.path.join(args.write, f"{scan.series_uid}.mhd"))
            write_s = time.perf_counter() - t0
        totals.append(t["total"])
        sp = "x".join(f"{v:.2f}" for v in scan.spacing)
        print(f"| {i} | {'x'.join(str(v) for v in scan.hu.shape[::-1])} | {sp} | {len(scan.nodules)} "
              f"| {t['anatomy']:.2f} | {t['trees']:.2f} | {t['nodules']:.2f} | {t['scanner']:.2f} "
              f"| {t['total']:.2f} | {write_s:.2f} |")
    print(f"\nmean {np.mean(totals):.2f} s per scan")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
