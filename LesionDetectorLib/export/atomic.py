"""Atomic writes for the exporters: see :mod:`LesionDetectorLib.atomic` (one implementation
serves every writer of the library)."""
from ..atomic import PathLike, atomic_open, atomic_path, atomic_write_bytes, atomic_write_text

__all__ = ["PathLike", "atomic_open", "atomic_path", "atomic_write_bytes", "atomic_write_text"]
