"""The run's nodule masks in the scene (real MRML from slicer-core): a Segmentation node made with
the markups and table (all or nothing), rejected findings hidden, export of accepted segments only,
and a Segment Editor edit re-measuring its finding (table, description, patient Lung-RADS)."""
import copy
import json

import numpy as np
import pytest

import LesionDetector as module
from LesionDetectorLib.characterization import remeasure_mask
from LesionDetectorLib.export.segmentation_nrrd import read_segmentation_nrrd
from LesionDetectorLib.volume import Volume
from LesionDetectorLogicLib import findings_scene, geometry, segment_measurements, segmentation_scene
from module_test_helpers import add_volume, oblique_ijk_to_ras


SHAPE = (12, 32, 40)
BASE = {"type": "solid", "calcified": False, "juxta_pleural": False, "perifissural": False, "benign_shape": False}


def _balls():
    """Three nodules on a 0.7 x 0.8 x 2.5 mm grid, labels 1..3 (the widest first)."""
    z, y, x = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    labels = np.zeros(SHAPE, np.uint8)
    labels[(z - 5) ** 2 * 12.5 + (y - 12) ** 2 * 0.64 + ((x - 10) * 0.7) ** 2 <= 6.0 ** 2] = 1
    labels[(z - 6) ** 2 * 6.25 + ((y - 22) * 0.8) ** 2 + ((x - 28) * 0.7) ** 2 <= 3.5 ** 2] = 2
    labels[(z - 4) ** 2 * 6.25 + ((y - 26) * 0.8) ** 2 + ((x - 8) * 0.7) ** 2 <= 2.5 ** 2] = 3
    return labels


@pytest.fixture
def run(scene, findings_doc):
    """A characterized run of three findings on an oblique CT, with its masks."""
    labels = _balls()
    ct = np.where(labels > 0, 30.0, -850.0).astype(np.float32)
    node, _ = add_volume(scene, ct, oblique_ijk_to_ras())
    volume = geometry.volume_from_node(node)
    doc = copy.deepcopy(findings_doc)
    by_id = {c["id"]: c for c in doc["candidates"]}
    for value, fid in ((1, "N1"), (2, "N2"), (3, "N3")):
        by_id[fid]["characterization"] = remeasure_mask(volume, labels == value, BASE)
    doc["lung_rads"] = {"category": by_id["N1"]["characterization"]["lung_rads"], "finding_id": "N1"}
    masks = Volume(labels, volume.spacing, volume.origin, volume.direction, {"labels": {1: "N1", 2: "N2", 3: "N3"}})
    result = findings_scene.create_result_nodes(scene, node, doc, masks=masks)
    return result, node, volume, labels


def _chars(markups):
    return {c["id"]: c["characterization"] for c in findings_scene.findings_with_review(markups)["candidates"]}


def test_the_run_gets_one_segment_per_finding_beside_its_markups(scene, run):
    result, node, _, labels = run
    seg = result.segmentation
    assert result.markups.GetNodeReference(findings_scene.REF_SEGMENTATION) is seg
    assert seg.GetSegmentation().GetNumberOfSegments() == 3
    masks = segmentation_scene.segment_masks(seg, node)
    for value, fid in ((1, "N1"), (2, "N2"), (3, "N3")):
        assert np.array_equal(masks[fid], labels == value)
    ch = _chars(result.markups)
    names = [seg.GetSegmentation().GetNthSegment(i).GetName() for i in range(3)]
    assert names[0] == f"N1 solid {ch['N1']['mean_diameter_mm']} mm Lung-RADS {ch['N1']['lung_rads']}"
    sh = scene.GetSubjectHierarchyNode()
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == sh.GetItemParent(sh.GetItemByDataNode(result.markups))


def test_masks_that_do_not_fit_the_volume_leave_the_scene_as_it_was(scene, findings_doc):
    node, _ = add_volume(scene, np.full(SHAPE, -850.0, np.float32), oblique_ijk_to_ras())
    before = scene.GetNumberOfNodes()
    wrong = Volume(np.ones((2, 2, 2), np.uint8), (1, 1, 1), (0, 0, 0), np.eye(3), {"labels": {1: "N1"}})
    with pytest.raises(ValueError, match="does not match the volume"):
        findings_scene.create_result_nodes(scene, node, findings_doc, masks=wrong)
    assert scene.GetNumberOfNodes() == before
    for cls in ("vtkMRMLMarkupsFiducialNode", "vtkMRMLTableNode", "vtkMRMLSegmentationNode",
                "vtkMRMLLabelMapVolumeNode"):
        assert scene.GetNodesByClass(cls).GetNumberOfItems() == 0


