"""Sliding-window tiling, tile ownership, patient flag and the OOM batch runner."""
import numpy as np
import pytest
import torch

from LesionDetectorLib.errors import CancelledError
from LesionDetectorLib.inference.device import BatchRunner, is_out_of_memory, resolve_device
from LesionDetectorLib.inference.patient_flag import patient_flag, resolve_operating_point
from LesionDetectorLib.inference.progress import CancelToken
from LesionDetectorLib.inference.sliding_window import axis_starts, extract_tile, plan_tiles

CARD = {"operating_points": {
    "sensitivity_0.90": {"threshold": 0.6, "sensitivity": 0.9, "fp_per_scan": 1.2},
    "sensitivity_0.95": {"threshold": 0.4, "sensitivity": 0.95, "fp_per_scan": 3.1},
    "fp_per_scan_1": {"threshold": 0.7, "sensitivity": 0.85, "fp_per_scan": 1.0},
    "fp_per_scan_4": {"threshold": 0.35, "sensitivity": 0.96, "fp_per_scan": 4.0}}}


@pytest.mark.parametrize("length, tile, overlap, expected", [
    (100, 128, 32, [0]),
    (128, 128, 32, [0]),
    (129, 128, 32, [0, 1]),
    (300, 128, 32, [0, 96, 172]),
    (224, 128, 32, [0, 96]),
])
def test_axis_starts_cover_the_axis(length, tile, overlap, expected):
    starts = axis_starts(length, tile, overlap)
    assert starts == expected
    assert starts[0] == 0 and (starts[-1] + tile >= length)
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_every_voxel_is_owned_by_exactly_one_tile():
    shape = (70, 150, 300)
    tiles = plan_tiles(shape, tile=(64, 128, 128), overlap=32)
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.5, np.asarray(shape) - 0.5, size=(5000, 3))
    pts = np.concatenate([pts, np.array([[0, 0, 0], [69, 149, 299], [35.0, 112.0, 112.0]])])
    owners = np.sum([t.owns(pts) for t in tiles], axis=0)
    assert np.all(owners == 1)
    for t in tiles:  # an owned point lies inside its tile, away from the tile's cut edges
        inside = pts[t.owns(pts)]
        assert np.all(inside >= np.asarray(t.start) - 0.5)
        assert np.all(inside <= np.asarray(t.start) + np.asarray(t.size) - 0.5)


def test_extract_tile_pads_small_axes_with_the_pad_value():
    image = np.arange(40 * 20 * 50, dtype=np.float32).reshape(40, 20, 50)
    (tile,) = [t for t in plan_tiles(image.shape, tile=32, overlap=8) if t.start == (8, 0, 18)]
    out = extract_tile(image, tile, pad_value=-7.0)
    assert out.shape == (32, 32, 32) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, :20, :], image[8:40, :, 18:50])
    assert np.all(out[:, 20:, :] == -7.0)


def test_patient_flag_uses_only_card_thresholds():
    op = resolve_operating_point(CARD, "sensitivity_0.95")
    assert op["threshold"] == 0.4
    assert patient_flag([0.1, 0.41], op) == {"status": "positive", "operating_point": "sensitivity_0.95",
                                             "threshold": 0.4, "max_score": 0.41}
    assert patient_flag([0.39], op)["status"] == "likely negative"
    assert patient_flag([0.4], op)["status"] == "positive"  # "reaches" the threshold
    empty = patient_flag([], op)
    assert empty["status"] == "likely negative" and empty["max_score"] is None
    assert patient_flag([0.65], resolve_operating_point(CARD, "fp_per_scan_1"))["status"] == "likely negative"
    with pytest.raises(ValueError, match="available: fp_per_scan_1"):
        resolve_operating_point(CARD, "sensitivity_0.99")


def test_card_without_operating_points_gives_unavailable_flag():
    op = resolve_operating_point({"operating_points": {}}, "sensitivity_0.95")
    assert op["threshold"] is None
    flag = patient_flag([0.99], op)
    assert flag["status"] == "unavailable" and flag["threshold"] is None
    assert "no operating points" in flag["reason"] and flag["max_score"] == 0.99


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")


def _oom_fn(limit_by_device):
    calls = []

    def fn(chunk, device):
        calls.append((device.type, len(chunk)))
        if len(chunk) > limit_by_device[device.type]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [x * 10 for x in chunk]
    return fn, calls


def test_batch_runner_halves_batches_on_oom():
    fn, calls = _oom_fn({"cpu": 1})
    runner = BatchRunner(torch.device("cpu"), batch_size=4)
    assert runner.run(list(range(5)), fn) == [0, 10, 20, 30, 40]
    assert calls[:3] == [("cpu", 4), ("cpu", 2), ("cpu", 1)]
    assert runner.batch_size == 1 and len(runner.notes) == 2 and "batch size 1" in runner.notes[-1]


def test_batch_runner_falls_back_to_cpu_after_gpu_oom_at_batch_one():
    fn, calls = _oom_fn({"cuda": 0, "cpu": 8})
    moved = []
    # A GPU is only named here, never touched: fn decides what "out of memory" means.
    runner = BatchRunner(torch.device("cuda"), batch_size=2, on_device_change=moved.append)
    assert runner.run([1, 2, 3], fn) == [10, 20, 30]
    assert moved == [torch.device("cpu")] and runner.device.type == "cpu"
    assert any("continuing on the CPU" in n for n in runner.notes)
    assert calls[-1][0] == "cpu"


def test_batch_runner_reraises_cpu_oom_and_other_errors():
    fn, _ = _oom_fn({"cpu": 0})
    with pytest.raises(torch.cuda.OutOfMemoryError):
        BatchRunner(torch.device("cpu"), 1).run([1], fn)

    def broken(chunk, device):
        raise KeyError("bug")
    with pytest.raises(KeyError):
        BatchRunner(torch.device("cpu"), 2).run([1, 2], broken)
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_cancel_token_stops_the_runner_between_batches():
    token = CancelToken()
    seen = []

    def fn(chunk, device):
        seen.extend(chunk)
        return list(chunk)

    def after(n_done):
        if n_done >= 2:
            token.cancel()
        token.raise_if_cancelled()

    with pytest.raises(CancelledError):
        BatchRunner(torch.device("cpu"), 1).run(list(range(10)), fn, after)
    assert seen == [0, 1] and token.cancelled
