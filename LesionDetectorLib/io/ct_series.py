"""Write a :class:`Volume` as a CT DICOM series (one file per slice) with SimpleITK / GDCM.

Used by ``lesion-detector demo`` (so the synthetic scan opens in any DICOM viewer and the
DICOM SR export has real instances to reference) and by tests. Geometry is kept exactly:
ImagePositionPatient / ImageOrientationPatient are LPS, like the volume. Pixels are stored
as int16 HU (RescaleSlope 1, RescaleIntercept 0). The folder is filled through a staging
folder renamed into place, so a reader never sees half a series.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from ..volume import Volume

_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _uid() -> str:
    import uuid

    return f"2.25.{uuid.uuid4().int}"


def write_ct_series(volume: Volume, folder, patient_id: str = "LESIONDETECTOR-DEMO", patient_name: str = "Synthetic^Demo",
                    series_description: str = "LesionDetector synthetic CT",
                    series_uid: Optional[str] = None, frame_of_reference_uid: Optional[str] = None) -> Path:
    """Write ``volume`` into the new folder ``folder`` (must not exist). Returns the folder."""
    dest = Path(folder)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists; choose a new folder for the DICOM series")
    dest.parent.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or _uid()
    frame_uid = frame_of_reference_uid or _uid()
    study_uid = _uid()
    d = volume.direction  # columns = LPS directions of i, j, k
    orientation = "\\".join(f"{v:.10g}" for v in (*d[:, 0], *d[:, 1]))
    hu = np.clip(np.rint(volume.array), -32768, 32767).astype(np.int16)
    staging = Path(tempfile.mkdtemp(prefix=".writing-dicom-", dir=dest.parent))
    try:
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for k in range(hu.shape[0]):
            image = sitk.GetImageFromArray(hu[k][None])
            position = volume.origin + d[:, 2] * volume.spacing[2] * k
            image.SetSpacing((float(volume.spacing[0]), float(volume.spacing[1]), float(volume.spacing[2])))
            image.SetOrigin(tuple(float(v) for v in position))
            image.SetDirection(tuple(float(v) for v in d.reshape(-1)))
            tags = {
                "0008|0016": _CT_IMAGE_STORAGE, "0008|0018": _uid(), "0008|0060": "CT",
                "0008|103e": series_description, "0010|0010": patient_name, "0010|0020": patient_id,
                "0020|000d": study_uid, "0020|000e": series_uid, "0020|0052": frame_uid,
                "0020|0011": "1", "0020|0013": str(k + 1),
                "0020|0032": "\\".join(f"{v:.10g}" for v in position), "0020|0037": orientation,
                "0028|0030": f"{volume.spacing[1]:.10g}\\{volume.spacing[0]:.10g}",
                "0018|0050": f"{volume.spacing[2]:.10g}",
                "0028|1052": "0", "0028|1053": "1",
            }
            for key, value in tags.items():
                image.SetMetaData(key, value)
            writer.SetFileName(str(staging / f"slice_{k:04d}.dcm"))
            writer.Execute(image)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest
