"""One findings <-> markups mapping, in a real MRML scene with Slicer's markups module logic.

The Slicer application's markups logic (shipped in slicer-core) makes every new markups
node the active point list; the findings must not become it. A ``.mrk.json`` written by
``lesion-detector detect`` and reviewed keeps its decisions when the module loads it.
"""
import json

import pytest
import slicer
import vtk

from LesionDetectorLogicLib import findings_scene
from LesionDetectorLib.export import markups as lib_markups
from LesionDetectorLib.export import write_markups_json
from LesionDetectorLib.findings import Findings


@pytest.fixture
def app_scene(scene):
    """The scene as the Slicer application sets it up: selection node + markups module logic."""
    selection = slicer.vtkMRMLSelectionNode()
    scene.AddNode(selection)
    logic = slicer.vtkSlicerMarkupsLogic()
    logic.SetMRMLScene(scene)
    yield scene, logic, selection
    logic.SetMRMLScene(None)


def _load_mrk_json(scene, path, name="loaded"):
    """What Slicer does when a user drops a .mrk.json in: a point list read by the JSON storage node."""
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return node


def test_markups_logic_really_makes_new_lists_active(app_scene):
    """The behaviour the module guards against, reproduced with Slicer's own logic."""
    scene, logic, selection = app_scene
    first = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "a")
    second = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "b")
    assert logic.GetActiveListID() == second.GetID() != first.GetID()


def test_findings_do_not_become_the_active_point_list(app_scene, findings_doc):
    scene, logic, selection = app_scene
    users = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "my points")
    assert logic.GetActiveListID() == users.GetID()
    result = findings_scene.create_result_nodes(scene, None, findings_doc)
    assert logic.GetActiveListID() == users.GetID()
    assert selection.GetActivePlaceNodeID() == users.GetID()
    # and the run itself refuses new points, moves and deletions
    m = result.markups
    assert m.GetFixedNumberOfControlPoints() and m.GetLocked()
    assert m.AddControlPoint(vtk.vtkVector3d(1.0, 2.0, 3.0), "user") < 0
    assert m.GetNumberOfControlPoints() == 3


def test_no_previous_list_leaves_none_active(app_scene, findings_doc):
    scene, logic, _ = app_scene
    result = findings_scene.create_result_nodes(scene, None, findings_doc)
    assert logic.GetActiveListID() != result.markups.GetID()


def test_points_a_user_adds_do_not_shift_the_reviews(scene, findings_doc):
    m = findings_scene.create_result_nodes(scene, None, findings_doc).markups
    findings_scene.set_review(m, 1, "rejected")
    # a user unlocks the list and places points, first before the candidates, then after
    m.SetFixedNumberOfControlPoints(False)
    m.SetLocked(False)
    m.InsertControlPoint(0, vtk.vtkVector3d(0.0, 0.0, 0.0), "mine")
    m.AddControlPoint(vtk.vtkVector3d(5.0, 5.0, 5.0), "also mine")
    findings_scene.set_review(m, 2, "accepted")
    reviews = {c["id"]: c["review"] for c in findings_scene.findings_with_review(m)["candidates"]}
    assert reviews == {"N1": "unreviewed", "N2": "rejected", "N3": "accepted"}
    assert findings_scene.review_of(m, 1) == "rejected"
    lps = findings_doc["candidates"][0]["center_lps"]  # N2 in the fixture
    assert findings_scene.candidate_position_ras(m, 1) == pytest.approx([-lps[0], -lps[1], lps[2]])


def _reviewed_findings(findings_doc):
    f = Findings.from_dict(findings_doc)
    f.set_review("N1", "accepted")
    f.set_review("N3", "rejected")
    return f


