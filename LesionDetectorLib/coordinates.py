"""Every world (LPS mm) <-> voxel index transform of the library, and resampling.

Convention (see :mod:`LesionDetectorLib.volume`): indices are continuous ``[z, y, x]``
with integer values at voxel *centres*; ``spacing``, ``origin`` and ``direction`` are in
ITK order ``(x, y, z)`` and ``world = origin + direction @ (spacing * [i, j, k])`` with
``[i, j, k] = [x, y, z]`` index. ``direction`` columns are the LPS directions of the i, j, k
axes; oblique (non axis-aligned) and flipped (negative) cosines are fully supported.

Resampling keeps ``origin`` and ``direction`` and only changes ``spacing`` (and the size),
so voxel ``[0, 0, 0]`` of the resampled grid is at the same world point as voxel
``[0, 0, 0]`` of the original, and along every axis::

    index_original = index_resampled * spacing_resampled / spacing_original

(:func:`resampled_index_to_original`). The resampled size is chosen so that every sample
lies inside the original voxel-centre hull: no extrapolation, no default-value voxels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .volume import Volume


@dataclass(frozen=True)
class Geometry:
    """A voxel grid without pixel data: shape ``(nz, ny, nx)`` plus ITK-ordered geometry."""

    shape_zyx: Tuple[int, int, int]
    spacing: np.ndarray     # (sx, sy, sz) mm
    origin: np.ndarray      # (x, y, z) LPS mm of voxel [0, 0, 0]
    direction: np.ndarray   # 3x3, columns = LPS directions of i, j, k

    def __post_init__(self):
        object.__setattr__(self, "shape_zyx", tuple(int(n) for n in self.shape_zyx))
        object.__setattr__(self, "spacing", np.asarray(self.spacing, dtype=np.float64).reshape(3))
        object.__setattr__(self, "origin", np.asarray(self.origin, dtype=np.float64).reshape(3))
        object.__setattr__(self, "direction", np.asarray(self.direction, dtype=np.float64).reshape(3, 3))

    @classmethod
    def of(cls, grid: GridLike) -> "Geometry":
        """The geometry of a :class:`Volume`, a :class:`Geometry` or a SimpleITK image."""
        if isinstance(grid, Geometry):
            return grid
        if isinstance(grid, sitk.Image):
            return cls(tuple(reversed(grid.GetSize())), grid.GetSpacing(), grid.GetOrigin(), grid.GetDirection())
        return cls(grid.array.shape, grid.spacing, grid.origin, grid.direction)

    @property
    def spacing_zyx(self) -> np.ndarray:
        return self.spacing[::-1].copy()

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly form (lists), e.g. for the findings file's ``volume`` block."""
        return {"shape_zyx": list(self.shape_zyx), "spacing": self.spacing.tolist(),
                "origin": self.origin.tolist(), "direction": self.direction.reshape(-1).tolist()}


GridLike = Union[Volume, Geometry, sitk.Image]


