"""Lung-RADS v2022 follow-up rules and the gated matching, on given findings (no images)."""
import math

import numpy as np
import pytest

from LesionDetectorLib.findings import Candidate
from LesionDetectorLib.followup.lung_rads_followup import NoduleForRads, exam_category, followup_category
from LesionDetectorLib.followup.matching import (assign, growth_status, match_nodules, nodule_from_candidate,
                                                 sphere_volume_ml, volume_doubling_days)


def cat(status, d, kind="solid", solid=None, prior_d=None, prior_solid=None, calcified=False, interval=None):
    cur = NoduleForRads(d, kind, solid, calcified)
    pri = None if prior_d is None else NoduleForRads(prior_d, kind, prior_solid)
    return followup_category(status, cur, pri, interval)["category"]


@pytest.mark.parametrize("d, expected", [(3.9, "2"), (3.96, "3"), (4.0, "3"), (5.9, "3"), (6.0, "4A"),
                                         (7.9, "4A"), (8.0, "4B"), (20.0, "4B")])
def test_new_solid_size_boundaries(d, expected):
    assert cat("new", d) == expected


@pytest.mark.parametrize("d, solid, expected", [(5.9, 2.0, "3"), (6.0, 3.9, "4A"), (6.0, 4.0, "4B"),
                                                (12.0, 0.0, "4A")])
def test_new_part_solid(d, solid, expected):
    assert cat("new", d, "part-solid", solid) == expected


@pytest.mark.parametrize("d, expected", [(29.9, "2"), (30.0, "3")])
def test_new_ground_glass(d, expected):
    assert cat("new", d, "ground-glass") == expected


@pytest.mark.parametrize("d, expected", [(5.0, "4A"), (7.9, "4A"), (8.0, "4B"), (16.0, "4B")])
def test_growing_solid(d, expected):
    assert cat("grown", d, prior_d=d - 2.0) == expected


def test_growing_part_solid_depends_on_the_solid_component():
    # Solid component grew (> 1.5 mm): new-or-growing component rule.
    assert cat("grown", 10.0, "part-solid", 3.9, prior_d=8.0, prior_solid=1.0) == "4A"
    assert cat("grown", 10.0, "part-solid", 4.0, prior_d=8.0, prior_solid=1.0) == "4B"
    # Only the ground-glass part grew: the baseline size table applies (solid < 6 mm -> 3).
    assert cat("grown", 10.0, "part-solid", 4.0, prior_d=8.0, prior_solid=3.5) == "3"


def test_growing_ground_glass():
    assert cat("grown", 20.0, "ground-glass", prior_d=15.0) == "2"
    assert cat("grown", 31.0, "ground-glass", prior_d=28.0) == "3"


@pytest.mark.parametrize("d, expected", [(5.0, "2"), (7.0, "2"), (10.0, "3"), (16.0, "4B")])
def test_stable_steps_down(d, expected):
    # 3 stable -> 2, 4A stable -> 3, 4B stays (v2022 stepped management); 2 stays 2.
    assert cat("stable", d, prior_d=d) == expected
    assert cat("shrunk", d, prior_d=d + 2.0) == (expected if d != 16.0 else "4B")


def test_stable_crossing_a_size_threshold_is_reclassified():
    assert cat("stable", 6.1, prior_d=5.9) == "3"        # 2 -> 3 by size, no step-down
    assert cat("stable", 8.0, prior_d=7.0) == "4A"


def test_calcified_and_resolved_and_exam():
    assert cat("new", 12.0, calcified=True) == "1"
    assert followup_category("resolved", None, NoduleForRads(8.0)) is None
    with pytest.raises(ValueError):
        followup_category("bigger", NoduleForRads(8.0))
    exam = exam_category([None, {"category": "3", "rule": "a"}, {"category": "4A", "rule": "b"}])
    assert exam["category"] == "4A" and exam["rule"] == "b"
    assert exam_category([None])["category"] == "1"


def test_unmeasured_type_is_assumed_and_said():
    r = followup_category("new", NoduleForRads.from_characterization(None, 7.0))
    assert r["category"] == "4A" and "assumed" in r


@pytest.mark.parametrize("dd, status", [(1.5, "stable"), (1.51, "grown"), (-1.5, "stable"), (-1.51, "shrunk")])
def test_growth_threshold_is_strictly_more_than_1_5_mm(dd, status):
    assert growth_status(dd) == status


def test_volume_doubling_time():
    assert volume_doubling_days(1.0, 2.0, 100) == pytest.approx(100.0)
    assert volume_doubling_days(1.0, 4.0, 365) == pytest.approx(182.5)
    assert volume_doubling_days(2.0, 1.0, 100) == pytest.approx(-100.0)       # halving time
    assert volume_doubling_days(1.0, 1.0, 100) is None
    assert volume_doubling_days(1.0, 2.0, None) is None


def test_gate_is_size_aware():
    # A 4 mm nodule 12 mm away does not pair (gate 10 mm); a 10 mm one does (gate 15 mm).
    assert assign([[0, 0, 0]], [4.0], [[12, 0, 0]], [4.0]) == []
    assert [(i, j) for i, j, _ in assign([[0, 0, 0]], [10.0], [[12, 0, 0]], [10.0])] == [(0, 0)]


