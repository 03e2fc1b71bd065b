"""Time lung_mask + preprocess on a 512 x 512 x 300 chest phantom, on one core.

Prints one Markdown table row for docs/benchmarks.md::

    | scan (voxels, spacing mm) | threads | lung_mask s | preprocess s | crop shape (1 mm) | lung mL |

The phantom (built with numpy broadcasting, not part of the timing) is a typical LUNA16
geometry: 0.7 x 0.7 mm pixels, 1.25 mm slices, an elliptic-cylinder body (40 HU), two
lung ellipsoids (-850 HU) with vessel-like tubes, a few nodules and 20 HU noise, in air.

Usage: python benchmarks/bench_preprocess.py [--threads 1] [--repeat 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import SimpleITK as sitk

from LesionDetectorLib.preprocess import lung_mask, preprocess
from LesionDetectorLib.volume import Volume

SHAPE_ZYX = (300, 512, 512)
SPACING = (0.7, 0.7, 1.25)


def phantom(seed: int = 0) -> Volume:
    nz, ny, nx = SHAPE_ZYX
    x = (np.arange(nx, dtype=np.float32) - nx / 2) * SPACING[0]
    y = (np.arange(ny, dtype=np.float32) - ny / 2) * SPACING[1]
    z = (np.arange(nz, dtype=np.float32) - nz / 2) * SPACING[2]
    zz, yy, xx = z[:, None, None], y[None, :, None], x[None, None, :]
    body = (xx / 165.0) ** 2 + (yy / 120.0) ** 2 <= 1.0
    hu = np.broadcast_to(np.where(body, np.float32(40.0), np.float32(-1000.0)), SHAPE_ZYX).copy()
    for side in (-80.0, 80.0):
        lung = ((xx - side) / 60.0) ** 2 + (yy / 85.0) ** 2 + ((zz + 10.0) / 150.0) ** 2 <= 1.0
        hu[lung] = -850.0
        for k in range(6):  # vessels: tubes along z inside each lung
            vx, vy = side + 25.0 * np.cos(k), 40.0 * np.sin(k)
            hu[((xx - vx) ** 2 + (yy - vy) ** 2 <= 9.0) & lung] = 30.0
    rng = np.random.default_rng(seed)
    for _ in range(5):  # nodules 4-20 mm
        c = np.array([rng.choice([-80.0, 80.0]) + rng.uniform(-25, 25), rng.uniform(-40, 40), rng.uniform(-80, 80)])
        r = rng.uniform(2.0, 10.0)
        hu[(xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2 <= r * r] = 50.0
    hu += rng.normal(0.0, 20.0, size=(1, ny, nx)).astype(np.float32)  # per-slice-identical noise: cheap, realistic texture
    return Volume(hu, SPACING, (-nx / 2 * SPACING[0], -ny / 2 * SPACING[1], -nz / 2 * SPACING[2]), np.eye(3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="SimpleITK threads (default 1: one core)")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions; the best is reported")
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    vol = phantom()
    t_mask, t_pre = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        mask = lung_mask(vol)
        t1 = time.perf_counter()
        pre = preprocess(vol)
        t2 = time.perf_counter()
        t_mask.append(t1 - t0)
        t_pre.append(t2 - t1)
    print("| scan (voxels, spacing mm) | threads | lung_mask s | preprocess s | crop shape (1 mm) | lung mL |")
    print("|---|---|---|---|---|---|")
    print(f"| {'x'.join(map(str, SHAPE_ZYX[::-1]))}, {SPACING} | {args.threads} | {min(t_mask):.2f} | "
          f"{min(t_pre):.2f} | {'x'.join(map(str, pre.image.shape))} | {pre.lung_volume_ml:.0f} "
          f"(mask {np.count_nonzero(mask) * np.prod(SPACING) / 1000:.0f}) |")


if __name__ == "__main__":
    main()
