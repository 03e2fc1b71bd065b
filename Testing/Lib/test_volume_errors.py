"""Every refused input gives a VolumeError whose message names the cause; nothing half-made."""
import os

import numpy as np
import pytest
import SimpleITK as sitk

from LesionDetectorLib.errors import VolumeError
from LesionDetectorLib.io import MAX_VOXELS, read_volume, validate_volume, write_volume
from LesionDetectorLib.volume import Volume

pydicom = pytest.importorskip("pydicom")


def _ct(shape=(5, 8, 9), spacing=(0.8, 0.8, 1.0), **meta):
    return Volume(np.zeros(shape, np.float32), spacing, (0, 0, 0), np.eye(3), dict(meta))


def test_missing_path(tmp_path):
    with pytest.raises(VolumeError, match="does not exist"):
        read_volume(tmp_path / "nowhere.mhd")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(VolumeError, match="No DICOM images were found"):
        read_volume(tmp_path)


def test_non_image_file(tmp_path):
    path = tmp_path / "report.pdf"
    path.write_bytes(b"%PDF-1.4 definitely not a CT")
    with pytest.raises(VolumeError, match="not an image file"):
        read_volume(path)


def test_2d_image_file(tmp_path):
    sitk.WriteImage(sitk.Image(32, 32, sitk.sitkInt16), str(tmp_path / "slice.nrrd"))
    with pytest.raises(VolumeError, match="single 2-D image"):
        read_volume(tmp_path / "slice.nrrd")


def test_single_real_dicom_slice_is_2d(tmp_path):
    from pydicom.data import get_testdata_file
    import shutil
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "CT_small.dcm")
    with pytest.raises(VolumeError, match="single 2-D image"):
        read_volume(tmp_path / "CT_small.dcm")


def test_4d_image(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.int16), isVector=False), str(tmp_path / "cine.nrrd"))
    with pytest.raises(VolumeError, match="4-D"):
        read_volume(tmp_path / "cine.nrrd")


def test_multi_component_image(tmp_path):
    rgb = sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "colour.nrrd"))
    with pytest.raises(VolumeError, match="3 values per voxel"):
        read_volume(tmp_path / "colour.nrrd")


def test_truncated_raw(tmp_path):
    write_volume(_ct(), tmp_path / "scan.mhd")
    with open(tmp_path / "scan.raw", "r+b") as f:
        f.truncate(100)
    with pytest.raises(VolumeError, match="truncated"):
        read_volume(tmp_path / "scan.mhd")


def test_missing_raw(tmp_path):
    write_volume(_ct(), tmp_path / "scan.mhd")
    os.remove(tmp_path / "scan.raw")
    with pytest.raises(VolumeError, match="pixel data file .* is missing"):
        read_volume(tmp_path / "scan.mhd")


def test_several_series_without_choice(tmp_path, write_dicom_series):
    uid_a, _ = write_dicom_series(tmp_path, _ct(), prefix="A")
    uid_b, _ = write_dicom_series(tmp_path, _ct(), prefix="B")
    with pytest.raises(VolumeError, match="holds 2 DICOM series; choose one with --series-uid") as info:
        read_volume(tmp_path)
    assert uid_a in str(info.value) and uid_b in str(info.value)
    with pytest.raises(VolumeError, match="is not in"):
        read_volume(tmp_path, series_uid="1.2.3.4")


def test_non_ct_modality_refused_unless_allowed(tmp_path, write_dicom_series):
    write_dicom_series(tmp_path, _ct(), modality="MR")
    with pytest.raises(VolumeError, match="MR series, not CT"):
        read_volume(tmp_path)
    assert read_volume(tmp_path, allow_non_ct=True).metadata["Modality"] == "MR"


def test_thick_slices(tmp_path):
    write_volume(_ct(spacing=(0.7, 0.7, 7.5)), tmp_path / "thick.nrrd")
    with pytest.raises(VolumeError, match="slice spacing of 7.5 mm"):
        read_volume(tmp_path / "thick.nrrd")


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 0.0), (0.7, -0.7, 1.0)])
def test_zero_or_negative_spacing(spacing):
    with pytest.raises(VolumeError, match="spacing must be positive"):
        Volume.from_array(np.zeros((3, 4, 5)), spacing)


def test_non_orthonormal_direction():
    with pytest.raises(VolumeError, match="orientation"):
        Volume.from_array(np.zeros((3, 4, 5)), (1, 1, 1), direction=[1, 0, 0, 0, 2, 0, 0, 0, 1])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_values(tmp_path, bad):
    vol = _ct()
    vol.array[2, 3, 4] = bad
    write_volume(vol, tmp_path / "bad.mha")
    with pytest.raises(VolumeError, match="1 voxels with invalid values"):
        read_volume(tmp_path / "bad.mha")


def test_volume_over_size_limit_fails_before_reading(tmp_path):
    # A header claiming 2048 x 2048 x 1000 voxels with almost no data: the size is refused from the header.
    (tmp_path / "huge.raw").write_bytes(b"\0" * 16)
    (tmp_path / "huge.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 2048 2048 1000\n"
                                       "ElementSpacing = 0.5 0.5 1\nElementType = MET_SHORT\n"
                                       "ElementDataFile = huge.raw\n")
    with pytest.raises(VolumeError, match="too large.*limit of 1,073,741,824 voxels"):
        read_volume(tmp_path / "huge.mhd")
    # in memory too (a broadcast array costs no memory)
    big = Volume(np.broadcast_to(np.float32(0), (MAX_VOXELS // (512 * 512) + 1, 512, 512)), (1, 1, 1), (0, 0, 0),
                 np.eye(3))
    with pytest.raises(VolumeError, match="too large"):
        validate_volume(big)


def test_duplicate_slice_positions(tmp_path, write_dicom_series):
    _, paths = write_dicom_series(tmp_path, _ct(shape=(4, 8, 9)))
    ds = pydicom.dcmread(paths[2])
    ds.ImagePositionPatient = pydicom.dcmread(paths[1]).ImagePositionPatient
    ds.save_as(paths[2])
    with pytest.raises(VolumeError, match="several slices at the same position"):
        read_volume(tmp_path)


def test_missing_slice(tmp_path, write_dicom_series):
    _, paths = write_dicom_series(tmp_path, _ct(shape=(6, 8, 9)))
    os.remove(paths[3])
    with pytest.raises(VolumeError, match="slices are missing"):
        read_volume(tmp_path)
