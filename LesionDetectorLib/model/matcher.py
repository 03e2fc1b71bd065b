"""Anchor-to-ground-truth assignment by cube IoU (section IV-B).

IoU >= ``iou_pos`` -> positive, IoU < ``iou_neg`` -> negative, in between -> ignored.
In addition, the best anchor of each ground truth is made positive when its IoU reaches
``best_anchor_floor``: with IoU+ = 0.5 a 3-5 mm nodule that sits between anchor centres
may otherwise have no positive anchor at all, and would only ever be seen as "ignored".
"""
from __future__ import annotations

from typing import Tuple

import torch

from .cube_iou import cube_iou

POSITIVE, NEGATIVE, IGNORE = 1, 0, -1


class Matcher:
    def __init__(self, iou_pos: float = 0.5, iou_neg: float = 0.02, best_anchor_floor: float = 0.1) -> None:
        self.iou_pos = iou_pos
        self.iou_neg = iou_neg
        self.best_anchor_floor = best_anchor_floor

    def __call__(self, anchors: torch.Tensor, gt: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``anchors [A, 4]``, ``gt [M, 4]`` -> (labels ``[A]`` in {1, 0, -1}, matched gt index ``[A]``).

        The matched index is meaningful only where the label is positive (0 elsewhere).
        """
        labels = torch.full((anchors.shape[0],), NEGATIVE, dtype=torch.long, device=anchors.device)
        matched = torch.zeros(anchors.shape[0], dtype=torch.long, device=anchors.device)
        if gt.numel() == 0:
            return labels, matched
        iou = cube_iou(anchors, gt)                      # [A, M]
        best_iou, matched = iou.max(dim=1)
        labels[best_iou >= self.iou_neg] = IGNORE
        labels[best_iou >= self.iou_pos] = POSITIVE
        gt_best_iou, gt_best_anchor = iou.max(dim=0)     # [M]
        ok = gt_best_iou >= self.best_anchor_floor
        labels[gt_best_anchor[ok]] = POSITIVE
        matched[gt_best_anchor[ok]] = torch.nonzero(ok).flatten()
        return labels, matched
