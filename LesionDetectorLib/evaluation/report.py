"""LUNA16 evaluation report: ``report.json``, ``report.md``, ``operating_points.json`` and
the two figures, all written atomically (temp file + rename) into one directory."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Optional, Union

from ..atomic import atomic_write_text
from ..version import __version__

REPORT_SCHEMA = "lesion-detector/luna16-evaluation"
REPORT_SCHEMA_VERSION = "1.0"


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: undefined numbers become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _rate_key(rate: float) -> str:
    return f"{rate:g}"


def report_dict(result, inputs: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """JSON-ready summary of a :class:`~.luna16_evaluation.FrocResult`."""
    tnp = result.tnp
    ci = result.ci
    out: Dict[str, Any] = {
        "schema": REPORT_SCHEMA, "schema_version": REPORT_SCHEMA_VERSION, "library_version": __version__,
        "cpm": result.cpm, "froc_rule": result.froc_rule,
        "sensitivities": {_rate_key(r): s for r, s in result.sensitivities.items()},
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
                            "sensitivity_ci": {_rate_key(r): list(b) for r, b in ci.sensitivity_ci.items()}}
    if inputs:
        out["inputs"] = dict(inputs)
    return _clean(out)


def _fmt(x: Optional[float], digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def report_markdown(result) -> str:
    d = report_dict(result)
    ci = result.ci
    lines = ["# LUNA16 evaluation", "",
             f"{d['n_scans']} scans, {d['n_nodules']} nodules, at most {d['max_marks_per_scan']} marks per scan "
             "(official LUNA16 rules: hit = centre closer than the nodule radius, marks on excluded findings "
             "ignored, one hit per nodule).", "",
             "| FP/scan | sensitivity | " + (f"{ci.confidence:.0%} CI |" if ci else ""),
             "|---|---|" + ("---|" if ci else "")]
    for rate, sens in result.sensitivities.items():
        row = f"| {rate:g} | {_fmt(sens)} |"
        if ci:
            lo, hi = ci.sensitivity_ci[rate]
            row += f" {_fmt(lo)} – {_fmt(hi)} |"
        lines.append(row)
    cpm_line = f"**CPM {_fmt(result.cpm)}**"
    if ci:
        cpm_line += f" ({ci.confidence:.0%} CI {_fmt(ci.cpm_ci[0])} – {_fmt(ci.cpm_ci[1])}, " \
                    f"{ci.n_draws} scan resamples, seed {ci.seed})"
    lines += ["", cpm_line, "", "## Counts", ""]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in result.matching.counts.items()]
    t = result.tnp
    lines += ["", "## True Negative Patients", "",
              f"At threshold {t.operating_point.threshold:.6g} (target sensitivity {t.target_sensitivity:.2f}, "
              f"reached {_fmt(t.operating_point.sensitivity)}{'' if t.operating_point.reached else ', NOT reached'}): "
              f"TNP = {t.n_true_negative}/{t.n_negative} = {_fmt(t.tnp)}", "",
              "## Operating points", "", "| name | threshold | sensitivity | FP/scan | reached |", "|---|---|---|---|---|"]
    for name, p in result.operating_points.items():
        lines.append(f"| {name} | {p.threshold:.6g} | {_fmt(p.sensitivity)} | {_fmt(p.fp_per_scan)} | "
                     f"{'yes' if p.reached else 'no'} |")
    return "\n".join(lines) + "\n"


def write_report(result, out_dir: Union[str, Path], inputs: Optional[Dict[str, str]] = None) -> Dict[str, Path]:
    """Write report.json, report.md, operating_points.json, froc.png and tnp.png into ``out_dir``."""
    from .operating_points import write_operating_points
    from .plots import plot_froc, plot_tnp

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "report.json": atomic_write_text(out / "report.json", json.dumps(report_dict(result, inputs), indent=2) + "\n"),
        "report.md": atomic_write_text(out / "report.md", report_markdown(result)),
        "operating_points.json": write_operating_points(result.operating_points, out / "operating_points.json"),
        "froc.png": plot_froc(result, out / "froc.png"),
        "tnp.png": plot_tnp(result, out / "tnp.png"),
    }
