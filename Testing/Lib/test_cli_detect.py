"""``lesion-detector detect``: batch runs, skipping, bad inputs, JSON-lines protocol, cancel."""
import csv
import json

import numpy as np
import pytest

from LesionDetectorLib.cli import detect as detect_cli
from LesionDetectorLib.cli.main import main
from LesionDetectorLib.export import read_findings_json
from LesionDetectorLib.inference import Detector
from LesionDetectorLib.io import write_volume

from test_inference_pipeline import NODULE_D, NODULE_HU, BlobModel, fake_card

NODULE = np.array([50.0, -10.0, 5.0])


@pytest.fixture
def scans(tmp_path, chest_phantom):
    """An .mhd scan with a nodule, a DICOM series without, a corrupt file."""
    from LesionDetectorLib.io.ct_series import write_ct_series

    inputs = tmp_path / "in"
    inputs.mkdir()
    with_nodule = chest_phantom(shape_zyx=(48, 64, 80), spacing=(3.0, 3.0, 3.0),
                                nodules=[(NODULE, NODULE_D, NODULE_HU)])
    mhd = write_volume(with_nodule, inputs / "1.3.6.1.4.1.99.1.mhd")
    dicom = write_ct_series(chest_phantom(shape_zyx=(48, 64, 80), spacing=(3.0, 3.0, 3.0)), inputs / "patient2")
    bad = inputs / "broken.nrrd"
    bad.write_text("NRRD0004\nthis is not an image\n")
    return {"mhd": mhd, "dicom": str(dicom), "bad": str(bad), "dir": str(inputs)}


def test_batch_writes_one_result_set_per_scan_and_reports_bad_ones(tmp_path, scans, blob_detector, capsys):
    out = tmp_path / "results"
    code = main(["detect", scans["mhd"], scans["dicom"], scans["bad"], str(tmp_path / "nope.mhd"),
                 "--out", str(out), "--progress", "none"])
    captured = capsys.readouterr()
    assert code == 2
    assert "2 input(s) failed" in captured.err and "broken.nrrd" in captured.err and "nope.mhd" in captured.err

    a = out / "1.3.6.1.4.1.99.1"
    assert sorted(p.name for p in a.iterdir()) == ["findings.json", "findings.mrk.json", "luna16.csv",
                                                   "nodule_masks.seg.nrrd"]
    fa = read_findings_json(a / "findings.json")
    assert fa.patient_flag["status"] == "positive" and len(fa) == 1
    assert np.linalg.norm(np.asarray(fa.candidates[0].center_lps) - NODULE) < 1.5
    assert fa.series_uid == "1.3.6.1.4.1.99.1"  # LUNA16 naming: the .mhd stem
    assert fa.timings_s["read"] > 0

    b = out / "patient2"
    assert sorted(p.name for p in b.iterdir()) == ["findings.json", "findings.mrk.json", "findings_sr.dcm",
                                                   "luna16.csv"]
    fb = read_findings_json(b / "findings.json")
    assert fb.patient_flag["status"] == "likely negative" and len(fb) == 0
    import pydicom

    sr = pydicom.dcmread(b / "findings_sr.dcm")
    assert sr.Modality == "SR" and sr.StudyInstanceUID and sr.PatientID == "LESIONDETECTOR-DEMO"

    rows = list(csv.DictReader(open(out / "luna16_submission.csv", newline="")))
    assert [r["seriesuid"] for r in rows] == ["1.3.6.1.4.1.99.1"]
    assert "Patient flag: positive" in captured.out and "| 1 | N1 |" in captured.out
    assert not list(out.rglob("*.part"))


def test_done_scans_are_skipped_unless_overwrite(tmp_path, scans, blob_detector, capsys):
    out = tmp_path / "r"
    assert main(["detect", scans["mhd"], "--out", str(out), "--progress", "none"]) == 0
    stamp = (out / "1.3.6.1.4.1.99.1" / "findings.json").stat().st_mtime_ns
    assert main(["detect", scans["mhd"], "--out", str(out), "--progress", "none"]) == 0
    assert len(blob_detector) == 1  # no model loaded the second time
    assert "already done" in capsys.readouterr().out
    assert main(["detect", scans["mhd"], "--out", str(out), "--progress", "none", "--overwrite",
                 "--format", "json"]) == 0
    assert (out / "1.3.6.1.4.1.99.1" / "findings.json").stat().st_mtime_ns != stamp


