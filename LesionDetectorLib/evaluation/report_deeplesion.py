"""DeepLesion evaluation report: ``report.json``, ``report.md`` (the paper's Tables V and VI)
and ``froc.png``, written atomically into one directory.

``report.json`` (schema ``lesion-detector/deeplesion-evaluation`` 1.0)::

    {"schema", "schema_version", "library_version",
     "fp_rates": [0.5, 1, 2, 4, 8, 16], "large_lesion_mm": 48, "size_buckets": {"<10": [0, 10], ...},
     "counts": {"predictions", "predictions_evaluated", "dropped_over_max_marks", "max_marks_per_image"},
     "all": {...}, "without_large": {...},          # DeepLesionResult.to_dict()
     "inputs": {...}}

Each of ``all`` / ``without_large`` holds ``n_images``, ``n_lesions``, ``sensitivities``
(FP-per-image rate -> sensitivity), ``average``, ``froc`` (mean at 1/8 .. 8), ``lesion_counts``,
``by_type`` and ``by_size`` (group -> rate -> sensitivity). Undefined numbers are ``null``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

from ..version import __version__
from .deeplesion_metrics import LARGE_LESION_MM, SIZE_BUCKETS, DeepLesionResult, SubsetMetrics
from .report import clean_json, fmt, froc_axes, new_figure, rate_key, save_png, write_json, write_markdown

REPORT_SCHEMA = "lesion-detector/deeplesion-evaluation"
REPORT_SCHEMA_VERSION = "1.0"
#: FP-per-image ticks of the FROC figure: LUNA16's 1/8 .. 8 and Table V's 16.
_FIGURE_TICKS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)

_SUBSETS = (("all", "All lesions"), ("without_large", f"Without lesions >= {LARGE_LESION_MM:g} mm (*)"))


def report_dict(result: DeepLesionResult, inputs: Optional[Dict[str, str]] = None,
                counts: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """JSON-ready summary of a :class:`~.deeplesion_metrics.DeepLesionResult`."""
    out: Dict[str, Any] = {
        "schema": REPORT_SCHEMA, "schema_version": REPORT_SCHEMA_VERSION, "library_version": __version__,
        "fp_rates": [float(r) for r in result.all_lesions.sensitivities],
        "large_lesion_mm": LARGE_LESION_MM,
        "size_buckets": {k: [lo, hi if math.isfinite(hi) else None] for k, (lo, hi) in SIZE_BUCKETS.items()},
        "counts": dict(counts or {}),
        **result.to_dict(),
    }
    if inputs:
        out["inputs"] = dict(inputs)
    return clean_json(out)


def _rate_header(rates: Sequence[float]) -> Sequence[str]:
    return [rate_key(r) for r in rates]


def _group_table(m: SubsetMetrics, groups: Dict[str, Dict[float, float]], rates: Sequence[float],
                 label: str) -> list:
    lines = [f"| {label} | lesions | " + " | ".join(_rate_header(rates)) + " |",
             "|---|---|" + "---|" * len(rates)]
    for name, sens in groups.items():
        lines.append(f"| {name} | {m.lesion_counts.get(name, 0)} | "
                     + " | ".join(fmt(sens.get(r)) for r in rates) + " |")
    if not groups:
        lines.append("| (none) | 0 | " + " | ".join("n/a" for _ in rates) + " |")
    return lines


def report_markdown(result: DeepLesionResult, counts: Optional[Dict[str, Any]] = None) -> str:
    rates = list(result.all_lesions.sensitivities)
    a, w = result.all_lesions, result.without_large
    cap = (counts or {}).get("max_marks_per_image")
    lines = ["# DeepLesion evaluation", "",
             f"{a.n_images} scan chunks (\"images\": the FP rates are per chunk), {a.n_lesions} lesions ("
             f"{a.n_lesions - w.n_lesions} with a RECIST long diameter >= {LARGE_LESION_MM:g} mm). LUNA16 hit "
             "criterion: a mark hits a lesion when its centre lies closer than the lesion's radius; one hit per "
             f"lesion; {'at most %d marks per chunk' % cap if cap else 'every mark kept'}. In the (*) rows the "
             f"lesions >= {LARGE_LESION_MM:g} mm leave the denominator and marks on them are ignored.", "",
             "## Table V: sensitivity at FP per image", "",
             "| lesions | n | " + " | ".join(_rate_header(rates)) + " | average | FROC (1/8..8) |",
             "|---|---|" + "---|" * (len(rates) + 2)]
    for key, label in _SUBSETS:
        m = a if key == "all" else w
        lines.append(f"| {label} | {m.n_lesions} | " + " | ".join(fmt(m.sensitivities[r]) for r in rates)
                     + f" | **{fmt(m.average)}** | {fmt(m.froc)} |")
    lines += ["", "## Table VI: sensitivity by lesion type and by long diameter", "",
              "A group's sensitivity is read at the thresholds of the whole set's FP rate (false positives have "
              "no type or size).", ""]
    for key, label in _SUBSETS:
        m = a if key == "all" else w
        lines += [f"### {label}", ""]
        lines += _group_table(m, m.by_type, rates, "lesion type")
        lines.append("")
        size_groups = {name: m.by_size.get(name, {}) for name in SIZE_BUCKETS}
        lines += _group_table(m, size_groups, rates, "long diameter (mm)")
        lines.append("")
    if counts:
        lines += ["## Counts", ""]
        lines += [f"- {k.replace('_', ' ')}: {'all' if v is None else v}" for k, v in counts.items()]
    return "\n".join(lines).rstrip() + "\n"


def plot_deeplesion_froc(result: DeepLesionResult, path: Union[str, Path],
                         curves: Optional[Dict[str, Dict[float, float]]] = None) -> Path:
    """FROC curves with and without the large lesions on a log2 FP/image axis (1/8 .. 16) and the
    Table V points marked; without ``curves`` (:func:`.deeplesion_metrics.curve_points`) only the
    points are drawn."""
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    styles = {"all": ("tab:blue", "o"), "without_large": ("tab:orange", "s")}
    for key, label in _SUBSETS:
        m = result.all_lesions if key == "all" else result.without_large
        colour, marker = styles[key]
        if curves and curves.get(key):
            xs = np.array(sorted(curves[key]))
            ax.plot(xs, [curves[key][x] for x in xs], color=colour, lw=2,
                    label=f"{label}: {m.n_lesions} lesions, average {m.average:.3f}")
            point_label = None
        else:
            point_label = f"{label}: {m.n_lesions} lesions, average {m.average:.3f}"
        rates = list(m.sensitivities)
        ax.plot(rates, [m.sensitivities[r] for r in rates], marker, color=colour, ms=5, label=point_label)
        for r in rates:
            ax.annotate(f"{m.sensitivities[r]:.3f}", (r, m.sensitivities[r]), textcoords="offset points",
                        xytext=(0, -13 if key == "all" else 7), ha="center", fontsize=7, color=colour)
    froc_axes(ax, _FIGURE_TICKS, "Average number of false positives per image (scan chunk)", y_max=1.02)
    ax.set_title(f"DeepLesion FROC — {result.all_lesions.n_images} chunks")
    ax.legend(loc="lower right", fontsize=8)
    return save_png(fig, path)


def write_deeplesion_report(result: DeepLesionResult, out_dir: Union[str, Path],
                            inputs: Optional[Dict[str, str]] = None, counts: Optional[Dict[str, Any]] = None,
                            curves: Optional[Dict[str, Dict[float, float]]] = None) -> Dict[str, Path]:
    """Write report.json, report.md and froc.png into ``out_dir``; returns name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "report.json": write_json(out / "report.json", report_dict(result, inputs, counts)),
        "report.md": write_markdown(out / "report.md", report_markdown(result, counts)),
        "froc.png": plot_deeplesion_froc(result, out / "froc.png", curves),
    }
