"""Region Proposal Network: one independent head per pyramid level (section III-B).

Head (Table I "Detector"): Bottle Neck x 2, then a 1x1x1 conv giving, for each of the level's
``A`` anchors, one objectness logit and four regression deltas. Heads are not shared.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .anchors import AnchorGenerator
from .backbone import Bottleneck
from .box_coder import BoxCoder
from .losses import adaptive_focal_loss, box_regression_loss, focal_T, ohem_loss
from .matcher import POSITIVE, Matcher
from .nms import nms_3d


class RPNHead(nn.Module):
    """``[B, C, d, h, w]`` -> (logits ``[B, d*h*w*A]``, deltas ``[B, d*h*w*A, 4]``)."""

    def __init__(self, channels: int, num_anchors: int) -> None:
        super().__init__()
        self.num_anchors = num_anchors
        self.body = nn.Sequential(Bottleneck(channels), Bottleneck(channels),
                                  nn.BatchNorm3d(channels), nn.ReLU(inplace=True))
        self.out = nn.Conv3d(channels, num_anchors * 5, 1)
        nn.init.normal_(self.out.weight, std=0.01)
        nn.init.zeros_(self.out.bias)
        # Start with p = 0.01 everywhere, so the ~10^5 negatives do not swamp the first steps.
        with torch.no_grad():
            self.out.bias.view(num_anchors, 5)[:, 0].fill_(-math.log((1 - 0.01) / 0.01))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        y = self.out(self.body(x))                                   # [B, A*5, d, h, w]
        y = y.view(b, self.num_anchors, 5, *y.shape[2:]).permute(0, 3, 4, 5, 1, 2)
        y = y.reshape(b, -1, 5)                                      # z, y, x, anchor order
        return y[..., 0], y[..., 1:]


class RegionProposalNetwork(nn.Module):
    def __init__(self, channels: int, anchor_generator: AnchorGenerator, matcher: Matcher,
                 box_coder: BoxCoder, cls_loss: str = "focal", focal_alpha: float = 0.8,
                 focal_gamma: float = 5.0, focal_t: Tuple[float, float] = (1.0, 4.0),
                 ohem: Tuple[int, int] = (3, 16), smooth_l1_beta: float = 1.0,
                 pre_nms_top_n: Dict[str, int] = None, post_nms_top_n: Dict[str, int] = None,
                 nms_iou: float = 0.1, min_score: float = 0.01) -> None:
        super().__init__()
        self.anchor_generator = anchor_generator
        self.matcher = matcher
        self.box_coder = box_coder
        self.heads = nn.ModuleList(
            [RPNHead(channels, n) if n else nn.Identity() for n in anchor_generator.num_anchors_per_level()])
        self.cls_loss = cls_loss
        self.focal_alpha, self.focal_gamma, self.focal_t = focal_alpha, focal_gamma, focal_t
        self.ohem = ohem
        self.smooth_l1_beta = smooth_l1_beta
        self.pre_nms_top_n = pre_nms_top_n or {"training": 600, "testing": 1000}
        self.post_nms_top_n = post_nms_top_n or {"training": 24, "testing": 64}
        self.nms_iou = nms_iou
        self.min_score = min_score
        # Test-time caps are per reference crop; the detection engine scales them for tiles of
        # another volume (see AggregatedFasterRCNN.test_budget).
        self.test_budget = 1.0
        self._anchor_cache: Dict[Tuple, Tuple[torch.Tensor, torch.Tensor]] = {}

    def budgeted(self, cap: int) -> int:
        """A per-crop cap of evaluation at this crop's ``test_budget`` (unchanged in training)."""
        if self.training or self.test_budget == 1.0:
            return cap
        return max(1, int(math.ceil(cap * self.test_budget)))

    def anchors_for(self, features: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Anchors ``[A, 4]`` and their pyramid level ``[A]`` for these feature maps (cached)."""
        shapes = tuple(tuple(f.shape[2:]) for f in features)
        key = (shapes, features[0].device)
        if key not in self._anchor_cache:
            self._anchor_cache = {key: self.anchor_generator.grid_anchors(shapes, features[0].device)}
        return self._anchor_cache[key]

    def head_outputs(self, features: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[B, A]`` and deltas ``[B, A, 4]`` over all levels, in anchor order."""
        logits, deltas = [], []
        for head, f in zip(self.heads, features):
            if isinstance(head, RPNHead):
                lo, de = head(f)
                logits.append(lo)
                deltas.append(de)
        return torch.cat(logits, 1), torch.cat(deltas, 1)

    def loss(self, logits: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor,
             targets: Sequence[torch.Tensor], progress: float) -> Dict[str, torch.Tensor]:
        """Classification over all anchors of the batch (eq. 3 pools the batch); regression on positives.

        Computed in float32 even under autocast: the adaptive focal loss sums ~10^5 terms whose
        weights (T log N / N, (1 - p)^5) underflow or lose their order in half precision."""
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self._loss(logits.float(), deltas.float(), anchors.float(), targets, progress)

    def _loss(self, logits: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor,
              targets: Sequence[torch.Tensor], progress: float) -> Dict[str, torch.Tensor]:
        labels, reg_pred, reg_target = [], [], []
        for i, gt in enumerate(targets):
            lab, idx = self.matcher(anchors, gt.to(anchors))
            labels.append(lab)
            pos = lab == POSITIVE
            if pos.any():
                reg_pred.append(deltas[i][pos])
                reg_target.append(self.box_coder.encode(gt.to(anchors)[idx[pos]], anchors[pos]))
        labels = torch.cat(labels)
        flat_logits = logits.reshape(-1)
        if self.cls_loss == "focal":
            t = focal_T(progress, *self.focal_t)
            cls = adaptive_focal_loss(flat_logits, labels, t, self.focal_alpha, self.focal_gamma)
        else:
            cls = ohem_loss(flat_logits, labels, *self.ohem)
        if reg_pred:
            reg = box_regression_loss(torch.cat(reg_pred), torch.cat(reg_target), self.smooth_l1_beta)
        else:
            reg = deltas.sum() * 0.0
        return {"rpn_cls": cls, "rpn_reg": reg}

    @torch.no_grad()
    def proposals(self, logits: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor,
                  levels: torch.Tensor) -> List[Dict[str, torch.Tensor]]:
        """Per image: ``boxes [P, 4]``, ``scores [P]`` (RPN probability), ``levels [P]``, after NMS."""
        mode = "training" if self.training else "testing"
        pre_n, post_n = self.pre_nms_top_n[mode], self.post_nms_top_n[mode]
        pre_n, post_n = self.budgeted(pre_n), self.budgeted(post_n)
        out = []
        for lo, de in zip(logits, deltas):
            prob = torch.sigmoid(lo.float())
            k = min(pre_n, prob.numel())
            top_p, top_i = prob.topk(k)
            keep = top_p >= self.min_score
            top_p, top_i = top_p[keep], top_i[keep]
            boxes = self.box_coder.decode(de[top_i].float(), anchors[top_i])
            boxes[:, 3] = boxes[:, 3].clamp(min=1.0)
            kept = nms_3d(boxes, top_p, self.nms_iou)[:post_n]
            out.append({"boxes": boxes[kept], "scores": top_p[kept], "levels": levels[top_i][kept]})
        return out

    def forward(self, features: Sequence[torch.Tensor], targets: Optional[Sequence[torch.Tensor]] = None,
                progress: float = 0.0, with_proposals: bool = True):
        """-> (proposals per image (``None`` unless ``with_proposals``), loss dict (empty in eval))."""
        anchors, levels = self.anchors_for(features)
        logits, deltas = self.head_outputs(features)
        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            losses = self.loss(logits, deltas, anchors, targets, progress)
        props = self.proposals(logits.detach(), deltas.detach(), anchors, levels) if with_proposals else None
        return props, losses
