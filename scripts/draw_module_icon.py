"""Draw LesionDetector/Resources/Icons/LesionDetector.png (128x128): two lungs, one marked nodule.

Run: python scripts/draw_module_icon.py
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Circle, Ellipse, FancyBboxPatch  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "LesionDetector" / "Resources" / "Icons" / "LesionDetector.png"


def main() -> None:
    fig = plt.figure(figsize=(1.28, 1.28), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 128)
    ax.set_ylim(0, 128)
    ax.axis("off")
    ax.add_patch(FancyBboxPatch((6, 6), 116, 116, boxstyle="round,pad=0,rounding_size=18",
                                facecolor="#1f2a36", edgecolor="none"))
    ax.add_patch(Ellipse((64, 62), 100, 84, facecolor="#8a98a8", edgecolor="none"))  # body
    for x in (42, 86):
        ax.add_patch(Ellipse((x, 64), 34, 58, facecolor="#111820", edgecolor="none"))  # lungs
    ax.add_patch(Circle((64, 70), 6, facecolor="#c8ced6", edgecolor="none"))  # mediastinum
    ax.add_patch(Circle((88, 76), 4.5, facecolor="#e8e8e8", edgecolor="none"))  # nodule
    ax.add_patch(Circle((88, 76), 12, facecolor="none", edgecolor="#ff3b30", linewidth=2.6))  # detection
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=100, transparent=True)
    plt.close(fig)


if __name__ == "__main__":
    main()
