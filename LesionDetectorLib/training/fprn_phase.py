"""FPRN phase on a frozen backbone: hard-negative training that a 2-core CPU can afford.

The paper trains backbone, RPN and FPRN jointly (section III-E). On a CPU that costs ~5 s per
step of two 96^3 crops, and each step shows the FPRN only ~16 RoIs. This phase departs from
it on purpose (an option, ``lesion-detector train --fprn-phase``; joint training stays the
default): the backbone and the RPN of a trained model are **frozen**, and only the FPRN's
Local Magnification and classifier train, on many RoIs per step.

1. **Harvest** (:func:`harvest_rois`). Every scan runs through the detection engine's tiles
   (:class:`~LesionDetectorLib.inference.engine.DetectionEngine`: the inference tile,
   overlap and precision), the frozen backbone and the RPN in eval mode. The RoIs are the
   RPN's test-time proposals of every tile (exactly what the FPRN sees at inference), plus
   each nodule and ``jitters`` jittered copies of it (centre +-0.25 d, diameter x e^+-0.225, as
   in joint training). Labels follow the LUNA16 hit rule (centre inside a nodule's sphere);
   RoIs on excluded findings are dropped. What is stored per RoI is the output of
   :meth:`~LesionDetectorLib.model.fprn.AggregatedFPRN.windows`, the parameter-free crops
   the trainable part starts from (3 levels x 32 channels x 3^3, float16), so no training
   step runs the backbone again.
2. **Train** (:func:`train_fprn_phase`). Batches of ``batch_size`` RoIs: ``pos_fraction``
   positives, the rest negatives, half drawn uniformly and half by hardness (the current
   FPRN probability, refreshed every epoch): online hard-negative mining over every proposal
   of every scan, Anchor Based Sampling's idea at RoI level. BCE loss, AdamW. After every
   epoch the validation RoIs' loss and ranking (AUC) are measured; the best epoch's FPRN is
   kept.

The result is a model directory (``save_pretrained``) whose card records the phase.
Calibrating the score fusion and the operating points is the bundle script's job
(``evaluation.calibration``), on the validation scans, through the full detector.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_write_text
from ..inference.engine import EngineSettings, autocast_for, resolve_precision, valid_voxels
from ..inference.sliding_window import extract_tile
from .cache import CachedScan
from .sampler import PAD_VALUE

log = logging.getLogger(__name__)


@dataclass
class RoiSet:
    """Harvested RoIs: ``windows [K, L, C, n, n, n]`` float16, ``inner [K, L]``, ``labels [K]``
    (1 nodule, 0 not), ``rpn [K]`` the RPN probability (nan for added ground truths),
    ``scan [K]`` the index of the scan."""
    windows: torch.Tensor
    inner: Optional[torch.Tensor]
    labels: torch.Tensor
    rpn: torch.Tensor
    scan: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def save(self, path: Path, identity: Dict[str, object]) -> None:
        """Write the set as safetensors (atomically) with ``identity`` (what made it) as metadata."""
        from safetensors.torch import save

        tensors = {"windows": self.windows.contiguous(), "labels": self.labels.contiguous(),
                   "rpn": self.rpn.contiguous(), "scan": self.scan.contiguous()}
        if self.inner is not None:
            tensors["inner"] = self.inner.contiguous()
        from ..atomic import atomic_write_bytes

        atomic_write_bytes(Path(path), save(tensors, metadata={"identity": json.dumps(identity, sort_keys=True)}))

    @staticmethod
    def load(path: Path, identity: Dict[str, object]) -> Optional["RoiSet"]:
        """The set saved at ``path`` if it was made with the same ``identity``, else None."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("identity") != json.dumps(identity, sort_keys=True):
                return None
            t = {k: f.get_tensor(k) for k in f.keys()}
        return RoiSet(t["windows"], t.get("inner"), t["labels"], t["rpn"], t["scan"])

    @staticmethod
    def concat(parts: Sequence["RoiSet"]) -> "RoiSet":
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("no RoIs were harvested")
        inner = None if parts[0].inner is None else torch.cat([p.inner for p in parts])
        return RoiSet(torch.cat([p.windows for p in parts]), inner, torch.cat([p.labels for p in parts]),
                      torch.cat([p.rpn for p in parts]), torch.cat([p.scan for p in parts]))


