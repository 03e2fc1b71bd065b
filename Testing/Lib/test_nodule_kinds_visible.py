"""Recall starts in preprocessing: every kind of nodule the generator makes (solid, part-solid,
ground-glass, calcified; isolated, juxta-vascular, juxta-pleural; under and over 6 mm) stays in
the network's crop and unpadded when the lung mask is *computed* (the path of real scans), so
the detector can see it. A 24 mm mass centred on the pleura stays visible whole: the lung's
per-slice hull closes over the dent it makes (the 10 mm closing alone padded its centre away)."""
import collections

import numpy as np
import pytest

from LesionDetectorLib.data.synthetic import generate_scan
from LesionDetectorLib.preprocess import PAD_HU, normalize_hu, preprocess
from LesionDetectorLib.volume import Volume

PAD = float(normalize_hu(np.float32(PAD_HU)))


def _visible(pre, centre_lps, radius_mm):
    """Fraction of the nodule's central sphere (radius/2) that is inside the crop and unpadded."""
    c = pre.from_world(np.asarray([centre_lps]))[0]
    r = max(radius_mm / 2, 1.0)
    lo = np.floor(c - r).astype(int)
    hi = np.ceil(c + r).astype(int) + 1
    zz, yy, xx = np.mgrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    pts = np.stack([zz, yy, xx], -1).reshape(-1, 3)
    pts = pts[np.linalg.norm(pts - c, axis=1) <= r]
    inside = np.all((pts >= 0) & (pts < np.asarray(pre.image.shape)), axis=1)
    ok = np.zeros(len(pts), dtype=bool)
    p = pts[inside]
    ok[inside] = pre.image[p[:, 0], p[:, 1], p[:, 2]] != np.float32(PAD)
    return ok.mean() if len(ok) else 0.0


@pytest.mark.parametrize("seed", [3, 5, 11])
def test_every_kind_of_generated_nodule_is_visible_with_a_computed_mask(seed):
    kinds = collections.Counter()
    for index in range(3):
        scan = generate_scan(seed, index, size="small")
        if not scan.nodules:
            continue
        pre = preprocess(scan.to_volume())            # computed lung mask, as for a real scan
        for n in scan.nodules:
            kinds[(n.category, n.placement)] += 1
            assert _visible(pre, n.center_lps, n.diameter_mm / 2) == 1.0, (n.category, n.placement, n.diameter_mm)
    assert sum(kinds.values()) > 0


def test_a_juxta_pleural_mass_on_the_chest_wall_stays_visible(chest_phantom):
    vol = chest_phantom(shape_zyx=(60, 120, 160), spacing=(2.0, 2.0, 2.0))
    hu = vol.array.copy()
    # find the lateral lung wall on the central row of the right lung: the last lung voxel
    z, y = hu.shape[0] // 2, hu.shape[1] // 2
    from LesionDetectorLib.preprocess import lung_mask

    lung_x = np.flatnonzero(lung_mask(vol)[z, y])
    x_wall = int(lung_x.min())                          # the lateral pleura of the lung nearest x = 0
    # a 24 mm solid mass centred on the pleural surface, half in the wall
    zz, yy, xx = np.mgrid[:hu.shape[0], :hu.shape[1], :hu.shape[2]]
    r_vox = 6.0
    ball = (zz - z) ** 2 + (yy - y) ** 2 + (xx - x_wall) ** 2 <= r_vox ** 2
    hu[ball] = 40.0
    mass = Volume(hu, vol.spacing, vol.origin, vol.direction)
    pre = preprocess(mass)
    from LesionDetectorLib.coordinates import index_to_world

    centre = index_to_world(mass, np.array([[z, y, x_wall]], dtype=np.float64))[0]
    # The lung's hull closes over the dent the mass makes, so its centre and all of it are shown
    # (with the 10 mm closing alone its centre lay 12 mm from the lung and was padded away).
    assert _visible(pre, centre, 2.0) == 1.0
    assert _visible(pre, centre, 24.0) > 0.99
    from LesionDetectorLib.preprocess import preprocess as _pre

    import LesionDetectorLib.preprocess as P
    closing_only = _pre(Volume(hu, vol.spacing, vol.origin, vol.direction),
                        lung_mask=P.lung_mask_coarse(mass, pleural_hull=False))
    assert _visible(closing_only, centre, 2.0) == 0.0
