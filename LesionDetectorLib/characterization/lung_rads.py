"""Lung-RADS v2022 categories of a *baseline* screening exam, from measured nodules.

Source: American College of Radiology, *Lung-RADS v2022* assessment categories (released
November 2022), summarised in Christensen J. et al., "ACR Lung-RADS v2022: Assessment
Categories and Management Recommendations", J Am Coll Radiol 2024;21(3):473-488,
doi:10.1016/j.jacr.2023.09.009. Baseline rules implemented here (sizes are the mean
diameter, long + short axis over two, to one decimal place, see :mod:`.measurements`):

========================  ======================================================  ========
nodule                    baseline size                                           category
========================  ======================================================  ========
benign calcification      complete, central, popcorn, concentric (any size)       1
juxtapleural/perifissural solid, smooth, oval/lentiform/triangular, < 10 mm       2
solid                     < 6 mm                                                  2
                          >= 6 to < 8 mm                                          3
                          >= 8 to < 15 mm                                         4A
                          >= 15 mm                                                4B
part-solid                < 6 mm total                                            2
                          >= 6 mm total, solid component < 6 mm                   3
                          solid component >= 6 to < 8 mm                          4A
                          solid component >= 8 mm                                 4B
ground-glass (non-solid)  < 30 mm                                                 2
                          >= 30 mm                                                3
========================  ======================================================  ========

The exam's category is that of its most suspicious nodule; an exam without nodules is 1.
Not implemented (they need a prior exam or findings this library does not detect): new and
growing nodules (the follow-up issue reuses :func:`solid_category`, :func:`part_solid_category`
and :func:`ground_glass_category`), 4X (additional suspicious features), 0 (incomplete), the
S modifier, airway nodules and atypical cysts.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple

from .measurements import round_tenth

#: Every Lung-RADS v2022 category, least to most suspicious (0 = incomplete sorts lowest).
CATEGORY_ORDER = ("0", "1", "2", "3", "4A", "4B", "4X")
NODULE_TYPES = ("solid", "part-solid", "ground-glass")
JUXTAPLEURAL_MAX_MM = 10.0


def category_rank(category: str) -> int:
    """Position of ``category`` in :data:`CATEGORY_ORDER` (higher = more suspicious)."""
    try:
        return CATEGORY_ORDER.index(str(category))
    except ValueError:
        raise ValueError(f"unknown Lung-RADS category {category!r}; expected one of {CATEGORY_ORDER}") from None


def _size(value: Optional[float], name: str) -> float:
    if value is None:
        raise ValueError(f"{name} is required")
    v = float(value)
    if not v >= 0:
        raise ValueError(f"{name} must be a non-negative number of mm, got {value!r}")
    return round_tenth(v)


def solid_category(mean_diameter_mm: float) -> str:
    """Baseline solid nodule: < 6 -> 2, 6 to < 8 -> 3, 8 to < 15 -> 4A, >= 15 -> 4B."""
    d = _size(mean_diameter_mm, "mean_diameter_mm")
    if d < 6.0:
        return "2"
    if d < 8.0:
        return "3"
    if d < 15.0:
        return "4A"
    return "4B"


def part_solid_category(mean_diameter_mm: float, solid_component_mm: float) -> str:
    """Baseline part-solid nodule: < 6 total -> 2; solid < 6 -> 3; 6 to < 8 -> 4A; >= 8 -> 4B."""
    d = _size(mean_diameter_mm, "mean_diameter_mm")
    if d < 6.0:
        return "2"
    s = _size(solid_component_mm, "solid_component_mm of a part-solid nodule")
    if s < 6.0:
        return "3"
    if s < 8.0:
        return "4A"
    return "4B"


def ground_glass_category(mean_diameter_mm: float) -> str:
    """Baseline ground-glass (non-solid) nodule: < 30 -> 2, >= 30 -> 3."""
    return "2" if _size(mean_diameter_mm, "mean_diameter_mm") < 30.0 else "3"


def baseline_category(type: str, mean_diameter_mm: float, solid_component_mm: Optional[float] = None,
                      calcified: bool = False, juxta_pleural: bool = False, perifissural: bool = False,
                      benign_shape: bool = False) -> str:
    """The Lung-RADS v2022 category of one nodule on a baseline exam.

    ``type``: ``solid`` | ``part-solid`` | ``ground-glass``; sizes in mm (rounded to 0.1 here
    too, so 5.96 counts as 6.0); ``calcified``: a benign calcification pattern (-> 1).
    The juxtapleural / perifissural rule (-> 2) needs a solid nodule < 10 mm whose shape is
    benign (smooth margins; oval, lentiform or triangular): pass ``benign_shape=True`` only
    when that was assessed; position alone does not lower the category.
    """
    if type not in NODULE_TYPES:
        raise ValueError(f"nodule type must be one of {NODULE_TYPES}, got {type!r}")
    if calcified:
        return "1"
    if type == "solid":
        if (juxta_pleural or perifissural) and benign_shape \
                and _size(mean_diameter_mm, "mean_diameter_mm") < JUXTAPLEURAL_MAX_MM:
            return "2"
        return solid_category(mean_diameter_mm)
    if type == "part-solid":
        return part_solid_category(mean_diameter_mm, solid_component_mm)
    return ground_glass_category(mean_diameter_mm)


def highest_category(categories: Sequence[Optional[str]]) -> Tuple[str, Optional[int]]:
    """``(category, index)`` of the most suspicious entry (first on ties); ``("1", None)`` if none.

    ``None`` entries (findings without a category) are skipped.
    """
    best: Tuple[str, Optional[int]] = ("1", None)
    for i, cat in enumerate(categories):
        if cat is None:
            continue
        if best[1] is None or category_rank(cat) > category_rank(best[0]):
            best = (str(cat), i)
    return best


def exam_category(finding_categories: Iterable[Tuple[str, Optional[str]]]) -> dict:
    """Patient-level ``{"category", "finding_id"}`` from ``(finding_id, category)`` pairs."""
    pairs = list(finding_categories)
    category, index = highest_category([c for _, c in pairs])
    return {"category": category, "finding_id": None if index is None else pairs[index][0]}
