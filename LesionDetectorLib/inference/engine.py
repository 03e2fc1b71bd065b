"""The one detection engine: tiles -> model -> owned centres -> score fusion -> NMS -> one mark per lesion.

Everything that turns a preprocessed image into ranked marks runs this code: the
:class:`~LesionDetectorLib.inference.Detector` (CLI ``detect``, ``demo``, the Slicer module),
validation during training, Anchor Based Sampling, operating-point calibration and
``evaluate --model``. A threshold measured on validation data is therefore a threshold
applied by the detector.

Steps of :meth:`DetectionEngine.detect` on an image ``[z, y, x]`` (1 mm, values in [0, 1]):

1. plan tiles (:mod:`.sliding_window`); tiles whose *owned* region holds no valid voxel
   (``valid``: the unpadded anatomy around the lungs) are skipped, since no mark of theirs
   could be kept;
2. forward the tiles in batches (:class:`~.device.BatchRunner`: OOM fallback), under bf16
   autocast on CPUs with native bf16 (AMX / AVX512-BF16) or fp16 on CUDA when ``precision``
   asks for it;
3. per tile, keep the detections whose centre the tile owns and that lie inside the image;
4. fuse the RPN and FPRN probabilities (:class:`ScoreFusion`; the paper's mean by default);
5. 3-D NMS on the fused score, then :func:`merge_inside`: a mark whose centre lies inside a
   higher-ranked mark's sphere is the same lesion seen twice (large nodules give several
   proposals whose cubes overlap too little for NMS) and is dropped.

Rows are ``[K, 7]`` = ``(z, y, x, d, score, score_rpn, score_fprn)`` in image voxels, by
decreasing fused ``score``.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .device import BatchRunner, memory_format_for
from .sliding_window import Tile, candidate_tile_sizes, extract_tile, plan_tiles

ROW_COLUMNS = ("z", "y", "x", "d", "score", "score_rpn", "score_fprn")
FUSION_METHODS = ("mean", "fprn", "geometric", "logistic")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_EPS = 1e-6
#: Fixed cost of one tile beyond its convolutions (FPRN, NMS, Python), in voxel-equivalents of
#: the backbone: on 2 CPU cores a 128^3 tile is ~0.42 s and this overhead ~0.05 s.
_TILE_OVERHEAD_VOXELS = 250_000


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class ScoreFusion:
    """How a mark's final score comes from its RPN and FPRN probabilities.

    * ``mean``: ``(rpn + fprn) / 2``, the paper's rule (section III-C);
    * ``fprn``: the FPRN probability alone (the RPN only proposes);
    * ``geometric``: ``sqrt(rpn * fprn)``: a mark must convince both networks;
    * ``logistic``: ``sigmoid(a * logit(rpn) + b * logit(fprn) + c)``, weights fitted on
      validation marks labelled by the LUNA16 hit rule (a calibrated probability).

    The model card's ``inference.score_fusion`` names the rule and its weights; a card
    without it uses ``mean``.
    """
    method: str = "mean"
    weights: Tuple[float, float, float] = (1.0, 1.0, 0.0)

    def __post_init__(self) -> None:
        if self.method not in FUSION_METHODS:
            raise ValueError(f"score fusion must be one of {FUSION_METHODS}, got {self.method!r}")
        w = tuple(float(v) for v in self.weights)
        if len(w) != 3 or not all(math.isfinite(v) for v in w):
            raise ValueError(f"score fusion weights must be 3 finite numbers, got {self.weights!r}")
        object.__setattr__(self, "weights", w)

    def __call__(self, rpn: np.ndarray, fprn: np.ndarray) -> np.ndarray:
        rpn = np.asarray(rpn, dtype=np.float64)
        fprn = np.asarray(fprn, dtype=np.float64)
        if self.method == "mean":
            return (rpn + fprn) / 2
        if self.method == "fprn":
            return fprn.copy()
        if self.method == "geometric":
            return np.sqrt(np.clip(rpn, 0, 1) * np.clip(fprn, 0, 1))
        a, b, c = self.weights
        return 1.0 / (1.0 + np.exp(-(a * _logit(rpn) + b * _logit(fprn) + c)))

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"method": self.method}
        if self.method == "logistic":
            out["weights"] = list(self.weights)
        return out

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> "ScoreFusion":
        spec = (card.get("inference") or {}).get("score_fusion")
        if spec is None:
            return cls()
        if isinstance(spec, str):
            return cls(spec)
        if not isinstance(spec, Mapping):
            raise ValueError(f"inference.score_fusion must be a name or an object, got {type(spec).__name__}")
        return cls(str(spec.get("method", "mean")), tuple(spec.get("weights", (1.0, 1.0, 0.0))))


def cpu_model_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for cards and benchmark tables."""
    import platform

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return name