def _jittered(gt: torch.Tensor, copies: int, generator: torch.Generator) -> torch.Tensor:
    if not copies or not len(gt):
        return gt.new_zeros((0, 4))
    j = gt.repeat(copies, 1)
    j[:, :3] += (torch.rand(j[:, :3].shape, generator=generator) - 0.5) * 0.5 * j[:, 3:4]
    j[:, 3] *= torch.exp((torch.rand(j[:, 3].shape, generator=generator) - 0.5) * 0.45)
    return j


def _hit(centres: torch.Tensor, spheres: torch.Tensor) -> torch.Tensor:
    """Bool ``[K]``: centre strictly inside any sphere ``(z, y, x, d)`` (the LUNA16 rule)."""
    if not len(spheres) or not len(centres):
        return torch.zeros(len(centres), dtype=torch.bool)
    return (torch.cdist(centres.double(), spheres[:, :3].double()) < spheres[:, 3].double() / 2).any(dim=1)


@torch.no_grad()
def harvest_rois(model: torch.nn.Module, scans: Sequence[CachedScan], settings: EngineSettings,
                 device: torch.device = torch.device("cpu"), jitters: int = 8, seed: int = 0,
                 progress: bool = False) -> RoiSet:
    """Frozen-backbone RoIs of ``scans`` (see the module docstring)."""
    from ..inference.engine import DetectionEngine
    from ..inference.device import memory_format_for

    model.eval()
    engine = DetectionEngine(model, settings, device)
    precision = resolve_precision(settings.precision, device)
    generator = torch.Generator().manual_seed(seed)
    parts: List[RoiSet] = []
    t0 = time.time()
    for si, scan in enumerate(scans):
        image = np.asarray(scan.image, dtype=np.float32)
        tiles, _ = engine.plan(image.shape, valid_voxels(image, PAD_VALUE))
        gt = torch.as_tensor(np.asarray(scan.boxes, dtype=np.float32)).reshape(-1, 4)
        excluded = torch.as_tensor(np.asarray(scan.excluded, dtype=np.float32)).reshape(-1, 4)
        for tile in tiles:
            x = torch.from_numpy(extract_tile(image, tile, PAD_VALUE))[None, None].to(device)
            x = x.contiguous(memory_format=memory_format_for(device))
            start = torch.tensor(tile.start, dtype=torch.float32)
            with autocast_for(precision, device):
                features = model.backbone(x)
                proposals, _ = model.rpn(features, None, 1.0, True)
            prop = proposals[0]
            boxes, levels, rpn = prop["boxes"].float().cpu(), prop["levels"].cpu(), prop["scores"].float().cpu()
            owned = torch.from_numpy(tile.owns((boxes[:, :3] + start).numpy()))
            boxes, levels, rpn = boxes[owned], levels[owned], rpn[owned]
            # nodules whose centre this tile owns, in tile coordinates, with jittered copies
            gt_here = gt[torch.from_numpy(tile.owns(gt[:, :3].numpy()))] if len(gt) else gt
            gt_tile = gt_here.clone()
            gt_tile[:, :3] -= start
            extra = torch.cat([gt_tile, _jittered(gt_tile, jitters, generator)])
            if len(extra):
                boxes = torch.cat([boxes, extra])
                levels = torch.cat([levels, model.reference_level(extra[:, 3]).cpu()])
                rpn = torch.cat([rpn, torch.full((len(extra),), float("nan"))])
            if not len(boxes):
                continue
            world = boxes[:, :3] + start
            labels = _hit(world, gt)
            keep = labels | ~_hit(world, excluded)          # marks on excluded findings count neither way
            boxes, levels, rpn, labels = boxes[keep], levels[keep], rpn[keep], labels[keep]
            if not len(boxes):
                continue
            with autocast_for(precision, device):
                windows, inner = model.fprn.windows(features, boxes.to(device), levels.to(device),
                                                    torch.zeros(len(boxes), dtype=torch.long, device=device))
            parts.append(RoiSet(windows.detach().to("cpu", torch.float16), None if inner is None else
                                inner.detach().float().cpu(), labels.to(torch.float32), rpn,
                                torch.full((len(boxes),), si, dtype=torch.long)))
        if progress:
            n = sum(len(p) for p in parts)
            log.info("harvest: scan %d/%d (%s), %d RoIs so far, %.0f s", si + 1, len(scans), scan.uid[-12:], n,
                     time.time() - t0)
    return RoiSet.concat(parts)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tie correction); nan without both classes."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels) > 0.5
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e - 1) / 2.0 + 1.0
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclass
class FprnPhaseOptions:
    epochs: int = 8
    steps_per_epoch: int = 150
    batch_size: int = 192
    pos_fraction: float = 0.25
    hard_fraction: float = 0.5          # of the negatives: drawn by current FPRN probability
    lr: float = 3e-4
    weight_decay: float = 1e-4
    seed: int = 0
    time_budget_min: float = 0.0
    precision: str = "auto"             # bf16 autocast on CPUs with native bf16 (see inference.engine)


