"""Anchors, box coder, matcher, losses, NMS and Diameter Alignment on hand-worked examples."""
import json
import math

import pytest
import torch

from LesionDetectorLib.model import ModelConfig
from LesionDetectorLib.model.anchors import AnchorGenerator
from LesionDetectorLib.model.box_coder import BoxCoder
from LesionDetectorLib.model.cube_iou import cube_iou
from LesionDetectorLib.model.fprn import roi_sizes_in_cells
from LesionDetectorLib.model.losses import adaptive_focal_loss, focal_T, ohem_loss
from LesionDetectorLib.model.matcher import IGNORE, NEGATIVE, POSITIVE, Matcher
from LesionDetectorLib.model.nms import nms_3d


def test_cube_iou_hand_values():
    a = torch.tensor([[0.0, 0.0, 0.0, 2.0]])
    b = torch.tensor([[1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, 2.0], [5.0, 5.0, 5.0, 2.0], [0.0, 0.0, 0.0, 4.0]])
    iou = cube_iou(a, b)[0]
    assert iou.tolist() == pytest.approx([4 / 12, 1.0, 0.0, 8 / 64])


def test_anchor_grid_counts_and_centres():
    cfg = ModelConfig.preset("luna16")
    gen = AnchorGenerator(cfg.level_anchor_sizes(), cfg.strides)
    anchors, levels = gen.grid_anchors([(32, 32, 32), (16, 16, 16), (8, 8, 8)])
    assert anchors.shape == (32 ** 3 * 2 + 16 ** 3 * 2 + 8 ** 3 * 2, 4)
    # cell 0 of stride 4 covers voxels 0..3 -> centre 1.5; anchors {4, 6} there
    assert anchors[:2].tolist() == [[1.5, 1.5, 1.5, 4.0], [1.5, 1.5, 1.5, 6.0]]
    last16 = anchors[levels == 2][-1]
    assert last16.tolist() == [7 * 16 + 7.5] * 3 + [24.0]
    single = ModelConfig.preset("table2_b")
    gen = AnchorGenerator(single.level_anchor_sizes(), single.strides)
    anchors, levels = gen.grid_anchors([(32, 32, 32), (16, 16, 16), (8, 8, 8)])
    assert anchors.shape[0] == 32 ** 3 * 6 and levels.max() == 0
    assert sorted(set(anchors[:, 3].tolist())) == [4, 6, 8, 12, 16, 24]


def test_deeplesion_and_anchor2_sets():
    assert ModelConfig.preset("deeplesion").level_anchor_sizes() == [(3, 5, 7), (10, 13, 17), (22, 30, 40)]
    assert ModelConfig.preset("table2_e").level_anchor_sizes() == [(5, 10), (15, 20), (25, 35)]


def test_box_coder_hand_example_and_round_trip():
    coder = BoxCoder()
    anchor = torch.tensor([[10.0, 20.0, 30.0, 4.0]])
    box = torch.tensor([[12.0, 19.0, 30.0, 8.0]])
    t = coder.encode(box, anchor)
    assert t.tolist()[0] == pytest.approx([0.5, -0.25, 0.0, math.log(2.0)])
    assert torch.allclose(coder.decode(t, anchor), box)
    with pytest.raises(ValueError):
        coder.encode(torch.tensor([[0.0, 0, 0, 0]]), anchor)


def test_matcher_thresholds_and_best_anchor_rule():
    anchors = torch.tensor([[0.0, 0, 0, 4], [1.0, 0, 0, 4], [10.0, 10, 10, 4], [0.0, 0, 0, 8],
                            [20.5, 20, 20, 4]])
    gt = torch.tensor([[0.0, 0, 0, 4], [20.0, 20, 20, 3]])
    labels, matched = Matcher(0.5, 0.02, 0.1)(anchors, gt)
    # IoUs with gt0: 1, 48/80 = 0.6, 0, 64/512 = 0.125 (ignored); anchor 4 holds gt1 (IoU 27/64 < 0.5)
    assert labels.tolist() == [POSITIVE, POSITIVE, NEGATIVE, IGNORE, POSITIVE]
    assert matched[[0, 1, 4]].tolist() == [0, 0, 1]
    labels, _ = Matcher(0.5, 0.02, 0.5)(anchors, gt)
    assert labels[4] == IGNORE
    labels, _ = Matcher()(anchors, torch.zeros(0, 4))
    assert (labels == NEGATIVE).all()


