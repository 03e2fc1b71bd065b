"""The one detection engine: score fusion, one mark per lesion, skipped empty tiles, bf16 on
the CPU, and validation running exactly the Detector's code."""
import numpy as np
import pytest
import torch

from LesionDetectorLib.inference.engine import (DetectionEngine, EngineSettings, ScoreFusion, cpu_has_native_bf16,
                                                merge_inside, postprocess_rows, resolve_precision, valid_voxels)
from LesionDetectorLib.inference.patient_flag import patient_probability
from LesionDetectorLib.model import ModelConfig


def rows(*marks):
    """(z, y, x, d, rpn, fprn) -> engine rows with the score column filled by the caller's fusion."""
    out = np.array([[z, y, x, d, 0.0, rpn, fprn] for z, y, x, d, rpn, fprn in marks], dtype=np.float64)
    return out


def test_fusions_rank_as_documented():
    rpn, fprn = np.array([0.9, 0.3]), np.array([0.2, 0.8])
    assert np.allclose(ScoreFusion("mean")(rpn, fprn), [0.55, 0.55])
    assert np.allclose(ScoreFusion("fprn")(rpn, fprn), fprn)
    assert np.allclose(ScoreFusion("geometric")(rpn, fprn), np.sqrt(rpn * fprn))
    logistic = ScoreFusion("logistic", (0.0, 1.0, 0.0))         # logit(fprn) only -> fprn itself
    assert np.allclose(logistic(rpn, fprn), fprn, atol=1e-9)
    with pytest.raises(ValueError, match="score fusion"):
        ScoreFusion("max")
    with pytest.raises(ValueError, match="finite"):
        ScoreFusion("logistic", (1.0, float("nan"), 0.0))


def test_card_names_the_fusion_and_the_default_is_the_papers_mean():
    assert EngineSettings.from_card({}).fusion.method == "mean"
    card = {"inference": {"score_fusion": {"method": "logistic", "weights": [0.5, 2.0, -1.0]}, "overlap": 16,
                          "tile": [160, 160, 160]}}
    s = EngineSettings.from_card(card)
    assert (s.fusion.method, s.fusion.weights, s.overlap, s.tile) == ("logistic", (0.5, 2.0, -1.0), 16, (160,) * 3)
    assert ScoreFusion.from_card(card).to_dict() == {"method": "logistic", "weights": [0.5, 2.0, -1.0]}
    with pytest.raises(ValueError, match="multiples of 16"):
        EngineSettings(tile=(100, 128, 128))


def test_a_large_nodule_gets_one_mark():
    # A 30 mm nodule at (50, 50, 50): four proposals inside its sphere whose cubes barely
    # overlap (NMS keeps them all), and a separate small nodule 40 mm away.
    r = rows((50, 50, 50, 30, 0.9, 0.95), (50, 60, 52, 10, 0.8, 0.9), (42, 50, 50, 8, 0.7, 0.85),
             (56, 44, 50, 6, 0.6, 0.8), (50, 50, 90, 6, 0.6, 0.9))
    settings = EngineSettings(tile=(64,) * 3, nms_iou=0.1)
    out = postprocess_rows(r, settings)
    assert len(out) == 2
    assert np.allclose(out[0, :3], [50, 50, 50]) and np.allclose(out[1, :3], [50, 50, 90])
    # without the merge rule the same rows give one mark per proposal
    assert len(postprocess_rows(r, EngineSettings(tile=(64,) * 3, nms_iou=0.1, merge_inside=False))) == 5


def test_merge_keeps_neighbours_outside_the_sphere():
    r = rows((10, 10, 10, 10, 0.9, 0.9), (10, 10, 15.5, 10, 0.8, 0.8))    # 5.5 mm apart, radius 5
    r[:, 4] = [0.9, 0.8]
    assert len(merge_inside(r)) == 2
    r[1, 2] = 14.0
    assert len(merge_inside(r)) == 1


def test_fusion_changes_the_ranking_before_nms():
    # an RPN-confident vessel (mean 0.795) and an FPRN-confident nodule (mean 0.735)
    r = rows((10, 10, 10, 6, 0.99, 0.6), (40, 40, 40, 6, 0.5, 0.97))
    mean = postprocess_rows(r, EngineSettings(tile=(64,) * 3))
    fprn = postprocess_rows(r, EngineSettings(tile=(64,) * 3, fusion=ScoreFusion("fprn")))
    assert np.allclose(mean[0, :3], [10, 10, 10]) and mean[0, 4] == pytest.approx(0.795)
    assert np.allclose(fprn[0, :3], [40, 40, 40]) and fprn[0, 4] == pytest.approx(0.97)
    assert fprn[1, 4] == pytest.approx(0.6)


class CountingModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    def forward(self, x):
        self.calls += x.shape[0]
        return [{k: torch.zeros((0, 4) if k == "boxes" else (0,)) for k in
                 ("boxes", "scores", "scores_rpn", "scores_fprn")} for _ in range(x.shape[0])]


def test_tiles_owning_no_anatomy_are_skipped():
    pad = 0.6667
    image = np.full((64, 64, 160), pad, dtype=np.float32)
    image[:, :, :40] = 0.1                              # anatomy only at the low-x end
    model = CountingModel()
    engine = DetectionEngine(model, EngineSettings(tile=(64, 64, 64), overlap=16), torch.device("cpu"))
    result = engine.detect(image, pad)
    assert result.n_tiles_planned == 3 and result.n_tiles == 1 and model.calls == 1
    assert valid_voxels(image.astype(np.float16), pad).sum() == 64 * 64 * 40


