"""``lesion-detector detect``: run the detector on one or more scans and write the exports.

The argparse shell of :class:`LesionDetectorLib.batch.ScanBatchRunner`, which owns the per-scan
logic: one all-or-nothing folder ``<out>/<scan name>/`` per scan holding ``findings.json``
(always), ``findings.mrk.json``, ``luna16.csv``, the nodule masks ``nodule_masks.seg.nrrd`` and,
for DICOM input, ``findings_sr.dcm`` and the DICOM SEG ``nodule_masks_seg.dcm``;
``<out>/luna16_submission.csv`` over every scan of the output folder. Scans already done are
skipped unless ``--overwrite``. A bad scan is reported and the run goes on; the exit code is 2
when any input failed on bad input, 1 on an internal error.

Option values are checked while parsing (argparse ``type=``), the output folder before any
scan is read, and every scan before the model runs.

``--progress jsonl`` prints the event protocol of ``docs/architecture.md`` on stdout.

``torchrun --nproc_per_node=N -m LesionDetectorLib.cli.main detect ...`` shards the scans over
N processes (GPUs), one merged submission (:mod:`LesionDetectorLib.batch_shard`).
"""
from __future__ import annotations

import functools

import argparse
from pathlib import Path

from ..batch import (FORMATS, BatchOptions, ScanBatchRunner, EventSink, parse_formats)
from .options import (add_device, add_model, add_progress, output_folder, positive_int, probability,
                      run_with_progress)

DEFAULT_OUT = "lesion-detector-results"


