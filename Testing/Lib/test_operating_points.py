"""Model-card operating points: keys, JSON shape, and the threshold rules by hand."""
import json

import pytest

from LesionDetectorLib.evaluation import evaluate_luna16, match_candidates
from LesionDetectorLib.evaluation.operating_points import operating_points
from LesionDetectorLib.evaluation.report_luna16 import write_operating_points
from LesionDetectorLib.luna16_format import as_annotations, as_predictions

# 2 scans, 10 nodules; events (prob: kind): .99 FP, .9 TP, .85 TP, .8 FP, .7 TP x6 (tie), .6 FP, .5 TP, .4 FP x3
UIDS = ["a", "b"]
ANN = [("a", 100 * i, 0, 0, 10.0) for i in range(5)] + [("b", 100 * i, 0, 0, 10.0) for i in range(5)]
PREDS = ([("a", 0, 0, 0, 0.9), ("a", 100, 0, 0, 0.85), ("a", 200, 0, 0, 0.7), ("a", 300, 0, 0, 0.7),
          ("a", 400, 0, 0, 0.7), ("b", 0, 0, 0, 0.7), ("b", 100, 0, 0, 0.7), ("b", 200, 0, 0, 0.7),
          ("b", 300, 0, 0, 0.5)]
         + [("a", 0, 50, 0, 0.99), ("a", 0, 60, 0, 0.8), ("b", 0, 50, 0, 0.6)]
         + [("b", 0, 70 + 10 * i, 0, 0.4) for i in range(3)])


def matching(preds=PREDS, uids=UIDS, ann=ANN):
    return match_candidates(as_annotations(ann), [], uids, as_predictions(preds))


def test_operating_points_by_hand():
    ops = operating_points(matching())
    assert list(ops) == ["sensitivity_0.90", "sensitivity_0.95", "fp_per_scan_1", "fp_per_scan_4"]
    s90 = ops["sensitivity_0.90"]            # 0.9 reached at 0.5 (9/10), with FPs .99 .8 .6
    assert (s90.threshold, s90.sensitivity, s90.fp_per_scan, s90.reached) == (0.5, 0.9, 1.5, True)
    s95 = ops["sensitivity_0.95"]            # nodule b/400 missed: unreachable -> lowest mark
    assert (s95.threshold, s95.sensitivity, s95.fp_per_scan, s95.reached) == (0.4, 0.9, 3.0, False)
    fp1 = ops["fp_per_scan_1"]               # <= 2 FPs: lowest threshold is the .7 tie (FPs .99 .8)
    assert (fp1.threshold, fp1.sensitivity, fp1.fp_per_scan, fp1.reached) == (0.7, 0.8, 1.0, True)
    fp4 = ops["fp_per_scan_4"]               # all 6 FPs fit in 8
    assert (fp4.threshold, fp4.sensitivity, fp4.fp_per_scan) == (0.4, 0.9, 3.0)


def test_custom_targets_and_over_budget():
    ops = operating_points(matching(), sensitivity_targets=(0.2,), fp_targets=(0.25, 0.5))
    assert ops["sensitivity_0.20"].threshold == 0.85 and ops["sensitivity_0.20"].fp_per_scan == 0.5
    # 0.25 FP/scan = 0.5 FP: even the top vertex (.99, an FP) exceeds it -> nothing flagged
    over = ops["fp_per_scan_0.25"]
    assert over.threshold > 0.99 and over.sensitivity == 0.0 and over.fp_per_scan == 0.0
    assert ops["fp_per_scan_0.5"].threshold == 0.85


def test_json_shape_for_the_model_card(tmp_path):
    path = write_operating_points(operating_points(matching()), tmp_path / "operating_points.json")
    data = json.loads(path.read_text())
    assert set(data) == {"sensitivity_0.90", "sensitivity_0.95", "fp_per_scan_1", "fp_per_scan_4"}
    for entry in data.values():
        assert {"threshold", "sensitivity", "fp_per_scan"} <= set(entry)
        assert isinstance(entry["threshold"], float)


def test_operating_points_agree_with_froc():
    res = evaluate_luna16(ANN, [], UIDS, PREDS, bootstrap=0, froc_rule="exact")   # vertices: read at the rate
    fp1 = res.operating_points["fp_per_scan_1"]
    assert res.sensitivities[1.0] == pytest.approx(fp1.sensitivity)
