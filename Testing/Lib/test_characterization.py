"""Nodule characterization on phantoms of known volume: solid, ground-glass, part-solid, calcified,
juxta-pleural (against a wall), juxta-vascular and perifissural; masks in the scan grid; findings JSON."""
import json

import numpy as np
import pytest
from scipy import ndimage

from LesionDetectorLib.characterization import (characterize, characterize_candidate, characterize_with_masks,
                                                exam_lung_rads, label_volume)
from LesionDetectorLib.characterization.lung_rads import baseline_category, solid_category
from LesionDetectorLib.coordinates import direction_from_angles
from LesionDetectorLib.export.findings_json import read_findings_json, validate_findings_dict, write_findings_json
from LesionDetectorLib.findings import Candidate, Findings
from LesionDetectorLib.volume import Volume


def phantom(objects=(), wall_x_mm=None, shape=(32, 56, 56), spacing=(0.7, 0.7, 1.25), lung=-850.0, noise=15.0,
            blur_mm=0.6, direction=None, seed=0):
    """Lung background with ellipsoids (HU, optional concentric core), blurred, noisy; centred on LPS 0.

    Objects are painted with 2x supersampling in the local axis frame, so their volume is known
    analytically (4/3 pi abc) and their partial-volume edges are realistic.
    """
    sp = np.asarray(spacing, float)
    n = np.asarray(shape)
    ss = 2
    axes = [((np.arange(k * ss) + 0.5) / ss - 0.5 - (k - 1) / 2) * s for k, s in zip(n, sp[::-1])]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    pts = np.stack([xx, yy, zz], -1)
    vol = np.full(tuple(n), lung)

    def paint(inside, hu):
        frac = inside.reshape(n[0], ss, n[1], ss, n[2], ss).mean((1, 3, 5))
        np.copyto(vol, frac * hu + (1 - frac) * vol)

    if wall_x_mm is not None:
        paint(pts[..., 0] > wall_x_mm, 40.0)
    for o in objects:
        r = (((pts - np.asarray(o["center"], float)) / np.asarray(o["axes"], float)) ** 2).sum(-1)
        paint(r <= 1.0, o["hu"])
        if "core_hu" in o:
            paint(r <= o["core_scale"] ** 2, o["core_hu"])
    vol = ndimage.gaussian_filter(vol, blur_mm / sp[::-1]) + np.random.default_rng(seed).normal(0, noise, vol.shape)
    d = np.eye(3) if direction is None else np.asarray(direction)
    # Voxel centre (n - 1) / 2 at world 0: the painted frame is the index frame scaled by spacing.
    origin = -d @ (sp * (n[::-1] - 1) / 2)
    return Volume(vol.astype(np.float32), sp, origin, d)


def ellipsoid_ml(axes):
    return 4.0 / 3.0 * np.pi * float(np.prod(axes)) / 1000.0


def run(volume, diameter=8.0, center=(0.0, 0.0, 0.0)):
    return characterize_candidate(volume, Candidate("N1", 1, list(center), diameter, 0.9, 0.9, 0.9))


def test_solid_sphere_volume_size_type():
    r = run(phantom([dict(center=(0, 0, 0), axes=(4, 4, 4), hu=30.0)]))
    ch = r.characterization
    assert ch["type"] == "solid" and ch["calcified"] is False
    assert ch["volume_ml"] == pytest.approx(ellipsoid_ml((4, 4, 4)), rel=0.10)
    assert ch["mean_diameter_mm"] == pytest.approx(8.0, abs=0.6)
    assert ch["juxta_pleural"] is False and ch["perifissural"] is False
    assert ch["lung_rads"] in ("3", "4A")          # 7.4..8.6 mm straddles the 8 mm boundary
    assert ch["lung_rads"] == ("4A" if ch["mean_diameter_mm"] >= 8.0 else "3")


