"""The training loop: RPN first, then the FPRN joined (joint or alternating), on CPU, one GPU
or many (torchrun DDP); AMP on CUDA; resumable; stops at an epoch count or a wall-clock budget.

Schedule (section III-E): for the first ``rpn_first_fraction`` of training only the RPN losses
train; then ``joint`` sums all terms, ``alternating`` alternates RPN-only and FPRN-only
iterations. Training progress (for the focal loss T and the stage) is the larger of the
iteration fraction and the elapsed fraction of ``time_budget_min``; resuming with more epochs
or a larger budget lowers it again (the lr schedule continues from there) but never returns a
run whose FPRN has started to the RPN-only stage. Optimiser: AdamW with the
learning rate divided by 10 for the last 20 % of progress (the paper does not give one).

Outputs in ``out_dir``: ``train_log.jsonl`` (one line per epoch: loss terms, validation
metrics, timings), ``checkpoint/`` (last state, for ``resume``), ``model/`` (the best model by
validation CPM, or the last one without validation data, as ``save_pretrained`` writes it).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..inference.device import memory_format_for
from ..inference.engine import autocast_for, cpu_has_native_bf16, cpu_model_name
from ..model import ModelConfig, build_model, save_pretrained
from .cache import CachedScan
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import DistInfo, all_reduce_mean, wrap_model
from .sampler import CropDataset, collate

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    out_dir: str
    epochs: int = 50
    iters_per_epoch: int = 200
    batch_size: int = 1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    time_budget_min: float = 0.0        # > 0: stop (and finish the schedule) within this wall time
    resume: bool = False
    num_workers: int = 0
    amp: bool = True                    # fp16 autocast on CUDA, bf16 on CPUs with native bf16
    channels_last: bool = True          # the device's preferred layout (inference.device.memory_format_for)
    pos_fraction: float = 0.5
    validate_every: int = 1
    abs_epochs: int = 0                 # extra epochs of the Anchor Based Sampling round
    abs_hard_fraction: float = 0.3
    hard_negatives_csv: str = ""        # reviewers' rejected candidates (lesion-detector labels), world LPS
    progress_bar: bool = True
    init_model: str = ""                # fine-tune: start from this model directory or bundled name
    card: Dict[str, object] = field(default_factory=dict)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))


def hardware_description(device: torch.device) -> str:
    """What trained the model, for the card: accelerator or CPU model, threads, torch build."""
    if device.type == "cuda":
        what = f"{torch.cuda.get_device_name(device)} x{max(torch.cuda.device_count(), 1)} visible"
    else:
        what = f"CPU {cpu_model_name()}, {torch.get_num_threads()} threads"
    return f"{what}, torch {torch.__version__}"


def stage_at(config: ModelConfig, progress: float, iteration: int) -> str:
    if not config.fprn or progress < config.rpn_first_fraction:
        return "rpn"
    if config.training == "alternating":
        return "rpn" if iteration % 2 == 0 else "fprn"
    return "joint"


def mine_hard_regions(model, scans: List[CachedScan], config: ModelConfig, device, min_score: float = 0.5):
    """ABS: false positives (score >= ``min_score``, centre outside every nodule) and missed nodules,
    found by the detection engine (``validation.detect_cached``)."""
    from .validation import detect_cached, engine_settings_for

    settings = engine_settings_for(config)
    regions = []
    for i, scan in enumerate(scans):
        det = detect_cached(model, scan, settings, device)
        det = det[det[:, 4] >= min_score]
        for r in det:
            d = np.linalg.norm(scan.boxes[:, :3] - r[:3], axis=1) if len(scan.boxes) else np.array([np.inf])
            if not np.any(d < scan.boxes[:, 3] / 2 if len(scan.boxes) else False):
                regions.append((i, r[:3].copy()))
        for b in scan.boxes:
            hit = len(det) and np.any(np.linalg.norm(det[:, :3] - b[:3], axis=1) < b[3] / 2)
            if not hit:
                regions.append((i, b[:3].copy()))
    return regions


def train_model(config: ModelConfig, train_scans: List[CachedScan], val_scans: List[CachedScan],
                opts: TrainOptions, dist_info: Optional[DistInfo] = None) -> Dict[str, object]:
    """Train ``config`` on cached scans; returns a summary (best CPM, epochs, iterations, paths)."""
    info = dist_info or DistInfo()
    device = info.device
    out = Path(opts.out_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    _seed_everything(opts.seed + info.rank)
    model = build_model(config)
    init_card = _load_init(model, config, opts.init_model) if opts.init_model else None
    model = model.to(device)
    layout = memory_format_for(device) if opts.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    use_amp = opts.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    # bf16 autocast on CPUs that run bf16 natively (AMX / AVX512-BF16): ~2x faster convolutions;
    # bf16 keeps fp32's exponent range, so no loss scaling is needed.
    cpu_bf16 = opts.amp and device.type == "cpu" and cpu_has_native_bf16()
    precision = "fp16" if use_amp else ("bf16" if cpu_bf16 else "fp32")
    state_precision = precision
    stage = "rpn"
    state = {"epoch": 0, "iteration": 0, "best_cpm": -1.0, "elapsed_s": 0.0, "abs_done": False}
    if init_card is not None:
        # A trained FPRN is not sent back to the RPN-only stage, and the card records the start.
        state["fprn_started"] = bool(config.fprn)
        opts.card.setdefault("training", {})["init_model"] = {
            k: init_card.get(k) for k in ("name", "version", "sha256")}
    if opts.resume and (out / "checkpoint").is_dir():
        state, _ = load_checkpoint(out / "checkpoint", model, optimizer, scaler)
        log.info("resumed from epoch %d, iteration %d", state["epoch"], state["iteration"])
    ddp_model = wrap_model(model, info)

    total_epochs = opts.epochs + opts.abs_epochs
    total_iters = total_epochs * opts.iters_per_epoch
    budget_s = opts.time_budget_min * 60.0
    reviewed = []
    if opts.hard_negatives_csv:
        from ..export.review_labels import read_hard_negatives
        from .sampler import hard_regions_from_world

        reviewed = hard_regions_from_world(train_scans, read_hard_negatives(opts.hard_negatives_csv))
        log.info("%d reviewed hard negatives on the training scans", len(reviewed))
    dataset = CropDataset(train_scans, config.crop_size, opts.iters_per_epoch * opts.batch_size * info.world_size,
                          seed=opts.seed, pos_fraction=opts.pos_fraction, max_diameter=config.max_train_diameter,
                          reviewed_regions=reviewed, hard_fraction=opts.abs_hard_fraction if reviewed else 0.0)
    if state.get("abs_done") and state.get("abs_regions"):
        index = {scan.uid: i for i, scan in enumerate(train_scans)}
        dataset.hard_regions = [(index[r[0]], np.asarray(r[1:], dtype=np.float64))
                                for r in state["abs_regions"] if r[0] in index]
        dataset.hard_fraction = opts.abs_hard_fraction if dataset.hard_regions else 0.0
        log.info("ABS: %d hard regions from the checkpoint", len(dataset.hard_regions))
    # Every rank takes its own interleaved share of the same deterministic crop sequence.
    indices = list(range(info.rank, len(dataset), info.world_size))
    loader_kw = dict(batch_size=opts.batch_size, collate_fn=collate, num_workers=opts.num_workers,
                     sampler=indices, pin_memory=device.type == "cuda")
    log_path = out / "train_log.jsonl"
    start_time = time.time() - float(state["elapsed_s"])
    stop = False
    while state["epoch"] < total_epochs and not stop:
        epoch = state["epoch"]
        if epoch >= opts.epochs and opts.abs_epochs and not state["abs_done"]:
            dataset.hard_regions = mine_hard_regions(model, train_scans, config, device)
            dataset.hard_fraction = opts.abs_hard_fraction if dataset.hard_regions else 0.0
            state["abs_done"] = True
            # Kept in the checkpoint: mining is one detection pass per training scan (an hour on
            # 2 CPU cores for 60 scans), and a resumed ABS round must draw from the same regions.
            state["abs_regions"] = [[train_scans[i].uid, *(float(v) for v in c)] for i, c in dataset.hard_regions]
            log.info("ABS: %d hard regions", len(dataset.hard_regions))
        dataset.set_epoch(epoch)
        ddp_model.train()
        sums: Dict[str, float] = {}
        n = 0
        t_epoch = time.time()
        bar = None
        if opts.progress_bar and info.is_main:
            from tqdm import tqdm
            bar = tqdm(total=opts.iters_per_epoch, desc=f"epoch {epoch + 1}/{total_epochs}", leave=False)
        for images, targets in DataLoader(dataset, **loader_kw):
            it = state["iteration"]
            progress = it / max(total_iters, 1)
            if budget_s > 0:
                progress = max(progress, (time.time() - start_time) / budget_s)
            # A resumed run with a larger budget restarts the lr schedule from its new
            # progress, but never drops the FPRN again once it has trained.
            started = bool(state.get("fprn_started"))
            stage = stage_at(config, max(progress, config.rpn_first_fraction) if started else progress, it)
            state["fprn_started"] = started or stage != "rpn"
            model.set_stage(stage)
            model.set_progress(progress)
            lr = opts.lr * (0.1 if progress >= 0.8 else 1.0)
            for g in optimizer.param_groups:
                g["lr"] = lr
            images = images.to(device, non_blocking=True)
            images = images.contiguous(memory_format=layout)
            targets = [t.to(device) for t in targets]
            with autocast_for(precision, device):
                losses = ddp_model(images, targets)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            scaler.step(optimizer)
            scaler.update()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            n += 1
            state["iteration"] += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", stage=stage)
            if budget_s > 0 and time.time() - start_time >= budget_s:
                stop = True
                break
        if bar is not None:
            bar.close()
        state["epoch"] += 1
        state["elapsed_s"] = time.time() - start_time
        state["precision"] = state_precision
        record = {"epoch": state["epoch"], "iteration": state["iteration"], "stage": stage, "precision": state_precision,
                  "epoch_s": round(time.time() - t_epoch, 2)}
        record.update({k: all_reduce_mean(v / max(n, 1), info) for k, v in sums.items()})
        final = stop or state["epoch"] >= total_epochs
        if info.is_main:
            improved = False
            if val_scans and (state["epoch"] % opts.validate_every == 0 or final):
                metrics, result = _validation(model, val_scans, config, device)
                record.update({f"val_{k}": v for k, v in metrics.items()})
                if not math.isnan(metrics["cpm"]) and metrics["cpm"] > state["best_cpm"]:
                    state["best_cpm"] = metrics["cpm"]
                    improved = True
                    _save_model(model, out / "model", opts, state, result)
            elif not val_scans:
                _save_model(model, out / "model", opts, state, None)
            record["best"] = improved
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            save_checkpoint(out / "checkpoint", model, optimizer, state, scaler)
            log.info("epoch %d: %s", state["epoch"], {k: v for k, v in record.items() if k != "epoch"})
    return {"epochs": state["epoch"], "iterations": state["iteration"], "best_cpm": state["best_cpm"],
            "elapsed_s": time.time() - start_time, "out_dir": str(out), "model_dir": str(out / "model")}


def _load_init(model, config: ModelConfig, name_or_dir: str) -> Dict[str, object]:
    """Copy a trained model's weights into ``model`` (fine-tuning); its architecture must be ``config``'s."""
    from ..inference.detector import resolve_model_dir
    from ..model.card import load_pretrained

    trained, card = load_pretrained(resolve_model_dir(name_or_dir), "cpu")
    # The crop is a training choice, not part of the weights' architecture.
    have = {k: v for k, v in trained.config.to_dict().items() if k not in ("crop_size", "name")}
    want = {k: v for k, v in config.to_dict().items() if k not in ("crop_size", "name")}
    if have != want:
        diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        raise ValueError(f"--init {name_or_dir}: its architecture differs from this run's in {', '.join(diff)}; "
                         "fine-tuning takes the model's own config (omit --preset and --crop)")
    model.load_state_dict(trained.state_dict())
    log.info("fine-tuning from %s %s (sha256 %s...)", card.get("name"), card.get("version"),
             str(card.get("sha256"))[:12])
    return card


def _validation(model, val_scans, config, device):
    from .validation import engine_settings_for, validate

    return validate(model, val_scans, engine_settings_for(config), device)


def _save_model(model, directory: Path, opts: TrainOptions, state, result) -> None:
    card = dict(opts.card)
    card.setdefault("training_data", {})
    # fields the caller knows (e.g. the CLI's command line) come with opts.card["training"]
    card["training"] = dict(card.get("training") or {}, epochs=state["epoch"], iterations=state["iteration"],
                            seed=opts.seed, wall_time_min=round(float(state["elapsed_s"]) / 60.0, 1),
                            hardware=hardware_description(next(model.parameters()).device),
                            precision=state.get("precision", "fp32"),
                            options={k: v for k, v in asdict(opts).items() if k not in ("card", "out_dir")})
    if result is not None:
        from ..evaluation.operating_points import operating_points_dict

        card["validation"] = {"cpm": float(result.cpm),
                              "sensitivities": {f"{k:g}": float(v) for k, v in result.sensitivities.items()}}
        card["operating_points"] = operating_points_dict(result.operating_points)
    save_pretrained(model, directory, card)
