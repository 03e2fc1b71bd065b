"""The one place where RAS (MRML) meets LPS (LesionDetectorLib and every file).

Slicer stores a volume's geometry as a 4x4 ``IJKToRAS`` matrix ``M``:
``ras = M @ [i, j, k, 1]``. The library's :class:`LesionDetectorLib.volume.Volume`
stores ITK geometry in LPS: ``lps = origin + direction @ (spacing * [i, j, k])``
with ``direction`` columns the unit LPS directions of the i, j, k axes.

RAS and LPS differ by the sign of the first two axes, so ``M_lps`` is ``M`` with
its first two rows negated; spacing is the column norms of its 3x3 part,
direction the normalised columns, origin its translation. No assumption about
axis alignment is made, so oblique and flipped volumes convert exactly.
Arrays are ``[k, j, i] = [z, y, x]`` on both sides (``slicer.util.arrayFromVolume``).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

# diag(-1, -1, 1): its own inverse, so it maps RAS -> LPS and LPS -> RAS.
_FLIP_LR_AP = np.array([-1.0, -1.0, 1.0])


def ras_to_lps(points) -> np.ndarray:
    """``[N, 3]`` (or ``[3]``) RAS millimetres -> the same points in LPS millimetres."""
    return np.asarray(points, dtype=np.float64) * _FLIP_LR_AP


def lps_to_ras(points) -> np.ndarray:
    """``[N, 3]`` (or ``[3]``) LPS millimetres -> the same points in RAS millimetres."""
    return np.asarray(points, dtype=np.float64) * _FLIP_LR_AP


def itk_geometry_from_ijk_to_ras(ijk_to_ras) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4x4 IJK-to-RAS matrix -> ``(spacing[3], origin_lps[3], direction[3, 3])`` in ITK order.

    Raises ``ValueError`` for a degenerate matrix (zero spacing or non-invertible axes),
    because detection on such a grid would place findings nowhere meaningful.
    """
    m = np.asarray(ijk_to_ras, dtype=np.float64).reshape(4, 4)
    m_lps = m.copy()
    m_lps[:2, :] *= -1.0  # RAS rows -> LPS rows
    axes = m_lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(axes)):
        raise ValueError(f"volume has degenerate voxel spacing {spacing.tolist()}")
    direction = axes / spacing
    if abs(np.linalg.det(direction)) < 1e-6:
        raise ValueError("volume axes are not independent (IJK-to-RAS matrix is singular)")
    return spacing, m_lps[:3, 3].copy(), direction


def ijk_to_ras_from_itk_geometry(spacing, origin, direction) -> np.ndarray:
    """Inverse of :func:`itk_geometry_from_ijk_to_ras`: ITK/LPS geometry -> 4x4 IJK-to-RAS."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(direction, dtype=np.float64).reshape(3, 3) * np.asarray(spacing, dtype=np.float64)
    m[:3, 3] = np.asarray(origin, dtype=np.float64)
    m[:2, :] *= -1.0  # LPS rows -> RAS rows
    return m


def node_ijk_to_world_ras(volume_node) -> np.ndarray:
    """The node's IJK-to-RAS matrix with any linear parent transform applied (world RAS).

    A non-linear (warping) parent transform cannot be expressed as ITK geometry,
    so it is refused with a message telling the user to harden it first.
    """
    import vtk

    mat = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(mat)
    m = np.array([[mat.GetElement(r, c) for c in range(4)] for r in range(4)])
    parent = volume_node.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise ValueError(f"volume '{volume_node.GetName()}' is under a non-linear transform; "
                             "harden the transform (Data module) before detection")
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        w = np.array([[to_world.GetElement(r, c) for c in range(4)] for r in range(4)])
        m = w @ m
    return m


def volume_from_node(volume_node):
    """Scalar volume node -> :class:`LesionDetectorLib.volume.Volume` (array copied, HU float32).

    Metadata carries the node name and, for DICOM-loaded volumes, the SeriesInstanceUID
    so that exports (LUNA16 CSV, DICOM SR) reference the right series.
    """
    from LesionDetectorLib.volume import Volume

    check_scalar_volume(volume_node)
    import slicer

    array = np.array(slicer.util.arrayFromVolume(volume_node), dtype=np.float32, copy=True)
    spacing, origin, direction = itk_geometry_from_ijk_to_ras(node_ijk_to_world_ras(volume_node))
    metadata = {"source": volume_node.GetName()}
    uid = series_instance_uid(volume_node)
    if uid:
        metadata["SeriesInstanceUID"] = uid
    # from_array validates geometry and values and raises VolumeError naming the cause.
    return Volume.from_array(array, spacing, origin, direction, metadata)


def check_scalar_volume(volume_node) -> None:
    """Raise ``ValueError`` naming the cause when the node cannot be a CT for detection."""
    if volume_node is None:
        raise ValueError("no input volume selected")
    if not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise ValueError(f"'{volume_node.GetName()}' is not a scalar (CT) volume")
    image = volume_node.GetImageData()
    if image is None or image.GetNumberOfScalarComponents() != 1:
        raise ValueError(f"volume '{volume_node.GetName()}' has no single-component image data")
    dims = image.GetDimensions()
    if min(dims) < 2:
        raise ValueError(f"volume '{volume_node.GetName()}' is not 3D (dimensions {dims})")


def series_instance_uid(volume_node) -> str:
    """SeriesInstanceUID of a DICOM-loaded volume ("" when unknown)."""
    scene = volume_node.GetScene()
    if scene is None:
        return ""
    sh = scene.GetSubjectHierarchyNode()
    item = sh.GetItemByDataNode(volume_node) if sh else 0
    # The DICOM plugin stores the series UID on the volume's item; per-slice instance
    # UIDs on the node are not a series UID, so nothing is guessed from them.
    return (sh.GetItemUID(item, "DICOM") if item else "") or ""


def write_volume_nrrd(volume, path) -> None:
    """Write a library Volume (exact ITK/LPS geometry) as the detection child's input file."""
    from LesionDetectorLib.io import write_volume

    write_volume(volume, str(path))
