"""The module's follow-up comparison: two volume nodes -> background ``compare`` -> findings + pairs
table, all or nothing; Cancel; bad input; DICOM dates; a row click (real MRML scene, no Qt)."""
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import slicer

from LesionDetectorLogicLib import comparison_job, comparison_scene, findings_scene, geometry
from module_test_helpers import FakeDicomDatabase, add_volume, flipped_ijk_to_ras, oblique_ijk_to_ras

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def fake_compare(monkeypatch, tmp_path):
    """A ``command`` for ComparisonRun running fixtures/fake_compare.py with the argv the module builds."""
    record = tmp_path / "argv.json"
    monkeypatch.setenv("FAKE_COMPARE_RECORD", str(record))

    def factory(mode="ok"):
        monkeypatch.setenv("FAKE_COMPARE_MODE", mode)

        def command(prior, current, out, **kw):
            argv = comparison_job.compare_command(prior, current, out, **kw)
            assert argv[1:4] == ["-m", "LesionDetectorLib", "compare"]
            return [sys.executable, str(FIXTURES / "fake_compare.py"), *argv[4:]]
        return command
    factory.argv = lambda: json.loads(record.read_text())
    return factory


def _volume(scene, name, bright_at, ijk_to_ras=None):
    array = np.full((6, 10, 12), -800, dtype=np.int16)
    array[bright_at] = 300
    node, _ = add_volume(scene, array, np.eye(4) if ijk_to_ras is None else ijk_to_ras, name=name)
    return node


def _workdirs():
    return set(Path(tempfile.gettempdir()).glob("LesionDetector-compare-*"))


def _nodes(scene):
    return scene.GetNumberOfNodes()


def test_both_scans_detected_and_the_pairs_table_added(scene, fake_compare):
    prior = _volume(scene, "CT 2025", (2, 3, 4), flipped_ijk_to_ras())
    current = _volume(scene, "CT 2026", (3, 5, 9), oblique_ijk_to_ras())
    before = _workdirs()
    run = comparison_job.ComparisonRun(scene, prior, current, interval_days=365,
                                       command=fake_compare("ok")).start()
    result = run.wait(timeout=60)
    argv = fake_compare.argv()
    assert argv[argv.index("--interval-days") + 1] == "365.0" and "--prior-findings" not in argv
    assert argv[argv.index("--progress") + 1] == "jsonl"
    assert run.fraction == 1.0 and _workdirs() == before            # the temporary folder is gone
    # Each scan got its own findings, on its own volume, at its brightest voxel (RAS in the scene).
    for side, node, peak in ((result.prior, prior, (2, 3, 4)), (result.current, current, (3, 5, 9))):
        assert side.markups.GetNodeReference(findings_scene.REF_VOLUME) is node
        assert side.markups.GetNumberOfControlPoints() == 1
        ijk = np.array([peak[2], peak[1], peak[0], 1.0])
        np.testing.assert_allclose(findings_scene.candidate_position_ras(side.markups, 0),
                                   (geometry.node_ijk_to_world_ras(node) @ ijk)[:3], atol=1e-3)
        assert findings_scene.findings_with_review(side.markups)["volume"]["source"] == node.GetName()
    assert result.table.GetName() == "CT 2026 vs CT 2025"
    assert comparison_job.comparison_volumes(result.table) == (current, prior)
    assert comparison_job.panel_rows(result.table) == [["grown", "6.0", "9.0", "+3.0", "+246", "204", "4B"]]
    assert comparison_scene.comparison_of(result.table)["prior"]["source"] == "CT 2025"


def test_existing_results_are_reused_with_their_reviews(scene, fake_compare, findings_doc):
    prior = _volume(scene, "prior", (2, 3, 4))
    current = _volume(scene, "current", (3, 5, 9))
    findings_doc["volume"]["shape_zyx"] = [6, 10, 12]
    older = findings_scene.create_result_nodes(scene, prior, findings_doc)
    latest = findings_scene.create_result_nodes(scene, prior, findings_doc)
    findings_scene.set_review(latest.markups, 0, "rejected")           # N1, rank 1
    run = comparison_job.ComparisonRun(scene, prior, current, command=fake_compare("ok")).start()
    result = run.wait(timeout=60)
    argv = fake_compare.argv()
    assert "--prior-findings" in argv and "--current-findings" not in argv and "--interval-days" not in argv
    assert run.reused == {"prior": latest.markups} and older.markups is not latest.markups
    assert result.prior is None and result.current is not None        # only the current scan was detected on
    pair = comparison_scene.comparison_of(result.table)["pairs"][0]
    assert pair["prior"]["id"] == "N2"                                  # the rejected N1 stayed out
    # Without reuse both are detected on again.
    again = comparison_job.ComparisonRun(scene, prior, current, reuse_findings=False,
                                         command=fake_compare("ok")).start().wait(timeout=60)
    assert again.prior is not None and "--prior-findings" not in fake_compare.argv()


