"""Encode / decode cube regression targets relative to anchors (DeepLung / Faster R-CNN).

For a box ``(z, y, x, d)`` and an anchor ``(za, ya, xa, da)``::

    t = ((z - za) / da, (y - ya) / da, (x - xa) / da, log(d / da)) / weights
"""
from __future__ import annotations

import math
from typing import Sequence

import torch


class BoxCoder:
    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 max_log_scale: float = math.log(1000.0 / 16)) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.max_log_scale = max_log_scale

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """``boxes [N, 4]``, ``anchors [N, 4]`` (matched pairs) -> deltas ``[N, 4]``."""
        if (boxes[:, 3] <= 0).any() or not torch.isfinite(boxes).all():
            raise ValueError("boxes to encode must be finite with positive diameters")
        w = boxes.new_tensor(self.weights)
        da = anchors[:, 3:4]
        t = torch.cat([(boxes[:, :3] - anchors[:, :3]) / da, torch.log(boxes[:, 3:4] / da)], dim=1)
        return t * w

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """``deltas [N, 4]`` relative to ``anchors [N, 4]`` -> boxes ``[N, 4]``."""
        w = deltas.new_tensor(self.weights)
        t = deltas / w
        da = anchors[:, 3:4]
        centre = anchors[:, :3] + t[:, :3] * da
        d = da * torch.exp(t[:, 3:4].clamp(max=self.max_log_scale))
        return torch.cat([centre, d], dim=1)
