"""``lesion-detector evaluate``: official-rule LUNA16 FROC/CPM, bootstrap CIs, TNP and
operating points from the challenge's CSV files.

Writes into ``--out``: report.json (``cpm`` at top level), report.md, froc.png, tnp.png and
operating_points.json (the model card's ``operating_points``). Bad input exits with code 2.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List

from ..errors import EvaluationInputError

log = logging.getLogger("lesion-detector.evaluate")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="LUNA16 FROC/CPM, TNP and operating points of a predictions CSV",
        description="Evaluate detector marks with the official LUNA16 rules (hit = centre within the nodule "
                    "radius, marks on excluded findings ignored, at most 100 marks per scan).")
    p.add_argument("--annotations", required=True, type=Path, help="annotations.csv (included nodules)")
    p.add_argument("--excluded", required=True, type=Path, help="annotations_excluded.csv (ignored findings)")
    p.add_argument("--seriesuids", required=True, type=Path, help="seriesuids.csv: the scans evaluated")
    p.add_argument("--predictions", type=Path,
                   help="predictions CSV: seriesuid,coordX,coordY,coordZ,probability (world LPS mm)")
    p.add_argument("--data", type=Path, help="LUNA16 data directory (detection mode, not available yet)")
    p.add_argument("--model", help="model name (detection mode, not available yet)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--bootstrap", type=int, default=1000, help="scan resamples for the CIs, 0 to skip (1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling (0)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals (0.95)")
    p.add_argument("--tnp-sensitivity", type=float, default=0.95,
                   help="sensitivity whose threshold defines the TNP (0.95)")
    p.add_argument("--max-marks", type=int, default=100,
                   help="marks kept per scan, highest probability first; <= 0 keeps all (100, as the challenge)")
    p.set_defaults(func=run)


def _check_args(args) -> None:
    if args.bootstrap < 0:
        raise EvaluationInputError("--bootstrap must be >= 0")
    if not 0.0 < args.confidence < 1.0:
        raise EvaluationInputError("--confidence must lie strictly between 0 and 1")
    if not 0.0 < args.tnp_sensitivity <= 1.0:
        raise EvaluationInputError("--tnp-sensitivity must lie in (0, 1]")


def load_predictions(args, seriesuids: List[str]):
    """The marks to evaluate. Only ``--predictions`` exists today; a detection mode over
    ``--data/--model`` plugs in here and returns the same list of Prediction records."""
    from ..evaluation.csv_io import read_predictions

    if args.predictions is not None:
        return read_predictions(args.predictions, seriesuids)
    if args.data is not None or args.model is not None:
        raise EvaluationInputError(
            "evaluate needs --predictions: running detection from --data/--model is not available yet; run "
            "`lesion-detector detect` and pass its LUNA16 CSV with --predictions")
    raise EvaluationInputError("evaluate needs --predictions (a LUNA16 predictions CSV)")


def run(args: argparse.Namespace) -> int:
    from ..evaluation.csv_io import read_annotations, read_seriesuids
    from ..evaluation.luna16 import evaluate_luna16
    from ..evaluation.report import write_report

    _check_args(args)
    seriesuids = read_seriesuids(args.seriesuids)
    annotations = read_annotations(args.annotations)
    excluded = read_annotations(args.excluded)
    predictions = load_predictions(args, seriesuids)
    result = evaluate_luna16(annotations, excluded, seriesuids, predictions, max_marks=args.max_marks,
                             bootstrap=args.bootstrap, seed=args.seed, confidence=args.confidence,
                             tnp_sensitivity=args.tnp_sensitivity)
    inputs = {k: str(getattr(args, k)) for k in ("annotations", "excluded", "seriesuids", "predictions")}
    written = write_report(result, args.out, inputs)
    line = f"CPM {result.cpm:.4f} over {result.n_scans} scans / {result.n_nodules} nodules"
    if result.ci is not None:
        line += f" ({result.ci.confidence:.0%} CI {result.ci.cpm_ci[0]:.4f}-{result.ci.cpm_ci[1]:.4f})"
    print(line)
    print(f"TNP {result.tnp.tnp:.4f} at sensitivity {result.tnp.target_sensitivity:.2f}; "
          f"report: {written['report.md']}")
    return 0