def _dicom(scene, node, uid):
    sh = scene.GetSubjectHierarchyNode()
    sh.SetItemUID(sh.GetItemByDataNode(node), "DICOM", uid)


def test_interval_comes_from_the_dicom_study_dates(scene, fake_compare):
    prior = _volume(scene, "prior", (2, 3, 4))
    current = _volume(scene, "current", (3, 5, 9))
    _dicom(scene, prior, "1.2.3.1")
    _dicom(scene, current, "1.2.3.2")
    db = FakeDicomDatabase({"1.2.3.1": ("P1", "S1", {"0008,0020": "20250301"}),
                            "1.2.3.2": ("P1", "S2", {"0008,0020": "20260301"})})
    comparison_job.ComparisonRun(scene, prior, current, dicom_database=db, command=fake_compare("ok")).start().wait(60)
    argv = fake_compare.argv()
    assert argv[argv.index("--interval-days") + 1] == "365.0"
    # Given days win over the headers; swapped volumes are refused before anything starts.
    assert comparison_job.resolve_interval_days(30, prior, current, db) == 30.0
    before, dirs = _nodes(scene), _workdirs()
    with pytest.raises(ValueError, match="swapped"):
        comparison_job.ComparisonRun(scene, current, prior, dicom_database=db, command=fake_compare("ok")).start()
    assert _nodes(scene) == before and _workdirs() == dirs
    # The same series on both sides is no follow-up.
    _dicom(scene, prior, "1.2.3.2")
    with pytest.raises(ValueError, match="same DICOM series"):
        comparison_job.ComparisonRun(scene, prior, current, command=fake_compare("ok")).start()


def test_dicom_database_proposes_the_loaded_prior(scene):
    prior = _volume(scene, "prior", (2, 3, 4))
    current = _volume(scene, "current", (3, 5, 9))
    _dicom(scene, prior, "1.2.3.1")
    _dicom(scene, current, "1.2.3.2")
    db = FakeDicomDatabase({"1.2.3.1": ("P1", "S1", {"0008,0020": "20250301", "0008,0060": "CT"}),
                            "1.2.3.2": ("P1", "S2", {"0008,0020": "20260301", "0008,0060": "CT"}),
                            "1.2.3.9": ("P1", "S0", {"0008,0020": "20240301", "0008,0060": "CT"})})
    found = comparison_scene.prior_series_for(db, geometry.series_instance_uid(current))
    assert [f["series_uid"] for f in found] == ["1.2.3.1", "1.2.3.9"]
    assert comparison_job.volume_of_series(scene, found[0]["series_uid"]) is prior
    assert comparison_job.volume_of_series(scene, "1.2.3.9") is None    # in the database, not loaded
    proposed = comparison_job.find_prior(scene, db, current)
    assert proposed["series_uid"] == "1.2.3.1" and proposed["node"] is prior and proposed["study_date"] == "20250301"
    scene.RemoveNode(prior)
    assert comparison_job.find_prior(scene, db, current)["node"] is None           # the widget offers to load it
    with pytest.raises(ValueError, match="no earlier CT study"):
        comparison_job.find_prior(scene, FakeDicomDatabase({"1.2.3.2": db.series["1.2.3.2"]}), current)
    with pytest.raises(ValueError, match="not loaded from the DICOM database"):
        comparison_job.find_prior(scene, db, _volume(scene, "from a file", (1, 1, 1)))


@pytest.mark.parametrize("which, match", [("none", "choose the prior volume"), ("same", "same volume"),
                                          ("label", "not a scalar"), ("empty", "no single-component")])
def test_bad_input_is_refused_before_anything_starts(scene, fake_compare, which, match):
    current = _volume(scene, "current", (3, 5, 9))
    prior = {"none": None, "same": current,
             "label": scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "lungs"),
             "empty": scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no image")}[which]
    before, dirs = _nodes(scene), _workdirs()
    with pytest.raises(ValueError, match=match):
        comparison_job.ComparisonRun(scene, prior, current, command=fake_compare("ok")).start()
    assert _nodes(scene) == before and _workdirs() == dirs


@pytest.mark.parametrize("mode, match", [("error", "no lungs found in the prior scan"),
                                         ("badjson", "could not be imported")])
