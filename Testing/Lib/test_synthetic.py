"""Synthetic LUNA16-layout data set: lists follow LUNA16's rules, centres sit on nodules inside
the lungs, the layout reads back with Luna16Dataset, and the generator is deterministic."""
import csv
import re

import numpy as np
import pytest
import SimpleITK as sitk

from LesionDetectorLib.cli.main import main as cli_main
from LesionDetectorLib.data.luna16_dataset import Luna16Dataset
from LesionDetectorLib.data.synthetic import generate_scan, series_uid

SEED, N = 11, 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    assert cli_main(["synth", "--n", str(N), "--out", str(root), "--seed", str(SEED),
                     "--size", "small", "--subsets", "2"]) == 0
    with open(root / "synthetic_nodules.csv", newline="") as fh:
        nodules = list(csv.DictReader(fh))
    return root, nodules


def _world_to_index(img, xyz):
    return np.array(img.TransformPhysicalPointToContinuousIndex([float(v) for v in xyz]))[::-1]  # z, y, x


def test_layout_reads_back(dataset):
    root, nodules = dataset
    ds = Luna16Dataset(root)
    assert len(ds) == N and sorted(ds.folds()) == [0, 1]
    assert ds.listed_uids == [series_uid(SEED, i) for i in range(N)]
    for scan in ds:
        assert re.fullmatch(r"1\.3\.6\.1\.4\.1\.14519\.5\.2\.1(\.[1-9][0-9]*)+", scan.seriesuid)
        assert len(scan.seriesuid) <= 64
        assert scan.lung_mask_path is not None
        img = sitk.ReadImage(str(scan.path))
        assert img.GetPixelID() == sitk.sitkInt16 and img.GetSize()[:2] == (160, 160)
    with open(root / "annotations.csv") as fh:
        assert fh.readline().strip() == "seriesuid,coordX,coordY,coordZ,diameter_mm"
    n_ann = sum(len(ds.annotations(u)) for u in ds.folds()[0] + ds.folds()[1])
    n_exc = sum(len(ds.excluded(u)) for u in ds.folds()[0] + ds.folds()[1])
    assert n_ann + n_exc == len(nodules) > 0


def test_lists_follow_luna16_rules(dataset):
    root, nodules = dataset
    ds = Luna16Dataset(root)
    for row in nodules:
        positive = int(row["readers"]) >= 3 and float(row["diameter_mm"]) >= 3.0
        assert row["list"] == ("annotations" if positive else "excluded")
        xyzd = [float(row[k]) for k in ("coordX", "coordY", "coordZ", "diameter_mm")]
        in_ann = any(np.allclose(a, xyzd) for a in ds.annotations(row["seriesuid"]))
        in_exc = any(np.allclose(a, xyzd) for a in ds.excluded(row["seriesuid"]))
        assert (in_ann, in_exc) == (positive, not positive)
    by_scan = {}
    for row in nodules:
        by_scan.setdefault(row["seriesuid"], []).append(
            (np.array([float(row[k]) for k in ("coordX", "coordY", "coordZ")]), float(row["diameter_mm"])))
    for items in by_scan.values():                  # findings never overlap one another
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                assert np.linalg.norm(items[i][0] - items[j][0]) > (items[i][1] + items[j][1]) / 2


def test_centres_lie_in_the_lung_and_on_the_nodule(dataset):
    root, nodules = dataset
    ds = Luna16Dataset(root)
    for row in nodules:
        scan = ds.scan(row["seriesuid"])
        img = sitk.ReadImage(str(scan.path))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(scan.lung_mask_path)))
        hu = sitk.GetArrayFromImage(img).astype(np.float32)
        zyx = _world_to_index(img, [float(row[k]) for k in ("coordX", "coordY", "coordZ")])
        k, j, i = np.round(zyx).astype(int)
        assert mask[k, j, i] in (3, 4), f"centre outside the lung: {row}"
        diameter, category = float(row["diameter_mm"]), row["category"]
        centre = hu[k, j, i]
        lung = np.median(hu[mask > 0])
        if diameter >= 5.0 and category in ("solid", "calcified", "part-solid"):
            assert centre > -400, row
        elif diameter >= 5.0:                        # ground glass: clearly above the parenchyma
            assert centre > lung + 100, row
        assert centre > lung + 60, row               # even micro-nodules show up


def test_deterministic_by_seed_and_geometry_consistent():
    a, b = generate_scan(5, 1, "small"), generate_scan(5, 1, "small")
    assert a.series_uid == b.series_uid
    np.testing.assert_array_equal(a.hu, b.hu)
    assert [n.center_lps.tolist() for n in a.nodules] == [n.center_lps.tolist() for n in b.nodules]
    c = generate_scan(6, 1, "small")
    assert c.series_uid != a.series_uid and (c.hu.shape != a.hu.shape or not np.array_equal(c.hu, a.hu))
    for n in a.nodules:   # world centre <-> array index through the written geometry
        world = a.origin + a.direction @ (a.spacing * n.center_zyx[::-1])
        np.testing.assert_allclose(world, n.center_lps, atol=1e-6)
    with pytest.raises(ValueError):
        generate_scan(0, 0, "huge")


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    assert cli_main(["synth", "--n", "0", "--out", str(tmp_path)]) == 2
    assert "--n" in capsys.readouterr().err
