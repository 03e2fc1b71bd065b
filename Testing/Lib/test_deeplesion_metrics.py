"""DeepLesion Tables V/VI metrics with LUNA16's hit criterion, worked by hand."""
import pytest

from LesionDetectorLib.errors import EvaluationInputError
from LesionDetectorLib.evaluation.deeplesion_metrics import DeepLesionLesion, evaluate_deeplesion

L = DeepLesionLesion
# 2 images. im1: lung 8 mm (hit .9), liver 20 mm (hit .6), bone 60 mm (hit .95, "large").
# im2: liver 35 mm (missed). FPs: .8 on im1, .7 and .3 on im2.
LESIONS = [L("im1", 0, 0, 0, 8, 8, 5), L("im1", 100, 0, 0, 20, 20, 4), L("im1", 0, 200, 0, 60, 60, 1),
           L("im2", 0, 0, 0, 35, 35, 4)]
DETS = [("im1", 1, 0, 0, 0.9), ("im1", 105, 0, 0, 0.6), ("im1", 0, 220, 0, 0.95), ("im1", 0, 0, 50, 0.8),
        ("im2", 0, 0, 30, 0.7), ("im2", 90, 0, 0, 0.3)]


def test_all_lesions_by_hand():
    res = evaluate_deeplesion(LESIONS, DETS).all_lesions
    # vertices (FP, TP): .95:(0,1) .9:(0,2) .8:(1,2) .7:(2,2) .6:(2,3) .3:(3,3); 2 images, 4 lesions
    # 0.5 FP/image = 1 FP -> 2 TP; 1 FP/image = 2 FP -> top of the run at 2 -> 3 TP; beyond -> 3.
    assert res.sensitivities == pytest.approx({0.5: 0.5, 1.0: 0.75, 2.0: 0.75, 4.0: 0.75, 8.0: 0.75, 16.0: 0.75})
    assert res.average == pytest.approx((0.5 + 5 * 0.75) / 6)
    # FROC: 1/8 and 1/4 FP/image = .25, .5 FP -> 2 TP; 1/2 -> 1 FP -> 2 TP; then 3 TP
    assert res.froc == pytest.approx((3 * 0.5 + 4 * 0.75) / 7)
    assert res.by_type["liver"][1.0] == pytest.approx(0.5) and res.by_type["liver"][0.5] == pytest.approx(0.0)
    assert res.by_type["lung"][0.5] == 1.0 and res.by_type["bone"][0.5] == 1.0
    assert res.by_size["<10"][0.5] == 1.0
    assert res.by_size["10-30"][1.0] == 1.0 and res.by_size["10-30"][0.5] == 0.0
    assert res.by_size[">=30"][16.0] == pytest.approx(0.5)
    assert res.lesion_counts["liver"] == 2 and res.lesion_counts[">=30"] == 2


def test_without_large_lesions_ignores_their_marks():
    res = evaluate_deeplesion(LESIONS, DETS).without_large
    assert res.n_lesions == 3
    # bone 60 mm gone and its .95 mark ignored: .9:(0,1) .8:(1,1) .7:(2,1) .6:(2,2) .3:(3,2)
    assert res.sensitivities[0.5] == pytest.approx(1 / 3)
    assert res.sensitivities[1.0] == pytest.approx(2 / 3)
    assert "bone" not in res.by_type


def test_bad_deeplesion_input():
    with pytest.raises(EvaluationInputError):
        evaluate_deeplesion([], DETS)
    with pytest.raises(EvaluationInputError, match="im9"):
        evaluate_deeplesion(LESIONS, DETS + [("im9", 0, 0, 0, 0.5)])
    d = evaluate_deeplesion(LESIONS, DETS, image_ids=["im1", "im2", "im3"]).to_dict()
    # 3 images: 0.5 FP/image = 1.5 FP -> between (1,2) and (2,2); 1 FP/image = 3 FP -> 3 TP
    assert d["all"]["n_images"] == 3 and d["all"]["sensitivities"]["0.5"] == pytest.approx(0.5)
    assert d["all"]["sensitivities"]["1"] == pytest.approx(0.75)
