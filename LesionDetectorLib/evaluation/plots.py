"""FROC and TNP figures (matplotlib, Agg canvas: no display, no global pyplot state)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

from .froc import CPM_FP_RATES

_DENSE_FPS = np.geomspace(CPM_FP_RATES[0], CPM_FP_RATES[-1], 1025)


def _figure(size=(6.4, 4.8)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Union[str, Path]) -> Path:
    from ..atomic import atomic_write_bytes
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")
    return atomic_write_bytes(Path(path), buf.getvalue())


def plot_froc(result, path: Union[str, Path], title: Optional[str] = None) -> Path:
    """FROC curve on a log2 FP/scan axis (1/8 ... 8, as the official plot) with the bootstrap
    band when present and the 7 CPM points marked. ``result`` is a :class:`~.luna16_evaluation.FrocResult`."""
    from .froc import CurveEvents

    sens_dense = CurveEvents(result.matching).sensitivity_at(_DENSE_FPS)[0]
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    if result.ci is not None and result.ci.n_draws_valid:
        ax.fill_between(result.ci.band_fps, result.ci.band_lower, result.ci.band_upper, color="tab:blue", alpha=0.15,
                        lw=0, label=f"{result.ci.confidence:.0%} CI ({result.ci.n_draws} scan resamples)")
    ax.plot(_DENSE_FPS, sens_dense, color="tab:blue", lw=2, label=f"FROC (CPM {result.cpm:.3f})")
    rates = np.array(list(result.sensitivities.keys()))
    ax.plot(rates, list(result.sensitivities.values()), "o", color="tab:red", ms=5, label="CPM points")
    for r, s in result.sensitivities.items():
        ax.annotate(f"{s:.3f}", (r, s), textcoords="offset points", xytext=(0, -13), ha="center", fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(CPM_FP_RATES))
    ax.set_xticklabels(["1/8", "1/4", "1/2", "1", "2", "4", "8"])
    ax.set_xlim(CPM_FP_RATES[0], CPM_FP_RATES[-1])
    ax.set_ylim(0, 1)
    ax.set_yticks(np.arange(0, 1.01, 0.1))
    ax.set_xlabel("Average number of false positives per scan")
    ax.set_ylabel("Sensitivity")
    ax.set_title(title or f"FROC — {result.n_scans} scans, {result.n_nodules} nodules")
    ax.grid(True, which="both", alpha=0.4)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_tnp(result, path: Union[str, Path]) -> Path:
    """TNP against sensitivity over all thresholds, with the TNP operating point marked."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    curve = result.tnp_curve
    if curve.sensitivity.shape[0] and np.isfinite(curve.tnp).any():
        ax.step(curve.sensitivity, curve.tnp, where="post", color="tab:green", lw=2, label="TNP vs sensitivity")
    tnp = result.tnp
    if np.isfinite(tnp.tnp):
        ax.plot([tnp.operating_point.sensitivity], [tnp.tnp], "o", color="tab:red",
                label=f"TNP {tnp.tnp:.3f} at threshold {tnp.operating_point.threshold:.4g}")
        ax.axvline(tnp.target_sensitivity, color="gray", ls="--", lw=1)
    else:
        ax.text(0.5, 0.5, "no negative patient (scan without nodule) in the evaluation set",
                ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("Sensitivity (nodule level)")
    ax.set_ylabel("TNP = true-negative patients / negative patients")
    ax.set_title(f"True Negative Patients — {tnp.n_negative} negative scans")
    ax.grid(True, alpha=0.4)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)
