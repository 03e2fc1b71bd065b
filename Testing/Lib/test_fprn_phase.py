"""FPRN phase on a frozen backbone: cached windows give the FPRN's own logits, labels follow the
LUNA16 hit rule, training separates nodules from confusers, the backbone does not move, and
calibration fits a fusion and a patient probability through the engine's post-processing."""
import numpy as np
import pytest
import torch

from LesionDetectorLib.inference.engine import EngineSettings, ScoreFusion
from LesionDetectorLib.model import ModelConfig, build_model
from LesionDetectorLib.training.cache import CachedScan
from LesionDetectorLib.training.fprn_phase import (FprnPhaseOptions, RoiSet, auc, fprn_probabilities, harvest_rois,
                                                   train_fprn_phase)

IDENTITY = np.concatenate([np.eye(3), np.zeros((3, 1))], 1)


def phantom_scan(uid, seed, n_nodules=2):
    """Noise, tubular 'vessels' (bright lines) and spherical 'nodules' of known centres."""
    rng = np.random.default_rng(seed)
    img = rng.uniform(0.05, 0.2, (64, 64, 64)).astype(np.float32)
    zz, yy, xx = np.mgrid[:64, :64, :64]
    for _ in range(3):
        y0, x0 = rng.integers(10, 54, 2)
        img[((yy - y0) ** 2 + (xx - x0) ** 2) < 4] = 0.7
    boxes = []
    for _ in range(n_nodules):
        c = rng.integers(14, 50, 3)
        img[((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) < 16] = 0.75
        boxes.append([*c, 8.0])
    return CachedScan(uid=uid, image=img.astype(np.float16), boxes=np.asarray(boxes, dtype=np.float32),
                      excluded=np.zeros((0, 4), dtype=np.float32), affine=IDENTITY)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(ModelConfig.preset("tiny")).eval()


def test_cached_windows_reproduce_the_fprn(tiny):
    """classify(windows(...)) is exactly the FPRN's forward: the cache loses nothing."""
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        feats = tiny.backbone(x)
        boxes = torch.tensor([[30.0, 30, 30, 8], [20, 40, 25, 14]])
        levels = torch.tensor([0, 1])
        batch = torch.zeros(2, dtype=torch.long)
        direct = tiny.fprn(feats, boxes, levels, batch)
        w, inner = tiny.fprn.windows(feats, boxes, levels, batch)
        cached = tiny.fprn.classify(w, inner)
    assert torch.allclose(direct, cached, atol=1e-6)


def test_harvest_labels_by_the_hit_rule(tiny):
    scan = phantom_scan("a", 1)
    rois = harvest_rois(tiny, [scan], EngineSettings(tile=(64,) * 3, precision="fp32"), jitters=4)
    n_gt = len(scan.boxes)
    assert len(rois) > n_gt * 5
    assert rois.windows.dtype == torch.float16 and rois.windows.shape[1] == 3
    # every ground truth and jittered copy is added with a NaN RPN score, and labelled positive
    added = torch.isnan(rois.rpn)
    assert int(added.sum()) == n_gt * 5
    assert bool((rois.labels[added] == 1).all())


def test_training_separates_and_leaves_the_backbone_frozen(tiny):
    model = build_model(ModelConfig.preset("tiny")).eval()
    model.load_state_dict(tiny.state_dict())
    scans = [phantom_scan(f"s{i}", 10 + i) for i in range(3)]
    settings = EngineSettings(tile=(64,) * 3, precision="fp32")
    train = harvest_rois(model, scans, settings, jitters=8)
    val = harvest_rois(model, [phantom_scan("v", 99)], settings, jitters=8, seed=1)
    before_backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    auc_before = auc(fprn_probabilities(model.fprn, val), val.labels.numpy())
    summary = train_fprn_phase(model, train, val, FprnPhaseOptions(epochs=3, steps_per_epoch=25, batch_size=64,
                                                                   lr=3e-3))
    auc_after = auc(fprn_probabilities(model.fprn, val), val.labels.numpy())
    assert auc_after > max(auc_before, 0.8)
    assert summary["best"]["val_auc"] == pytest.approx(auc_after, abs=1e-9)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before_backbone[k]), k


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    s = np.round(rng.random(200), 2)           # ties on purpose
    y = rng.random(200) < 0.3
    pairs = [(a > b) + 0.5 * (a == b) for a in s[y] for b in s[~y]]
    assert auc(s, y) == pytest.approx(np.mean(pairs), abs=1e-12)


def test_roiset_concat_refuses_nothing():
    with pytest.raises(ValueError, match="no RoIs"):
        RoiSet.concat([])


def test_calibration_picks_a_fusion_that_separates():
    """Synthetic validation marks where the RPN is confident on everything and the FPRN knows
    better: the calibration must not keep the mean, and its patient probability rises with
    the top score."""
    from LesionDetectorLib.evaluation.calibration import ScanMarks, calibrate

    rng = np.random.default_rng(0)
    scans = []
    for i in range(12):
        uid = f"1.2.{i}"
        rows = []
        truth = []
        if i % 3:                                   # 8 positive patients, 4 negative
            c = rng.uniform(20, 80, 3)
            truth.append((uid, c[2], c[1], c[0], 8.0))      # LUNA16 rows are (x, y, z)
            rows.append([*c, 8.0, 0.0, rng.uniform(0.6, 0.9), rng.uniform(0.85, 0.99)])
        for _ in range(30):                          # vessels: RPN-confident, FPRN-sceptical
            c = rng.uniform(0, 100, 3)
            rows.append([*c, 6.0, 0.0, rng.uniform(0.7, 0.99), rng.uniform(0.05, 0.7)])
        zyx_to_lps = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0]], dtype=np.float64)
        scans.append(ScanMarks(uid, np.asarray(rows), zyx_to_lps, truth, []))
    cal = calibrate(scans, EngineSettings(tile=(64,) * 3, merge_inside=False))
    assert cal.fusion.method != "mean"
    assert cal.candidates[cal.fusion.method]["cpm"] > cal.candidates["mean"]["cpm"]
    assert cal.candidates[cal.fusion.method]["tnp"] >= cal.candidates["mean"]["tnp"]
    p = cal.patient_probability
    assert p["method"] == "platt" and p["a"] > 0 and p["n_negative"] == 4
    assert set(cal.operating_points) >= {"sensitivity_0.95", "fp_per_scan_1"}
    assert ScoreFusion(**{"method": cal.fusion.method, "weights": cal.fusion.weights})


def test_harvest_is_saved_and_reused_only_for_the_same_identity(tmp_path, tiny):
    rois = harvest_rois(tiny, [phantom_scan("a", 1)], EngineSettings(tile=(64,) * 3, precision="fp32"), jitters=2)
    ident = {"model_sha256": "x", "scans": ["a"], "jitters": 2}
    rois.save(tmp_path / "h.safetensors", ident)
    back = RoiSet.load(tmp_path / "h.safetensors", ident)
    assert back is not None and torch.equal(back.windows, rois.windows) and torch.equal(back.labels, rois.labels)
    assert torch.equal(torch.isnan(back.rpn), torch.isnan(rois.rpn))
    assert RoiSet.load(tmp_path / "h.safetensors", dict(ident, jitters=3)) is None
    assert RoiSet.load(tmp_path / "missing.safetensors", ident) is None
