"""The one LUNA16 format module: round trips, the official cap shared by LUNA16 and DeepLesion,
and the excluded list's -1 diameters in the data set reader."""
import numpy as np
import pytest

from LesionDetectorLib.errors import EvaluationInputError
from LesionDetectorLib.luna16_format import (ANNOTATION_COLUMNS, DEFAULT_DIAMETER_MM, Annotation, Prediction,
                                             cap_predictions, read_annotations, read_predictions, read_seriesuids,
                                             write_annotations, write_predictions, write_seriesuids)


def test_writers_round_trip_exactly(tmp_path):
    ann = [Annotation("1.2.3", -10.123456789012, 20.5, -300.25, 5.5), Annotation("1.2.4", 0.1, 0.2, 0.3, -1.0)]
    preds = [Prediction("1.2.3", 1 / 3, 2 / 3, -1e-7, 0.123456789123)]
    assert read_annotations(write_annotations(tmp_path / "a.csv", ann)) == ann
    assert read_predictions(write_predictions(tmp_path / "p.csv", preds), ["1.2.3"]) == preds
    path = write_seriesuids(tmp_path / "seriesuids.csv", ["1.2.3", "1.2.4"])
    assert path.read_text() == "1.2.3\n1.2.4\n"             # the challenge's file has no header
    assert read_seriesuids(path) == ["1.2.3", "1.2.4"]
    assert (tmp_path / "a.csv").read_text().splitlines()[0] == ",".join(ANNOTATION_COLUMNS)


def test_unknown_size_is_kept_for_evaluation_and_refused_for_training(tmp_path):
    path = write_annotations(tmp_path / "x.csv", [Annotation("s", 0, 0, 0, -1.0)])
    assert read_annotations(path)[0].hit_radius_mm == DEFAULT_DIAMETER_MM / 2
    with pytest.raises(EvaluationInputError, match=r"x.csv:2: negative diameter"):
        read_annotations(path, allow_unknown_size=False)


def test_dataset_reads_the_challenges_excluded_list_with_minus_one(tmp_path):
    from LesionDetectorLib.data.luna16_dataset import read_annotation_csv

    path = tmp_path / "annotations_excluded.csv"
    path.write_text(",".join(ANNOTATION_COLUMNS) + "\n1.2.3,1,2,3,-1\n1.2.3,4,5,6,2.5\n")
    np.testing.assert_array_equal(read_annotation_csv(path, excluded=True)["1.2.3"],
                                  [[1, 2, 3, DEFAULT_DIAMETER_MM], [4, 5, 6, 2.5]])


def test_cap_drops_ties_at_the_cut_per_scan_and_keeps_input_order():
    preds = [Prediction("a", i, 0, 0, p) for i, p in enumerate([0.5, 0.9, 0.7, 0.7, 0.1])]
    preds += [Prediction("b", 9, 0, 0, 0.2)]
    kept, dropped = cap_predictions(preds, 2)
    # "a": the 3rd highest is 0.7, tied with the 2nd: both 0.7 go with the rest below.
    assert [(p.seriesuid, p.x) for p in kept] == [("a", 1), ("b", 9)] and dropped == 4
    assert cap_predictions(preds, 0) == (preds, 0)
    assert len(cap_predictions(preds, 3)[0]) == 4          # cut at 0.5: 0.9, 0.7, 0.7 and "b" stay
