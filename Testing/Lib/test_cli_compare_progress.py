"""``lesion-detector compare --progress``: the jsonl protocol of each stage, what the Slicer module reads."""
import json

import pytest

from LesionDetectorLib.cli.compare import STAGE_WEIGHTS, ComparisonProgress
from LesionDetectorLib.cli.main import main
from LesionDetectorLib.data.synthetic_followup import generate_followup, truth_findings
from LesionDetectorLib.export import read_findings_json, write_findings_json
from LesionDetectorLib.followup.matching import sphere_volume_ml
from LesionDetectorLib.io.writer import write_volume


def _measured(findings, keep_unmeasured=()):
    for c in findings.candidates:
        if c.id in keep_unmeasured:
            continue
        c.characterization = {"type": "solid", "calcified": False, "volume_ml": sphere_volume_ml(c.diameter_mm),
                              "long_axis_mm": c.diameter_mm, "short_axis_mm": c.diameter_mm,
                              "mean_diameter_mm": c.diameter_mm, "solid_component_mm": None, "mean_hu": 20.0,
                              "lung_rads": None}
    return findings


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    pair = generate_followup(6, 0, "small")
    d = tmp_path_factory.mktemp("followup_progress")
    paths = {"prior": write_volume(pair.prior, d / "prior.mhd"), "current": write_volume(pair.current, d / "current.mhd")}
    write_findings_json(_measured(truth_findings(pair, "prior")), d / "prior_findings.json")
    current = truth_findings(pair, "current")
    # One current finding without a size: the characterize stage has exactly one nodule to measure.
    unmeasured = next(c.id for c in current.candidates)
    write_findings_json(_measured(current, {unmeasured}), d / "current_findings.json")
    return d, paths, unmeasured


def _events(out: str):
    lines = [line for line in out.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]          # every stdout line is protocol JSON


def test_jsonl_reports_every_stage_in_order_with_a_rising_fraction(written, blob_detector, capsys, tmp_path):
    d, paths, unmeasured = written
    out = tmp_path / "cmp"
    rc = main(["compare", "--prior", paths["prior"], "--current", paths["current"], "--out", str(out),
               "--prior-findings", str(d / "prior_findings.json"), "--current-findings",
               str(d / "current_findings.json"), "--interval-days", "300", "--progress", "jsonl"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    events = _events(captured.out)
    assert {e["event"] for e in events} <= {"progress", "log", "warning", "done"}
    progress = [e for e in events if e["event"] == "progress"]
    stages = [s for i, s in enumerate(e["stage"] for e in progress) if i == 0 or progress[i - 1]["stage"] != s]
    # Both findings given: no detection stage, and no model was ever built.
    assert stages == ["read", "register", "characterize", "match"] and blob_detector == []
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all({"stage", "done", "total", "fraction"} <= set(e) for e in progress)
    characterize = [e for e in progress if e["stage"] == "characterize"]
    assert (characterize[0]["done"], characterize[-1]["done"], characterize[-1]["total"]) == (0, 1, 1)
    done = events[-1]
    assert done["event"] == "done" and json.loads(open(done["comparison"]).read())["interval_days"] == 300
    assert set(done) == {"event", "comparison"}            # findings given: none written
    assert any("Follow-up comparison" in e.get("message", "") for e in events if e["event"] == "log")


def test_detection_stages_carry_the_detector_steps(written, blob_detector, capsys, tmp_path):
    d, paths, _ = written
    out = tmp_path / "cmp"
    rc = main(["compare", "--prior", paths["prior"], "--current", paths["current"], "--out", str(out),
               "--prior-findings", str(d / "prior_findings.json"), "--min-score", "1.0", "--progress", "jsonl"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    events = _events(captured.out)
    detect = [e for e in events if e["event"] == "progress" and e["stage"] == "detect current"]
    assert len(blob_detector) == 1 and detect
    steps = [e["step"] for e in detect]
    assert steps[0] == "read" and steps[-1] == "postprocess" and "model" in steps
    model = [e for e in detect if e["step"] == "model"]
    assert model[-1]["done"] == model[-1]["total"] > 0
    assert all(e["event"] != "progress" or e["stage"] != "detect prior" for e in events)
    done = events[-1]
    assert done["event"] == "done" and set(done) == {"event", "comparison", "current_findings"}
    assert read_findings_json(done["current_findings"]).volume["source"] == paths["current"]


def test_bad_input_is_one_error_event_and_exit_2(written, capsys, tmp_path):
    d, paths, _ = written
    out = tmp_path / "cmp"
    rc = main(["compare", "--prior", paths["prior"], "--current", paths["current"], "--out", str(out),
               "--prior-findings", str(d / "current_findings.json"), "--current-findings",
               str(d / "current_findings.json"), "--progress", "jsonl"])
    captured = capsys.readouterr()
    events = _events(captured.out)
    assert rc == 2 and events[-1]["event"] == "error" and events[-1]["exit_code"] == 2
    assert "not the same scan" in events[-1]["message"] and captured.err == ""
    assert not out.exists() or not any(out.iterdir())


def test_none_and_unset_progress_print_no_protocol(written, capsys, tmp_path):
    d, paths, _ = written
    argv = ["compare", "--prior", paths["prior"], "--current", paths["current"], "--prior-findings",
            str(d / "prior_findings.json"), "--current-findings", str(d / "current_findings.json")]
    assert main(argv + ["--out", str(tmp_path / "a"), "--progress", "none"]) == 0
    captured = capsys.readouterr()
    assert "{" not in captured.out.splitlines()[0] and "Follow-up comparison" in captured.out
    assert captured.err == ""
    # Unset: a bar only on a terminal (pytest's stderr is not one), so no bar either.
    assert main(argv + ["--out", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().err == ""


def test_fraction_follows_the_planned_stages():
    sink = ComparisonProgress("none")
    sink.plan(["read", "detect current", "register", "characterize", "match"])
    sink.report("read", 2, 2)
    after_read = sink.fraction
    sink.report("detect current", 5, 10, "model")
    mid = sink.fraction
    sink.report("detect current", 1, 1, "postprocess")
    end_detect = sink.fraction
    sink.report("register", 0, 1)
    assert 0 < after_read < mid < end_detect == pytest.approx(sink.fraction)
    # The detection's share is its weight among the stages that run; a step reported again
    # lower does not move the bar back.
    planned = ["read", "detect current", "register", "characterize", "match"]
    share = STAGE_WEIGHTS["detect current"] / sum(STAGE_WEIGHTS[s] for s in planned)
    assert end_detect - after_read == pytest.approx(share) and share > 0.45
    sink.report("detect current", 0, 10, "model")
    assert sink.fraction == pytest.approx(end_detect)
    sink.report("match", 1, 1)
    assert sink.fraction == pytest.approx(1.0)
