"""On-disk cache of preprocessed training scans, so epochs never redo preprocessing.

Per scan: ``<uid>.npy`` (float16 ``[z, y, x]`` in [0, 1], the ``preprocess`` crop) and
``<uid>.json`` = ``{"uid", "subset", "shape", "boxes": [[z, y, x, d], ...] (nodules in crop voxel
index space, d in voxels = mm), "excluded": [...], "affine": 3x4 crop-index(z, y, x) -> LPS}``.
The affine reproduces ``Preprocessed.to_world`` exactly (it is linear), so validation
predictions map back to world coordinates without the scan.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Union

import numpy as np

log = logging.getLogger(__name__)
CACHE_VERSION = 1


@dataclass
class CachedScan:
    uid: str
    image: np.ndarray              # float16/float32 [z, y, x] in [0, 1] (memory-mapped)
    boxes: np.ndarray              # [M, 4] (z, y, x, d) crop voxels
    excluded: np.ndarray           # [E, 4]
    affine: np.ndarray             # [3, 4]: LPS = A[:, :3] @ zyx + A[:, 3]
    subset: int = 0

    def to_world(self, zyx: np.ndarray) -> np.ndarray:
        zyx = np.asarray(zyx, dtype=np.float64).reshape(-1, 3)
        return zyx @ self.affine[:, :3].T + self.affine[:, 3]


def _affine_of(pre) -> np.ndarray:
    origin = pre.to_world(np.zeros((1, 3)))[0]
    cols = pre.to_world(np.eye(3)) - origin
    return np.concatenate([cols.T, origin[:, None]], axis=1)


def write_cached_scan(cache_dir: Union[str, Path], uid: str, pre, annotations_lps: Sequence[Sequence[float]],
                      excluded_lps: Sequence[Sequence[float]] = (), subset: int = 0) -> Path:
    """Store a ``Preprocessed`` scan and its annotations (``[x, y, z, diameter_mm]`` LPS rows)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)

    def to_boxes(rows) -> List[List[float]]:
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
        if not len(rows):
            return []
        zyx = pre.from_world(rows[:, :3])
        return np.concatenate([zyx, rows[:, 3:4] / pre.spacing], axis=1).tolist()

    np.save(cache_dir / f"{uid}.npy", np.asarray(pre.image, dtype=np.float16))
    meta = {"version": CACHE_VERSION, "uid": uid, "subset": int(subset), "shape": list(pre.image.shape),
            "boxes": to_boxes(annotations_lps), "excluded": to_boxes(excluded_lps),
            "affine": _affine_of(pre).tolist()}
    path = cache_dir / f"{uid}.json"
    path.write_text(json.dumps(meta))
    return path


def read_cached_scan(cache_dir: Union[str, Path], uid: str) -> CachedScan:
    cache_dir = Path(cache_dir)
    meta = json.loads((cache_dir / f"{uid}.json").read_text())
    image = np.load(cache_dir / f"{uid}.npy", mmap_mode="r")
    return CachedScan(uid=uid, image=image, boxes=np.asarray(meta["boxes"], dtype=np.float32).reshape(-1, 4),
                      excluded=np.asarray(meta["excluded"], dtype=np.float32).reshape(-1, 4),
                      affine=np.asarray(meta["affine"], dtype=np.float64), subset=int(meta.get("subset", 0)))


def cached_uids(cache_dir: Union[str, Path]) -> List[str]:
    return sorted(p.stem for p in Path(cache_dir).glob("*.json") if (p.with_suffix(".npy")).is_file())


def build_luna16_cache(data_dir: Union[str, Path], cache_dir: Union[str, Path],
                       subsets: Optional[Iterable[int]] = None) -> List[str]:
    """Preprocess every scan of a LUNA16-layout directory once (skipping cached ones).

    Uses ``data.luna16.Luna16Dataset`` (subsets, annotations, excluded list and the
    ``seg-lungs-LUNA16`` masks when present) and ``preprocess.preprocess``.
    """
    from ..data.luna16 import Luna16Dataset
    from ..errors import NoLungsFoundError
    from ..preprocess import preprocess

    from ..io import read_volume

    ds = Luna16Dataset(data_dir)
    wanted = set(subsets) if subsets is not None else None
    done = set(cached_uids(cache_dir))
    uids = []
    for scan in ds:
        if wanted is not None and scan.subset not in wanted:
            continue
        if scan.seriesuid not in done:
            volume = ds.read(scan.seriesuid)
            mask = read_volume(str(scan.lung_mask_path), allow_non_ct=True) if scan.lung_mask_path else None
            try:
                pre = preprocess(volume, mask)
            except NoLungsFoundError as exc:
                log.warning("skipping %s: %s", scan.seriesuid, exc)
                continue
            write_cached_scan(cache_dir, scan.seriesuid, pre, ds.annotations(scan.seriesuid),
                              ds.excluded(scan.seriesuid), scan.subset)
        uids.append(scan.seriesuid)
    return uids
