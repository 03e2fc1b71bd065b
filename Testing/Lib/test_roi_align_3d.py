"""Tests of LesionDetectorLib.ops.roi_align_3d: compiled kernels, reference, autograd, errors.

Oracles, from most to least independent: a hand-computed value, a naive-loop 2-D RoI Align
(torchvision's algorithm, written here) applied to inputs constant along z, and the
separable pure-PyTorch reference. Tests of the public function run once per backend
("compiled" is skipped when the op is not built, so the suite passes either way).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from LesionDetectorLib.ops import RoIAlign3d, backend_info, roi_align_3d, roi_align_3d_reference, set_force_reference
from LesionDetectorLib.ops import _loader

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Largest absolute difference accepted between two implementations, per dtype.
ATOL = {torch.float64: 1e-10, torch.float32: 2e-5}


def _compiled(device: str) -> bool:
    return _loader._state.source is not None and device in _loader._state.devices


def _compiled_op(*args):
    return torch.ops.lesion_detector.roi_align_3d(*args)


def _skip_without_compiled(device: str) -> None:
    if not _compiled(device):
        pytest.skip(f"compiled op has no {device} kernel: {backend_info(device)}")


@pytest.fixture(params=["compiled", "reference"])
def backend(request):
    """Runs a test with the compiled op and again with the forced reference."""
    previous = (_loader._state.force_reference, _loader._state.force_reason)
    if request.param == "compiled":
        if previous[0]:
            pytest.skip("reference forced by the environment")
        _skip_without_compiled("cpu")
    set_force_reference(request.param == "reference", "test fixture")
    yield request.param
    set_force_reference(*previous)


def _random_rois(n_rois: int, batch: int, extent: tuple, gen: torch.Generator, dtype) -> torch.Tensor:
    """Boxes of every kind: inside, partly and wholly outside, tiny (even empty), huge."""
    d, h, w = extent
    size = torch.tensor([d, h, w], dtype=torch.float64)
    kind = torch.arange(n_rois) % 5
    lo = torch.rand(n_rois, 3, generator=gen, dtype=torch.float64) * size
    length = torch.rand(n_rois, 3, generator=gen, dtype=torch.float64) * size / 2 + 0.5
    length[kind == 1] = torch.rand(int((kind == 1).sum()), 3, generator=gen, dtype=torch.float64) * 0.3  # tiny
    length[kind == 2] = size * 3  # huge
    lo[kind == 2] = -size
    lo[kind == 3] = lo[kind == 3] - size * 0.6  # partly outside (low side)
    lo[kind == 4] = size + 2 + lo[kind == 4]  # wholly outside (high side)
    b = torch.randint(0, batch, (n_rois, 1), generator=gen).to(torch.float64)
    return torch.cat([b, lo, lo + length], dim=1).to(dtype)


# ---------------------------------------------------------------------------------------------
# Independent oracles


def _bilinear(img, y, x):
    height, width = len(img), len(img[0])
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_lo, x_lo = int(y), int(x)
    if y_lo >= height - 1:
        y_lo = y_hi = height - 1
        y = float(y_lo)
    else:
        y_hi = y_lo + 1
    if x_lo >= width - 1:
        x_lo = x_hi = width - 1
        x = float(x_lo)
    else:
        x_hi = x_lo + 1
    ly, lx = y - y_lo, x - x_lo
    hy, hx = 1 - ly, 1 - lx
    return hy * hx * img[y_lo][x_lo] + hy * lx * img[y_lo][x_hi] + ly * hx * img[y_hi][x_lo] + ly * lx * img[y_hi][x_hi]


def _roi_align_2d_naive(img, box, out_hw, scale, sampling_ratio, aligned):
    """torchvision's 2-D RoI Align of one channel ``img`` (nested lists) and box (y1, x1, y2, x2)."""
    offset = 0.5 if aligned else 0.0
    y1, x1, y2, x2 = (v * scale - offset for v in box)
    roi_h, roi_w = y2 - y1, x2 - x1
    if not aligned:
        roi_h, roi_w = max(roi_h, 1.0), max(roi_w, 1.0)
    out_h, out_w = out_hw
    bin_h, bin_w = roi_h / out_h, roi_w / out_w
    grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / out_h)
    grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / out_w)
    count = max(grid_h * grid_w, 1)
    out = [[0.0] * out_w for _ in range(out_h)]
    for ph in range(out_h):
        for pw in range(out_w):
            total = 0.0
            for iy in range(grid_h):
                y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                for ix in range(grid_w):
                    x = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                    total += _bilinear(img, y, x)
            out[ph][pw] = total / count
    return out


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_constant_along_z_equals_naive_2d(backend, aligned, sampling_ratio):
    gen = torch.Generator().manual_seed(3)
    img2d = torch.rand(2, 5, 6, generator=gen, dtype=torch.float64)  # [C, H, W]
    volume = img2d[None, :, None].expand(1, 2, 4, 5, 6).contiguous()  # constant along z
    boxes_yx = [(0.3, 0.7, 3.9, 4.2), (-1.5, 2.0, 2.5, 7.5), (3.0, 4.0, 6.2, 6.9), (1.0, 1.0, 1.2, 1.1)]
    scale = 0.9
    # z extent [1.2, 3.6] * scale keeps every z-sample inside the volume, where trilinear
    # interpolation of a z-constant input equals bilinear interpolation of one slice.
    rois = torch.tensor([[0, 1.2, y1, x1, 3.6, y2, x2] for y1, x1, y2, x2 in boxes_yx], dtype=torch.float64)
    out = roi_align_3d(volume, rois, (3, 2, 3), scale, sampling_ratio, aligned)
    for k in range(len(boxes_yx)):
        box = rois[k, [2, 3, 5, 6]].tolist()
        for c in range(2):
            expected = torch.tensor(
                _roi_align_2d_naive(img2d[c].tolist(), box, (2, 3), scale, sampling_ratio, aligned), dtype=torch.float64
            )
            for p in range(3):
                torch.testing.assert_close(out[k, c, p], expected, atol=1e-12, rtol=0)