def test_folder_input_finds_files_and_series(tmp_path, scans, blob_detector):
    out = tmp_path / "r"
    code = main(["detect", scans["dir"], "--out", str(out), "--progress", "none", "--format", "json"])
    assert code == 2  # broken.nrrd inside the folder
    assert (out / "1.3.6.1.4.1.99.1" / "findings.json").is_file()
    assert (out / "patient2" / "findings.json").is_file()
    assert not (out / "broken").exists() or not (out / "broken" / "findings.json").exists()


def test_jsonl_progress_protocol(tmp_path, scans, blob_detector, capsys):
    code = main(["detect", scans["mhd"], "--out", str(tmp_path / "r"), "--progress", "jsonl"])
    assert code == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = {e["event"] for e in events}
    assert kinds <= {"progress", "log", "done", "error"}
    model = [e for e in events if e["event"] == "progress" and e["stage"] == "model"]
    assert model and model[-1]["done"] == model[-1]["total"] > 1
    assert all(set(e) == {"event", "stage", "done", "total"} for e in events if e["event"] == "progress")
    assert events[-1]["event"] == "done" and events[-1]["findings"].endswith("findings.json")
    assert read_findings_json(events[-1]["findings"]).patient_flag["status"] == "positive"


def test_jsonl_reports_bad_input_as_error_event(tmp_path, blob_detector, capsys):
    code = main(["detect", str(tmp_path / "missing.mhd"), "--out", str(tmp_path / "r"), "--progress", "jsonl"])
    assert code == 2
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    err = [e for e in events if e["event"] == "error"]
    assert err and err[0]["exit_code"] == 2 and "does not exist" in err[0]["message"]


@pytest.mark.parametrize("argv, message", [
    (["--format", "png"], "unknown --format"),
    (["--model", "/no/such/model"], "neither a model directory nor a bundled model"),
])
def test_bad_options_exit_2_with_a_message(tmp_path, scans, capsys, argv, message):
    code = main(["detect", scans["mhd"], "--out", str(tmp_path / "r"), "--progress", "none", *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_interrupt_leaves_no_results(tmp_path, scans, monkeypatch):
    class Interrupting(BlobModel):
        def forward(self, images):
            if len(self.batches) >= 2:
                raise KeyboardInterrupt
            return super().forward(images)

    monkeypatch.setattr(detect_cli, "load_detector",
                        lambda *a, **k: Detector(Interrupting(), fake_card(), device="cpu", tile=64, overlap=16))
    out = tmp_path / "r"
    assert main(["detect", scans["mhd"], "--out", str(out), "--progress", "none"]) == 130
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_demo_writes_every_export_and_compares_with_truth(tmp_path, blob_detector, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--progress", "none", "--seed", "2024", "--size", "small"]) == 0
    text = capsys.readouterr().out
    results = out / "results"
    f = read_findings_json(results / "findings.json")
    # The fake detector marks bright blobs at the chest wall, which the characterization does not
    # segment as nodules; the masks files come exactly when some finding was segmented (their
    # content is tested in test_cli_nodule_masks).
    segmented = any((c.characterization or {}).get("type") for c in f.candidates)
    masks = ["nodule_masks.seg.nrrd", "nodule_masks_seg.dcm"] if segmented else []
    assert sorted(p.name for p in results.iterdir()) == sorted(["findings.json", "findings.mrk.json",
                                                                "findings_sr.dcm", "luna16.csv"] + masks)
    assert f.series_uid and f.volume["source"].endswith("_dicom")
    import re

    n_truth = int(re.search(r"Truth \((\d+) LUNA16-rule nodules", text).group(1))
    for k in range(1, n_truth + 1):
        assert f"nodule {k}:" in text
    assert text.count(" HIT ") + text.count(" MISS") == n_truth
    assert f"/{n_truth} nodules hit by {len(f)} candidates" in text
    assert "Patient flag:" in text and str(results / "findings_sr.dcm") in text
