"""LUNA16-layout reader: folders, CSVs with the challenge's headers, masks, folds, clear errors."""
import numpy as np
import pytest
import SimpleITK as sitk

from LesionDetectorLib.data.luna16_dataset import Luna16Dataset, read_annotation_csv
from LesionDetectorLib.errors import EvaluationInputError, VolumeError

HEADER = "seriesuid,coordX,coordY,coordZ,diameter_mm\n"


def _mhd(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(np.full((4, 5, 6), value, np.int16))
    img.SetSpacing((0.7, 0.7, 2.5))
    sitk.WriteImage(img, str(path))


@pytest.fixture
def luna(tmp_path):
    _mhd(tmp_path / "subset0" / "1.2.3.mhd")
    _mhd(tmp_path / "subset0" / "1.2.4.mhd")
    _mhd(tmp_path / "subset1" / "1.2.5.mhd")
    _mhd(tmp_path / "seg-lungs-LUNA16" / "1.2.5.mhd", 3)
    (tmp_path / "annotations.csv").write_text(HEADER + "1.2.3,-10.5,20.25,-300.0,5.5\n1.2.3,1,2,3,10\n1.2.5,0,0,0,4\n")
    (tmp_path / "annotations_excluded.csv").write_text(HEADER + "1.2.4,7,8,9,2.5\n")
    (tmp_path / "seriesuids.csv").write_text("1.2.3\n1.2.4\n1.2.5\n")
    return tmp_path


def test_layout_csvs_masks_and_folds(luna):
    ds = Luna16Dataset(luna)
    assert len(ds) == 3 and "1.2.4" in ds
    assert ds.scan("1.2.5").subset == 1
    assert ds.scan("1.2.5").lung_mask_path.name == "1.2.5.mhd"
    assert ds.scan("1.2.3").lung_mask_path is None
    np.testing.assert_allclose(ds.annotations("1.2.3"), [[-10.5, 20.25, -300.0, 5.5], [1, 2, 3, 10]])
    assert ds.annotations("1.2.4").shape == (0, 4)
    np.testing.assert_allclose(ds.excluded("1.2.4"), [[7, 8, 9, 2.5]])
    assert ds.folds() == {0: ["1.2.3", "1.2.4"], 1: ["1.2.5"]}
    assert ds.split(1) == (["1.2.3", "1.2.4"], [], ["1.2.5"])
    assert ds.listed_uids == ["1.2.3", "1.2.4", "1.2.5"]
    assert ds.read("1.2.5").shape_zyx == (4, 5, 6)


@pytest.mark.parametrize("body, match", [
    ("seriesuid,coordX,coordY,diameter_mm\n", "coordZ"),
    (HEADER + "1.2.3,1,2,3,4\n1.2.3,1,x,3,4\n", r"annotations.csv:3: .*numbers"),
    (HEADER + "1.2.3,1,2\n", r"annotations.csv:2: 3 fields"),
    (HEADER + "1.2.3,1,2,3,-4\n", "negative diameter"),
    ("", "empty file"),
])
def test_malformed_csv_names_file_and_line(tmp_path, body, match):
    p = tmp_path / "annotations.csv"
    p.write_text(body)
    with pytest.raises(EvaluationInputError, match=match):
        read_annotation_csv(p)


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(VolumeError, match="not found"):
        Luna16Dataset(tmp_path / "nope")
    with pytest.raises(VolumeError, match="no .mhd"):
        Luna16Dataset(tmp_path)
    _mhd(tmp_path / "subset0" / "9.9.mhd")
    with pytest.raises(VolumeError, match="not in"):
        Luna16Dataset(tmp_path).scan("1.1")
