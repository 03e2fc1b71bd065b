"""LUNA16 evaluation report: ``report.json``, ``report.md``, ``operating_points.json``,
``froc.png`` and ``tnp.png``, all written atomically into one directory (shared parts in
:mod:`.report`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np

from ..version import __version__
from .froc import CPM_FP_RATES, CurveEvents
from .operating_points import OperatingPoint, operating_points_dict
from .report import clean_json, fmt, froc_axes, new_figure, rate_key, save_png, write_json, write_markdown

REPORT_SCHEMA = "lesion-detector/luna16-evaluation"
REPORT_SCHEMA_VERSION = "1.0"
_DENSE_FPS = np.geomspace(CPM_FP_RATES[0], CPM_FP_RATES[-1], 1025)


def report_dict(result, inputs: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """JSON-ready summary of a :class:`~.luna16_evaluation.FrocResult` (NaN as None)."""
    tnp = result.tnp
    ci = result.ci
    out: Dict[str, Any] = {
        "schema": REPORT_SCHEMA, "schema_version": REPORT_SCHEMA_VERSION, "library_version": __version__,
        "cpm": result.cpm, "froc_rule": result.froc_rule,
        "sensitivities": {rate_key(r): s for r, s in result.sensitivities.items()},
        "n_scans": result.n_scans, "n_nodules": result.n_nodules, "max_marks_per_scan": result.max_marks,
        "counts": dict(result.matching.counts),
        "tnp": {"target_sensitivity": tnp.target_sensitivity, "tnp": tnp.tnp, "n_negative": tnp.n_negative,
                "n_true_negative": tnp.n_true_negative, **tnp.operating_point.to_dict()},
        "operating_points": {k: p.to_dict() for k, p in result.operating_points.items()},
        "bootstrap": None,
    }
    if ci is not None:
        out["bootstrap"] = {"draws": ci.n_draws, "valid_draws": ci.n_draws_valid, "seed": ci.seed,
                            "confidence": ci.confidence, "cpm_ci": list(ci.cpm_ci),
                            "sensitivity_ci": {rate_key(r): list(b) for r, b in ci.sensitivity_ci.items()}}
    if inputs:
        out["inputs"] = dict(inputs)
    return clean_json(out)


def report_markdown(result) -> str:
    ci = result.ci
    rule = ("read as the official script does: its 10001-point grid, the point nearest each rate"
            if result.froc_rule == "official" else "read at the rates themselves")
    lines = ["# LUNA16 evaluation", "",
             f"{result.n_scans} scans, {result.n_nodules} nodules, at most {result.max_marks} marks per scan "
             "(official LUNA16 rules: hit = centre closer than the nodule radius, marks on excluded findings "
             f"ignored, one hit per nodule; sensitivities {rule}).", "",
             "| FP/scan | sensitivity | " + (f"{ci.confidence:.0%} CI |" if ci else ""),
             "|---|---|" + ("---|" if ci else "")]
    for rate, sens in result.sensitivities.items():
        row = f"| {rate:g} | {fmt(sens)} |"
        if ci:
            lo, hi = ci.sensitivity_ci[rate]
            row += f" {fmt(lo)} – {fmt(hi)} |"
        lines.append(row)
    cpm_line = f"**CPM {fmt(result.cpm)}**"
    if ci:
        cpm_line += f" ({ci.confidence:.0%} CI {fmt(ci.cpm_ci[0])} – {fmt(ci.cpm_ci[1])}, " \
                    f"{ci.n_draws} scan resamples, seed {ci.seed})"
    lines += ["", cpm_line, "", "## Counts", ""]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in result.matching.counts.items()]
    t = result.tnp
    lines += ["", "## True Negative Patients", "",
              f"At threshold {t.operating_point.threshold:.6g} (target sensitivity {t.target_sensitivity:.2f}, "
              f"reached {fmt(t.operating_point.sensitivity)}{'' if t.operating_point.reached else ', NOT reached'}): "
              f"TNP = {t.n_true_negative}/{t.n_negative} = {fmt(t.tnp)}", "",
              "## Operating points", "", "| name | threshold | sensitivity | FP/scan | reached |", "|---|---|---|---|---|"]
    for name, p in result.operating_points.items():
        lines.append(f"| {name} | {p.threshold:.6g} | {fmt(p.sensitivity)} | {fmt(p.fp_per_scan)} | "
                     f"{'yes' if p.reached else 'no'} |")
    return "\n".join(lines) + "\n"


def write_operating_points(points: Dict[str, OperatingPoint], path: Union[str, Path]) -> Path:
    """``operating_points.json``, the block a model card carries (the patient flag reads it)."""
    return write_json(path, operating_points_dict(points))


def plot_froc(result, path: Union[str, Path], title: Optional[str] = None) -> Path:
    """FROC curve on a log2 FP/scan axis (1/8 ... 8, as the official plot) with the bootstrap
    band when present and the 7 CPM points marked. ``result`` is a :class:`~.luna16_evaluation.FrocResult`."""
    sens_dense = CurveEvents(result.matching).sensitivity_at(_DENSE_FPS)[0]
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    if result.ci is not None and result.ci.n_draws_valid:
        ax.fill_between(result.ci.band_fps, result.ci.band_lower, result.ci.band_upper, color="tab:blue", alpha=0.15,
                        lw=0, label=f"{result.ci.confidence:.0%} CI ({result.ci.n_draws} scan resamples)")
    ax.plot(_DENSE_FPS, sens_dense, color="tab:blue", lw=2, label=f"FROC (CPM {result.cpm:.3f})")
    rates = np.array(list(result.sensitivities.keys()))
    ax.plot(rates, list(result.sensitivities.values()), "o", color="tab:red", ms=5, label="CPM points")
    for r, s in result.sensitivities.items():
        ax.annotate(f"{s:.3f}", (r, s), textcoords="offset points", xytext=(0, -13), ha="center", fontsize=7)
    froc_axes(ax, CPM_FP_RATES, "Average number of false positives per scan")
    ax.set_title(title or f"FROC — {result.n_scans} scans, {result.n_nodules} nodules")
    ax.legend(loc="lower right", fontsize=8)
    return save_png(fig, path)


def plot_tnp(result, path: Union[str, Path]) -> Path:
    """TNP against sensitivity over all thresholds, with the TNP operating point marked."""
    fig = new_figure()
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
    return save_png(fig, path)


def write_report(result, out_dir: Union[str, Path], inputs: Optional[Dict[str, str]] = None) -> Dict[str, Path]:
    """Write report.json, report.md, operating_points.json, froc.png and tnp.png into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "report.json": write_json(out / "report.json", report_dict(result, inputs)),
        "report.md": write_markdown(out / "report.md", report_markdown(result)),
        "operating_points.json": write_operating_points(result.operating_points, out / "operating_points.json"),
        "froc.png": plot_froc(result, out / "froc.png"),
        "tnp.png": plot_tnp(result, out / "tnp.png"),
    }
