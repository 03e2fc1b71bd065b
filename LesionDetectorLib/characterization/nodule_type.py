"""Nodule type, calcification and position flags from the HU values inside a nodule mask.

Computed from attenuation and geometry, not learned:

* **type**: ``solid`` when the nodule's outer layer (the level its boundary threshold was
  taken from, see :mod:`.segmentation`) is denser than :data:`SOLID_HU` (-300 HU: soft tissue,
  which hides the vessels it covers; ground glass lies at about -750..-300 HU), or when the
  solid component fills :data:`SOLID_FRACTION` of it. The outer layer decides because a small
  solid nodule blurred by the slice profile has few voxels above -300 HU but no ground-glass
  rim. Otherwise the *solid component* (the part above -300 HU, opened by a ~1 mm ball so
  that vessels crossing a ground-glass nodule do not count, largest piece kept) makes it
  ``part-solid`` from :data:`GGO_FRACTION` of the volume on, else ``ground-glass``.
* **calcification** (benign pattern, as far as HU can tell): voxels above
  :data:`CALCIUM_HU` (200 HU). ``diffuse`` when they fill half the nodule, ``central`` when
  they form at least 5 % of it and their centroid sits within a fifth of the mean diameter of
  the nodule's centroid, ``popcorn`` when they form at least 10 % in three or more clumps; a
  calcification that fits none of those is ``eccentric`` and *not* benign. Laminated (ring)
  calcification and fat cannot be told from a histogram and are not reported.
* **juxta_pleural**: the mask touches soft tissue on the far side of the pleural cut (chest
  wall, mediastinum or diaphragm) over at least :data:`PLEURAL_CONTACT_MM2`.
* **perifissural**: a thin bright sheet (a fissure: Hessian at 0.7 mm with one strong and two
  weak curvatures, voxels spread in two directions, not along one like a vessel's edges)
  lies within 1..4 mm of the nodule's border. A suggestion for the reader: it also fires on
  airway walls and vessel forks (3 of 21 synthetic nodules, in scans without fissures), so
  :func:`LesionDetectorLib.characterization.characterize` does not let it lower the category.
* **benign_shape**: solidity (volume / convex-hull volume) >= 0.85: smooth oval, lentiform or
  triangular shapes, not lobulated or spiculated (Lung-RADS' perifissural / juxtapleural rule).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from .measurements import axial_diameters, solidity
from .segmentation import LUNG_AIR_HU, NoduleSegmentation, _dilate, opening

TYPES = ("solid", "part-solid", "ground-glass")
SOLID_HU = -300.0
CALCIUM_HU = 200.0
SOLID_FRACTION = 0.5
GGO_FRACTION = 0.03
PLEURAL_CONTACT_MM2 = 2.0
BENIGN_SOLIDITY = 0.85
BENIGN_CALCIFICATION = ("diffuse", "central", "popcorn")
FISSURE_SIGMA_MM = 0.7


@dataclass
class NoduleType:
    type: str
    solid_mask: np.ndarray
    solid_fraction: float
    calcification_pattern: Optional[str]
    juxta_pleural: bool
    perifissural: bool
    benign_shape: bool

    @property
    def calcified(self) -> bool:
        return self.calcification_pattern in BENIGN_CALCIFICATION


def solid_component(seg: NoduleSegmentation) -> np.ndarray:
    """The solid part of the mask (see module docstring): bool, same grid as ``seg.mask``."""
    s = seg.spacing_mm
    raw = seg.mask & (seg.hu > SOLID_HU)
    if not raw.any():
        return raw
    opened = opening(raw, max(1.0, s), s)
    labels, n = ndimage.label(opened, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return opened
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def calcification_pattern(seg: NoduleSegmentation) -> Optional[str]:
    dense = seg.mask & (seg.hu > CALCIUM_HU)
    total = int(seg.mask.sum())
    if total == 0 or dense.sum() < 3:
        return None
    fraction = dense.sum() / total
    if fraction >= 0.5:
        return "diffuse"
    diam = axial_diameters(seg.mask, seg.spacing_mm)
    offset = np.linalg.norm(np.argwhere(dense).mean(0) - np.argwhere(seg.mask).mean(0)) * seg.spacing_mm
    if fraction >= 0.05 and diam is not None and offset <= 0.2 * diam.mean_diameter_mm:
        return "central"
    _, clumps = ndimage.label(dense, structure=np.ones((3, 3, 3), bool))
    if fraction >= 0.10 and clumps >= 3:
        return "popcorn"
    return "eccentric"


def pleural_contact_mm2(seg: NoduleSegmentation) -> float:
    """Area (mm^2) where the mask borders soft tissue outside the lung side of the pleura."""
    s = seg.spacing_mm
    ring = _dilate(seg.mask, 1.01 * s, s) & ~seg.mask
    contact = ring & ~seg.lung & (seg.hu > LUNG_AIR_HU)
    return float(contact.sum()) * s * s


def _hessian_eigenvalues(hu: np.ndarray, sigma_vox: float, where: np.ndarray) -> np.ndarray:
    """Scale-normalised Hessian eigenvalues (ascending) at the voxels ``where`` ``[N, 3]``."""
    img = hu.astype(np.float32)
    h = np.empty((int(where.sum()), 3, 3), np.float32)
    for a in range(3):
        for b in range(a, 3):
            order = [0, 0, 0]
            order[a] += 1
            order[b] += 1
            d = ndimage.gaussian_filter(img, sigma_vox, order=order)[where] * sigma_vox ** 2
            h[:, a, b] = d
            h[:, b, a] = d
    return np.linalg.eigvalsh(h)


def is_perifissural(seg: NoduleSegmentation) -> bool:
    s = seg.spacing_mm
    dist = ndimage.distance_transform_edt(~seg.mask, sampling=s)
    shell = (dist > 1.0) & (dist <= 4.0) & seg.lung & (seg.hu > -800.0)
    if shell.sum() < 10:
        return False
    ev = _hessian_eigenvalues(seg.hu, FISSURE_SIGMA_MM / s, shell)
    # A bright plate: one strongly negative curvature across it, two weak ones along it.
    plate = (ev[:, 0] < -40.0) & (np.abs(ev[:, 1]) < 0.35 * np.abs(ev[:, 0])) & (np.abs(ev[:, 2]) < 0.35 * np.abs(ev[:, 0]))
    pts = np.argwhere(shell)[plate].astype(np.float64)
    if len(pts) * s * s < 6.0:       # area of about 6 mm^2 at one voxel of thickness
        return False
    # A fissure is a sheet: its voxels spread in two directions and are thin in the third. The
    # edges of a vessel also look plate-like to the Hessian, but they line up along one axis.
    spread = np.sqrt(np.maximum(np.linalg.eigvalsh(np.cov((pts * s).T)), 0.0))[::-1]
    return bool(spread[1] >= 0.4 * spread[0] and spread[2] <= 0.35 * spread[1] and spread[1] >= 1.5)


def classify(seg: NoduleSegmentation) -> NoduleType:
    """Type, calcification and flags of a non-empty segmentation."""
    if seg.empty:
        raise ValueError("cannot type an empty segmentation")
    solid = solid_component(seg)
    fraction = float(solid.sum()) / float(seg.mask.sum())
    if seg.edge_level_hu > SOLID_HU or fraction >= SOLID_FRACTION:
        kind = "solid"
    elif fraction < GGO_FRACTION or not solid.any():
        kind = "ground-glass"
    else:
        kind = "part-solid"
    return NoduleType(kind, solid, fraction, calcification_pattern(seg),
                      pleural_contact_mm2(seg) >= PLEURAL_CONTACT_MM2, is_perifissural(seg),
                      solidity(seg.mask) >= BENIGN_SOLIDITY)
