"""The one in-memory image type of the library.

Convention (stated once, used everywhere):

* ``array`` is indexed ``[z, y, x]`` (slice, row, column), float32 Hounsfield units.
* ``spacing``, ``origin`` and ``direction`` are in **ITK / LPS** order ``(x, y, z)``
  exactly as SimpleITK reports them: ``direction`` is the 3x3 matrix whose
  *columns* are the world (LPS) directions of the i (x), j (y), k (z) index axes.
* World coordinates are LPS millimetres: ``world = origin + direction @ (spacing * [i, j, k])``.

Conversions between world points and ``[z, y, x]`` indices live in
:mod:`LesionDetectorLib.coordinates`; nothing else does that arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence

import numpy as np


def _vector(values, n: int, name: str, meaning: str) -> np.ndarray:
    """``values`` as ``n`` float64 numbers, or a VolumeError naming what was wrong."""
    from .errors import VolumeError

    try:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise VolumeError(f"The image {name} {values!r} is not numbers; it must be {n} numbers, {meaning}.") from None
    if v.size != n:
        raise VolumeError(f"The image {name} has {v.size} values {tuple(v.tolist())}; it must be {n} numbers, "
                          f"{meaning}.")
    return v


@dataclass
class Volume:
    array: np.ndarray                      # [z, y, x] float32 HU
    spacing: np.ndarray                    # (sx, sy, sz) mm, LPS/ITK order
    origin: np.ndarray                     # (x, y, z) LPS mm of voxel [0, 0, 0]
    direction: np.ndarray                  # 3x3, columns = LPS direction of i, j, k axes
    metadata: Dict[str, Any] = field(default_factory=dict)  # SeriesInstanceUID, Modality, source path ...

    def __post_init__(self):
        self.array = np.asarray(self.array)
        self.spacing = np.asarray(self.spacing, dtype=np.float64).reshape(3)
        self.origin = np.asarray(self.origin, dtype=np.float64).reshape(3)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @classmethod
    def from_array(
        cls,
        array: np.ndarray,
        spacing: Sequence[float],
        origin: Sequence[float] = (0.0, 0.0, 0.0),
        direction: Optional[Sequence[float]] = None,
        metadata: Optional[Dict[str, Any]] = None,
    ) -> "Volume":
        """Build a volume from a ``[z, y, x]`` array and ITK-ordered geometry (the Slicer boundary).

        ``direction`` may be a 3x3 matrix or ITK's flat 9-tuple (row-major); identity by default.
        Geometry and values are validated (see :func:`LesionDetectorLib.io.validate.validate_volume`).
        """
        from .errors import VolumeError
        from .io.validate import validate_volume  # local: io imports this module

        values = np.asarray(array)
        if values.dtype.kind not in "biuf":
            raise VolumeError(f"The image has {values.dtype} values; a CT volume needs real numbers (HU), "
                              "not complex numbers, text or Python objects.")
        spacing = _vector(spacing, 3, "spacing", "(sx, sy, sz) in mm")
        origin = _vector(origin, 3, "origin", "(x, y, z) in LPS mm")
        d = np.eye(3) if direction is None else _vector(direction, 9, "direction", "a 3x3 matrix").reshape(3, 3)
        if metadata is not None and not isinstance(metadata, dict):
            raise VolumeError(f"metadata must be a dict, got {type(metadata).__name__}")
        vol = cls(values.astype(np.float32, copy=False), spacing, origin, d, dict(metadata or {}))
        validate_volume(vol, allow_non_ct=True)
        return vol

    @property
    def shape_zyx(self):
        return tuple(self.array.shape)

    @property
    def spacing_zyx(self) -> np.ndarray:
        return self.spacing[::-1].copy()

    @property
    def series_uid(self) -> Optional[str]:
        return self.metadata.get("SeriesInstanceUID")

    def __repr__(self) -> str:  # the array would flood logs
        spacing = tuple(round(float(s), 4) for s in self.spacing)
        origin = tuple(round(float(o), 3) for o in self.origin)
        return f"Volume(shape_zyx={self.shape_zyx}, spacing={spacing}, origin={origin}, series_uid={self.series_uid!r})"
