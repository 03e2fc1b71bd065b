"""On-disk cache of preprocessed training scans, so epochs never redo preprocessing.

Per scan: ``<uid>.npy`` (float16 ``[z, y, x]`` in [0, 1], the ``preprocess`` crop) and
``<uid>.json`` = ``{"uid", "subset", "shape", "boxes": [[z, y, x, d], ...] (nodules in crop voxel
index space, d in voxels = mm), "excluded": [...], "affine": 3x4 crop-index(z, y, x) -> LPS,
"preprocessing": "lungs" | "body"}``. The affine reproduces ``Preprocessed.to_world`` exactly
(it is linear), so validation predictions map back to world coordinates without the scan.
Both files are written atomically, the JSON last: a scan counts as cached only when its
JSON exists, so an interrupted build never leaves a half-written scan behind.

Two builders fill a cache:

* :func:`build_luna16_cache`: LUNA16 layout, lung crop (``preprocess.preprocess`` with the
  ``seg-lungs-LUNA16`` masks when present), ``subset`` = the LUNA16 subset (fold).
* :func:`build_deeplesion_cache`: DeepLesion scan chunks, **no lung mask** (the paper,
  section V-A: "no semantic segmentation is applied ... we still can reduce unnecessary parts
  by clipping black borders"; each chunk rescaled to 1 mm): :func:`preprocess_body`.
  Targets are the chunk's lesions of the ``"train"`` variant, lesions >= 48 mm go to
  ``excluded``; ``subset`` = DL_info.csv's ``Train_Val_Test`` code (1 train, 2 val, 3 test).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Union

import numpy as np

from ..atomic import atomic_open
from ..preprocess import Preprocessing

log = logging.getLogger(__name__)
CACHE_VERSION = 1

#: DL_info.csv ``Train_Val_Test`` codes, stored as a cached DeepLesion scan's ``subset``.
DEEPLESION_SPLIT_CODES = {"train": 1, "val": 2, "test": 3}


@dataclass
class CachedScan:
    uid: str
    image: np.ndarray              # float16/float32 [z, y, x] in [0, 1] (memory-mapped)
    boxes: np.ndarray              # [M, 4] (z, y, x, d) crop voxels
    excluded: np.ndarray           # [E, 4]
    affine: np.ndarray             # [3, 4]: LPS = A[:, :3] @ zyx + A[:, 3]
    subset: int = 0

    def to_world(self, zyx: np.ndarray) -> np.ndarray:
        from ..coordinates import apply_crop_affine

        return apply_crop_affine(self.affine, zyx)


def write_cached_scan(cache_dir: Union[str, Path], uid: str, pre, annotations_lps: Sequence[Sequence[float]],
                      excluded_lps: Sequence[Sequence[float]] = (), subset: int = 0,
                      preprocessing: str = "lungs") -> Path:
    """Store a ``Preprocessed`` scan and its annotations (``[x, y, z, diameter_mm]`` LPS rows).

    ``preprocessing`` names how the crop was made (``"lungs"``: lung crop, ``"body"``:
    :func:`preprocess_body`); it is recorded, so a mixed cache can be told apart.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)

    def to_boxes(rows) -> List[List[float]]:
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
        if not len(rows):
            return []
        zyx = pre.from_world(rows[:, :3])
        return np.concatenate([zyx, rows[:, 3:4] / pre.spacing], axis=1).tolist()

    image = np.asarray(pre.image, dtype=np.float16)
    _atomic_write(cache_dir / f"{uid}.npy", lambda fh: np.save(fh, image))
    meta = {"version": CACHE_VERSION, "uid": uid, "subset": int(subset), "shape": list(pre.image.shape),
            "boxes": to_boxes(annotations_lps), "excluded": to_boxes(excluded_lps),
            "affine": pre.crop_to_world_affine().tolist(), "preprocessing": preprocessing,
            "preprocessing_spec": (Preprocessing.body() if preprocessing == "body" else Preprocessing()).to_card()}
    return _atomic_write(cache_dir / f"{uid}.json", lambda fh: fh.write(json.dumps(meta).encode()))


