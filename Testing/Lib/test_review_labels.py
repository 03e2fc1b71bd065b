"""Reviewed findings -> LUNA16 annotations + hard negatives, from the library and the CLI."""
import json

import pytest

from LesionDetectorLib.cli.main import main
from LesionDetectorLib.export import write_findings_json, write_markups_json
from LesionDetectorLib.export.review_labels import read_hard_negatives, review_labels, write_review_labels
from LesionDetectorLib.findings import Candidate, Findings
from LesionDetectorLib.luna16_format import read_annotations, read_seriesuids


def _run(uid, reviews):
    cands = [Candidate(id=f"N{i + 1}", rank=i + 1, center_lps=[10.0 * i, -20.0, 30.0 + i], diameter_mm=5.0 + i,
                       score=0.9 - 0.1 * i, score_rpn=0.9, score_fprn=0.8, review=r) for i, r in enumerate(reviews)]
    return Findings(candidates=cands,
                    patient_flag={"status": "positive", "operating_point": "sensitivity_0.95", "threshold": 0.5,
                                  "max_score": 0.9},
                    model={"name": "m", "version": "1", "sha256": "a" * 64},
                    volume={"source": f"{uid}.mhd", "series_uid": uid, "shape_zyx": [4, 4, 4],
                            "spacing": [1.0, 1.0, 1.0], "origin": [0.0, 0.0, 0.0],
                            "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]},
                    provenance={"library_version": "0", "torch_version": "0", "device": "cpu",
                                "op_backend": "reference", "date": "2026-12-01"},
                    operating_point={"name": "sensitivity_0.95", "threshold": 0.5},
                    timings_s={k: 0.1 for k in ("read", "preprocess", "model", "postprocess", "total")})


def test_accepted_become_annotations_rejected_hard_negatives(tmp_path):
    runs = [_run("1.2.3", ["accepted", "rejected", "unreviewed"]), _run("1.2.4", ["rejected"])]
    result = write_review_labels(runs, tmp_path / "labels")
    assert result["counts"] == {"scans": 2, "accepted": 1, "rejected": 2, "unreviewed": 1}
    ann = read_annotations(result["annotations"])
    assert [(a.seriesuid, a.x, a.y, a.z, a.diameter_mm) for a in ann] == [("1.2.3", 0.0, -20.0, 30.0, 5.0)]
    neg = read_hard_negatives(result["hard_negatives"])
    assert [(n.seriesuid, n.x, n.z) for n in neg] == [("1.2.3", 10.0, 31.0), ("1.2.4", 0.0, 30.0)]
    assert read_seriesuids(result["seriesuids"]) == ["1.2.3", "1.2.4"]


def test_runs_without_uid_or_given_twice_are_refused():
    run = _run("1.2.3", ["accepted"])
    run.volume["series_uid"] = None
    with pytest.raises(ValueError, match="series UID"):
        review_labels([run])
    with pytest.raises(ValueError, match="twice"):
        review_labels([_run("9", ["accepted"]), _run("9", ["rejected"])])


def test_cli_reads_findings_json_and_reviewed_mrk_json(tmp_path, capsys):
    a = write_findings_json(_run("1.2.3", ["accepted", "rejected"]), tmp_path / "a.findings.json")
    b = write_markups_json(_run("1.2.4", ["unreviewed", "rejected"]), tmp_path / "b.mrk.json")
    assert main(["labels", "--findings", str(a), str(b), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"] == {"scans": 2, "accepted": 1, "rejected": 2, "unreviewed": 1}
    assert main(["labels", "--findings", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
