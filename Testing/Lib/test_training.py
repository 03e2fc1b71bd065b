"""Training: crop sampling/augmentation, safetensors checkpoints + resume, and a tiny run that
overfits one synthetic bright sphere (loss falls, the nodule is found in eval)."""
import json

import numpy as np
import pytest
import torch

from LesionDetectorLib.model import ModelConfig, load_pretrained
from LesionDetectorLib.training import CachedScan, CropDataset, TrainOptions, train_model
from LesionDetectorLib.training.checkpoint import load_checkpoint
from LesionDetectorLib.training.loop import stage_at

CFG = dict(stem_channels=4, pyramid_channels=8, growth_rate=4, fc_hidden=16, crop_size=(32, 32, 32),
           pre_nms_top_n_train=100, post_nms_top_n_train=6, pre_nms_top_n_test=100, post_nms_top_n_test=8,
           fprn_batch_per_image=6, rpn_first_fraction=0.4)


def sphere_scan(shape=(48, 48, 48), centre=(24.0, 22.0, 25.0), diameter=10.0, seed=0) -> CachedScan:
    rng = np.random.default_rng(seed)
    img = (0.15 + 0.02 * rng.standard_normal(shape)).astype(np.float32)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    r2 = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2
    img[r2 <= (diameter / 2) ** 2] = 0.85
    affine = np.concatenate([np.eye(3)[::-1], np.array([[-10.0], [5.0], [100.0]])], axis=1)
    return CachedScan(uid="1.2.3", image=img, boxes=np.array([[*centre, diameter]], dtype=np.float32),
                      excluded=np.zeros((0, 4), np.float32), affine=affine)


def test_positive_crops_contain_the_nodule_after_augmentation():
    scan = sphere_scan()
    ds = CropDataset([scan], (32, 32, 32), length=12, seed=3, pos_fraction=1.0)
    for i in range(len(ds)):
        image, boxes = ds[i]
        assert image.shape == (1, 32, 32, 32) and boxes.shape == (1, 4)
        z, y, x = np.round(boxes[0, :3].numpy()).astype(int)
        assert image[0, z, y, x] == pytest.approx(0.85)      # the box still marks the bright sphere
    a, b = ds[5], ds[5]
    assert torch.equal(a[0], b[0])                           # deterministic per (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(ds[5][0], a[0])


def test_stage_schedule():
    cfg = ModelConfig.preset("tiny", rpn_first_fraction=0.5)
    assert stage_at(cfg, 0.2, 7) == "rpn" and stage_at(cfg, 0.6, 7) == "joint"
    alt = cfg.replace(training="alternating")
    assert [stage_at(alt, 0.6, i) for i in (0, 1)] == ["rpn", "fprn"]
    assert stage_at(cfg.replace(fprn=False), 0.9, 1) == "rpn"


