"""`lesion-detector evaluate` end to end on small CSVs, and exit code 2 on bad input."""
import json

import pytest

from LesionDetectorLib.cli.main import main

ANN = "seriesuid,coordX,coordY,coordZ,diameter_mm\ns1,0,0,0,10\ns1,100,0,0,8\ns2,0,0,0,6\n"
EXCL = "seriesuid,coordX,coordY,coordZ,diameter_mm\ns2,50,50,50,-1\n"
UIDS = "s1\ns2\ns3\ns4\n"
PRED = ("seriesuid,coordX,coordY,coordZ,probability\n"
        "s1,1,0,0,0.9\ns1,100,1,0,0.6\ns1,0,0,40,0.8\ns2,50,50,53,0.99\ns2,0,0,10,0.7\ns3,0,0,0,0.4\n")


def write(tmp_path, **files):
    contents = dict(annotations=ANN, excluded=EXCL, seriesuids=UIDS, predictions=PRED)
    contents.update(files)
    paths = {}
    for name, text in contents.items():
        paths[name] = tmp_path / f"{name}.csv"
        paths[name].write_text(text)
    return paths


def argv(paths, out, *extra):
    return ["evaluate", "--annotations", str(paths["annotations"]), "--excluded", str(paths["excluded"]),
            "--seriesuids", str(paths["seriesuids"]), "--predictions", str(paths["predictions"]),
            "--out", str(out), *extra]


def test_evaluate_writes_every_output(tmp_path, capsys):
    paths = write(tmp_path)
    out = tmp_path / "out"
    assert main(argv(paths, out, "--bootstrap", "50", "--seed", "3", "--froc-rule", "exact")) == 0
    for name in ("report.json", "report.md", "froc.png", "tnp.png", "operating_points.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "froc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    # 4 scans, 3 nodules; vertices (FP,TP): .9:(0,1) .8:(1,1) .7:(2,1) .6:(2,2) .4:(3,2); s2's
    # nodule is missed, the .99 mark sits on the excluded finding (default 10 mm -> radius 5).
    # 1/8 and 1/4 FP/scan = 0.5 and 1 FP -> 1 TP; 1/2 = 2 FPs -> top of the run at 2 -> 2 TPs.
    expected = [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3]
    assert report["sensitivities"] == pytest.approx(dict(zip(["0.125", "0.25", "0.5", "1", "2", "4", "8"], expected)))
    assert report["cpm"] == pytest.approx(sum(expected) / 7) and report["froc_rule"] == "exact"
    assert report["counts"]["ignored_on_excluded"] == 1
    assert report["bootstrap"]["draws"] == 50 and report["bootstrap"]["seed"] == 3
    assert report["tnp"]["n_negative"] == 2       # s3 (a mark at .4) and s4 (no mark)
    ops = json.loads((out / "operating_points.json").read_text())
    assert ops["sensitivity_0.90"]["reached"] is False and ops["sensitivity_0.90"]["threshold"] == 0.4
    assert "CPM" in capsys.readouterr().out


@pytest.mark.parametrize("name, text, message", [
    ("predictions", PRED + "s9,0,0,0,0.5\n", "predictions.csv:8: series s9"),
    ("predictions", "seriesuid,coordX,coordY,coordZ\ns1,0,0,0\n", "missing column(s) probability"),
    ("predictions", PRED + "s1,abc,0,0,0.5\n", "predictions.csv:8: coordX is not a number"),
    ("predictions", PRED + "s1,0,0,0,nan\n", "predictions.csv:8: probability is not a finite number"),
    ("predictions", "", "predictions.csv: file is empty"),
    ("annotations", "\n\n", "annotations.csv: file is empty"),
    ("annotations", ANN + "s1,0,0\n", "annotations.csv:5: 3 fields"),
    ("seriesuids", "s1\ns1\n", "seriesuids.csv:2: series s1 already listed"),
])
def test_bad_input_exits_2_naming_file_and_line(tmp_path, capsys, name, text, message):
    paths = write(tmp_path, **{name: text})
    assert main(argv(paths, tmp_path / "out", "--bootstrap", "0")) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "report.json").exists()


def test_detection_mode_needs_predictions(tmp_path, capsys):
    paths = write(tmp_path)
    args = [a for a in argv(paths, tmp_path / "out") if a not in ("--predictions", str(paths["predictions"]))]
    assert main(args) == 2
    assert "needs --predictions" in capsys.readouterr().err


def test_header_only_predictions_evaluate_to_zero(tmp_path):
    paths = write(tmp_path, predictions="seriesuid,coordX,coordY,coordZ,probability\n",
                  seriesuids="seriesuid\ns1\ns2\n")
    out = tmp_path / "out"
    assert main(argv(paths, out, "--bootstrap", "0")) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["cpm"] == 0.0 and report["n_scans"] == 2 and report["bootstrap"] is None
