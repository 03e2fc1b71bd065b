"""The bundled model ships verified weights and an honest card the pipeline can use."""
import json

import pytest

from LesionDetectorLib.errors import ModelError
from LesionDetectorLib.inference import Detector
from LesionDetectorLib.model.card import CARD_FILE, WEIGHTS_FILE, sha256_file
from LesionDetectorLib.resources import models_root

BUNDLED = models_root() / "luna16-synthetic"


def test_weights_match_the_card_and_stay_small():
    card = json.loads((BUNDLED / CARD_FILE).read_text())
    assert sha256_file(BUNDLED / WEIGHTS_FILE) == card["sha256"]
    assert (BUNDLED / WEIGHTS_FILE).stat().st_size <= 50 * 2 ** 20


def test_card_states_data_use_and_measured_operating_points():
    card = json.loads((BUNDLED / CARD_FILE).read_text())
    assert "NOT FOR CLINICAL USE" in card["intended_use"]
    assert any("synthetic" in text for text in card["limitations"])
    ops = card["operating_points"]
    assert set(ops) == {"sensitivity_0.90", "sensitivity_0.95", "fp_per_scan_1", "fp_per_scan_4"}
    for op in ops.values():
        assert 0.0 <= op["threshold"] <= 1.0 and "reached" in op
    assert 0.0 <= card["test"]["cpm"] <= 1.0 and card["test"]["n_scans"] > 0
    assert card["inference"]["tile"] == [128, 128, 128]


def test_card_names_its_calibrated_fusion_and_patient_probability():
    """The score fusion and the patient probability were chosen and fitted on the validation
    set through the detector's own engine (scripts/build_bundled_model.py)."""
    from LesionDetectorLib.inference.engine import ScoreFusion

    card = json.loads((BUNDLED / CARD_FILE).read_text())
    fusion = ScoreFusion.from_card(card)
    assert fusion.method in card["validation"]["fusion_candidates"]
    best = max(v["cpm"] for v in card["validation"]["fusion_candidates"].values() if v.get("fusion"))
    assert card["validation"]["fusion_candidates"][fusion.method]["cpm"] >= best - 0.005
    prob = card["patient_probability"]
    assert prob["method"] == "platt" and "synthetic" in prob["fitted_on"] and prob["n_negative"] > 0


def test_detector_loads_it_by_name():
    det = Detector.from_pretrained("luna16-synthetic", device="cpu")
    assert det.model_identity["name"] == "luna16-synthetic"
    assert det.tile == (128, 128, 128)


def test_tampered_copy_is_refused(tmp_path):
    for name in (CARD_FILE, WEIGHTS_FILE):
        (tmp_path / name).write_bytes((BUNDLED / name).read_bytes())
    blob = bytearray((tmp_path / WEIGHTS_FILE).read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / WEIGHTS_FILE).write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="does not match"):
        Detector.from_pretrained(tmp_path, device="cpu")