def cpu_has_native_bf16() -> bool:
    """True when this CPU executes bf16 matrix math natively (AMX-BF16 or AVX512-BF16), where
    oneDNN's bf16 convolutions are ~2x faster than fp32; elsewhere bf16 is emulated and slower."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``fp16`` on CUDA, ``bf16`` on a CPU with native bf16, else ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        if precision == "fp16" and device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
        return precision
    if device.type == "cuda":
        return "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast_for(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class EngineSettings:
    """``tile`` (D, H, W) voxels, multiples of 16; ``overlap`` voxels shared by neighbours;
    ``nms_iou``; ``fusion``; ``merge_inside`` (one mark per lesion); ``precision`` (see
    :func:`resolve_precision`); ``skip_empty_tiles`` (tiles owning no valid voxel).

    ``max_tile`` (None: every tile is ``tile``) lets the engine fit the tile size to each image:
    the cheapest grid of equal tiles no larger than ``max_tile`` (see
    :func:`~.sliding_window.candidate_tile_sizes`), with the per-tile candidate caps scaled by
    the tile's volume over ``tile``'s, at least 1 (:func:`candidate_budget`,
    :meth:`AggregatedFasterRCNN.test_budget`)."""
    tile: Tuple[int, int, int] = (128, 128, 128)
    overlap: int = 32
    nms_iou: float = 0.1
    fusion: ScoreFusion = field(default_factory=ScoreFusion)
    merge_inside: bool = True
    precision: str = "fp32"
    skip_empty_tiles: bool = True
    max_tile: Optional[Tuple[int, int, int]] = None

    def __post_init__(self) -> None:
        tile = _tile_triple(self.tile, "tile")
        object.__setattr__(self, "tile", tile)
        if self.max_tile is not None:
            object.__setattr__(self, "max_tile", _tile_triple(self.max_tile, "max_tile"))
        if int(self.overlap) < 0:
            raise ValueError(f"overlap must be >= 0, got {self.overlap}")
        # A tile at least as small as the overlap asked for steps by one voxel, never by zero.
        object.__setattr__(self, "overlap", min(int(self.overlap), min(tile) - 1))
        if not 0.0 <= float(self.nms_iou) <= 1.0:
            raise ValueError(f"nms_iou must be in [0, 1], got {self.nms_iou}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    @classmethod
    def from_card(cls, card: Mapping[str, Any], **overrides: Any) -> "EngineSettings":
        """The settings a model card asks for (``inference.tile``/``overlap``/``score_fusion``,
        ``config.final_nms_iou``); ``overrides`` that are not None win."""
        config = dict(card.get("config") or {})
        inference = dict(card.get("inference") or {})
        values: Dict[str, Any] = {
            "tile": inference.get("tile") or config.get("crop_size", (128, 128, 128)),
            "overlap": int(inference.get("overlap", 32)),
            "nms_iou": float(config.get("final_nms_iou", 0.1)),
            "fusion": ScoreFusion.from_card(card),
            "merge_inside": bool(inference.get("merge_inside", True)),
            "max_tile": inference.get("max_tile"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _tile_triple(value: Any, name: str) -> Tuple[int, int, int]:
    triple = (int(value),) * 3 if isinstance(value, (int, np.integer)) else tuple(int(t) for t in value)
    if len(triple) != 3 or any(t < 16 or t % 16 for t in triple):
        raise ValueError(f"{name} sizes must be 3 multiples of 16 (the backbone's stride), got {value}")
    return triple


def merge_inside(rows: np.ndarray) -> np.ndarray:
    """Drop every mark whose centre lies inside a higher-ranked kept mark's sphere
    (distance < that mark's radius). ``rows`` must be sorted by decreasing score."""
    if len(rows) < 2:
        return rows
    keep: List[int] = []
    centres = rows[:, :3]
    for i in range(len(rows)):
        if keep:
            k = np.asarray(keep)
            dist = np.linalg.norm(centres[k] - centres[i], axis=1)
            if np.any(dist < rows[k, 3] / 2):
                continue
        keep.append(i)
    return rows[np.asarray(keep)]


def postprocess_rows(rows: np.ndarray, settings: EngineSettings) -> np.ndarray:
    """Fusion, NMS and merging of raw per-tile rows ``[K, 7]`` (score column recomputed)."""
    from ..model.nms import nms_3d

    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
    if not len(rows):
        return rows
    rows = rows.copy()
    rows[:, 4] = np.clip(settings.fusion(rows[:, 5], rows[:, 6]), 0.0, 1.0)
    keep = nms_3d(torch.from_numpy(rows[:, :4]).float(), torch.from_numpy(rows[:, 4]).float(),
                  settings.nms_iou).numpy()
    rows = rows[keep]
    rows = rows[np.argsort(-rows[:, 4], kind="stable")]
    if settings.merge_inside:
        rows = merge_inside(rows)
    return rows


@dataclass
class EngineResult:
    rows: np.ndarray                 # [K, 7], see ROW_COLUMNS
    raw_rows: np.ndarray             # [R, 7] every owned detection before fusion, NMS and merging
    n_tiles: int                     # tiles run
    n_tiles_planned: int             # tiles before skipping empty ones
    device: torch.device
    precision: str
    notes: List[str]
    tile: Tuple[int, int, int] = (128, 128, 128)   # the tile size run (fitted with max_tile)


class DetectionEngine:
    """Runs an eval-mode model over whole images with :class:`EngineSettings`.

    ``on_device_change(device)`` is called when the OOM fallback moves to the CPU (the owner
    moves its model; the engine follows ``self.model``)."""

    def __init__(self, model: torch.nn.Module, settings: EngineSettings, device: torch.device,
                 batch_size: int = 1, on_device_change: Optional[Callable[[torch.device], None]] = None) -> None:
        self.model = model
        self.settings = settings
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self._on_device_change = on_device_change

    def plan(self, shape_zyx: Sequence[int], valid: Optional[np.ndarray] = None) -> Tuple[List[Tile], int]:
        """Tiles to run and the number planned before skipping those that own no valid voxel.

        With ``max_tile`` every candidate size is planned and the one with the least work (tiles
        run times their voxels, plus a fixed cost per tile) wins; ties keep the smaller tile."""
        s = self.settings
        sizes = [s.tile] if s.max_tile is None else candidate_tile_sizes(shape_zyx, s.max_tile, s.overlap)
        best: Optional[Tuple[float, List[Tile], int]] = None
        for size in sizes:
            tiles = plan_tiles(shape_zyx, size, s.overlap)
            planned = len(tiles)
            if valid is not None and s.skip_empty_tiles:
                tiles = [t for t in tiles if _owns_any(t, valid)]
            cost = len(tiles) * (float(np.prod(size)) + _TILE_OVERHEAD_VOXELS)
            if best is None or cost < best[0]:
                best = (cost, tiles, planned)
        return best[1], best[2]

    def _forward(self, image: np.ndarray, pad_value: float, tiles: Sequence[Tile], device: torch.device,
                 precision: str) -> List[np.ndarray]:
        batch = torch.from_numpy(np.stack([extract_tile(image, t, pad_value) for t in tiles]))[:, None]
        batch = batch.to(device, non_blocking=True).contiguous(memory_format=memory_format_for(device))
        budget = candidate_budget(tiles[0].size, self.settings.tile)
        with torch.inference_mode(), autocast_for(precision if device.type == self.device.type else "fp32", device), \
                _test_budget(self.model, budget):
            outputs = self.model(batch)
        del batch
        if len(outputs) != len(tiles):
            from ..errors import ModelError

            raise ModelError(f"the model returned {len(outputs)} results for {len(tiles)} tiles")
        shape = np.asarray(image.shape)
        results = []
        for tile, out in zip(tiles, outputs):
            boxes = out["boxes"].detach().float().cpu().numpy().reshape(-1, 4).astype(np.float64)
            cols = [out[k].detach().float().cpu().numpy().reshape(-1) for k in ("scores", "scores_rpn", "scores_fprn")]
            rows = np.concatenate([boxes, np.stack(cols, axis=1)], axis=1) if len(boxes) else np.zeros((0, 7))
            rows[:, :3] += np.asarray(tile.start, dtype=np.float64)
            # Padding beyond the image is not anatomy: a centre there cannot be a lesion.
            inside = np.all((rows[:, :3] >= -0.5) & (rows[:, :3] <= shape - 0.5), axis=1)
            results.append(rows[tile.owns(rows[:, :3]) & inside])
        return results

    def detect(self, image: np.ndarray, pad_value: float,
               after_batch: Optional[Callable[[int, int], None]] = None) -> EngineResult:
        """Marks of ``image`` (see the module docstring). ``after_batch(done, total)`` runs once
        before the first batch (done = 0) and after every batch (progress and cancellation: it may
        raise)."""
        image = np.asarray(image)
        tiles, planned = self.plan(image.shape, valid_voxels(image, pad_value))
        precision = resolve_precision(self.settings.precision, self.device)
        runner = BatchRunner(self.device, self.batch_size, on_device_change=self._device_changed)
        hook = (lambda n: after_batch(n, len(tiles))) if after_batch else (lambda n: None)
        hook(0)
        per_tile = runner.run(tiles, lambda chunk, dev: self._forward(image, pad_value, chunk, dev, precision), hook)
        rows = np.concatenate(per_tile, axis=0) if per_tile else np.zeros((0, 7))
        return EngineResult(rows=postprocess_rows(rows, self.settings), raw_rows=rows, n_tiles=len(tiles),
                            n_tiles_planned=planned,
                            device=runner.device, precision=precision if runner.device == self.device else "fp32",
                            notes=list(runner.notes),
                            tile=tuple(tiles[0].size) if tiles else self.settings.tile)

    def _device_changed(self, device: torch.device) -> None:
        self.device = device
        if self._on_device_change is not None:
            self._on_device_change(device)
        else:
            self.model = self.model.to(device=device, memory_format=memory_format_for(device))


def candidate_budget(tile_size: Sequence[int], reference: Sequence[int]) -> float:
    """How many reference tiles' worth of candidates a tile of ``tile_size`` gets: its volume over
    the reference's, never less than one (a small image fitted into a small tile keeps the caps of
    a whole reference tile instead of a few marks)."""
    return max(1.0, float(np.prod(tile_size)) / float(np.prod(reference)))


def _test_budget(model: torch.nn.Module, scale: float):
    """The model's candidate caps scaled for a tile of ``scale`` reference volumes (models without
    :meth:`test_budget`, e.g. test stand-ins, run as they are)."""
    inner = getattr(model, "module", model)
    if scale == 1.0 or not hasattr(inner, "test_budget"):
        return contextlib.nullcontext()
    return inner.test_budget(scale)


def valid_voxels(image: np.ndarray, pad_value: float) -> np.ndarray:
    """The voxels that show anatomy: preprocessing writes exactly ``pad_value`` beyond its
    context band around the lungs (compared in the image's own dtype: caches hold float16)."""
    image = np.asarray(image)
    return image != np.asarray(pad_value, dtype=image.dtype)


def _owns_any(tile: Tile, valid: np.ndarray) -> bool:
    """Whether any voxel centre ``i`` with ``owned_lo <= i < owned_hi`` is valid."""
    sl = []
    for lo, hi, n in zip(tile.owned_lo, tile.owned_hi, valid.shape):
        a = 0 if not math.isfinite(lo) else min(max(int(math.ceil(lo)), 0), n)
        b = n if not math.isfinite(hi) else min(max(int(math.ceil(hi)), 0), n)
        sl.append(slice(a, b))
    sub = valid[tuple(sl)]
    return bool(sub.size and sub.any())
