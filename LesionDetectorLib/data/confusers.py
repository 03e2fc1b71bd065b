"""The look-alikes of real chest CT that a nodule detector must learn to reject.

Drawn by :func:`.synthetic.generate_scan` (``confusers=True``) after the nodules, from a random
stream of their own (``(seed, index, CONFUSER_STREAM)``), so the nodules, their lists and every
draw of the rest of the scan stay what they are with ``confusers=False``:

* **end-on vessels and branch points**: side branches of the arterial / venous trees that run
  within 25 degrees of the cranio-caudal axis, so an axial slice cuts them as bright discs of
  nodule size (vessels are the main false positives of nodule CAD, e.g. in the LUNA16 report,
  Setio et al., Med Image Anal 2017, and of this project's detector, issue 13), and bulges at
  tree bifurcations, where a vessel cut at its fork looks nodular;
* **interlobar fissures**: the two oblique (major) fissures and the right horizontal (minor)
  fissure, sheets of two layers of visceral pleura (~0.2-0.4 mm of soft tissue in all;
  Webb, Müller & Naidich, *High-Resolution CT of the Lung*), often incomplete (Raasch
  et al., AJR 1982;138:1043); the oblique fissure runs from about T4-T5 posteriorly to the
  anterior diaphragm. When a small solid isolated nodule lies within reach, the fissure is
  moved to pass through it and the nodule becomes ``perifissural`` (Ahn et al., Radiology
  2010;254:949: perifissural nodules are common, solid, mostly < 10 mm);
* **bronchial wall thickening** (smokers, bronchitis): thicker bright rims round the airways
  (drawn with the airway tree in :mod:`.synthetic`; the factor is drawn here);
* **pleural plaques and pleural thickening**: flat plateaus on the parietal pleura of the
  posterolateral mid / lower chest wall, 1-10 mm thick, often calcified (Peacock, Copley &
  Hansell, Clin Radiol 2000;55:422);
* **ribs next to juxta-pleural nodules**: the rib of the coarse rib cage nearest a
  juxta-pleural nodule, redrawn at full resolution right outside the pleura (cortex and
  marrow), so bone lies beside the nodule as on a real chest wall.

Calcified granulomas are *nodules*, not confusers: LUNA16 keeps calcified nodules (its
reference standard is every nodule >= 3 mm accepted by >= 3 of 4 readers, whatever its
calcification; Setio et al. 2017), so the generator draws them as ``calcified``
nodules that follow the same list rule (:data:`GRANULOMAS_PER_SCAN`).

Frequencies without a cited source are design choices, stated as such beside the number.
No confuser is drawn into a nodule: each rendered nodule's footprint, grown by one voxel, is
restored after the confusers (:class:`NoduleGuard`), so a nodule still looks as it did.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import trees

CONFUSER_STREAM = 0xC0F5

# Calcified granulomas (healed histoplasmosis / tuberculosis): small, dense, mostly 2-6 mm.
# Rate per scan: a design choice (LIDC gives none for unmarked ones); the LIDC library's own
# calcified nodules already come at LIDC's rate, these add the small ones.
GRANULOMAS_PER_SCAN = 0.4
GRANULOMA_DIAMETER_MM = (1.5, 6.0)

# End-on side branches per scan and fork bulges per scan (design choices: a real lung has
# hundreds of vessels crossing each axial slice; these add a few dozen of nodule calibre).
END_ON_BRANCHES = 40
FORK_BULGES = 30

# Soft tissue of the visceral pleura; two layers of ~0.1-0.2 mm each (Webb et al.).
FISSURE_TISSUE_HU = 30.0
FISSURE_THICKNESS_MM = (0.2, 0.45)

# Patients with plaques / diffuse thickening (design choices; plaques are typical of asbestos
# exposure, found in a few percent of screening CTs) and their shape (Peacock et al. 2000).
PLAQUE_PATIENTS = 0.12
THICKENING_PATIENTS = 0.15

# Airway wall thickening: share of patients and the factor on the wall thickness (design choice;
# the LIDC / NLST populations are mostly current or former smokers).
WALL_THICKENING_PATIENTS = 0.35
WALL_THICKENING_FACTOR = (1.4, 2.0)

# Rib cross-section: ~10 mm tall, 6-8 mm deep; cortex ~1 mm (Gray's Anatomy); HU of cortex
# partial-volumed on 0.6-0.9 mm voxels, of cancellous marrow 150-300.
RIB_RADIUS_MM = (3.5, 4.8)


@dataclass
class NoduleSite:
    """What the confusers need of a rendered nodule (canonical mm)."""

    center: np.ndarray
    radius: float
    diameter: float
    category: str
    placement: str
    lung: int                 # 1 right, 2 left, 0 unknown


class NoduleGuard:
    """Snapshot of every nodule's rendered voxels (grown by one voxel, diagonals included), restored after the
    confusers: a confuser may touch a nodule (a rib beside it, a fissure ending on it) but
    never changes what the nodule itself looks like."""

    def __init__(self):
        self._blocks: List[Tuple[Tuple[slice, ...], np.ndarray, np.ndarray]] = []

    def add(self, hu: np.ndarray, lo: np.ndarray, hi: np.ndarray, frac: np.ndarray, core: np.ndarray) -> None:
        """``frac``: the nodule's coverage of the block ``hu[lo:hi]``; ``core``: voxels guarded even
        where it is 0 (a micro-nodule finer than the voxels covers none)."""
        from scipy.ndimage import binary_dilation

        # 26-neighbours: the scanner's 3-tap blur then leaves the nodule's voxels bit for bit as they were.
        mask = binary_dilation((frac > 0.0) | core, structure=np.ones((3, 3, 3), bool))
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        self._blocks.append((sl, mask, hu[sl][mask].copy()))

    def refresh(self, hu: np.ndarray) -> None:
        """Re-read the guarded voxels once every nodule is drawn (a later one may reach an earlier rim)."""
        self._blocks = [(sl, m, hu[sl][m].copy()) for sl, m, _ in self._blocks]

    def restore(self, hu: np.ndarray) -> None:
        for sl, mask, values in self._blocks:
            block = hu[sl]
            block[mask] = values


def wall_thickening(rng: np.random.Generator) -> float:
    """Factor on the airway wall thickness of this patient (1 for most). Both draws are always
    made, so the rest of the confusers do not depend on this patient's airways."""
    thick, factor = rng.random() < WALL_THICKENING_PATIENTS, float(rng.uniform(*WALL_THICKENING_FACTOR))
    return factor if thick else 1.0


