"""Nodule masks (LesionDetectorLib.characterization) <-> a Segmentation node, one segment per finding.

The library returns the masks as a label array in the CT's own voxel grid (label ``i`` =
finding ``labels[i]``, see :func:`LesionDetectorLib.characterization.label_volume`). Here the
array becomes a temporary labelmap node with the CT's IJK-to-RAS matrix, is imported into a
``vtkMRMLSegmentationNode`` (Slicer's own importer, so geometry is exact for oblique and
flipped volumes), and each segment is named and tagged with its finding id, type and
Lung-RADS category. :func:`segment_masks` reads an edited segment back as a boolean array in
the CT's grid, and :func:`remeasure` recomputes that finding's measurements with the library,
so an edit in Segment Editor updates the numbers shown.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import numpy as np

ATTR_FINDING_ID = "LesionDetector.FindingID"
ROLE = "LesionDetector.Role"
ROLE_MASKS = "NoduleMasks"
TAG_FINDING = "LesionDetector.FindingID"   # segment tag

# Lung-RADS category -> segment colour (green benign ... red suspicious).
_COLOURS = {"1": (0.3, 0.8, 0.3), "2": (0.5, 0.85, 0.35), "3": (1.0, 0.85, 0.2), "4A": (1.0, 0.55, 0.1),
            "4B": (0.9, 0.15, 0.1), "4X": (0.7, 0.0, 0.3)}


def _segment_name(finding_id: str, ch: Optional[Mapping[str, Any]]) -> str:
    if not ch or ch.get("type") is None:
        return finding_id
    kind = "calcified" if ch.get("calcified") else ch["type"]
    return f"{finding_id} {kind} {ch.get('mean_diameter_mm')} mm Lung-RADS {ch.get('lung_rads')}"


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
    try:
        slicer.util.updateVolumeFromArray(labelmap, label_array_zyx.astype(np.uint8))
        seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        seg_node.CreateDefaultDisplayNodes()
        seg_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        seg_node.SetAttribute(ROLE, ROLE_MASKS)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg_node):
            raise RuntimeError("Slicer could not import the nodule masks into a segmentation")
    finally:
        scene.RemoveNode(labelmap)
    segmentation = seg_node.GetSegmentation()
    present = sorted(int(v) for v in np.unique(label_array_zyx) if v != 0)
    # The importer adds one segment per label value, in increasing order.
    for index, value in enumerate(present):
        segment = segmentation.GetNthSegment(index)
        fid = str(labels.get(value, f"label {value}"))
        ch = characterizations.get(fid)
        segment.SetName(_segment_name(fid, ch))
        segment.SetTag(TAG_FINDING, fid)
        segment.SetColor(*_COLOURS.get((ch or {}).get("lung_rads"), (0.2, 0.6, 1.0)))
    sh = scene.GetSubjectHierarchyNode()
    if sh is not None:
        parent = sh.GetItemParent(sh.GetItemByDataNode(volume_node))
        item = sh.GetItemByDataNode(seg_node) or sh.CreateItem(parent, seg_node)
        sh.SetItemParent(item, parent)
    return seg_node


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


def segment_masks(seg_node, volume_node) -> Dict[str, np.ndarray]:
    """Finding id -> bool mask ``[z, y, x]`` in the CT's grid (after any Segment Editor edit)."""
    import slicer
    import vtk

    scene = seg_node.GetScene()
    out = {}
    for fid, segment_id in finding_segments(seg_node).items():
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

    mask = segment_masks(seg_node, volume_node)[finding_id]
    return remeasure_mask(volume, mask, characterization)