def test_ellipsoid_long_and_short_axis_on_the_axial_slice():
    # 12 x 8 mm in the axial (x, y) plane, 6 mm in z: long 12, short 8 (perpendicular), mean 10.
    ch = run(phantom([dict(center=(0, 0, 0), axes=(6, 4, 3), hu=30.0)]), diameter=10.0).characterization
    assert ch["long_axis_mm"] == pytest.approx(12.0, abs=0.8)
    assert ch["short_axis_mm"] == pytest.approx(8.0, abs=0.8)
    assert ch["mean_diameter_mm"] == pytest.approx(round((ch["long_axis_mm"] + ch["short_axis_mm"]) / 2, 1), abs=0.051)
    assert ch["volume_ml"] == pytest.approx(ellipsoid_ml((6, 4, 3)), rel=0.10)


def test_ground_glass_nodule_needs_the_low_threshold():
    ch = run(phantom([dict(center=(0, 0, 0), axes=(6, 6, 6), hu=-600.0)]), diameter=12.0).characterization
    assert ch["type"] == "ground-glass"
    assert ch["volume_ml"] == pytest.approx(ellipsoid_ml((6, 6, 6)), rel=0.10)
    assert -700 < ch["mean_hu"] < -550
    assert ch["solid_component_mm"] is None and ch["lung_rads"] == "2"


def test_part_solid_nodule_with_its_solid_component():
    ch = run(phantom([dict(center=(0, 0, 0), axes=(6, 6, 6), hu=-550.0, core_scale=0.5, core_hu=20.0)]),
             diameter=12.0).characterization
    assert ch["type"] == "part-solid"
    assert ch["volume_ml"] == pytest.approx(ellipsoid_ml((6, 6, 6)), rel=0.10)
    assert ch["solid_component_mm"] == pytest.approx(6.0, abs=1.0)
    assert ch["lung_rads"] == ("4A" if ch["solid_component_mm"] >= 6.0 else "3")


def test_central_calcification_is_benign_category_1():
    ch = run(phantom([dict(center=(0, 0, 0), axes=(4, 4, 4), hu=200.0, core_scale=0.5, core_hu=700.0)])
             ).characterization
    assert ch["calcified"] is True and ch["calcification_pattern"] in ("central", "diffuse")
    assert ch["lung_rads"] == "1"
    assert ch["volume_ml"] == pytest.approx(ellipsoid_ml((4, 4, 4)), rel=0.12)


def test_eccentric_calcification_is_not_benign():
    ch = run(phantom([dict(center=(0, 0, 0), axes=(5, 5, 5), hu=30.0),
                      dict(center=(3.2, 0, 0), axes=(1.2, 1.2, 1.2), hu=800.0)]), diameter=10.0).characterization
    assert ch["calcification_pattern"] == "eccentric" and ch["calcified"] is False
    assert ch["lung_rads"] == "4A"


def test_juxta_pleural_nodule_is_cut_from_the_chest_wall():
    # Sphere r = 4 mm centred 2.5 mm from a soft-tissue wall: 0.243 mL of it lies in the lung.
    in_lung = ellipsoid_ml((4, 4, 4)) - np.pi * 1.5 ** 2 * (3 * 4 - 1.5) / 3 / 1000.0
    ch = run(phantom([dict(center=(0, 0, 0), axes=(4, 4, 4), hu=30.0)], wall_x_mm=2.5)).characterization
    assert ch["juxta_pleural"] is True
    assert ch["volume_ml"] == pytest.approx(in_lung, rel=0.25)      # the wall (tens of mL here) is not in it
    assert ch["mean_diameter_mm"] < 9.0


def test_vessel_through_a_nodule_is_cut_off():
    ch = run(phantom([dict(center=(0, 0, 0), axes=(4, 4, 4), hu=30.0),
                      dict(center=(0, 0, 0), axes=(30, 1.0, 1.0), hu=40.0)])).characterization
    assert ch["volume_ml"] == pytest.approx(ellipsoid_ml((4, 4, 4)), rel=0.10)
    assert ch["long_axis_mm"] < 11.0 and ch["perifissural"] is False     # 60 mm if the vessel stayed