@torch.no_grad()
def fprn_probabilities(fprn: torch.nn.Module, rois: RoiSet, batch: int = 2048, precision: str = "fp32") -> np.ndarray:
    was = fprn.training
    fprn.eval()
    out = []
    device = torch.device("cpu")
    try:
        for i in range(0, len(rois), batch):
            inner = None if rois.inner is None else rois.inner[i:i + batch]
            with autocast_for(precision, device):
                logits = fprn.classify(rois.windows[i:i + batch].float(), inner)
            out.append(torch.sigmoid(logits.float()).numpy())
    finally:
        fprn.train(was)
    return np.concatenate(out) if out else np.zeros(0)


def _draw(rng: np.random.Generator, pool: np.ndarray, n: int, weights: Optional[np.ndarray] = None) -> np.ndarray:
    if n <= 0 or not len(pool):
        return np.zeros(0, dtype=np.int64)
    if weights is None:
        return pool[rng.integers(len(pool), size=n)]
    p = weights / weights.sum()
    return pool[rng.choice(len(pool), size=n, p=p)]


def train_fprn_phase(model: torch.nn.Module, train: RoiSet, val: Optional[RoiSet],
                     opts: FprnPhaseOptions) -> Dict[str, object]:
    """Train ``model.fprn`` in place on harvested RoIs; returns the log (per epoch: loss,
    validation loss and AUC) and leaves the best epoch's FPRN weights in the model."""
    fprn = model.fprn
    precision = resolve_precision(opts.precision, torch.device("cpu"))
    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    optimizer = torch.optim.AdamW(fprn.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    labels = train.labels.numpy() > 0.5
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    if not len(pos) or not len(neg):
        raise ValueError(f"the FPRN phase needs positive and negative RoIs, got {len(pos)} and {len(neg)}")
    n_pos = max(1, int(round(opts.batch_size * opts.pos_fraction)))
    n_neg = opts.batch_size - n_pos
    history: List[Dict[str, float]] = []

    def evaluate() -> Dict[str, float]:
        if val is None or not len(val):
            return {}
        p = fprn_probabilities(fprn, val)
        y = val.labels.numpy()
        pc = np.clip(p, 1e-6, 1 - 1e-6)
        loss = float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc)))
        return {"val_loss": loss, "val_auc": auc(p, y)}

    best = dict(evaluate(), epoch=0)
    history.append(best)
    best_state = copy.deepcopy(fprn.state_dict())
    start = time.time()
    for epoch in range(1, opts.epochs + 1):
        hardness = fprn_probabilities(fprn, RoiSet(train.windows[neg], None if train.inner is None else
                                                   train.inner[neg], train.labels[neg], train.rpn[neg],
                                                   train.scan[neg]), precision=precision)
        weights = hardness + 1e-3
        fprn.train()
        sums, n = 0.0, 0
        for _ in range(opts.steps_per_epoch):
            n_hard = int(round(n_neg * opts.hard_fraction))
            idx = np.concatenate([_draw(rng, pos, n_pos), _draw(rng, neg, n_neg - n_hard),
                                  _draw(rng, neg, n_hard, weights)])
            t = torch.from_numpy(idx)
            inner = None if train.inner is None else train.inner[t]
            with autocast_for(precision, torch.device("cpu")):
                logits = fprn.classify(train.windows[t].float(), inner)
            loss = F.binary_cross_entropy_with_logits(logits.float(), train.labels[t])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(fprn.parameters(), 10.0)
            optimizer.step()
            sums += float(loss.detach())
            n += 1
            if opts.time_budget_min > 0 and time.time() - start > opts.time_budget_min * 60:
                break
        record = dict(evaluate(), epoch=epoch, loss=sums / max(n, 1), elapsed_s=round(time.time() - start, 1))
        history.append(record)
        log.info("fprn phase epoch %d: %s", epoch, record)
        better = ("val_auc" not in record or not math.isfinite(best.get("val_auc", float("nan")))
                  or record["val_auc"] > best["val_auc"])
        if better:
            best = record
            best_state = copy.deepcopy(fprn.state_dict())
        if opts.time_budget_min > 0 and time.time() - start > opts.time_budget_min * 60:
            break
    fprn.load_state_dict(best_state)
    fprn.eval()
    return {"history": history, "best": best, "options": asdict(opts),
            "n_train_rois": len(train), "n_train_positive": int(labels.sum()),
            "n_val_rois": len(val) if val is not None else 0}