# ----------------------------------------------------------------------------- vessels

def vessel_branches(rng: np.random.Generator, vessels: Sequence[trees.Segment], lung: np.ndarray,
                    sp: np.ndarray) -> Tuple[List[trees.Segment], List[trees.Segment]]:
    """(end-on side branches, fork bulges) off the tree ``vessels`` (canonical mm)."""
    radii = np.array([max(s[2], s[3]) for s in vessels]) if len(vessels) else np.zeros(0)
    parents = np.nonzero((radii >= 1.2) & (radii <= 3.2))[0]
    branches: List[trees.Segment] = []
    if len(parents):
        for k in rng.choice(parents, size=min(END_ON_BRANCHES, len(parents)), replace=False):
            p0, p1, r0, r1 = vessels[int(k)]
            start = p0 + rng.uniform(0.3, 0.9) * (p1 - p0)
            lateral = rng.normal(0.0, 0.2, 2)                                   # ~11 deg off z on average,
            lateral *= min(1.0, np.tan(np.radians(25.0)) / max(np.linalg.norm(lateral), 1e-9))   # <= 25 deg
            d = np.array([rng.choice([-1.0, 1.0]), *lateral])
            d /= np.linalg.norm(d)
            r_start = max(0.8, rng.uniform(0.6, 0.9) * min(r0, r1))
            length = _run_length(lung, sp, start, d, rng.uniform(15.0, 40.0))
            if length < 6.0:
                continue
            mid = start + d * 0.5 * length
            d2 = d + rng.normal(0.0, 0.12, 3)                                   # gently curved
            end = mid + d2 / np.linalg.norm(d2) * 0.5 * length
            r_mid = 0.5 * (r_start + 0.5)
            branches += [(start, mid, r_start, r_mid), (mid, end, r_mid, 0.5)]
    # Forks: a segment end where two children start; the bulge is 1.1-1.35 x the parent calibre.
    starts: Dict[tuple, int] = {}
    for s in vessels:
        key = tuple(np.round(s[0], 4))
        starts[key] = starts.get(key, 0) + 1
    forks = [i for i, s in enumerate(vessels)
             if 1.0 <= s[3] <= 3.0 and starts.get(tuple(np.round(s[1], 4)), 0) >= 2]
    bulges: List[trees.Segment] = []
    if forks:
        for k in rng.choice(forks, size=min(FORK_BULGES, len(forks)), replace=False):
            p = np.asarray(vessels[int(k)][1])
            r = float(vessels[int(k)][3] * rng.uniform(1.1, 1.35))
            bulges.append((p, p, r, r))
    return branches, bulges