def test_perifissural_nodule_on_a_fissure_is_flagged_but_keeps_its_size_category():
    ch = run(phantom([dict(center=(0, 0, 0), axes=(3.5, 3.5, 3.5), hu=30.0),
                      dict(center=(0, -3.6, 0), axes=(40, 0.4, 40), hu=-100.0)]), diameter=7.0).characterization
    assert ch["perifissural"] is True and ch["benign_shape"] is True and ch["type"] == "solid"
    # A computed fissure is a suggestion only (see characterize_candidate): 6-8 mm solid stays 3.
    assert ch["lung_rads"] == solid_category(ch["mean_diameter_mm"])
    assert baseline_category("solid", ch["mean_diameter_mm"], perifissural=True, benign_shape=True) == "2"


def test_nothing_to_segment_gives_nulls():
    ch = run(phantom([])).characterization
    assert ch["type"] is None and ch["volume_ml"] is None and ch["lung_rads"] is None


def _findings(candidates, threshold=0.5):
    return Findings(candidates=candidates,
                    patient_flag={"status": "positive", "operating_point": "sensitivity_0.95", "threshold": threshold,
                                  "max_score": max((c.score for c in candidates), default=None)},
                    model={"name": "test", "version": "0", "sha256": "0" * 64},
                    volume={"source": None, "series_uid": None, "shape_zyx": [1, 1, 1], "spacing": [1, 1, 1],
                            "origin": [0, 0, 0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]},
                    provenance={"library_version": "0", "torch_version": "0", "device": "cpu", "op_backend": "reference",
                                "date": "2026-12-01T00:00:00Z"},
                    operating_point={"name": "sensitivity_0.95", "threshold": threshold},
                    timings_s={"read": 0.0, "preprocess": 0.0, "model": 0.0, "postprocess": 0.0, "total": 0.0})


def test_characterize_findings_json_round_trip_and_masks_in_the_scan_grid(tmp_path):
    # Oblique grid: the masks must land where the nodules are through world coordinates.
    d = direction_from_angles((0.0, 0.0, 20.0))
    vol = phantom([dict(center=(-6, 0, 0), axes=(4, 4, 4), hu=30.0),
                   dict(center=(8, 0, 0), axes=(5, 5, 5), hu=-600.0)], direction=d)
    c1 = d @ np.array([-6.0, 0.0, 0.0])
    c2 = d @ np.array([8.0, 0.0, 0.0])
    findings = _findings([Candidate("N1", 1, list(c1), 8.0, 0.9, 0.9, 0.9),
                          Candidate("N2", 2, list(c2), 10.0, 0.8, 0.8, 0.8),
                          Candidate("N3", 3, [0.0, 12.0, 0.0], 5.0, 0.1, 0.1, 0.1)])   # below the threshold
    out, nodules = characterize_with_masks(vol, findings)
    assert findings.candidates[0].characterization is None          # the input is left alone
    assert [n.candidate_id for n in nodules] == ["N1", "N2"]
    assert out.candidate("N3").characterization is None
    assert out.candidate("N1").characterization["type"] == "solid"
    assert out.candidate("N2").characterization["type"] == "ground-glass"
    assert out.lung_rads["category"] == out.candidate("N1").characterization["lung_rads"]
    assert out.lung_rads["finding_id"] == "N1"

    labels = label_volume(vol, nodules)
    assert labels.array.shape == vol.array.shape and set(np.unique(labels.array)) == {0, 1, 2}
    voxel_ml = float(np.prod(vol.spacing)) / 1000.0
    for label, cid in ((1, "N1"), (2, "N2")):
        ml = float((labels.array == label).sum()) * voxel_ml
        assert ml == pytest.approx(out.candidate(cid).characterization["volume_ml"], rel=0.15)
    from LesionDetectorLib.coordinates import index_to_world
    centroid = index_to_world(vol, np.argwhere(labels.array == 1).mean(0))
    assert np.linalg.norm(centroid - c1) < 0.7

    path = write_findings_json(out, tmp_path / "findings.json")
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == "1.1" and doc["lung_rads"] == out.lung_rads
    assert set(doc["candidates"][0]["characterization"]) >= {
        "type", "calcified", "volume_ml", "long_axis_mm", "short_axis_mm", "mean_diameter_mm",
        "solid_component_mm", "mean_hu", "lung_rads"}
    assert "characterization" not in doc["candidates"][2]
    back = read_findings_json(path)
    assert back.to_dict() == out.to_dict()
    table = back.summary_table()
    assert "Lung-RADS v2022" in table and "ground-glass" in table and "| Lung-RADS |" in table

    # A reader rejecting the deciding nodule changes the exam category.
    back.set_review("N1", "rejected")
    assert exam_lung_rads(back) == {"category": "2", "finding_id": "N2"}


