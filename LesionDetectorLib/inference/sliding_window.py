"""Sliding-window tiling of the preprocessed (1 mm, lung-cropped) image and tile merging.

Tiles are boxes of ``tile`` voxels per axis (``(D, H, W)``, the model's training crop)
whose starts step by ``tile - overlap``; the last tile
along an axis is shifted back to end at the border, and an axis shorter than a tile is
padded at its far end. Every point of the image is *owned* by exactly one tile: the
ownership boundary between two neighbours lies in the middle of their overlap. A
detection is kept only by the tile owning its centre, so a nodule seen by two tiles is
not reported twice (3-D NMS afterwards removes the rest of the near-duplicates).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import List, Sequence, Tuple, Union

import numpy as np


def axis_starts(length: int, tile: int, overlap: int) -> List[int]:
    """Start indices of the tiles along one axis of ``length`` voxels."""
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _ownership(starts: Sequence[int], tile: int) -> List[Tuple[float, float]]:
    """Half-open owned interval ``[lo, hi)`` of every tile along one axis."""
    bounds = []
    for k, s in enumerate(starts):
        lo = -np.inf if k == 0 else (s + starts[k - 1] + tile) / 2.0
        hi = np.inf if k == len(starts) - 1 else (starts[k + 1] + s + tile) / 2.0
        bounds.append((lo, hi))
    return bounds


@dataclass(frozen=True)
class Tile:
    """One window: ``start`` (z, y, x) in the image, ``size`` (D, H, W) voxels, and the
    half-open owned box ``owned_lo <= centre < owned_hi`` in image voxel coordinates."""
    start: Tuple[int, int, int]
    size: Tuple[int, int, int]
    owned_lo: Tuple[float, float, float]
    owned_hi: Tuple[float, float, float]

    def owns(self, centres_zyx: np.ndarray) -> np.ndarray:
        """``centres_zyx [K,3]`` in image coordinates -> bool ``[K]``."""
        c = np.asarray(centres_zyx, dtype=np.float64).reshape(-1, 3)
        return np.all((c >= np.asarray(self.owned_lo)) & (c < np.asarray(self.owned_hi)), axis=1)


def plan_tiles(shape_zyx: Sequence[int], tile: Union[int, Sequence[int]] = 128, overlap: int = 32) -> List[Tile]:
    """All tiles covering an image of ``shape_zyx``, z-major order; ``tile`` is an int
    (cube) or ``(D, H, W)``."""
    size = (int(tile),) * 3 if isinstance(tile, (int, np.integer)) else tuple(int(t) for t in tile)
    if len(size) != 3:
        raise ValueError(f"tile must be an int or 3 sizes (D, H, W), got {tile!r}")
    per_axis = [axis_starts(int(n), t, overlap) for n, t in zip(shape_zyx, size)]
    owned = [_ownership(s, t) for s, t in zip(per_axis, size)]
    tiles = []
    for idx in product(*(range(len(s)) for s in per_axis)):
        start = tuple(per_axis[a][i] for a, i in enumerate(idx))
        lo = tuple(owned[a][i][0] for a, i in enumerate(idx))
        hi = tuple(owned[a][i][1] for a, i in enumerate(idx))
        tiles.append(Tile(start=start, size=size, owned_lo=lo, owned_hi=hi))
    return tiles


def _axis_fits(length: int, max_size: int, overlap: int, multiple: int, min_size: int, extra: int) -> List[int]:
    """Sizes (multiples of ``multiple``, <= ``max_size``) that cover ``length`` with the fewest
    tiles and with ``extra`` more; each is the smallest such size for its tile count."""
    if length <= max_size:
        n_min = 1
    else:
        n_min = int(np.ceil((length - overlap) / float(max_size - overlap)))
    sizes = []
    for n in range(n_min, n_min + extra + 1):
        need = int(np.ceil((length + (n - 1) * overlap) / float(n)))
        size = max(min_size, int(np.ceil(need / float(multiple))) * multiple)
        if size <= max_size and size > overlap and size not in sizes:
            sizes.append(size)
    return sizes or [max_size]


def candidate_tile_sizes(shape_zyx: Sequence[int], max_tile: Sequence[int], overlap: int,
                         multiple: int = 16, min_size: int = 32, extra: int = 1) -> List[Tuple[int, int, int]]:
    """Tile sizes worth trying for an image of ``shape_zyx``: per axis, the smallest multiple of
    ``multiple`` that covers the axis with the fewest tiles no larger than ``max_tile`` (and with
    ``extra`` more tiles), so the tiles overlap by about ``overlap`` and pad little at the far
    border. A fixed 128^3 grid on a 316-voxel axis runs 4 tiles (512 voxels); a fitted 176 runs 2
    (352). Which candidate is cheapest depends on which tiles can be skipped, so the engine
    chooses."""
    per_axis = [_axis_fits(int(n), int(m), int(overlap), multiple, min_size, extra)
                for n, m in zip(shape_zyx, max_tile)]
    return [tuple(c) for c in product(*per_axis)]


def extract_tile(image: np.ndarray, tile: Tile, pad_value: float) -> np.ndarray:
    """The ``tile.size`` float32 window at ``tile.start``, padded with ``pad_value``
    where it reaches past the image (axes shorter than a tile only)."""
    sl = tuple(slice(s, s + n) for s, n in zip(tile.start, tile.size))
    window = image[sl]
    if window.shape == tile.size:
        return np.ascontiguousarray(window, dtype=np.float32)
    out = np.full(tile.size, pad_value, dtype=np.float32)
    out[tuple(slice(0, n) for n in window.shape)] = window
    return out
