"""``lesion-detector evaluate --dataset deeplesion``: Tables V / VI from a predictions CSV.

A tiny data set in DeepLesion's format (16-bit PNGs + DL_info.csv with the real header and
quoting) is written by the fixture; the expected numbers are worked by hand below.

Test split, two chunks at 1 x 1 x 2 mm:

* ``000001_01_01_010-014`` (64 x 64):
  - lung (type 5): box 20..30 -> centre (25, 25), key 12 -> z = (12 - 10) * 2 = 4; RECIST
    axis 10 px = 10 mm (not small, bucket 10-30), D = box side = 10 mm;
  - kidney (type 6): box 45..51 -> centre (48, 48), key 11 -> z = 2; axis 6 mm (small, bucket
    < 10), D = min(6, 6) = 6 mm;
* ``000002_01_01_020-024`` (72 x 72):
  - liver (type 4): box (5, 10, 65, 55) -> centre (35, 32.5), key 22 -> z = 4; axis 50 mm:
    large (>= 48) and bucket >= 30.

A val-split chunk ``000003_01_01_001-003`` exists but is not evaluated.

Marks: 0.9 on the lung lesion (hit), 0.7 on the liver lesion (hit), 0.6 far from anything (FP).
2 images, so the FP costs 0.5 FP/image and comes last:

* all lesions: 2 of 3 found at every rate 0.5 .. 16 -> 2/3; by type lung 1, liver 1, kidney 0;
  by size < 10: 0, 10-30: 1, >= 30: 1;
* without large: the liver lesion leaves (its mark is ignored): 1 of 2 -> 1/2 everywhere.
"""
import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from LesionDetectorLib.cli.main import main
from LesionDetectorLib.data.deeplesion_info import COLUMNS

SERIES = {  # series -> (slice numbers, image size, spacing, split code)
    "000001_01_01": (range(10, 15), 64, "1, 1, 2", 3),
    "000002_01_01": (range(20, 25), 72, "1, 1, 2", 3),
    "000003_01_01": (range(1, 4), 64, "1, 1, 2", 2),
}
CHUNK_A, CHUNK_B, CHUNK_VAL = "000001_01_01_010-014", "000002_01_01_020-024", "000003_01_01_001-003"


def _row(series, key, measure, box, diam, ltype, srange):
    patient, study, ser = (int(p) for p in series.split("_"))
    _, size, spacing, split = SERIES[series]
    return [f"{series}_{key:03d}.png", patient, study, ser, key, measure, box, diam, "0.5, 0.5, 0.5", ltype, 0,
            srange, spacing, f"{size}, {size}", "-175, 275", "F", 50, split]


