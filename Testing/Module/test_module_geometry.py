"""RAS (MRML) <-> LPS (library) at the volume boundary, oblique and flipped volumes included."""
import numpy as np
import pytest
import SimpleITK as sitk

from module_test_helpers import add_volume, flipped_ijk_to_ras, oblique_ijk_to_ras, rotation
from LesionDetectorLogicLib import geometry

MATRICES = {"oblique": oblique_ijk_to_ras(), "flipped": flipped_ijk_to_ras()}


@pytest.mark.parametrize("name", MATRICES)
def test_itk_geometry_maps_every_index_like_the_ras_matrix(name):
    m = MATRICES[name]
    spacing, origin, direction = geometry.itk_geometry_from_ijk_to_ras(m)
    ijk = np.array([[0, 0, 0], [5, 0, 0], [0, 7, 3], [11, 13, 17]], dtype=float)
    ras = (m @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]
    lps = origin + (direction @ (spacing * ijk).T).T
    np.testing.assert_allclose(geometry.lps_to_ras(lps), ras, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(direction, axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(geometry.ijk_to_ras_from_itk_geometry(spacing, origin, direction), m, atol=1e-12)


def test_itk_geometry_agrees_with_simpleitk():
    m = oblique_ijk_to_ras()
    spacing, origin, direction = geometry.itk_geometry_from_ijk_to_ras(m)
    image = sitk.Image(20, 30, 10, sitk.sitkFloat32)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(origin.tolist())
    image.SetDirection(direction.reshape(9).tolist())
    lps = np.array(image.TransformContinuousIndexToPhysicalPoint((3.0, 4.5, 6.0)))
    ras = m @ np.array([3.0, 4.5, 6.0, 1.0])
    np.testing.assert_allclose(geometry.ras_to_lps(ras[:3]), lps, atol=1e-9)


def test_degenerate_matrix_is_refused():
    m = np.eye(4)
    m[2, 2] = 0.0
    with pytest.raises(ValueError, match="spacing"):
        geometry.itk_geometry_from_ijk_to_ras(m)


@pytest.mark.parametrize("name", MATRICES)
def test_volume_from_node_keeps_values_and_geometry(scene, name):
    array = np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8) - 1000
    node, _ = add_volume(scene, array, MATRICES[name])
    volume = geometry.volume_from_node(node)
    np.testing.assert_array_equal(volume.array, array.astype(np.float32))
    assert volume.array.dtype == np.float32
    # voxel [z, y, x] = [2, 3, 4] -> the RAS point the node reports
    ras = (MATRICES[name] @ np.array([4, 3, 2, 1.0]))[:3]
    lps = volume.origin + volume.direction @ (volume.spacing * np.array([4, 3, 2]))
    np.testing.assert_allclose(lps, geometry.ras_to_lps(ras), atol=1e-9)
    assert volume.metadata["source"] == "CT"


def test_linear_parent_transform_is_applied(scene):
    node, _ = add_volume(scene, np.zeros((4, 5, 6), np.int16), np.eye(4))
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    to_parent = np.eye(4)
    to_parent[:3, :3] = rotation(1, 30.0)
    to_parent[:3, 3] = [5.0, -3.0, 2.0]
    transform.SetMatrixTransformToParent(__import__("slicer").util.vtkMatrixFromArray(to_parent))
    node.SetAndObserveTransformNodeID(transform.GetID())
    volume = geometry.volume_from_node(node)
    ras = to_parent @ np.array([1.0, 2.0, 3.0, 1.0])
    lps = volume.origin + volume.direction @ (volume.spacing * np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(geometry.lps_to_ras(lps), ras[:3], atol=1e-9)


def test_non_scalar_and_flat_volumes_are_refused(scene):
    import slicer

    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "mask")
    slicer.util.updateVolumeFromArray(label, np.zeros((4, 5, 6), np.uint8))
    with pytest.raises(ValueError, match="not a scalar"):
        geometry.volume_from_node(label)
    flat, _ = add_volume(scene, np.zeros((1, 5, 6), np.int16), np.eye(4), name="flat")
    with pytest.raises(ValueError, match="not 3D"):
        geometry.volume_from_node(flat)
    with pytest.raises(ValueError, match="no input volume"):
        geometry.volume_from_node(None)


def test_written_nrrd_has_the_nodes_geometry(scene, tmp_path):
    array = np.random.default_rng(0).integers(-1000, 400, size=(5, 6, 7)).astype(np.int16)
    node, _ = add_volume(scene, array, oblique_ijk_to_ras())
    volume = geometry.volume_from_node(node)
    path = tmp_path / "input.nrrd"
    geometry.write_volume_nrrd(volume, path)
    image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array.astype(np.float32))
    lps = np.array(image.TransformIndexToPhysicalPoint((4, 3, 2)))
    ras = (oblique_ijk_to_ras() @ np.array([4, 3, 2, 1.0]))[:3]
    np.testing.assert_allclose(geometry.lps_to_ras(lps), ras, atol=1e-5)
