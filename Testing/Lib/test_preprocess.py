"""Lung mask, crop, resampling and HU normalisation on small chest phantoms with known anatomy."""
import numpy as np
import pytest

from LesionDetectorLib.coordinates import direction_from_angles as rotation, index_to_world, world_to_index
from LesionDetectorLib.errors import NoLungsFoundError
from LesionDetectorLib.preprocess import PAD_HU, lung_mask, normalize_hu, preprocess
from LesionDetectorLib.volume import Volume


OBLIQUE = dict(shape_zyx=(46, 64, 70), spacing=(3.6, 4.1, 3.3), direction=rotation((8.0, -6.0, 20.0), flip=(1, -1, 1)),
               center_lps=(12.5, -30.0, -250.0))


def _voxel_world(volume):
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in volume.array.shape], indexing="ij"), -1).reshape(-1, 3)
    return index_to_world(volume, idx.astype(float)).reshape(*volume.array.shape, 3)


def _dice(a, b):
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_lung_mask_finds_both_lungs_and_nothing_else(chest_phantom, lung_oracle):
    vol = chest_phantom(**OBLIQUE)
    mask = lung_mask(vol)
    truth = lung_oracle(_voxel_world(vol), OBLIQUE["center_lps"])
    assert mask.dtype == bool and mask.shape == vol.array.shape
    assert _dice(mask, truth) > 0.95
    assert not mask[vol.array < -950].any()  # the air around the patient
    world = _voxel_world(vol)[mask] - OBLIQUE["center_lps"]
    assert (world[:, 0] < 0).any() and (world[:, 0] > 0).any()  # right and left lung


def test_lung_mask_takes_in_nodules_inside_and_at_the_pleura(chest_phantom):
    c = np.array(OBLIQUE["center_lps"])
    inside = c + [55.0, 10.0, 5.0]                        # within the left lung
    pleural = c + [95.0, 0.0, 0.0]                        # on the lung's lateral wall, half in the chest wall
    vol = chest_phantom(**OBLIQUE, nodules=[(inside, 14.0, 40.0), (pleural, 14.0, 40.0)])
    mask = lung_mask(vol)
    for point in (inside, pleural - [3.0, 0.0, 0.0]):
        z, y, x = np.rint(world_to_index(vol, point)).astype(int)
        assert mask[z, y, x], f"nodule voxel at {point} left out of the lung mask"


def test_no_lungs_in_abdomen_like_scan(chest_phantom, lung_oracle):
    vol = chest_phantom()
    vol.array[lung_oracle(_voxel_world(vol))] = 40.0  # soft tissue where the lungs were
    vol.array[20:24, 25:30, 28:34] = -900.0  # a gas pocket (bowel) of 4 x 5 x 6 voxels of 64 mm^3
    with pytest.raises(NoLungsFoundError, match="No lungs found.*less than the 300 mL"):
        lung_mask(vol)


def test_no_lungs_in_empty_scan():
    air = Volume(np.full((20, 32, 32), -1000.0, np.float32), (5, 5, 5), (0, 0, 0), np.eye(3))
    with pytest.raises(NoLungsFoundError, match="No lungs found"):
        preprocess(air)


def test_planted_point_maps_to_crop_and_back(chest_phantom):
    """The contract: a known LPS point lands at the right crop voxel and maps back within 1e-6 mm."""
    nodule = np.array(OBLIQUE["center_lps"]) + [-50.0, 12.0, 18.0]
    vol = chest_phantom(**OBLIQUE, nodules=[(nodule, 14.0, 100.0)], noise_hu=0.0)
    pre = preprocess(vol, spacing=1.0)
    assert pre.image.dtype == np.float32 and pre.mask.dtype == bool and pre.mask.shape == pre.image.shape
    assert 0.0 <= pre.image.min() and pre.image.max() <= 1.0
    np.testing.assert_allclose(pre.resampled_geometry.spacing, 1.0)
    np.testing.assert_allclose(pre.resampled_geometry.direction, vol.direction)
    c = pre.from_world(nodule[None])
    np.testing.assert_allclose(pre.to_world(c), nodule[None], atol=1e-6)
    np.testing.assert_allclose(pre.to_source_index(c), world_to_index(vol, nodule[None]), atol=1e-9)
    np.testing.assert_allclose(index_to_world(pre.crop_geometry, c), nodule[None], atol=1e-6)
    z, y, x = np.rint(c[0]).astype(int)
    assert pre.image[z, y, x] == pytest.approx(float(normalize_hu(np.float32(100.0))), abs=0.02)
    assert pre.image[z, y, x + 14] < 0.25  # 14 mm away, beyond the blur of 4 mm voxels: lung (-850 HU -> 0.19)
    assert pre.mask[z, y, x]
    # the lungs' extremes plus the margin fit in the crop
    c0 = np.array(OBLIQUE["center_lps"])
    extremes = c0 + np.array([[-95.0, 0, 0], [95.0, 0, 0], [-55.0, -55.0, 0], [55.0, 55.0, 0]])
    idx = pre.from_world(extremes)
    assert np.all(idx >= 0) and np.all(idx <= np.asarray(pre.image.shape) - 1)


