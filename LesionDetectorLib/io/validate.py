"""Checks that a volume is a usable chest CT, with messages a radiologist understands.

Limits (documented here, enforced for every input path: files, DICOM, Slicer nodes):

* 3-D, one value per voxel, at least 2 voxels along every axis (an axis of size 0 is an
  empty image).
* Spacing finite and > 0 along every axis; slice spacing (z) at most
  :data:`MAX_SLICE_SPACING_MM` = 5 mm and pixel spacing (x, y) at most
  :data:`MAX_PIXEL_SPACING_MM` = 5 mm — coarser voxels hide the small nodules the
  detector looks for (LUNA16 itself excludes scans thicker than 2.5 mm).
* The 1 mm isotropic grid the detector resamples to has at most :data:`MAX_VOXELS` voxels,
  computed from the header before that grid is allocated.
* Direction cosines finite and orthonormal (a rotation, possibly with a flip).
* At most :data:`MAX_VOXELS` = 2**30 voxels (e.g. 1024 x 1024 x 1024, or 512 x 512 x 4096):
  4 GiB as float32 HU, the working copy every later stage needs.
* No NaN / infinite values.
* Modality: when the metadata names one, it must be ``CT`` unless ``allow_non_ct=True``
  (files without a modality tag — .mhd, .nrrd, .nii — are assumed to be CT).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..errors import VolumeError

MAX_SLICE_SPACING_MM = 5.0
MAX_PIXEL_SPACING_MM = 5.0
MAX_VOXELS = 2 ** 30
# Detection needs room for a lung: a scan shorter than this along any axis cannot hold one.
MIN_EXTENT_MM = 30.0
_DETECTION_SPACING_MM = 1.0
_ORTHONORMAL_TOLERANCE = 1e-3


def describe_source(volume) -> str:
    source = volume.metadata.get("source") if hasattr(volume, "metadata") else None
    return f"'{source}'" if source else "The scan"


def check_dimensions(size_zyx: Sequence[int], components: int = 1, source: str = "The scan") -> None:
    """Refuse 2-D, 4-D and multi-component images before any pixel data is read."""
    size = [int(n) for n in size_zyx]
    if components != 1:
        raise VolumeError(f"{source} has {components} values per voxel (colour or vector image); "
                          "a CT scan has one grey value (HU) per voxel.")
    if len(size) == 2 or (len(size) == 3 and size[0] == 1):
        raise VolumeError(f"{source} is a single 2-D image ({'x'.join(map(str, size))}), not a 3-D CT volume; "
                          "load the whole series.")
    if len(size) != 3:
        raise VolumeError(f"{source} is a {len(size)}-D image ({'x'.join(map(str, size))}); "
                          "a 3-D CT volume is needed (4-D / time series are not supported — extract one phase).")
    if min(size) < 1:
        raise VolumeError(f"{source} is empty: its size is {'x'.join(map(str, size))} (an axis of size 0, "
                          "e.g. DimSize 0 or Rows / Columns 0 in its header), so it holds no image.")
    if min(size) < 2:
        raise VolumeError(f"{source} has only one voxel along an axis ({'x'.join(map(str, size))}), "
                          "so it is not a 3-D CT volume.")
    n = int(np.prod(np.asarray(size, dtype=np.int64)))
    if n > MAX_VOXELS:
        raise VolumeError(f"{source} is too large: {'x'.join(map(str, size))} = {n:,} voxels exceeds the limit of "
                          f"{MAX_VOXELS:,} voxels (4 GiB as float32); crop or downsample it first.")


def check_geometry(spacing: Sequence[float], direction: Optional[Sequence[float]] = None,
                   origin: Optional[Sequence[float]] = None, source: str = "The scan") -> None:
    """Spacing positive and finite, slice spacing <= 5 mm, orthonormal direction, finite origin."""
    sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise VolumeError(f"{source} has an invalid voxel spacing {tuple(sp.tolist())} mm: "
                          "spacing must be positive (zero or negative spacing means a broken header).")
    if sp.size >= 2 and max(sp[:2]) > MAX_PIXEL_SPACING_MM:
        raise VolumeError(f"{source} has a pixel spacing of {sp[0]:g} x {sp[1]:g} mm; at most "
                          f"{MAX_PIXEL_SPACING_MM:g} mm is supported because coarser pixels hide small nodules "
                          "(is the header's spacing in cm, or is this a thumbnail?).")
    if sp[-1] > MAX_SLICE_SPACING_MM:
        raise VolumeError(f"{source} has a slice spacing of {sp[-1]:g} mm; at most {MAX_SLICE_SPACING_MM:g} mm is "
                          "supported because thicker slices hide small nodules. Use a thin-slice reconstruction.")
    if origin is not None and not np.all(np.isfinite(np.asarray(origin, dtype=np.float64))):
        raise VolumeError(f"{source} has an invalid (non-finite) image position / origin.")
    if direction is not None:
        d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        if not np.all(np.isfinite(d)) or not np.allclose(d.T @ d, np.eye(3), atol=_ORTHONORMAL_TOLERANCE):
            raise VolumeError(f"{source} has an invalid image orientation (direction cosines are not orthonormal).")


def resampled_voxels(size_zyx: Sequence[int], spacing_xyz: Sequence[float],
                     spacing_mm: float = _DETECTION_SPACING_MM) -> int:
    """Voxels of the isotropic grid a scan is resampled to (the rule of ``coordinates.isotropic_geometry``)."""
    sizes = np.asarray(size_zyx, dtype=np.float64)[::-1]
    sp = np.asarray(spacing_xyz, dtype=np.float64).reshape(-1)
    n = np.floor((sizes - 1) * sp / spacing_mm) + 1
    return int(np.prod(n))


def check_resampled_size(size_zyx: Sequence[int], spacing_xyz: Sequence[float], source: str = "The scan") -> None:
    """Refuse scans whose 1 mm working grid would exceed :data:`MAX_VOXELS`, before anything is allocated."""
    n = resampled_voxels(size_zyx, spacing_xyz)
    if n > MAX_VOXELS:
        extent = " x ".join(f"{(int(k) - 1) * float(s):.0f}" for k, s in zip(list(size_zyx)[::-1], spacing_xyz))
        raise VolumeError(f"{source} covers {extent} mm, which at the detector's 1 mm grid is {n:,} voxels, more "
                          f"than the limit of {MAX_VOXELS:,}; the header's spacing is wrong or the scan must be "
                          "cropped.")


def check_detectable(volume) -> None:
    """Refuse scans too small to hold lungs (checked before the model runs)."""
    source = describe_source(volume)
    extent = (np.asarray(volume.array.shape[::-1]) - 1) * np.asarray(volume.spacing, dtype=np.float64)
    if np.any(extent < MIN_EXTENT_MM):
        text = " x ".join(f"{e:.0f}" for e in extent)
        raise VolumeError(f"{source} covers only {text} mm; at least {MIN_EXTENT_MM:g} mm along every axis is "
                          "needed to hold a lung (is this a crop or a thumbnail?).")


def check_values(array: np.ndarray, source: str = "The scan") -> None:
    """Refuse NaN / infinite voxels. min/max need no temporary array, so this is cheap on big scans."""
    if np.issubdtype(array.dtype, np.floating):
        lo, hi = array.min(), array.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):
            n_bad = int(np.count_nonzero(~np.isfinite(array)))
            raise VolumeError(f"{source} contains {n_bad:,} voxels with invalid values (NaN or infinity); "
                              "the file is corrupt or was produced by a failed computation.")


def check_modality(modality: Optional[str], allow_non_ct: bool, source: str = "The scan") -> None:
    if modality and modality.strip().upper() != "CT" and not allow_non_ct:
        raise VolumeError(f"{source} is a {modality.strip()} series, not CT; the detector was trained on CT "
                          "Hounsfield units only (to override at your own risk: --allow-non-ct on the command line, "
                          "allow_non_ct=True in Python).")


def validate_volume(volume, allow_non_ct: bool = False) -> None:
    """Raise :class:`VolumeError` naming the problem when ``volume`` is not a usable CT; return None otherwise."""
    source = describe_source(volume)
    array = np.asarray(volume.array)
    check_dimensions(array.shape, 1, source)
    check_geometry(volume.spacing, volume.direction, volume.origin, source)
    check_resampled_size(array.shape, volume.spacing, source)
    check_modality(volume.metadata.get("Modality"), allow_non_ct, source)
    check_values(array, source)
