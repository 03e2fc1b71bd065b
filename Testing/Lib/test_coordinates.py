"""World (LPS) <-> index transforms and resampling, against SimpleITK as an independent oracle."""
import numpy as np
import pytest
import SimpleITK as sitk

from LesionDetectorLib.coordinates import (Geometry, index_to_world, isotropic_geometry, original_index_to_resampled,
                                           resample_isotropic, resample_to_grid, resampled_index_to_original,
                                           sub_grid, world_to_index)
from LesionDetectorLib.coordinates import direction_from_angles as rotation
from LesionDetectorLib.io import read_volume, write_volume
from LesionDetectorLib.volume import Volume


# (direction, spacing, origin): axis-aligned, oblique, oblique + flipped axes.
GEOMETRIES = [
    (np.eye(3), (0.7, 0.7, 2.5), (0.0, 0.0, 0.0)),
    (rotation((12.0, -8.0, 30.0)), (0.68, 0.81, 1.25), (-171.3, 44.2, -310.9)),
    (rotation((5.0, 20.0, -40.0), flip=(-1, 1, -1)), (1.1, 0.55, 3.0), (210.0, -180.5, 1201.25)),
]


def _volume(direction, spacing, origin, shape=(7, 9, 11), values=None):
    arr = np.zeros(shape, np.float32) if values is None else values
    return Volume(arr, spacing, origin, direction)


@pytest.mark.parametrize("direction,spacing,origin", GEOMETRIES)
def test_index_to_world_matches_simpleitk(direction, spacing, origin):
    vol = _volume(direction, spacing, origin)
    image = sitk.Image(11, 9, 7, sitk.sitkFloat32)  # built by hand: the oracle shares no code with us
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(np.asarray(direction).ravel()))
    idx = np.random.default_rng(1).uniform(-3, 12, size=(20, 3))  # continuous, incl. outside the grid
    expected = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(p[::-1])) for p in idx])
    np.testing.assert_allclose(index_to_world(vol, idx), expected, atol=1e-9)
    back = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in expected])[:, ::-1]
    np.testing.assert_allclose(world_to_index(vol, expected), back, atol=1e-9)


@pytest.mark.parametrize("direction,spacing,origin", GEOMETRIES)
def test_world_index_round_trip_and_single_point(direction, spacing, origin):
    vol = _volume(direction, spacing, origin)
    pts = np.random.default_rng(2).uniform(-300, 300, size=(50, 3))
    np.testing.assert_allclose(index_to_world(vol, world_to_index(vol, pts)), pts, atol=1e-9)
    one = world_to_index(vol, pts[0])
    assert one.shape == (3,)
    np.testing.assert_allclose(one, world_to_index(vol, pts[:1])[0])


def test_index_order_is_zyx():
    vol = _volume(np.eye(3), (1.0, 2.0, 3.0), (10.0, 20.0, 30.0))
    # one step along the array's first axis (z) moves by sz along LPS z
    np.testing.assert_allclose(index_to_world(vol, [1.0, 0.0, 0.0]), [10.0, 20.0, 33.0])
    np.testing.assert_allclose(index_to_world(vol, [0.0, 0.0, 1.0]), [11.0, 20.0, 30.0])


def _linear_field(direction, spacing, origin, shape):
    """A volume whose value is an affine function of the world point (linear interpolation is exact on it)."""
    vol = _volume(direction, spacing, origin, shape)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    world = index_to_world(vol, np.stack([k, j, i], -1).reshape(-1, 3).astype(float))
    coef = np.array([0.3, -0.2, 0.5])
    vol.array = (world @ coef).reshape(shape).astype(np.float64)
    return vol, coef


@pytest.mark.parametrize("direction,spacing,origin", GEOMETRIES[1:])
def test_resample_isotropic_keeps_world_positions(direction, spacing, origin):
    vol, coef = _linear_field(direction, spacing, origin, (9, 12, 14))
    iso = resample_isotropic(vol, spacing=0.5)
    np.testing.assert_allclose(iso.origin, vol.origin)
    np.testing.assert_allclose(iso.direction, vol.direction)
    np.testing.assert_allclose(iso.spacing, 0.5)
    # every resampled voxel stays inside the original voxel-centre hull
    extent = (np.asarray(vol.shape_zyx) - 1) * vol.spacing_zyx
    assert np.all((np.asarray(iso.shape_zyx) - 1) * 0.5 <= extent + 1e-9)
    assert np.all((np.asarray(iso.shape_zyx)) * 0.5 > extent)
    k, j, i = np.meshgrid(*[np.arange(n) for n in iso.shape_zyx], indexing="ij")
    world = index_to_world(iso, np.stack([k, j, i], -1).reshape(-1, 3).astype(float))
    np.testing.assert_allclose(iso.array.reshape(-1), world @ coef, atol=1e-6)


