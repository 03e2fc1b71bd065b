"""``lesion-detector evaluate``: official-rule LUNA16 FROC/CPM, bootstrap CIs, TNP and
operating points, from a predictions CSV or by running a model over a LUNA16-layout folder.

Two ways to get the marks:

* ``--predictions CSV`` with ``--annotations``, ``--excluded`` and ``--seriesuids``: evaluate
  an existing submission file (from ``lesion-detector detect`` or any other detector).
* ``--data DIR --model NAME_OR_DIR``: run the detector on every evaluated scan of a LUNA16-layout
  folder (``subset*/<seriesuid>.mhd``, ``seg-lungs-LUNA16`` masks used when present). The
  scans evaluated are ``seriesuids.csv`` of the folder, else every scan in it; annotations come
  from its ``annotations.csv`` / ``annotations_excluded.csv`` (each overridable by the flags
  above). Each scan's marks (at most ``--max-marks``, every score the model emits, since
  the FROC needs the low ones) are written to ``<out>/predictions/<seriesuid>.csv`` as soon as
  the scan finishes; ``--resume`` keeps those and runs only the missing scans (it refuses
  predictions made by another model or with another ``--max-marks``, as recorded in
  ``<out>/predictions/run.json``); without ``--resume`` earlier ones are discarded. All marks
  are gathered into ``<out>/predictions.csv`` (the LUNA16 submission) and evaluated.

Writes into ``--out``: report.json (``cpm`` at top level), report.md, froc.png, tnp.png and
operating_points.json (the model card's ``operating_points``). Bad input exits with code 2.

``--dataset deeplesion`` evaluates DeepLesion instead (the paper's Tables V and VI); see
:mod:`.evaluate_deeplesion`.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import EvaluationInputError
from .options import add_device

log = logging.getLogger("lesion-detector.evaluate")

from ..evaluation.dataset_detection import DEFAULT_MODEL  # noqa: E402 - the detection loop lives in the library


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="LUNA16 FROC/CPM, TNP and operating points of a predictions CSV or of a model on a data set",
        description="Evaluate detector marks with the official LUNA16 rules (hit = centre within the nodule "
                    "radius, marks on excluded findings ignored, at most 100 marks per scan). The marks come "
                    "from --predictions, or from running --model over the LUNA16-layout folder --data.")
    p.add_argument("--dataset", default="luna16", choices=("luna16", "deeplesion"),
                   help="luna16 (default): the options below; deeplesion: Tables V/VI of the paper on the "
                        "chunks of --data (DL_info.csv + Images_png/), marks from --predictions or --model")
    p.add_argument("--split", choices=("train", "val", "test"),
                   help="with --dataset deeplesion: the official split evaluated (test)")
    p.add_argument("--annotations", type=Path,
                   help="annotations.csv (included nodules); default with --data: DATA/annotations.csv")
    p.add_argument("--excluded", type=Path,
                   help="annotations_excluded.csv (ignored findings); default with --data: "
                        "DATA/annotations_excluded.csv (none when absent)")
    p.add_argument("--seriesuids", type=Path,
                   help="seriesuids.csv: the scans evaluated; default with --data: DATA/seriesuids.csv, "
                        "else every scan of DATA")
    p.add_argument("--predictions", type=Path,
                   help="predictions CSV: seriesuid,coordX,coordY,coordZ,probability (world LPS mm)")
    p.add_argument("--data", type=Path,
                   help="LUNA16-layout folder (subset*/<seriesuid>.mhd, annotations.csv...): run --model on it")
    p.add_argument("--model", help=f"bundled model name or model directory for --data ({DEFAULT_MODEL})")
    add_device(p, "device for --data (auto)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="tiles per forward pass for --data (default 2 GPU / 1 CPU)")
    p.add_argument("--resume", action="store_true",
                   help="with --data: keep the per-scan predictions already in OUT/predictions, run the rest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar for --data")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--bootstrap", type=int, default=1000, help="scan resamples for the CIs, 0 to skip (1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling (0)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals (0.95)")
    p.add_argument("--tnp-sensitivity", type=float, default=0.95,
                   help="sensitivity whose threshold defines the TNP (0.95)")
    p.add_argument("--max-marks", type=int, default=100,
                   help="marks kept per scan, highest probability first; <= 0 keeps all (100, as the challenge)")
    p.add_argument("--froc-rule", default="official", choices=("official", "exact"),
                   help="how sensitivity is read at 1/8 ... 8 FP/scan: official (the challenge script's "
                        "10001-point grid, nearest point; default) or exact (at the rates themselves); the DeepLesion "
                        "tables always read at their rates")
    p.set_defaults(func=run)


def _check_args(args) -> None:
    if args.bootstrap < 0:
        raise EvaluationInputError("--bootstrap must be >= 0")
    if not 0.0 < args.confidence < 1.0:
        raise EvaluationInputError("--confidence must lie strictly between 0 and 1")
    if not 0.0 < args.tnp_sensitivity <= 1.0:
        raise EvaluationInputError("--tnp-sensitivity must lie in (0, 1]")
    data_mode = getattr(args, "data", None) is not None
    if data_mode and args.predictions is not None:
        raise EvaluationInputError("give either --predictions (evaluate a CSV) or --data (run a model), not both")
    if not data_mode:
        for flag in ("model", "resume"):
            if getattr(args, flag, None):
                raise EvaluationInputError(f"--{flag} applies to detection over --data, which is not given")
        if args.predictions is None:
            raise EvaluationInputError("evaluate needs --predictions (a LUNA16 predictions CSV) or --data with "
                                       "--model (run a model over a LUNA16-layout folder)")
        missing = [f"--{k}" for k in ("annotations", "excluded", "seriesuids") if getattr(args, k) is None]
        if missing:
            raise EvaluationInputError(f"evaluating --predictions needs {', '.join(missing)}")
    if getattr(args, "batch_size", None) is not None and args.batch_size < 1:
        raise EvaluationInputError("--batch-size must be >= 1")


# ------------------------------------------------------------------------------ inputs
def resolve_inputs(args, dataset=None) -> Tuple[list, list, List[str], Dict[str, str]]:
    """``(annotations, excluded, seriesuids, inputs)``: the evaluation's ground truth and scan list.

    With a ``dataset`` (``--data``) the folder's files are the defaults of the flags; ``inputs``
    names what was used, for the report.
    """
    from ..luna16_format import read_annotations, read_seriesuids

    annotations_path, excluded_path, uids_path = args.annotations, args.excluded, args.seriesuids
    if dataset is not None:
        root = dataset.root
        if annotations_path is None:
            if dataset.annotations_path is None:
                raise EvaluationInputError(f"{root} has no annotations.csv; pass --annotations")
            annotations_path = dataset.annotations_path
        if excluded_path is None and dataset.excluded_path is not None:
            excluded_path = dataset.excluded_path
        if uids_path is None and (root / "seriesuids.csv").is_file():
            uids_path = root / "seriesuids.csv"
    annotations = read_annotations(annotations_path)
    if excluded_path is not None:
        excluded = read_annotations(excluded_path)
    else:
        log.warning("%s has no annotations_excluded.csv: no finding is excluded", dataset.root)
        excluded = []
    if uids_path is not None:
        seriesuids = read_seriesuids(uids_path)
    else:
        seriesuids = [scan.seriesuid for scan in dataset]
    inputs = {"annotations": str(annotations_path), "excluded": str(excluded_path),
              "seriesuids": str(uids_path) if uids_path is not None else f"every scan of {dataset.root}"}
    return annotations, excluded, seriesuids, inputs


def load_predictions(args, seriesuids: List[str]):
    """The marks of ``--predictions`` as Prediction records (the CSV mode)."""
    from ..luna16_format import read_predictions

    return read_predictions(args.predictions, seriesuids)


# ---------------------------------------------------------------------------- data mode
def detect_dataset_for(args, dataset, seriesuids: List[str]):
    """The library's dataset detection with this command's options (plain values, no Namespace)."""
    from ..evaluation.dataset_detection import detect_dataset

    return detect_dataset(dataset, seriesuids, Path(args.out), model=args.model, device=args.device,
                          batch_size=args.batch_size, max_marks=args.max_marks, resume=args.resume,
                          progress=not args.no_progress)


# ------------------------------------------------------------------------------------ run
def run(args: argparse.Namespace) -> int:
    from ..evaluation.luna16_evaluation import evaluate_luna16
    from ..luna16_format import read_predictions
    from ..evaluation.report_luna16 import write_report

    if getattr(args, "dataset", "luna16") == "deeplesion":
        from .evaluate_deeplesion import run_deeplesion

        return run_deeplesion(args)
    if getattr(args, "split", None) is not None:
        raise EvaluationInputError("--split applies to --dataset deeplesion")
    _check_args(args)
    summary: Optional[Dict[str, object]] = None
    if args.data is not None:
        from ..data.luna16_dataset import Luna16Dataset

        dataset = Luna16Dataset(args.data)          # VolumeError (exit 2) when it is not a LUNA16 folder
        annotations, excluded, seriesuids, inputs = resolve_inputs(args, dataset)
        predictions_csv, summary = detect_dataset_for(args, dataset, seriesuids)
        predictions = read_predictions(predictions_csv, seriesuids)
        inputs.update({"predictions": str(predictions_csv), "data": str(args.data),
                       "model": summary["model"]["name"], "model_version": summary["model"]["version"],
                       "model_sha256": summary["model"]["sha256"]})
    else:
        annotations, excluded, seriesuids, inputs = resolve_inputs(args)
        predictions = load_predictions(args, seriesuids)
        inputs["predictions"] = str(args.predictions)
    result = evaluate_luna16(annotations, excluded, seriesuids, predictions, max_marks=args.max_marks,
                             bootstrap=args.bootstrap, seed=args.seed, confidence=args.confidence,
                             tnp_sensitivity=args.tnp_sensitivity,
                             froc_rule=getattr(args, "froc_rule", "official"))
    written = write_report(result, args.out, inputs)
    if summary is not None and summary["no_lungs"]:
        print(f"{len(summary['no_lungs'])} scan(s) without lungs found got no marks: "
              f"{', '.join(summary['no_lungs'])}")
    line = f"CPM {result.cpm:.4f} over {result.n_scans} scans / {result.n_nodules} nodules"
    if result.ci is not None:
        line += f" ({result.ci.confidence:.0%} CI {result.ci.cpm_ci[0]:.4f}-{result.ci.cpm_ci[1]:.4f})"
    print(line)
    print(f"TNP {result.tnp.tnp:.4f} at sensitivity {result.tnp.target_sensitivity:.2f}; "
          f"report: {written['report.md']}")
    return 0
