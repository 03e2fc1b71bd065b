"""``roi_align_3d``: typed wrapper, argument checks, fake (meta) and autograd registration.

The operator's schema and CPU/CUDA kernels live in ``LesionDetectorLib/csrc/ops``; this
module adds what PyTorch needs from Python (``register_fake`` so ``torch.compile`` can trace
it, ``register_autograd`` so gradients flow to ``input``) and falls back to the pure-PyTorch
reference (``reference.py``) when no compiled kernel exists for the input's device.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor, nn

from . import _loader
from .reference import roi_align_3d_reference

__all__ = ["roi_align_3d", "RoIAlign3d"]

_OutputSize = Union[int, Sequence[int]]


def _triple(output_size: _OutputSize) -> tuple[int, int, int]:
    if isinstance(output_size, int):
        size = (output_size,) * 3
    else:
        size = tuple(output_size)
    if len(size) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size):
        raise ValueError(f"roi_align_3d: output_size must be an int or 3 ints (d, h, w), got {output_size!r}")
    if min(size) <= 0:
        raise ValueError(f"roi_align_3d: output_size must be positive, got {size}")
    return size  # type: ignore[return-value]


def _check_args(input: Tensor, rois: Tensor) -> None:
    """Shape/dtype/device checks with clear messages (the C++ kernels repeat them)."""
    if not isinstance(input, Tensor) or not isinstance(rois, Tensor):
        raise TypeError("roi_align_3d: input and rois must be tensors")
    if input.dim() != 5:
        raise ValueError(f"roi_align_3d: input must have shape [N, C, D, H, W], got {tuple(input.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 7:
        raise ValueError(
            "roi_align_3d: rois must have shape [K, 7] = (batch_index, z1, y1, x1, z2, y2, x2), "
            f"got {tuple(rois.shape)}"
        )
    if not input.is_floating_point():
        raise ValueError(f"roi_align_3d: input must be floating point, got {input.dtype}")
    if input.dtype != rois.dtype:
        raise ValueError(f"roi_align_3d: input and rois must have the same dtype, got {input.dtype} and {rois.dtype}")
    if input.device != rois.device:
        raise ValueError(
            f"roi_align_3d: input and rois must be on the same device, got {input.device} and {rois.device}"
        )
    if min(input.shape[2:]) <= 0:
        raise ValueError(f"roi_align_3d: input spatial size must be positive, got {tuple(input.shape)}")
    if rois.shape[0] > 0 and not torch.compiler.is_compiling():
        # Data-dependent (a device sync on CUDA), so skipped while tracing; the CPU kernel
        # checks again and the CUDA kernel writes zeros for such RoIs instead of reading
        # out of bounds.
        batch = rois[:, 0]
        lo, hi = float(batch.min()), float(batch.max())
        if not (lo >= 0 and hi < input.shape[0]):
            raise ValueError(
                f"roi_align_3d: rois[:, 0] must be batch indices in [0, {input.shape[0] - 1}], "
                f"got values in [{lo}, {hi}]"
            )


def roi_align_3d(
    input: Tensor,
    rois: Tensor,
    output_size: _OutputSize,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> Tensor:
    """3-D RoI Align (torchvision's ``roi_align`` extended to volumes).

    Each RoI is divided into ``d x h x w`` bins; every bin averages trilinearly
    interpolated samples (8 neighbours each) on a regular grid inside it. A sample that lies
    outside ``[-1, size]`` on any axis contributes zero; one inside that range but outside
    the volume is clamped to the edge voxel.

    Args:
        input: ``[N, C, D, H, W]`` features, indexed ``[z, y, x]``.
        rois: ``[K, 7]`` = ``(batch_index, z1, y1, x1, z2, y2, x2)``, corners in input-image
            voxels, same dtype and device as ``input``. ``batch_index`` selects the image.
        output_size: ``(d, h, w)`` or one int for a cube.
        spatial_scale: multiplies the box corners to reach feature voxels (1 / stride).
        sampling_ratio: samples per bin along each axis; ``<= 0`` takes
            ``ceil(roi_size / bins)`` per RoI and axis (adaptive).
        aligned: shift boxes by -0.5 voxel so a box ``[0, 4)`` covers voxels 0..3 with
            centres at integer coordinates. ``False`` reproduces the legacy behaviour
            (no shift, boxes smaller than one voxel widened to one).

    Returns:
        ``[K, C, d, h, w]``, differentiable with respect to ``input`` (not ``rois``).

    Example::

        feats = torch.randn(1, 32, 32, 32, 32)               # stride-4 features of a 128^3 crop
        rois = torch.tensor([[0., 40, 40, 40, 60, 60, 60]])  # one box in crop voxels
        out = roi_align_3d(feats, rois, (2, 2, 2), spatial_scale=0.25)  # [1, 32, 2, 2, 2]
    """
    pooled_d, pooled_h, pooled_w = _triple(output_size)
    if input.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(input.device.type):
        # The autocast path computes in float32 (as torchvision's autocast kernels do): box
        # corners in half precision would be off by up to a quarter of a feature cell.
        with torch.autocast(input.device.type, enabled=False):
            out = roi_align_3d(input.float(), rois.float(), output_size, spatial_scale, sampling_ratio, aligned)
        return out.to(input.dtype)
    _check_args(input, rois)
    if _loader.use_compiled(input.device.type):
        return torch.ops.lesion_detector.roi_align_3d(
            input, rois, float(spatial_scale), pooled_d, pooled_h, pooled_w, int(sampling_ratio), bool(aligned)
        )
    return roi_align_3d_reference(
        input, rois, (pooled_d, pooled_h, pooled_w), float(spatial_scale), int(sampling_ratio), bool(aligned)
    )


class RoIAlign3d(nn.Module):
    """Module form of :func:`roi_align_3d` (no parameters)."""

    def __init__(
        self, output_size: _OutputSize, spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = True
    ) -> None:
        super().__init__()
        self.output_size = _triple(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        return roi_align_3d(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


# --- registration of the Python parts of the compiled operator -----------------------------

def _fake_roi_align_3d(input, rois, spatial_scale, pooled_depth, pooled_height, pooled_width, sampling_ratio, aligned):
    torch._check(input.dim() == 5, lambda: f"roi_align_3d: input must be 5-D, got {input.dim()}-D")
    torch._check(rois.dim() == 2, lambda: f"roi_align_3d: rois must be 2-D, got {rois.dim()}-D")
    torch._check(rois.shape[1] == 7, lambda: f"roi_align_3d: rois must be [K, 7], got {tuple(rois.shape)}")
    torch._check(input.dtype == rois.dtype, lambda: "roi_align_3d: input and rois dtypes differ")
    torch._check(input.device == rois.device, lambda: "roi_align_3d: input and rois devices differ")
    torch._check(pooled_depth > 0 and pooled_height > 0 and pooled_width > 0,
                 lambda: "roi_align_3d: output size must be positive")
    return input.new_empty((rois.shape[0], input.shape[1], pooled_depth, pooled_height, pooled_width))


def _fake_roi_align_3d_backward(
    grad, rois, spatial_scale, pooled_depth, pooled_height, pooled_width,
    batch_size, channels, depth, height, width, sampling_ratio, aligned,
):
    torch._check(grad.dim() == 5, lambda: f"roi_align_3d backward: grad must be 5-D, got {grad.dim()}-D")
    torch._check(rois.dim() == 2 and rois.shape[1] == 7, lambda: "roi_align_3d backward: rois must be [K, 7]")
    torch._check(grad.shape[0] == rois.shape[0], lambda: "roi_align_3d backward: grad and rois disagree on K")
    return grad.new_empty((batch_size, channels, depth, height, width))


def _setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_depth, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)  # the input's values are not needed: the op is linear in it
    ctx.input_shape = tuple(input.shape)
    ctx.params = (spatial_scale, pooled_depth, pooled_height, pooled_width, sampling_ratio, aligned)


def _backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    grad_input = None
    if ctx.needs_input_grad[0]:
        spatial_scale, pooled_depth, pooled_height, pooled_width, sampling_ratio, aligned = ctx.params
        grad_input = torch.ops.lesion_detector._roi_align_3d_backward(
            grad, rois, spatial_scale, pooled_depth, pooled_height, pooled_width,
            *ctx.input_shape, sampling_ratio, aligned,
        )
    return grad_input, None, None, None, None, None, None, None


def _setup_context_backward(ctx, inputs, output):
    (grad, rois, spatial_scale, pooled_depth, pooled_height, pooled_width,
     _batch, _channels, _depth, _height, _width, sampling_ratio, aligned) = inputs
    ctx.save_for_backward(rois)
    ctx.params = (spatial_scale, pooled_depth, pooled_height, pooled_width, sampling_ratio, aligned)


def _backward_backward(ctx, grad_grad_input):
    # The backward op is the adjoint of the (linear) forward, so its own gradient with
    # respect to `grad` is the forward applied to the incoming gradient.
    (rois,) = ctx.saved_tensors
    grad_grad = None
    if ctx.needs_input_grad[0]:
        grad_grad = torch.ops.lesion_detector.roi_align_3d(grad_grad_input, rois, *ctx.params)
    return (grad_grad,) + (None,) * 12


_registered = False


def _register_python_parts() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    torch.library.register_fake("lesion_detector::roi_align_3d", _fake_roi_align_3d)
    torch.library.register_fake("lesion_detector::_roi_align_3d_backward", _fake_roi_align_3d_backward)
    torch.library.register_autograd("lesion_detector::roi_align_3d", _backward, setup_context=_setup_context)
    torch.library.register_autograd(
        "lesion_detector::_roi_align_3d_backward", _backward_backward, setup_context=_setup_context_backward
    )


_loader.on_loaded(_register_python_parts)
_loader.load()
