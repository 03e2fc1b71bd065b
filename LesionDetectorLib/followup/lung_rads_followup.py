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

The baseline (no-prior) size table exists once, in
:mod:`LesionDetectorLib.characterization.lung_rads` (``baseline_category``); this module adds
the comparison rules on top of it and judges one nodule at a time. Sizes are rounded to 0.1 mm
first, as Lung-RADS reports them. The exam category is the highest over the current nodules.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional

from ..characterization.lung_rads import NODULE_TYPES, category_rank
from ..characterization.lung_rads import baseline_category as _baseline_category
from ..characterization.measurements import round_tenth

GROWTH_MM = 1.5                 # v2022: mean diameter increase > 1.5 mm ...
GROWTH_WINDOW_DAYS = 365.25     # ... within a 12-month interval
MANAGEMENT = {
    "1": "continue annual screening with LDCT in 12 months",
    "2": "continue annual screening with LDCT in 12 months",
    "3": "6-month LDCT",
    "4A": "3-month LDCT; PET/CT may be considered if there is a solid component >= 8 mm",
    "4B": "diagnostic chest CT with or without contrast; PET/CT and/or tissue sampling depending on the "
          "probability of malignancy and comorbidities",
}


@dataclass(frozen=True)
class NoduleForRads:
    """The measurements a Lung-RADS rule needs (mm). ``type`` is solid / part-solid / ground-glass;
    ``assumed`` says what was not measured (e.g. the type of a finding without characterization)."""

    mean_diameter_mm: float
    type: str = "solid"
    solid_component_mm: Optional[float] = None
    calcified: bool = False
    assumed: Optional[str] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean_diameter_mm", round_tenth(self.mean_diameter_mm))
        if self.solid_component_mm is not None:
            object.__setattr__(self, "solid_component_mm", round_tenth(self.solid_component_mm))
        if self.type not in NODULE_TYPES:
            raise ValueError(f"nodule type must be one of {NODULE_TYPES}, got {self.type!r}")

    @classmethod
    def from_characterization(cls, ch: Optional[Dict[str, Any]], mean_diameter_mm: float) -> "NoduleForRads":
        """From a candidate's ``characterization`` block; without a measured type, ``solid`` is
        assumed (the most common type, and the one the detector was trained on) and recorded."""
        ch = ch or {}
        kind = ch.get("type")
        assumed = None
        if kind not in NODULE_TYPES:
            kind, assumed = "solid", "type not measured: solid assumed"
        solid = ch.get("solid_component_mm")
        if kind == "part-solid" and solid is None:
            solid, assumed = 0.0, "solid component not measured: 0 mm assumed"
        return cls(float(mean_diameter_mm), kind, None if solid is None else float(solid),
                   bool(ch.get("calcified")), assumed)


def _rads(category: str, rule: str, **extra) -> Dict[str, Any]:
    out = {"category": category, "rule": rule, "management": MANAGEMENT.get(category)}
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def baseline_category(nodule: NoduleForRads) -> str:
    """Lung-RADS v2022 baseline size category (the characterization package's table)."""
    return _baseline_category(nodule.type, nodule.mean_diameter_mm,
                              nodule.solid_component_mm if nodule.type == "part-solid" else None, nodule.calcified)


def followup_category(status: str, current: Optional[NoduleForRads], prior: Optional[NoduleForRads] = None,
                      interval_days: Optional[float] = None) -> Optional[Dict[str, Any]]:
    """Category of one pair: ``{"category", "rule", "management"}`` (None for a resolved nodule).

    ``status`` is the pair's ``new`` / ``grown`` / ``stable`` / ``shrunk`` / ``resolved``.
    """
    if status == "resolved" or current is None:
        return None
    n = current
    if n.calcified:
        out = _rads("1", "benign calcification")
    elif status == "new":
        out = _new_category(n)
    elif status == "grown":
        out = _growing_category(n, prior, interval_days)
    elif status in ("stable", "shrunk"):
        out = _stable_category(n, prior, status)
    else:
        raise ValueError(f"unknown pair status {status!r}")
    out["type"] = n.type
    if n.assumed:
        out["assumed"] = n.assumed
    return out


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
    return category_rank(category)


def exam_category(pairs_rads: Iterable[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
    """The exam's category: the most suspicious nodule's; 1 when the current scan has none."""
    best = None
    for r in pairs_rads:
        if r is not None and (best is None or _rank(r["category"]) > _rank(best["category"])):
            best = r
    if best is None:
        return _rads("1", "no nodules on the current scan")
    return dict(best)