def test_version_1_0_files_still_read_and_bad_blocks_are_named():
    doc = _findings([Candidate("N1", 1, [0.0, 0.0, 0.0], 5.0, 0.9, 0.9, 0.9)]).to_dict()
    doc["schema_version"] = "1.0"
    assert validate_findings_dict(doc) == []
    assert Findings.from_dict(doc).lung_rads is None
    doc["candidates"][0]["characterization"] = {"type": "cyst", "calcified": False, "volume_ml": -1.0,
                                                "long_axis_mm": 1.0, "short_axis_mm": 1.0, "mean_diameter_mm": 1.0,
                                                "solid_component_mm": None, "mean_hu": 0.0, "lung_rads": "9"}
    doc["lung_rads"] = {"category": "5", "finding_id": "N1"}
    problems = " ".join(validate_findings_dict(doc))
    for needle in ("characterization.type", "characterization.volume_ml", "characterization.lung_rads",
                   "lung_rads.category"):
        assert needle in problems


def test_characterize_with_default_selection_returns_findings():
    vol = phantom([dict(center=(0, 0, 0), axes=(3, 3, 3), hu=30.0)])
    out = characterize(vol, _findings([Candidate("N1", 1, [0.0, 0.0, 0.0], 6.0, 0.9, 0.9, 0.9)]))
    assert out.candidate("N1").characterization["mean_diameter_mm"] == pytest.approx(6.0, abs=0.6)
    assert "characterize" in out.timings_s


def test_markups_description_shows_the_characterization(tmp_path):
    from LesionDetectorLib.export.markups import (control_point_description, parse_description, read_markups_json,
                                                  write_markups_json)

    vol = phantom([dict(center=(0, 0, 0), axes=(4, 4, 4), hu=30.0)])
    out = characterize(vol, _findings([Candidate("N1", 1, [0.0, 0.0, 0.0], 8.0, 0.9, 0.9, 0.9)]))
    ch = out.candidate("N1").characterization
    parts = parse_description(control_point_description(out.candidate("N1")))
    assert parts["type"] == "solid" and parts["Lung-RADS"] == ch["lung_rads"]
    assert parts["size"] == f"{ch['mean_diameter_mm']:.1f} mm" and parts["review"] == "unreviewed"
    back = read_markups_json(write_markups_json(out, tmp_path / "f.mrk.json"))
    assert back.candidate("N1").characterization == ch and back.lung_rads == out.lung_rads


