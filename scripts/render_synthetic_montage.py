#!/usr/bin/env python
"""Render ``docs/synthetic_montage.png``: axial slices of synthetic scans through nodules (lung window).

Generates full-size scans with :func:`LesionDetectorLib.data.synthetic.generate_scan` until the
montage holds a juxta-pleural and a ground-glass / part-solid nodule (or ``--max-scans`` is
reached), then shows, per nodule, the whole slice and a 60 mm crop around it.

Usage: python scripts/render_synthetic_montage.py [--seed 0] [--size full] [--out docs/synthetic_montage.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from LesionDetectorLib.data.synthetic import generate_scan  # noqa: E402

WINDOW = (-1350, 150)   # lung window: level -600, width 1500


def pick(scans, want=4):
    """Nodules to show: a juxta-pleural, a ground-glass / part-solid, then the largest others."""
    chosen = []
    for rule in (lambda n: n.placement == "juxta-pleural",
                 lambda n: n.category in ("ground-glass", "part-solid"),
                 lambda n: n.placement == "juxta-vascular",
                 lambda n: True):
        for scan in scans:
            for n in sorted(scan.nodules, key=lambda n: -n.diameter_mm):
                if n.diameter_mm >= 4 and rule(n) and all(n is not c[1] for c in chosen):
                    chosen.append((scan, n))
                    break
            if len(chosen) >= want or (chosen and rule(chosen[-1][1]) and chosen[-1][1] is not None):
                break
        if len(chosen) >= want:
            break
    return chosen[:want]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", default="full", choices=("full", "small"))
    ap.add_argument("--max-scans", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "synthetic_montage.png")
    args = ap.parse_args(argv)
    scans = []
    for i in range(args.max_scans):
        scans.append(generate_scan(args.seed, i, args.size))
        cats = {(n.placement, n.category) for s in scans for n in s.nodules if n.diameter_mm >= 4}
        if any(p == "juxta-pleural" for p, _ in cats) and any(c in ("ground-glass", "part-solid") for _, c in cats) \
                and sum(len(s.nodules) for s in scans) >= 4:
            break
    chosen = pick(scans)
    fig, axes = plt.subplots(2, len(chosen), figsize=(4 * len(chosen), 8.4), facecolor="black")
    axes = np.atleast_2d(axes).reshape(2, -1)
    for col, (scan, n) in enumerate(chosen):
        k, j, i = np.round(n.center_zyx).astype(int)
        img = scan.hu[k]
        sy, sx = scan.spacing[1], scan.spacing[0]
        flip_note = " (slices reversed)" if scan.info.get("flip_z") else ""
        ax = axes[0, col]
        ax.imshow(img, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=sy / sx)
        ax.add_patch(plt.Circle((i, j), n.diameter_mm / sx, fill=False, color="yellow", lw=0.8))
        ax.set_title(f"{n.category}, {n.placement}\n{n.diameter_mm:.1f} mm, {n.readers} readers{flip_note}",
                     color="white", fontsize=9)
        half = int(30.0 / sx)
        crop = img[max(0, j - half):j + half, max(0, i - half):i + half]
        axes[1, col].imshow(crop, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=sy / sx)
        axes[1, col].set_title(f"60 mm crop, slice {k}, spacing {scan.spacing[0]:.2f}/{scan.spacing[2]:.2f} mm",
                               color="white", fontsize=8)
        for a in axes[:, col]:
            a.axis("off")
    fig.suptitle("LesionDetector synthetic chest CT (LIDC nodule shapes), lung window W1500 L-600",
                 color="white", fontsize=11)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110, facecolor="black")
    print(f"wrote {args.out} from {len(scans)} scan(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
