"""``lesion-detector detect`` characterizes findings by default; ``--no-characterize`` skips it."""
import json

from LesionDetectorLib.cli.main import main
from LesionDetectorLib.export import read_findings_json

from test_cli_detect import scans  # noqa: F401  (fixture; blob_detector comes from conftest)


def test_detect_characterizes_by_default_and_can_skip(tmp_path, scans, blob_detector, capsys):  # noqa: F811
    out = tmp_path / "with"
    assert main(["detect", scans["mhd"], "--out", str(out), "--progress", "none", "--format", "json,mrk.json"]) == 0
    printed = capsys.readouterr().out
    f = read_findings_json(out / "1.3.6.1.4.1.99.1" / "findings.json")
    ch = f.candidates[0].characterization
    assert ch is not None and ch["type"] in ("solid", "part-solid", "ground-glass") and ch["volume_ml"] > 0
    assert f.lung_rads["finding_id"] == "N1" and f.lung_rads["category"] == ch["lung_rads"]
    assert "characterize" in f.timings_s and "Lung-RADS v2022" in printed

    out2 = tmp_path / "without"
    assert main(["detect", scans["mhd"], "--out", str(out2), "--progress", "none", "--format", "json",
                 "--no-characterize"]) == 0
    doc = json.loads((out2 / "1.3.6.1.4.1.99.1" / "findings.json").read_text())
    assert "lung_rads" not in doc and all("characterization" not in c for c in doc["candidates"])
