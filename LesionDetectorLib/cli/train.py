"""``lesion-detector train``: train the 3D Aggregated Faster R-CNN on LUNA16-layout data.

    lesion-detector train --data LUNA16/ --out runs/a --preset luna16 --folds 0 --time-budget-min 600
    torchrun --nproc_per_node=4 -m LesionDetectorLib.cli.main train --data ... --out ...   # DDP

Scans are preprocessed once into ``<out>/cache`` (``--cache`` to share one). Validation scans
are ``--val-data`` or, with ``--folds``, the listed LUNA16 subsets (10-fold by subset) of
``--data``. The best model by validation CPM lands in ``<out>/model`` (weights + card).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

log = logging.getLogger("lesion-detector.train")


def register(subparsers) -> None:
    from ..model import ModelConfig

    p = subparsers.add_parser("train", help="train a model on LUNA16-layout data",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="LUNA16-layout directory (subset*/, annotations.csv...)")
    p.add_argument("--val-data", help="separate LUNA16-layout validation directory")
    p.add_argument("--out", required=True, help="run directory (log, checkpoint, model)")
    p.add_argument("--preset", default="luna16", choices=ModelConfig.preset_names())
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--iters", type=int, default=200, help="iterations per epoch")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--crop", type=int, choices=(64, 96, 128), help="cubic crop size (default: the preset's)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds", type=int, nargs="*", default=None,
                   help="LUNA16 subsets held out for validation (e.g. --folds 0)")
    p.add_argument("--time-budget-min", type=float, default=0.0, help="stop after this many minutes")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch default)")
    p.add_argument("--abs-epochs", type=int, default=None,
                   help="epochs of one Anchor Based Sampling round (default: 30 when the preset has ABS)")
    p.add_argument("--cache", help="preprocessed-scan cache directory (default <out>/cache)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..model import ModelConfig
    from ..training import TrainOptions, build_luna16_cache, read_cached_scan, train_model
    from ..training.distributed import init_distributed, shutdown

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if not Path(args.data).is_dir():
        raise FileNotFoundError(f"--data {args.data} is not a directory")
    overrides = {"crop_size": (args.crop,) * 3} if args.crop else {}
    config = ModelConfig.preset(args.preset, **overrides)
    info = init_distributed(args.device)
    try:
        out = Path(args.out)
        cache = Path(args.cache) if args.cache else out / "cache"
        if info.is_main:
            uids = build_luna16_cache(args.data, cache)
            val_uids = build_luna16_cache(args.val_data, cache) if args.val_data else []
        if info.enabled:
            torch.distributed.barrier()
            if not info.is_main:
                uids = build_luna16_cache(args.data, cache)
                val_uids = build_luna16_cache(args.val_data, cache) if args.val_data else []
        scans = [read_cached_scan(cache, u) for u in uids]
        if args.folds:
            held = set(args.folds)
            val = [s for s in scans if s.subset in held]
            scans = [s for s in scans if s.subset not in held]
        else:
            val = []
        val += [read_cached_scan(cache, u) for u in val_uids]
        if not scans:
            raise ValueError("no training scans left (check --data and --folds)")
        abs_epochs = args.abs_epochs if args.abs_epochs is not None else (30 if config.abs_rounds else 0)
        opts = TrainOptions(out_dir=str(out), epochs=args.epochs, iters_per_epoch=args.iters,
                            batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                            time_budget_min=args.time_budget_min, resume=args.resume, num_workers=args.workers,
                            abs_epochs=abs_epochs, progress_bar=not args.no_progress,
                            card={"name": f"{config.name}-{Path(args.data).name}",
                                  "training_data": {"directory": os.path.abspath(args.data),
                                                    "n_train_scans": len(scans), "n_val_scans": len(val),
                                                    "val_folds": args.folds or []}})
        summary = train_model(config, scans, val, opts, info)
        if info.is_main:
            print(json.dumps(summary))
    finally:
        shutdown(info)
    return 0
