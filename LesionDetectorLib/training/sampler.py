"""Random training crops from cached preprocessed scans (section IV-A).

Each crop (``crop_size`` voxels, 128^3 or 96^3) is, with probability ``pos_fraction``, placed so
that a randomly chosen nodule lies inside it at a random position (positives are oversampled:
a nodule occupies ~10^-4 of the anchors otherwise); with probability ``hard_fraction`` around a
hard region (found by Anchor Based Sampling, or a candidate a reader rejected:
:func:`hard_regions_from_world`); else anywhere in the scan. Augmentation: random
flips of every axis and a random permutation of the three axes (the rotations that keep a
1 mm isotropic grid on the grid). Beyond the scan the crop is padded with the preprocessing
pad value.

Crops are deterministic functions of ``(seed, epoch, index)``, so a resumed or distributed run
draws exactly the crops an uninterrupted single-process run would.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..coordinates import Geometry, world_to_index
from ..preprocess import PAD_HU, normalize_hu
from .cache import CachedScan

PAD_VALUE = float(normalize_hu(np.float32(PAD_HU)))


def crop_with_pad(image: np.ndarray, start: Sequence[int], size: Sequence[int], pad: float) -> np.ndarray:
    """``image[start : start + size]`` as float32, padded with ``pad`` where it leaves the image."""
    out = np.full(tuple(size), pad, dtype=np.float32)
    src, dst = [], []
    for s, n, dim in zip(start, size, image.shape):
        lo, hi = max(s, 0), min(s + n, dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = image[tuple(src)]
    return out


def augment(crop: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Random flips and axis permutation of a cubic-or-not crop ``[D, H, W]`` and its boxes ``[M, 4]``."""
    boxes = boxes.copy()
    for axis in range(3):
        if rng.random() < 0.5:
            crop = np.flip(crop, axis)
            boxes[:, axis] = crop.shape[axis] - 1 - boxes[:, axis]
    perm = rng.permutation(3)
    if len(set(crop.shape)) == 1:          # permuting axes is only shape-preserving for cubes
        crop = np.transpose(crop, perm)
        boxes[:, :3] = boxes[:, perm]
    return np.ascontiguousarray(crop), boxes


def _scan_geometry(scan: CachedScan) -> Geometry:
    """The crop grid of a cached scan as a :class:`Geometry` (its affine maps ``[z, y, x]``)."""
    m = np.asarray(scan.affine, dtype=np.float64)[:, :3][:, ::-1]   # columns in ITK i, j, k order
    spacing = np.linalg.norm(m, axis=0)
    return Geometry(scan.image.shape, spacing, scan.affine[:, 3], m / spacing)


def hard_regions_from_world(scans: Sequence[CachedScan], points) -> List[Tuple[int, np.ndarray]]:
    """Hard-negative regions given in the world: ``(scan index, centre [z, y, x] crop voxels)``.

    ``points`` have ``seriesuid`` and ``x, y, z`` LPS mm (the rows of a reviewer's
    ``hard_negatives.csv``, :mod:`LesionDetectorLib.export.review_labels`). Points of scans
    not in ``scans`` or outside a scan's crop are skipped.
    """
    index = {s.uid: i for i, s in enumerate(scans)}
    regions = []
    for p in points:
        i = index.get(p.seriesuid)
        if i is None:
            continue
        zyx = world_to_index(_scan_geometry(scans[i]), np.array([p.x, p.y, p.z], dtype=np.float64))
        if np.all(zyx >= 0) and np.all(zyx <= np.asarray(scans[i].image.shape) - 1):
            regions.append((i, zyx))
    return regions


class CropDataset(Dataset):
    """Map-style dataset of ``length`` random crops -> ``(image [1, D, H, W] float32, boxes [M, 4])``.

    ``hard_regions`` are the mined ones (Anchor Based Sampling replaces them each round);
    ``reviewed_regions`` (rejected candidates, :func:`hard_regions_from_world`) stay for the
    whole run. Crops around either are drawn with probability ``hard_fraction``.
    """

    def __init__(self, scans: List[CachedScan], crop_size: Sequence[int], length: int, seed: int = 0,
                 pos_fraction: float = 0.5, augment: bool = True,
                 hard_regions: Optional[List[Tuple[int, np.ndarray]]] = None, hard_fraction: float = 0.0,
                 max_diameter: float = 0.0,
                 reviewed_regions: Optional[List[Tuple[int, np.ndarray]]] = None) -> None:
        if not scans:
            raise ValueError("no training scans")
        self.scans = scans
        self.crop = tuple(int(c) for c in crop_size)
        self.length = int(length)
        self.seed = int(seed)
        self.epoch = 0
        self.pos_fraction = pos_fraction
        self.augment = augment
        self.reviewed_regions = list(reviewed_regions or [])
        self.hard_regions = hard_regions or []
        self.hard_fraction = hard_fraction if self.hard_regions else 0.0
        self.max_diameter = max_diameter
        self.nodules = [(i, b) for i, s in enumerate(scans) for b in s.boxes
                        if not max_diameter or b[3] < max_diameter]

    @property
    def hard_regions(self) -> List[Tuple[int, np.ndarray]]:
        return self._mined_regions + self.reviewed_regions

    @hard_regions.setter
    def hard_regions(self, regions) -> None:
        self._mined_regions = list(regions or [])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def _start_around(self, centre: np.ndarray, rng: np.random.Generator, margin: float) -> np.ndarray:
        crop = np.asarray(self.crop)
        lo = np.ceil(centre + margin - crop + 1)          # centre at least `margin` inside the crop
        hi = np.floor(centre - margin)
        lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
        return np.array([rng.integers(int(a), int(b) + 1) for a, b in zip(lo, hi)])

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        u = rng.random()
        if self.nodules and u < self.pos_fraction:
            si, box = self.nodules[rng.integers(len(self.nodules))]
            start = self._start_around(box[:3], rng, margin=box[3] / 2 + 2)
        elif self.hard_regions and u < self.pos_fraction + self.hard_fraction:
            regions = self.hard_regions
            si, centre = regions[rng.integers(len(regions))]
            start = self._start_around(np.asarray(centre, dtype=np.float64), rng, margin=8)
        else:
            si = int(rng.integers(len(self.scans)))
            shape = np.asarray(self.scans[si].image.shape)
            hi = np.maximum(shape - np.asarray(self.crop), 0)
            start = np.array([rng.integers(0, h + 1) for h in hi])
        scan = self.scans[si]
        image = crop_with_pad(scan.image, start, self.crop, PAD_VALUE)
        boxes = scan.boxes.copy()
        if self.max_diameter:
            boxes = boxes[boxes[:, 3] < self.max_diameter]
        boxes[:, :3] -= start
        inside = np.all((boxes[:, :3] >= 0) & (boxes[:, :3] <= np.asarray(self.crop) - 1), axis=1)
        boxes = boxes[inside]
        if self.augment:
            image, boxes = augment(image, boxes, rng)
        return torch.from_numpy(image)[None], torch.from_numpy(boxes.astype(np.float32)).reshape(-1, 4)


def collate(batch):
    images = torch.stack([b[0] for b in batch])
    return images, [b[1] for b in batch]
