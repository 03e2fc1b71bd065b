"""Lung-RADS v2022 baseline categories: every size boundary, calcification, juxtapleural rule, exam level."""
import pytest

from LesionDetectorLib.characterization.lung_rads import (CATEGORY_ORDER, baseline_category, category_rank,
                                                          exam_category, ground_glass_category, highest_category,
                                                          part_solid_category, solid_category)
from LesionDetectorLib.characterization.measurements import round_tenth


@pytest.mark.parametrize("mm, cat", [(0.0, "2"), (5.9, "2"), (5.94, "2"), (5.95, "3"), (6.0, "3"), (7.9, "3"),
                                     (8.0, "4A"), (14.9, "4A"), (15.0, "4B"), (42.0, "4B")])
def test_solid_boundaries(mm, cat):
    assert solid_category(mm) == cat
    assert baseline_category("solid", mm) == cat


@pytest.mark.parametrize("total, solid, cat", [
    (5.9, 5.9, "2"), (5.9, None, "2"),            # < 6 mm total -> 2 whatever the solid part
    (6.0, 0.0, "3"), (6.0, 5.9, "3"), (20.0, 5.9, "3"),
    (6.0, 6.0, "4A"), (12.0, 7.9, "4A"),
    (8.0, 8.0, "4B"), (25.0, 8.0, "4B")])
def test_part_solid_boundaries(total, solid, cat):
    assert part_solid_category(total, solid) == cat
    assert baseline_category("part-solid", total, solid) == cat


def test_part_solid_needs_its_solid_component_from_6mm():
    with pytest.raises(ValueError, match="solid_component_mm"):
        part_solid_category(6.0, None)


@pytest.mark.parametrize("mm, cat", [(5.0, "2"), (29.9, "2"), (29.95, "3"), (30.0, "3"), (55.0, "3")])
def test_ground_glass_boundaries(mm, cat):
    assert ground_glass_category(mm) == cat
    assert baseline_category("ground-glass", mm, None) == cat


@pytest.mark.parametrize("kind", ["solid", "part-solid", "ground-glass"])
def test_benign_calcification_is_category_1_at_any_size(kind):
    assert baseline_category(kind, 25.0, 20.0, calcified=True) == "1"


@pytest.mark.parametrize("mm, flags, shape, cat", [
    (9.9, dict(juxta_pleural=True), True, "2"), (9.9, dict(perifissural=True), True, "2"),
    (10.0, dict(juxta_pleural=True), True, "4A"), (7.0, dict(perifissural=True), True, "2"),
    (9.9, dict(juxta_pleural=True), False, "4A"),       # lobulated / spiculated: size rule
    (7.0, dict(), True, "3")])                          # smooth but not on a pleura or fissure
def test_juxtapleural_perifissural_rule(mm, flags, shape, cat):
    assert baseline_category("solid", mm, benign_shape=shape, **flags) == cat


def test_juxtapleural_rule_is_for_solid_nodules_only():
    assert baseline_category("part-solid", 9.0, 6.5, juxta_pleural=True, benign_shape=True) == "4A"


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="type"):
        baseline_category("cyst", 5.0)
    with pytest.raises(ValueError, match="non-negative"):
        solid_category(-1.0)
    with pytest.raises(ValueError, match="unknown Lung-RADS"):
        category_rank("5")


def test_rounding_is_half_up_to_a_tenth():
    assert round_tenth(5.95) == 6.0 and round_tenth(5.949) == 5.9 and round_tenth(7.25) == 7.3
    assert round_tenth(0.05) == 0.1


def test_category_order_and_exam_level():
    assert [category_rank(c) for c in CATEGORY_ORDER] == list(range(len(CATEGORY_ORDER)))
    assert category_rank("4B") > category_rank("4A") > category_rank("3") > category_rank("2") > category_rank("1")
    assert highest_category([]) == ("1", None)
    assert highest_category(["2", None, "4A", "3", "4A"]) == ("4A", 2)
    assert exam_category([("N1", "2"), ("N2", "4B"), ("N3", None)]) == {"category": "4B", "finding_id": "N2"}
    assert exam_category([("N1", None)]) == {"category": "1", "finding_id": None}
