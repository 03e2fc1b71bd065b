"""Finds the compiled roi_align_3d operator and records which backend is in use.

Order: the prebuilt extension ``LesionDetectorLib._C`` (built by ``setup.py``), then, only
when allowed, a JIT build of ``LesionDetectorLib/csrc`` cached per torch version, else the
pure-PyTorch reference. Nothing here raises: a missing or broken build is recorded as a
reason and reported by :func:`backend_info`. A JIT build takes 1-2 minutes, so it never
happens implicitly: set ``LESION_DETECTOR_JIT=1`` or call :func:`build_jit`.

Environment:
    LESION_DETECTOR_FORCE_REFERENCE=1  use the reference even when the compiled op exists
    LESION_DETECTOR_JIT=1              JIT-build the op at import when ``_C`` is missing
    LESION_DETECTOR_EXT_DIR            JIT build/cache directory (default below)
"""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

ENV_FORCE_REFERENCE = "LESION_DETECTOR_FORCE_REFERENCE"
ENV_JIT = "LESION_DETECTOR_JIT"
ENV_EXT_DIR = "LESION_DETECTOR_EXT_DIR"
OP_NAME = "lesion_detector::roi_align_3d"
_CSRC = Path(__file__).resolve().parent.parent / "csrc"


@dataclass
class BackendState:
    """Where the compiled op came from, or why there is none."""

    source: Optional[str] = None  # "compiled" | "jit" | None
    location: str = ""  # module name or JIT build directory
    reason: str = "not loaded yet"  # why the compiled op is unavailable
    devices: tuple = ()  # device types with a kernel, e.g. ("cpu",) or ("cpu", "cuda")
    force_reference: bool = field(default_factory=lambda: os.environ.get(ENV_FORCE_REFERENCE) == "1")
    force_reason: str = f"{ENV_FORCE_REFERENCE}=1"
    tried: bool = False


_state = BackendState()
_on_loaded: list = []


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]


def _op_registered() -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(OP_NAME, "CPU") or \
            torch._C._dispatch_has_kernel_for_dispatch_key(OP_NAME, "CUDA")
    except RuntimeError:  # operator unknown to the dispatcher
        return False


def _record(source: str, location: str) -> None:
    devices = tuple(
        dev for dev, key in (("cpu", "CPU"), ("cuda", "CUDA"))
        if torch._C._dispatch_has_kernel_for_dispatch_key(OP_NAME, key)
    )
    _state.source, _state.location, _state.reason, _state.devices = source, location, "", devices
    for callback in _on_loaded:
        callback()


def on_loaded(callback: Callable[[], None]) -> None:
    """Run ``callback`` once the compiled op is registered (now, if it already is)."""
    _on_loaded.append(callback)
    if _state.source is not None:
        callback()


def load(allow_jit: Optional[bool] = None) -> BackendState:
    """Load the compiled op once; JIT-build it when ``allow_jit`` (default: ``$LESION_DETECTOR_JIT``)."""
    if _state.source is not None:
        return _state
    if not _state.tried:
        _state.tried = True
        try:
            importlib.import_module("LesionDetectorLib._C")
        except Exception as exc:  # noqa: BLE001 - ImportError, OSError (ABI mismatch), ...
            _state.reason = _short(exc)
        else:
            if _op_registered():
                _record("compiled", "LesionDetectorLib._C")
            else:
                _state.reason = "LesionDetectorLib._C loaded but registered no roi_align_3d kernel"
    if _state.source is None and (_flag(ENV_JIT) if allow_jit is None else allow_jit):
        build_jit()
    return _state


def jit_cache_dir() -> Path:
    """Build directory of the JIT op: one per torch/CUDA/Python version, so upgrades rebuild."""
    if os.environ.get(ENV_EXT_DIR):
        return Path(os.environ[ENV_EXT_DIR])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    tag = f"torch-{torch.__version__}-cuda-{torch.version.cuda or 'none'}-py{sys.version_info[0]}{sys.version_info[1]}"
    return base / "lesion_detector" / "ext" / tag.replace("+", "_")


def build_jit(verbose: bool = False) -> BackendState:
    """Compile ``csrc/`` with ``torch.utils.cpp_extension.load`` (1-2 minutes, cached).

    Returns the backend state; a failure is recorded in ``reason``, never raised.
    """
    if _state.source is not None:
        return _state
    if _op_registered():  # e.g. built by an earlier call in this process
        _record("jit", str(jit_cache_dir()))
        return _state
    try:
        from torch.utils import cpp_extension

        sources = sorted(str(p) for p in (_CSRC / "ops").glob("*.cpp"))
        sources += sorted(str(p) for p in (_CSRC / "ops" / "cpu").glob("*.cpp"))
        with_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
        if with_cuda:
            sources += sorted(str(p) for p in (_CSRC / "ops" / "cuda").glob("*.cu"))
        build_dir = jit_cache_dir()
        build_dir.mkdir(parents=True, exist_ok=True)
        cpp_extension.load(
            name="lesion_detector_ops",
            sources=sources,
            extra_include_paths=[str(_CSRC)],
            extra_cflags=["-O3", "-fopenmp"] + (["-DWITH_CUDA"] if with_cuda else []),
            extra_cuda_cflags=["-O3"],
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            with_cuda=with_cuda,
            is_python_module=False,  # loaded with torch.ops.load_library: registration only
            verbose=verbose,
        )
    except Exception as exc:  # noqa: BLE001 - compiler missing, build error, ...
        _state.reason = f"{_state.reason}; JIT build failed: {_short(exc)}"
        return _state
    if _op_registered():
        _record("jit", str(jit_cache_dir()))
    else:
        _state.reason = f"{_state.reason}; JIT build registered no kernel"
    return _state


def set_force_reference(enabled: bool, reason: str = "set_force_reference(True)") -> None:
    """Use (or stop using) the pure-PyTorch reference even when a compiled op exists."""
    _state.force_reference = bool(enabled)
    _state.force_reason = reason


def use_compiled(device_type: str) -> bool:
    """True when calls on ``device_type`` ("cpu", "cuda", ...) go to the compiled kernels."""
    return not _state.force_reference and _state.source is not None and device_type in _state.devices


def backend_info(device: Optional[str] = None) -> str:
    """One line saying which implementation runs (on ``device``, default: every device with a kernel)."""
    if _state.force_reference:
        return f"reference (forced by {_state.force_reason})"
    if _state.source is None:
        return f"reference (compiled op unavailable: {_state.reason})"
    where = "LesionDetectorLib._C" if _state.source == "compiled" else _state.location
    device_type = torch.device(device).type if device is not None else None
    if device_type is not None and device_type not in _state.devices:
        return f"reference ({_state.source} op has no {device_type} kernel; built for {', '.join(_state.devices)})"
    return f"{_state.source} ({where}, {device_type or '+'.join(_state.devices)})"
