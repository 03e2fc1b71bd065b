"""Where bundled resources (model weights and cards, the LIDC nodule-shape library) live.

In a source checkout, an editable install and the Slicer extension the top-level
``Resources/`` folder sits beside ``LesionDetectorLib/``; a wheel carries a copy in
``LesionDetectorLib/_resources`` (setup.py).
"""
from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def resources_root() -> Path:
    for candidate in (_PKG.parent / "Resources", _PKG / "_resources"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"LesionDetector resources not found (looked in {_PKG.parent / 'Resources'} and {_PKG / '_resources'}); "
        "reinstall the package")


def models_root() -> Path:
    return resources_root() / "Models"
