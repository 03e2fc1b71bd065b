"""Lung-RADS v2022 categories of a nodule seen on a follow-up scan (with a prior for comparison).

Source: American College of Radiology, *Lung-RADS v2022* assessment categories (released
November 2022, https://www.acr.org/Clinical-Resources/Reporting-and-Data-Systems/Lung-Rads),
summarised in Christensen J. et al., "ACR Lung-RADS v2022: Assessment Categories and
Management Recommendations", CHEST 2024;165(3):738-753. Rules used here:

* **Growth** (v2022 definition): mean-diameter increase of more than 1.5 mm within 12 months.
* **Size thresholds** apply at first detection (baseline, or *new* at follow-up) and when a
  nodule enlarges; a nodule that crosses a higher size threshold is reclassified by size even
  without meeting the growth definition.
* **Solid**: new < 4 mm -> 2; new 4 to < 6 mm -> 3; new 6 to < 8 mm -> 4A; new >= 8 mm -> 4B;
  growing < 8 mm -> 4A; growing >= 8 mm -> 4B.
* **Part-solid** (total mean diameter D, solid component s): new with D < 6 mm -> 3; new or
  growing solid component < 4 mm -> 4A, >= 4 mm -> 4B.
* **Non-solid (ground-glass)**: < 30 mm new or growing -> 2; >= 30 mm new -> 3; >= 30 mm
  stable or slowly growing -> 2.
* **Stepped management** for nodules stable or smaller than on the prior: a category 3 nodule
  steps down to 2, a category 4A nodule to 3 (v2022: 3 stable at the 6-month and 4A stable at
  the 3-month follow-up); 4B stays 4B (further work-up is a clinical decision).
* Benign calcification (complete, central, popcorn, concentric) -> 1.

The baseline (no-prior) size categories come from one function: the characterization
package's when it is installed (:mod:`LesionDetectorLib.characterization.lung_rads`), else
:func:`baseline_category` here, which follows the same v2022 table. This module judges one
nodule at a time; the exam category is the highest over the current scan's nodules.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional

GROWTH_MM = 1.5                 # v2022: mean diameter increase > 1.5 mm ...
GROWTH_WINDOW_DAYS = 365.25     # ... within a 12-month interval
CATEGORY_ORDER = ("0", "1", "2", "3", "4A", "4B", "4X")
MANAGEMENT = {
    "1": "continue annual screening with LDCT in 12 months",
    "2": "continue annual screening with LDCT in 12 months",
    "3": "6-month LDCT",
    "4A": "3-month LDCT; PET/CT may be considered if there is a solid component >= 8 mm",
    "4B": "diagnostic chest CT with or without contrast; PET/CT and/or tissue sampling depending on the "
          "probability of malignancy and comorbidities",
}
NODULE_TYPES = ("solid", "part-solid", "ground-glass")


@dataclass(frozen=True)
class NoduleForRads:
    """The measurements a Lung-RADS rule needs (mm). ``type`` is solid / part-solid / ground-glass."""

    mean_diameter_mm: float
    type: str = "solid"
    solid_component_mm: Optional[float] = None
    calcified: bool = False

    @classmethod
    def from_characterization(cls, ch: Optional[Dict[str, Any]], mean_diameter_mm: float) -> "NoduleForRads":
        """From a candidate's ``characterization`` block, or just a diameter (then ``solid`` is assumed)."""
        ch = ch or {}
        kind = ch.get("type") or "solid"
        if kind not in NODULE_TYPES:
            kind = "solid"
        solid = ch.get("solid_component_mm")
        return cls(float(mean_diameter_mm), kind, None if solid is None else float(solid), bool(ch.get("calcified")))


def _rads(category: str, rule: str, **extra) -> Dict[str, Any]:
    out = {"category": category, "rule": rule, "management": MANAGEMENT.get(category)}
    out.update(extra)
    return out


def baseline_category(nodule: NoduleForRads) -> str:
    """Lung-RADS v2022 size category of a nodule at baseline (no prior). Delegates to the
    characterization package when present so the baseline table exists once."""
    external = _external_baseline()
    if external is not None:
        return external(nodule)
    return _baseline_category_v2022(nodule)


def _baseline_category_v2022(n: NoduleForRads) -> str:
    d = n.mean_diameter_mm
    if n.calcified:
        return "1"
    if n.type == "ground-glass":
        return "2" if d < 30.0 else "3"
    if n.type == "part-solid":
        s = n.solid_component_mm if n.solid_component_mm is not None else 0.0
        if d < 6.0:
            return "2"
        if s < 6.0:
            return "3"
        return "4A" if s < 8.0 else "4B"
    if d < 6.0:
        return "2"
    if d < 8.0:
        return "3"
    return "4A" if d < 15.0 else "4B"


