"""Findings JSON -> markups node, table node and subject hierarchy in a real MRML scene."""
import json

import numpy as np
import pytest
import slicer

from LesionDetectorLogicLib import exports, findings_scene
from module_test_helpers import add_volume, oblique_ijk_to_ras


@pytest.fixture
def volume_and_study(scene):
    return add_volume(scene, np.zeros((4, 5, 6), np.int16), oblique_ijk_to_ras(), name="Chest CT")


def test_fixture_is_a_valid_library_findings_document(findings_doc):
    from LesionDetectorLib.export.findings_json import validate_findings_dict

    assert validate_findings_dict(findings_doc) == []


def test_markups_points_are_ranked_locked_labelled_and_in_ras(scene, volume_and_study, findings_doc):
    volume, _ = volume_and_study
    result = findings_scene.create_result_nodes(scene, volume, findings_doc)
    m = result.markups
    assert m.GetName() == "Chest CT lesion candidates"
    assert m.GetNumberOfControlPoints() == 3
    assert [m.GetNthControlPointLabel(i) for i in range(3)] == ["N1 0.93", "N2 0.61", "N3 0.21"]
    by_id = {c["id"]: c for c in findings_doc["candidates"]}
    for i in range(3):
        assert m.GetNthControlPointLocked(i)
        pos = [0.0, 0.0, 0.0]
        m.GetNthControlPointPosition(i, pos)
        lps = by_id[f"N{i + 1}"]["center_lps"]
        np.testing.assert_allclose(pos, [-lps[0], -lps[1], lps[2]], atol=1e-9)
    desc = m.GetNthControlPointDescription(0)
    assert "score 0.930" in desc and "RPN 0.910" in desc and "FPRN 0.950" in desc and "diameter 8.4 mm" in desc
    # colour by score: threshold 0.42 -> the first two use the "selected" (red) colour
    assert [bool(m.GetNthControlPointSelected(i)) for i in range(3)] == [True, True, False]
    assert m.GetDisplayNode().GetSelectedColor() == pytest.approx(findings_scene.ABOVE_THRESHOLD_COLOR)


def test_table_lists_candidates_in_rank_order(scene, volume_and_study, findings_doc):
    volume, _ = volume_and_study
    table = findings_scene.create_result_nodes(scene, volume, findings_doc).table
    assert table.GetNumberOfRows() == 3
    assert [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())] == list(findings_scene.TABLE_COLUMNS)
    assert [table.GetCellText(r, 0) for r in range(3)] == ["1", "2", "3"]
    assert [table.GetCellText(r, 1) for r in range(3)] == ["N1", "N2", "N3"]
    assert float(table.GetCellText(0, 2)) == pytest.approx(0.93)
    assert float(table.GetCellText(0, 3)) == pytest.approx(8.4)
    assert table.GetCellText(0, 4) == "R 12.0, A -20.0, S 120.0"
    assert table.GetCellText(2, 7) == "unreviewed"


def test_nodes_sit_under_the_volumes_study_with_flag_and_model(scene, volume_and_study, findings_doc):
    volume, study = volume_and_study
    result = findings_scene.create_result_nodes(scene, volume, findings_doc)
    sh = scene.GetSubjectHierarchyNode()
    for node in (result.markups, result.table):
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study
    info = findings_scene.patient_flag_of(result.markups)
    assert info["status"] == "positive"
    assert float(info["threshold"]) == pytest.approx(0.42)
    assert info["operating_point"] == "sensitivity_0.95"
    assert (info["model_name"], info["model_version"]) == ("luna16-synthetic", "0.1.0")
    assert result.markups.GetNodeReference(findings_scene.REF_TABLE) is result.table
    assert result.markups.GetNodeReference(findings_scene.REF_VOLUME) is volume


def test_volume_without_study_keeps_results_beside_it(scene, findings_doc):
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "loose")
    result = findings_scene.create_result_nodes(scene, volume, findings_doc)
    sh = scene.GetSubjectHierarchyNode()
    assert sh.GetItemParent(sh.GetItemByDataNode(result.markups)) == sh.GetSceneItemID()