def test_hand_computed_values(backend):
    # f(z, y, x) = 100 z + 10 y + x is linear, so trilinear samples reproduce it exactly.
    z, y, x = torch.meshgrid(*(torch.arange(4, dtype=torch.float64),) * 3, indexing="ij")
    volume = (100 * z + 10 * y + x)[None, None]
    # aligned box [1, 3)^3 -> start 0.5, size 2, adaptive grid 2: samples at 1.0 and 2.0 per axis.
    inside = roi_align_3d(volume, torch.tensor([[0.0, 1, 1, 1, 3, 3, 3]], dtype=torch.float64), 1)
    assert inside.item() == pytest.approx(166.5, abs=1e-12)
    # z box [4, 6): z-samples at 4.0 (on the border: clamped to voxel 3) and 5.0 (beyond
    # size=4: contributes zero). y, x samples at 1.0 and 2.0. Mean of 8 samples, 4 of them zero:
    # (4 * (300 + 15 + 1.5)) / 8 = 158.25.
    edge = roi_align_3d(volume, torch.tensor([[0.0, 4, 1, 1, 6, 3, 3]], dtype=torch.float64), 1, 1.0, 2, True)
    assert edge.item() == pytest.approx(158.25, abs=1e-12)
    # Wholly outside: zero. Legacy (aligned=False) tiny box widened to 1 voxel: [2, 3) with
    # samples at 2.25 and 2.75 -> mean 2.5 per axis -> 277.5.
    far = roi_align_3d(volume, torch.tensor([[0.0, 9, 9, 9, 12, 12, 12]], dtype=torch.float64), 2)
    assert torch.count_nonzero(far) == 0
    legacy = roi_align_3d(volume, torch.tensor([[0.0, 2, 2, 2, 2.1, 2.1, 2.1]], dtype=torch.float64), 1, 1.0, 2, False)
    assert legacy.item() == pytest.approx(277.5, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Compiled kernels against the reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("contiguous", [True, False])
def test_compiled_matches_reference(device, dtype, aligned, sampling_ratio, contiguous):
    _skip_without_compiled(device)
    gen = torch.Generator().manual_seed(int(aligned) * 4 + sampling_ratio + int(contiguous) * 8)
    extent = (7, 6, 9)
    base = torch.randn(2, 3, 9, 7, 6, generator=gen, dtype=dtype)
    # Non-contiguous: a permuted view with the same logical shape [2, 3, 7, 6, 9].
    volume = base.permute(0, 1, 3, 4, 2) if not contiguous else base.permute(0, 1, 3, 4, 2).contiguous()
    volume = volume.to(device)
    assert volume.is_contiguous() == contiguous
    rois = _random_rois(25, 2, extent, gen, dtype).to(device)
    for output_size, scale in (((2, 2, 2), 1.0), ((3, 2, 4), 0.5)):
        args = (rois, scale, *output_size, sampling_ratio, aligned)
        got = _compiled_op(volume, *args)
        expected = roi_align_3d_reference(volume, rois, output_size, scale, sampling_ratio, aligned)
        assert got.shape == (25, 3, *output_size)
        torch.testing.assert_close(got, expected, atol=ATOL[dtype], rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_backward_matches_reference(device):
    _skip_without_compiled(device)
    gen = torch.Generator().manual_seed(11)
    volume = torch.randn(2, 4, 6, 7, 8, generator=gen, dtype=torch.float64).to(device)
    rois = _random_rois(20, 2, (6, 7, 8), gen, torch.float64).to(device)
    weights = torch.randn(20, 4, 2, 3, 2, generator=gen, dtype=torch.float64).to(device)
    grads = []
    for fn in (
        lambda v: _compiled_op(v, rois, 0.8, 2, 3, 2, -1, True),
        lambda v: roi_align_3d_reference(v, rois, (2, 3, 2), 0.8, -1, True),
    ):
        v = volume.clone().requires_grad_()
        (fn(v) * weights).sum().backward()
        grads.append(v.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-10, rtol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_accumulates_in_float(device, dtype):
    _skip_without_compiled(device)
    gen = torch.Generator().manual_seed(5)
    volume = torch.rand(1, 2, 12, 12, 12, generator=gen).to(device)
    rois = torch.tensor([[0, 0, 0, 0, 12, 12, 12], [0, 2.5, 1, 3, 9, 10, 11.5]], device=device)
    got = _compiled_op(volume.to(dtype), rois.to(dtype), 1.0, 2, 2, 2, -1, True)
    # Oracle: the same (rounded) inputs in float32. Only the final rounding may differ.
    expected = roi_align_3d_reference(volume.to(dtype).float(), rois.to(dtype).float(), (2, 2, 2))
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected, atol=1e-2 if dtype == torch.bfloat16 else 2e-3, rtol=0)
    v = volume.to(dtype).requires_grad_()
    _compiled_op(v, rois.to(dtype), 1.0, 2, 2, 2, -1, True).sum().backward()
    # Each of the 8 bins' weights sum to 1 over the input, so the whole gradient sums to K * C * 8.
    assert v.grad.dtype == dtype and v.grad.float().sum().item() == pytest.approx(2 * 2 * 8, rel=1e-2)


# ---------------------------------------------------------------------------------------------
# Public function: shapes, autograd, errors (both backends)


def test_empty_rois(backend):
    volume = torch.randn(1, 3, 4, 4, 4, requires_grad=True)
    out = roi_align_3d(volume, torch.zeros(0, 7), (2, 3, 4))
    assert out.shape == (0, 3, 2, 3, 4)
    out.sum().backward()
    assert volume.grad is not None and torch.count_nonzero(volume.grad) == 0


def test_module_and_gradient_flow(backend):
    module = RoIAlign3d(2, spatial_scale=0.5, sampling_ratio=2)
    assert "output_size=(2, 2, 2)" in repr(module)
    volume = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
    rois = torch.tensor([[1, 2, 2, 2, 10, 12, 9], [0, 0, 0, 0, 16, 16, 16]], dtype=torch.float32)
    out = module(volume, rois)
    assert out.shape == (2, 3, 2, 2, 2)
    out.sum().backward()
    # RoI 1 lies in image 0 only partly and RoI 0 in image 1: both images receive gradient,
    # and every bin's sampling weights sum to 1 (all samples inside).
    assert volume.grad[0].sum().item() == pytest.approx(3 * 8, rel=1e-5)
    assert volume.grad[1].sum().item() == pytest.approx(3 * 8, rel=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_gradcheck(backend, seed):
    gen = torch.Generator().manual_seed(seed)
    volume = torch.randn(2, 2, 4, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = _random_rois(6, 2, (4, 5, 3), gen, torch.float64)
    rois[:, 4:] = torch.minimum(rois[:, 4:], rois[:, 1:4] + 4)  # keep adaptive grids small

    def fn(v):
        return roi_align_3d(v, rois, (2, 1, 2), 0.9, -1 if seed % 2 else 2, bool(seed % 2))

    # Full Jacobians for the compiled op's first seed; random projections (fast_mode) for the
    # others and for the reference (whose gradient is autograd's, and whose per-call Python
    # overhead would make a full Jacobian take seconds).
    fast = seed > 0 or backend == "reference"
    assert torch.autograd.gradcheck(fn, (volume,), eps=1e-6, atol=1e-7, fast_mode=fast)
    if backend == "compiled":
        # Double backward: the backward op's own gradient is the forward op.
        assert torch.autograd.gradgradcheck(fn, (volume,), eps=1e-6, atol=1e-7, fast_mode=fast)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: (torch.randn(3, 4, 4, 4), torch.zeros(1, 7)), "input must have shape"),
        (lambda: (torch.randn(1, 1, 4, 4, 4), torch.zeros(1, 6)), "rois must have shape"),
        (lambda: (torch.randn(1, 1, 4, 4, 4), torch.zeros(7)), "rois must have shape"),
        (lambda: (torch.randn(1, 1, 4, 4, 4), torch.tensor([[1.0, 0, 0, 0, 2, 2, 2]])), "batch indices"),
        (lambda: (torch.randn(1, 1, 4, 4, 4), torch.tensor([[-1.0, 0, 0, 0, 2, 2, 2]])), "batch indices"),
        (lambda: (torch.randn(1, 1, 4, 4, 4), torch.zeros(1, 7, dtype=torch.float64)), "same dtype"),
        (lambda: (torch.randn(1, 1, 4, 4, 4), torch.zeros(1, 7, device="meta")), "same device"),
        (lambda: (torch.randn(1, 1, 0, 4, 4), torch.zeros(1, 7)), "spatial size"),
    ],
)
def test_bad_input_raises(backend, make, message):
    volume, rois = make()
    with pytest.raises(ValueError, match=message):
        roi_align_3d(volume, rois, 2)


@pytest.mark.parametrize("output_size", [0, (2, -1, 2), (2, 2), (2.0, 2, 2)])
def test_bad_output_size_raises(output_size):
    with pytest.raises(ValueError, match="output_size"):
        roi_align_3d(torch.randn(1, 1, 4, 4, 4), torch.zeros(1, 7), output_size)


def test_kernel_checks_its_arguments():
    _skip_without_compiled("cpu")
    volume = torch.randn(1, 1, 4, 4, 4)
    with pytest.raises(RuntimeError, match=r"rois must have shape \[K, 7\]"):
        _compiled_op(volume, torch.zeros(1, 5), 1.0, 2, 2, 2, -1, True)
    with pytest.raises(RuntimeError, match="not a batch index"):
        _compiled_op(volume, torch.tensor([[3.0, 0, 0, 0, 1, 1, 1]]), 1.0, 2, 2, 2, -1, True)
    with pytest.raises(RuntimeError, match="output_size must be positive"):
        _compiled_op(volume, torch.zeros(1, 7), 1.0, 2, 0, 2, -1, True)
    with pytest.raises(RuntimeError, match="same dtype"):
        _compiled_op(volume, torch.zeros(1, 7, dtype=torch.float64), 1.0, 2, 2, 2, -1, True)


# ---------------------------------------------------------------------------------------------
# Operator registration: opcheck and torch.compile


def test_opcheck():
    """Schema, autograd registration, fake tensor and AOT dispatch (dynamic shapes) checks."""
    _skip_without_compiled("cpu")
    gen = torch.Generator().manual_seed(0)
    volume = torch.randn(2, 3, 5, 6, 4, generator=gen, requires_grad=True)
    rois = _random_rois(5, 2, (5, 6, 4), gen, torch.float32)
    for args in (
        (volume, rois, 0.75, 2, 3, 2, -1, True),
        (torch.randn(1, 2, 3, 3, 3, requires_grad=True), torch.zeros(0, 7), 1.0, 1, 1, 1, 2, False),
    ):
        torch.library.opcheck(torch.ops.lesion_detector.roi_align_3d.default, args)
    grad = torch.randn(5, 3, 2, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    backward_args = (grad, rois.double(), 0.75, 2, 3, 2, 2, 3, 5, 6, 4, 2, False)
    torch.library.opcheck(torch.ops.lesion_detector._roi_align_3d_backward.default, backward_args)


def test_torch_compile_fullgraph():
    # The reference has data-dependent shapes (adaptive grids), so only the compiled op
    # traces into one graph.
    if not _loader.use_compiled("cpu"):
        pytest.skip(f"compiled op not in use: {backend_info('cpu')}")
    torch._dynamo.reset()
    compiled = torch.compile(lambda v, r: roi_align_3d(v, r, (2, 2, 2), 0.5, -1, True) * 2, fullgraph=True, backend="aot_eager")
    gen = torch.Generator().manual_seed(1)
    volume = torch.randn(1, 2, 6, 6, 6, generator=gen, requires_grad=True)
    rois = _random_rois(4, 1, (12, 12, 12), gen, torch.float32)
    out = compiled(volume, rois)
    torch.testing.assert_close(out, roi_align_3d_reference(volume, rois, (2, 2, 2), 0.5) * 2, atol=2e-5, rtol=1e-5)
    out.sum().backward()
    assert volume.grad is not None and volume.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# Backend selection and fallbacks (fresh interpreters, so import-time behaviour is real)


def _run_python(code: str, **env) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


_FALLBACK_PROBE = """
import torch
from LesionDetectorLib.ops import backend_info, roi_align_3d, roi_align_3d_reference
v = torch.randn(1, 2, 5, 5, 5, requires_grad=True)
r = torch.tensor([[0, 0.5, 1, 1, 4, 4, 3.5]])
out = roi_align_3d(v, r, 2)
out.sum().backward()
assert torch.allclose(out, roi_align_3d_reference(v, r, 2)) and v.grad.abs().sum() > 0
print(backend_info())
"""


def test_force_reference_env_var():
    line = _run_python(_FALLBACK_PROBE, LESION_DETECTOR_FORCE_REFERENCE="1")
    assert line == "reference (forced by LESION_DETECTOR_FORCE_REFERENCE=1)"


def test_missing_extension_falls_back_to_reference():
    # sys.modules[name] = None makes `import LesionDetectorLib._C` raise ImportError, as a
    # missing or ABI-incompatible build would.
    code = "import sys; sys.modules['LesionDetectorLib._C'] = None\n" + _FALLBACK_PROBE
    line = _run_python(code, LESION_DETECTOR_FORCE_REFERENCE="0", LESION_DETECTOR_JIT="0")
    assert line.startswith("reference (compiled op unavailable: ") and "LesionDetectorLib._C" in line


def test_backend_info_names_the_backend():
    info = backend_info("cpu")
    if _loader._state.force_reference:
        assert info.startswith("reference (forced")
    elif _compiled("cpu"):
        assert info in ("compiled (LesionDetectorLib._C, cpu)",) or info.startswith("jit (")
    else:
        assert info.startswith("reference (")