def test_hungarian_beats_greedy():
    # Greedy nearest-first pairs prior 0 with current 0 (1.8 mm), then prior 1 with current 1
    # (6.1 mm): 7.9 mm in all, against 4.3 mm for the crossed pairs.
    prior = [[0, 0, 0], [-4, 0, 0]]
    current = [[-1.8, 0, 0], [2.1, 0, 0]]
    pairs = {(i, j) for i, j, _ in assign(prior, [5, 5], current, [5, 5])}
    assert pairs == {(0, 1), (1, 0)}


def test_no_far_pair_is_made_just_to_pair_more_findings():
    # A 22 mm tumour and a 5 mm mark beside it on the prior; on the current the tumour (1.6 mm
    # from its registered place) and a 4 mm mark 21 mm away, inside the tumour's 33 mm gate.
    # Pairing as many as possible takes tumour <-> far mark and small mark <-> tumour.
    prior = [[0, 0, 0], [2, 0, 0]]
    current = [[1.6, 0, 0], [21, 0, 0]]
    pairs = {(i, j) for i, j, _ in assign(prior, [22.7, 5.0], current, [21.7, 3.8])}
    assert pairs == {(0, 0)}
    # ... while one nodule seen on both scans still pairs across the whole gate
    assert {(i, j) for i, j, _ in assign([[0, 0, 0]], [6.0], [[9.0, 0, 0]], [6.5])} == {(0, 0)}


def _cand(cid, center, d, ch=None):
    c = Candidate(cid, 1, center, d, 0.9, 0.9, 0.9)
    if ch is not None:
        c.characterization = ch
    return c


def test_match_nodules_statuses_changes_and_sizes():
    shift = np.array([10.0, -5.0, 3.0])
    prior = [nodule_from_candidate(_cand("P1", [0, 0, 0], 6.0, {"mean_diameter_mm": 6.0, "volume_ml": 0.1,
                                                                 "type": "solid"})),
             nodule_from_candidate(_cand("P2", [50, 0, 0], 8.0, {"mean_diameter_mm": 8.0, "volume_ml": 0.25,
                                                                  "type": "solid"})),
             nodule_from_candidate(_cand("P3", [-50, 20, 0], 5.0))]
    current = [nodule_from_candidate(_cand("C1", shift + [1, 0, 0], 8.0, {"mean_diameter_mm": 8.5, "volume_ml": 0.3,
                                                                           "type": "solid"})),
               nodule_from_candidate(_cand("C2", shift + [50, 1, 0], 8.0, {"mean_diameter_mm": 8.2,
                                                                            "volume_ml": 0.26, "type": "solid"})),
               nodule_from_candidate(_cand("C3", shift + [0, 60, 0], 7.0, {"mean_diameter_mm": 7.0,
                                                                            "volume_ml": 0.18, "type": "solid"}))]
    pairs = match_nodules(prior, current, lambda p: p + shift, interval_days=365)
    by = {(p["prior"] or {}).get("id"): p for p in pairs}
    assert by["P1"]["current"]["id"] == "C1" and by["P1"]["status"] == "grown"
    assert by["P1"]["diameter_change_mm"] == pytest.approx(2.5)
    assert by["P1"]["volume_change_pct"] == pytest.approx(200.0)
    assert by["P1"]["volume_doubling_days"] == pytest.approx(365 * math.log(2) / math.log(3), abs=0.1)
    assert by["P1"]["lung_rads"]["category"] == "4B"                     # growing, >= 8 mm
    assert by["P2"]["status"] == "stable" and by["P2"]["lung_rads"]["category"] == "3"   # 4A stepped down
    assert by["P3"]["status"] == "resolved" and by["P3"]["current"] is None and by["P3"]["lung_rads"] is None
    new = [p for p in pairs if p["prior"] is None]
    assert len(new) == 1 and new[0]["current"]["id"] == "C3" and new[0]["lung_rads"]["category"] == "4A"
    # Where sizes come from is always said; a detector diameter gives a sphere volume, flagged.
    assert by["P3"]["prior"]["size_source"].startswith("detector box diameter")
    assert by["P3"]["prior"]["volume_ml"] == pytest.approx(sphere_volume_ml(5.0), rel=1e-3)
    assert by["P1"]["prior"]["size_source"] == "characterization"
    for p in pairs:
        assert set(p) >= {"current", "prior", "status", "diameter_change_mm", "volume_change_pct",
                          "volume_doubling_days", "lung_rads"}
        for side in ("current", "prior"):
            if p[side] is not None:
                assert set(p[side]) >= {"id", "center_lps", "mean_diameter_mm", "volume_ml"}


def test_no_findings_on_either_side():
    assert match_nodules([], [], lambda p: p) == []
    only = match_nodules([], [nodule_from_candidate(_cand("C1", [0, 0, 0], 5.0))], lambda p: p)
    assert only[0]["status"] == "new" and only[0]["lung_rads"]["category"] == "3"
