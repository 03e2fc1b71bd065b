"""DeepLesion training data: body-crop preprocessing (no lung mask), the training cache and
``lesion-detector train --dataset deeplesion`` argument checks (no training is run here).

A tiny data set is written in DeepLesion's exact format (16-bit PNGs, DL_info.csv with the
real quoting, via the helpers of ``test_deeplesion_loader``): a body ellipse in air inside a
circular field of view whose outside is -3024 HU (the "black borders"), a painted lesion, a
stray bright speck in the air, a large (>= 48 mm) lesion, a Val and a Test series and an
air-only chunk.
"""
import argparse
import json
import logging
import math

import numpy as np
import pytest

from LesionDetectorLib.cli.main import main
from LesionDetectorLib.data.deeplesion import DeepLesionDataset
from LesionDetectorLib.errors import VolumeError
from LesionDetectorLib.preprocess import normalize_hu
from LesionDetectorLib.training import read_cached_scan
from LesionDetectorLib.training import cache as cache_mod
from LesionDetectorLib.preprocess import BODY_MARGIN_MM, body_mask, preprocess_body
from LesionDetectorLib.training.cache import build_deeplesion_cache, cached_uids
from LesionDetectorLib.volume import Volume

from test_deeplesion_loader import _write_csv, _write_png

SIZE = 96
SXY, SZ = 0.7, 2.5
LESION_HU = 300.0
LESION_CENTRE_PX = (48.0, 50.0)        # (x, y) = centre of lesion A's box
BODY = dict(cx=48, cy=50, ax=26, ay=20)   # ellipse in pixels: x 22..74, y 30..70
SPECK = (10, 48)                      # (y, x): bright air pixel, inside the field of view

# series -> (first, last slice, split code)
SERIES = {
    "000001_01_01": (10, 22, 1),       # train: lesion A + a large lesion
    "000002_01_01": (5, 17, 2),        # val: lesion B
    "000003_01_01": (1, 5, 3),         # test: must never be cached by train/val builds
    "000004_01_01": (1, 5, 1),         # train, air only: skipped ("no body")
}


def _row(series, key, measure, box, diam, split_range, split):
    patient, study, ser = (int(p) for p in series.split("_"))
    return [f"{series}_{key:03d}.png", patient, study, ser, key, measure, box, diam, "0.5, 0.5, 0.5", -1, 0,
            split_range, f"{SXY}, {SXY}, {SZ}", f"{SIZE}, {SIZE}", "-175, 275", "F", 50, split]


ROWS = [
    # Lesion A: key slice 16 -> z index 6 -> 15 mm; box centre (48, 50) px -> (33.6, 35.0) mm.
    # Long axis 16 px = 11.2 mm (not small): D = box long side 16 px = 11.2 mm.
    _row("000001_01_01", 16, "40, 50, 56, 50, 48, 45, 48, 55", "40, 44, 56, 56", "16, 10", "10, 22", 1),
    # Large lesion: box 70 px = 49 mm >= 48 -> excluded. Key slice 20 -> 25 mm (10 mm from A: not merged).
    _row("000001_01_01", 20, "12, 50, 78, 50, 45, 30, 45, 70", "10, 30, 80, 70", "66, 40", "10, 22", 1),
    # Lesion B (val): small, long axis 12 px = 8.4 mm; box 12 px -> D = 8.4.
    _row("000002_01_01", 11, "30, 45, 42, 45, 36, 41, 36, 49", "30, 40, 42, 50", "12, 8", "5, 17", 2),
    _row("000003_01_01", 3, "30, 45, 42, 45, 36, 41, 36, 49", "30, 40, 42, 50", "12, 8", "1, 5", 3),
    _row("000004_01_01", 3, "30, 45, 42, 45, 36, 41, 36, 49", "30, 40, 42, 50", "12, 8", "1, 5", 1),
]


def _plane(series, number):
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    hu = np.full((SIZE, SIZE), -1000.0)
    if series != "000004_01_01":
        body = ((xx - BODY["cx"]) / BODY["ax"]) ** 2 + ((yy - BODY["cy"]) / BODY["ay"]) ** 2 <= 1.0
        hu[body] = 40.0
        if series == "000001_01_01":
            z_mm = (number - 16) * SZ
            r2 = ((xx - LESION_CENTRE_PX[0]) * SXY) ** 2 + ((yy - LESION_CENTRE_PX[1]) * SXY) ** 2 + z_mm ** 2
            hu[r2 <= 4.0 ** 2] = LESION_HU
            if number == 12:
                hu[SPECK[0]:SPECK[0] + 2, SPECK[1]:SPECK[1] + 2] = 500.0
    hu[(xx - 47.5) ** 2 + (yy - 47.5) ** 2 > 50.0 ** 2] = -3024.0   # outside the field of view
    return hu


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("DeepLesionTrain")
    for series, (first, last, _) in SERIES.items():
        folder = root / "Images_png" / series
        folder.mkdir(parents=True)
        for number in range(first, last + 1):
            _write_png(folder / f"{number:03d}.png", _plane(series, number))
    _write_csv(root / "DL_info.csv", ROWS)
    return root