def format_list(text: str):
    try:
        return parse_formats(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# ------------------------------------------------------------------------------------- CLI
def register(subparsers) -> None:
    p = subparsers.add_parser(
        "detect", help="detect lung nodules in CT scans and write Slicer / LUNA16 / JSON / DICOM SR results",
        description="Detect lesion candidates in one or more CT scans (DICOM series folders, .mhd, .nrrd, "
                    ".nii[.gz], or folders of them). Results go to one folder per scan inside --out.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="scan file, DICOM series folder, or folder of scans")
    p.add_argument("--out", default=Path(DEFAULT_OUT), type=output_folder,
                   help=f"output folder (default ./{DEFAULT_OUT})")
    add_model(p)
    add_device(p)
    from ..inference.patient_flag import DEFAULT_OPERATING_POINT, OPERATING_POINT_NAMES

    p.add_argument("--operating-point", default=DEFAULT_OPERATING_POINT, choices=OPERATING_POINT_NAMES,
                   help=f"model-card operating point deciding the patient flag (default {DEFAULT_OPERATING_POINT})")
    p.add_argument("--format", default="auto", type=format_list,
                   help=f"comma-separated exports: {', '.join(FORMATS)} (sr and seg for DICOM input only, need "
                        "the 'dicom' extra; seg and seg.nrrd hold the characterized nodules' masks); 'auto' "
                        "(default) = all of them, sr and seg when highdicom is installed; findings.json is "
                        "always written")
    p.add_argument("--series-uid", help="DICOM series to read when a folder holds several; also the LUNA16 "
                                        "seriesuid when the scan has none (single input only)")
    p.add_argument("--lung-mask", type=Path, help="lung mask / LUNA16 seg-lungs file (single input only)")
    p.add_argument("--allow-non-ct", action="store_true",
                   help="also read series whose Modality is not CT (the model was trained on CT only)")
    add_progress(p)
    p.add_argument("--overwrite", action="store_true", help="redo scans that already have results")
    p.add_argument("--min-score", type=probability, default=None,
                   help="list candidates down to this score in [0, 1] (default 0.269, or the operating point "
                        "if lower)")
    p.add_argument("--max-candidates", type=positive_int, default=100,
                   help="at most this many candidates per scan, >= 1 (100)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="tiles per forward pass, >= 1 (default 2 GPU / 1 CPU)")
    p.add_argument("--no-characterize", action="store_true",
                   help="skip nodule characterization (segmentation, size, type, Lung-RADS) after detection")
    p.set_defaults(func=run)


def load_detector(model: str, device: str = "auto", batch_size=None):
    """The detector ``detect`` and ``demo`` run (one place, so tests can stand a fake one in)."""
    from ..inference import Detector

    return Detector.from_pretrained(model, device=device, batch_size=batch_size)


def _import_torch_ahead() -> None:
    """Import torch (0.8 s) in a thread while this one plans, checks and reads the first scan (GDCM
    decoding releases the GIL); the model load waits for it. Imported after the read instead,
    beside the preprocessing thread, it slowed that thread by 0.6 s; imported before the read,
    nothing overlapped it. ``LESION_DETECTOR_IMPORT_AHEAD=0`` imports it here and now. (Not under
    torchrun, whose ranks import torch at once for their process group.)"""
    import os
    import threading

    def target() -> None:
        try:
            import torch  # noqa: F401
        except Exception:  # noqa: BLE001 - the model load imports it again and reports the failure
            pass

    if os.environ.get("LESION_DETECTOR_IMPORT_AHEAD", "1") == "1":
        threading.Thread(target=target, name="lesion-detector-import", daemon=True).start()
    else:
        target()


def load_preprocessing(model: str):
    """The model card's preprocessing, read without torch (the runner's prefetch), or None when
    the card cannot be read: the detector's own loading then reports why."""
    from ..errors import ModelError
    from ..model.card_file import read_card
    from ..preprocess import Preprocessing
    from ..resources import resolve_model_dir

    try:
        return Preprocessing.from_card(read_card(resolve_model_dir(model)))
    except (ModelError, ValueError, TypeError):
        return None


def options_from_args(args) -> BatchOptions:
    formats = args.format if isinstance(args.format, list) else parse_formats(args.format)
    return BatchOptions(formats=formats, overwrite=args.overwrite, series_uid=args.series_uid,
                        lung_mask=args.lung_mask, operating_point=args.operating_point, min_score=args.min_score,
                        max_candidates=args.max_candidates, allow_non_ct=args.allow_non_ct)


def characterization_step(volume, findings, workers=None):
    """The post-detection step: characterize in place and hand the masks to the exporters
    (``nodule_masks.seg.nrrd``, DICOM SEG); ``workers`` share the candidates out."""
    from ..characterization import characterize_in_place

    return {"masks": characterize_in_place(volume, findings, workers=workers)}


def post_detection_steps(args, workers=None):
    """Characterization runs by default (``--no-characterize`` skips it)."""
    if getattr(args, "no_characterize", False):
        return ()
    if workers is None:
        return (characterization_step,)
    return (functools.partial(characterization_step, workers=workers),)


def characterization_workers(args, shard):
    """Worker processes for characterization, started now so that their imports overlap detection;
    None without characterization, under torchrun (the ranks already share the cores) or on one core."""
    if getattr(args, "no_characterize", False) or shard is not None:
        return None
    from ..characterization.parallel import CharacterizationWorkers, default_worker_count

    return CharacterizationWorkers() if default_worker_count() else None


def run(args) -> int:
    sink = EventSink(args.progress)

    def work() -> int:
        from ..batch_shard import close_shard, shard_from_env

        shard = shard_from_env()   # under torchrun: this rank's share of the scans (batch_shard)
        if shard is None:
            _import_torch_ahead()
        device = args.device
        if shard is not None:
            import torch

            device = shard.device(args.device)
            if device == "cpu":
                torch.set_num_threads(shard.cpu_threads())
        workers = None
        try:
            workers = characterization_workers(args, shard)
            runner = ScanBatchRunner(args.out, options_from_args(args),
                                     lambda: load_detector(args.model, device, args.batch_size), sink,
                                     post_detection=post_detection_steps(args, workers), shard=shard,
                                     preprocessing_factory=lambda: load_preprocessing(args.model),
                                     background=workers.executor if workers is not None else None)
            return runner.run(args.inputs)
        finally:
            if workers is not None:
                workers.close(wait=False)
            close_shard(shard)
    return run_with_progress(sink, work)
