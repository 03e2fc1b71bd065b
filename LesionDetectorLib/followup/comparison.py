"""The follow-up comparison of two scans: registration, pairs, growth, Lung-RADS, and its files.

:func:`compare` takes both scans (HU :class:`~LesionDetectorLib.volume.Volume`) and both
findings; findings without ``characterization`` sizes are measured first with
:func:`LesionDetectorLib.characterization.characterize` (``measure=True``), so the diameters
and volumes compared are segmentations, not the detector's box; where no size could be
measured the detector's diameter is used and each side's ``size_source`` says so.

The two findings of a pair are then measured again the same way (``remeasure_pairs``): the
segmentation takes the detector's diameter as the expected size (cube, vessel opening,
attachment cut), and two detections of one nodule can differ in it by a factor of two (14 and
26 mm for the same real tumour on a scan and its resampled copy), which alone made it "grow" by
8.6 mm. Both are segmented with the mean of the two detections' diameters (when those differ by
more than :data:`SAME_DIAMETER`). Only sizes this
library's segmentation measured are redone: one a reader edited (a re-measured segment) or one
given with the findings from elsewhere is kept as it is.

:func:`write_comparison` writes ``comparison.md`` then ``comparison.json`` (schema
``lesion-detector/comparison`` v1.0, documented in ``docs/architecture.md``), each atomically.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..atomic import atomic_write_text
from ..errors import ComparisonInputError
from ..findings import Findings
from ..version import __version__
from ..volume import Volume
from .lung_rads_followup import GROWTH_MM, exam_category
from .matching import GATE_FACTOR, GATE_MIN_MM, STATUSES, match_nodules, nodule_from_candidate
from .registration import Registration, register_lungs

SCHEMA_NAME = "lesion-detector/comparison"
SCHEMA_VERSION = "1.0"


def study_date(volume: Volume) -> Optional[_dt.date]:
    """The DICOM StudyDate (``YYYYMMDD``) of a volume read from DICOM, else None."""
    text = str(volume.metadata.get("StudyDate") or "").strip()
    if len(text) < 8:
        return None
    try:
        return _dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None


def resolve_interval(prior: Volume, current: Volume, interval_days: Optional[float]) -> Tuple[Optional[float], str]:
    """``(days, source)``: the given interval, else the two StudyDates' difference, else ``(None, "unknown")``."""
    if interval_days is not None:
        if not interval_days > 0:
            raise ComparisonInputError(f"the interval between the scans must be > 0 days, got {interval_days}")
        return float(interval_days), "--interval-days"
    a, b = study_date(prior), study_date(current)
    if a is None or b is None:
        return None, "unknown (no StudyDate on both scans; give --interval-days)"
    days = (b - a).days
    if days < 0:
        raise ComparisonInputError(f"the prior scan's StudyDate {a.isoformat()} is after the current scan's "
                                   f"{b.isoformat()}: are --prior and --current swapped?")
    if days == 0:
        return None, "unknown (both scans have StudyDate " + a.isoformat() + "; give --interval-days)"
    return float(days), "StudyDate"


def _needs_measuring(findings: Findings) -> bool:
    return any(not (c.characterization or {}).get("mean_diameter_mm") for c in findings.candidates
               if c.review != "rejected")


def check_findings_match(findings: Findings, volume: Volume, label: str) -> None:
    """Refuse findings that were made on another grid (their centres would land elsewhere)."""
    shape = findings.volume.get("shape_zyx")
    if shape is not None and [int(n) for n in shape] != [int(n) for n in volume.array.shape]:
        raise ComparisonInputError(f"the {label} findings were made on a scan of shape {list(shape)}, but the "
                                   f"{label} scan has shape {list(volume.array.shape)}: not the same scan")
    spacing = findings.volume.get("spacing")
    if spacing is not None and not np.allclose(spacing, volume.spacing, rtol=1e-3, atol=1e-4):
        raise ComparisonInputError(f"the {label} findings' voxel spacing {spacing} differs from the {label} scan's "
                                   f"{volume.spacing.tolist()}: not the same scan")


