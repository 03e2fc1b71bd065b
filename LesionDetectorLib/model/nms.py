"""Greedy non-maximum suppression on cubes ``(z, y, x, d)``."""
from __future__ import annotations

import torch

from .cube_iou import cube_iou


def nms_3d(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices (into ``boxes [K, 4]``) of the kept cubes, by decreasing score.

    A cube is dropped when its IoU with a higher-scoring kept cube exceeds ``iou_threshold``
    (torchvision's ``nms`` semantics, in 3-D on cubes).
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True)
    iou = cube_iou(boxes[order], boxes[order]).cpu()
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]
