"""The confusers of real chest CT in the synthetic generator (data/confusers.py): each kind is
drawn where and as bright as it should be, a nodule is still the same nodule with them, the
draw is deterministic, and ``confusers=False`` / ``synth --no-confusers`` give the scans of the
generator before them bit for bit."""
import hashlib

import numpy as np
import pytest

import LesionDetectorLib.data.confusers as confusers
from LesionDetectorLib.cli.main import main as cli_main
from LesionDetectorLib.data import anatomy
from LesionDetectorLib.data.synthetic import generate_scan

# sha256 of hu, lung labels, geometry and the nodule list of generate_scan(seed, index, "small"),
# computed with the generator of commit 7e68eae (before the confusers): the data sets made then
# (e.g. the bundled model's) can be made again.
PREVIOUS = {
    (5, 1): "7f86352d91ad64a60fbee171ffb7894d4452466a29463e21bd37f8bd60ae75ba",
    (11, 0): "4f872d4cd51d88910408af5dc088f01e59becbdec5358b847ab973358866e087",
}


def _digest(scan) -> str:
    h = hashlib.sha256()
    for arr in (scan.hu, scan.lung_labels, scan.spacing, scan.origin, scan.direction):
        h.update(np.ascontiguousarray(arr).tobytes())
    for n in scan.nodules:
        h.update(repr((n.center_lps.tolist(), n.diameter_mm, n.readers, n.category, n.placement)).encode())
    return h.hexdigest()


@pytest.mark.parametrize("seed,index", sorted(PREVIOUS))
def test_off_switch_gives_the_generator_before_the_confusers(seed, index):
    assert _digest(generate_scan(seed, index, "small", confusers=False)) == PREVIOUS[(seed, index)]


@pytest.fixture(scope="module")
def pair():
    """Scan (11, 2) (two juxta-pleural nodules beside ribs, a granuloma) with plaques and pleural thickening
    forced, and the same scan without confusers."""
    mp = pytest.MonkeyPatch()
    mp.setattr(confusers, "PLAQUE_PATIENTS", 1.0)
    mp.setattr(confusers, "THICKENING_PATIENTS", 1.0)
    try:
        on = generate_scan(11, 2, "small")
        again = generate_scan(11, 2, "small")
    finally:
        mp.undo()
    off = generate_scan(11, 2, "small", confusers=False)
    return on, again, off


def _at(arr, zyx):
    k = np.round(np.asarray(zyx)).astype(int)
    k = np.clip(k, 0, np.array(arr.shape) - 1)
    return arr[tuple(k)]


def test_deterministic_and_the_nodules_are_unchanged(pair):
    on, again, off = pair
    np.testing.assert_array_equal(on.hu, again.hu)
    assert on.series_uid == off.series_uid
    np.testing.assert_array_equal(on.lung_labels, off.lung_labels)
    assert not np.array_equal(on.hu, off.hu)
    info = on.info["confusers"]
    n_gen = info["generator_nodules"]
    assert n_gen == len(off.nodules) and len(on.nodules) == n_gen + info["granulomas"]
    for a, b in zip(on.nodules[:n_gen], off.nodules):
        np.testing.assert_array_equal(a.center_lps, b.center_lps)
        assert (a.diameter_mm, a.readers, a.category, a.luna16_positive) == \
            (b.diameter_mm, b.readers, b.category, b.luna16_positive)
        assert a.placement == b.placement or (a.placement, b.placement) == ("perifissural", "isolated")
        # the nodule's own voxels are exactly what they were (confusers may only touch it)
        sp = on.spacing[::-1]
        r = a.diameter_mm / 4
        lo = np.maximum(np.floor(a.center_zyx - r / sp).astype(int), 0)
        hi = np.ceil(a.center_zyx + r / sp).astype(int) + 1
        zz, yy, xx = np.mgrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        d2 = ((zz - a.center_zyx[0]) * sp[0]) ** 2 + ((yy - a.center_zyx[1]) * sp[1]) ** 2 \
            + ((xx - a.center_zyx[2]) * sp[2]) ** 2
        core = (d2 <= r * r) | (d2 == d2.min())          # the nodule's core, at least its central voxel
        np.testing.assert_array_equal(on.hu[zz[core], yy[core], xx[core]], off.hu[zz[core], yy[core], xx[core]])