def _run_length(lung: np.ndarray, sp: np.ndarray, start: np.ndarray, d: np.ndarray, want: float) -> float:
    """How far (<= ``want`` mm) a branch can run from ``start`` along ``d`` and stay 3 mm inside the lung."""
    steps = np.arange(0.0, want + 3.0, 1.0)
    pts = start[None] + steps[:, None] * d[None]
    inside = _inside(lung, sp, pts)
    out = np.flatnonzero(~inside)
    reach = steps[out[0]] if len(out) else steps[-1]
    return float(min(want, reach - 3.0))


def _inside(mask: np.ndarray, sp: np.ndarray, pts: np.ndarray) -> np.ndarray:
    idx = np.round(pts / sp).astype(int)
    ok = np.all((idx >= 0) & (idx < np.array(mask.shape)), axis=-1)
    res = np.zeros(pts.shape[:-1], bool)
    res[ok] = mask[tuple(idx[ok].T)]
    return res


# ----------------------------------------------------------------------------- fissures

def _smooth_noise(rng: np.random.Generator, shape, scale_vox: float) -> np.ndarray:
    """2-D low-frequency noise in [-1, 1] (anatomy's 3-D one on a single slab)."""
    from .anatomy import _smooth_noise as smooth3

    return smooth3(rng, (1, *shape), scale_vox)[0]


def _sheet(hu: np.ndarray, regions: np.ndarray, label: int, sp: np.ndarray, zf: np.ndarray, present: np.ndarray,
           y0: int, x0: int, thickness: float, value: float) -> int:
    """Blend the height-field sheet ``z = zf[y, x]`` (mm) into ``hu`` where ``present`` and
    ``regions == label`` (columns ``y0 + i``, ``x0 + j``).

    The coverage of each voxel is the overlap of the sheet (``thickness`` mm along its normal)
    with a voxel of the mean spacing: the sheet keeps its mass whatever the voxel size, so it
    is a faint band on thick slices and a thin line on thin ones. Returns voxels touched."""
    v = float(sp.mean())
    gy, gx = np.gradient(zf, sp[1], sp[2])
    slope = np.sqrt(1.0 + gy ** 2 + gx ** 2)                       # z distance -> normal distance
    reach = 0.5 * (v + thickness)
    half = int(np.ceil(np.nanmax(np.where(present, reach * slope, 0.0)) / sp[0])) + 1
    ny, nx = zf.shape
    yy, xx = np.meshgrid(np.arange(y0, y0 + ny), np.arange(x0, x0 + nx), indexing="ij")
    k0 = np.round(np.where(present, zf, 0.0) / sp[0]).astype(np.int64)
    touched = 0
    for k in range(-half, half + 1):
        zi = k0 + k
        ok = present & (zi >= 0) & (zi < hu.shape[0])
        dist = np.abs(zi * sp[0] - zf) / slope
        # overlap of [d - v/2, d + v/2] with [-t/2, t/2], over v
        cover = (np.minimum(dist + 0.5 * v, 0.5 * thickness) - np.maximum(dist - 0.5 * v, -0.5 * thickness)) / v
        ok &= cover > 0
        z, y, x = zi[ok], yy[ok], xx[ok]
        inr = regions[z, y, x] == label
        z, y, x, c = z[inr], y[inr], x[inr], cover[ok][inr].astype(np.float32)
        old = hu[z, y, x]
        hu[z, y, x] = old + c * np.maximum(np.float32(value) - old, 0.0)
        touched += len(z)
    return touched