def test_invalid_findings_add_nothing(scene, volume_and_study, findings_doc):
    volume, _ = volume_and_study
    before = scene.GetNumberOfNodes()
    findings_doc["candidates"][1]["center_lps"] = [1.0, float("nan"), 2.0]
    with pytest.raises(ValueError, match="center_lps must be finite"):
        findings_scene.create_result_nodes(scene, volume, findings_doc)
    findings_doc["schema_version"] = "2.0"
    with pytest.raises(ValueError, match="schema version"):
        findings_scene.create_result_nodes(scene, volume, findings_doc)
    assert scene.GetNumberOfNodes() == before


def test_failure_midway_removes_the_nodes_already_added(scene, volume_and_study, findings_doc, monkeypatch):
    volume, _ = volume_and_study
    before = scene.GetNumberOfNodes()

    def broken(*args):
        raise RuntimeError("table could not be filled")
    monkeypatch.setattr(findings_scene, "_fill_table", broken)
    with pytest.raises(RuntimeError):
        findings_scene.create_result_nodes(scene, volume, findings_doc)
    assert scene.GetNumberOfNodes() == before


def test_review_updates_markups_table_and_findings(scene, volume_and_study, findings_doc):
    volume, _ = volume_and_study
    result = findings_scene.create_result_nodes(scene, volume, findings_doc)
    findings_scene.set_review(result.markups, 0, "accepted")
    findings_scene.set_review(result.markups, 2, "rejected")
    findings_scene.set_review(result.markups, 2, "rejected")  # idempotent: one review tag only
    assert [findings_scene.review_of(result.markups, i) for i in range(3)] == ["accepted", "unreviewed", "rejected"]
    assert result.markups.GetNthControlPointDescription(2).count("review") == 1
    assert [result.table.GetCellText(r, 7) for r in range(3)] == ["accepted", "unreviewed", "rejected"]
    reviews = {c["id"]: c["review"] for c in findings_scene.findings_with_review(result.markups)["candidates"]}
    assert reviews == {"N1": "accepted", "N2": "unreviewed", "N3": "rejected"}
    with pytest.raises(ValueError):
        findings_scene.set_review(result.markups, 0, "maybe")
    with pytest.raises(IndexError):
        findings_scene.set_review(result.markups, 3, "accepted")


def test_mrk_json_round_trip_keeps_positions_and_review(scene, volume_and_study, findings_doc, tmp_path):
    volume, _ = volume_and_study
    m = findings_scene.create_result_nodes(scene, volume, findings_doc).markups
    findings_scene.set_review(m, 1, "rejected")
    path = tmp_path / "run.mrk.json"
    writer = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(writer)
    writer.SetFileName(str(path))
    assert writer.WriteData(m)
    on_disk = json.loads(path.read_text())["markups"][0]
    assert on_disk["coordinateSystem"] == "LPS"
    np.testing.assert_allclose(on_disk["controlPoints"][0]["position"], [-12.0, 20.0, 120.0], atol=1e-6)

    reread = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "reread")
    reader = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(reader)
    reader.SetFileName(str(path))
    assert reader.ReadData(reread)
    assert reread.GetNumberOfControlPoints() == 3
    assert [findings_scene.review_of(reread, i) for i in range(3)] == ["unreviewed", "rejected", "unreviewed"]
    for i in range(3):
        a, b = [0.0] * 3, [0.0] * 3
        m.GetNthControlPointPosition(i, a)
        reread.GetNthControlPointPosition(i, b)
        np.testing.assert_allclose(a, b, atol=1e-6)
        assert reread.GetNthControlPointLabel(i) == m.GetNthControlPointLabel(i)
        assert reread.GetNthControlPointLocked(i)


def test_review_state_survives_scene_save_and_reload(scene, volume_and_study, findings_doc, tmp_path):
    volume, _ = volume_and_study
    m = findings_scene.create_result_nodes(scene, volume, findings_doc).markups
    findings_scene.set_review(m, 0, "accepted")
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()
    other = slicer.vtkMRMLScene()
    other.SetURL(str(tmp_path / "scene.mrml"))
    other.Connect()
    restored = other.GetNodesByName("Chest CT lesion candidates").GetItemAsObject(0)
    assert restored is not None
    findings = json.loads(restored.GetAttribute(findings_scene.ATTR_FINDINGS))
    assert [c["id"] for c in findings["candidates"]] == ["N1", "N2", "N3"]
    assert restored.GetAttribute(findings_scene.ATTR_FLAG) == "positive"
    other.Clear(1)


