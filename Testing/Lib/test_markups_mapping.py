"""The control-point description format of LesionDetectorLib.export.markups (no Slicer needed)."""
import pytest

from LesionDetectorLib.export import markups


def test_description_lists_every_number_then_the_review():
    cand = {"id": "N1", "rank": 1, "score": 0.9312, "diameter_mm": 8.44, "score_rpn": 0.91, "score_fprn": 0.95,
            "review": "accepted"}
    text = markups.control_point_description(cand)
    assert text == "score 0.931; diameter 8.4 mm; RPN 0.910; FPRN 0.950; rank 1; review accepted"
    parsed = markups.parse_description(text)
    assert parsed["score"] == "0.931" and parsed["diameter"] == "8.4 mm" and parsed["review"] == "accepted"


def test_unknown_parts_are_kept_and_do_not_break_reading():
    text = "score 0.500; type part-solid; Lung-RADS 4A; review rejected; free words"
    parsed = markups.parse_description(text)
    assert parsed["type"] == "part-solid" and parsed["Lung-RADS"] == "4A" and parsed["free"] == "words"
    assert markups.review_from_description(text) == "rejected"
    again = markups.with_review(text, "accepted")
    assert again == "score 0.500; type part-solid; Lung-RADS 4A; review accepted; free words"


@pytest.mark.parametrize("text,state", [
    ("", "unreviewed"), (None, "unreviewed"), ("score 0.5", "unreviewed"),
    ("review maybe", "unreviewed"), ("score 0.9 | diameter 4 mm | review: accepted", "accepted"),
    (";;; review rejected ;", "rejected"),
])
def test_review_is_read_tolerantly(text, state):
    assert markups.review_from_description(text) == state


def test_with_review_rejects_unknown_states_and_appends_when_absent():
    assert markups.with_review("score 0.4", "rejected") == "score 0.4; review rejected"
    assert markups.with_review(None, "accepted") == "review accepted"
    with pytest.raises(ValueError):
        markups.with_review("score 0.4", "maybe")


@pytest.mark.parametrize("review,score,thr,expected", [
    ("accepted", 0.1, 0.5, True), ("rejected", 0.9, 0.5, False), ("unreviewed", 0.5, 0.5, True),
    ("unreviewed", 0.49, 0.5, False), ("unreviewed", 0.01, None, True),
])
def test_selected_is_a_finding_at_the_operating_point_after_review(review, score, thr, expected):
    assert markups.is_selected(review, score, thr) is expected


def test_points_without_numbers_are_not_candidates_in_a_rebuilt_list():
    points = [{"id": "N1", "label": "N1 0.80", "description": "score 0.800; diameter 6.0 mm; review accepted",
               "position_lps": [1.0, 2.0, 3.0]},
              {"id": "7", "label": "F-7", "description": "", "position_lps": [0.0, 0.0, 0.0]}]
    measurements = {"patient flag": {"value": 1.0, "description": "positive"},
                    "operating point threshold": {"value": 0.5, "description": "sensitivity_0.95"},
                    "model": {"value": 0.0, "description": "luna16-synthetic 1.1.0 sha256:" + "a" * 64}}
    f = markups.findings_from_markups(points, measurements)
    assert [(c.id, c.review, c.score) for c in f.candidates] == [("N1", "accepted", 0.8)]
    assert f.patient_flag["status"] == "positive" and f.patient_flag["threshold"] == 0.5
    assert f.model == {"name": "luna16-synthetic", "version": "1.1.0", "sha256": "a" * 64}
