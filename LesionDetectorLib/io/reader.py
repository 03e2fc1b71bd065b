"""``read_volume``: any supported CT file or DICOM folder -> validated float32 HU :class:`Volume`.

Supported: a DICOM series folder (or one file of it), MetaImage ``.mhd``/``.raw`` and
``.mha``, NRRD ``.nrrd``/``.nhdr``, NIfTI ``.nii``/``.nii.gz``. Everything is read with
SimpleITK, which converts NIfTI's RAS storage to LPS, so all formats give the same world
coordinates. Header-only checks (dimension, components, size limit, spacing, truncated
MetaImage data) run *before* pixel data is read, so a bad or huge file fails fast.
"""
from __future__ import annotations

import os
from typing import Optional

import SimpleITK as sitk

from ..errors import VolumeError
from ..volume import Volume
from .dicom import TAGS, read_dicom_series
from .metaimage import check_metaimage
from .nifti import check_nifti
from .validate import check_dimensions, check_geometry, check_resampled_size, validate_volume

SUPPORTED_FORMATS = "a DICOM series folder, .mhd/.raw, .mha, .nrrd, .nii or .nii.gz"

_FORMAT_BY_SUFFIX = {".mhd": "mhd", ".mha": "mha", ".nrrd": "nrrd", ".nhdr": "nrrd",
                     ".nii": "nifti", ".nii.gz": "nifti", ".dcm": "dicom"}

def file_format(path: str) -> str:
    """Format name from the file name (``"mhd"``, ``"nifti"``...), ``""`` when unknown."""
    lower = str(path).lower()
    for suffix in sorted(_FORMAT_BY_SUFFIX, key=len, reverse=True):
        if lower.endswith(suffix):
            return _FORMAT_BY_SUFFIX[suffix]
    return ""


def _check_detached_data(path: str, fmt: str, source: str) -> None:
    """The data files a detached NRRD header (``.nhdr``) or an Analyze/NIfTI ``.hdr`` names must be
    regular files: ITK would block forever on a FIFO and read a device without end."""
    names = []
    lower = path.lower()
    if fmt == "nrrd":
        with open(path, "rb") as f:
            lines = f.read(1 << 16).decode("latin-1").splitlines()
        for i, line in enumerate(lines):
            key, sep, value = line.partition(":")
            if not sep or key.strip().lower() not in ("data file", "datafile"):
                continue
            value = value.lstrip("=").strip()
            if value.upper().startswith("LIST"):
                names = [n.strip() for n in lines[i + 1:] if n.strip()]
            elif "%" not in value:  # a numbered pattern: ITK checks each file
                names = [value]
            break
    elif lower.endswith(".hdr"):
        names = [os.path.basename(path)[:-4] + ext for ext in (".img", ".img.gz")]
        names = [n for n in names if os.path.lexists(os.path.join(os.path.dirname(path), n))][:1]
    for name in names:
        data = name if os.path.isabs(name) else os.path.join(os.path.dirname(path), name)
        if not os.path.exists(data):
            raise VolumeError(f"{source}: its pixel data file '{data}' is missing.")
        if not os.path.isfile(data):
            raise VolumeError(f"{source}: its pixel data file '{data}' is not a regular file (a folder, FIFO or "
                              "device); it was not opened.")


def _is_dicom_file(path: str) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    with open(path, "rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


def _read_image_file(path: str, allow_non_ct: bool) -> Volume:
    source = f"The file '{path}'"
    fmt = file_format(path)
    if fmt in ("mhd", "mha"):
        check_metaimage(path, source)  # before ITK, which trusts a lying header
    elif fmt == "nifti":
        check_nifti(path, source)  # ITK fills a truncated NIfTI with zeros
    else:
        _check_detached_data(path, fmt, source)
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise VolumeError(f"{source} is not an image file that can be read "
                          f"(supported: {SUPPORTED_FORMATS}).") from exc
    if _is_dicom_file(path) or reader.HasMetaDataKey(TAGS["SeriesInstanceUID"]):
        # One file of a DICOM series: load the series it belongs to, as a viewer would.
        uid = reader.GetMetaData(TAGS["SeriesInstanceUID"]).strip() if reader.HasMetaDataKey(TAGS["SeriesInstanceUID"]) else None
        return read_dicom_series(os.path.dirname(path) or ".", uid, allow_non_ct)

    size = reader.GetSize()
    check_dimensions(tuple(reversed(size)), reader.GetNumberOfComponents(), source)
    check_geometry(reader.GetSpacing(), reader.GetDirection(), reader.GetOrigin(), source)
    check_resampled_size(tuple(reversed(size)), reader.GetSpacing(), source)
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise VolumeError(f"{source} could not be read: its pixel data is truncated or corrupt.") from exc
    metadata = {"source": os.path.abspath(path), "format": fmt or "unknown"}
    return Volume(sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(),
                  image.GetDirection(), metadata)


def read_volume(path, series_uid: Optional[str] = None, allow_non_ct: bool = False) -> Volume:
    """Read a CT volume and validate it.

    Args:
        path: a DICOM series folder (or one of its files), ``.mhd``, ``.mha``, ``.nrrd``,
            ``.nii`` or ``.nii.gz``.
        series_uid: which series to load when a folder holds several (else they are listed
            in the error).
        allow_non_ct: accept series whose Modality is not CT.

    Returns:
        :class:`Volume` with float32 HU ``array[z, y, x]``, ITK/LPS geometry and metadata
        (``source``, ``format`` and for DICOM the UIDs, ``dicom_files``, ``sop_instance_uids``).

    Raises:
        VolumeError: the message names the cause (missing path, not an image, 2-D, 4-D,
            truncated data, several series, not CT, bad spacing, NaN, too large).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        if os.path.islink(path):
            raise VolumeError(f"The path '{path}' is a broken symbolic link or a link loop.")
        raise VolumeError(f"The path '{path}' does not exist.")
    if not os.path.isdir(path) and not os.path.isfile(path):
        # A FIFO or device would block the reader forever or yield endless bytes.
        raise VolumeError(f"The path '{path}' is not a regular file or folder (a FIFO, device or socket); "
                          "it was not opened.")
    if os.path.isdir(path):
        volume = read_dicom_series(path, series_uid, allow_non_ct)
    else:
        volume = _read_image_file(path, allow_non_ct)
    validate_volume(volume, allow_non_ct=allow_non_ct)
    return volume
