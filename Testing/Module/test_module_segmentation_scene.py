"""Nodule masks -> a Segmentation node (real MRML): one segment per finding, exact geometry on an
oblique grid, read back after an edit and re-measured by the library."""
import numpy as np
import pytest

from module_test_helpers import add_volume, oblique_ijk_to_ras
from LesionDetectorLogicLib import geometry, segmentation_scene
from LesionDetectorLib.characterization import remeasure_mask
from LesionDetectorLib.volume import Volume


def _labels(shape):
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    labels = np.zeros(shape, np.uint8)
    labels[(z - 5) ** 2 * 9 + (y - 12) ** 2 + (x - 10) ** 2 <= 25] = 1       # 2.5 mm slices, 0.7-0.8 mm pixels
    labels[(z - 6) ** 2 * 9 + (y - 20) ** 2 + (x - 28) ** 2 <= 36] = 3
    return labels


def test_one_segment_per_finding_with_names_and_exact_voxels(scene):
    shape = (12, 32, 40)
    m = oblique_ijk_to_ras()
    ct = np.full(shape, -850.0, np.float32)
    labels = _labels(shape)
    ct[labels > 0] = 30.0
    node, _ = add_volume(scene, ct, m)
    chars = {"N1": {"type": "solid", "calcified": False, "mean_diameter_mm": 7.1, "lung_rads": "3"},
             "N2": {"type": "ground-glass", "calcified": False, "mean_diameter_mm": 9.0, "lung_rads": "2"}}
    seg = segmentation_scene.create_segmentation_node(scene, node, labels, {1: "N1", 3: "N2"}, chars)
    s = seg.GetSegmentation()
    assert s.GetNumberOfSegments() == 2
    assert s.GetNthSegment(0).GetName() == "N1 solid 7.1 mm Lung-RADS 3"
    assert s.GetNthSegment(1).GetName().startswith("N2 ground-glass")
    assert scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 0   # temporary node gone
    masks = segmentation_scene.segment_masks(seg, node)
    assert set(masks) == {"N1", "N2"}
    assert np.array_equal(masks["N1"], labels == 1) and np.array_equal(masks["N2"], labels == 3)


def test_an_edited_segment_is_re_measured(scene):
    shape = (12, 32, 40)
    m = oblique_ijk_to_ras()
    labels = _labels(shape)
    ct = np.where(labels > 0, 30.0, -850.0).astype(np.float32)
    node, _ = add_volume(scene, ct, m)
    seg = segmentation_scene.create_segmentation_node(scene, node, labels, {1: "N1", 3: "N2"})
    spacing, origin, direction = geometry.itk_geometry_from_ijk_to_ras(m)
    volume = Volume(ct, spacing, origin, direction)
    ch = {"type": "solid", "calcified": False, "juxta_pleural": False, "perifissural": False, "benign_shape": True,
          "lung_rads": "3"}
    before = segmentation_scene.remeasure(seg, node, volume, "N1", ch)
    # The reader erases half of N1 in Segment Editor (here: through the same array API).
    edited = labels == 1
    edited[:, :, 10:] = False
    segmentation_scene.set_segment_mask(seg, node, "N1", edited)
    after = segmentation_scene.remeasure(seg, node, volume, "N1", ch)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    assert before["volume_ml"] == pytest.approx((labels == 1).sum() * voxel_ml, rel=1e-6)
    assert after["volume_ml"] == pytest.approx(edited.sum() * voxel_ml, rel=1e-6)
    assert after["mean_diameter_mm"] < before["mean_diameter_mm"]
    assert after == remeasure_mask(volume, edited, ch)
