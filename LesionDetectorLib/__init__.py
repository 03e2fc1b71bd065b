"""LesionDetectorLib: lesion detection in CT with the 3D Aggregated Faster R-CNN.

Public API::

    from LesionDetectorLib import Detector, read_volume
    volume = read_volume("scan.mhd")
    findings = Detector.from_pretrained("luna16-synthetic")(volume)

Imports without Slicer, Qt or vtk. Heavy submodules load on first use.
"""
from .version import __version__

_LAZY = {
    "Volume": ("volume", "Volume"),
    "read_volume": ("io", "read_volume"),
    "write_volume": ("io", "write_volume"),
    "Detector": ("inference", "Detector"),
    "Findings": ("findings", "Findings"),
    "Candidate": ("findings", "Candidate"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'LesionDetectorLib' has no attribute {name!r}")