def test_a_failed_run_leaves_the_scene_unchanged(scene, fake_compare, mode, match):
    prior = _volume(scene, "prior", (2, 3, 4))
    current = _volume(scene, "current", (3, 5, 9))
    before, dirs = _nodes(scene), _workdirs()
    run = comparison_job.ComparisonRun(scene, prior, current, command=fake_compare(mode)).start()
    with pytest.raises(comparison_job.ComparisonError, match=match):
        run.wait(timeout=60)
    # badjson: both findings were imported before the table failed; they are gone again.
    assert _nodes(scene) == before and _workdirs() == dirs


def test_cancel_stops_the_child_and_adds_nothing(scene, fake_compare):
    prior = _volume(scene, "prior", (2, 3, 4))
    current = _volume(scene, "current", (3, 5, 9))
    before, dirs = _nodes(scene), _workdirs()
    run = comparison_job.ComparisonRun(scene, prior, current, command=fake_compare("slow")).start()
    deadline = time.monotonic() + 30
    while run.stage != "detect prior" and time.monotonic() < deadline:
        assert run.poll() is None
        time.sleep(0.05)
    assert run.running and run.fraction == pytest.approx(0.05) and run.total == 100
    run.cancel()
    assert not run.running and run.poll() is None
    with pytest.raises(comparison_job.ComparisonError, match="cancelled"):
        run.wait(timeout=1)
    assert _nodes(scene) == before and _workdirs() == dirs


@pytest.fixture
def views(scene):
    for name in ("Red", "Yellow"):
        sn = slicer.vtkMRMLSliceNode()
        sn.SetLayoutName(name)
        scene.AddNode(sn)
        cn = slicer.vtkMRMLSliceCompositeNode()
        cn.SetLayoutName(name)
        scene.AddNode(cn)
    layout = slicer.vtkMRMLLayoutNode()
    scene.AddNode(layout)
    return layout


def test_a_row_click_shows_both_volumes_side_by_side_centred_on_the_pair(scene, fake_compare, views):
    prior = _volume(scene, "prior", (2, 3, 4), flipped_ijk_to_ras())
    current = _volume(scene, "current", (3, 5, 9), oblique_ijk_to_ras())
    result = comparison_job.ComparisonRun(scene, prior, current, command=fake_compare("ok")).start().wait(60)
    got = comparison_job.centre_on_pair(scene, result.table, 0)
    assert views.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
    np.testing.assert_allclose(got["current"], findings_scene.candidate_position_ras(result.current.markups, 0))
    np.testing.assert_allclose(got["prior"], findings_scene.candidate_position_ras(result.prior.markups, 0))
    scene.RemoveNode(current)
    scene.RemoveNode(prior)
    with pytest.raises(ValueError, match="no longer in the scene"):
        comparison_job.centre_on_pair(scene, result.table, 0)


def test_the_real_compare_command_on_a_synthetic_follow_up_pair(scene):
    """The whole path with the library's own ``compare`` child (registration and matching for real;
    the findings are the pair's true nodules, reused as the scans' existing results, so no model runs)."""
    pytest.importorskip("SimpleITK")
    from LesionDetectorLib.data.synthetic_followup import generate_followup, truth_findings
    from LesionDetectorLib.followup.matching import sphere_volume_ml

    pair = generate_followup(6, 0, "small")
    nodes = {}
    for role, volume in (("prior", pair.prior), ("current", pair.current)):
        m = geometry.ijk_to_ras_from_itk_geometry(volume.spacing, volume.origin, volume.direction)
        nodes[role], _ = add_volume(scene, volume.array.astype(np.int16), m, name=f"synthetic {role}")
        findings = truth_findings(pair, role)
        for c in findings.candidates:   # sized as if segmented exactly: no characterization needed
            c.characterization = {"type": "solid", "calcified": False, "volume_ml": sphere_volume_ml(c.diameter_mm),
                                  "long_axis_mm": c.diameter_mm, "short_axis_mm": c.diameter_mm,
                                  "mean_diameter_mm": c.diameter_mm, "solid_component_mm": None,
                                  "mean_hu": 20.0, "lung_rads": None}
        findings_scene.create_result_nodes(scene, nodes[role], json.loads(json.dumps(findings.to_dict())))
    logs = []
    run = comparison_job.ComparisonRun(scene, nodes["prior"], nodes["current"], interval_days=365,
                                       log=logs.append).start()
    result = run.wait(timeout=600)
    truth = {t["id"]: t["status"] for t in pair.truth}
    doc = comparison_scene.comparison_of(result.table)
    got = {(p["current"] or p["prior"])["id"]: p["status"] for p in doc["pairs"]}
    assert got == truth
    assert result.prior is None and result.current is None and run.fraction == 1.0
    assert doc["registration"]["surface_mean_mm"] < 2.0
    assert [row[0] for row in comparison_job.panel_rows(result.table)] == [p["status"] for p in doc["pairs"]]
    assert any("Follow-up comparison" in line for line in logs)
