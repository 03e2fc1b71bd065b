"""DeepLesion loader: DL_info.csv parsing, 16-bit PNG stacking, 2-D -> 3-D lesions, variants.

The data set is written by the test in DeepLesion's exact format: 16-bit PNGs (SimpleITK)
under Images_png/<patient>_<study>_<series>/<%03d>.png and a DL_info.csv with the real
header and the real quoting of list-valued fields. Expected lesion values are worked by hand
in the comments of ROWS.
"""
import csv
import dataclasses
import logging
import math

import numpy as np
import pytest
import SimpleITK as sitk

from LesionDetectorLib.coordinates import index_to_world
from LesionDetectorLib.data.deeplesion import (
    DeepLesionDataset, build_scans, chunk_rows, lesion_diameter_mm, merge_lesions, row_to_lesion)
from LesionDetectorLib.data.deeplesion_images import read_series_volume, read_slice_hu
from LesionDetectorLib.data.deeplesion_info import COLUMNS, read_dl_info
from LesionDetectorLib.errors import EvaluationInputError, VolumeError

LESION_HU = 100.0

# series -> (slice numbers on disk, image size, spacing); series 3 has a hole at slice 2.
SERIES = {
    "000001_01_01": (list(range(103, 108)) + list(range(128, 133)), 64, "0.8, 0.8, 5"),
    "000002_01_02": (list(range(10, 15)), 96, "0.75, 0.75, 2.5"),
    "000003_01_01": ([1, 3], 64, "0.8, 0.8, 5"),
}


def _row(series, key, measure, box, diam, ltype, noisy, srange, split):
    patient, study, ser = (int(p) for p in series.split("_"))
    spacing = SERIES[series][2]
    size = SERIES[series][1]
    return [f"{series}_{key:03d}.png", patient, study, ser, key, measure, box, diam,
            "0.44666, 0.283794, 0.434454", ltype, noisy, srange, spacing, f"{size}, {size}",
            "-175, 275", "F", 62, split]


ROWS = [
    # line 2, chunk 000001_01_01_103-107. Centre index (z, y, x) = (105-103, 17, 30),
    # LPS = (30*0.8, 17*0.8, 2*5) = (24, 13.6, 10). Long axis 16 px = 12.8 mm (not small),
    # box 20 x 14 px -> D = long side = 16 mm.
    _row("000001_01_01", 105, "22, 17, 38, 17, 30, 12, 30, 22", "20, 10, 40, 24", "16, 10", 5, 0,
         "103, 107", 3),
    # line 3: small. Axis 6 px = 4.8 mm < 10, box long side 8 px = 6.4 mm -> D = min = 4.8.
    # Centre (104-103, 53, 54) -> LPS (43.2, 42.4, 5).
    _row("000001_01_01", 104, "51, 53, 57, 53, 54, 51, 54, 55", "50, 50, 58, 56", "6, 4", 4, 0,
         "103, 105", 3),
    # line 4: second annotation of line 2's lesion. Centre (3, 17, 33) -> LPS (26.4, 13.6, 15),
    # D = 22 px = 17.6 mm; 5.55 mm from line 2 < min radius 8 -> merged:
    # index (2.5, 17, 31.5), LPS (25.2, 13.6, 12.5), D = max = 17.6, type 5 (the labelled one).
    _row("000001_01_01", 106, "24, 17, 42, 17, 33, 12, 33, 22", "22, 10, 44, 24", "18, 10", -1, 0,
         "104, 107", 3),
    # line 5: other chunk of the same series (128-132), marked noisy.
    _row("000001_01_01", 130, "10, 10, 20, 10, 15, 8, 15, 12", "5, 5, 25, 15", "10, 4", 2, 1,
         "128, 132", 3),
    # line 6, chunk 000002_01_02_010-014: box 64 x 30 px at 0.75 mm -> D = 48.0 exactly: large.
    # Axis 54 px = 40.5 mm. Centre (12-10, 35, 42) -> LPS (31.5, 26.25, 5).
    _row("000002_01_02", 12, "15, 35, 69, 35, 42, 25, 42, 45", "10, 20, 74, 50", "54, 20", 4, 0,
         "10, 14", 3),
    # line 7: small, diagonal axis (8, 6) px = 10 px = 7.5 mm; box 8 x 6 px -> long side 6 mm;
    # D = min(6, 7.5) = 6. Centre (11-10, 73, 64) -> LPS (48, 54.75, 2.5).
    _row("000002_01_02", 11, "59, 70, 67, 76, 62, 74, 64, 72", "60, 70, 68, 76", "10, 3", 6, 0,
         "10, 14", 3),
    # line 8: training series whose slice 2 is missing -> skipped with a warning.
    _row("000003_01_01", 2, "10, 10, 20, 10, 15, 8, 15, 12", "5, 5, 25, 15", "10, 4", -1, 0,
         "1, 3", 1),
]


