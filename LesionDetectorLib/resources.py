"""Where bundled resources (model weights and cards, the LIDC nodule-shape library) live.

In a source checkout, an editable install and the Slicer extension the top-level
``Resources/`` folder sits beside ``LesionDetectorLib/``; a wheel carries a copy in
``LesionDetectorLib/_resources`` (setup.py).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from .errors import ModelError

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


def resolve_model_dir(name_or_dir: Union[str, os.PathLike]) -> Path:
    """A directory holding ``model.json`` + weights, or the name of a bundled model."""
    path = Path(name_or_dir)
    if path.is_dir():
        return path
    try:
        root = models_root()
    except FileNotFoundError as exc:
        raise ModelError(f"model {str(name_or_dir)!r} is not a directory and no bundled models exist: {exc}") from exc
    bundled = root / str(name_or_dir)
    if bundled.is_dir():
        return bundled
    available = sorted(p.name for p in root.iterdir() if (p / "model.json").is_file()) if root.is_dir() else []
    raise ModelError(f"model {str(name_or_dir)!r} is neither a model directory nor a bundled model "
                     f"(bundled: {', '.join(available) or 'none'})")