def test_calcified_granulomas_are_nodules_listed_by_the_luna16_rule(pair):
    on, _, _ = pair
    extra = on.nodules[on.info["confusers"]["generator_nodules"]:]
    assert len(extra) >= 1
    for g in extra:
        assert g.category == "calcified" and g.lidc_shape_index == -1 and 1.5 <= g.diameter_mm <= 6.0
        assert g.luna16_positive == (g.readers >= 3 and g.diameter_mm >= 3.0)
        assert any(a is g for a in on.annotations) == g.luna16_positive
        assert any(e is g for e in on.excluded) != g.luna16_positive
        if g.diameter_mm >= 3.0:                      # dense even through 2 mm voxels and the blur
            assert _at(on.hu, g.center_zyx) > 150


def test_end_on_vessels_are_round_in_the_slice_and_run_along_z(pair):
    on, _, off = pair
    diff = on.hu.astype(np.float32) - off.hu.astype(np.float32)
    sp = on.spacing[::-1]
    items = [it for it in on.info["confusers"]["items"] if it["kind"] == "end-on vessel"]
    assert len(items) >= 20
    for it in items:                                  # within ~25 deg of the cranio-caudal axis
        assert abs(it["direction"][0]) > np.cos(np.radians(26))
        assert 0.5 <= it["radius"] <= 3.0
    thick = [it for it in items if it["radius"] >= 1.0]
    assert len(thick) >= 5
    centre = np.median([_at(diff, it["center_zyx"]) for it in thick])
    along_z = np.median([_at(diff, it["center_zyx"] + np.array([3.0 / sp[0] * np.sign(it["direction"][0]), 0, 0]))
                         for it in thick])
    beside = np.median([max(_at(diff, it["center_zyx"] + np.array([0, (it["radius"] + 6) / sp[1], 0])),
                            _at(diff, it["center_zyx"] + np.array([0, 0, (it["radius"] + 6) / sp[2]])))
                        for it in thick])
    assert centre > 150                               # a bright disc on the lung's -850
    assert along_z > 0.4 * centre                     # ... that continues through the next slices
    assert beside < 40                                # ... and is small in the slice
    forks = [it for it in on.info["confusers"]["items"] if it["kind"] == "fork"]
    assert len(forks) >= 10 and all(1.0 <= it["radius"] <= 3.0 * 1.35 for it in forks)


def test_ribs_lie_outside_the_lung_beside_juxta_pleural_nodules(pair):
    on, _, _ = pair
    ribs = [it for it in on.info["confusers"]["items"] if it["kind"] == "rib"]
    assert ribs, "scan (11, 2) has juxta-pleural nodules beside ribs"
    sp = on.spacing[::-1]
    for rib in ribs:
        nod = on.nodules[rib["nodule"]]
        assert nod.placement == "juxta-pleural"
        assert _at(on.lung_labels, rib["center_zyx"]) == 0
        c = np.round(rib["center_zyx"]).astype(int)
        r = np.ceil(rib["radius"] / sp).astype(int)
        disc = on.hu[c[0], c[1] - r[1]:c[1] + r[1] + 1, c[2] - r[2]:c[2] + r[2] + 1]
        assert _at(on.hu, c) > 100 and disc.max() > 350                # marrow inside a cortex
        gap = np.linalg.norm((rib["center_zyx"] - nod.center_zyx) * sp) - rib["radius"] - nod.diameter_mm / 2
        assert -0.5 < gap < 12.0                                        # touching or nearly so


def test_pleural_plaques_and_thickening_sit_on_the_chest_wall(pair):
    on, _, off = pair
    sp = on.spacing[::-1]
    items = [it for it in on.info["confusers"]["items"] if it["kind"] in ("plaque", "thickening")]
    assert {it["kind"] for it in items} == {"plaque", "thickening"}
    was = []
    for it in items:
        assert 1.0 <= it["thickness"] <= 8.0
        inside = it["center_zyx"] + it["inward"] * (0.5 * it["thickness"]) / sp
        deeper = it["center_zyx"] + it["inward"] * (it["thickness"] + 8.0) / sp
        assert _at(on.lung_labels, deeper) > 0                         # on the lung's outer surface
        if it["thickness"] < 2.5 * sp.max():
            continue                                  # thinner than the 2 mm voxels: not resolved
        assert _at(on.hu, inside) > -300                                # tissue ...
        was.append(_at(off.hu, inside))
    assert was and np.median(was) < -500                                # ... where lung was


