"""``write_volume``: atomic writes of a :class:`Volume` in the formats SimpleITK writes.

Atomic means a reader never sees a half-written file: the image is written into a
temporary folder next to the destination and then renamed into place (``os.replace`` is
atomic on one file system). A MetaImage ``.mhd`` has a companion ``.raw`` (``.zraw`` when
compressed): it is written under its final name inside the temporary folder, so the
header already names the right data file, and it is moved in *before* the header.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import SimpleITK as sitk

from ..coordinates import to_sitk
from ..errors import VolumeError
from ..volume import Volume
from .reader import file_format

WRITABLE_FORMATS = (".mhd", ".mha", ".nrrd", ".nii", ".nii.gz")


def write_volume(volume: Volume, path, compress: bool = False) -> str:
    """Write ``volume`` (array dtype kept: float32 HU, or uint8 for masks) to ``path``.

    The format follows the suffix: ``.mhd`` (+ ``.raw``), ``.mha``, ``.nrrd``, ``.nii``,
    ``.nii.gz`` (always compressed). Geometry is written in LPS (SimpleITK converts to RAS
    inside NIfTI). Returns the absolute path of the written file.
    """
    path = os.path.abspath(os.fspath(path))
    if not str(path).lower().endswith(WRITABLE_FORMATS):
        raise VolumeError(f"Cannot write '{path}': use one of {', '.join(WRITABLE_FORMATS)}.")
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise VolumeError(f"Cannot write '{path}': the volume must be 3-D, got shape {array.shape}.")
    if array.dtype == np.float64 or array.dtype == np.bool_:
        # float64 doubles file size for no gain on HU; bool is not a SimpleITK pixel type.
        array = array.astype(np.float32 if array.dtype == np.float64 else np.uint8)
    image = to_sitk(Volume(array, volume.spacing, volume.origin, volume.direction, volume.metadata))

    directory, name = os.path.split(path)
    if not os.path.isdir(directory):
        raise VolumeError(f"Cannot write '{path}': the folder '{directory}' does not exist.")
    staging = tempfile.mkdtemp(prefix=".writing-", dir=directory)
    try:
        staged = os.path.join(staging, name)
        sitk.WriteImage(image, staged, compress or name.lower().endswith(".gz"))
        if file_format(path) == "mhd":
            companions = sorted(f for f in os.listdir(staging) if f != name)
            for companion in companions:
                os.replace(os.path.join(staging, companion), os.path.join(directory, companion))
        os.replace(staged, path)
    except RuntimeError as exc:
        raise VolumeError(f"Writing '{path}' failed: {str(exc).strip().splitlines()[-1]}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
