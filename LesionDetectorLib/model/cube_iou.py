"""Intersection over union of axis-aligned cubes ``(z, y, x, d)``.

A box is a cube centred at ``(z, y, x)`` with side ``d`` (all in input voxels, 1 mm at the
network input), the lesion convention of the paper (section III-B).
"""
from __future__ import annotations

import torch


def cube_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of cubes ``a [N, 4]`` and ``b [M, 4]`` -> ``[N, M]`` in [0, 1].

    Example: two cubes of side 2 shifted by 1 along z share half their volume: IoU = 4/12 = 1/3.
    """
    if a.numel() == 0 or b.numel() == 0:
        return a.new_zeros((a.shape[0], b.shape[0]))
    ra = a[:, None, 3] / 2
    rb = b[None, :, 3] / 2
    overlap = torch.ones_like(ra * rb)
    for axis in range(3):
        lo = torch.maximum(a[:, None, axis] - ra, b[None, :, axis] - rb)
        hi = torch.minimum(a[:, None, axis] + ra, b[None, :, axis] + rb)
        overlap = overlap * (hi - lo).clamp(min=0)
    union = a[:, None, 3] ** 3 + b[None, :, 3] ** 3 - overlap
    return overlap / union.clamp(min=1e-12)
