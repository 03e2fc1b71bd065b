"""3D Aggregated Faster R-CNN (Fig. 2): wires backbone, RPN and FPRN (torchvision style).

Steps of ``forward``: (1) validate, (2) backbone -> pyramid ``[P4, P8, P16]``, (3) RPN heads ->
losses (train) and NMS'd proposals, (4) FPRN on sampled proposals (train) or on all proposals
(eval), (5) losses dict or per-image detections.

Train mode: ``model(images [B, 1, D, H, W], targets: list of [M_i, 4] (z, y, x, d) voxel tensors)``
returns ``{"rpn_cls", "rpn_reg"[, "fprn_cls"]}`` (scalars). Eval mode: ``model(images)`` returns
one dict per image with ``boxes [K, 4]`` (z, y, x, d in input voxels), ``scores`` (mean of the RPN
and FPRN probabilities, section III-C), ``scores_rpn``, ``scores_fprn``; sorted by ``scores``,
at most ``detections_per_crop`` with ``scores >= score_thresh``. Without the FPRN branch
``scores`` is the RPN probability and ``scores_fprn`` repeats it.

``set_stage("rpn" | "joint" | "fprn")`` selects which losses train: the paper trains the RPN
first, then adds the FPRN (joint, or alternating between the branches). ``set_progress(f)``
(f in [0, 1]) drives the T schedule of the adaptive focal loss.
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .anchors import AnchorGenerator
from .backbone import DenseUNetBackbone
from .box_coder import BoxCoder
from .config import ModelConfig
from .fprn import AggregatedFPRN
from .matcher import Matcher

STAGES = ("rpn", "joint", "fprn")


class AggregatedFasterRCNN(nn.Module):
    def __init__(self, config: ModelConfig, backbone: Optional[nn.Module] = None,
                 rpn: Optional[nn.Module] = None, fprn: Optional[nn.Module] = None) -> None:
        super().__init__()
        from .rpn import RegionProposalNetwork

        self.config = config
        c = config
        self.backbone = backbone or DenseUNetBackbone(c.in_channels, c.stem_channels, c.pyramid_channels,
                                                      c.growth_rate, c.bottleneck_factor)
        ch = self.backbone.out_channels
        self.level_sizes = c.level_anchor_sizes()
        self.rpn = rpn or RegionProposalNetwork(
            ch, AnchorGenerator(self.level_sizes, c.strides),
            Matcher(c.iou_pos, c.iou_neg, c.best_anchor_floor), BoxCoder(),
            cls_loss=c.cls_loss, focal_alpha=c.focal_alpha, focal_gamma=c.focal_gamma,
            focal_t=(c.focal_t_start, c.focal_t_end), ohem=(c.ohem_neg_ratio, c.ohem_min_neg),
            smooth_l1_beta=c.smooth_l1_beta,
            pre_nms_top_n={"training": c.pre_nms_top_n_train, "testing": c.pre_nms_top_n_test},
            post_nms_top_n={"training": c.post_nms_top_n_train, "testing": c.post_nms_top_n_test},
            nms_iou=c.proposal_nms_iou, min_score=c.proposal_min_score)
        if fprn is None and c.fprn:
            fprn = AggregatedFPRN(ch, c.strides, c.diameter_alignment, c.local_magnification, c.roi_margin,
                                  c.crop_samples, c.roi_output, c.fc_hidden)
        self.fprn = fprn
        self.stage = "joint" if self.fprn is not None else "rpn"
        self.progress = 0.0

    # ------------------------------------------------------------------ control
    def set_stage(self, stage: str) -> None:
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}")
        if stage != "rpn" and self.fprn is None:
            raise ValueError("this model has no FPRN branch (config.fprn is False)")
        self.stage = stage

    @contextlib.contextmanager
    def test_budget(self, scale: float):
        """Within the block, the per-crop caps of evaluation (the RPN's pre- and post-NMS top-n
        and ``detections_per_crop``) are ``scale`` times the config's. The caps are tuned for the
        reference crop; a tile of ``scale`` times its volume keeps as many candidates per cubic
        centimetre instead of ranking a larger volume for the same few."""
        scale = float(scale)
        if not scale > 0:
            raise ValueError(f"test budget scale must be > 0, got {scale}")
        before = self.rpn.test_budget
        self.rpn.test_budget = scale
        try:
            yield
        finally:
            self.rpn.test_budget = before

    def set_progress(self, fraction: float) -> None:
        self.progress = float(min(max(fraction, 0.0), 1.0))

    # -------------------------------------------------------------- sampling
    def reference_level(self, diameters: torch.Tensor) -> torch.Tensor:
        """Level whose anchors best fit each diameter (for GT boxes added as proposals)."""
        centres = [math.log(math.sqrt(min(s) * max(s))) if s else float("inf") for s in self.level_sizes]
        c = diameters.new_tensor(centres)
        return (torch.log(diameters.clamp(min=1e-3)).unsqueeze(1) - c).abs().argmin(dim=1)

    def sample_fprn_rois(self, proposals: List[Dict[str, torch.Tensor]], targets: Sequence[torch.Tensor]):
        """Training RoIs: RPN proposals + ground truths + jittered ground truths, labelled by the
        LUNA16 hit rule (centre inside a GT sphere), sampled to ``fprn_batch_per_image`` with
        at most ``fprn_pos_fraction`` positives. -> (boxes [K,4], levels [K], batch [K], labels [K])."""
        c = self.config
        out_b, out_l, out_i, out_y = [], [], [], []
        for i, (prop, gt) in enumerate(zip(proposals, targets)):
            boxes, levels = prop["boxes"], prop["levels"]
            gt = gt.to(boxes)
            if gt.numel():
                jitter = gt.repeat(2, 1)
                jitter[:, :3] += (torch.rand_like(jitter[:, :3]) - 0.5) * 0.5 * jitter[:, 3:4]
                jitter[:, 3] *= torch.exp((torch.rand_like(jitter[:, 3]) - 0.5) * 0.45)
                extra = torch.cat([gt, jitter])
                boxes = torch.cat([boxes, extra])
                levels = torch.cat([levels, self.reference_level(extra[:, 3])])
                dist = torch.cdist(boxes[:, :3], gt[:, :3])
                labels = (dist < gt[:, 3].unsqueeze(0) / 2).any(dim=1).float()
            else:
                labels = torch.zeros(boxes.shape[0], device=boxes.device)
            pos = torch.nonzero(labels > 0).flatten()
            neg = torch.nonzero(labels == 0).flatten()
            n_pos = min(len(pos), int(c.fprn_batch_per_image * c.fprn_pos_fraction))
            n_neg = min(len(neg), c.fprn_batch_per_image - n_pos)
            pick = torch.cat([pos[torch.randperm(len(pos), device=pos.device)[:n_pos]],
                              neg[torch.randperm(len(neg), device=neg.device)[:n_neg]]])
            out_b.append(boxes[pick])
            out_l.append(levels[pick])
            out_i.append(torch.full((len(pick),), i, dtype=torch.long, device=boxes.device))
            out_y.append(labels[pick])
        return torch.cat(out_b), torch.cat(out_l), torch.cat(out_i), torch.cat(out_y)

    # --------------------------------------------------------------- forward
    def forward(self, images: torch.Tensor, targets: Optional[Sequence[torch.Tensor]] = None):
        if images.dim() != 5 or images.shape[1] != self.config.in_channels:
            raise ValueError(f"images must be [B, {self.config.in_channels}, D, H, W], got {tuple(images.shape)}")
        if self.training and (targets is None or len(targets) != images.shape[0]):
            raise ValueError("training needs one [M, 4] target tensor per image")
        if targets is not None:
            targets = [t.reshape(-1, 4).to(images.device, torch.float32) for t in targets]
            if self.config.max_train_diameter > 0:
                targets = [t[t[:, 3] < self.config.max_train_diameter] for t in targets]
        features = self.backbone(images)
        need_proposals = not self.training or (self.fprn is not None and self.stage != "rpn")
        proposals, rpn_losses = self.rpn(features, targets, self.progress, need_proposals)
        if self.training:
            return self._training_losses(features, proposals, rpn_losses, targets)
        return self._detections(features, proposals)

    def _training_losses(self, features, proposals, rpn_losses, targets) -> Dict[str, torch.Tensor]:
        losses: Dict[str, torch.Tensor] = {}
        if self.stage in ("rpn", "joint"):
            losses.update(rpn_losses)
        if self.fprn is not None and self.stage in ("joint", "fprn"):
            boxes, levels, batch, labels = self.sample_fprn_rois(proposals, targets)
            if boxes.shape[0]:
                logits = self.fprn(features, boxes, levels, batch)
                losses["fprn_cls"] = F.binary_cross_entropy_with_logits(logits.float(), labels)
            else:
                losses["fprn_cls"] = sum(f.sum() for f in features) * 0.0
        return losses

    def _detections(self, features, proposals) -> List[Dict[str, torch.Tensor]]:
        c = self.config
        if self.fprn is not None:
            boxes = torch.cat([p["boxes"] for p in proposals])
            levels = torch.cat([p["levels"] for p in proposals])
            batch = torch.cat([torch.full((len(p["boxes"]),), i, dtype=torch.long, device=boxes.device)
                               for i, p in enumerate(proposals)])
            fprn_prob = torch.sigmoid(self.fprn(features, boxes, levels, batch).float())
            fprn_per_image = fprn_prob.split([len(p["boxes"]) for p in proposals])
        else:
            fprn_per_image = [p["scores"] for p in proposals]
        results = []
        for p, s_fprn in zip(proposals, fprn_per_image):
            score = (p["scores"] + s_fprn) / 2 if self.fprn is not None else p["scores"]
            keep = torch.nonzero(score >= c.score_thresh).flatten()
            keep = keep[torch.argsort(score[keep], descending=True)][: self.rpn.budgeted(c.detections_per_crop)]
            results.append({"boxes": p["boxes"][keep], "scores": score[keep],
                            "scores_rpn": p["scores"][keep], "scores_fprn": s_fprn[keep]})
        return results


def build_model(config: ModelConfig) -> AggregatedFasterRCNN:
    """The model for ``config`` (freshly initialised)."""
    return AggregatedFasterRCNN(config)