def _external_baseline():
    """The characterization package's baseline function adapted to :class:`NoduleForRads`, or None."""
    try:
        from ..characterization import lung_rads as external  # noqa: F401 - optional sibling package
    except ImportError:
        return None
    fn = getattr(external, "lung_rads_category", None) or getattr(external, "baseline_category", None)
    if fn is None:
        return None

    def adapted(n: NoduleForRads) -> str:
        result = fn({"type": n.type, "mean_diameter_mm": n.mean_diameter_mm,
                     "solid_component_mm": n.solid_component_mm, "calcified": n.calcified})
        return str(result["category"] if isinstance(result, dict) else result)

    return adapted


def is_growth(diameter_change_mm: Optional[float], interval_days: Optional[float] = None) -> bool:
    """v2022 growth: mean diameter up by more than 1.5 mm (the interval is recorded, not required)."""
    return diameter_change_mm is not None and diameter_change_mm > GROWTH_MM


def followup_category(status: str, current: Optional[NoduleForRads], prior: Optional[NoduleForRads] = None,
                      interval_days: Optional[float] = None) -> Optional[Dict[str, Any]]:
    """Category of one pair: ``{"category", "rule", "management"}`` (None for a resolved nodule).

    ``status`` is the pair's ``new`` / ``grown`` / ``stable`` / ``shrunk`` / ``resolved``.
    """
    if status == "resolved" or current is None:
        return None
    n = current
    if n.calcified:
        return _rads("1", "benign calcification")
    if status == "new":
        return _new_category(n)
    if status == "grown":
        return _growing_category(n, prior, interval_days)
    if status in ("stable", "shrunk"):
        return _stable_category(n, prior, status)
    raise ValueError(f"unknown pair status {status!r}")


def _new_category(n: NoduleForRads) -> Dict[str, Any]:
    d = n.mean_diameter_mm
    if n.type == "ground-glass":
        return _rads("2", "new non-solid < 30 mm") if d < 30.0 else _rads("3", "new non-solid >= 30 mm")
    if n.type == "part-solid":
        if d < 6.0:
            return _rads("3", "new part-solid < 6 mm total")
        s = n.solid_component_mm or 0.0
        return _rads("4A", "new part-solid, solid component < 4 mm") if s < 4.0 else \
            _rads("4B", "new part-solid, solid component >= 4 mm")
    if d < 4.0:
        return _rads("2", "new solid < 4 mm")
    if d < 6.0:
        return _rads("3", "new solid 4 to < 6 mm")
    if d < 8.0:
        return _rads("4A", "new solid 6 to < 8 mm")
    return _rads("4B", "new solid >= 8 mm")


def _growing_category(n: NoduleForRads, prior: Optional[NoduleForRads], interval_days: Optional[float]):
    d = n.mean_diameter_mm
    note = {}
    if interval_days is not None and interval_days > GROWTH_WINDOW_DAYS:
        note["note"] = (f"growth measured over {interval_days:.0f} days, longer than the 12-month window of "
                        "the v2022 definition")
    if n.type == "ground-glass":
        if d < 30.0:
            return _rads("2", "growing non-solid < 30 mm", **note)
        return _rads("3", "growing non-solid >= 30 mm (v2022 keeps slow growth at 2; the rate is for the reader)",
                     **note)
    if n.type == "part-solid":
        s = n.solid_component_mm or 0.0
        s_prior = prior.solid_component_mm if prior is not None else None
        if s_prior is not None and s - s_prior <= GROWTH_MM:
            # The ground-glass part grew, the solid component did not: size rules apply.
            return _rads(baseline_category(n), "part-solid, growing ground-glass part; size category", **note)
        if s_prior is None:
            note["note"] = (note.get("note", "") + "; " if note else "") + \
                "prior solid component unknown: growth of the whole nodule taken as growth of the component"
        return _rads("4A", "part-solid, growing solid component < 4 mm", **note) if s < 4.0 else \
            _rads("4B", "part-solid, growing solid component >= 4 mm", **note)
    if d < 8.0:
        return _rads("4A", "growing solid < 8 mm", **note)
    return _rads("4B", "growing solid >= 8 mm", **note)


def _stable_category(n: NoduleForRads, prior: Optional[NoduleForRads], status: str) -> Dict[str, Any]:
    now = baseline_category(n)
    before = baseline_category(prior) if prior is not None else now
    if _rank(now) > _rank(before):
        return _rads(now, f"{status}, but crossed into a higher size category (reclassified by size)")
    stepped = {"3": "2", "4A": "3"}.get(now)
    if stepped is not None:
        return _rads(stepped, f"{status}: category {now} by size, stepped down for stability")
    return _rads(now, f"{status}: size category")


def _rank(category: str) -> int:
    return CATEGORY_ORDER.index(category)


def exam_category(pairs_rads: Iterable[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
    """The exam's category: the most suspicious nodule's; 1 when the current scan has none."""
    best = None
    for r in pairs_rads:
        if r is not None and (best is None or _rank(r["category"]) > _rank(best["category"])):
            best = r
    if best is None:
        return _rads("1", "no nodules on the current scan")
    return dict(best)
