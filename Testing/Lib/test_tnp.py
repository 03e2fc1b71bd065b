"""TNP (paper Fig. 4c): negatives = scans without an annotations.csv nodule; a negative is a
true negative when no mark reaches the threshold of the target sensitivity."""
import math

import numpy as np
import pytest

from LesionDetectorLib.evaluation import evaluate_luna16

UIDS = ["pos", "n1", "n2", "n3", "n4", "n5"]
ANN = [("pos", 0, 0, 0, 10.0), ("pos", 100, 0, 0, 10.0), ("pos", 0, 100, 0, 10.0), ("pos", 0, 0, 100, 10.0)]
EXCL = [("n5", 0, 0, 0, 6.0)]   # only an excluded finding: still a negative patient
PREDS = [("pos", 0, 0, 0, 0.9), ("pos", 100, 0, 0, 0.8), ("pos", 0, 100, 0, 0.5), ("pos", 0, 0, 100, 0.2),
         ("n1", 0, 0, 0, 0.95), ("n2", 0, 0, 0, 0.6), ("n2", 9, 9, 9, 0.1), ("n3", 0, 0, 0, 0.3),
         ("n5", 0, 0, 0, 0.85)]   # n4: no mark; n5's mark sits on the excluded finding


@pytest.mark.parametrize("target, threshold, tn", [
    (0.25, 0.9, 4),    # n2, n3, n4, n5 (0.85 < 0.9) stay below
    (0.5, 0.8, 3),     # n5's 0.85 now counts although FROC ignores it: the flag cannot know
    (0.75, 0.5, 2),    # n3 and n4
    (0.95, 0.2, 1),    # only n4, without any mark
    (1.0, 0.2, 1),
])
def test_tnp_at_target_sensitivity(target, threshold, tn):
    res = evaluate_luna16(ANN, EXCL, UIDS, PREDS, bootstrap=0, tnp_sensitivity=target)
    assert res.tnp.operating_point.threshold == threshold
    assert res.tnp.operating_point.reached
    assert (res.tnp.n_negative, res.tnp.n_true_negative) == (5, tn)
    assert res.tnp.tnp == pytest.approx(tn / 5)


def test_unreachable_sensitivity_uses_lowest_mark():
    preds = [p for p in PREDS if p[4] != 0.2]     # fourth nodule missed: sensitivity tops at 0.75
    res = evaluate_luna16(ANN, EXCL, UIDS, preds, bootstrap=0, tnp_sensitivity=0.95)
    op = res.tnp.operating_point
    assert not op.reached and op.sensitivity == 0.75
    assert op.threshold == 0.1                     # lowest counted mark (an FP on n2)
    assert res.tnp.n_true_negative == 1            # n4


def test_tnp_curve_and_no_negative_patient():
    res = evaluate_luna16(ANN, EXCL, UIDS, PREDS, bootstrap=0)
    curve = res.tnp_curve
    # n5's mark on the excluded finding is no FROC event, so 0.85 is no vertex
    np.testing.assert_allclose(curve.thresholds, [0.95, 0.9, 0.8, 0.6, 0.5, 0.3, 0.2, 0.1])
    np.testing.assert_allclose(curve.sensitivity, [0, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0])
    # negatives' highest marks: n1 .95, n2 .6, n3 .3, n4 none, n5 .85; TN when below threshold
    np.testing.assert_allclose(curve.tnp, np.array([4, 4, 3, 2, 2, 1, 1, 1]) / 5)
    only_pos = evaluate_luna16(ANN, [], ["pos"], PREDS[:4], bootstrap=0)
    assert only_pos.tnp.n_negative == 0 and math.isnan(only_pos.tnp.tnp)
