"""``lesion-detector evaluate --data DIR --model DIR``: detection over a LUNA16-layout folder,
per-scan predictions that a second run resumes, the FROC report, and bad input -> exit 2.

The data are two ``lesion-detector synth --size small`` scans; the model is the ``tiny`` preset,
randomly initialised and saved with ``save_pretrained`` (the real loading, SHA-256 check and
network run). Each scan's ``seg-lungs-LUNA16`` mask is cut down to a small cube so the lung
crop is one 64^3 tile and the test stays fast on one CPU thread.
"""
import csv
import json

import numpy as np
import pytest
import torch

from LesionDetectorLib.cli.main import main
from LesionDetectorLib.coordinates import world_to_index
from LesionDetectorLib.data.luna16_dataset import Luna16Dataset
from LesionDetectorLib.inference import Detector
from LesionDetectorLib.io import read_volume, write_volume
from LesionDetectorLib.model import ModelConfig, build_model, save_pretrained
from LesionDetectorLib.volume import Volume

CUBE_HALF_MM = 10.0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("luna")
    assert main(["synth", "--n", "2", "--size", "small", "--subsets", "2", "--seed", "3", "--out", str(root)]) == 0
    ds = Luna16Dataset(root)
    for scan in ds:
        labels = read_volume(str(scan.lung_mask_path), allow_non_ct=True)
        lung = np.argwhere(np.isin(np.asarray(labels.array), (3, 4)))
        rows = ds.annotations(scan.seriesuid)
        # Centre the cube on the scan's first nodule (else inside the lungs) in the mask's grid.
        centre = (world_to_index(labels, rows[:1, :3])[0] if len(rows) else lung.mean(axis=0))
        half = np.ceil(CUBE_HALF_MM / np.asarray(labels.spacing)[::-1]).astype(int)
        lo = np.maximum(np.round(centre).astype(int) - half, 0)
        hi = np.minimum(np.round(centre).astype(int) + half + 1, labels.array.shape)
        cube = np.zeros(labels.array.shape, dtype=np.uint8)
        cube[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 3
        write_volume(Volume(cube, labels.spacing, labels.origin, labels.direction), scan.lung_mask_path)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("models") / "tiny-random"
    save_pretrained(build_model(ModelConfig.preset("tiny")), directory, {"name": "tiny-random", "version": "0.0.1"})
    return directory


def _argv(data, model, out, *extra):
    return ["evaluate", "--data", str(data), "--model", str(model), "--out", str(out), "--device", "cpu",
            "--bootstrap", "20", "--no-progress", *extra]


def test_detects_every_scan_reports_and_resumes(data, model_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    uids = [u.strip() for u in (data / "seriesuids.csv").read_text().splitlines() if u.strip()]
    assert main(_argv(data, model_dir, out)) == 0
    first = capsys.readouterr().out
    assert "model tiny-random 0.0.1 on cpu: 2 scan(s) to detect" in first and "CPM" in first

    for name in ("report.json", "report.md", "froc.png", "tnp.png", "operating_points.json", "predictions.csv"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    assert report["n_scans"] == 2 and report["max_marks_per_scan"] == 100
    assert report["inputs"]["model"] == "tiny-random" and report["inputs"]["seriesuids"].endswith("seriesuids.csv")
    assert report["n_nodules"] == sum(1 for _ in open(data / "annotations.csv")) - 1
    run = json.loads((out / "predictions" / "run.json").read_text())
    assert run["max_candidates"] == 100 and run["min_score"] == 0.0 and len(run["model"]["sha256"]) == 64

    per_scan = {u: list(csv.DictReader(open(out / "predictions" / f"{u}.csv", newline=""))) for u in uids}
    gathered = list(csv.DictReader(open(out / "predictions.csv", newline="")))
    assert [r["seriesuid"] for r in gathered] == [r["seriesuid"] for u in uids for r in per_scan[u]]
    assert all(len(rows) <= 100 for rows in per_scan.values())
    # An untrained network scores everything near its prior: the low scores are kept for the FROC.
    assert gathered and min(float(r["probability"]) for r in gathered) < 0.269

    # Second run with --resume: nothing is detected again, the report is rebuilt from the files.
    def no_detection(self, *a, **k):
        raise AssertionError("a finished scan was detected again")

    monkeypatch.setattr(Detector, "__call__", no_detection)
    before = {u: (out / "predictions" / f"{u}.csv").stat().st_mtime_ns for u in uids}
    assert main(_argv(data, model_dir, out, "--resume")) == 0
    assert "resume: 2 of 2 scan(s) already have predictions" in capsys.readouterr().out
    assert {u: (out / "predictions" / f"{u}.csv").stat().st_mtime_ns for u in uids} == before
    assert json.loads((out / "report.json").read_text())["cpm"] == report["cpm"]

    # A missing scan file is the only one run on --resume.
    monkeypatch.undo()
    calls = []
    original = Detector.__call__

    def counting(self, volume, *a, **k):
        calls.append(volume.metadata.get("source"))
        return original(self, volume, *a, **k)

    monkeypatch.setattr(Detector, "__call__", counting)
    (out / "predictions" / f"{uids[1]}.csv").unlink()
    assert main(_argv(data, model_dir, out, "--resume")) == 0
    assert len(calls) == 1 and uids[1] in calls[0]
    assert list(csv.DictReader(open(out / "predictions" / f"{uids[1]}.csv", newline=""))) == per_scan[uids[1]]


def test_resume_refuses_predictions_of_another_model(data, model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    pred = out / "predictions"
    pred.mkdir(parents=True)
    (pred / "run.json").write_text(json.dumps({"model": {"name": "other", "sha256": "f" * 64},
                                               "max_candidates": 100, "min_score": 0.0}))
    assert main(_argv(data, model_dir, out, "--resume")) == 2
    assert "were made by model 'other'" in capsys.readouterr().err
    assert not (out / "report.json").exists()


@pytest.mark.parametrize("case, message", [
    ("missing", "LUNA16 data folder not found"),
    ("empty", "no .mhd scans under"),
    ("both", "either --predictions"),
    ("unlisted", "have no scan under"),
    ("model", "neither a model directory nor a bundled model"),
])
def test_bad_input_exits_2(data, model_dir, tmp_path, capsys, case, message):
    out = tmp_path / "eval"
    if case == "missing":
        argv = _argv(tmp_path / "nowhere", model_dir, out)
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        argv = _argv(tmp_path / "empty", model_dir, out)
    elif case == "both":
        argv = _argv(data, model_dir, out, "--predictions", str(data / "annotations.csv"))
    elif case == "unlisted":
        uids = tmp_path / "uids.csv"
        uids.write_text("1.2.3.not.here\n")
        argv = _argv(data, model_dir, out, "--seriesuids", str(uids))
    else:
        argv = _argv(data, tmp_path / "no-model", out)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (out / "report.json").exists()