def test_detect_written_mrk_json_keeps_its_reviews_in_the_module(scene, findings_doc, tmp_path):
    f = _reviewed_findings(findings_doc)
    path = write_markups_json(f, tmp_path / "scan.mrk.json")  # what `lesion-detector detect` writes
    loaded = _load_mrk_json(scene, path, "scan")
    result = findings_scene.adopt_markups_node(scene, loaded, None)
    assert loaded.GetScene() is None  # replaced, not duplicated
    m = result.markups
    assert m.GetName() == "scan"
    reviews = {c["id"]: c["review"] for c in findings_scene.findings_with_review(m)["candidates"]}
    assert reviews == {"N1": "accepted", "N2": "unreviewed", "N3": "rejected"}
    assert [result.table.GetCellText(r, 7) for r in range(3)] == ["accepted", "unreviewed", "rejected"]
    # full precision and provenance came back, not the 3 decimals of the description
    stored = json.loads(m.GetAttribute(findings_scene.ATTR_FINDINGS))
    by_id = {c["id"]: c for c in findings_doc["candidates"]}
    for c in stored["candidates"]:
        assert c["score"] == by_id[c["id"]]["score"] and c["center_lps"] == pytest.approx(by_id[c["id"]]["center_lps"])
    assert stored["volume"]["series_uid"] == findings_doc["volume"]["series_uid"]
    assert findings_scene.patient_flag_of(m)["status"] == "positive"
    # a review in the module, exported, reads back in the library
    findings_scene.set_review(m, 1, "accepted")
    from LesionDetectorLogicLib import exports

    out = exports.export_run(m, tmp_path / "out", ["markups"])[0]
    back = lib_markups.read_markups_json(out)
    assert {c.id: c.review for c in back.candidates} == {"N1": "accepted", "N2": "accepted", "N3": "rejected"}


def test_older_file_without_the_findings_measurement_still_loads(scene, findings_doc, tmp_path):
    f = _reviewed_findings(findings_doc)
    doc = lib_markups.markups_document(f)
    doc["markups"][0]["measurements"] = [m for m in doc["markups"][0]["measurements"]
                                         if m["name"] != lib_markups.FINDINGS_MEASUREMENT]
    path = tmp_path / "old.mrk.json"
    path.write_text(json.dumps(doc))
    result = findings_scene.adopt_markups_node(scene, _load_mrk_json(scene, path), None)
    cands = findings_scene.findings_with_review(result.markups)["candidates"]
    assert {c["id"]: c["review"] for c in cands} == {"N1": "accepted", "N2": "unreviewed", "N3": "rejected"}
    assert [c["score"] for c in cands] == pytest.approx([0.93, 0.61, 0.21])
    assert findings_scene.patient_flag_of(result.markups)["threshold"] is not None


def test_a_list_not_written_by_lesion_detector_is_refused(scene):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "someone else's")
    node.AddControlPoint(vtk.vtkVector3d(1.0, 2.0, 3.0), "F-1")
    with pytest.raises(ValueError, match="not written by Lesion Detector"):
        findings_scene.adopt_markups_node(scene, node, None)
    assert node.GetScene() is scene


def test_selected_means_the_same_in_the_file_and_the_module(scene, findings_doc):
    f = _reviewed_findings(findings_doc)
    f.set_review("N2", "rejected")
    file_selected = {p["id"]: p["selected"] for p in lib_markups.markups_document(f)["markups"][0]["controlPoints"]}
    m = findings_scene.create_result_nodes(scene, None, f.to_dict()).markups
    ids = [c["id"] for c in json.loads(m.GetAttribute(findings_scene.ATTR_FINDINGS))["candidates"]]
    module_selected = {cid: bool(m.GetNthControlPointSelected(i)) for i, cid in enumerate(ids)}
    assert module_selected == file_selected == {"N1": True, "N2": False, "N3": False}
    findings_scene.set_review(m, 2, "accepted")  # below threshold, promoted by the reader
    assert m.GetNthControlPointSelected(2)


def test_descriptions_of_older_module_versions_are_read(scene, findings_doc):
    m = findings_scene.create_result_nodes(scene, None, findings_doc).markups
    m.SetNthControlPointDescription(0, "score 0.930 (RPN 0.910, FPRN 0.950) | diameter 8.4 mm | review: rejected")
    assert findings_scene.review_of(m, 0) == "rejected"
    findings_scene.set_review(m, 0, "accepted")
    text = m.GetNthControlPointDescription(0)
    assert text.count("review") == 1 and "diameter 8.4 mm" in text
    assert findings_scene.review_of(m, 0) == "accepted"


def test_reviewed_run_exports_training_labels(scene, findings_doc, tmp_path):
    from LesionDetectorLogicLib import exports
    from LesionDetectorLib.luna16_format import read_annotations

    m = findings_scene.create_result_nodes(scene, None, findings_doc).markups
    findings_scene.set_review(m, 0, "accepted")
    findings_scene.set_review(m, 2, "rejected")
    written = exports.export_run(m, tmp_path, ["labels"], stem="run")
    assert [p.name for p in written] == ["annotations.csv", "hard_negatives.csv", "seriesuids.csv"]
    uid = findings_doc["volume"]["series_uid"]
    assert [(a.seriesuid, a.diameter_mm) for a in read_annotations(written[0])] == [(uid, 8.4)]
    assert [a.diameter_mm for a in read_annotations(written[1])] == [3.6]