@pytest.mark.parametrize("direction,spacing,origin", GEOMETRIES)
def test_resampled_index_maps_back_exactly(direction, spacing, origin):
    vol = _volume(direction, spacing, origin, (20, 30, 40))
    iso = isotropic_geometry(vol, 1.0)
    idx_res = np.random.default_rng(3).uniform(0, 20, size=(30, 3))
    idx_orig = resampled_index_to_original(idx_res, vol, iso)
    np.testing.assert_allclose(index_to_world(vol, idx_orig), index_to_world(iso, idx_res), atol=1e-9)
    np.testing.assert_allclose(original_index_to_resampled(idx_orig, vol, iso), idx_res, atol=1e-12)


def test_index_mapping_refuses_grids_with_another_frame():
    a = Geometry((5, 5, 5), (1, 1, 1), (0, 0, 0), np.eye(3))
    b = Geometry((5, 5, 5), (2, 2, 2), (1, 0, 0), np.eye(3))
    with pytest.raises(ValueError, match="origin and direction"):
        resampled_index_to_original(np.zeros((1, 3)), a, b)


def test_nearest_resampling_keeps_labels_and_dtype():
    labels = np.random.default_rng(4).choice(np.array([0, 3, 4, 5], np.uint8), size=(6, 10, 12))
    vol = _volume(GEOMETRIES[1][0], (0.9, 0.9, 2.0), (5, 6, 7), values=labels)
    iso = resample_isotropic(vol, 1.0, interpolator="nearest", default_value=0)
    assert iso.array.dtype == np.uint8
    assert set(np.unique(iso.array)) <= {0, 3, 4, 5}
    # a resampled voxel takes the label of the original voxel nearest in index space
    idx = np.array([[4, 5, 6]])
    orig = np.rint(resampled_index_to_original(idx, vol, iso)).astype(int)[0]
    assert iso.array[tuple(idx[0])] == labels[tuple(orig)]


def test_resample_to_subgrid_equals_crop_of_full_resample():
    vol, _ = _linear_field(GEOMETRIES[2][0], GEOMETRIES[2][1], GEOMETRIES[2][2], (8, 20, 12))
    full = resample_isotropic(vol, 1.0)
    crop = resample_to_grid(vol, sub_grid(full, (2, 3, 4), (3, 4, 5)))
    np.testing.assert_allclose(crop.array, full.array[2:5, 3:7, 4:9], atol=1e-9)


def test_nifti_and_mhd_give_same_world_coordinates(tmp_path):
    direction = rotation((10.0, -15.0, 25.0))  # proper rotation: NIfTI's qform stores it exactly
    vol = Volume(np.random.default_rng(5).normal(size=(6, 7, 8)).astype(np.float32), (0.75, 0.8, 2.0),
                 (-120.5, 33.25, -410.0), direction)
    from_nii = read_volume(write_volume(vol, tmp_path / "scan.nii.gz"))
    from_mhd = read_volume(write_volume(vol, tmp_path / "scan.mhd"))
    np.testing.assert_array_equal(from_nii.array, from_mhd.array)
    idx = np.array([[0, 0, 0], [5, 6, 7], [2.5, 1.25, 6.5]])
    # NIfTI stores RAS in float32: agreement to 1e-3 mm, far below a voxel
    np.testing.assert_allclose(index_to_world(from_nii, idx), index_to_world(from_mhd, idx), atol=1e-3)
    np.testing.assert_allclose(index_to_world(from_mhd, idx), index_to_world(vol, idx), atol=1e-9)
    point = np.array([[-118.0, 35.0, -405.0]])
    round_trip = index_to_world(from_mhd, world_to_index(from_nii, point))
    np.testing.assert_allclose(round_trip, point, atol=1e-3)
    # and on disk NIfTI really holds RAS: qoffset_x, qoffset_y (header bytes 268, 272) are -L, -P
    raw = (tmp_path / "scan.nii").read_bytes() if write_volume(vol, tmp_path / "scan.nii") else b""
    q_x, q_y, q_z = np.frombuffer(raw[268:280], dtype="<f4")
    np.testing.assert_allclose([q_x, q_y, q_z], [120.5, -33.25, -410.0], atol=1e-3)
