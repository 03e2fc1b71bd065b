"""The report family's shared parts: JSON without NaN, number formatting, atomic JSON / Markdown /
PNG writing and the FROC axes. :mod:`.report_luna16` and :mod:`.report_deeplesion` build their
files from these; the metric modules compute and never write.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_text

PathLike = Union[str, Path]


def clean_json(value: Any) -> Any:
    """JSON has no NaN/inf: undefined numbers become null (recursively through dicts and lists)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def fmt(x: Optional[float], digits: int = 3) -> str:
    """A number for a Markdown table; ``n/a`` for None, NaN and infinities."""
    if x is None:
        return "n/a"
    x = float(x)
    return f"{x:.{digits}f}" if math.isfinite(x) else "n/a"


def rate_key(rate: float) -> str:
    """The JSON key of an FP rate: ``0.125``, ``1``, ``16``."""
    return f"{rate:g}"


def write_json(path: PathLike, document: Any) -> Path:
    """``document`` (cleaned of NaN) as indented JSON, atomically."""
    return atomic_write_text(Path(path), json.dumps(clean_json(document), indent=2) + "\n")


def write_markdown(path: PathLike, text: str) -> Path:
    return atomic_write_text(Path(path), text)


def new_figure(size=(6.4, 4.8)):
    """A matplotlib figure on an Agg canvas: no display, no global pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")
    return atomic_write_bytes(Path(path), buf.getvalue())


def rate_label(rate: float) -> str:
    """``1/8`` for 0.125, ``2`` for 2.0: FP rates as the official plot labels them."""
    return f"1/{round(1 / rate):d}" if rate < 1 else f"{rate:g}"


def froc_axes(ax, ticks: Sequence[float], xlabel: str, y_max: float = 1.0) -> None:
    """FROC axes as the official LUNA16 plot draws them: log2 FP axis spanning ``ticks``,
    fraction labels, sensitivity 0 .. ``y_max`` in steps of 0.1, grid on both tick sets."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(ticks))
    ax.set_xticklabels([rate_label(t) for t in ticks])
    ax.set_xlim(ticks[0], ticks[-1])
    ax.set_ylim(0, y_max)
    ax.set_yticks(np.arange(0, 1.01, 0.1))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Sensitivity")
    ax.grid(True, which="both", alpha=0.4)