def test_exports_carry_the_review(scene, volume_and_study, findings_doc, tmp_path):
    volume, _ = volume_and_study
    m = findings_scene.create_result_nodes(scene, volume, findings_doc).markups
    findings_scene.set_review(m, 0, "accepted")
    findings_scene.set_review(m, 1, "rejected")
    written = exports.export_run(m, tmp_path / "out", ["markups", "luna16", "json"])
    assert [p.name for p in written] == ["Chest_CT_lesion_candidates.mrk.json", "Chest_CT_lesion_candidates.csv",
                                         "Chest_CT_lesion_candidates.findings.json"]
    doc = json.loads(written[2].read_text())
    assert {c["id"]: c["review"] for c in doc["candidates"]} == {"N1": "accepted", "N2": "rejected", "N3": "unreviewed"}
    csv_lines = written[1].read_text().splitlines()
    assert csv_lines[0].split(",")[-1] == "review"
    assert csv_lines[1].split(",")[0] == findings_doc["volume"]["series_uid"]
    assert csv_lines[1].endswith("accepted") and csv_lines[2].endswith("rejected")
    assert "accepted" in written[0].read_text()
    with pytest.raises(ValueError, match="unknown export format"):
        exports.export_run(m, tmp_path / "out", ["pdf"])


def test_table_shows_the_characterization(scene, volume_and_study, findings_doc):
    import copy

    doc = copy.deepcopy(findings_doc)
    first = next(c for c in doc["candidates"] if c["id"] == "N1")
    first["characterization"] = {
        "type": "part-solid", "calcified": False, "volume_ml": 0.42, "long_axis_mm": 11.0, "short_axis_mm": 8.2,
        "mean_diameter_mm": 9.6, "solid_component_mm": 6.5, "mean_hu": -350.0, "lung_rads": "4A"}
    volume, _ = volume_and_study
    table = findings_scene.create_result_nodes(scene, volume, doc).table
    col = {table.GetColumnName(c): c for c in range(table.GetNumberOfColumns())}
    assert table.GetCellText(0, col["Type"]) == "part-solid"
    assert float(table.GetCellText(0, col["Mean diameter (mm)"])) == pytest.approx(9.6)
    assert float(table.GetCellText(0, col["Volume (mL)"])) == pytest.approx(0.42)
    assert table.GetCellText(0, col["Lung-RADS"]) == "4A"
    assert table.GetCellText(1, col["Lung-RADS"]) == "" and table.GetCellText(1, col["Type"]) == ""


def test_panel_rows_show_type_measured_size_and_lung_rads(scene, volume_and_study, findings_doc):
    """The module panel's table: a characterized finding shows its type, measured mean diameter,
    volume and Lung-RADS; an uncharacterized one its detector box size, marked as such."""
    import copy

    import LesionDetector as module

    doc = copy.deepcopy(findings_doc)
    first = next(c for c in doc["candidates"] if c["id"] == "N1")
    first["characterization"] = {
        "type": "solid", "calcified": True, "volume_ml": 0.1234, "long_axis_mm": 7.0, "short_axis_mm": 5.6,
        "mean_diameter_mm": 6.3, "solid_component_mm": 6.3, "mean_hu": 420.0, "lung_rads": "1"}
    volume, _ = volume_and_study
    markups = findings_scene.create_result_nodes(scene, volume, doc).markups
    rows = module.LesionDetectorLogic(scene=scene).candidateRows(markups)
    cells = [findings_scene.panel_cells(r) for r in rows]
    assert len(cells[0]) == len(findings_scene.PANEL_COLUMNS)
    by = dict(zip(findings_scene.PANEL_COLUMNS, cells[0]))
    assert (by["Type"], by["Size (mm)"], by["Volume (mL)"], by["Lung-RADS"]) == ("solid, calcified", "6.3", "0.123", "1")
    other = dict(zip(findings_scene.PANEL_COLUMNS, cells[1]))
    assert other["Size (mm)"].endswith("(box)") and other["Type"] == "" and other["Lung-RADS"] == ""