def test_supplied_luna16_label_mask_in_its_own_grid(chest_phantom, lung_oracle):
    vol = chest_phantom(**OBLIQUE)
    # LUNA16 seg-lungs labels on a different, axis-aligned 5 mm grid: 3 / 4 lungs, 5 trachea.
    c = np.array(OBLIQUE["center_lps"])
    labels = Volume(np.zeros((40, 40, 50), np.uint8), (5.0, 5.0, 5.0), c - [125.0, 100.0, 100.0], np.eye(3))
    world = _voxel_world(labels) - c
    lungs = lung_oracle(world + c, c)
    labels.array[lungs & (world[..., 0] < 0)] = 3
    labels.array[lungs & (world[..., 0] > 0)] = 4
    trachea = (np.abs(world[..., 0]) < 8) & (np.abs(world[..., 1]) < 8) & (world[..., 2] > 30)
    labels.array[trachea] = 5
    pre = preprocess(vol, lung_mask=labels, spacing=2.0)
    crop_world = _voxel_world(Volume(pre.image, *[getattr(pre.crop_geometry, k) for k in
                                                  ("spacing", "origin", "direction")]))
    assert _dice(pre.mask, lung_oracle(crop_world, c)) > 0.9
    trachea_point = pre.from_world((c + [0.0, 0.0, 60.0])[None])[0]
    assert not pre.mask[tuple(np.rint(trachea_point).astype(int))]
    assert pre.lung_volume_ml == pytest.approx(1290.0, rel=0.1)


def test_supplied_bool_mask_gives_same_crop_as_computed(chest_phantom):
    vol = chest_phantom()
    auto = preprocess(vol, spacing=2.0)
    given = preprocess(vol, lung_mask=lung_mask(vol), spacing=2.0)
    assert np.all(np.abs(auto.crop_origin_index - given.crop_origin_index) <= 2)
    assert _dice(auto.mask, given.mask[: auto.mask.shape[0], : auto.mask.shape[1], : auto.mask.shape[2]]) > 0.8
    with pytest.raises(ValueError, match="shape"):
        preprocess(vol, lung_mask=np.ones((3, 3, 3), bool))


def test_far_from_lungs_is_padded_with_tissue_value(chest_phantom):
    vol = chest_phantom()
    padded = preprocess(vol, spacing=2.0, margin_mm=30.0)
    kept = preprocess(vol, spacing=2.0, margin_mm=30.0, pad_outside_mm=None)
    pad = float(normalize_hu(np.float32(PAD_HU)))
    assert pad == pytest.approx(170.0 / 255.0, abs=1e-6)
    # the crop corner lies > 10 mm from the lungs: padded there, the real (air/body) value without padding
    assert padded.image[0, 0, 0] == pytest.approx(pad)
    assert kept.image[0, 0, 0] != pytest.approx(pad, abs=0.05)
    # inside the lungs nothing changes
    np.testing.assert_array_equal(padded.image[padded.mask], kept.image[kept.mask])


def test_normalize_hu():
    out = normalize_hu(np.array([-2000.0, -1200.0, 0.0, 600.0, 3000.0]))
    np.testing.assert_allclose(out, [0.0, 0.0, 2.0 / 3.0, 1.0, 1.0], atol=1e-6)
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="low < high"):
        normalize_hu(np.zeros(2), (600.0, -1200.0))


def test_one_preprocessing_description_round_trips_through_the_card_and_is_applied(chest_phantom):
    """The card's ``preprocessing`` is read back (crop, spacing, margin, HU window, padding) and is
    what the Detector applies: a card asking for a 2 mm grid gets a 2 mm crop."""
    from LesionDetectorLib.preprocess import Preprocessing

    spec = Preprocessing(spacing_mm=2.0, margin_mm=4.0, hu_window=(-1000.0, 400.0), pad_outside_mm=6.0)
    back = Preprocessing.from_card({"preprocessing": spec.to_card()})
    assert back == spec
    assert Preprocessing.from_card({}) == Preprocessing()
    assert Preprocessing.from_card({"preprocessing": {"crop": "body"}}) == Preprocessing.body()
    vol = chest_phantom(shape_zyx=(40, 96, 128), spacing=(2.0, 2.0, 2.5))
    pre = spec.apply(vol)
    assert pre.spacing == 2.0 and pre.hu_window == (-1000.0, 400.0)
    with pytest.raises(ValueError, match="crop"):
        Preprocessing(crop="brain")
    with pytest.raises(ValueError, match="hu_window"):
        Preprocessing(hu_window=(100.0, -100.0))