def _atomic_write(path: Path, write) -> Path:
    """``write(binary file)`` into a temporary file beside ``path``, then rename it into place
    (:mod:`LesionDetectorLib.atomic`: unique temporary names, umask permissions)."""
    with atomic_open(path, "wb") as fh:
        write(fh)
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

    Uses ``data.luna16_dataset.Luna16Dataset`` (subsets, annotations, excluded list and the
    ``seg-lungs-LUNA16`` masks when present) and ``preprocess.preprocess``.
    """
    from ..data.luna16_dataset import Luna16Dataset
    from ..errors import NoLungsFoundError

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
                pre = Preprocessing().apply(volume, mask)
            except NoLungsFoundError as exc:
                log.warning("skipping %s: %s", scan.seriesuid, exc)
                continue
            write_cached_scan(cache_dir, scan.seriesuid, pre, ds.annotations(scan.seriesuid),
                              ds.excluded(scan.seriesuid), scan.subset)
        uids.append(scan.seriesuid)
    return uids


# ----------------------------------------------------------------------------- DeepLesion


def build_deeplesion_cache(data_dir: Union[str, Path], cache_dir: Union[str, Path],
                           splits: Sequence[str] = ("train",), variant: str = "train",
                           progress: bool = False, **dataset_options) -> List[str]:
    """Preprocess every scan chunk of the given official splits of a DeepLesion root once
    (skipping cached ones); returns the chunks' ``seriesuid`` in order.

    ``data_dir`` holds ``DL_info.csv`` and ``Images_png/`` (see
    :class:`~LesionDetectorLib.data.deeplesion.DeepLesionDataset`, which also takes
    ``dataset_options`` such as ``include_noisy``). Chunks with missing slices are skipped by
    the data set. A chunk whose PNGs cannot be read or that holds no body is skipped with a
    warning and remembered as ``<cache>/<seriesuid>.skip`` (the reason), so later builds (and
    the other ranks of a DDP run) do not try it again; delete that file to retry.
    Boxes: ``scan.boxes_lps(variant)`` (``"train"``: lesions >= 48 mm excluded).
    ``progress`` shows a tqdm bar on stderr.
    """
    from ..data.deeplesion import DeepLesionDataset
    from ..errors import NoLungsFoundError, VolumeError

    unknown = [s for s in splits if s not in DEEPLESION_SPLIT_CODES]
    if unknown:
        raise ValueError(f"unknown DeepLesion split(s) {unknown}; expected {sorted(DEEPLESION_SPLIT_CODES)}")
    cache_dir = Path(cache_dir)
    ds = DeepLesionDataset(data_dir, splits=list(splits), **dataset_options)
    done = set(cached_uids(cache_dir))
    skipped_before = {p.stem for p in cache_dir.glob("*.skip")} - done
    todo = [scan for scan in ds if scan.seriesuid not in done and scan.seriesuid not in skipped_before]
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"DeepLesion cache ({'+'.join(splits)})", unit="chunk")
    uids, failed, known_bad = [], 0, 0
    try:
        for scan in ds:
            uid = scan.seriesuid
            if uid in skipped_before:
                known_bad += 1
                continue
            if uid not in done:
                try:
                    pre = Preprocessing.body().apply(scan.load())
                except (VolumeError, NoLungsFoundError) as exc:
                    log.warning("skipping DeepLesion chunk %s: %s", uid, exc)
                    _atomic_write(cache_dir / f"{uid}.skip", lambda fh, text=f"{exc}\n": fh.write(text.encode()))
                    failed += 1
                    continue
                finally:
                    if bar is not None:
                        bar.update(1)
                targets, excluded = scan.boxes_lps(variant)
                write_cached_scan(cache_dir, uid, pre, targets, excluded, DEEPLESION_SPLIT_CODES[scan.split],
                                  preprocessing="body")
            uids.append(uid)
    finally:
        if bar is not None:
            bar.close()
    if failed or known_bad:
        log.warning("DeepLesion %s: %d chunk(s) cached, %d unusable (%d found now, %d earlier: see *.skip in %s)",
                    "+".join(splits), len(uids), failed + known_bad, failed, known_bad, cache_dir)
    return uids