def _hu_plane(series_index, number, size):
    """Known HU pattern: outside-FOV padding, air, a gradient and a bone column, per slice."""
    hu = np.full((size, size), -1000.0)
    hu[:2, :] = -3024
    hu[:, : size // 2] = -1024 + 3 * number + np.arange(size // 2)[None, :]
    hu[:, -4:] = 1500 + series_index
    return hu


def _write_png(path, hu):
    sitk.WriteImage(sitk.GetImageFromArray((np.asarray(hu) + 32768).astype(np.uint16)), str(path))


def _write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("DeepLesion")
    for s, (series, (numbers, size, _)) in enumerate(SERIES.items()):
        folder = root / "Images_png" / series
        folder.mkdir(parents=True)
        for number in numbers:
            hu = _hu_plane(s, number, size)
            if series == "000001_01_01" and number == 105:
                hu[15:20, 28:33] = LESION_HU  # around line 2's centre (y 17, x 30)
            _write_png(folder / f"{number:03d}.png", hu)
    _write_csv(root / "DL_info.csv", ROWS)
    return root


@pytest.fixture(scope="module")
def dataset(root):
    return DeepLesionDataset(root)


def test_csv_is_in_the_real_quoting(root):
    text = (root / "DL_info.csv").read_text().splitlines()
    assert text[0] == ",".join(COLUMNS)
    assert '"22, 17, 38, 17, 30, 12, 30, 22","20, 10, 40, 24"' in text[1]
    rows = read_dl_info(root / "DL_info.csv")
    assert [r.line for r in rows] == list(range(2, 9))
    first = rows[0]
    assert first.series_dir == "000001_01_01" and first.key_slice_index == 105
    assert first.bounding_box == (20.0, 10.0, 40.0, 24.0)
    assert first.spacing == (0.8, 0.8, 5.0) and first.slice_range == (103, 107)
    assert first.split == "test" and first.lesion_type_name == "lung"
    assert math.isclose(first.long_axis_mm, 12.8) and math.isclose(first.box_long_side_mm, 16.0)


def test_png_slices_are_16_bit_hu(root):
    path = root / "Images_png" / "000002_01_02" / "012.png"
    assert sitk.ReadImage(str(path)).GetPixelID() == sitk.sitkUInt16
    hu = read_slice_hu(path)
    assert hu.dtype == np.float32 and hu.shape == (96, 96)
    np.testing.assert_array_equal(hu, _hu_plane(1, 12, 96))
    assert hu.min() == -3024 and hu.max() == 1501 and hu[5, 0] == -1024 + 36


def test_volume_geometry_and_values(dataset):
    scan = next(s for s in dataset if s.seriesuid == "000001_01_01_103-107")
    volume = scan.load()
    assert volume.array.shape == (5, 64, 64) == scan.geometry.shape_zyx
    np.testing.assert_array_equal(volume.spacing, [0.8, 0.8, 5.0])
    np.testing.assert_array_equal(volume.origin, [0, 0, 0])
    np.testing.assert_array_equal(volume.direction, np.eye(3))
    assert volume.metadata["first_slice"] == 103 and volume.metadata["seriesuid"] == scan.seriesuid
    for k, number in enumerate(range(103, 108)):  # stacked in slice-number order
        expected = _hu_plane(0, number, 64)
        if number == 105:
            expected[15:20, 28:33] = LESION_HU
        np.testing.assert_array_equal(volume.array[k], expected)
    # A lesion's index centre lands on its painted pixels, and world agrees with the volume.
    lesion = scan.lesions[0]
    assert lesion.rows == (2, 4)
    single = row_to_lesion(dataset.rows[0], first_slice=103)
    z, y, x = (int(round(v)) for v in single.center_zyx)
    assert volume.array[z, y, x] == LESION_HU
    for l in scan.lesions:
        np.testing.assert_allclose(index_to_world(volume, np.array(l.center_zyx)), l.center_lps)


def test_hand_worked_conversion(dataset):
    rows = dataset.rows
    one = row_to_lesion(rows[0], 103)
    assert one.center_zyx == (2.0, 17.0, 30.0)
    np.testing.assert_allclose(one.center_lps, (24.0, 13.6, 10.0))
    assert math.isclose(one.diameter_mm, 16.0) and not one.large
    small = row_to_lesion(rows[1], 103)
    np.testing.assert_allclose(small.center_lps, (43.2, 42.4, 5.0))
    assert math.isclose(small.diameter_mm, 4.8)            # long axis < box side
    diagonal = row_to_lesion(rows[5], 10)
    np.testing.assert_allclose(diagonal.center_lps, (48.0, 54.75, 2.5))
    assert math.isclose(diagonal.diameter_mm, 6.0)         # box side < diagonal long axis
    # The small-lesion rule only applies below the threshold; inf applies it to every lesion.
    assert math.isclose(lesion_diameter_mm(rows[0], small_lesion_mm=math.inf), 12.8)
    assert math.isclose(lesion_diameter_mm(rows[1], small_lesion_mm=0.0), 6.4)


def test_chunks_merge_and_noise(dataset):
    uids = [s.seriesuid for s in dataset]
    # the noisy chunk 128-132 is dropped, series 3 (hole at slice 2) is skipped
    assert uids == ["000001_01_01_103-107", "000002_01_02_010-014"]
    first = dataset[0]
    assert len(first.lesions) == 2
    merged = first.lesions[0]
    assert merged.center_zyx == (2.5, 17.0, 31.5)
    np.testing.assert_allclose(merged.center_lps, (25.2, 13.6, 12.5))
    assert math.isclose(merged.diameter_mm, 17.6) and merged.lesion_type == 5
    assert math.isclose(merged.long_axis_mm, 14.4)
    noisy = DeepLesionDataset(dataset.info_csv.parent, include_noisy=True)
    extra = next(s for s in noisy if s.seriesuid == "000001_01_01_128-132")
    assert extra.lesions[0].possibly_noisy and extra.lesions[0].rows == (5,)
    unmerged = build_scans(dataset.rows, dataset.images_dir, merge=False)
    assert len(unmerged[0].lesions) == 3


def test_merge_needs_mutual_containment(dataset):
    a = row_to_lesion(dataset.rows[0], 103)       # D 16, centre x 24 mm
    far = dataclasses.replace(a, center_lps=(24.0 + 7.9, 13.6, 10.0), diameter_mm=100.0, rows=(9,))
    assert len(merge_lesions([a, far], (0.8, 0.8, 5.0))) == 1       # 7.9 < 8: merged
    farther = dataclasses.replace(far, center_lps=(24.0 + 8.1, 13.6, 10.0))
    assert len(merge_lesions([a, farther], (0.8, 0.8, 5.0))) == 2   # inside the big one only


def test_chunking_of_ranges(dataset):
    base = dataset.rows[0]
    rows = [dataclasses.replace(base, slice_range=r, line=i) for i, r in
            enumerate([(10, 20), (21, 25), (27, 30), (15, 18)])]
    chunks = chunk_rows(rows)
    assert [(a, b, sorted(r.line for r in m)) for a, b, m in chunks] == [(10, 25, [0, 1, 3]), (27, 30, [2])]


def test_large_lesion_variants(dataset):
    scan = dataset[1]
    large = next(l for l in scan.lesions if l.large)
    assert large.diameter_mm == 48.0                       # >= 48 counts as large
    np.testing.assert_allclose(large.center_lps, (31.5, 26.25, 5.0))
    train, train_excluded = scan.boxes_lps("train")
    assert train.shape == (1, 4) and train_excluded.shape == (1, 4)
    np.testing.assert_allclose(train_excluded[0], (31.5, 26.25, 5.0, 48.0))
    test_all, none = scan.boxes_lps("test_all")
    assert test_all.shape == (2, 4) and none.shape == (0, 4)
    small_only, _ = scan.boxes_zyx("test_without_large")
    np.testing.assert_allclose(small_only, [(1.0, 73.0, 64.0, 6.0)])
    assert dataset.lesion_count("test_all") == (4, 0)
    assert dataset.lesion_count("test_without_large") == (3, 1)
    with pytest.raises(ValueError):
        scan.targets("everything")


def test_series_with_gap_is_skipped_or_raises(root, caplog):
    rows = read_dl_info(root / "DL_info.csv")
    with caplog.at_level(logging.WARNING, logger="LesionDetectorLib.data.deeplesion"):
        scans = build_scans(rows, root / "Images_png", splits=["train"])
    assert scans == []
    assert "000003_01_01_001-003" in caplog.text and "first missing: 2" in caplog.text
    with pytest.raises(VolumeError, match="000003_01_01"):
        build_scans(rows, root / "Images_png", splits=["train"], strict=True)
    with pytest.raises(VolumeError, match=r"lacks slice\(s\) 2 of 1..3.*002\.png"):
        read_series_volume(root / "Images_png" / "000003_01_01", 1, 3, (0.8, 0.8, 5.0))


def test_8_bit_png_is_refused(tmp_path):
    path = tmp_path / "001.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.uint8)), str(path))
    with pytest.raises(VolumeError, match=r"001\.png is 8-bit unsigned.*not 16-bit"):
        read_slice_hu(path)
    with pytest.raises(VolumeError, match="missing"):
        read_slice_hu(tmp_path / "002.png")
    (tmp_path / "002.png").write_bytes(b"not a png")
    with pytest.raises(VolumeError, match=r"002\.png"):
        read_slice_hu(tmp_path / "002.png")
    _write_png(tmp_path / "001.png", np.zeros((8, 8)))
    with pytest.raises(VolumeError, match=r"002\.png"):  # inside a series: never stacked
        read_series_volume(tmp_path, 1, 2, (1.0, 1.0, 1.0))


@pytest.mark.parametrize("column, value, message", [
    ("Bounding_boxes", "20, 10, 4o, 24", "not a number"),
    ("Bounding_boxes", "20, 10, 40", "4 comma-separated numbers"),
    ("Bounding_boxes", "40, 10, 20, 24", "x2 > x1"),
    ("Spacing_mm_px_", "0.8, 0.8, 0", "positive"),
    ("Slice_range", "110, 115", "must contain the key slice 104"),
    ("Slice_range", "103.5, 107", "whole numbers"),
    ("Coarse_lesion_type", "9", "one of"),
    ("Train_Val_Test", "4", "1 \\(train\\)"),
    ("File_name", "000001_01_02_105.png", "disagrees"),
    ("Measurement_coordinates", "nan, 1, 2, 3, 4, 5, 6, 7", "non-finite"),
])
def test_malformed_rows_name_file_line_and_column(tmp_path, column, value, message):
    rows = [list(r) for r in ROWS[:2]]
    rows[1][COLUMNS.index(column)] = value
    path = tmp_path / "DL_info.csv"
    _write_csv(path, rows)
    with pytest.raises(EvaluationInputError, match=rf"DL_info\.csv, line 3 .*{column}.*{message}"):
        read_dl_info(path)


def test_unquoted_list_and_missing_columns(tmp_path):
    path = tmp_path / "DL_info.csv"
    _write_csv(path, ROWS[:1])
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1].replace('"', "")]) + "\n")
    with pytest.raises(EvaluationInputError, match="line 2: more fields"):
        read_dl_info(path)
    path.write_text("File_name,Patient_index\n")
    with pytest.raises(EvaluationInputError, match="missing DL_info.csv column"):
        read_dl_info(path)
    with pytest.raises(EvaluationInputError, match="not found"):
        read_dl_info(tmp_path / "absent.csv")