def compare(prior: Volume, current: Volume, prior_findings: Findings, current_findings: Findings, *,
            interval_days: Optional[float] = None, registration: Optional[Registration] = None,
            bspline: bool = False, measure: bool = True, min_score: Optional[float] = None,
            gate_min_mm: float = GATE_MIN_MM, gate_factor: float = GATE_FACTOR,
            remeasure_pairs: bool = True) -> Dict[str, Any]:
    """The comparison document (see :func:`write_comparison`); nothing is written.

    Findings are compared as a reader would: rejected candidates are left out, and so are
    candidates below ``min_score`` (default: each findings' operating-point threshold; accepted
    candidates always count). ``registration`` may be given (tests, repeated runs);
    ``remeasure_pairs=False`` keeps each scan's own measurements (module docstring).
    """
    check_findings_match(prior_findings, prior, "prior")
    check_findings_match(current_findings, current, "current")
    days, interval_source = resolve_interval(prior, current, interval_days)
    if registration is None:
        registration = register_lungs(prior, current, bspline=bspline)
    sides = []
    for vol, f in ((prior, prior_findings), (current, current_findings)):
        chosen = _selected(f, min_score)
        if measure and _needs_measuring(chosen):
            from ..characterization import characterize

            chosen = characterize(vol, chosen, min_score=-math.inf)
        sides.append(chosen)
    pairs = _match(sides, registration, days, gate_min_mm, gate_factor)
    if remeasure_pairs:        # also when the caller measured the findings itself (the CLI does)
        again = _remeasured(prior, current, sides, pairs)
        if again is not sides:
            sides = again
            pairs = _match(sides, registration, days, gate_min_mm, gate_factor)
    # Where a new nodule would be on the prior (the reader looks there for a missed one).
    for p in pairs:
        if p["current"] is not None:
            back = registration.current_to_prior(np.asarray(p["current"]["center_lps"]))[0]
            p["current_center_in_prior_lps"] = [round(float(v), 3) for v in back]
    counts = {s: sum(1 for p in pairs if p["status"] == s) for s in STATUSES}
    exam = exam_category(p["lung_rads"] for p in pairs)
    return {
        "schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "library_version": __version__,
        "prior": _side(prior, prior_findings, sides[0]),
        "current": _side(current, current_findings, sides[1]),
        "interval_days": days, "interval_source": interval_source,
        "registration": _finite(registration.quality),
        "matching": {"method": "Hungarian assignment on registered centre distance plus the mean diameters' "
                               "difference; an unpaired finding costs half its gate",
                     "gate_mm": f"max({gate_min_mm:g}, {gate_factor:g} x larger mean diameter)",
                     "growth_mm": GROWTH_MM, "growth_definition": "Lung-RADS v2022: mean diameter increase > "
                                                                  "1.5 mm within 12 months",
                     "pair_sizes": PAIR_SIZES if remeasure_pairs else "each scan's own measurement"},
        "counts": counts,
        "lung_rads": exam,
        "pairs": pairs,
    }


PAIR_SIZES = ("both findings of a pair segmented with one expected diameter, the mean of the two detections' "
              "(sizes a reader edited or that came with the findings from elsewhere are kept)")
#: two detections' diameters closer than this fraction count as one expected size (no re-measurement)
SAME_DIAMETER = 0.05


def _match(sides, registration: Registration, days, gate_min_mm: float, gate_factor: float) -> List[Dict[str, Any]]:
    prior_nodules = [nodule_from_candidate(c) for c in sides[0].candidates]
    current_nodules = [nodule_from_candidate(c) for c in sides[1].candidates]
    return match_nodules(prior_nodules, current_nodules, registration.prior_to_current, days,
                         gate_min_mm, gate_factor)


def _remeasured(prior: Volume, current: Volume, sides, pairs) -> List[Findings]:
    """``sides`` with both findings of each pair measured at one expected diameter (module docstring);
    ``sides`` itself when no pair needed it."""
    from ..characterization import AUTOMATIC_METHOD, characterize

    def _automatic(candidate) -> bool:
        # A size this library's segmentation measured (not one a reader edited, nor one given from elsewhere).
        return (candidate.characterization or {}).get("method") == AUTOMATIC_METHOD

    by_id = [{c.id: c for c in side.candidates} for side in sides]
    todo = [(p["prior"]["id"], p["current"]["id"]) for p in pairs if p["prior"] and p["current"]]
    todo = [(a, b) for a, b in todo if _automatic(by_id[0][a]) and _automatic(by_id[1][b])]
    if not todo:
        return sides
    common = [{}, {}]
    for a, b in todo:
        da, db = float(by_id[0][a].diameter_mm), float(by_id[1][b].diameter_mm)
        if abs(da - db) <= SAME_DIAMETER * max(da, db):
            continue                  # segmented alike already; a retry would cost its time for nothing
        common[0][a] = common[1][b] = 0.5 * (da + db)
    if not common[0]:
        return sides
    out = []
    for k, volume in enumerate((prior, current)):
        again = [dataclasses.replace(c, diameter_mm=common[k][c.id]) for c in sides[k].candidates if c.id in common[k]]
        measured = characterize(volume, dataclasses.replace(sides[k], candidates=again), min_score=-math.inf)
        sizes = {c.id: c.characterization for c in measured.candidates}
        out.append(dataclasses.replace(sides[k], candidates=[
            dataclasses.replace(c, characterization=sizes[c.id]) if c.id in sizes else c for c in sides[k].candidates]))
    return out


def _selected(findings: Findings, min_score: Optional[float]) -> Findings:
    import copy

    thr = findings.operating_point.get("threshold") if min_score is None else min_score
    out = copy.deepcopy(findings)
    out.candidates = [c for c in out.candidates if c.review != "rejected"
                      and (c.review == "accepted" or thr is None or c.score >= float(thr))]
    return out


