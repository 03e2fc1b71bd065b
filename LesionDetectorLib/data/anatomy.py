"""Coarse synthetic thorax: body, fat, muscle, ribs, spine, sternum, mediastinum, heart, lungs.

Everything here is evaluated on a *coarse* grid (about 1.5 mm in-plane, 2.5 mm between
slices) in a canonical patient frame and later upsampled trilinearly to the scanner grid;
the fine structures (airways, vessels, nodules) are drawn at full resolution elsewhere
(:mod:`.trees`, :mod:`.synthetic`).

Canonical frame: millimetres ``(z, y, x)`` with x towards the patient's left, y towards
posterior, z towards superior (LPS, identity direction), origin at the centre of voxel 0
of the *fine* grid. Region labels of the coarse lung map: 0 outside, 1 right lung,
2 left lung.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AIR_HU = -1000.0


@dataclass
class Thorax:
    """Random patient parameters (mm, canonical frame); drawn by :func:`sample_thorax`."""

    cx: float                 # body centre, left-right
    cy: float                 # body centre, anterior-posterior
    body_a: float             # body half-width (left-right)
    body_b: float             # body half-depth (antero-posterior)
    fat: float                # subcutaneous fat thickness
    muscle: float             # chest-wall muscle thickness
    z_apex: float             # top of the lungs
    z_dome_right: float       # top of the right hemidiaphragm dome
    z_dome_left: float
    z_carina: float
    mediastinum_half: float   # half-width of the upper mediastinum
    heart_center: np.ndarray  # (z, y, x)
    heart_axes: np.ndarray    # (z, y, x) semi-axes
    spine_radius: float
    rib_pitch: float
    rib_phase: float
    rib_drop: float           # how far a rib descends from spine to front
    lung_hu: float
    gravity_hu: float         # extra density of dependent (posterior) lung
    fat_hu: float
    muscle_hu: float
    blood_hu: float           # 40 without contrast, 150..300 with
    contrast: bool


def sample_thorax(rng: np.random.Generator, extent_zyx: np.ndarray) -> Thorax:
    """Draw a patient whose thorax fits the scan's field of view ``extent_zyx`` (mm)."""
    ez, ey, ex = extent_zyx
    body_a = min(rng.uniform(140.0, 175.0), 0.47 * ex)
    body_b = min(body_a * rng.uniform(0.62, 0.78), 0.42 * ey)
    cx = ex / 2 + rng.uniform(-8, 8)
    cy = ey / 2 + rng.uniform(-10, 10) - 0.02 * ey
    z_apex = ez - rng.uniform(0.03, 0.12) * ez
    lung_height = rng.uniform(0.72, 0.82) * z_apex
    z_dome_right = z_apex - lung_height
    z_dome_left = z_dome_right - rng.uniform(8.0, 22.0)
    contrast = bool(rng.random() < 0.4)
    heart_axes = np.array([rng.uniform(50, 65), body_b * rng.uniform(0.42, 0.52), body_a * rng.uniform(0.36, 0.44)])
    heart_center = np.array([z_dome_left + heart_axes[0] * 0.55, cy - body_b * 0.18, cx + body_a * 0.12])
    return Thorax(
        cx=cx, cy=cy, body_a=body_a, body_b=body_b,
        fat=rng.uniform(6.0, 28.0), muscle=rng.uniform(8.0, 16.0),
        z_apex=z_apex, z_dome_right=z_dome_right, z_dome_left=z_dome_left,
        z_carina=z_apex - lung_height * rng.uniform(0.28, 0.36),
        mediastinum_half=rng.uniform(22.0, 30.0),
        heart_center=heart_center, heart_axes=heart_axes,
        spine_radius=rng.uniform(15.0, 19.0), rib_pitch=rng.uniform(24.0, 30.0),
        rib_phase=rng.uniform(0.0, 30.0), rib_drop=rng.uniform(45.0, 80.0),
        lung_hu=rng.uniform(-885.0, -830.0), gravity_hu=rng.uniform(20.0, 90.0),
        fat_hu=rng.uniform(-110.0, -85.0), muscle_hu=rng.uniform(35.0, 60.0),
        blood_hu=rng.uniform(160.0, 300.0) if contrast else rng.uniform(30.0, 50.0),
        contrast=contrast,
    )