def test_rejecting_hides_the_segment_and_hands_the_exam_to_the_next_finding(scene, run):
    result, _, _, _ = run
    m, seg = result.markups, result.segmentation
    ids = segmentation_scene.finding_segments(seg)
    display = seg.GetDisplayNode()
    ch = _chars(m)
    assert findings_scene.exam_lung_rads_of(m)["finding_id"] == "N1"
    index = findings_scene.candidate_index(m, "N1")
    findings_scene.set_review(m, index, "rejected")
    assert not display.GetSegmentVisibility(ids["N1"]) and display.GetSegmentVisibility(ids["N2"])
    exam = findings_scene.exam_lung_rads_of(m)
    assert exam["finding_id"] in ("N2", "N3") and exam["category"] == max(
        (ch["N2"]["lung_rads"], ch["N3"]["lung_rads"]), key=lambda c: "1234AB".index(c[0]))
    findings_scene.set_review(m, index, "unreviewed")
    assert display.GetSegmentVisibility(ids["N1"]) and findings_scene.exam_lung_rads_of(m)["finding_id"] == "N1"


def test_export_keeps_only_the_accepted_findings_segments(scene, run, tmp_path):
    result, node, _, labels = run
    m = result.markups
    logic = module.LesionDetectorLogic(scene=scene)
    with pytest.raises(ValueError, match="no finding is accepted"):
        logic.exportResults(m, tmp_path, ["segmentation"])
    findings_scene.set_review(m, findings_scene.candidate_index(m, "N1"), "accepted")
    findings_scene.set_review(m, findings_scene.candidate_index(m, "N2"), "rejected")
    findings_scene.set_review(m, findings_scene.candidate_index(m, "N3"), "accepted")
    assert logic.noduleMaskFormats(m) == ["segmentation"]          # not loaded from DICOM: no SEG
    with pytest.raises(ValueError, match="DICOM SEG export needs a CT loaded from DICOM"):
        logic.exportResults(m, tmp_path, ["dicom_seg"])
    (path,) = logic.exportResults(m, tmp_path, ["segmentation"])
    back = read_segmentation_nrrd(path)
    assert sorted(back.metadata["labels"].values()) == ["N1", "N3"]
    value = {fid: v for v, fid in back.metadata["labels"].items()}
    assert np.array_equal(back.array == value["N1"], labels == 1)
    assert np.array_equal(back.array == value["N3"], labels == 3) and not (back.array[labels == 2]).any()
    # Slicer's own reader opens it as a segmentation of the two accepted findings.
    loaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(loaded)
    assert sorted(segmentation_scene.finding_segments(loaded)) == ["N1", "N3"]


class ManualTimer:
    """Stands in for qt.QTimer.singleShot: collects the callbacks, fires them on demand."""

    def __init__(self):
        self.calls = []

    def __call__(self, ms, callback):
        self.calls.append((ms, callback))

    def fire_all(self):
        calls, self.calls = self.calls, []
        for _, callback in calls:
            callback()


def test_an_edit_re_measures_its_finding_once_the_strokes_pause(scene, run):
    result, node, volume, labels = run
    m, seg = result.markups, result.segmentation
    timer = ManualTimer()
    updates = []
    logic = module.LesionDetectorLogic(scene=scene)
    logic.scheduleCallback = timer
    logic.measurementCallback = lambda markups, fid: updates.append(fid)
    logic.watchSegmentEdits(m)
    before = _chars(m)["N1"]

    # Two strokes in a row erase more and more of N1: one re-measurement, after the last.
    first = labels == 1
    first[:, :, 13:] = False
    segmentation_scene.set_segment_mask(seg, node, "N1", first)
    edited = first.copy()
    edited[:, :, 11:] = False
    segmentation_scene.set_segment_mask(seg, node, "N1", edited)
    assert updates == [] and len(timer.calls) >= 2 and all(ms == segment_measurements.DEBOUNCE_MS
                                                          for ms, _ in timer.calls)
    timer.fire_all()
    assert updates == ["N1"]                     # the earlier timers saw a newer edit and did nothing

    expected = remeasure_mask(volume, edited, before)
    after = _chars(m)["N1"]
    assert after["mean_diameter_mm"] == expected["mean_diameter_mm"] < before["mean_diameter_mm"]
    assert after["volume_ml"] == pytest.approx(edited.sum() * np.prod(volume.spacing) / 1000.0)
    row = findings_scene.candidate_index(m, "N1")
    table = result.table.GetTable()
    assert table.GetColumnByName("Mean diameter (mm)").GetValue(row) == pytest.approx(expected["mean_diameter_mm"])
    assert table.GetColumnByName("Lung-RADS").GetValue(row) == str(expected["lung_rads"])
    point = m.GetNthControlPointIndexByID(json.loads(m.GetAttribute(findings_scene.ATTR_POINT_IDS))[row])
    assert f"Lung-RADS {expected['lung_rads']}" in m.GetNthControlPointDescription(point)
    exam = findings_scene.exam_lung_rads_of(m)
    chars = _chars(m)
    assert exam["category"] == max((c["lung_rads"] for c in chars.values()), key=lambda c: "1234AB".index(c[0]))
    name = seg.GetSegmentation().GetSegment(segmentation_scene.finding_segments(seg)["N1"]).GetName()
    assert name.startswith(f"N1 solid {expected['mean_diameter_mm']} mm")
    # The renaming above fired SegmentModified itself: it must not schedule another re-measurement.
    assert timer.calls == []


