"""Render docs/reviewer_view.png: what the reviewer sees in the Lesion Detector panel.

A picture made with matplotlib from the library's outputs (a CT volume and the
findings JSON that ``lesion-detector detect`` wrote for it): the axial slice through
the top-ranked candidate with every candidate near that slice circled and labelled
("N1 0.93", as the markups are in Slicer), the patient flag banner with its threshold
and operating point, and the ranked candidate table with review status. It is not a
Slicer screenshot, and says so on the image.

Usage::

    lesion-detector detect scan.mhd --out results --format json
    python scripts/render_reviewer_view.py --volume scan.mhd --findings results/scan/findings.json

Without ``--volume/--findings`` it generates the synthetic sample CT (fixed seed) and runs
the bundled model on it through the library API.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Circle  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "reviewer_view.png"
CAPTION = "rendered from library outputs, not a Slicer screenshot"
FLAG_COLOURS = {"positive": "#c62828", "likely negative": "#2e7d32"}
REVIEW_COLOURS = {"accepted": "#c8e6c9", "rejected": "#ffcdd2", "unreviewed": "white"}


def render(volume, findings: Dict[str, Any], out: Path, caption: str = CAPTION, max_rows: int = 10) -> Path:
    """Draw the reviewer's view of ``findings`` (schema v1.0 dict) on ``volume`` into ``out``."""
    from LesionDetectorLib.coordinates import world_to_index

    candidates = sorted(findings["candidates"], key=lambda c: c["rank"])
    if candidates:
        centres = world_to_index(volume, np.array([c["center_lps"] for c in candidates], dtype=float))
        z = int(np.clip(round(centres[0][0]), 0, volume.shape_zyx[0] - 1))
    else:
        centres = np.zeros((0, 3))
        z = volume.shape_zyx[0] // 2
    fig = plt.figure(figsize=(12, 6.4), dpi=110)
    ax = fig.add_axes([0.02, 0.08, 0.46, 0.84])
    sy, sx = volume.spacing[1], volume.spacing[0]
    ax.imshow(np.clip(volume.array[z], -1350, 150), cmap="gray", vmin=-1350, vmax=150,
              aspect=sy / sx, interpolation="bilinear")
    for cand, (cz, cy, cx) in zip(candidates, centres):
        radius_vox = max(cand["diameter_mm"] / 2.0 / sx, 2.0)
        if abs(cz - z) * volume.spacing[2] > max(cand["diameter_mm"], 5.0):
            continue  # not visible on this slice, as in Slicer's slice view
        colour = "#ff3b30" if cand["score"] >= (findings["patient_flag"].get("threshold") or 1.1) else "#ffd60a"
        ax.add_patch(Circle((cx, cy), radius_vox * 1.8, fill=False, edgecolor=colour, linewidth=1.8))
        ax.text(cx + radius_vox * 2.0, cy - radius_vox * 2.0, f"{cand['id']} {cand['score']:.2f}", color=colour,
                fontsize=10, fontweight="bold")
    ax.set_title(f"Axial slice {z} (through the top-ranked candidate)", fontsize=10)
    ax.set_axis_off()

    flag = findings["patient_flag"]
    thr = flag.get("threshold")
    flag_text = (f"Patient flag: {flag['status'].upper()}\nthreshold "
                 f"{'n/a' if thr is None else format(thr, '.3f')} at operating point {flag.get('operating_point')}")
    fig.text(0.51, 0.88, flag_text, fontsize=13, fontweight="bold", color="white",
             bbox=dict(facecolor=FLAG_COLOURS.get(flag["status"], "#757575"), edgecolor="none", pad=8))
    model = findings.get("model", {})
    prov = findings.get("provenance", {})
    fig.text(0.51, 0.78, f"Model: {model.get('name')} {model.get('version')}   device {prov.get('device')}\n"
                         f"roi_align_3d: {prov.get('op_backend')}", fontsize=9)

    tab = fig.add_axes([0.51, 0.1, 0.47, 0.62])
    tab.set_axis_off()
    rows = []
    for c in candidates[:max_rows]:
        x, y, zz = c["center_lps"]
        rows.append([str(c["rank"]), f"{c['score']:.3f}", f"{c['diameter_mm']:.1f}",
                     f"R {-x:.1f}, A {-y:.1f}, S {zz:.1f}", c.get("review", "unreviewed")])
    if rows:
        table = tab.table(cellText=rows, colLabels=["Rank", "Score", "Diameter (mm)", "Location (RAS mm)", "Status"],
                          loc="upper center", colWidths=[0.09, 0.12, 0.17, 0.42, 0.18])
        table.auto_set_font_size(False)
        table.set_fontsize(9)
        table.scale(1.0, 1.35)
        for r, c in enumerate(candidates[:max_rows], start=1):
            for col in range(5):
                table[r, col].set_facecolor(REVIEW_COLOURS.get(c.get("review", "unreviewed"), "white"))
    else:
        tab.text(0.5, 0.9, "No candidates", ha="center", fontsize=12)
    if len(candidates) > max_rows:
        tab.text(0.5, 0.0, f"... {len(candidates) - max_rows} more in the exports", ha="center", fontsize=9)
    fig.text(0.5, 0.015, caption, ha="center", fontsize=10, style="italic", color="#555555")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _sample_outputs(seed: int, model: Optional[str]):
    from LesionDetectorLib import Detector
    from LesionDetectorLib.data import synthetic

    volume = synthetic.generate_scan(seed, 0, size="full").to_volume()
    detector = Detector.from_pretrained(model or "luna16-synthetic")
    return volume, detector(volume).to_dict()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volume", type=Path, help="CT the findings belong to (any format read_volume reads)")
    parser.add_argument("--findings", type=Path, help="findings JSON written by lesion-detector detect")
    parser.add_argument("--seed", type=int, default=2, help="synthetic sample seed when no inputs are given")
    parser.add_argument("--model", help="model for the synthetic sample (default luna16-synthetic)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--caption", default=CAPTION)
    args = parser.parse_args(argv)
    if (args.volume is None) != (args.findings is None):
        parser.error("give both --volume and --findings, or neither")
    if args.volume is not None:
        from LesionDetectorLib.io import read_volume

        volume = read_volume(str(args.volume), allow_non_ct=True)
        findings = json.loads(args.findings.read_text())
    else:
        volume, findings = _sample_outputs(args.seed, args.model)
    print(render(volume, findings, args.out, caption=args.caption))
    return 0


if __name__ == "__main__":
    sys.exit(main())