def fissures(rng: np.random.Generator, hu: np.ndarray, lung_regions: np.ndarray, sp: np.ndarray, thorax,
             nodules: List[NoduleSite]) -> Dict[str, object]:
    """Draw the oblique fissure of each lung and the right horizontal fissure into ``hu`` (canonical).

    Nodules that the oblique fissure is moved through get ``placement = "perifissural"``."""
    info: Dict[str, object] = {"sheets": 0, "voxels": 0, "perifissural": 0}
    step = 4                                  # bounding boxes on every 4th voxel: a 64th of the reads
    coarse = lung_regions[::step, ::step, ::step]
    for label in (1, 2):
        region = coarse == label
        zs = np.flatnonzero(region.any(axis=(1, 2))) * step
        if len(zs) < 2:
            continue
        ys = np.flatnonzero(region.any(axis=(0, 2))) * step
        xs = np.flatnonzero(region.any(axis=(0, 1))) * step
        y0, y1 = max(ys[0] - step, 0), min(ys[-1] + step + 1, lung_regions.shape[1])
        x0, x1 = max(xs[0] - step, 0), min(xs[-1] + step + 1, lung_regions.shape[2])
        z_top, z_bot = min(zs[-1] + step, lung_regions.shape[0] - 1) * sp[0], max(zs[0] - step, 0) * sp[0]
        y_ant, y_post = y0 * sp[1], (y1 - 1) * sp[1]
        height = z_top - z_bot
        # Oblique fissure: from ~T4-T5 behind (a third down from the apex) to the anterior base.
        z_post = z_top - height * rng.uniform(0.28, 0.4)
        z_ant = z_bot + height * rng.uniform(0.02, 0.12)
        Y = (np.arange(y0, y1) * sp[1])[:, None]
        X = (np.arange(x0, x1) * sp[2])[None, :]
        u = (Y - y_ant) / max(y_post - y_ant, 1.0)
        # On axial slices the fissure runs from posteromedial to anterolateral, 15-40 degrees off
        # the coronal plane: the sheet rises laterally as it rises posteriorly.
        lateral = np.abs(X - thorax.cx) - 0.5 * (np.abs(x0 * sp[2] - thorax.cx) + np.abs((x1 - 1) * sp[2] - thorax.cx))
        slope_y = (z_post - z_ant) / max(y_post - y_ant, 1.0)
        zf = z_ant + (z_post - z_ant) * u + rng.uniform(-12.0, 12.0) * u * (1 - u) \
            + slope_y * np.tan(np.radians(rng.uniform(15.0, 40.0))) * lateral
        wob = _smooth_noise(rng, zf.shape, 25.0 / sp[1])
        zf = zf + rng.uniform(2.0, 5.0) * wob
        # Perifissural: move the fissure (<= 25 mm) through a small solid isolated nodule of this lung.
        cands = [n for n in nodules if n.lung == label and n.placement == "isolated" and n.category == "solid"
                 and n.diameter <= 12.0]
        if cands and rng.random() < 0.5:
            n = cands[int(rng.integers(len(cands)))]
            iy = int(np.clip(round(n.center[1] / sp[1]) - y0, 0, zf.shape[0] - 1))
            ix = int(np.clip(round(n.center[2] / sp[2]) - x0, 0, zf.shape[1] - 1))
            shift = n.center[0] - zf[iy, ix]
            if abs(shift) <= 25.0:
                zf = zf + shift
                n.placement = "perifissural"
                info["perifissural"] += 1
        gaps = _smooth_noise(rng, zf.shape, 30.0 / sp[1]) > rng.uniform(0.3, 1.0)   # incomplete fissures
        t = rng.uniform(*FISSURE_THICKNESS_MM)
        info["voxels"] += _sheet(hu, lung_regions, label, sp, zf, ~gaps, y0, x0, t, FISSURE_TISSUE_HU)
        info["sheets"] += 1
        if label == 1:
            # Horizontal fissure: from the middle of the oblique fissure (about the hilum, the 4th
            # costal cartilage in front) forward to the anterior wall, only above the oblique
            # fissure (it bounds the middle lobe from above).
            zh = z_ant + (z_post - z_ant) * rng.uniform(0.45, 0.7) + rng.uniform(-0.1, 0.1) * (Y - y_ant) \
                + rng.uniform(1.0, 3.0) * _smooth_noise(rng, zf.shape, 25.0 / sp[1])
            present = (zh > zf) & (_smooth_noise(rng, zf.shape, 30.0 / sp[1]) < rng.uniform(0.0, 0.8))
            info["voxels"] += _sheet(hu, lung_regions, label, sp, zh, present, y0, x0,
                                     rng.uniform(*FISSURE_THICKNESS_MM), FISSURE_TISSUE_HU)
            info["sheets"] += 1
    return info