def test_precision_choice():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_native_bf16() else "fp32")
    with pytest.raises(ValueError, match="CUDA"):
        resolve_precision("fp16", cpu)


@pytest.fixture(scope="module")
def bundled_crop(nodule_crop):
    """A 64^3 window of a preprocessed synthetic scan around a real nodule, and the bundled model."""
    model, crop, centre, _ = nodule_crop(64)
    return model, crop, centre


def test_bf16_detections_match_fp32(bundled_crop):
    """bf16 autocast (the default on CPUs with AMX / AVX512-BF16) moves the bundled model's
    confident marks by < 0.05 in score and < 0.5 mm in centre (all of the better-scored half, 95 %
    of the rest: a borderline mark can swap places with a tie); the RoI Align op computes in
    float32 under autocast. (On CPUs without native bf16 this is emulated: slower, same values.)"""
    model, crop, _ = bundled_crop
    results = {}
    for precision in ("fp32", "bf16"):
        engine = DetectionEngine(model, EngineSettings(tile=(64,) * 3, precision=precision), torch.device("cpu"))
        results[precision] = engine.detect(crop, 0.6667).rows
    _assert_same_confident_marks(results["fp32"], results["bf16"])


def _assert_same_confident_marks(ref, other):
    """``other``'s marks keep ``ref``'s RPN-confident ones (independent of the card's fusion) within
    0.5 mm and 0.05 in each score. A low-ranked mark can lose a tie (NMS, the per-tile candidate
    cap) to a neighbour under the other precision: the better-scored half must all stay, and
    nineteen in twenty overall."""
    confident = ref[ref[:, 5] >= 0.5]
    assert len(confident) >= 10
    kept = []
    for r in confident:
        d = np.linalg.norm(other[:, :3] - r[:3], axis=1)
        j = int(d.argmin())
        kept.append(bool(d[j] < 0.5 and np.all(np.abs(other[j, 4:7] - r[4:7]) < 0.05)))
    kept = np.asarray(kept)
    top = confident[:, 4] >= np.percentile(confident[:, 4], 50)
    assert kept[top].all(), confident[top & ~kept]
    assert kept.mean() >= 0.95, confident[~kept]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_detections_match_cpu_fp32(bundled_crop, precision):
    """The GPU path, in fp32 and in fp16 autocast (the CUDA default), keeps the CPU fp32 marks:
    confident ones move by < 0.05 in score and < 0.5 mm in centre (the bf16 bound above)."""
    import copy

    model, crop, _ = bundled_crop
    cpu = DetectionEngine(model, EngineSettings(tile=(64,) * 3, precision="fp32"), torch.device("cpu"))
    ref = cpu.detect(crop, 0.6667).rows
    cuda = torch.device("cuda")
    gpu_model = copy.deepcopy(model).to(cuda)
    result = DetectionEngine(gpu_model, EngineSettings(tile=(64,) * 3, precision=precision), cuda).detect(crop, 0.6667)
    assert result.device.type == "cuda" and result.precision == precision
    _assert_same_confident_marks(ref, result.rows)


def test_validation_runs_the_detector_engine(monkeypatch):
    """training.validation.detect_cached and the Detector's model stage are the same call."""
    from LesionDetectorLib.inference import engine as engine_module
    from LesionDetectorLib.training import validation
    from LesionDetectorLib.training.cache import CachedScan

    seen = []
    real = engine_module.DetectionEngine.detect

    def spy(self, image, pad_value, after_batch=None):
        seen.append((self.settings.tile, self.settings.overlap, self.settings.fusion.method))
        return real(self, image, pad_value, after_batch)

    monkeypatch.setattr(engine_module.DetectionEngine, "detect", spy)
    scan = CachedScan(uid="s", image=np.full((48, 48, 48), 0.2, dtype=np.float16), boxes=np.zeros((0, 4)),
                      excluded=np.zeros((0, 4)), affine=np.concatenate([np.eye(3), np.zeros((3, 1))], 1))
    settings = validation.engine_settings_for(ModelConfig.preset("tiny"))
    out = validation.detect_cached(CountingModel(), scan, settings)
    assert out.shape == (0, 7) and seen == [(settings.tile, settings.overlap, "mean")]


def test_patient_probability_from_card():
    card = {"patient_probability": {"method": "platt", "a": 2.0, "b": 0.0}}
    assert patient_probability(0.5, card) == pytest.approx(0.5)
    assert patient_probability(0.9, card) > 0.9
    assert patient_probability(None, card) < 1e-6
    assert patient_probability(0.9, {}) is None


def test_validation_overlap_is_at_most_a_third_of_the_training_crop():
    """A 32^3 test crop with the card's 32-voxel overlap would step by one voxel (4913 tiles on
    a 48^3 scan); a real 96^3 crop keeps the card's 32."""
    from LesionDetectorLib.inference.engine import plan_tiles
    from LesionDetectorLib.training import validation

    small = validation.engine_settings_for(ModelConfig.preset("tiny", crop_size=(32, 32, 32)))
    assert small.overlap == 10 and len(plan_tiles((48, 48, 48), small.tile, small.overlap)) == 8
    assert validation.engine_settings_for(ModelConfig.preset("luna16", crop_size=(96, 96, 96))).overlap == 32
    assert validation.engine_settings_for(ModelConfig.preset("tiny"), overlap=4).overlap == 4
