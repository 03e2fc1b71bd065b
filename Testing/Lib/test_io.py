"""read_volume / write_volume round trips, atomic writes, DICOM series (written and real headers)."""
import os

import numpy as np
import pytest
import SimpleITK as sitk

from LesionDetectorLib.coordinates import direction_from_angles as rotation, index_to_world
from LesionDetectorLib.errors import VolumeError
from LesionDetectorLib.io import list_dicom_series, read_volume, write_volume
from LesionDetectorLib.volume import Volume


pydicom = pytest.importorskip("pydicom")


def _scan(direction=None, shape=(6, 10, 12)):
    rng = np.random.default_rng(0)
    arr = rng.integers(-1024, 1500, size=shape).astype(np.float32)
    return Volume(arr, (0.7, 0.8, 1.25), (-100.0, 50.5, -300.25), np.eye(3) if direction is None else direction)


@pytest.mark.parametrize("suffix", [".mhd", ".mha", ".nrrd", ".nii", ".nii.gz"])
def test_write_read_round_trip(tmp_path, suffix):
    vol = _scan(rotation((0.0, 10.0, 20.0)))
    path = write_volume(vol, tmp_path / f"scan{suffix}")
    back = read_volume(path)
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, vol.array)
    tol = 1e-3 if "nii" in suffix else 1e-9  # NIfTI stores geometry as float32
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=tol)
    np.testing.assert_allclose(back.origin, vol.origin, atol=tol)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-5)
    assert back.metadata["source"] == os.path.abspath(path)
    assert back.metadata["format"] == {".mhd": "mhd", ".mha": "mha", ".nrrd": "nrrd"}.get(suffix, "nifti")


def test_mhd_write_is_atomic_and_names_its_raw(tmp_path):
    vol = _scan()
    write_volume(vol, tmp_path / "scan.mhd")
    assert sorted(os.listdir(tmp_path)) == ["scan.mhd", "scan.raw"]  # no staging folder left behind
    header = (tmp_path / "scan.mhd").read_text()
    assert "ElementDataFile = scan.raw" in header
    vol.array = vol.array + 1  # overwrite in place: the new data replaces the old
    write_volume(vol, tmp_path / "scan.mhd")
    np.testing.assert_array_equal(read_volume(tmp_path / "scan.mhd").array, vol.array)
    assert sorted(os.listdir(tmp_path)) == ["scan.mhd", "scan.raw"]


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(VolumeError, match=r"\.nii\.gz"):
        write_volume(_scan(), tmp_path / "scan.png")
    with pytest.raises(VolumeError, match="3-D"):
        write_volume(Volume(np.zeros((4, 4), np.float32), (1, 1, 1), (0, 0, 0), np.eye(3)), tmp_path / "a.nrrd")
    assert os.listdir(tmp_path) == []


def test_masks_keep_their_integer_type(tmp_path):
    mask = Volume(np.random.default_rng(1).random((5, 6, 7)) > 0.5, (1, 1, 1), (0, 0, 0), np.eye(3))
    image = sitk.ReadImage(write_volume(mask, tmp_path / "mask.nrrd"))
    assert image.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), mask.array.astype(np.uint8))


def test_dicom_series_is_sorted_rescaled_and_referenced(tmp_path, write_dicom_series):
    vol = _scan(rotation((8.0, -5.0, 15.0)))
    uid, paths = write_dicom_series(tmp_path / "series", vol)
    back = read_volume(tmp_path / "series")
    # stored = HU + 1024 with RescaleIntercept -1024: the read values are HU again
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-6)
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-5)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-5)
    meta = back.metadata
    assert meta["format"] == "dicom" and meta["Modality"] == "CT" and meta["SeriesInstanceUID"] == uid
    assert meta["StudyInstanceUID"] and meta["FrameOfReferenceUID"] and meta["PatientID"] == "1CT1"
    # file names run against slice order, yet files are listed in slice (array z) order
    assert meta["dicom_files"] == [os.path.abspath(p) for p in paths]
    assert meta["sop_instance_uids"] == [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths]


def test_dicom_flipped_slice_order_keeps_world_positions(tmp_path, write_dicom_series):
    # slices stacked against the row x column normal: the reader re-sorts along the normal,
    # so the array flips in z, yet every voxel keeps its world position.
    vol = _scan(rotation((0.0, 0.0, 10.0), flip=(1, 1, -1)))
    write_dicom_series(tmp_path / "series", vol)
    back = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(back.array, vol.array[::-1])
    nz = vol.array.shape[0]
    np.testing.assert_allclose(index_to_world(back, [[0, 2, 3]]), index_to_world(vol, [[nz - 1, 2, 3]]), atol=1e-5)


def test_one_file_of_a_series_loads_the_series(tmp_path, write_dicom_series):
    vol = _scan()
    _, paths = write_dicom_series(tmp_path / "series", vol)
    back = read_volume(paths[2])
    assert back.array.shape == vol.array.shape


def test_series_chosen_by_uid(tmp_path, write_dicom_series):
    a, b = _scan(), _scan(shape=(4, 10, 12))
    b.array = -b.array
    uid_a, _ = write_dicom_series(tmp_path / "mixed", a, prefix="A")
    uid_b, _ = write_dicom_series(tmp_path / "mixed", b, prefix="B")
    assert {s.series_uid: s.n_files for s in list_dicom_series(tmp_path / "mixed")} == {uid_a: 6, uid_b: 4}
    np.testing.assert_array_equal(read_volume(tmp_path / "mixed", series_uid=uid_b).array, b.array)
    np.testing.assert_array_equal(read_volume(tmp_path / "mixed", series_uid=uid_a).array, a.array)


def test_real_ct_header_from_pydicom(tmp_path):
    """pydicom's CT_small.dcm (a real GE CT slice): our HU must equal pydicom's modality LUT."""
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_modality_lut
    from pydicom.uid import generate_uid

    src = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(src)
    folder = tmp_path / "ct"
    folder.mkdir()
    for z in range(3):  # the same real slice at three positions 5 mm apart
        s = pydicom.dcmread(src)
        s.SOPInstanceUID = generate_uid()
        s.file_meta.MediaStorageSOPInstanceUID = s.SOPInstanceUID
        s.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1],
                                  float(ds.ImagePositionPatient[2]) + 5.0 * z]
        s.InstanceNumber = z + 1
        s.save_as(folder / f"slice{z}.dcm")
    back = read_volume(folder)
    expected = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    assert back.array.shape == (3, 128, 128)
    np.testing.assert_array_equal(back.array[1], expected)
    np.testing.assert_allclose(back.spacing, [0.661468, 0.661468, 5.0], atol=1e-5)
    np.testing.assert_allclose(back.origin, [float(v) for v in ds.ImagePositionPatient], atol=1e-4)
    assert back.metadata["SeriesInstanceUID"] == ds.SeriesInstanceUID
    assert back.metadata["SOPClassUID"] == ds.SOPClassUID


def test_from_array_validates_and_accepts_flat_direction():
    d = rotation((0.0, 0.0, 30.0))
    vol = Volume.from_array(np.zeros((3, 4, 5)), (1, 1, 2), (1, 2, 3), tuple(d.reshape(-1)), {"Modality": "MR"})
    np.testing.assert_allclose(vol.direction, d)
    assert vol.array.dtype == np.float32  # non-CT accepted at the Slicer boundary
    with pytest.raises(VolumeError, match="NaN"):
        Volume.from_array(np.full((3, 4, 5), np.nan), (1, 1, 1))
