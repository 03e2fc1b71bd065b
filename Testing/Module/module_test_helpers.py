"""Helpers shared by the module's tests: volume nodes with known IJK-to-RAS matrices."""
import numpy as np
import slicer


def add_volume(scene, array_zyx, ijk_to_ras, name="CT"):
    """A scalar volume node with a known IJK-to-RAS matrix, placed under patient/study items."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.asarray(ijk_to_ras, dtype=float)))
    slicer.util.updateVolumeFromArray(node, np.asarray(array_zyx))
    node.CreateDefaultDisplayNodes()
    sh = scene.GetSubjectHierarchyNode()
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "Chest CT study")
    item = sh.GetItemByDataNode(node) or sh.CreateItem(study, node)
    sh.SetItemParent(item, study)
    return node, study


def rotation(axis, degrees):
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def oblique_ijk_to_ras():
    """Anisotropic spacing, rotated about two axes, off-centre origin."""
    m = np.eye(4)
    m[:3, :3] = rotation(2, 25.0) @ rotation(0, -15.0) @ np.diag([0.7, 0.8, 2.5])
    m[:3, 3] = [31.5, -12.25, -88.0]
    return m


def flipped_ijk_to_ras():
    """Axis-aligned but flipped like many DICOM series: i towards L... k towards I."""
    m = np.diag([0.9, -1.1, -2.0, 1.0])
    m[:3, 3] = [-40.0, 60.0, 120.0]
    return m


class FakeDicomDatabase:
    """The ctkDICOMDatabase calls prior_series_for uses, over a dict of series."""

    def __init__(self, series):
        self.series = series          # uid -> (patient, study, {tag: value})

    def studyForSeries(self, uid):
        return self.series.get(uid, (None, "", None))[1]

    def patientForStudy(self, study):
        return next(p for p, s, _ in self.series.values() if s == study)

    def studiesForPatient(self, patient):
        return sorted({s for p, s, _ in self.series.values() if p == patient})

    def seriesForStudy(self, study):
        return [u for u, (_, s, _) in self.series.items() if s == study]

    def filesForSeries(self, uid):
        return [f"{uid}/1.dcm"]

    def fileValue(self, path, tag):
        return self.series[path.split("/")[0]][2].get(tag, "")
