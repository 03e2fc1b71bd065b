"""The comparison document and ``lesion-detector compare`` (given findings; small synthetic pair)."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from LesionDetectorLib.cli.main import main
from LesionDetectorLib.data.synthetic_followup import generate_followup, truth_findings
from LesionDetectorLib.export import write_findings_json
from LesionDetectorLib.followup.comparison import ComparisonInputError, compare, resolve_interval
from LesionDetectorLib.followup.matching import sphere_volume_ml
from LesionDetectorLib.followup.registration import Registration
from LesionDetectorLib.io.writer import write_volume

PAIR_KEYS = {"current", "prior", "status", "diameter_change_mm", "volume_change_pct", "volume_doubling_days",
             "lung_rads"}
SIDE_KEYS = {"id", "center_lps", "mean_diameter_mm", "volume_ml"}


def _measured(findings):
    """Give each candidate a characterization block with its true size (as if segmented exactly)."""
    for c in findings.candidates:
        c.characterization = {"type": "solid", "calcified": False, "volume_ml": sphere_volume_ml(c.diameter_mm),
                              "long_axis_mm": c.diameter_mm, "short_axis_mm": c.diameter_mm,
                              "mean_diameter_mm": c.diameter_mm, "solid_component_mm": None, "mean_hu": 20.0,
                              "lung_rads": None}
    return findings


def _exact_registration(pair):
    inv = np.linalg.inv(pair.prior_to_current_matrix)
    t = sitk.AffineTransform(3)
    t.SetMatrix(tuple(inv[:3, :3].ravel()))
    t.SetTranslation(tuple(inv[:3, 3]))
    return Registration(t, {"surface_mean_mm": 0.0, "note": "exact (test)"})


@pytest.fixture(scope="module")
def pair():
    return generate_followup(6, 0, "small")


def test_compare_finds_every_true_status(pair):
    doc = compare(pair.prior, pair.current, _measured(truth_findings(pair, "prior")),
                  _measured(truth_findings(pair, "current")), registration=_exact_registration(pair))
    assert doc["interval_days"] == 365 and doc["interval_source"] == "StudyDate"
    truth = {t["id"]: t for t in pair.truth}
    assert len(doc["pairs"]) == len(truth)
    for p in doc["pairs"]:
        assert set(p) >= PAIR_KEYS
        side = p["current"] or p["prior"]
        assert set(side) >= SIDE_KEYS
        t = truth[side["id"]]
        assert p["status"] == t["status"], (p, t)
        if p["current"] and p["prior"]:
            assert p["current"]["id"] == p["prior"]["id"]               # paired with itself
            assert p["diameter_change_mm"] == pytest.approx(t["current_diameter_mm"] - t["prior_diameter_mm"], abs=0.02)
    grown = next(p for p in doc["pairs"] if p["status"] == "grown")
    ratio = grown["current"]["volume_ml"] / grown["prior"]["volume_ml"]
    assert grown["volume_doubling_days"] == pytest.approx(365 * np.log(2) / np.log(ratio), rel=1e-3)
    assert doc["counts"]["new"] == 1 and doc["counts"]["resolved"] == 1
    assert doc["lung_rads"]["category"] in ("4A", "4B")                # new / growing nodules >= 6 mm
    json.dumps(doc, allow_nan=False)


def test_interval_sources(pair):
    assert resolve_interval(pair.prior, pair.current, 90) == (90.0, "--interval-days")
    with pytest.raises(ComparisonInputError, match="swapped"):
        resolve_interval(pair.current, pair.prior, None)
    days, source = resolve_interval(pair.prior, pair.prior, None)
    assert days is None and source.startswith("unknown")


def test_findings_of_another_scan_are_refused(pair):
    with pytest.raises(ComparisonInputError, match="not the same scan"):
        compare(pair.prior, pair.current, truth_findings(pair, "current"), truth_findings(pair, "current"),
                registration=_exact_registration(pair))


@pytest.fixture(scope="module")
def written(pair, tmp_path_factory):
    d = tmp_path_factory.mktemp("followup")
    paths = {"prior": write_volume(pair.prior, d / "prior.mhd"), "current": write_volume(pair.current, d / "current.mhd")}
    for which in ("prior", "current"):
        write_findings_json(_measured(truth_findings(pair, which)), d / f"{which}_findings.json")
    return d, paths


def test_cli_compare_writes_json_and_summary(written, capsys):
    d, paths = written
    out = d / "cmp"
    rc = main(["compare", "--prior", paths["prior"], "--current", paths["current"], "--out", str(out),
               "--prior-findings", str(d / "prior_findings.json"), "--current-findings",
               str(d / "current_findings.json"), "--interval-days", "200"])
    assert rc == 0
    doc = json.loads((out / "comparison.json").read_text())
    assert doc["interval_days"] == 200 and doc["interval_source"] == "--interval-days"
    assert doc["registration"]["surface_mean_mm"] < 2.0 and doc["registration"]["dice"] > 0.9
    statuses = sorted(p["status"] for p in doc["pairs"])
    assert statuses.count("new") == 1 and statuses.count("resolved") == 1 and "grown" in statuses
    for p in doc["pairs"]:
        assert set(p) >= PAIR_KEYS
    md = (out / "comparison.md").read_text()
    assert "Lung-RADS v2022" in md and "| grown |" in md
    assert not list(out.glob("*.part"))
    # A second run refuses to overwrite without --overwrite.
    rc = main(["compare", "--prior", paths["prior"], "--current", paths["current"], "--out", str(out),
               "--prior-findings", str(d / "prior_findings.json"), "--current-findings",
               str(d / "current_findings.json")])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err


def test_cli_bad_input_exit_2_and_nothing_written(written, capsys, tmp_path):
    d, paths = written
    out = tmp_path / "cmp"
    rc = main(["compare", "--prior", str(d / "missing.mhd"), "--current", paths["current"], "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "does not exist" in err[0]
    # Findings swapped between the scans: refused after reading, before writing anything.
    rc = main(["compare", "--prior", paths["prior"], "--current", paths["current"], "--out", str(out),
               "--prior-findings", str(d / "current_findings.json"), "--current-findings",
               str(d / "current_findings.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not the same scan" in err[0]
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("days", ["-3", "0", "soon", "nan"])
def test_cli_interval_is_validated_at_parse_time(days, capsys, tmp_path):
    try:
        rc = main(["compare", "--prior", "a", "--current", "b", "--out", str(tmp_path), "--interval-days", days])
    except SystemExit as exc:              # argparse's own exit, when main does not turn it into a code
        rc = exc.code
    assert rc == 2 and "--interval-days" in capsys.readouterr().err


def test_cli_reuses_detect_output_folders_and_runs_the_detector_when_needed(written, pair, monkeypatch, tmp_path):
    """A ``detect`` output folder is read through its findings' ``volume.source``; a bare scan is
    detected on (here by a stand-in detector returning the truth) and its findings are written."""
    d, paths = written
    folder = tmp_path / "prior_result"
    f = _measured(truth_findings(pair, "prior"))
    f.volume["source"] = paths["prior"]
    write_findings_json(f, folder / "findings.json")
    calls = []

    class FakeDetector:
        def __call__(self, volume, **kw):
            calls.append(volume.metadata.get("source"))
            out = _measured(truth_findings(pair, "current"))
            out.volume["source"] = volume.metadata.get("source")
            return out

    import LesionDetectorLib.inference as inference

    monkeypatch.setattr(inference.Detector, "from_pretrained", classmethod(lambda cls, *a, **k: FakeDetector()))
    out = tmp_path / "cmp"
    rc = main(["compare", "--prior", str(folder), "--current", paths["current"], "--out", str(out)])
    assert rc == 0 and calls == [paths["current"]]
    doc = json.loads((out / "comparison.json").read_text())
    assert doc["prior"]["source"] == paths["prior"] and doc["interval_days"] is None    # .mhd has no StudyDate
    assert (out / "current_findings.json").is_file() and not (out / "prior_findings.json").exists()
    assert all(p["volume_doubling_days"] is None for p in doc["pairs"])
    assert {p["status"] for p in doc["pairs"]} >= {"new", "resolved", "grown"}
