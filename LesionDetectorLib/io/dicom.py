"""DICOM series reading with SimpleITK / GDCM.

GDCM sorts the slices by their position along the slice normal and applies
RescaleSlope / RescaleIntercept, so the returned array is in HU. We add what a
radiology workflow needs on top: choosing among several series in one folder, refusing
non-CT series, duplicated or missing slices, and keeping the sorted file list and
SOPInstanceUIDs so a DICOM SR can reference the exact images the detector saw.
"""
from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Optional

import numpy as np
import SimpleITK as sitk

from ..errors import VolumeError
from ..volume import Volume
from .validate import check_dimensions, check_geometry, check_modality

log = logging.getLogger("lesion-detector.io")

# DICOM tags as GDCM spells them in SimpleITK metadata dictionaries.
TAGS = {
    "SeriesInstanceUID": "0020|000e",
    "StudyInstanceUID": "0020|000d",
    "StudyDate": "0008|0020",         # follow-up comparison: interval between two studies
    "FrameOfReferenceUID": "0020|0052",
    "Modality": "0008|0060",
    "PatientID": "0010|0020",
    "SeriesDescription": "0008|103e",
    "SOPClassUID": "0008|0016",
}
_SOP_INSTANCE_UID = "0008|0018"
_IMAGE_POSITION = "0020|0032"
_IMAGE_ORIENTATION = "0020|0037"
# Relative variation of the slice-to-slice distance above which slices are called missing.
_SPACING_TOLERANCE = 0.1


@dataclass(frozen=True)
class SeriesInfo:
    """One series found in a folder (what the user chooses from)."""

    series_uid: str
    n_files: int
    modality: str
    description: str

    def __str__(self) -> str:
        return f"{self.series_uid} ({self.modality or '?'}, {self.n_files} files, '{self.description}')"


