"""Anchor cubes on the pyramid levels.

Feature cell ``i`` of a level with stride ``s`` covers input voxels ``i*s .. i*s + s - 1``;
its anchors are centred at ``i*s + (s - 1) / 2`` (input voxel index; voxel centres are
integers). Anchor order is level-major, then ``z, y, x``, then anchor size, which is exactly
the order of the RPN head outputs flattened by ``rpn.flatten_head_outputs``.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch


class AnchorGenerator:
    def __init__(self, sizes_per_level: Sequence[Sequence[float]], strides: Sequence[int]) -> None:
        if len(sizes_per_level) != len(strides):
            raise ValueError("one anchor-size tuple per stride is needed")
        self.sizes_per_level = [tuple(float(s) for s in sizes) for sizes in sizes_per_level]
        self.strides = tuple(int(s) for s in strides)

    def num_anchors_per_level(self) -> List[int]:
        return [len(s) for s in self.sizes_per_level]

    def grid_anchors(self, feature_shapes: Sequence[Tuple[int, int, int]],
                     device: torch.device = torch.device("cpu")) -> Tuple[torch.Tensor, torch.Tensor]:
        """Anchors ``[A_total, 4]`` (z, y, x, d) and their level index ``[A_total]``."""
        all_anchors, all_levels = [], []
        for level, (shape, stride, sizes) in enumerate(zip(feature_shapes, self.strides, self.sizes_per_level)):
            if not sizes:
                continue
            axes = [torch.arange(n, device=device, dtype=torch.float32) * stride + (stride - 1) / 2
                    for n in shape]
            zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
            centres = torch.stack([zz, yy, xx], dim=-1).reshape(-1, 1, 3)
            d = torch.tensor(sizes, device=device, dtype=torch.float32)
            a = torch.cat([centres.expand(-1, len(sizes), 3),
                           d.view(1, -1, 1).expand(centres.shape[0], -1, 1)], dim=-1).reshape(-1, 4)
            all_anchors.append(a)
            all_levels.append(torch.full((a.shape[0],), level, dtype=torch.long, device=device))
        return torch.cat(all_anchors), torch.cat(all_levels)