# ----------------------------------------------------------------------------- chest wall

def _wall_radius(lung: np.ndarray, sp: np.ndarray, thorax, z: float, theta: np.ndarray) -> np.ndarray:
    """Distance (mm) from the body axis to the outermost lung voxel along in-plane angles ``theta``
    (0 = posterior, as in :mod:`.anatomy`) at height ``z``; NaN where the ray meets no lung."""
    rho = np.arange(5.0, 1.2 * max(thorax.body_a, thorax.body_b), 1.0)
    y = thorax.cy - np.cos(theta)[:, None] * rho[None]
    x = thorax.cx + np.sin(theta)[:, None] * rho[None]
    pts = np.stack([np.full_like(y, z), y, x], axis=-1)
    inside = _inside(lung, sp, pts)
    last = np.where(inside.any(1), inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1), -1)
    return np.where(last >= 0, rho[np.maximum(last, 0)], np.nan)


def _wall_point(thorax, theta: float, rho: float, z: float) -> np.ndarray:
    return np.array([z, thorax.cy - np.cos(theta) * rho, thorax.cx + np.sin(theta) * rho])


def juxta_pleural_ribs(rng: np.random.Generator, lung: np.ndarray, sp: np.ndarray, thorax,
                       nodules: List[NoduleSite]) -> Tuple[List[trees.Segment], List[trees.Segment], List[dict]]:
    """(cortex, marrow, items) tubes of the coarse rib nearest each juxta-pleural nodule, where that
    rib passes beside it, redrawn just outside the pleura along the rib's own course."""
    t = thorax
    cortex: List[trees.Segment] = []
    marrow: List[trees.Segment] = []
    items: List[dict] = []
    for i, n in enumerate(nodules):
        if n.placement != "juxta-pleural":
            continue
        z, y, x = n.center
        theta = float(np.arctan2(x - t.cx, -(y - t.cy)))
        phi = np.pi - abs(theta)
        if phi <= 0.2:
            continue
        # The coarse rib bands (anatomy.thorax_hu): centre where mod(z - phase + drop*phi/pi, pitch) = 5.5.
        base = t.rib_phase - t.rib_drop * phi / np.pi + 5.5
        zc = base + np.round((z - base) / t.rib_pitch) * t.rib_pitch
        r = float(rng.uniform(*RIB_RADIUS_MM))
        if abs(zc - z) > n.radius + r + 3.0:
            continue                          # the nodule sits in an intercostal space
        rho_n = float(np.hypot(y - t.cy, x - t.cx))
        if abs(_wall_radius(lung, sp, t, z, np.array([theta]))[0] - rho_n) > n.radius + 5.0:
            continue                          # on the mediastinal or diaphragmatic pleura: no rib there
        half_arc = rng.uniform(20.0, 35.0) / max(rho_n, 30.0)
        thetas = theta + np.linspace(-half_arc, half_arc, 5)
        dz = -t.rib_drop / np.pi * ((np.pi - np.abs(thetas)) - phi)      # the rib descends towards the front
        walls = _wall_radius(lung, sp, t, zc, thetas)
        if np.isnan(walls).any():
            continue
        gap = rng.uniform(0.5, 1.5)           # extrapleural fat and innermost intercostal muscle
        pts = [_wall_point(t, th, w + gap + r, zc + d) for th, w, d in zip(thetas, walls, dz)]
        # Never through the nodule: push the rib out until it clears the nodule's sphere.
        for k, p in enumerate(pts):
            off = p - n.center
            dist = float(np.linalg.norm(off))
            if dist < n.radius + r + 0.5:
                radial = np.array([0.0, -np.cos(thetas[k]), np.sin(thetas[k])])
                pts[k] = p + radial * (n.radius + r + 0.5 - dist)
        for a, b in zip(pts[:-1], pts[1:]):
            cortex.append((a, b, r, r))
            marrow.append((a, b, r - 1.1, r - 1.1))
        items.append(dict(kind="rib", center=pts[2], radius=r, nodule=i))
    return cortex, marrow, items