def _side(volume: Volume, findings: Findings, used: Findings) -> Dict[str, Any]:
    d = study_date(volume)
    return {"source": volume.metadata.get("source") or findings.volume.get("source"),
            "series_uid": findings.volume.get("series_uid") or volume.metadata.get("SeriesInstanceUID"),
            "study_date": None if d is None else d.isoformat(),
            "n_findings": len(findings.candidates), "n_compared": len(used.candidates),
            "model": findings.model.get("name"), "model_version": findings.model.get("version")}


def _finite(obj):
    """JSON has no NaN: undefined residuals (no overlap at all) become null."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ----------------------------------------------------------------------------- files

def _fmt(v, spec=".1f", none="-"):
    return none if v is None else format(v, spec)


def summary_markdown(doc: Dict[str, Any]) -> str:
    """A reader's summary of a comparison document."""
    reg = doc["registration"]
    lines = ["# Follow-up comparison", "",
             f"- Prior: {doc['prior']['source']} (study date {doc['prior']['study_date'] or 'unknown'}), "
             f"{doc['prior']['n_compared']} finding(s) compared",
             f"- Current: {doc['current']['source']} (study date {doc['current']['study_date'] or 'unknown'}), "
             f"{doc['current']['n_compared']} finding(s) compared",
             f"- Interval: {_fmt(doc['interval_days'], '.0f', 'unknown')} days ({doc['interval_source']})",
             f"- Lung registration ({reg.get('method')}): lung-surface distance mean "
             f"{_fmt(reg.get('surface_mean_mm'), '.2f')} mm, 95th percentile {_fmt(reg.get('surface_p95_mm'), '.2f')} mm, "
             f"Dice {_fmt(reg.get('dice'), '.3f')} (before: mean {_fmt(reg.get('initial', {}).get('surface_mean_mm'), '.1f')} mm)",
             f"- Lung-RADS v2022 with comparison: **{doc['lung_rads']['category']}** "
             f"({doc['lung_rads'].get('rule')}); {doc['lung_rads'].get('management') or ''}",
             "- Pairs: " + ", ".join(f"{n} {s}" for s, n in doc["counts"].items() if n), "",
             "| status | current | prior | mean diam. mm (prior -> current) | change mm | volume change % | "
             "VDT days | Lung-RADS | rule |",
             "|---|---|---|---|---:|---:|---:|---|---|"]
    for p in doc["pairs"]:
        cur, pri = p["current"], p["prior"]
        diam = f"{_fmt(pri and pri['mean_diameter_mm'])} -> {_fmt(cur and cur['mean_diameter_mm'])}"
        rads = p["lung_rads"] or {}
        lines.append(f"| {p['status']} | {cur['id'] if cur else '-'} | {pri['id'] if pri else '-'} | {diam} | "
                     f"{_fmt(p['diameter_change_mm'], '+.1f')} | {_fmt(p['volume_change_pct'], '+.0f')} | "
                     f"{_fmt(p['volume_doubling_days'], '.0f')} | {rads.get('category', '-')} | {rads.get('rule', '')} |")
    if not doc["pairs"]:
        lines.append("| - | no findings on either scan | | | | | | | |")
    sources = sorted({s[k]["size_source"] for s in doc["pairs"] for k in ("current", "prior") if s[k]})
    lines += ["", "Sizes: " + ("; ".join(sources) if sources else "none"),
              "Volume-doubling time: interval x ln 2 / ln(V current / V prior); negative = halving time.",
              "Computed by LesionDetector " + doc["library_version"] + "; the bundled detection model was trained "
              "on synthetic CT only: review every finding."]
    return "\n".join(lines) + "\n"


def write_comparison(doc: Dict[str, Any], out_dir) -> Dict[str, Path]:
    """``comparison.md`` then ``comparison.json`` in ``out_dir``, each atomic; the JSON last marks completion."""
    out = Path(out_dir)
    md = atomic_write_text(out / "comparison.md", summary_markdown(doc))
    js = atomic_write_text(out / "comparison.json", json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return {"md": md, "json": js}


def read_comparison(path) -> Dict[str, Any]:
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if doc.get("schema") != SCHEMA_NAME:
        raise ComparisonInputError(f"{path}: not a comparison document (schema {doc.get('schema')!r})")
    return doc


def pairs_table(doc: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Flat rows of the pairs (for tables in the Slicer module or CSV)."""
    rows = []
    for i, p in enumerate(doc["pairs"]):
        cur, pri = p["current"] or {}, p["prior"] or {}
        rows.append({"pair": i + 1, "status": p["status"], "current_id": cur.get("id"), "prior_id": pri.get("id"),
                     "current_center_lps": cur.get("center_lps"), "prior_center_lps": pri.get("center_lps"),
                     "current_diameter_mm": cur.get("mean_diameter_mm"), "prior_diameter_mm": pri.get("mean_diameter_mm"),
                     "diameter_change_mm": p["diameter_change_mm"], "volume_change_pct": p["volume_change_pct"],
                     "volume_doubling_days": p["volume_doubling_days"],
                     "lung_rads": (p["lung_rads"] or {}).get("category")})
    return rows
