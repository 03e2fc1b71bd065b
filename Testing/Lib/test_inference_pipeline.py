"""The detection pipeline end to end: world coordinates, merging, flag, cancel, OOM, no lungs.

A fake model that "detects" the bright blob in each tile (its centroid, in tile voxels)
stands in for trained weights, so the world position of a planted nodule is checked
exactly through resampling, lung crop and tiling on oblique and flipped volumes. The real
network (randomly initialised ``luna16`` preset) runs in one test for the mechanics.
"""
import numpy as np
import pytest
import torch

from LesionDetectorLib.errors import CancelledError, ModelError, NoLungsFoundError
from LesionDetectorLib.export import validate_findings_dict
from LesionDetectorLib.inference import CancelToken, Detector
from LesionDetectorLib.model import ModelConfig, build_model, save_pretrained
from LesionDetectorLib.volume import Volume

OPS = {"sensitivity_0.90": {"threshold": 0.8, "sensitivity": 0.9, "fp_per_scan": 1.0},
       "sensitivity_0.95": {"threshold": 0.5, "sensitivity": 0.95, "fp_per_scan": 2.0},
       "fp_per_scan_1": {"threshold": 0.8, "sensitivity": 0.9, "fp_per_scan": 1.0},
       "fp_per_scan_4": {"threshold": 0.45, "sensitivity": 0.96, "fp_per_scan": 4.0}}
NODULE_HU = 600.0
NODULE_D = 10.0


def rotation(angles_deg, flip=(1, 1, 1)):
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx @ np.diag(np.asarray(flip, dtype=np.float64))


