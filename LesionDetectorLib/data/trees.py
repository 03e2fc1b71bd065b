"""Branching tubes of the synthetic lung: pulmonary arteries, veins and the airway tree.

Growth is territory splitting (in the spirit of Kitaoka's lung airway model): a branch owns
a cloud of points sampled uniformly in the lung region it supplies; it grows towards the
cloud's centroid, the cloud is cut in two across its longest axis, and each half feeds one
child. Radii follow Murray's law with flow proportional to territory size,
``r = r_root * (n / N) ** (1/3)``, so the number of points fixes the terminal calibre
(``N = (r_root / r_tip) ** 3`` points give ~``r_tip`` tips, ~0.5 mm for vessels). The
vessel tips tapering to ~1 mm are what makes a nodule detector's job hard: a vessel cut
across looks like a small nodule.

Segments are truncated cones with spherical ends, ``(p0, p1, r0, r1)`` in canonical mm
``(z, y, x)`` (see :mod:`.anatomy`); :func:`draw_segments` blends them into an HU volume
with a one-voxel partial-volume ramp.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import torch

Segment = Tuple[np.ndarray, np.ndarray, float, float]


def grow_tree(rng: np.random.Generator, points: np.ndarray, root: np.ndarray, direction: np.ndarray,
              root_radius: float, tip_radius: float, min_points: int = 3,
              max_angle_deg: float = 65.0) -> List[Segment]:
    """Grow one tree from ``root`` (mm) heading along ``direction`` into the territory ``points [N,3]``.

    ``points`` are subsampled so that ``N ~ (root_radius / tip_radius) ** 3``. Returns segments.
    """
    n_target = int(np.clip((root_radius / tip_radius) ** 3, 8, 40000))
    if len(points) > n_target:
        points = points[rng.choice(len(points), n_target, replace=False)]
    total = float(len(points))
    segments: List[Segment] = []
    stack = [(np.asarray(root, float), np.asarray(direction, float) / np.linalg.norm(direction), points)]
    cos_max = np.cos(np.radians(max_angle_deg))
    while stack:
        start, parent_dir, pts = stack.pop()
        radius = max(root_radius * (len(pts) / total) ** (1 / 3), tip_radius)
        centroid = pts.mean(axis=0)
        to_c = centroid - start
        dist = float(np.linalg.norm(to_c))
        if dist < 1e-6:
            continue
        d = to_c / dist
        # Limit the turn away from the parent: real bronchovascular branching angles are < ~70 deg.
        if float(d @ parent_dir) < cos_max:
            perp = d - (d @ parent_dir) * parent_dir
            perp /= max(np.linalg.norm(perp), 1e-9)
            d = cos_max * parent_dir + np.sqrt(1 - cos_max ** 2) * perp
        if len(pts) < min_points:
            # Terminal branch: run through the territory, tapering to the tip calibre.
            length = dist + 3.0
            segments.append((start, start + d * length, radius, tip_radius))
            continue
        length = float(np.clip(0.45 * dist, 1.5 * radius + 1.0, 14.0 * radius + 2.0))
        end = start + d * length
        end_radius = radius * 0.97
        segments.append((start, end, radius, end_radius))
        centred = pts - centroid
        # Cut across the longest axis of the territory, a little off-centre as in real trees.
        axis = np.linalg.eigh(centred.T @ centred)[1][:, -1]
        proj = centred @ axis
        cut = rng.normal(0.0, 0.1) * float(np.sqrt((proj ** 2).mean()))
        below = proj < cut
        for child in (pts[below], pts[~below]):
            if len(child):
                stack.append((end, d, child))
    return segments


_BUCKETS = np.array([2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 90, 128, 181, 256, 362, 512, 724, 1024])
_BATCH_VOXELS = 4_000_000


def _scatter_coverage(cover: torch.Tensor, shape, spacing_zyx, segments: List[Segment]) -> torch.Tensor:
    """Scatter-max into the flat buffer ``cover`` the fraction of each voxel covered by the tubes;
    return the flat indices of the voxels touched (with repeats).

    Coverage is ``clip((r(t) - dist) / ramp + 0.5, 0, 1)`` with ``ramp`` one mean voxel, i.e. a
    one-voxel partial-volume edge. Segments are batched by bounding-box size and merged with a
    scatter-max, so thousands of thin branches cost a handful of tensor operations.
    Voxel ``i`` of axis ``a`` sits at ``i * spacing_zyx[a]`` mm.
    """
    sp = np.asarray(spacing_zyx, np.float64)
    ramp = float(sp.mean())
    touched = [torch.zeros(0, dtype=torch.int64)]
    if not segments:
        return touched[0]
    p0 = np.array([s[0] for s in segments], np.float64)
    p1 = np.array([s[1] for s in segments], np.float64)
    r0 = np.array([s[2] for s in segments], np.float64)
    r1 = np.array([s[3] for s in segments], np.float64)
    rmax = np.maximum(r0, r1)[:, None] + ramp
    lo = np.maximum(np.floor((np.minimum(p0, p1) - rmax) / sp).astype(np.int64), 0)
    hi = np.minimum(np.ceil((np.maximum(p0, p1) + rmax) / sp).astype(np.int64) + 1, np.array(shape))
    keep = np.all(hi > lo, axis=1)
    dims = np.where(keep[:, None], hi - lo, 1)
    window = _BUCKETS[np.minimum(np.searchsorted(_BUCKETS, dims), len(_BUCKETS) - 1)]
    window = np.maximum(window, dims)
    keys = window[:, 0] * 1_000_000 + window[:, 1] * 1000 + window[:, 2]
    shape_t = torch.tensor(shape)
    for key in np.unique(keys[keep]):
        members = np.nonzero((keys == key) & keep)[0]
        wz, wy, wx = window[members[0]]
        per = max(1, _BATCH_VOXELS // int(wz * wy * wx))
        for b0 in range(0, len(members), per):
            m = members[b0:b0 + per]
            a = torch.from_numpy(p0[m]).float()
            d = torch.from_numpy(p1[m] - p0[m]).float()
            ra = torch.from_numpy(r0[m]).float()
            rb = torch.from_numpy(r1[m]).float()
            base = torch.from_numpy(lo[m])
            iz = base[:, 0:1] + torch.arange(wz)
            iy = base[:, 1:2] + torch.arange(wy)
            ix = base[:, 2:3] + torch.arange(wx)
            z = (iz * sp[0] - a[:, 0:1])[:, :, None, None]
            y = (iy * sp[1] - a[:, 1:2])[:, None, :, None]
            x = (ix * sp[2] - a[:, 2:3])[:, None, None, :]
            dz, dy, dx = (d[:, k].view(-1, 1, 1, 1) for k in range(3))
            l2 = (d * d).sum(1).clamp_min(1e-12).view(-1, 1, 1, 1)
            t = ((z * dz + y * dy + x * dx) / l2).clamp_(0.0, 1.0)
            dist = ((z - t * dz) ** 2 + (y - t * dy) ** 2 + (x - t * dx) ** 2).sqrt_()
            r = ra.view(-1, 1, 1, 1) + t * (rb - ra).view(-1, 1, 1, 1)
            frac = ((r - dist) / ramp + 0.5).clamp_(0.0, 1.0)
            valid = ((iz < shape_t[0])[:, :, None, None] & (iy < shape_t[1])[:, None, :, None]
                     & (ix < shape_t[2])[:, None, None, :])
            frac = frac * valid
            flat = ((iz.clamp(max=shape[0] - 1) * shape[1])[:, :, None, None]
                    + iy.clamp(max=shape[1] - 1)[:, None, :, None]) * shape[2] \
                + ix.clamp(max=shape[2] - 1)[:, None, None, :]
            flat, frac = flat.reshape(-1), frac.reshape(-1)
            hit = frac > 0
            flat, frac = flat[hit], frac[hit]
            cover.scatter_reduce_(0, flat, frac, reduce="amax")
            touched.append(flat)
    return torch.cat(touched)


class TubeRenderer:
    """Draws tubes into an HU volume; one coverage buffer is reused by every call."""

    def __init__(self, shape, spacing_zyx):
        self.shape = tuple(int(v) for v in shape)
        self.spacing = np.asarray(spacing_zyx, np.float64)
        self._cover = torch.zeros(int(np.prod(self.shape)), dtype=torch.float32)

    def draw(self, hu: np.ndarray, segments: List[Segment], value: float, only_brighter: bool = True) -> None:
        """Blend tubes into ``hu [z,y,x]`` (float32, C-contiguous) in place: ``hu += f * (value - hu)``.

        ``f`` is the union coverage. Only touched voxels are read and written: every repeat of an
        index computes the same new value from the same old one, so repeats are harmless. With
        ``only_brighter`` a tube never darkens tissue (a vessel over bone); airway lumens pass False.
        """
        if hu.shape != self.shape or not hu.flags.c_contiguous:
            raise ValueError("hu must be C-contiguous with the renderer's shape")
        idx = _scatter_coverage(self._cover, self.shape, self.spacing, segments)
        flat = torch.from_numpy(hu).view(-1)
        old = flat[idx]
        frac = self._cover[idx]
        delta = frac * (float(value) - old)
        if only_brighter:
            delta.clamp_(min=0.0)
        flat[idx] = old + delta
        self._cover[idx] = 0.0


def draw_segments(hu: np.ndarray, spacing_zyx: np.ndarray, segments: List[Segment], value: float,
                  only_brighter: bool = True) -> None:
    """One-off :meth:`TubeRenderer.draw`."""
    TubeRenderer(hu.shape, spacing_zyx).draw(hu, segments, value, only_brighter)


def companion_offsets(rng: np.random.Generator, segments: List[Segment], gap: float = 0.6) -> List[Segment]:
    """Arteries that run beside each airway (bronchovascular bundles), same calibre, touching its wall."""
    out: List[Segment] = []
    for p0, p1, r0, r1 in segments:
        d = p1 - p0
        d = d / max(np.linalg.norm(d), 1e-9)
        side = np.cross(d, rng.normal(size=3))
        side /= max(np.linalg.norm(side), 1e-9)
        wall = 0.25 * max(r0, r1) + 0.4
        offset = side * (max(r0, r1) + wall + 0.9 * max(r0, r1) + gap)
        out.append((p0 + offset, p1 + offset, 0.9 * r0, 0.9 * r1))
    return out