@pytest.mark.slow
def test_tiny_run_overfits_one_nodule_and_resumes(tmp_path):
    torch.manual_seed(0)
    scan = sphere_scan()
    config = ModelConfig.preset("tiny", **CFG)
    # fp32 (amp=False): on CPUs with native bf16 the loop would train in bf16, whose oneDNN
    # reductions vary with thread timing, and this 48-step overfit is a bound on exact numbers;
    # bf16 training is covered by test_bf16_training_losses_match_fp32.
    opts = TrainOptions(out_dir=str(tmp_path), epochs=4, iters_per_epoch=12, batch_size=2, lr=3e-3,
                        pos_fraction=0.8, validate_every=4, progress_bar=False, amp=False,
                        card={"name": "overfit-test", "training": {"command": "lesion-detector train ..."}})
    summary = train_model(config, [scan], [scan], opts)
    assert summary["epochs"] == 4 and summary["iterations"] == 48
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and log[0]["stage"] == "rpn" and log[-1]["stage"] == "joint"
    assert log[-1]["rpn_cls"] < 0.5 * log[0]["rpn_cls"]
    assert "fprn_cls" in log[-1] and "val_cpm" in log[-1] and "val_cpm" not in log[0]

    model, card = load_pretrained(tmp_path / "model")
    assert card["name"] == "overfit-test" and "validation" in card
    # the card says what trained it, how long, and with which command
    assert card["training"]["command"] == "lesion-detector train ..."
    assert "torch " + torch.__version__ in card["training"]["hardware"]
    assert 0 <= card["training"]["wall_time_min"] < 30 and card["training"]["iterations"] == 48
    crop = torch.from_numpy(np.ascontiguousarray(scan.image[8:40, 6:38, 9:41]))[None, None]
    model.config.score_thresh = 0.0        # rank every proposal; calibration is not the point here
    with torch.no_grad():
        det = model(crop)[0]
    best = det["boxes"][0] + torch.tensor([8.0, 6.0, 9.0, 0.0])
    # found: the top candidate lies within one nodule diameter of its centre (a random
    # candidate in the 32^3 crop is ~13 voxels away)
    assert torch.linalg.norm(best[:3] - torch.tensor([24.0, 22.0, 25.0])) < 10.0
    assert det["scores"][0] > det["scores"][-1]

    # resume: one more epoch continues from the saved iteration and optimizer state
    opts.epochs = 5
    opts.resume = True
    summary = train_model(config, [scan], [], opts)
    assert summary["iterations"] == 60
    state, saved = load_checkpoint(tmp_path / "checkpoint", model, None, restore_rng=False)
    assert state["epoch"] == 5 and saved["pyramid_channels"] == 8

    # resume with a longer schedule: progress falls back to 60/216 .. 96/216, all below
    # rpn_first_fraction, yet the FPRN, trained already, keeps training
    opts.epochs, opts.iters_per_epoch = 6, 36
    summary = train_model(config, [scan], [], opts)
    assert summary["iterations"] == 96
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["stage"] == "joint" and "fprn_cls" in log[-1]


def test_reviewed_hard_negatives_become_crop_centres(tmp_path, monkeypatch):
    """train --hard-negatives: a rejected candidate (world LPS) on a training scan is mapped to
    crop voxels and the loop's dataset draws crops around it."""
    from LesionDetectorLib.luna16_format import Annotation, write_annotations
    from LesionDetectorLib.training import loop, sampler

    scan = sphere_scan()
    centre_zyx = np.array([10.0, 30.0, 12.0])
    x, y, z = scan.to_world(centre_zyx)[0]
    csv_path = write_annotations(tmp_path / "hard_negatives.csv", [Annotation(scan.uid, x, y, z, 6.0)])
    seen = {}

    class Recording(sampler.CropDataset):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen["regions"] = list(self.hard_regions)
            seen["fraction"] = self.hard_fraction

    monkeypatch.setattr(loop, "CropDataset", Recording)
    config = ModelConfig.preset("tiny", **CFG)
    opts = TrainOptions(out_dir=str(tmp_path / "run"), epochs=1, iters_per_epoch=1, progress_bar=False,
                        hard_negatives_csv=str(csv_path), abs_hard_fraction=0.4)
    train_model(config, [scan], [], opts)
    assert len(seen["regions"]) == 1 and seen["fraction"] == 0.4
    assert np.allclose(seen["regions"][0][1], centre_zyx, atol=1e-6)


def test_bf16_training_losses_match_fp32():
    """The loop trains under bf16 autocast on CPUs with AMX / AVX512-BF16: on the same crop and
    weights every loss term stays within 5 % (relative) of fp32, and gradients flow."""
    from LesionDetectorLib.inference.engine import autocast_for
    from LesionDetectorLib.model import build_model

    config = ModelConfig.preset("tiny", **CFG)
    scan = sphere_scan()
    image = torch.from_numpy(np.ascontiguousarray(scan.image[8:40, 6:38, 9:41]))[None, None]
    target = [torch.tensor([[16.0, 16.0, 16.0, 10.0]])]
    torch.manual_seed(0)
    model = build_model(config).train()
    model.set_stage("joint")
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(1)
        with autocast_for(precision, torch.device("cpu")):
            out = model(image, target)
        losses[precision] = {k: float(v.detach()) for k, v in out.items()}
        if precision == "bf16":
            sum(out.values()).backward()
    for k, v in losses["fp32"].items():
        assert abs(losses["bf16"][k] - v) <= 0.05 * abs(v) + 1e-4, (k, v, losses["bf16"][k])
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)