def _header(path: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.LoadPrivateTagsOff()
    reader.ReadImageInformation()
    return reader


def _tag(reader, key: str, index: Optional[int] = None) -> str:
    if index is None:
        return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""
    return reader.GetMetaData(index, key).strip() if reader.HasMetaDataKey(index, key) else ""


@contextmanager
def _scannable(folder: str) -> Iterator[str]:
    """``folder``, or a private view of only its regular files when it also holds FIFOs, devices,
    sockets or broken links: with one of those present GDCM silently returns a random subset of
    a series' files (seen with ITK 5.4)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        yield folder
        return
    regular = []
    special = []
    for entry in entries:
        try:
            mode = os.stat(entry.path).st_mode
        except OSError:
            special.append(entry.name)
            continue
        if stat.S_ISREG(mode):
            regular.append(entry)
        elif not stat.S_ISDIR(mode):
            special.append(entry.name)
    if not special:
        yield folder
        return
    log.warning("'%s': %d entries that are not regular files (%s) were skipped", folder, len(special),
                ", ".join(sorted(special)[:3]))
    view = tempfile.mkdtemp(prefix="lesion-detector-dicom-")
    try:
        for entry in regular:
            os.symlink(os.path.abspath(entry.path), os.path.join(view, entry.name))
        yield view
    finally:
        shutil.rmtree(view, ignore_errors=True)


def _series_files(folder: str, view: str, uid: str) -> List[str]:
    """The files of series ``uid`` found in ``view``, as paths inside ``folder``."""
    return [os.path.join(folder, os.path.basename(f))
            for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(view, uid)]


def list_dicom_series(folder: str) -> List[SeriesInfo]:
    """The DICOM series directly inside ``folder`` (subfolders are not searched)."""
    with _scannable(str(folder)) as view:
        return _list_series(str(folder), view)


def _list_series(folder: str, view: str) -> List[SeriesInfo]:
    infos = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(view):
        files = _series_files(folder, view, uid)
        try:
            first = _header(files[0])
            modality, description = _tag(first, TAGS["Modality"]), _tag(first, TAGS["SeriesDescription"])
        except RuntimeError:
            modality, description = "", ""
        infos.append(SeriesInfo(uid, len(files), modality, description))
    return infos


def _choose_series(folder: str, view: str, series_uid: Optional[str]) -> str:
    series = _list_series(folder, view)
    if not series and _count_dicom_files(folder):
        raise VolumeError(f"The folder '{folder}' holds {_count_dicom_files(folder)} DICOM file(s) but no image: "
                          "none has pixel data (no PixelData element; e.g. a report, a presentation state or "
                          "a header-only export). Select the folder that holds the CT series' image files.")
    if not series:
        raise VolumeError(f"No DICOM images were found in the folder '{folder}' (subfolders are not searched). "
                          "Select the folder that holds the CT series' files.")
    listing = "; ".join(str(s) for s in series)
    if series_uid is not None:
        if series_uid not in {s.series_uid for s in series}:
            raise VolumeError(f"The series {series_uid} is not in '{folder}'. Series found: {listing}.")
        return series_uid
    if len(series) > 1:
        raise VolumeError(f"The folder '{folder}' holds {len(series)} DICOM series; choose one with --series-uid "
                          "(series_uid= in Python). "
                          f"Series found: {listing}.")
    return series[0].series_uid


def _count_dicom_files(folder: str) -> int:
    """Regular files directly in ``folder`` that carry the DICOM Part 10 'DICM' marker."""
    n = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        try:
            if not entry.is_file():
                continue
            with open(entry.path, "rb") as fh:
                fh.seek(128)
                n += fh.read(4) == b"DICM"
        except OSError:
            continue
    return n


def _check_slice_positions(positions: np.ndarray, normal: np.ndarray, source: str) -> None:
    """Refuse duplicated slice positions (several phases / echoes mixed) and gaps (missing slices)."""
    along = positions @ normal
    steps = np.diff(along)
    if np.any(np.abs(steps) < 1e-3):
        raise VolumeError(f"{source} has several slices at the same position; it probably mixes several "
                          "acquisitions or phases (a 4-D series). Split the series and load one phase.")
    typical = np.median(np.abs(steps))
    if np.max(np.abs(np.abs(steps) - typical)) > _SPACING_TOLERANCE * typical + 1e-3:
        raise VolumeError(f"{source} has uneven slice spacing ({np.min(np.abs(steps)):.3g} to "
                          f"{np.max(np.abs(steps)):.3g} mm): slices are missing or the series is incomplete.")


def read_dicom_series(folder: str, series_uid: Optional[str] = None, allow_non_ct: bool = False) -> Volume:
    """Read one CT series from ``folder`` as a float32 HU :class:`Volume`.

    Metadata: ``source``, ``format`` (``"dicom"``), the UIDs / Modality / PatientID /
    SeriesDescription / SOPClassUID of :data:`TAGS` when present, ``dicom_files`` (paths sorted
    by slice position, matching array index z) and ``sop_instance_uids`` (same order).
    """
    folder = str(folder)
    with _scannable(folder) as view:
        uid = _choose_series(folder, view, series_uid)
        files = _series_files(folder, view, uid)
    source = f"The DICOM series {uid} in '{folder}'"

    # Cheap checks on the first header before reading every slice's pixels.
    try:
        first = _header(files[0])
    except RuntimeError as exc:
        raise VolumeError(f"{source} cannot be read: {exc}") from exc
    check_modality(_tag(first, TAGS["Modality"]), allow_non_ct, source)
    size = first.GetSize()
    frames = size[2] if len(size) == 3 else 1
    if frames == 1 and not _tag(first, _IMAGE_ORIENTATION):
        # GDCM would assume an axial identity orientation: positions in the patient would be invented.
        raise VolumeError(f"{source} has no ImageOrientationPatient, so the orientation of its slices in the "
                          "patient is unknown; it cannot be read with trustworthy geometry.")
    check_dimensions((len(files) * frames, size[1], size[0]), first.GetNumberOfComponents(), source)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise VolumeError(f"{source} could not be read (corrupt file or slices of different size): "
                          f"{str(exc).strip().splitlines()[-1]}") from exc

    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    positions = []
    for i in range(len(files)):
        text = _tag(reader, _IMAGE_POSITION, i)
        try:
            positions.append([float(v) for v in text.split("\\")] if text else None)
        except ValueError:
            positions.append(None)
    if frames == 1:
        missing = [os.path.basename(f) for f, p in zip(files, positions) if p is None or len(p) != 3]
        if missing:
            # Without it GDCM makes up the origin and the slice spacing (1 mm) and gaps go unnoticed.
            raise VolumeError(f"{source}: {len(missing)} of {len(files)} slices have no (readable) "
                              f"ImagePositionPatient (first: {missing[0]}), so the slice positions, spacing and "
                              "completeness of the series are unknown.")
    if frames == 1 and len(files) > 1:
        try:
            _check_slice_positions(np.asarray(positions, dtype=np.float64), direction[:, 2], source)
        except VolumeError as exc:
            # GDCM leaves out files it cannot parse: a truncated slice shows up as a gap.
            listed = sum(info.n_files for info in list_dicom_series(folder))
            unread = _count_dicom_files(folder) - listed
            if unread > 0:
                raise VolumeError(f"{exc} {unread} DICOM file(s) in the folder could not be read as part of a "
                                  "series (corrupt or truncated?).") from exc
            raise
    check_geometry(image.GetSpacing(), direction, image.GetOrigin(), source)

    metadata = {"source": os.path.abspath(folder), "format": "dicom"}
    for name, tag in TAGS.items():
        value = _tag(reader, tag, 0)
        if value:
            metadata[name] = value
    metadata["dicom_files"] = [os.path.abspath(f) for f in files]
    metadata["sop_instance_uids"] = [_tag(reader, _SOP_INSTANCE_UID, i) for i in range(len(files))]

    # Values (NaN / inf) are checked by read_volume's validate_volume, once.
    return Volume(sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(), direction, metadata)
