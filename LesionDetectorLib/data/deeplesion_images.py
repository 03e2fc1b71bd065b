"""Read DeepLesion's ``Images_png`` slices and stack them into a :class:`Volume`.

Layout: ``Images_png/<patient>_<study>_<series>/<slice>.png`` with the slice number written
with at least three digits (``009.png``, ``109.png``, ``1012.png``), the same number that
``DL_info.csv`` uses in ``Key_slice_index`` and ``Slice_range``. Each PNG is a single-channel
**16-bit** image; HU = stored value - 32768.

Geometry. DeepLesion ships no orientation or position, only ``Spacing_mm_px_``
(sx, sy, slice interval). We therefore assume what the data set describes, axial slices in
the usual radiological storage order, and give every volume an identity direction in LPS
(column -> +x = patient left, row -> +y = posterior, slice number -> +z) with its origin at 0
for the first stacked slice: ``world = (i * sx, j * sy, k * sz)``. The original slice number of
voxel plane ``k`` is ``metadata["first_slice"] + k``. World coordinates are thus consistent
within one stacked chunk, not across chunks or with the scanner's patient coordinates.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import VolumeError
from ..volume import Volume

HU_OFFSET = 32768


def slice_file_name(slice_number: int) -> str:
    """PNG name of a slice number as DeepLesion writes it (``%03d.png``)."""
    return f"{slice_number:03d}.png"


def missing_slices(series_path: Union[str, Path], first: int, last: int) -> List[int]:
    """Slice numbers in ``[first, last]`` whose PNG is absent from ``series_path`` (one listdir)."""
    try:
        present = set(os.listdir(series_path))
    except OSError:
        return list(range(first, last + 1))
    return [n for n in range(first, last + 1) if slice_file_name(n) not in present]


def read_slice_hu(path: Union[str, Path]) -> np.ndarray:
    """Read one DeepLesion slice as HU.

    Returns a ``[y, x]`` float32 array (rows, columns). Raises :class:`VolumeError` naming the
    file when it is missing, unreadable, not single-channel 2-D, or not 16-bit unsigned: an
    8-bit PNG (e.g. the windowed ``Images_png_wn`` copies) has lost the HU scale for good.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise VolumeError(f"DeepLesion slice is missing: {path}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise VolumeError(f"DeepLesion slice cannot be read as PNG: {path} ({_first_line(exc)})") from None
    if reader.GetDimension() != 2 or reader.GetNumberOfComponents() != 1:
        raise VolumeError(f"DeepLesion slice {path} must be a single-channel 2-D image, found "
                          f"{reader.GetDimension()}-D with {reader.GetNumberOfComponents()} channel(s)")
    if reader.GetPixelID() != sitk.sitkUInt16:
        kind = sitk.GetPixelIDValueAsString(reader.GetPixelID())
        raise VolumeError(f"DeepLesion slice {path} is {kind}, not 16-bit unsigned: HU cannot be "
                          f"recovered (use Images_png, not 8-bit windowed copies)")
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise VolumeError(f"DeepLesion slice cannot be read: {path} ({_first_line(exc)})") from None
    stored = sitk.GetArrayViewFromImage(image)
    return (stored.astype(np.int32) - HU_OFFSET).astype(np.float32)


def read_series_volume(
    series_path: Union[str, Path],
    first: int,
    last: int,
    spacing: Sequence[float],
    image_size: Optional[Tuple[int, int]] = None,
) -> Volume:
    """Stack slices ``first..last`` (inclusive) of one series into a HU volume.

    Args:
        series_path: ``Images_png/<patient>_<study>_<series>``.
        first, last: slice numbers as in ``DL_info.csv`` ``Slice_range``.
        spacing: ``(sx, sy, slice_interval)`` mm (``Spacing_mm_px_``).
        image_size: expected in-plane size from ``Image_size``; checked as an unordered pair
            because the DeepLesion readme does not state its order (the images are square).

    Returns a :class:`Volume` with ``array`` ``[last-first+1, rows, cols]`` float32 HU, the
    geometry described in this module's docstring, and ``metadata`` keys ``source``,
    ``Modality`` ("CT"), ``first_slice`` and ``last_slice``.

    Raises :class:`VolumeError` naming the file for a missing slice, a slice of another size,
    or any unreadable / non-16-bit slice: a series is never stacked with a hole in it.
    """
    series_path = Path(series_path)
    if last < first:
        raise VolumeError(f"empty DeepLesion slice range {first}..{last} for {series_path}")
    absent = missing_slices(series_path, first, last)
    if absent:
        raise VolumeError(f"DeepLesion series {series_path} lacks slice(s) {_ranges(absent)} of "
                          f"{first}..{last}, e.g. {series_path / slice_file_name(absent[0])}")
    planes = []
    for number in range(first, last + 1):
        path = series_path / slice_file_name(number)
        plane = read_slice_hu(path)
        if planes and plane.shape != planes[0].shape:
            raise VolumeError(f"DeepLesion slice {path} is {plane.shape[::-1]} pixels, other slices "
                              f"of the series are {planes[0].shape[::-1]}")
        planes.append(plane)
    if image_size is not None and sorted(planes[0].shape) != sorted(image_size):
        raise VolumeError(f"DeepLesion series {series_path}: slices are {planes[0].shape[::-1]} "
                          f"pixels but DL_info.csv says Image_size {tuple(image_size)}")
    return Volume(
        array=np.stack(planes),
        spacing=np.asarray(spacing, dtype=np.float64),
        origin=np.zeros(3),
        direction=np.eye(3),
        metadata={"source": str(series_path), "Modality": "CT",
                  "first_slice": int(first), "last_slice": int(last)},
    )


def _ranges(numbers: List[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"`` so that messages stay short for long gaps."""
    spans, start, prev = [], numbers[0], numbers[0]
    for n in numbers[1:] + [None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        spans.append(f"{start}-{prev}" if prev != start else f"{start}")
        if n is not None:
            start = prev = n
    return ", ".join(spans)


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__