def test_without_a_timer_edits_wait_for_flush(scene, run):
    result, node, volume, labels = run
    logic = module.LesionDetectorLogic(scene=scene)
    logic.watchSegmentEdits(result.markups)
    grown = (labels == 2) | np.roll(labels == 2, 2, axis=2)
    segmentation_scene.set_segment_mask(result.segmentation, node, "N2", grown)
    assert _chars(result.markups)["N2"]["volume_ml"] == pytest.approx(
        (labels == 2).sum() * np.prod(volume.spacing) / 1000.0)
    assert logic.flushSegmentEdits() == ["N2"]
    assert _chars(result.markups)["N2"]["volume_ml"] == pytest.approx(grown.sum() * np.prod(volume.spacing) / 1000.0)
    assert logic.flushSegmentEdits() == []


def test_removing_the_run_removes_its_masks(scene, run):
    result, _, _, _ = run
    sync = segment_measurements.SegmentMeasurementSync(result.markups)
    seg_id = result.segmentation.GetID()
    scene.RemoveNode(result.markups)
    assert scene.GetNodeByID(seg_id) is None and not sync.active
    assert scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0


def test_detection_brings_its_masks_into_the_scene(scene, fake_detect):
    labels = _balls()
    node, _ = add_volume(scene, np.where(labels == 1, 30.0, -850.0).astype(np.float32), oblique_ijk_to_ras())
    logic = module.LesionDetectorLogic(scene=scene, detectCommand=fake_detect("masks"))
    logic.checkRequirements = False
    result = logic.process(node, device="cpu", timeout=120)
    assert result.segmentation is not None
    (fid,) = segmentation_scene.finding_segments(result.segmentation)
    assert np.array_equal(segmentation_scene.segment_masks(result.segmentation, node)[fid], labels == 1)
    assert "Lung-RADS" in logic.resultSummary(result.markups)["flag_text"]
    # The logic watches the new run's segments from the start.
    segmentation_scene.set_segment_mask(result.segmentation, node, fid, np.zeros(SHAPE, bool) | (labels == 1) &
                                        (np.arange(SHAPE[2]) < 10))
    assert logic.flushSegmentEdits() == [fid]


@pytest.mark.parametrize("mode", ["badmasks", "wrongmasks"])
def test_a_run_whose_masks_fail_adds_nothing(scene, fake_detect, mode):
    node, _ = add_volume(scene, np.where(_balls() == 1, 30.0, -850.0).astype(np.float32), oblique_ijk_to_ras())
    before = scene.GetNumberOfNodes()
    logic = module.LesionDetectorLogic(scene=scene, detectCommand=fake_detect(mode))
    logic.checkRequirements = False
    with pytest.raises(module.DetectionError, match="masks|does not match"):
        logic.process(node, device="cpu", timeout=120)
    assert scene.GetNumberOfNodes() == before


def test_dicom_seg_export_of_accepted_segments_lies_on_the_source_slices(scene, findings_doc, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    from LesionDetectorLib.coordinates import world_to_index
    from LesionDetectorLib.io import read_volume
    from LesionDetectorLib.io.ct_series import write_ct_series

    labels = _balls()
    ct = Volume(np.where(labels > 0, 30.0, -850.0).astype(np.float32), (0.7, 0.8, 2.5), (-14.0, 3.0, 90.0),
                np.eye(3))
    source = read_volume(str(write_ct_series(ct, tmp_path / "ct")))
    node, _ = add_volume(scene, source.array,
                         geometry.ijk_to_ras_from_itk_geometry(source.spacing, source.origin, source.direction))
    doc = copy.deepcopy(findings_doc)
    for c in doc["candidates"]:
        c["characterization"] = remeasure_mask(source, labels == int(c["id"][1]), BASE)
    masks = Volume(labels, source.spacing, source.origin, source.direction, {"labels": {1: "N1", 2: "N2", 3: "N3"}})
    m = findings_scene.create_result_nodes(scene, node, doc, masks=masks).markups
    findings_scene.set_review(m, findings_scene.candidate_index(m, "N2"), "accepted")
    from LesionDetectorLogicLib import exports

    (path,) = exports.export_run(m, tmp_path / "out", ["dicom_seg"], dicom_files=source.metadata["dicom_files"])
    ds = pydicom.dcmread(path)
    assert [s.SegmentLabel.split()[0] for s in ds.SegmentSequence] == ["N2"]
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    total = 0
    for frame, fg in zip(pixels, ds.PerFrameFunctionalGroupsSequence):
        k = world_to_index(source, np.asarray([float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient]))[0]
        assert np.array_equal(frame > 0, labels[int(round(k))] == 2)
        total += int(frame.sum())
    assert total == int((labels == 2).sum())
