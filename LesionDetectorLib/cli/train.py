"""``lesion-detector train``: train the 3D Aggregated Faster R-CNN on LUNA16-layout or DeepLesion data.

    lesion-detector train --data LUNA16/ --out runs/a --preset luna16 --folds 0 --time-budget-min 600
    lesion-detector train --dataset deeplesion --data DeepLesion/ --out runs/dl
    torchrun --nproc_per_node=4 -m LesionDetectorLib.cli.main train --data ... --out ...   # DDP

Scans are preprocessed once into ``<out>/cache`` (``--cache`` to share one).

``--dataset luna16`` (default): ``--data`` is a LUNA16-layout folder, scans are cropped to the
lungs. Validation scans are ``--val-data`` or, with ``--folds``, the listed LUNA16 subsets
(10-fold by subset) of ``--data``.

``--dataset deeplesion``: ``--data`` holds ``DL_info.csv`` and ``Images_png/``; each scan chunk is
rescaled to 1 mm and cropped to the body (no lung mask, the paper's section V-A). Training uses
DL_info.csv's Train split, validation its Val split; lesions >= 48 mm are excluded (marks on
them count neither way). The preset defaults to ``deeplesion`` (anchors {3,5,7}, {10,13,17},
{22,30,40}; 64x128x128 crops).

The best model by validation CPM lands in ``<out>/model`` (weights + card).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
from pathlib import Path
from typing import Dict, List, Tuple

log = logging.getLogger("lesion-detector.train")

DATASETS = ("luna16", "deeplesion")


def register(subparsers) -> None:
    from ..model import ModelConfig

    p = subparsers.add_parser("train", help="train a model on LUNA16-layout or DeepLesion data",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="luna16", choices=DATASETS,
                   help="layout of --data: luna16 (subset*/, annotations.csv...) or deeplesion "
                        "(DL_info.csv + Images_png/) (luna16)")
    p.add_argument("--data", required=True, help="data directory in the --dataset layout")
    p.add_argument("--val-data", help="separate LUNA16-layout validation directory (luna16 only)")
    p.add_argument("--out", required=True, help="run directory (log, checkpoint, model)")
    p.add_argument("--preset", default=None, choices=ModelConfig.preset_names(),
                   help="model configuration (default: luna16, or deeplesion with --dataset deeplesion)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--iters", type=int, default=200, help="iterations per epoch")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--crop", type=int, choices=(64, 96, 128), help="cubic crop size (default: the preset's)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    p.add_argument("--init", default=None,
                   help="model directory or bundled model name to start from: the frozen model of --fprn-phase, "
                        "or, without it, the weights that joint training fine-tunes (its config replaces --preset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--validate-every", type=int, default=1,
                   help="validate (and maybe save the best model) every N epochs and after the last (1)")
    p.add_argument("--folds", type=int, nargs="*", default=None,
                   help="LUNA16 subsets held out for validation (e.g. --folds 0; luna16 only)")
    p.add_argument("--time-budget-min", type=float, default=0.0, help="stop after this many minutes")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch default)")
    p.add_argument("--abs-epochs", type=int, default=None,
                   help="epochs of one Anchor Based Sampling round (default: 30 when the preset has ABS)")
    p.add_argument("--cache", help="preprocessed-scan cache directory (default <out>/cache)")
    p.add_argument("--hard-negatives", default=None,
                   help="hard_negatives.csv of 'lesion-detector labels' (rejected candidates, LPS): crops are "
                        "drawn around those on training scans with the ABS fraction")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    g = p.add_argument_group("FPRN phase on a frozen backbone (a CPU-affordable departure from joint training; "
                             "see LesionDetectorLib.training.fprn_phase)")
    g.add_argument("--fprn-phase", action="store_true",
                   help="train only the FPRN of --init on RoIs harvested once from the frozen backbone and RPN, "
                        "with balanced batches and online hard-negative mining")
    g.add_argument("--fprn-steps", type=int, default=150, help="training steps per FPRN-phase epoch (150)")
    g.add_argument("--fprn-batch", type=int, default=192, help="RoIs per FPRN-phase step (192)")
    g.add_argument("--fprn-scans", type=int, default=0,
                   help="harvest only the first N training scans (0: all; each costs one detection pass)")
    g.add_argument("--fprn-val-scans", type=int, default=0,
                   help="harvest only the first N validation scans for the epoch choice (0: all)")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="harvest precision (auto: bf16 on CPUs with AMX/AVX512-BF16, fp16 on CUDA)")
    p.set_defaults(func=run)


def check_args(args: argparse.Namespace) -> None:
    """Reject inconsistent options before anything is built (``ValueError``: exit code 2)."""
    data = Path(args.data)
    if not data.is_dir():
        raise FileNotFoundError(f"--data {args.data} is not a directory")
    if args.dataset == "deeplesion":
        if args.folds:
            raise ValueError("--folds selects LUNA16 subsets; DeepLesion validates on DL_info.csv's Val split")
        if args.val_data:
            raise ValueError("--val-data is for LUNA16 layouts; DeepLesion validates on DL_info.csv's Val split "
                             "of --data")
        missing = [name for name in ("DL_info.csv", "Images_png") if not (data / name).exists()]
        if missing:
            raise ValueError(f"--data {args.data} is not a DeepLesion folder: {' and '.join(missing)} missing "
                             f"(expected DL_info.csv and Images_png/<patient>_<study>_<series>/<slice>.png)")
    elif args.val_data and not Path(args.val_data).is_dir():
        raise FileNotFoundError(f"--val-data {args.val_data} is not a directory")
    if getattr(args, "hard_negatives", None) and not Path(args.hard_negatives).is_file():
        raise FileNotFoundError(f"--hard-negatives {args.hard_negatives} is not a file")
    for name in ("epochs", "iters", "batch_size", "fprn_steps", "fprn_batch", "validate_every"):
        if getattr(args, name, 1) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("fprn_scans", "fprn_val_scans"):
        if getattr(args, name, 0) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0")
    if getattr(args, "fprn_phase", False) and not args.init:
        raise ValueError("--fprn-phase needs --init MODEL (the trained model whose backbone is frozen)")


def build_caches(args: argparse.Namespace, cache: Path, progress: bool) -> Tuple[List[str], List[str]]:
    """Preprocess (or find cached) the training and validation scans; returns their UIDs.

    For LUNA16 the first list holds every scan of ``--data`` (``--folds`` splits it later) and
    the second those of ``--val-data``; for DeepLesion the Train and the Val split.
    """
    from ..training.cache import build_deeplesion_cache, build_luna16_cache

    if args.dataset == "deeplesion":
        return (build_deeplesion_cache(args.data, cache, splits=("train",), progress=progress),
                build_deeplesion_cache(args.data, cache, splits=("val",), progress=progress))
    uids = build_luna16_cache(args.data, cache)
    val_uids = build_luna16_cache(args.val_data, cache) if args.val_data else []
    return uids, val_uids


def training_data_card(args: argparse.Namespace, n_train: int, n_val: int) -> Dict[str, object]:
    """The model card's ``training_data``: what the model saw."""
    info: Dict[str, object] = {"dataset": args.dataset, "directory": os.path.abspath(args.data),
                               "n_train_scans": n_train, "n_val_scans": n_val}
    if args.dataset == "deeplesion":
        info.update({"train_split": "train", "val_split": "val",
                     "targets": "lesions < 48 mm (larger ones excluded: neither hit nor false positive)"})
    else:
        info.update({"val_folds": args.folds or [],
                     "val_directory": os.path.abspath(args.val_data) if args.val_data else None})
    return info


