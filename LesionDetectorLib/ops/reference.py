"""Pure-PyTorch 3-D RoI Align: the test oracle and the fallback when no compiled op exists.

Same semantics as the compiled kernels (``csrc/ops/cpu/roi_align_3d_kernel.cpp``) but a
different formulation, so that agreement between the two means something:

Each bin averages trilinear samples on a tensor-product grid, torchvision's boundary rule
(a sample outside ``[-1, size]`` on any axis contributes zero, otherwise it is clamped to
the edge voxel) is a product of per-axis conditions, and trilinear weights are products of
1-D linear weights. The whole operation is therefore separable::

    out[k, c, p, q, r] = 1/count_k * sum_{z,y,x} Wz[k,p,z] Wy[k,q,y] Wx[k,r,x] input[b_k, c, z, y, x]

where ``Wz[k, p, z]`` sums the 1-D weights that bin ``p``'s samples put on voxel ``z``. The
weights come from the RoIs only (no gradient flows to ``rois``, as in torchvision); the three
contractions are plain matrix products, so autograd gives the input gradient for free.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["roi_align_3d_reference"]

# Upper bound on the elements of the largest intermediate of one contraction step; RoIs are
# processed in chunks below it so huge batches of RoIs do not exhaust memory.
_CHUNK_ELEMENTS = 1 << 24


def _axis_weights(
    start: Tensor, size: Tensor, pooled: int, extent: int, sampling_ratio: int
) -> tuple[Tensor, Tensor]:
    """1-D sampling weights along one axis.

    Args:
        start, size: ``[K]`` RoI start and length along the axis, in input voxels (already
            scaled, offset and, when not aligned, clamped to >= 1).
        pooled: number of output bins along the axis.
        extent: number of input voxels along the axis (> 0).
        sampling_ratio: samples per bin; <= 0 means ``ceil(size / pooled)`` per RoI.

    Returns:
        ``(weights [K, pooled, extent], grid [K] int64)``: ``weights[k, p, v]`` is the sum
        of the linear-interpolation weights that bin ``p``'s samples put on voxel ``v``;
        ``grid`` is the number of samples per bin along this axis.
    """
    n_rois = start.shape[0]
    bin_size = size / pooled
    if sampling_ratio > 0:
        grid = torch.full((n_rois,), sampling_ratio, dtype=torch.int64, device=start.device)
    else:
        grid = torch.ceil(size / pooled).clamp(min=0).to(torch.int64)
    max_grid = int(grid.max().item()) if n_rois > 0 else 0
    weights = start.new_zeros((n_rois, pooled, extent))
    if max_grid == 0:
        return weights, grid

    p = torch.arange(pooled, dtype=start.dtype, device=start.device).view(1, pooled, 1)
    i = torch.arange(max_grid, dtype=start.dtype, device=start.device).view(1, 1, max_grid)
    grid_f = grid.to(start.dtype).clamp(min=1).view(n_rois, 1, 1)
    # Same expression (and evaluation order) as the kernels.
    pos = start.view(n_rois, 1, 1) + p * bin_size.view(n_rois, 1, 1) + (i + 0.5) * bin_size.view(n_rois, 1, 1) / grid_f
    valid = (pos >= -1) & (pos <= extent) & (i < grid.view(n_rois, 1, 1))
    pos = pos.clamp(min=0)
    lo = pos.floor().to(torch.int64)
    at_edge = lo >= extent - 1
    lo = torch.where(at_edge, torch.full_like(lo, extent - 1), lo)
    hi = torch.where(at_edge, lo, lo + 1)
    pos = torch.where(at_edge, lo.to(pos.dtype), pos)
    frac = pos - lo.to(pos.dtype)
    w_hi = torch.where(valid, frac, torch.zeros_like(frac))
    w_lo = torch.where(valid, 1 - frac, torch.zeros_like(frac))
    # Invalid samples carry zero weight; their (clamped) indices stay in range for scatter.
    lo = lo.clamp(0, extent - 1)
    hi = hi.clamp(0, extent - 1)
    weights.scatter_add_(2, lo, w_lo)
    weights.scatter_add_(2, hi, w_hi)
    return weights, grid


def roi_align_3d_reference(
    input: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> Tensor:
    """3-D RoI Align in plain PyTorch (differentiable with respect to ``input``).

    Args:
        input: ``[N, C, D, H, W]`` floating point features, indexed ``[z, y, x]``.
        rois: ``[K, 7]`` = ``(batch_index, z1, y1, x1, z2, y2, x2)`` in input-image voxels
            (multiplied by ``spatial_scale`` to reach feature voxels).
        output_size: ``(d, h, w)`` bins per RoI, or one int for a cube.
        spatial_scale: feature voxels per input-image voxel (1 / stride).
        sampling_ratio: samples per bin and axis; <= 0: adaptive ``ceil(roi_size / bins)``.
        aligned: shift boxes by -0.5 voxel so voxel centres sit at integer coordinates.

    Returns:
        ``[K, C, d, h, w]`` in ``input.dtype``. Arguments are assumed valid (the public
        wrapper ``LesionDetectorLib.ops.roi_align_3d`` checks them).
    """
    if isinstance(output_size, int):
        output_size = (output_size,) * 3
    pooled_d, pooled_h, pooled_w = (int(v) for v in output_size)
    _, channels, depth, height, width = input.shape
    n_rois = rois.shape[0]
    out_dtype = input.dtype
    # Reduced precision inputs are computed in float32, like the kernels' opmath.
    compute_dtype = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
    feats = input.to(compute_dtype)

    with torch.no_grad():
        boxes = rois.detach().to(compute_dtype)
        offset = 0.5 if aligned else 0.0
        starts = boxes[:, 1:4] * spatial_scale - offset
        sizes = boxes[:, 4:7] * spatial_scale - offset - starts
        if not aligned:
            sizes = sizes.clamp(min=1.0)
        wz, gz = _axis_weights(starts[:, 0], sizes[:, 0], pooled_d, depth, sampling_ratio)
        wy, gy = _axis_weights(starts[:, 1], sizes[:, 1], pooled_h, height, sampling_ratio)
        wx, gx = _axis_weights(starts[:, 2], sizes[:, 2], pooled_w, width, sampling_ratio)
        inv_count = 1.0 / (gz * gy * gx).clamp(min=1).to(compute_dtype)
        batch_index = boxes[:, 0].to(torch.int64)

    if n_rois == 0:
        empty = feats.new_zeros((0, channels, pooled_d, pooled_h, pooled_w))
        if feats.requires_grad:
            # A zero-size result that still belongs to the graph, so backward() through it works.
            empty = empty + feats.sum() * 0
        return empty.to(out_dtype)

    pieces: list[Tensor] = []
    order: list[Tensor] = []
    per_roi = max(channels * depth * height * max(pooled_w, 1), channels * depth * pooled_w * pooled_h, 1)
    chunk = max(1, _CHUNK_ELEMENTS // per_roi)
    # unbind, not feats[b]: each select's backward would allocate a full-size input gradient.
    images = feats.unbind(0)
    for b in torch.unique(batch_index).tolist():
        idx_all = torch.nonzero(batch_index == b).flatten()
        for lo in range(0, idx_all.numel(), chunk):
            idx = idx_all[lo:lo + chunk]
            volume = images[b]  # [C, D, H, W]: a view, shared by all RoIs of this image
            t = torch.einsum("cdhx,krx->kcdhr", volume, wx[idx])
            t = torch.einsum("kcdhr,kqh->kcdqr", t, wy[idx])
            t = torch.einsum("kcdqr,kpd->kcpqr", t, wz[idx])
            pieces.append(t * inv_count[idx].view(-1, 1, 1, 1, 1))
            order.append(idx)
    stacked = torch.cat(pieces, dim=0)
    inverse = torch.empty_like(batch_index)
    inverse[torch.cat(order)] = torch.arange(n_rois, device=batch_index.device)
    return stacked.index_select(0, inverse).to(out_dtype)
