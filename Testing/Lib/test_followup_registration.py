"""Synthetic follow-up pairs and the lung registration (small ~2 mm scans, a few seconds)."""
import numpy as np
import pytest
import SimpleITK as sitk

from LesionDetectorLib.coordinates import world_to_index
from LesionDetectorLib.data.synthetic_followup import generate_followup, truth_findings
from LesionDetectorLib.errors import NoLungsFoundError
from LesionDetectorLib.followup.registration import register_lungs
from LesionDetectorLib.volume import Volume


@pytest.fixture(scope="module")
def rigid_pair():
    """The same patient rotated, shifted and rescanned at another slice spacing (no breath-hold change)."""
    return generate_followup(4, 0, "small", changes=["grown", "new"], breath_hold=False)


@pytest.fixture(scope="module")
def rigid_registration(rigid_pair):
    return register_lungs(rigid_pair.prior, rigid_pair.current)


def _hu_at(volume, point_lps):
    idx = np.round(world_to_index(volume, np.asarray(point_lps)[None])[0]).astype(int)
    return float(volume.array[tuple(idx)])


def test_pair_truth_is_where_the_images_say(rigid_pair):
    p = rigid_pair
    assert p.prior.spacing[2] != pytest.approx(p.current.spacing[2])       # another slice spacing
    assert p.prior.metadata["StudyDate"] == "20250304" and p.current.metadata["StudyDate"] == "20260304"
    statuses = [t["status"] for t in p.truth if t["added"]]
    assert statuses == ["grown", "new"]
    for t in p.truth:
        if (t["current_diameter_mm"] or 0) >= 5 and t["category"] not in ("ground-glass", "part-solid"):
            assert _hu_at(p.current, t["current_center_lps"]) > -500, t     # a nodule at the true current centre
        if t["prior_center_lps"] is not None and t["current_center_lps"] is not None:
            mapped = p.prior_to_current(np.asarray(t["prior_center_lps"]))[0]
            # Same rendering: same centroid; a resized one keeps it within a fraction of a voxel.
            assert np.allclose(mapped, t["current_center_lps"], atol=1e-6 if t["status"] == "stable" else 1.5)
    grown = next(t for t in p.truth if t["status"] == "grown" and t["added"])
    assert 2.5 <= grown["current_diameter_mm"] - grown["prior_diameter_mm"] <= 5.0
    new = next(t for t in p.truth if t["status"] == "new")
    assert new["prior_center_lps"] is None
    assert _hu_at(p.prior, np.linalg.solve(p.prior_to_current_matrix[:3, :3],
                                           np.asarray(new["current_center_lps"]) - p.prior_to_current_matrix[:3, 3])) < -500
    assert len(truth_findings(p, "current")) == sum(t["current_center_lps"] is not None for t in p.truth)


def test_rigid_copy_registers_to_within_a_voxel(rigid_pair, rigid_registration):
    p, r = rigid_pair, rigid_registration
    pts = np.array([t["prior_center_lps"] for t in p.truth if t["prior_center_lps"] is not None])
    err = np.linalg.norm(r.prior_to_current(pts) - p.prior_to_current(pts), axis=1)
    assert err.max() < 2.0, err                                   # voxels are ~2 x 2 x 2.5 mm
    q = r.quality
    assert q["surface_mean_mm"] < 1.5 and q["surface_p95_mm"] < 4.0 and q["dice"] > 0.95
    assert q["initial"]["surface_mean_mm"] > 3 * q["surface_mean_mm"]       # the move was real
    assert np.allclose(q["transform"]["scale"], 1.0, atol=0.03)              # rigid: no scaling found
    back = r.current_to_prior(r.prior_to_current(pts))
    assert np.allclose(back, pts, atol=1e-3)


def test_breath_hold_scaling_is_recovered():
    p = generate_followup(5, 0, "small", changes=[])
    r = register_lungs(p.prior, p.current)
    pts = np.array([t["prior_center_lps"] for t in p.truth])
    err = np.linalg.norm(r.prior_to_current(pts) - p.prior_to_current(pts), axis=1) if len(pts) else np.zeros(1)
    assert err.max() < 2.5, err
    true_scale = np.sort(np.linalg.svd(p.prior_to_current_matrix[:3, :3], compute_uv=False))
    assert np.allclose(np.sort(r.quality["transform"]["scale"]), true_scale, atol=0.02)


def test_scan_without_lungs_is_refused(rigid_pair):
    soft = Volume(np.full((40, 60, 60), 40.0, np.float32), (4.0, 4.0, 4.0), (0, 0, 0), np.eye(3))
    with pytest.raises(NoLungsFoundError):
        register_lungs(soft, rigid_pair.current)


def test_affine_steps_are_bounded_in_mm():
    """Regression: the optimizer's step was in parameter units, so an affine matrix entry that
    dominated the gradient moved by up to ~2 in one step (a full-size pair's z scale went from 0.96
    to 0.41, 71 mm error at its nodules). On this small pair the x scale came out 1.07 (12.5 mm)."""
    p = generate_followup(101, 0, "small")
    r = register_lungs(p.prior, p.current)
    pts = np.array([t["prior_center_lps"] for t in p.truth if t["prior_center_lps"] is not None])
    err = np.linalg.norm(r.prior_to_current(pts) - p.prior_to_current(pts), axis=1)
    assert err.max() < 1.5, err
    true_scale = np.sort(np.linalg.svd(p.prior_to_current_matrix[:3, :3], compute_uv=False))
    assert np.allclose(np.sort(r.quality["transform"]["scale"]), true_scale, atol=0.02)
    assert r.quality["rejected_stages"] == []


def test_a_stage_that_raises_its_metric_is_not_kept(rigid_pair, monkeypatch):
    from LesionDetectorLib.followup import registration as reg_module

    real = reg_module._register

    def broken_affine(fixed, moving, initial, *args, **kwargs):
        out = reg_module._single(real(fixed, moving, initial, *args, **kwargs))
        if initial.GetName() == "AffineTransform" and args[3] == "meansquares":
            bad = sitk.AffineTransform(out)
            bad.SetMatrix(tuple((np.array(bad.GetMatrix()).reshape(3, 3) @ np.diag([1.0, 1.0, 0.6])).ravel()))
            return bad
        return out

    monkeypatch.setattr(reg_module, "_register", broken_affine)
    r = register_lungs(rigid_pair.prior, rigid_pair.current)
    assert [s["stage"] for s in r.quality["rejected_stages"]] == ["affine (lung shape)"]
    s = r.quality["rejected_stages"][0]
    assert s["metric_after"] > s["metric_before"]
    pts = np.array([t["prior_center_lps"] for t in rigid_pair.truth if t["prior_center_lps"] is not None])
    err = np.linalg.norm(r.prior_to_current(pts) - rigid_pair.prior_to_current(pts), axis=1)
    assert err.max() < 2.0, err
