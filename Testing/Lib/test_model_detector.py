"""The whole detector: output shapes for 96^3 / 128^3 crops, Table I arithmetic, model-card I/O."""
import json

import pytest
import torch

from LesionDetectorLib.errors import ModelError
from LesionDetectorLib.model import AggregatedFasterRCNN, ModelConfig, build_model, load_pretrained, save_pretrained

# Same topology as the paper's model, narrower, so one forward + backward stays fast on 2 CPU cores.
NARROW = dict(stem_channels=4, pyramid_channels=8, growth_rate=4, fc_hidden=16,
              pre_nms_top_n_test=200, post_nms_top_n_test=12, post_nms_top_n_train=6, fprn_batch_per_image=6)


def test_full_width_model_follows_table1():
    model = build_model(ModelConfig.preset("luna16"))
    bb = model.backbone
    assert bb.out_channels == 32
    assert bb.encode1.out_channels == 24 + 2 * 16          # two dense layers of growth 16
    assert model.fprn.classifier[0].in_features == 768      # 3 levels x 32 ch x 2^3
    assert model.fprn.classifier[0].out_features == 256 and model.fprn.classifier[2].out_features == 1
    assert [h.num_anchors for h in model.rpn.heads] == [2, 2, 2]
    assert len({id(h) for h in model.rpn.heads}) == 3        # heads are not shared
    features = bb(torch.zeros(1, 1, 32, 32, 32))
    assert [tuple(f.shape) for f in features] == [(1, 32, 8, 8, 8), (1, 32, 4, 4, 4), (1, 32, 2, 2, 2)]
    assert build_model(ModelConfig.preset("rpn_baseline")).fprn is None


@pytest.mark.parametrize("crop", [96, 128])
def test_forward_shapes_eval_and_train(crop):
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("luna16", crop_size=(crop,) * 3, **NARROW))
    x = torch.rand(1, 1, crop, crop, crop)
    feats = model.backbone(x)
    assert [f.shape[-1] for f in feats] == [crop // 4, crop // 8, crop // 16]
    model.train()
    losses = model(x, [torch.tensor([[40.0, 50.0, 60.0, 10.0]])])
    assert set(losses) == {"rpn_cls", "rpn_reg", "fprn_cls"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.fprn.classifier[0].weight.grad.abs().sum() > 0
    assert model.backbone.preblock[0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert len(out) == 1
    det = out[0]
    k = det["boxes"].shape[0]
    assert det["boxes"].shape == (k, 4) and 0 < k <= model.config.detections_per_crop
    for key in ("scores", "scores_rpn", "scores_fprn"):
        assert det[key].shape == (k,) and ((det[key] >= 0) & (det[key] <= 1)).all()
    assert torch.allclose(det["scores"], (det["scores_rpn"] + det["scores_fprn"]) / 2)
    assert (det["scores"][:-1] >= det["scores"][1:]).all()


def test_bad_input_is_refused():
    model = build_model(ModelConfig.preset("tiny", **NARROW))
    with pytest.raises(ValueError):
        model(torch.zeros(1, 1, 40, 32, 32), [torch.zeros(0, 4)])
    with pytest.raises(ValueError):
        model.train()(torch.zeros(1, 1, 32, 32, 32))
    with pytest.raises(ValueError):
        build_model(ModelConfig.preset("rpn_baseline")).set_stage("joint")


def test_card_round_trip_and_tamper_refusal(tmp_path):
    torch.manual_seed(1)
    model = build_model(ModelConfig.preset("tiny", **NARROW)).eval()
    card = {"name": "unit-test", "version": "1.2.3", "training_data": {"description": "none"},
            "operating_points": {"sensitivity_0.95": {"threshold": 0.3, "sensitivity": 0.95, "fp_per_scan": 2.0}}}
    save_pretrained(model, tmp_path, card)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["name"] == "unit-test" and meta["config"]["pyramid_channels"] == 8 and len(meta["sha256"]) == 64
    loaded, card2 = load_pretrained(tmp_path, "cpu")
    assert isinstance(loaded, AggregatedFasterRCNN) and not loaded.training
    assert card2["operating_points"]["sensitivity_0.95"]["threshold"] == 0.3
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        a, b = model(x)[0], loaded(x)[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])

    blob = bytearray((tmp_path / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="does not match"):
        load_pretrained(tmp_path)


def test_card_with_wrong_architecture_is_refused(tmp_path):
    model = build_model(ModelConfig.preset("tiny", **NARROW))
    save_pretrained(model, tmp_path, {"name": "x"})
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["config"]["pyramid_channels"] = 12
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="do not fit"):
        load_pretrained(tmp_path)
    (tmp_path / "model.json").unlink()
    with pytest.raises(ModelError, match="not found"):
        load_pretrained(tmp_path)


def test_channels_last_layout_gives_the_same_detections_and_losses():
    """Training and CPU inference run in NDHWC (faster oneDNN kernels); no reshape in the model
    may depend on the memory layout."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("luna16", crop_size=(64,) * 3, **NARROW)).eval()
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        ref = model(x)[0]
        cl_model = build_model(model.config)
        cl_model.load_state_dict(model.state_dict())
        cl_model = cl_model.eval().to(memory_format=torch.channels_last_3d)
        got = cl_model(x.contiguous(memory_format=torch.channels_last_3d))[0]
    assert got["boxes"].shape == ref["boxes"].shape and ref["boxes"].shape[0] > 0
    for key in ("boxes", "scores", "scores_rpn", "scores_fprn"):
        assert torch.allclose(got[key], ref[key], atol=1e-4), key
    target = [torch.tensor([[30.0, 28.0, 35.0, 10.0]])]
    model.train()
    cl_model.train()
    torch.manual_seed(1)
    ref_losses = model(x, target)
    torch.manual_seed(1)
    cl_losses = cl_model(x.contiguous(memory_format=torch.channels_last_3d), target)
    for key in ref_losses:
        assert torch.allclose(cl_losses[key], ref_losses[key], rtol=1e-3, atol=1e-5), key
