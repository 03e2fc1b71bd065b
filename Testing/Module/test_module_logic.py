"""LesionDetectorLogic end to end against real MRML, with a stand-in detect process.

The stand-in (fixtures/fake_detect.py) speaks the jsonl protocol and reports the
brightest voxel of the file it receives, so a bright voxel planted at a known index
must come back as a control point at that index's RAS position.
"""
import time
from pathlib import Path

import numpy as np
import pytest

import LesionDetector as module
from LesionDetectorLogicLib import detection_job, findings_scene
from module_test_helpers import add_volume, flipped_ijk_to_ras, oblique_ijk_to_ras

PLANTED_KJI = (3, 5, 9)  # [z, y, x]


def planted_volume(scene, ijk_to_ras):
    array = np.full((6, 10, 12), -800, dtype=np.int16)
    array[PLANTED_KJI] = 300
    return add_volume(scene, array, ijk_to_ras)


def make_logic(scene, command):
    logic = module.LesionDetectorLogic(scene=scene, detectCommand=command)
    logic.checkRequirements = False  # torch is present here; the check is for Slicer installs
    return logic


@pytest.mark.parametrize("ijk_to_ras", [oblique_ijk_to_ras(), flipped_ijk_to_ras()], ids=["oblique", "flipped"])
def test_planted_nodule_appears_at_its_ras_point(scene, fake_detect, ijk_to_ras):
    volume, study = planted_volume(scene, ijk_to_ras)
    logs = []
    result = make_logic(scene, fake_detect("ok")).process(volume, device="cpu", timeout=60, logCallback=logs.append)
    m = result.markups
    assert m.GetNumberOfControlPoints() == 1 and result.table.GetNumberOfRows() == 1
    k, j, i = PLANTED_KJI
    expected_ras = (ijk_to_ras @ np.array([i, j, k, 1.0]))[:3]
    pos = [0.0, 0.0, 0.0]
    m.GetNthControlPointPosition(0, pos)
    np.testing.assert_allclose(pos, expected_ras, atol=1e-3)
    sh = scene.GetSubjectHierarchyNode()
    assert sh.GetItemParent(sh.GetItemByDataNode(m)) == study
    findings = findings_scene.findings_with_review(m)
    assert findings["volume"]["source"] == "CT"  # the node, not the temporary file
    assert findings["provenance"]["device"] == "cpu"
    assert any("stray line" in line for line in logs)  # non-protocol output is logged, not fatal
    assert any(line.startswith("model: 3/3") for line in logs)


def test_poll_reports_progress_without_blocking(scene, fake_detect):
    volume, _ = planted_volume(scene, np.eye(4))
    logic = make_logic(scene, fake_detect("ok"))
    job = logic.startDetection(volume, operatingPoint="fp_per_scan_4")
    assert logic.isRunning()
    start = time.monotonic()
    result = logic.pollDetection()
    assert time.monotonic() - start < 0.5
    stages = set()
    while result is None:
        time.sleep(0.05)
        result = logic.pollDetection()
        stages.add(job.stage)
    assert {"model"} <= stages | {job.stage}
    assert not logic.isRunning()
    assert result.markups.GetAttribute(findings_scene.ATTR_OPERATING_POINT) == "fp_per_scan_4"
    assert not job.workdir.exists()


@pytest.mark.parametrize("mode, cause", [
    ("error", "no lungs found"),
    ("crash", "No module named 'torch'"),
    ("silent", "without reporting a findings file"),
])
def test_failed_run_names_the_cause_and_leaves_the_scene(scene, fake_detect, mode, cause):
    volume, _ = planted_volume(scene, np.eye(4))
    before = scene.GetNumberOfNodes()
    logic = make_logic(scene, fake_detect(mode))
    with pytest.raises(module.DetectionError, match=cause):
        logic.process(volume, timeout=60)
    assert scene.GetNumberOfNodes() == before
    assert not logic.isRunning()