class BlobModel(torch.nn.Module):
    """Per tile: one box at the intensity-weighted centroid of voxels above ``level``.

    Score 0.5 + 0.45 * (fraction of a full nodule seen), so a tile that cuts the blob
    scores lower than one holding all of it. Records the batch sizes it was given;
    ``oom_above`` makes larger batches raise CUDA out-of-memory.
    """

    def __init__(self, level=0.9, oom_above=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # so .to(device) has something to move
        self.level, self.oom_above, self.batches = level, oom_above, []

    def forward(self, images):
        self.batches.append(images.shape[0])
        if self.oom_above is not None and images.shape[0] > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        full = 4.0 / 3.0 * np.pi * (NODULE_D / 2) ** 3
        out = []
        for img in images[:, 0].numpy():
            w = np.where(img > self.level, img, 0.0)
            if w.sum() == 0:
                out.append({k: torch.zeros((0, 4) if k == "boxes" else (0,)) for k in
                            ("boxes", "scores", "scores_rpn", "scores_fprn")})
                continue
            idx = np.argwhere(w > 0)
            centre = (idx * w[w > 0][:, None]).sum(0) / w.sum()
            seen = min(1.0, len(idx) / full)
            score = 0.5 + 0.45 * seen
            out.append({"boxes": torch.tensor([[*centre, NODULE_D]], dtype=torch.float32),
                        "scores": torch.tensor([score]), "scores_rpn": torch.tensor([score + 0.02]),
                        "scores_fprn": torch.tensor([score - 0.02])})
        return out


def fake_card(ops=OPS):
    return {"name": "blob", "version": "1.0", "sha256": "0" * 64,
            "config": ModelConfig.preset("luna16").to_dict(), "operating_points": ops}


@pytest.fixture(scope="module")
def nodule_lps():
    return np.array([-52.0, 14.0, 9.0])  # inside the phantom's right-side lung (x < 0 is patient right)


@pytest.mark.parametrize("direction", [
    np.eye(3),
    rotation((8.0, -6.0, 20.0)),
    rotation((0.0, 0.0, 0.0), flip=(-1, 1, -1)),
    rotation((5.0, 0.0, -15.0), flip=(1, -1, -1)),
], ids=["identity", "oblique", "flipped", "oblique-flipped"])
def test_planted_nodule_is_reported_at_its_world_position(chest_phantom, nodule_lps, direction):
    vol = chest_phantom(shape_zyx=(64, 96, 112), spacing=(2.2, 2.0, 2.5), direction=direction,
                        nodules=[(nodule_lps, NODULE_D, NODULE_HU)])
    model = BlobModel()
    events = []
    det = Detector(model, fake_card(), device="cpu", tile=64, overlap=16, batch_size=3)
    findings = det(vol, progress=lambda *e: events.append(e))
    assert len(findings) == 1, findings.summary_table()
    c = findings.candidates[0]
    assert np.linalg.norm(np.asarray(c.center_lps) - nodule_lps) < 0.75
    assert c.id == "N1" and c.rank == 1 and c.diameter_mm == pytest.approx(NODULE_D)
    assert 0.6 < c.score <= 0.95 and c.score_rpn > c.score > c.score_fprn
    assert findings.patient_flag["status"] == "positive"
    assert findings.patient_flag["threshold"] == 0.5
    n_tiles = findings.provenance["n_tiles"]
    assert n_tiles > 1 and sum(model.batches) == n_tiles and max(model.batches) == 3
    model_events = [e for e in events if e[0] == "model"]
    assert model_events[0] == ("model", 0, n_tiles) and model_events[-1] == ("model", n_tiles, n_tiles)
    assert [e[0] for e in events if e[1] == 0] == ["read", "preprocess", "model", "postprocess"]
    assert validate_findings_dict(findings.to_dict()) == []
    assert findings.volume["direction"] == pytest.approx(list(direction.reshape(-1)))


def test_negative_scan_and_missing_operating_points(chest_phantom):
    vol = chest_phantom(shape_zyx=(48, 64, 80), spacing=(3.0, 3.0, 3.0))
    det = Detector(BlobModel(), fake_card(), device="cpu", tile=64, overlap=16)
    f = det(vol)
    assert len(f) == 0 and f.patient_flag["status"] == "likely negative" and f.patient_flag["max_score"] is None
    no_ops = Detector(BlobModel(), fake_card(ops={}), device="cpu", tile=64, overlap=16)
    g = no_ops(chest_phantom(shape_zyx=(48, 64, 80), spacing=(3.0, 3.0, 3.0),
                             nodules=[((50.0, 0.0, 0.0), NODULE_D, NODULE_HU)]))
    assert g.patient_flag["status"] == "unavailable" and "no operating points" in g.patient_flag["reason"]
    assert g.operating_point["threshold"] is None and len(g) == 1
    with pytest.raises(ValueError, match="not in the model card"):
        det(vol, operating_point="sensitivity_0.99")


def test_cancel_between_tiles(chest_phantom):
    vol = chest_phantom(shape_zyx=(48, 64, 80), spacing=(3.0, 3.0, 3.0))
    model = BlobModel()
    token = CancelToken()

    def progress(stage, done, total):
        if stage == "model" and done == 2:
            token.cancel()

    with pytest.raises(CancelledError):
        Detector(model, fake_card(), device="cpu", tile=32, overlap=8)(vol, progress=progress, cancel=token)
    assert len(model.batches) == 2  # stopped right after the tile that triggered the cancel


def test_out_of_memory_retries_with_smaller_batches(chest_phantom, nodule_lps):
    vol = chest_phantom(shape_zyx=(48, 64, 80), spacing=(3.0, 3.0, 3.0), nodules=[(nodule_lps, NODULE_D, NODULE_HU)])
    model = BlobModel(oom_above=1)
    f = Detector(model, fake_card(), device="cpu", tile=64, overlap=16, batch_size=4)(vol)
    assert model.batches[:3] == [4, 2, 1]
    assert len(f) == 1 and np.linalg.norm(np.asarray(f.candidates[0].center_lps) - nodule_lps) < 1.5
    notes = f.provenance["notes"]
    assert len(notes) == 2 and "out of memory" in notes[0] and "batch size 1" in notes[1]


def test_no_lungs_is_an_error_not_an_empty_result():
    solid = Volume(np.full((30, 40, 40), 40.0, dtype=np.float32), (2.0, 2.0, 2.0), (0, 0, 0), np.eye(3))
    with pytest.raises(NoLungsFoundError):
        Detector(BlobModel(), fake_card(), device="cpu", tile=32)(solid)


def test_body_crop_model_detects_without_lungs():
    """A card trained on body crops (DeepLesion) needs no lungs: a lesion in soft tissue is found."""
    arr = np.full((40, 48, 48), -1000.0, dtype=np.float32)
    arr[4:36, 6:42, 6:42] = 40.0                          # body block, no air inside: no lungs
    zz, yy, xx = np.mgrid[:40, :48, :48]
    arr[(zz - 20) ** 2 + (yy - 24) ** 2 + (xx - 24) ** 2 <= 9] = 600.0  # bright lesion at voxel (20, 24, 24)
    vol = Volume(arr, (1.0, 1.0, 1.0), (10.0, -5.0, 3.0), np.eye(3))
    card = dict(fake_card(), preprocessing={"crop": "body"})
    with pytest.raises(NoLungsFoundError):
        Detector(BlobModel(level=0.95), fake_card(), device="cpu", tile=32)(vol)
    findings = Detector(BlobModel(level=0.95), card, device="cpu", tile=32)(vol, min_score=0.0)
    assert len(findings) >= 1
    np.testing.assert_allclose(findings.candidates[0].center_lps, [34.0, 19.0, 23.0], atol=0.75)


def test_real_network_from_pretrained_directory(tmp_path, chest_phantom):
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("luna16"))
    save_pretrained(model, tmp_path / "m", {"name": "luna16-random", "version": "0.0.1", "operating_points": OPS})
    det = Detector.from_pretrained(tmp_path / "m", device="auto", tile=64)
    vol = chest_phantom(shape_zyx=(40, 56, 64), spacing=(4.0, 4.0, 4.0))
    # A small supplied lung mask keeps the crop to one 64^3 tile on the CPU.
    mask = np.zeros(vol.array.shape, dtype=bool)
    mask[16:24, 24:32, 12:20] = True
    f = det(vol, lung_mask=mask, min_score=0.0)
    assert f.provenance["n_tiles"] == 1
    assert f.model["name"] == "luna16-random" and len(f.model["sha256"]) == 64
    assert f.provenance["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert validate_findings_dict(f.to_dict()) == []
    scores = [c.score for c in f]
    assert scores == sorted(scores, reverse=True)
    for c in f:  # mean of the two branches (paper, section III-C)
        assert c.score == pytest.approx((c.score_rpn + c.score_fprn) / 2, abs=1e-5)
    assert f.patient_flag["status"] in ("positive", "likely negative")

    (tmp_path / "m" / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(ModelError, match="does not match"):
        Detector.from_pretrained(tmp_path / "m", device="cpu")
    with pytest.raises(ModelError, match="neither a model directory nor a bundled model"):
        Detector.from_pretrained(tmp_path / "missing-model", device="cpu")