def test_image_size_mismatch_and_8_bit_slice_in_series(tmp_path):
    folder = tmp_path / "000009_01_01"
    folder.mkdir()
    for n in (1, 2):
        _write_png(folder / f"{n:03d}.png", np.zeros((16, 16)))
    with pytest.raises(VolumeError, match="Image_size"):
        read_series_volume(folder, 1, 2, (1.0, 1.0, 2.0), image_size=(512, 512))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 16), np.uint8)), str(folder / "002.png"))
    with pytest.raises(VolumeError, match=r"002\.png is 8-bit"):
        read_series_volume(folder, 1, 2, (1.0, 1.0, 2.0))


def test_evaluation_csvs_round_trip(root, tmp_path, capsys):
    from LesionDetectorLib.data.deeplesion_csv import main
    from LesionDetectorLib.luna16_format import read_annotations, read_seriesuids

    assert main([str(root), str(tmp_path), "--split", "test", "--variant", "test_without_large"]) == 0
    assert "2 scan chunk(s), 3 lesion(s), 1 excluded" in capsys.readouterr().out
    annotations = read_annotations(tmp_path / "annotations.csv")
    excluded = read_annotations(tmp_path / "annotations_excluded.csv")
    expected, expected_excluded = [], []
    for scan in DeepLesionDataset(root, splits=["test"]):
        kept, dropped = scan.annotations("test_without_large")
        expected += kept
        expected_excluded += dropped
    for got, want in ((annotations, expected), (excluded, expected_excluded)):
        assert [a.seriesuid for a in got] == [a.seriesuid for a in want]
        np.testing.assert_allclose([(a.x, a.y, a.z, a.diameter_mm) for a in got],
                                   [(a.x, a.y, a.z, a.diameter_mm) for a in want], atol=1e-4)
    assert excluded[0].diameter_mm == 48.0
    assert read_seriesuids(tmp_path / "seriesuids.csv") == ["000001_01_01_103-107", "000002_01_02_010-014"]
    with open(tmp_path / "lesions.csv") as handle:
        lesions = list(csv.DictReader(handle))
    assert [(r["lesion_type_name"], r["csv_lines"]) for r in lesions] == \
        [("lung", "2 4"), ("liver", "3"), ("kidney", "7")]


def test_rows_of_one_series_must_agree_on_spacing(dataset):
    rows = list(dataset.rows[:2])
    rows[1] = dataclasses.replace(rows[1], spacing=(0.7, 0.7, 5.0))
    with pytest.raises(EvaluationInputError, match=r"lines 2 and 3 \(000001_01_01\) disagree on spacing"):
        build_scans(rows, dataset.images_dir)