def test_fine_tuning_starts_from_the_init_model_and_checks_its_architecture(tmp_path):
    """train --init MODEL (joint training): the run starts from MODEL's weights (lr 0 keeps them
    exactly), trains the FPRN from the first step, records MODEL in the card, and refuses a model
    whose architecture differs from the run's config."""
    from LesionDetectorLib.model import build_model
    from LesionDetectorLib.model.card import save_pretrained

    torch.manual_seed(1)
    scan = sphere_scan()
    config = ModelConfig.preset("tiny", **CFG)
    start = build_model(config)
    save_pretrained(start, tmp_path / "init", {"name": "init-model", "version": "9.9"})
    opts = TrainOptions(out_dir=str(tmp_path / "ft"), epochs=1, iters_per_epoch=2, batch_size=1, lr=0.0,
                        weight_decay=0.0, progress_bar=False, amp=False, init_model=str(tmp_path / "init"))
    train_model(config.replace(crop_size=(48, 48, 48)), [scan], [], opts)   # the crop may differ
    tuned, card = load_pretrained(tmp_path / "ft" / "model")
    tuned_params = dict(tuned.named_parameters())
    for name, a in start.named_parameters():      # (batch-norm running statistics do move)
        assert torch.equal(a, tuned_params[name]), name
    assert card["training"]["init_model"]["name"] == "init-model"
    log = [json.loads(line) for line in (tmp_path / "ft" / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["stage"] == "joint"           # not the RPN-only warm-up of a fresh run

    other = TrainOptions(out_dir=str(tmp_path / "bad"), epochs=1, iters_per_epoch=1, progress_bar=False,
                         init_model=str(tmp_path / "init"))
    with pytest.raises(ValueError, match="pyramid_channels"):
        train_model(config.replace(pyramid_channels=16), [scan], [], other)


def test_abs_regions_survive_a_resume(tmp_path, monkeypatch):
    """ABS mines once (a detection pass per training scan); a resumed run draws from the same
    regions, read from the checkpoint, instead of none (or mining again)."""
    from LesionDetectorLib.training import loop

    scan = sphere_scan()
    mined = []

    def mine(model, scans, config, device, min_score=0.5):
        mined.append(1)
        return [(0, np.array([10.0, 30.0, 12.0]))]

    seen = []

    class Recording(loop.CropDataset):
        def set_epoch(self, epoch):
            seen.append((epoch, [(i, c.tolist()) for i, c in self.hard_regions], self.hard_fraction))
            super().set_epoch(epoch)

    monkeypatch.setattr(loop, "mine_hard_regions", mine)
    monkeypatch.setattr(loop, "CropDataset", Recording)
    config = ModelConfig.preset("tiny", **CFG)
    opts = TrainOptions(out_dir=str(tmp_path), epochs=1, iters_per_epoch=1, abs_epochs=1, progress_bar=False,
                        amp=False, abs_hard_fraction=0.3)
    train_model(config, [scan], [], opts)
    assert mined == [1] and seen[-1] == (1, [(0, [10.0, 30.0, 12.0])], 0.3)
    opts.abs_epochs, opts.resume = 2, True
    seen.clear()
    train_model(config, [scan], [], opts)
    assert mined == [1]                                       # not mined again
    assert seen == [(2, [(0, [10.0, 30.0, 12.0])], 0.3)]      # the same regions after the resume