def preprocessing_card(args: argparse.Namespace) -> Dict[str, object]:
    """The model card's ``preprocessing``: how training scans were cropped, so inference can match it
    (``preprocess.Preprocessing``, the description the cache builders used and the Detector reads)."""
    from ..preprocess import Preprocessing

    return (Preprocessing.body() if args.dataset == "deeplesion" else Preprocessing()).to_card()


def run(args: argparse.Namespace) -> int:
    import torch

    from ..model import ModelConfig
    from ..training import TrainOptions, read_cached_scan, train_model
    from ..training.distributed import init_distributed, shutdown

    check_args(args)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    preset = args.preset or args.dataset
    if args.dataset == "deeplesion" and preset != "deeplesion":
        log.warning("training on DeepLesion with preset %r: the paper's DeepLesion anchors and 64x128x128 "
                    "crops are in preset 'deeplesion'", preset)
    overrides = {"crop_size": (args.crop,) * 3} if args.crop else {}
    if args.init and not args.fprn_phase:
        if args.preset:
            raise ValueError("--init takes the model's own config; do not pass --preset with it")
        from ..inference.detector import resolve_model_dir
        from ..model.card import read_card

        config = ModelConfig.from_dict(dict(read_card(resolve_model_dir(args.init))["config"], **overrides))
    else:
        config = ModelConfig.preset(preset, **overrides)
    info = init_distributed(args.device)
    try:
        out = Path(args.out)
        cache = Path(args.cache) if args.cache else out / "cache"
        if info.is_main:
            uids, val_uids = build_caches(args, cache, progress=not args.no_progress)
        if info.enabled:
            torch.distributed.barrier()
            if not info.is_main:
                uids, val_uids = build_caches(args, cache, progress=False)   # everything is cached now
        scans = [read_cached_scan(cache, u) for u in uids]
        if args.folds:
            held = set(args.folds)
            val = [s for s in scans if s.subset in held]
            scans = [s for s in scans if s.subset not in held]
        else:
            val = []
        val += [read_cached_scan(cache, u) for u in val_uids]
        if not scans:
            raise ValueError("no training scans left (check --data and --folds)" if args.dataset == "luna16" else
                             f"no usable scan chunk in DL_info.csv's Train split under {args.data}")
        if args.fprn_phase:
            return _run_fprn_phase(args, scans, val, out, info)
        abs_epochs = args.abs_epochs if args.abs_epochs is not None else (30 if config.abs_rounds else 0)
        opts = TrainOptions(out_dir=str(out), epochs=args.epochs, iters_per_epoch=args.iters,
                            batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                            time_budget_min=args.time_budget_min, resume=args.resume, num_workers=args.workers,
                            abs_epochs=abs_epochs, progress_bar=not args.no_progress,
                            hard_negatives_csv=str(args.hard_negatives or ""),
                            validate_every=args.validate_every, init_model=str(args.init or ""),
                            card={"name": f"{config.name}-{Path(args.data).resolve().name}",
                                  "training_data": training_data_card(args, len(scans), len(val)),
                                  "preprocessing": preprocessing_card(args),
                                  "training": {"command": shlex.join(["lesion-detector", *getattr(args, "argv", [])])}})
        summary = train_model(config, scans, val, opts, info)
        if info.is_main:
            print(json.dumps(summary))
    finally:
        shutdown(info)
    return 0


def _run_fprn_phase(args: argparse.Namespace, scans, val, out: Path, info) -> int:
    from ..training.fprn_phase import FprnPhaseOptions, run_fprn_phase

    if info.enabled:
        raise ValueError("--fprn-phase runs in one process (its harvest is cheap); start it without torchrun")
    opts = FprnPhaseOptions(epochs=args.epochs, steps_per_epoch=args.fprn_steps, batch_size=args.fprn_batch,
                            lr=args.lr, seed=args.seed, time_budget_min=args.time_budget_min,
                            precision=args.precision)
    if args.fprn_scans > 0:
        scans = scans[:args.fprn_scans]
    if args.fprn_val_scans > 0:
        val = val[:args.fprn_val_scans]
    summary = run_fprn_phase(args.init, scans, val, str(out), opts, device=info.device, precision=args.precision,
                             card_extra={"command": shlex.join(["lesion-detector", *getattr(args, "argv", [])])})
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, default=float))
    return 0
