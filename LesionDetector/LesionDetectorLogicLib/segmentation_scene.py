"""Nodule masks (LesionDetectorLib.characterization) <-> a Segmentation node, one segment per finding.

The library returns the masks as a label array in the CT's own voxel grid (label ``i`` =
finding ``labels[i]``, see :func:`LesionDetectorLib.characterization.label_volume`). Here the
array becomes a temporary labelmap node with the CT's IJK-to-RAS matrix, is imported into a
``vtkMRMLSegmentationNode`` (Slicer's own importer, so geometry is exact for oblique and
flipped volumes), and each segment is named and tagged with its finding id, type and
Lung-RADS category. :func:`segment_masks` reads an edited segment back as a boolean array in
the CT's grid, and :func:`remeasure` recomputes that finding's measurements with the library,
so an edit in Segment Editor updates the numbers shown (``segment_measurements.py`` watches
the node and does that). :func:`labels_for_export` turns the accepted findings' segments back
into a label volume for the library's DICOM SEG / ``.seg.nrrd`` writers. Names and colours
are the library's (:mod:`LesionDetectorLib.export.segmentation_nrrd`), so a segmentation
written by ``lesion-detector detect`` and one made here look the same.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import numpy as np

ATTR_FINDING_ID = "LesionDetector.FindingID"
ROLE = "LesionDetector.Role"
ROLE_MASKS = "NoduleMasks"
TAG_FINDING = "LesionDetector.FindingID"   # segment tag (the library's segmentation_nrrd.TAG_FINDING)


def _naming():
    from LesionDetectorLib.export import segmentation_nrrd

    return segmentation_nrrd


def style_segment(segment, finding_id: str, ch: Optional[Mapping[str, Any]]) -> None:
    """Name and colour a finding's segment from its characterization (type, size, Lung-RADS)."""
    naming = _naming()
    segment.SetName(naming.segment_name(finding_id, ch))
    segment.SetColor(*naming.segment_colour(ch))


def create_segmentation_node(scene, volume_node, label_array_zyx: np.ndarray, labels: Mapping[int, str],
                             characterizations: Optional[Mapping[str, Mapping[str, Any]]] = None,
                             name: str = "Nodule masks"):
    """A segmentation node over ``volume_node`` with one segment per label present in the array.

    ``labels``: label value -> finding id; ``characterizations``: finding id -> its
    ``characterization`` dict (names and colours). Returns the node.
    """
    import slicer

    label_array_zyx = np.asarray(label_array_zyx)
    dims = volume_node.GetImageData().GetDimensions() if volume_node.GetImageData() else None
    if dims is not None and tuple(reversed(dims)) != label_array_zyx.shape:
        raise ValueError(f"mask shape {label_array_zyx.shape} does not match the volume {tuple(reversed(dims))}")
    characterizations = characterizations or {}
    labelmap = _labelmap_like(scene, volume_node, "LesionDetector temporary labels")
    seg_node = None
    try:
        slicer.util.updateVolumeFromArray(labelmap, label_array_zyx.astype(np.uint8))
        seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        seg_node.CreateDefaultDisplayNodes()
        seg_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        # The masks are in the volume's voxel grid: under the same transform, they stay on it.
        seg_node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
        seg_node.SetAttribute(ROLE, ROLE_MASKS)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg_node):
            raise RuntimeError("Slicer could not import the nodule masks into a segmentation")
        segmentation = seg_node.GetSegmentation()
        present = sorted(int(v) for v in np.unique(label_array_zyx) if v != 0)
        # The importer adds one segment per label value, in increasing order.
        for index, value in enumerate(present):
            segment = segmentation.GetNthSegment(index)
            fid = str(labels.get(value, f"label {value}"))
            style_segment(segment, fid, characterizations.get(fid))
            segment.SetTag(TAG_FINDING, fid)
        sh = scene.GetSubjectHierarchyNode()
        if sh is not None:
            parent = sh.GetItemParent(sh.GetItemByDataNode(volume_node))
            item = sh.GetItemByDataNode(seg_node) or sh.CreateItem(parent, seg_node)
            sh.SetItemParent(item, parent)
    except Exception:
        if seg_node is not None:
            remove_segmentation_node(seg_node)
        raise
    finally:
        scene.RemoveNode(labelmap)
    return seg_node