def _smooth_noise(rng: np.random.Generator, shape, scale_vox: float) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: random values on a grid ``scale_vox`` coarser, upsampled."""
    import torch
    import torch.nn.functional as F

    small = [max(2, int(np.ceil(s / scale_vox)) + 1) for s in shape]
    base = torch.from_numpy(rng.uniform(-1.0, 1.0, size=small).astype(np.float32))[None, None]
    return F.interpolate(base, size=tuple(shape), mode="trilinear", align_corners=False)[0, 0].numpy()


def thorax_hu(t: Thorax, zc: np.ndarray, yc: np.ndarray, xc: np.ndarray, rng: np.random.Generator):
    """Render the coarse thorax.

    ``zc, yc, xc``: 1-D voxel-centre coordinates (mm, canonical frame) of the coarse grid.
    Returns ``(hu [z,y,x] float32, lungs [z,y,x] uint8 (0 / 1 right / 2 left))``.
    """
    Z = zc[:, None, None].astype(np.float32)
    Y = yc[None, :, None].astype(np.float32)
    X = xc[None, None, :].astype(np.float32)
    shape = (len(zc), len(yc), len(xc))

    # The chest narrows towards the apex and the shoulders; breathe a little life into the outline.
    taper = np.clip(1.0 - 0.25 * np.clip((Z - t.z_apex + 60.0) / 80.0, 0.0, 1.0), 0.7, 1.0)
    wobble = 1.0 + 0.03 * _smooth_noise(rng, shape, 40.0 / max(zc[1] - zc[0], 1.0))
    u = (X - t.cx) / (t.body_a * taper)
    v = (Y - t.cy) / (t.body_b * (0.9 + 0.1 * taper))
    # Flatter back (patient lies on the table): superellipse exponent 2 in front, 3 behind.
    r_body = (np.abs(u) ** 2.4 + np.abs(v) ** np.where(v > 0, 3.0, 2.0)) ** (1 / 2.4) / wobble
    scale = float(min(t.body_a, t.body_b))
    depth = (1.0 - r_body) * scale                      # ~ mm inside the skin
    hu = np.full(shape, AIR_HU, np.float32)
    body = depth > 0
    np.copyto(hu, np.float32(t.fat_hu), where=body)
    muscle = depth > t.fat
    np.copyto(hu, np.float32(t.muscle_hu), where=muscle)
    np.copyto(hu, np.float32(30.0), where=(depth > 0) & (depth < 2.0))  # skin
    inner = depth > t.fat + t.muscle                     # inside the rib cage
    np.copyto(hu, np.float32(t.fat_hu + 20.0), where=inner)  # extrapleural / mediastinal fat

    # Ribs: bands that start at the spine and descend towards the front, cut by each slice.
    theta = np.arctan2(X - t.cx, -(Y - t.cy))            # 0 at the spine... measured from posterior
    phi = np.pi - np.abs(theta)                          # 0 at the spine, pi at the sternum
    z_rel = Z - t.rib_phase + t.rib_drop * phi / np.pi
    band = np.mod(z_rel, t.rib_pitch)
    rib_depth0 = t.fat + t.muscle - 9.0
    shell = (depth > rib_depth0) & (depth < rib_depth0 + 7.0)
    rib_core = shell & (band < 11.0) & (Z < t.z_apex + 10) & (Z > t.z_dome_left - 40) & (phi > 0.12)
    cartilage = rib_core & (phi > 0.78 * np.pi)
    cortex = rib_core & ((band < 2.0) | (band > 9.0) | (depth < rib_depth0 + 1.5) | (depth > rib_depth0 + 5.5))
    np.copyto(hu, np.float32(260.0), where=rib_core)
    np.copyto(hu, np.float32(650.0), where=cortex)
    np.copyto(hu, np.float32(120.0), where=cartilage)

    # Sternum: a flat bone at the front in the midline.
    sternum = (np.abs(X - t.cx) < 16.0) & (depth > t.fat + 2.0) & (depth < t.fat + 12.0) & (Y < t.cy) \
        & (Z > t.z_dome_right - 10) & (Z < t.z_apex - 10)
    np.copyto(hu, np.float32(300.0), where=sternum)

    # Spine: vertebral body, discs, canal, posterior arch, paravertebral muscle.
    sy = t.cy + t.body_b - t.fat - t.muscle - 2.2 * t.spine_radius
    dist_body = np.sqrt((X - t.cx) ** 2 + (Y - sy) ** 2)
    para = (np.abs(X - t.cx) < 2.4 * t.spine_radius) & (Y > sy - 0.6 * t.spine_radius)
    np.copyto(hu, np.float32(t.muscle_hu), where=para & inner)
    vert = dist_body < t.spine_radius
    disc = vert & (np.mod(Z - t.rib_phase + 6.0, t.rib_pitch) < 5.0)
    np.copyto(hu, np.float32(230.0), where=vert)
    np.copyto(hu, np.float32(550.0), where=vert & (dist_body > t.spine_radius - 2.0))
    np.copyto(hu, np.float32(80.0), where=disc)
    canal_y = sy + t.spine_radius + 9.0
    dist_canal = np.sqrt((X - t.cx) ** 2 + (Y - canal_y) ** 2)
    arch = (dist_canal < 14.0) & (dist_canal > 8.0) & (Y > sy + t.spine_radius - 2)
    spinous = (np.abs(X - t.cx) < 4.0) & (Y > canal_y) & (Y < canal_y + 30.0)
    np.copyto(hu, np.float32(500.0), where=arch | spinous)
    np.copyto(hu, np.float32(15.0), where=dist_canal <= 8.0)

    # Lungs: inside the rib cage, above the diaphragm domes, below the apex, outside the mediastinum.
    pleura = depth > t.fat + t.muscle + 1.5
    right = X < t.cx
    dome_top = np.where(right, t.z_dome_right, t.z_dome_left)
    dome_cx = np.where(right, t.cx - 0.45 * t.body_a, t.cx + 0.45 * t.body_a)
    rd = ((X - dome_cx) / (0.5 * t.body_a)) ** 2 + ((Y - t.cy + 0.15 * t.body_b) / (0.75 * t.body_b)) ** 2
    z_floor = dome_top - 45.0 * np.clip(rd, 0.0, 1.6)    # costophrenic recesses reach lower
    ra = ((X - dome_cx) / (0.45 * t.body_a)) ** 2 + ((Y - t.cy) / (0.6 * t.body_b)) ** 2
    z_roof = t.z_apex - 35.0 * np.clip(ra, 0.0, 2.0)
    height = np.clip((Z - dome_top) / np.maximum(t.z_apex - dome_top, 1.0), 0.0, 1.0)
    # Mediastinum: a midline band (wider in front, lower down), the heart, the spine.
    med_half = t.mediastinum_half + 18.0 * np.clip(-(Y - t.cy) / t.body_b, 0.0, 1.0) * (1.0 - height)
    mediastinum = np.abs(X - t.cx - 6.0) < med_half
    hz, hy, hx = t.heart_center
    az, ay, ax = t.heart_axes
    heart = ((Z - hz) / az) ** 2 + ((Y - hy) / ay) ** 2 + ((X - hx) / ax) ** 2 < 1.0
    spine_zone = np.sqrt((X - t.cx) ** 2 + (Y - sy) ** 2) < t.spine_radius + 14.0
    lung = pleura & (Z > z_floor) & (Z < z_roof) & ~mediastinum & ~heart & ~spine_zone
    lungs = np.where(lung, np.where(right, 1, 2), 0).astype(np.uint8)

    # Below the diaphragm: liver (right), spleen / stomach (left), i.e. soft tissue.
    abdomen = pleura & (Z <= z_floor) & ~spine_zone
    np.copyto(hu, np.float32(58.0), where=abdomen & right)
    np.copyto(hu, np.float32(45.0), where=abdomen & ~right)

    # Mediastinal content: heart with blood pool, great vessels along z.
    np.copyto(hu, np.float32(45.0), where=heart & inner)
    inner_heart = ((Z - hz) / (az - 8)) ** 2 + ((Y - hy) / (ay - 8)) ** 2 + ((X - hx) / (ax - 8)) ** 2 < 1.0
    np.copyto(hu, np.float32(t.blood_hu), where=inner_heart & inner)
    above_heart = Z > hz + 0.4 * az
    for (ox, oy, r, zmin) in ((t.cx + 22.0, sy - 2.0, 11.0, -1e9),                 # descending aorta
                              (t.cx - 12.0, t.cy - 0.35 * t.body_b, 14.0, hz),      # ascending aorta
                              (t.cx + 14.0, t.cy - 0.30 * t.body_b, 13.0, hz),      # pulmonary trunk
                              (t.cx - 26.0, t.cy - 0.15 * t.body_b, 9.0, hz)):      # superior vena cava
        tube = ((X - ox) ** 2 + (Y - oy) ** 2 < r * r) & (Z > zmin) & (Z < t.z_apex + 5) & inner
        np.copyto(hu, np.float32(t.blood_hu), where=tube & (above_heart | (zmin < -1e8)))
    esophagus = ((X - t.cx - 4.0) ** 2 + (Y - sy + t.spine_radius + 9.0) ** 2 < 49.0) & inner
    np.copyto(hu, np.float32(35.0), where=esophagus)

    # Lung parenchyma: denser posteriorly (gravity), with low-frequency texture.
    grav = np.clip((Y - t.cy + t.body_b) / (2 * t.body_b), 0.0, 1.0) ** 2 * t.gravity_hu
    texture = 15.0 * _smooth_noise(rng, shape, 12.0 / max(xc[1] - xc[0], 1.0))
    parenchyma = t.lung_hu + grav + texture
    hu = np.where(lung, parenchyma, hu).astype(np.float32)

    # The table the patient lies on.
    table = (Y > t.cy + t.body_b + 6.0) & (Y < t.cy + t.body_b + 14.0) & (np.abs(X - t.cx) < 1.3 * t.body_a)
    np.copyto(hu, np.float32(-250.0), where=table)
    return hu, lungs
