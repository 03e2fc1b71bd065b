"""Compiled operators: 3-D RoI Align for the FPRN.

``roi_align_3d`` runs the compiled kernels (``LesionDetectorLib._C``, built by ``setup.py``)
when they exist for the input's device, else a JIT build when allowed, else the
pure-PyTorch reference; :func:`backend_info` says which and why. See ``_loader`` for the
environment variables (``LESION_DETECTOR_FORCE_REFERENCE``, ``LESION_DETECTOR_JIT``).
"""
from ._loader import backend_info, jit_cache_dir, set_force_reference
from ._loader import build_jit as _build_jit
from .reference import roi_align_3d_reference
from .roi_align_3d import RoIAlign3d, roi_align_3d

__all__ = [
    "roi_align_3d",
    "RoIAlign3d",
    "roi_align_3d_reference",
    "backend_info",
    "build_jit",
    "jit_cache_dir",
    "set_force_reference",
]


def build_jit(verbose: bool = False) -> str:
    """JIT-compile the op now (1-2 minutes, cached in :func:`jit_cache_dir`); returns :func:`backend_info`."""
    _build_jit(verbose=verbose)
    return backend_info()