def remove_segmentation_node(seg_node) -> None:
    """Remove a segmentation node with its display node(s) and subject-hierarchy item."""
    scene = seg_node.GetScene()
    if scene is None:
        return
    sh = scene.GetSubjectHierarchyNode()
    item = sh.GetItemByDataNode(seg_node) if sh is not None else 0
    if item:
        sh.RemoveItem(item, False, False)
    for i in range(seg_node.GetNumberOfDisplayNodes()):
        display = seg_node.GetNthDisplayNode(i)
        if display is not None and display.GetScene() is scene:
            scene.RemoveNode(display)
    if seg_node.GetScene() is scene:
        scene.RemoveNode(seg_node)


def show_review(seg_node, finding_id: str, state: str) -> None:
    """A rejected finding's segment is hidden (kept, so undoing the rejection shows it again)."""
    segment_id = finding_segments(seg_node).get(finding_id)
    display = seg_node.GetDisplayNode()
    if segment_id is not None and display is not None:
        display.SetSegmentVisibility(segment_id, state != "rejected")


def labels_for_export(seg_node, volume_node, finding_ids):
    """A label :class:`~LesionDetectorLib.volume.Volume` of the given findings' segments (label
    ``i + 1`` = ``finding_ids[i]``; ids without a segment are left out) in the volume's world
    grid, as the library's SEG writers take it. Raises ``ValueError`` when none has voxels."""
    from LesionDetectorLib.volume import Volume

    from .geometry import volume_from_node

    ct = volume_from_node(volume_node)
    masks = segment_masks(seg_node, volume_node)
    labels = np.zeros(ct.array.shape, np.uint8)
    names = {}
    for fid in finding_ids:
        mask = masks.get(fid)
        if mask is None or not mask.any():
            continue
        if len(names) == 255:
            raise ValueError("at most 255 segments fit in one label volume")
        names[len(names) + 1] = fid
        labels[mask] = len(names)
    if not names:
        raise ValueError("no accepted finding has a segment with voxels: accept the findings to export first")
    return Volume(labels, ct.spacing, ct.origin, ct.direction, {"labels": names})


def finding_segments(seg_node) -> Dict[str, str]:
    """Finding id -> segment id of a node made by :func:`create_segmentation_node`."""
    segmentation = seg_node.GetSegmentation()
    out = {}
    for i in range(segmentation.GetNumberOfSegments()):
        import vtk

        value = vtk.reference("")
        if segmentation.GetNthSegment(i).GetTag(TAG_FINDING, value) and str(value.get()):
            out[str(value.get())] = segmentation.GetNthSegmentID(i)
    return out


def _labelmap_like(scene, volume_node, name):
    import vtk

    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    node.SetIJKToRASMatrix(matrix)
    return node


def segment_masks(seg_node, volume_node, finding_ids=None) -> Dict[str, np.ndarray]:
    """Finding id -> bool mask ``[z, y, x]`` in the CT's grid (after any Segment Editor edit);
    ``finding_ids``: only these (default: every finding's segment)."""
    import slicer
    import vtk

    scene = seg_node.GetScene()
    out = {}
    for fid, segment_id in finding_segments(seg_node).items():
        if finding_ids is not None and fid not in finding_ids:
            continue
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        labelmap = _labelmap_like(scene, volume_node, "LesionDetector temporary export")
        try:
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(seg_node, ids, labelmap,
                                                                                          volume_node):
                raise RuntimeError(f"Slicer could not export segment {segment_id}")
            out[fid] = np.asarray(slicer.util.arrayFromVolume(labelmap)) > 0
        finally:
            scene.RemoveNode(labelmap)
    return out


def set_segment_mask(seg_node, volume_node, finding_id: str, mask_zyx: np.ndarray) -> None:
    """Replace a finding's segment with ``mask_zyx`` (bool, the CT's grid), as an edit would."""
    import slicer
    import vtk

    scene = seg_node.GetScene()
    segment_id = finding_segments(seg_node)[finding_id]
    labelmap = _labelmap_like(scene, volume_node, "LesionDetector temporary import")
    try:
        slicer.util.updateVolumeFromArray(labelmap, np.asarray(mask_zyx, np.uint8))
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg_node, ids):
            raise RuntimeError(f"Slicer could not update segment {segment_id}")
    finally:
        scene.RemoveNode(labelmap)


def remeasure(seg_node, volume_node, volume, finding_id: str, characterization: Mapping[str, Any]) -> Dict[str, Any]:
    """The finding's characterization recomputed from its (edited) segment; ``volume`` is the
    library :class:`~LesionDetectorLib.volume.Volume` of ``volume_node``."""
    from LesionDetectorLib.characterization import remeasure_mask

    mask = segment_masks(seg_node, volume_node, {finding_id})[finding_id]
    return remeasure_mask(volume, mask, characterization)