def direction_from_angles(angles_deg: Sequence[float] = (0.0, 0.0, 0.0),
                          flip: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """An ITK direction matrix: rotation about LPS x, then y, then z (degrees), applied to
    axes first scaled by ``flip`` (+1 / -1 each). Used to build oblique or flipped grids
    (synthetic scans, tests); ``flip`` with one -1 gives a left-handed (det -1) grid."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx @ np.diag(np.asarray(flip, dtype=np.float64))


def _index_matrix(geometry: Geometry) -> np.ndarray:
    """3x3 matrix M with ``world - origin = M @ [i, j, k]``."""
    return geometry.direction * geometry.spacing[None, :]


def index_to_world(grid: GridLike, index_zyx: np.ndarray) -> np.ndarray:
    """Continuous ``[z, y, x]`` indices ``[N, 3]`` (or one ``[3]``) -> LPS mm points of the same shape."""
    g = Geometry.of(grid)
    idx = np.asarray(index_zyx, dtype=np.float64)
    ijk = idx[..., ::-1]
    return g.origin + ijk @ _index_matrix(g).T


def world_to_index(grid: GridLike, points_lps: np.ndarray) -> np.ndarray:
    """LPS mm points ``[N, 3]`` (or one ``[3]``) -> continuous ``[z, y, x]`` indices of the same shape."""
    g = Geometry.of(grid)
    pts = np.asarray(points_lps, dtype=np.float64)
    ijk = (pts - g.origin) @ np.linalg.inv(_index_matrix(g)).T
    return ijk[..., ::-1].copy()


def isotropic_geometry(grid: GridLike, spacing: float = 1.0) -> Geometry:
    """The grid :func:`resample_isotropic` produces: same origin and direction, ``spacing`` mm voxels.

    Size along each axis is ``floor((n - 1) * s / spacing) + 1`` so the last sample is not
    beyond the last original voxel centre.
    """
    if not spacing > 0:
        raise ValueError(f"isotropic spacing must be positive, got {spacing}")
    g = Geometry.of(grid)
    extent_zyx = (np.asarray(g.shape_zyx) - 1) * g.spacing_zyx
    # The epsilon keeps an exact multiple (e.g. 99 * 0.5 mm at 0.5 mm) from losing its last sample.
    shape = np.floor(extent_zyx / spacing + 1e-6).astype(int) + 1
    return Geometry(tuple(shape), np.full(3, float(spacing)), g.origin, g.direction)


def resampled_index_to_original(index_zyx: np.ndarray, original: GridLike, resampled: GridLike) -> np.ndarray:
    """Map ``[z, y, x]`` indices of a grid made by :func:`resample_isotropic` back to the original grid."""
    o, r = Geometry.of(original), Geometry.of(resampled)
    _check_shared_frame(o, r)
    return np.asarray(index_zyx, dtype=np.float64) * (r.spacing_zyx / o.spacing_zyx)


def original_index_to_resampled(index_zyx: np.ndarray, original: GridLike, resampled: GridLike) -> np.ndarray:
    """Inverse of :func:`resampled_index_to_original`."""
    o, r = Geometry.of(original), Geometry.of(resampled)
    _check_shared_frame(o, r)
    return np.asarray(index_zyx, dtype=np.float64) * (o.spacing_zyx / r.spacing_zyx)


def _check_shared_frame(a: Geometry, b: Geometry) -> None:
    if not (np.allclose(a.origin, b.origin, atol=1e-6) and np.allclose(a.direction, b.direction, atol=1e-9)):
        raise ValueError("the two grids do not share origin and direction; map through world coordinates instead")


def sub_grid(grid: GridLike, start_zyx: Sequence[int], shape_zyx: Sequence[int]) -> Geometry:
    """The geometry of the crop ``[start : start + shape]`` of ``grid`` (same spacing and direction)."""
    g = Geometry.of(grid)
    origin = index_to_world(g, np.asarray(start_zyx, dtype=np.float64))
    return Geometry(tuple(shape_zyx), g.spacing, origin, g.direction)


# --- SimpleITK bridge ---------------------------------------------------------------------------

def to_sitk(volume: Volume) -> sitk.Image:
    """A SimpleITK image with the volume's pixels (dtype kept) and geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array), isVector=False)
    image.SetSpacing(tuple(float(s) for s in volume.spacing))
    image.SetOrigin(tuple(float(o) for o in volume.origin))
    image.SetDirection(tuple(float(d) for d in volume.direction.reshape(-1)))
    return image


def from_sitk(image: sitk.Image, metadata: Optional[Dict[str, Any]] = None) -> Volume:
    """A :class:`Volume` holding the image's pixels (dtype kept) and geometry; no validation."""
    return Volume(sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(),
                  image.GetDirection(), dict(metadata or {}))


def _reference_image(geometry: Geometry) -> sitk.Image:
    ref = sitk.Image([int(n) for n in reversed(geometry.shape_zyx)], sitk.sitkUInt8)
    ref.SetSpacing(tuple(float(s) for s in geometry.spacing))
    ref.SetOrigin(tuple(float(o) for o in geometry.origin))
    ref.SetDirection(tuple(float(d) for d in geometry.direction.reshape(-1)))
    return ref


_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}


def resample_to_grid(volume: Volume, target: GridLike, interpolator: str = "linear",
                     default_value: float = -1024.0, output_dtype: Optional[np.dtype] = None) -> Volume:
    """Resample ``volume`` onto any ``target`` grid through world coordinates.

    ``interpolator`` is ``"linear"`` for images and ``"nearest"`` for label masks. Samples
    outside the source image get ``default_value`` (air in HU). The output keeps the
    source dtype unless ``output_dtype`` is given; metadata is copied.
    """
    if interpolator not in _INTERPOLATORS:
        raise ValueError(f"interpolator must be one of {sorted(_INTERPOLATORS)}, got {interpolator!r}")
    target_geometry = Geometry.of(target)
    source = to_sitk(volume)
    out_dtype = np.dtype(output_dtype) if output_dtype is not None else volume.array.dtype
    pixel_id = sitk.GetImageFromArray(np.zeros((1, 1, 1), dtype=out_dtype)).GetPixelID()
    resampled = sitk.Resample(source, _reference_image(target_geometry), sitk.Transform(),
                              _INTERPOLATORS[interpolator], float(default_value), pixel_id)
    return from_sitk(resampled, volume.metadata)


def resample_isotropic(volume: Volume, spacing: float = 1.0, interpolator: str = "linear",
                       default_value: float = -1024.0) -> Volume:
    """Resample to ``spacing`` mm isotropic voxels on :func:`isotropic_geometry` (origin, direction kept).

    Use ``interpolator="nearest"`` for masks. Any point maps back exactly through
    :func:`index_to_world` / :func:`world_to_index` or :func:`resampled_index_to_original`.
    """
    return resample_to_grid(volume, isotropic_geometry(volume, spacing), interpolator, default_value)


def apply_crop_affine(affine: np.ndarray, points_zyx: np.ndarray) -> np.ndarray:
    """``[N, 3]`` (z, y, x) crop indices -> LPS mm through a ``[3, 4]`` affine
    (``Preprocessed.crop_to_world_affine``: ``LPS = A[:, :3] @ zyx + A[:, 3]``)."""
    a = np.asarray(affine, dtype=np.float64)
    zyx = np.asarray(points_zyx, dtype=np.float64).reshape(-1, 3)
    return zyx @ a[:, :3].T + a[:, 3]