def pleural_lesions(rng: np.random.Generator, hu: np.ndarray, lung: np.ndarray, sp: np.ndarray,
                    thorax) -> List[dict]:
    """Pleural plaques (thick plateaus, often calcified) and diffuse thickening on the lateral /
    posterior chest wall of the mid and lower zones (the apices and recesses are spared)."""
    t = thorax
    lesions = []
    if rng.random() < PLAQUE_PATIENTS:
        for _ in range(int(rng.integers(2, 7))):      # usually several, bilateral
            lesions.append(dict(kind="plaque", a_u=rng.uniform(8.0, 30.0), a_z=rng.uniform(5.0, 20.0),
                                thick=rng.uniform(2.0, 8.0), calcified=bool(rng.random() < 0.4)))
    if rng.random() < THICKENING_PATIENTS:
        for _ in range(int(rng.integers(1, 3))):
            lesions.append(dict(kind="thickening", a_u=rng.uniform(25.0, 60.0), a_z=rng.uniform(20.0, 50.0),
                                thick=rng.uniform(1.0, 3.0), calcified=False))
    items: List[dict] = []
    z_lo, z_hi = t.z_dome_right + 15.0, t.z_carina + 20.0
    v = float(sp.mean())
    for les in lesions:
        side = rng.choice([-1.0, 1.0])
        theta = float(side * rng.uniform(0.3, 0.75) * np.pi)    # posterolateral to lateral wall
        z = float(rng.uniform(z_lo, max(z_hi, z_lo + 1.0)))
        rho = _wall_radius(lung, sp, t, z, np.array([theta]))[0]
        if np.isnan(rho):
            continue
        n_out = np.array([0.0, -np.cos(theta), np.sin(theta)])
        e_u = np.array([0.0, np.sin(theta), np.cos(theta)])
        c = _wall_point(t, theta, rho, z)
        reach = np.array([les["a_z"], max(les["a_u"], les["thick"]) + 3.0, max(les["a_u"], les["thick"]) + 3.0])
        lo = np.maximum(np.floor((c - reach - 3.0) / sp).astype(int), 0)
        hi = np.minimum(np.ceil((c + reach + 3.0) / sp).astype(int) + 1, np.array(hu.shape))
        if np.any(hi <= lo):
            continue
        axes = [np.arange(lo[d], hi[d]) * sp[d] - c[d] for d in range(3)]
        oz, oy, ox = np.meshgrid(*axes, indexing="ij", sparse=True)
        s_u = oy * e_u[1] + ox * e_u[2]
        h = oy * n_out[1] + ox * n_out[2] + s_u ** 2 / (2.0 * rho)     # height over the curved wall
        q = (s_u / les["a_u"]) ** 2 + (oz / les["a_z"]) ** 2
        prof = np.clip(3.0 * (1.0 - q), 0.0, 1.0)                     # flat top, sharp edge
        inner = h + les["thick"] * prof                               # > 0 between the inner face ...
        outer = 2.0 - h                                               # ... and 2 mm into the wall
        cover = np.clip(np.minimum(inner, outer) / v + 0.5, 0.0, 1.0) * (prof > 0)
        block = hu[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        value = np.float32(rng.uniform(20.0, 60.0))
        target = block + cover.astype(np.float32) * np.maximum(value - block, 0.0)
        if les["calcified"]:
            # Calcification: a dense layer inside the plaque, patchy (plaques calcify from within).
            wave_u, phase, wave_z = rng.uniform(3.0, 6.0), rng.uniform(0, 6.3), rng.uniform(3.0, 6.0)
            patch = (np.sin(s_u / wave_u + phase) * np.cos(oz / wave_z)) > 0.1
            calc = np.clip(np.minimum(inner - 0.4 * les["thick"] * prof, 1.0 - h) / v + 0.5, 0.0, 1.0) \
                * (q < 0.7) * patch
            target = target + calc.astype(np.float32) * np.maximum(np.float32(rng.uniform(300.0, 900.0)) - target, 0.0)
        block[...] = target
        items.append(dict(kind=les["kind"], center=c, inward=-n_out, thickness=les["thick"], half_length=les["a_u"],
                          half_height=les["a_z"], calcified=les["calcified"]))
    return items


def draw(rng: np.random.Generator, hu: np.ndarray, lung_regions: np.ndarray, lung: np.ndarray, sp: np.ndarray,
         thorax, vessels: Sequence[trees.Segment], vessel_hu: float, nodules: List[NoduleSite],
         guard: Optional[NoduleGuard] = None,
         renderer: Optional[trees.TubeRenderer] = None) -> Tuple[Dict[str, int], List[dict]]:
    """Draw every confuser into the canonical ``hu`` (float32, before blur and noise).

    Returns (counts, items): one item per end-on vessel, fork, rib, plaque and thickening, with
    its ``kind`` and ``center`` (canonical mm) and sizes (mm). ``lung``: ``lung_regions > 0``;
    ``renderer``: one of the scan's shape to reuse."""
    if guard is not None:
        guard.refresh(hu)
    branches, bulges = vessel_branches(rng, vessels, lung, sp)
    renderer = renderer or trees.TubeRenderer(hu.shape, sp)
    renderer.draw(hu, branches + bulges, vessel_hu)
    items = [dict(kind="end-on vessel", center=a + 0.5 * (b - a), radius=0.5 * (ra + rb),
                  direction=(b - a) / max(np.linalg.norm(b - a), 1e-9)) for a, b, ra, rb in branches[::2]]
    items += [dict(kind="fork", center=a, radius=ra) for a, _, ra, _ in bulges]
    fiss = fissures(rng, hu, lung_regions, sp, thorax, nodules)
    cortex, marrow, ribs = juxta_pleural_ribs(rng, lung, sp, thorax, nodules)
    if cortex:
        renderer.draw(hu, cortex, float(rng.uniform(600.0, 1000.0)))
        renderer.draw(hu, marrow, float(rng.uniform(150.0, 300.0)), only_brighter=False)
    items += ribs
    items += pleural_lesions(rng, hu, lung, sp, thorax)
    if guard is not None:
        guard.restore(hu)
    kinds = [it["kind"] for it in items]
    counts = dict(end_on_vessels=kinds.count("end-on vessel"), fork_bulges=kinds.count("fork"),
                  fissure_sheets=fiss["sheets"], fissure_voxels=fiss["voxels"], perifissural=fiss["perifissural"],
                  juxta_pleural_ribs=kinds.count("rib"), plaques=kinds.count("plaque"),
                  pleural_thickening=kinds.count("thickening"),
                  calcified_plaques=sum(1 for it in items if it.get("calcified")))
    return counts, items