def test_thick_airway_walls_brighten_only_the_rims(monkeypatch):
    from scipy.ndimage import binary_dilation

    scans = {}
    for share in (0.0, 1.0):
        monkeypatch.setattr(confusers, "WALL_THICKENING_PATIENTS", share)
        scans[share] = generate_scan(11, 0, "small")
    thin, thick = scans[0.0], scans[1.0]
    assert thin.info["confusers"]["wall_thickening"] == 1.0 and thick.info["confusers"]["wall_thickening"] >= 1.4
    d = thick.hu.astype(np.int32) - thin.hu.astype(np.int32)
    assert d.min() >= -2                              # a thicker wall only adds tissue
    brighter = d > 30
    assert brighter.sum() > 50
    # the rims grow round the airways' lumens and walls, never in open parenchyma, and stay soft tissue
    airway = binary_dilation((thin.hu < -950) | (thin.hu > -600), iterations=2)
    assert (brighter & airway).sum() >= 0.95 * brighter.sum()
    assert np.median(thick.hu[brighter]) < 100


def test_fissure_sheet_is_thin_keeps_its_mass_and_carries_perifissural_nodules():
    """The sheet of :func:`confusers._sheet` on a uniform lung: the pleura's mass (thickness x
    contrast) whatever the slope, a peak far below solid tissue; and :func:`confusers.fissures`
    moves the oblique fissure through a small solid nodule it can reach, making it perifissural."""
    sp = np.array([0.7, 0.7, 0.7])
    lung = np.full((80, 60, 60), -850.0, np.float32)
    region = np.ones(lung.shape, np.uint8)
    yy = np.arange(60)[:, None] * sp[1] + np.zeros((1, 60))
    zf = 10.0 + 1.2 * yy                                  # an oblique sheet, 50 deg from the axial plane
    confusers._sheet(lung, region, 1, sp, zf, np.ones(zf.shape, bool), 0, 0, 0.3, confusers.FISSURE_TISSUE_HU)
    raised = lung + 850.0
    col = raised[:, 30, 30]
    mass = col.sum() * sp[0] / np.sqrt(1 + 1.2 ** 2)      # along the sheet's normal
    assert mass == pytest.approx(0.3 * (confusers.FISSURE_TISSUE_HU + 850.0), rel=0.1)
    assert 100 < col.max() < 0.6 * 880.0
    assert np.count_nonzero(col > 1.0) * sp[0] <= 4.0     # a few voxels, not a slab

    rng = np.random.default_rng(0)
    shape = (120, 110, 110)
    sp = np.array([2.5, 2.0, 2.0])
    thorax = anatomy.sample_thorax(rng, np.array(shape) * sp)
    regions = np.zeros(shape, np.uint8)
    regions[10:110, 15:95, 10:50] = 1
    regions[10:110, 15:95, 60:100] = 2
    hits = 0
    for seed in range(12):
        site = confusers.NoduleSite(np.array([120.0, 110.0, 60.0]), 3.0, 6.0, "solid", "isolated", 1)
        hu = np.full(shape, -850.0, np.float32)
        info = confusers.fissures(np.random.default_rng(seed), hu, regions, sp, thorax, [site])
        assert info["sheets"] == 3                        # two oblique fissures, one horizontal
        if site.placement == "perifissural":
            hits += 1
            column = hu[:, 55, 30] + 850.0                # the nodule's column: the sheet crosses it there
            assert column[47:50].max() > 5.0
    assert 2 <= hits <= 10                                # about half the time


def test_synth_no_confusers_flag(tmp_path):
    import SimpleITK as sitk

    for flag, confusers_on in (([], True), (["--no-confusers"], False)):
        out = tmp_path / ("on" if confusers_on else "off")
        assert cli_main(["synth", "--n", "1", "--out", str(out), "--seed", "11", "--size", "small",
                         "--subsets", "1", "--no-lung-masks", *flag]) == 0
        scan = generate_scan(11, 0, "small", confusers=confusers_on)
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "subset0" / f"{scan.series_uid}.mhd")))
        np.testing.assert_array_equal(written, scan.hu)