ROWS = [
    _row("000001_01_01", 12, "20, 25, 30, 25, 25, 21, 25, 29", "20, 20, 30, 30", "10, 8", 5, "10, 14"),
    _row("000001_01_01", 11, "45, 48, 51, 48, 48, 46, 48, 50", "45, 45, 51, 51", "6, 4", 6, "10, 14"),
    _row("000002_01_01", 22, "10, 32, 60, 32, 35, 20, 35, 44", "5, 10, 65, 55", "50, 24", 4, "20, 24"),
    _row("000003_01_01", 2, "20, 25, 30, 25, 25, 21, 25, 29", "20, 20, 30, 30", "10, 8", 5, "1, 3"),
]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("DeepLesion")
    for series, (numbers, size, _, _) in SERIES.items():
        folder = root / "Images_png" / series
        folder.mkdir(parents=True)
        for number in numbers:
            hu = np.full((size, size), -1000.0)
            image = sitk.GetImageFromArray((hu + 32768).astype(np.uint16))
            sitk.WriteImage(image, str(folder / f"{number:03d}.png"))
    with open(root / "DL_info.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(ROWS)
    return root


def _predictions(path, rows, header=("seriesuid", "coordX", "coordY", "coordZ", "probability")):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


GOOD = [(CHUNK_A, 25.5, 24.0, 4.0, 0.9),     # 1.1 mm from the lung lesion (radius 5): hit
        (CHUNK_B, 36.0, 33.0, 6.0, 0.7),     # on the 50 mm liver lesion: hit / ignored without large
        (CHUNK_A, 5.0, 60.0, 8.0, 0.6)]      # nowhere near a lesion: FP


def test_tables_v_and_vi_from_a_predictions_csv(root, tmp_path, capsys):
    out = tmp_path / "report"
    csv_path = _predictions(tmp_path / "pred.csv", GOOD)
    assert main(["evaluate", "--dataset", "deeplesion", "--data", str(root), "--predictions", str(csv_path),
                 "--out", str(out)]) == 0
    assert "without lesions >= 48 mm: 2 lesions on 2 chunks" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "lesion-detector/deeplesion-evaluation" and report["schema_version"] == "1.0"
    assert report["fp_rates"] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    assert report["inputs"]["split"] == "test" and report["counts"]["predictions_evaluated"] == 3
    rates = ["0.5", "1", "2", "4", "8", "16"]
    full, small = report["all"], report["without_large"]
    assert (full["n_images"], full["n_lesions"], small["n_images"], small["n_lesions"]) == (2, 3, 2, 2)
    for r in rates:
        assert full["sensitivities"][r] == pytest.approx(2 / 3)
        assert small["sensitivities"][r] == pytest.approx(0.5)
        assert full["by_type"]["lung"][r] == 1.0 and full["by_type"]["liver"][r] == 1.0
        assert full["by_type"]["kidney"][r] == 0.0
        assert full["by_size"]["<10"][r] == 0.0 and full["by_size"]["10-30"][r] == 1.0
        assert full["by_size"][">=30"][r] == 1.0
        assert small["by_type"]["lung"][r] == 1.0 and small["by_type"]["kidney"][r] == 0.0
    assert full["average"] == pytest.approx(2 / 3) and small["average"] == pytest.approx(0.5)
    assert set(small["by_type"]) == {"lung", "kidney"} and ">=30" not in small["by_size"]
    assert full["lesion_counts"]["lung"] == 1 and full["lesion_counts"][">=30"] == 1
    md = (out / "report.md").read_text()
    assert "## Table V" in md and "## Table VI" in md
    assert "| All lesions | 3 | 0.667 | 0.667 | 0.667 | 0.667 | 0.667 | 0.667 | **0.667**" in md
    assert "| Without lesions >= 48 mm (*) | 2 | 0.500 |" in md
    assert "| kidney | 1 | 0.000 |" in md and "| 10-30 | 1 | 1.000 |" in md
    assert (out / "froc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_marks_are_capped_per_chunk(root, tmp_path):
    # The lung hit has the lowest score in its chunk: with --max-marks 1 only the FP remains there.
    rows = [(CHUNK_A, 25.0, 25.0, 4.0, 0.5), (CHUNK_A, 5.0, 60.0, 8.0, 0.6), (CHUNK_B, 35.0, 32.5, 4.0, 0.7)]
    out = tmp_path / "capped"
    assert main(["evaluate", "--dataset", "deeplesion", "--data", str(root), "--predictions",
                 str(_predictions(tmp_path / "p.csv", rows)), "--out", str(out), "--max-marks", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["dropped_over_max_marks"] == 1
    assert report["all"]["sensitivities"]["16"] == pytest.approx(1 / 3)
    assert report["without_large"]["sensitivities"]["16"] == 0.0


@pytest.mark.parametrize("rows, header, needle", [
    ([(CHUNK_VAL, 25.0, 25.0, 2.0, 0.9)], None, f"pred.csv:2: seriesuid '{CHUNK_VAL}' is not a DeepLesion"),
    ([(CHUNK_A, 25.0, 25.0, 4.0, 0.9), (CHUNK_A, "nan", 1.0, 1.0, 0.5)], None,
     "pred.csv:3: coordX is not a finite number"),
    ([(CHUNK_A, 25.0, 25.0, 0.9)], ("seriesuid", "coordX", "coordY", "probability"),
     "pred.csv:1: missing column(s) coordZ"),
])
def test_bad_predictions_exit_2(root, tmp_path, capsys, rows, header, needle):
    path = _predictions(tmp_path / "pred.csv", rows, *(header,) if header else ())
    code = main(["evaluate", "--dataset", "deeplesion", "--data", str(root), "--predictions", str(path),
                 "--out", str(tmp_path / "o")])
    assert code == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "o" / "report.json").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--annotations", "a.csv"], "--annotations apply to --dataset luna16"),
    ([], "exactly one of --predictions"),
    (["--predictions", "p.csv", "--model", "x"], "exactly one of --predictions"),
    (["--predictions", "p.csv", "--resume"], "--resume applies to detection with --model"),
])
def test_bad_options_exit_2(root, tmp_path, capsys, extra, needle):
    assert main(["evaluate", "--dataset", "deeplesion", "--data", str(root), "--out", str(tmp_path / "o"),
                 *extra]) == 2
    assert needle in capsys.readouterr().err


def test_split_is_refused_in_luna16_mode(tmp_path, capsys):
    assert main(["evaluate", "--split", "test", "--predictions", "p.csv", "--out", str(tmp_path)]) == 2
    assert "--split applies to --dataset deeplesion" in capsys.readouterr().err