def test_cancel_kills_the_process_and_removes_its_files(scene, fake_detect):
    volume, _ = planted_volume(scene, np.eye(4))
    before = scene.GetNumberOfNodes()
    logic = make_logic(scene, fake_detect("slow"))
    job = logic.startDetection(volume)
    deadline = time.monotonic() + 20
    while job.stage != "model" and time.monotonic() < deadline:
        logic.pollDetection()
        time.sleep(0.05)
    assert job.stage == "model" and job.total == 100
    started = time.monotonic()
    logic.cancelDetection()
    assert time.monotonic() - started < 6
    assert job.state == detection_job.CANCELLED
    assert job._proc.poll() is not None  # the child is gone
    assert not job.workdir.exists()
    assert logic.pollDetection() is None
    assert scene.GetNumberOfNodes() == before


def test_bad_inputs_are_refused_before_any_process_starts(scene, fake_detect):
    logic = make_logic(scene, fake_detect("ok"))
    with pytest.raises(ValueError, match="no input volume"):
        logic.startDetection(None)
    volume, _ = planted_volume(scene, np.eye(4))
    with pytest.raises(ValueError, match="device"):
        logic.startDetection(volume, device="tpu")
    with pytest.raises(ValueError, match="operating point"):
        logic.startDetection(volume, operatingPoint="sensitivity_0.5")
    assert logic.job is None


def test_missing_torch_is_reported_as_install_error(scene, fake_detect, monkeypatch):
    volume, _ = planted_volume(scene, np.eye(4))
    logic = module.LesionDetectorLogic(scene=scene, detectCommand=fake_detect("ok"))
    monkeypatch.setattr(module.dependencies, "missing_requirements", lambda: ["torch>=2.4"])
    with pytest.raises(module.InstallError, match="torch"):
        logic.startDetection(volume)


def test_review_rows_summary_and_export_through_the_logic(scene, fake_detect, findings_doc, tmp_path):
    volume, _ = planted_volume(scene, np.eye(4))
    logic = make_logic(scene, fake_detect("ok"))
    result = findings_scene.create_result_nodes(scene, volume, findings_doc)
    logic.setReview(result.markups, 1, "accepted")
    rows = logic.candidateRows(result.markups)
    assert [(r["rank"], r["id"], r["review"]) for r in rows] == [(1, "N1", "unreviewed"), (2, "N2", "accepted"),
                                                                  (3, "N3", "unreviewed")]
    assert rows[0]["location"] == "R 12.0, A -20.0, S 120.0"
    summary = logic.resultSummary(result.markups)
    assert summary["flag"] == "positive"
    assert "0.420" in summary["flag_text"] and "Sensitivity 0.95" in summary["flag_text"]
    assert "luna16-synthetic 0.1.0" in summary["model_text"]
    assert logic.jumpToCandidate(result.markups, 0) == pytest.approx([12.0, -20.0, 120.0])
    written = logic.exportResults(result.markups, tmp_path, ["json"])
    assert written[0].exists() and '"accepted"' in written[0].read_text()
    with pytest.raises(ValueError, match="export folder"):
        logic.exportResults(result.markups, "", ["json"])


def test_parse_event_tolerates_non_protocol_lines():
    assert detection_job.parse_event('{"event": "progress", "stage": "model", "done": 1, "total": 4}')["stage"] == "model"
    assert detection_job.parse_event("plain text") == {"event": "log", "message": "plain text"}
    assert detection_job.parse_event('{"no_event": 1}')["event"] == "log"
    assert detection_job.parse_event("{broken json")["event"] == "log"


def test_detect_command_uses_the_library_cli(tmp_path):
    argv = detection_job.detect_command(tmp_path / "in.nrrd", tmp_path / "out", "cuda", "fp_per_scan_1", "luna16-synthetic")
    assert argv[1:4] == ["-m", "LesionDetectorLib", "detect"]
    for flag, value in (("--format", "json,seg.nrrd"), ("--progress", "jsonl"), ("--device", "cuda"),
                        ("--operating-point", "fp_per_scan_1"), ("--model", "luna16-synthetic"),
                        ("--out", str(tmp_path / "out"))):
        assert argv[argv.index(flag) + 1] == value
    assert Path(argv[0]).exists()