def test_adaptive_focal_loss_hand_computed():
    logits = torch.tensor([0.0, 0.0, -2.0, 5.0])
    labels = torch.tensor([1, 0, 0, -1])
    T = 2.0
    loss = adaptive_focal_loss(logits, labels, T, alpha=0.8, gamma=5.0)
    p = [0.5, 1 / (1 + math.exp(2.0))]
    fl = sum(-(1 - 0.8) * q ** 5 * math.log(1 - q) for q in p)
    n_tn = 2  # one negative below 0.5, clamped to 2 so that log(N_TN) > 0
    expected = math.log(2.0) + T * math.log(n_tn) / n_tn * fl
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_adaptive_focal_loss_counts_true_negatives_and_gradients():
    torch.manual_seed(0)
    logits = torch.cat([torch.full((1000,), -4.0), torch.full((10,), 1.0)]).requires_grad_()
    labels = torch.zeros(1010, dtype=torch.long)
    loss = adaptive_focal_loss(logits, labels, T=1.0)
    p = torch.sigmoid(logits.detach())
    fl = (-(0.2) * p ** 5 * torch.log(1 - p)).sum()
    assert float(loss.detach()) == pytest.approx(math.log(1000) / 1000 * float(fl), rel=1e-5)
    loss.backward()
    # hard negatives (p = 0.73) get far more gradient than easy ones (p = 0.018)
    assert logits.grad[-1] > 1000 * logits.grad[0] > 0
    assert focal_T(0.0, 1, 4) == 1 and focal_T(0.5, 1, 4) == 2.5 and focal_T(7, 1, 4) == 4


def test_ohem_keeps_hardest_negatives():
    logits = torch.tensor([2.0, -5.0, -4.0, 3.0, -6.0])
    labels = torch.tensor([1, 0, 0, 0, 0])
    loss = ohem_loss(logits, labels, neg_ratio=1, min_neg=1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = bce(torch.tensor([2.0]), torch.ones(1)) + bce(torch.tensor([3.0]), torch.zeros(1))
    assert float(loss) == pytest.approx(float(expected))


def test_nms_3d_suppresses_overlaps_only():
    boxes = torch.tensor([[0.0, 0, 0, 10], [1.0, 0, 0, 10], [30.0, 0, 0, 10], [0.5, 0, 0, 2]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    keep = nms_3d(boxes, scores, 0.1)
    # box 3 (small, inside box 0) has IoU 8/1000 with it -> both kept; box 1 overlaps box 0
    assert keep.tolist() == [3, 0, 2]


def test_diameter_alignment_matches_fig3():
    strides = (4, 8, 16)
    d = torch.tensor([17.23, 5.0])
    ref = torch.tensor([2, 0])
    cells = roi_sizes_in_cells(d, ref, strides, diameter_alignment=True)
    # Fig. 3(a): proposal {60.56, 52.46, 57.56; 17.23} from "Resolution 16" -> 1.08 on every level
    assert cells[0].tolist() == pytest.approx([17.23 / 16] * 3)
    assert round(float(cells[0, 0]), 2) == 1.08
    # Fig. 3(b): bottom-up from "Resolution 4"
    assert cells[1].tolist() == pytest.approx([1.25] * 3)
    std = roi_sizes_in_cells(d, ref, strides, diameter_alignment=False)
    assert std[0].tolist() == pytest.approx([17.23 / 4, 17.23 / 8, 17.23 / 16])


def test_config_json_round_trip_and_presets():
    for name in ModelConfig.preset_names():
        cfg = ModelConfig.preset(name)
        again = ModelConfig.from_dict(json.loads(cfg.to_json()))
        assert again == cfg
    assert ModelConfig.preset("no_da").diameter_alignment is False
    assert ModelConfig.preset("table2_a").cls_loss == "ohem" and not ModelConfig.preset("table2_a").multi_scale
    with pytest.raises(ValueError):
        ModelConfig.preset("luna16", anchors="anchor9")
    with pytest.raises(ValueError):
        ModelConfig.from_dict({"bogus": 1})