def run_fprn_phase(init_model: str, train_scans: Sequence[CachedScan], val_scans: Sequence[CachedScan],
                   out_dir: str, opts: FprnPhaseOptions, device: torch.device = torch.device("cpu"),
                   precision: str = "auto", card_extra: Optional[Dict[str, object]] = None) -> Dict[str, object]:
    """Load ``init_model`` (a model directory or bundled name), harvest, train, save to ``out_dir/model``."""
    from ..inference.detector import resolve_model_dir
    from ..model import load_pretrained, save_pretrained

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, card = load_pretrained(resolve_model_dir(init_model), device)
    if model.fprn is None:
        raise ValueError("the FPRN phase needs a model with an FPRN branch")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.fprn.parameters():
        p.requires_grad_(True)
    settings = EngineSettings.from_card(card, precision=precision)
    t0 = time.time()

    def harvested(name: str, scans: Sequence[CachedScan], jitters: int, seed: int) -> Optional[RoiSet]:
        # A harvest costs one detection pass per scan: it is kept in the run folder and reused by a
        # rerun with the same model, scans and settings (e.g. to try other training options).
        if not scans:
            return None
        identity = {"model_sha256": card.get("sha256"), "scans": [s.uid for s in scans], "jitters": jitters,
                    "seed": seed, "tile": list(settings.tile), "overlap": settings.overlap,
                    "precision": resolve_precision(precision, device)}
        path = out / f"harvest_{name}.safetensors"
        rois = RoiSet.load(path, identity)
        if rois is None:
            rois = harvest_rois(model, scans, settings, device, jitters=jitters, seed=seed, progress=True)
            rois.save(path, identity)
        else:
            log.info("reusing %d harvested %s RoIs from %s", len(rois), name, path)
        return rois

    train = harvested("train", train_scans, 8, opts.seed)
    val = harvested("val", val_scans, 0, opts.seed + 1)
    harvest_s = time.time() - t0
    log.info("harvested %d training RoIs (%d positive), %d validation RoIs in %.0f s", len(train),
             int(train.labels.sum()), len(val) if val is not None else 0, harvest_s)
    summary = train_fprn_phase(model, train, val, opts)
    summary["harvest_s"] = round(harvest_s, 1)
    summary["train_s"] = round(time.time() - t0 - harvest_s, 1)
    new_card = {k: v for k, v in card.items() if k not in ("sha256", "weights_file", "operating_points",
                                                            "validation", "test")}
    phase = {"init_model": {"name": card.get("name"), "version": card.get("version"), "sha256": card.get("sha256")},
             "frozen": "backbone and RPN", "n_train_scans": len(train_scans), "n_val_scans": len(val_scans),
             "precision": resolve_precision(precision, device),
             **{k: v for k, v in summary.items() if k != "history"}}
    phase.update(card_extra or {})
    new_card["training"] = dict(card.get("training") or {}, fprn_phase=phase)
    save_pretrained(model.cpu(), out / "model", new_card)
    atomic_write_text(out / "fprn_phase_log.json", json.dumps(summary, indent=2, default=float) + "\n")
    return summary