def test_a_failing_finding_does_not_stop_the_others(monkeypatch):
    import LesionDetectorLib.characterization as ch_mod

    real = ch_mod.characterize_candidate

    def flaky(volume, candidate, lung_mask=None):
        if candidate.id == "N1":
            raise ValueError("qhull precision error")
        return real(volume, candidate, lung_mask)

    monkeypatch.setattr(ch_mod, "characterize_candidate", flaky)
    vol = phantom([dict(center=(0, 0, 0), axes=(3, 3, 3), hu=30.0)])
    out = characterize(vol, _findings([Candidate("N1", 1, [0.0, 0.0, 0.0], 6.0, 0.9, 0.9, 0.9),
                                       Candidate("N2", 2, [0.0, 0.0, 0.0], 6.0, 0.8, 0.8, 0.8)]))
    assert out.candidate("N1").characterization["type"] is None
    assert "failed" in out.candidate("N1").characterization["note"]
    assert out.candidate("N2").characterization["type"] == "solid" and out.lung_rads["finding_id"] == "N2"
    assert validate_findings_dict(out.to_dict()) == []


def test_ground_glass_nodule_between_vessels_keeps_its_own_boundary_level():
    # An 11 mm ground-glass nodule touched on two sides by thick vessels. At the low first threshold
    # the region takes in the vessels; if their HU set the boundary level, the next threshold rose
    # above the nodule and the mask collapsed to a voxel or nothing (a follow-up pair's GGN did).
    v = phantom([dict(center=(0, 0, 0), axes=(5.5, 5.5, 5.5), hu=-640.0),
                 dict(center=(0, 7.5, 0), axes=(30, 2.5, 2.5), hu=40.0),
                 dict(center=(0, -7.5, 0), axes=(30, 2.5, 2.5), hu=40.0)], shape=(40, 64, 64))
    ch = run(v, diameter=11.0).characterization
    assert ch["type"] == "ground-glass"
    assert ch["volume_ml"] == pytest.approx(ellipsoid_ml((5.5, 5.5, 5.5)), rel=0.2)
    assert ch["mean_diameter_mm"] == pytest.approx(11.0, abs=1.0)


def test_nodule_at_the_edge_of_the_field_of_view_is_measured_against_the_lung():
    # The scan ends just past the nodule's centre (a trimmed follow-up scan): half the local cube
    # lies outside the image. Those samples are no parenchyma: read as -1024 HU, they took the
    # background to -1024 and the threshold 90 HU down, so the same nodule grew between two scans.
    from LesionDetectorLib.characterization.segmentation import segment_nodule

    full = phantom([dict(center=(0, 0, 0), axes=(4, 4, 4), hu=30.0)], wall_x_mm=6.0)
    whole = segment_nodule(full, (0, 0, 0), 8.0)
    for keep in (16, 17):
        cut = Volume(full.array[:keep].copy(), full.spacing, full.origin, full.direction)
        seg = segment_nodule(cut, (0, 0, 0), 8.0)
        assert seg.background_hu == pytest.approx(whole.background_hu, abs=15.0)
        assert seg.threshold_hu == pytest.approx(whole.threshold_hu, abs=20.0)
        assert not seg.lung[seg.hu < -1020].all()          # the outside is not on the lung side
    ch = run(Volume(full.array[:17].copy(), full.spacing, full.origin, full.direction)).characterization
    assert ch["mean_diameter_mm"] == pytest.approx(run(full).characterization["mean_diameter_mm"], abs=0.3)


@pytest.mark.parametrize("seed", [0, 1])
def test_part_solid_boundary_level_comes_from_the_ground_glass_rim(seed):
    # A 10 mm part-solid nodule with a 2 mm ground-glass rim. Thresholded at half the shell's
    # median (which holds the rim's blurred fall-off) the mask ran ~15 % into the blur; the rim's
    # own level puts the boundary at its half maximum.
    ch = run(phantom([dict(center=(0, 0, 0), axes=(5.0, 5.0, 5.0), hu=-560.0, core_scale=0.6, core_hu=20.0)],
                     seed=seed), diameter=10.0).characterization
    assert ch["type"] == "part-solid"
    assert ch["volume_ml"] == pytest.approx(ellipsoid_ml((5.0, 5.0, 5.0)), rel=0.10)
    assert ch["solid_component_mm"] == pytest.approx(6.0, abs=1.0)