@pytest.fixture(scope="module")
def built(root, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    train = build_deeplesion_cache(root, cache, splits=("train",))
    val = build_deeplesion_cache(root, cache, splits=("val",))
    return cache, train, val


def _expected_crop(lo_px, hi_px, n):
    """Crop [start, stop] in 1 mm voxels of the body's pixel extent [lo_px, hi_px] (+ margin, clipped)."""
    last = math.floor((n - 1) * SXY + 1e-6)
    start = max(0, math.floor((lo_px - 0.5) * SXY - BODY_MARGIN_MM))
    stop = min(last, math.ceil((hi_px + 0.5) * SXY + BODY_MARGIN_MM))
    return start, stop


def test_train_and_val_splits_are_cached_with_their_own_codes(built):
    cache, train, val = built
    assert train == ["000001_01_01_010-022"]           # the air-only chunk is skipped
    assert val == ["000002_01_01_005-017"]
    assert cached_uids(cache) == sorted(train + val)    # the Test split never enters the cache
    assert read_cached_scan(cache, train[0]).subset == 1 and read_cached_scan(cache, val[0]).subset == 2
    meta = json.loads((cache / f"{train[0]}.json").read_text())
    assert meta["preprocessing"] == "body" and meta["version"] == cache_mod.CACHE_VERSION
    assert not list(cache.glob("*.part"))


def test_air_only_chunk_is_skipped_with_a_warning_and_remembered(root, tmp_path, caplog, monkeypatch):
    with caplog.at_level(logging.WARNING):
        uids = build_deeplesion_cache(root, tmp_path, splits=("train",))
    assert uids == ["000001_01_01_010-022"]
    assert "000004_01_01_001-005" in caplog.text and "no body" in caplog.text
    assert "no body" in (tmp_path / "000004_01_01_001-005.skip").read_text()
    calls = []
    monkeypatch.setattr(cache_mod.Preprocessing, "apply", lambda self, v, mask=None: calls.append(v))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert build_deeplesion_cache(root, tmp_path, splits=("train",)) == uids
    assert calls == [] and "1 earlier" in caplog.text


def test_boxes_match_the_data_set_in_world_coordinates(root, built):
    cache, train, val = built
    data = {s.seriesuid: s for s in DeepLesionDataset(root)}
    for uid in train + val:
        scan = read_cached_scan(cache, uid)
        targets, excluded = data[uid].boxes_lps("train")
        for cached, rows in ((scan.boxes, targets), (scan.excluded, excluded)):
            assert cached.shape == rows.shape
            if len(rows):
                np.testing.assert_allclose(scan.to_world(cached[:, :3]), rows[:, :3], atol=1e-3)
                np.testing.assert_allclose(cached[:, 3], rows[:, 3], atol=1e-4)   # 1 mm voxels: d in mm
    a = read_cached_scan(cache, train[0])
    # Worked by hand (see ROWS): lesion A is the target, the 49 mm lesion is excluded.
    np.testing.assert_allclose(a.to_world(a.boxes[:, :3]), [[33.6, 35.0, 15.0]], atol=1e-3)
    np.testing.assert_allclose(a.boxes[:, 3], [11.2], atol=1e-4)
    np.testing.assert_allclose(a.to_world(a.excluded[:, :3]), [[31.5, 35.0, 25.0]], atol=1e-3)
    np.testing.assert_allclose(a.excluded[:, 3], [49.0], atol=1e-4)
    b = read_cached_scan(cache, val[0])
    np.testing.assert_allclose(b.boxes[:, 3], [8.4], atol=1e-4)
    assert len(b.excluded) == 0


def test_crop_is_the_body_box_at_1mm_without_black_borders(built):
    cache, train, _ = built
    scan = read_cached_scan(cache, train[0])
    # The chunk geometry is axis-aligned (identity direction, origin 0 at the first slice).
    np.testing.assert_allclose(scan.affine[:, :3], [[0, 0, 1], [0, 1, 0], [1, 0, 0]], atol=1e-9)
    x0, y0, z0 = scan.affine[:, 3]
    xs = _expected_crop(BODY["cx"] - BODY["ax"], BODY["cx"] + BODY["ax"], SIZE)
    ys = _expected_crop(BODY["cy"] - BODY["ay"], BODY["cy"] + BODY["ay"], SIZE)   # the speck is not body
    nz = math.floor(12 * SZ) + 1                                                   # the whole chunk in z
    assert scan.image.shape == (nz, ys[1] - ys[0] + 1, xs[1] - xs[0] + 1)
    assert (x0, y0, z0) == pytest.approx((xs[0], ys[0], 0.0))
    image = np.asarray(scan.image, dtype=np.float32)
    # Every voxel keeps its intensity: no -3024 HU border (-> 0), air is air, no lung-style padding.
    assert image.min() == pytest.approx(float(normalize_hu(np.float32(-1000.0))), abs=0.01)
    assert image.dtype == np.float32 and scan.image.dtype == np.float16
    z, y, x = np.round(scan.boxes[0, :3]).astype(int)
    assert image[z, y, x] == pytest.approx(float(normalize_hu(np.float32(LESION_HU))), abs=0.01)


def test_body_mask_drops_specks_and_preprocess_refuses_air(root):
    scan = next(s for s in DeepLesionDataset(root, splits=["train"]) if s.seriesuid.startswith("000001"))
    volume = scan.load()
    mask = body_mask(volume)
    assert not mask[2, SPECK[0], SPECK[1]] and mask[2, BODY["cy"], BODY["cx"]]
    assert np.count_nonzero(mask) == np.count_nonzero(np.asarray(volume.array) > -500) - 4
    pre = preprocess_body(volume)
    assert pre.spacing == 1.0 and pre.image.shape[0] == math.floor(12 * SZ) + 1 and pre.mask.any()
    air = Volume(np.full((4, 32, 32), -1000.0, dtype=np.float32), (0.7, 0.7, 2.5), (0, 0, 0), np.eye(3))
    with pytest.raises(VolumeError, match="no body"):
        preprocess_body(air)


def test_cached_scans_are_not_redone(root, built, monkeypatch):
    cache, train, val = built

    def fail(self, volume, mask=None):
        raise AssertionError("a cached chunk was preprocessed again")

    monkeypatch.setattr(cache_mod.Preprocessing, "apply", fail)
    assert build_deeplesion_cache(root, cache, splits=("train",)) == train
    with pytest.raises(ValueError, match="unknown DeepLesion split"):
        build_deeplesion_cache(root, cache, splits=("training",))


def _train_argv(root, out, *extra):
    return ["train", "--dataset", "deeplesion", "--data", str(root), "--out", str(out), "--no-progress", *extra]


@pytest.mark.parametrize("extra, message", [
    (["--folds", "0"], "--folds selects LUNA16 subsets"),
    (["--val-data", "."], "--val-data is for LUNA16 layouts"),
    (["--iters", "0"], "--iters must be >= 1"),
])
def test_train_cli_rejects_luna16_only_options(root, tmp_path, capsys, extra, message):
    assert main(_train_argv(root, tmp_path / "run", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_cli_rejects_a_folder_that_is_not_deeplesion(tmp_path, capsys):
    (tmp_path / "notdl").mkdir()
    assert main(_train_argv(tmp_path / "notdl", tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "is not a DeepLesion folder" in err and "DL_info.csv and Images_png missing" in err
    assert main(_train_argv(tmp_path / "absent", tmp_path / "run")) == 2
    # argparse's own refusal: main() returns its exit code 2 (it no longer raises SystemExit)
    assert main(["train", "--dataset", "kaggle", "--data", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_train_cli_builds_both_splits_and_describes_them(root, built):
    from LesionDetectorLib.cli import train as train_cli

    cache, train, val = built
    args = argparse.Namespace(dataset="deeplesion", data=str(root), val_data=None, folds=None)
    assert train_cli.build_caches(args, cache, progress=False) == (train, val)
    card = train_cli.training_data_card(args, len(train), len(val))
    assert card["dataset"] == "deeplesion" and card["n_train_scans"] == 1 and card["val_split"] == "val"
    pre = train_cli.preprocessing_card(args)
    assert pre["crop"] == "body" and pre["lung_mask"] is False and pre["spacing_mm"] == 1.0
