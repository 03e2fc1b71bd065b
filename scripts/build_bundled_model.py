"""Turn a training run into the bundled model: card, operating points, held-out test report.

    python scripts/build_bundled_model.py --run runs/bundled/model --val data/val --test data/test \
        --out Resources/Models/luna16-synthetic --report docs/evaluation/luna16-synthetic

1. the run's weights are written with a full model card (intended use, limitations, training
   data and budget, inference window);
2. the bundled Detector's engine runs over the *validation* set (``evaluation.calibration``): the
   score fusion with the best validation CPM, its operating points (sensitivity 0.90 / 0.95,
   1 / 4 FP per scan) and the Platt patient probability go into the card;
3. the model runs over the *test* set, generated with another seed: CPM, FROC points with
   bootstrap intervals, TNP, and the patient flag at the validation threshold go into the card
   and the report folder (report.md / report.json / froc.png / tnp.png).

The card's SHA-256 covers the weights file, which is never rewritten after step 1.
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

from LesionDetectorLib.atomic import atomic_write_text
from LesionDetectorLib.cli.main import main as cli
from LesionDetectorLib.data.luna16_dataset import Luna16Dataset
from LesionDetectorLib.model import load_pretrained, save_pretrained
from LesionDetectorLib.model.card import CARD_FILE


def _write_card(directory: Path, card: dict) -> None:
    atomic_write_text(directory / CARD_FILE, json.dumps(card, indent=2, sort_keys=True) + "\n")


def _evaluate(data: Path, model: Path, out: Path, bootstrap: int, device: str = "cpu") -> dict:
    args = ["evaluate", "--data", str(data), "--model", str(model), "--out", str(out), "--device", device,
            "--bootstrap", str(bootstrap), "--resume", "--no-progress"]
    if cli(args) != 0:
        raise SystemExit(f"evaluation of {data} failed")
    return json.loads((out / "report.json").read_text())


def _patient_flags(data: Path, predictions: Path, threshold: float, card: dict = None) -> dict:
    """Patient-level flag on ``data`` at a threshold chosen elsewhere (validation)."""
    ds = Luna16Dataset(data)
    best = {s.seriesuid: 0.0 for s in ds}
    with open(predictions) as f:
        for row in csv.DictReader(f):
            best[row["seriesuid"]] = max(best.get(row["seriesuid"], 0.0), float(row["probability"]))
    pos = [u for u in best if len(ds.annotations(u))]
    neg = [u for u in best if not len(ds.annotations(u))]
    out = {"threshold": threshold,
           "positive_patients": len(pos), "flagged_positive": sum(best[u] >= threshold for u in pos),
           "negative_patients": len(neg), "true_negative_patients": sum(best[u] < threshold for u in neg)}
    if card is not None and card.get("patient_probability"):
        from LesionDetectorLib.inference.patient_flag import patient_probability

        prob = {u: patient_probability(best[u], card) for u in best}
        out["patient_probability"] = {
            "brier": round(sum((prob[u] - (u in pos)) ** 2 for u in best) / max(len(best), 1), 4),
            "mean_positive": round(sum(prob[u] for u in pos) / max(len(pos), 1), 4),
            "mean_negative": round(sum(prob[u] for u in neg) / max(len(neg), 1), 4)}
    return out


def _notes(items) -> dict:
    """``KEY=VALUE`` pairs; values that parse as JSON (numbers, lists) keep their type."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--training-note wants KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="model directory written by lesion-detector train")
    p.add_argument("--val", type=Path, required=True, help="validation set (LUNA16 layout)")
    p.add_argument("--test", type=Path, required=True, help="held-out test set (LUNA16 layout, another seed)")
    p.add_argument("--out", type=Path, required=True, help="bundled model directory to write")
    p.add_argument("--report", type=Path, required=True, help="folder for the test report")
    p.add_argument("--work", type=Path, default=Path("runs/bundle-eval"), help="scratch folder (predictions)")
    p.add_argument("--name", default="luna16-synthetic")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="device of the validation and test detection passes (cpu)")
    p.add_argument("--tile", type=int, default=128,
                   help="reference inference window (the network is fully convolutional; the candidate caps "
                        "are per window of this size)")
    p.add_argument("--max-tile", type=int, default=None,
                   help="let the engine fit the window to each scan up to this size (fewer tiles, less "
                        "overlap and padding); the operating points are then measured with fitted windows")
    p.add_argument("--recalibrate", action="store_true",
                   help="--run is a bundled model: keep its weights and card (description, training, "
                        "limitations) and redo only the inference settings, calibration and test")
    p.add_argument("--data-note", default="", help="how the training/validation/test sets were generated")
    p.add_argument("--fusions", nargs="+", default=["mean", "fprn", "geometric", "logistic"],
                   help="score fusions to choose from on the validation set (mean = the paper's)")
    p.add_argument("--training-note", action="append", default=[], metavar="KEY=VALUE",
                   help="add or replace a field of the card's 'training' (e.g. command=... for a resumed run)")
    args = p.parse_args(argv)

    model, run_card = load_pretrained(args.run, "cpu")
    inference = {"tile": [args.tile] * 3, "overlap": 32}
    if args.max_tile:
        inference["max_tile"] = [args.max_tile] * 3
    if args.recalibrate:
        card = _recalibration_base(run_card, args, inference)
    else:
        card = _new_card(run_card, args, inference)
    save_pretrained(model, args.out, card)
    card = json.loads((args.out / CARD_FILE).read_text())
    return _calibrate_and_test(card, args)


def _recalibration_base(run_card: dict, args, inference: dict) -> dict:
    """A bundled card with its measured fields dropped: they are measured again below."""
    card = {k: v for k, v in run_card.items()
            if k not in ("sha256", "operating_points", "validation", "test", "patient_probability", "inference")}
    card.update(name=args.name, version=args.version, inference=inference,
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                recalibrated_from={"version": run_card.get("version"), "sha256": run_card.get("sha256")})
    card["architecture"] = card.get("architecture", "").split("; score = ")[0] + \
        "; score = mean of RPN and FPRN probabilities"
    return card


def _new_card(run_card: dict, args, inference: dict) -> dict:
    return {
        "name": args.name,
        "version": args.version,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "architecture": "3D Aggregated Faster R-CNN (Zhang, Cao, Liu, Luo): DenseNet U-Net backbone, "
                        "RPN heads at strides 4/8/16, FPRN with Diameter Alignment, Local Magnification "
                        "and RoIAlign3D; score = mean of RPN and FPRN probabilities",
        "intended_use": "Research and software testing: lung-nodule candidate detection in chest CT, "
                        "reviewed by a person. NOT FOR CLINICAL USE.",
        "limitations": [
            "Trained only on synthetic chest CT (LesionDetectorLib.data.synthetic) with real LIDC-IDRI "
            "nodule shapes, never on real scans: accuracy on real CT is unknown and expected to be poor.",
            f"Trained for a short budget on {(run_card.get('training') or {}).get('hardware', 'CPU')} "
            "(see 'training'); far fewer iterations than the paper.",
            "Operating points were measured on a small synthetic validation set; their sensitivities "
            "and FP rates will not transfer to real data.",
        ],
        "training_data": dict(run_card.get("training_data") or {}, description=args.data_note or
                              "synthetic CT in LUNA16 layout (lesion-detector synth), real LIDC nodule shapes"),
        "training": dict(run_card.get("training", {}), **_notes(args.training_note)),
        "inference": inference,
        "built_on": {"machine": platform.platform(), "python": sys.version.split()[0]},
    }


def _calibrate_and_test(card: dict, args) -> int:
    # Validation: the bundled Detector's own engine chooses the score fusion and measures the
    # operating points and the patient probability that this card will apply.
    from LesionDetectorLib.evaluation.calibration import calibrate, calibration_card_fields, collect_marks
    from LesionDetectorLib.inference import Detector

    detector = Detector.from_pretrained(args.out, device=args.device)
    val_set = Luna16Dataset(args.val)
    marks = collect_marks(detector, val_set, [s.seriesuid for s in val_set], progress=True)
    cal = calibrate(marks, detector.settings, methods=args.fusions)
    fields = calibration_card_fields(cal, str(args.val))
    card["inference"]["score_fusion"] = fields.pop("score_fusion")
    card.update(fields)
    card["architecture"] = card["architecture"].replace(
        "score = mean of RPN and FPRN probabilities",
        f"score = {cal.fusion.method} fusion of RPN and FPRN probabilities (chosen on validation; the paper's "
        f"mean is the 'mean' fusion)")
    _write_card(args.out, card)
    print(json.dumps({"fusion_candidates": cal.candidates, "chosen": cal.fusion.to_dict(),
                      "patient_probability": cal.patient_probability}, indent=2))

    test = _evaluate(args.test, args.out, args.report, bootstrap=1000, device=args.device)
    thr = card["operating_points"]["sensitivity_0.95"]["threshold"]
    card["test"] = {"data": str(args.test), "cpm": test["cpm"], "sensitivities": test["sensitivities"],
                    "bootstrap": test.get("bootstrap"), "tnp": test.get("tnp"),
                    "n_scans": test.get("n_scans"), "n_nodules": test.get("n_nodules"),
                    "patient_flag_at_validation_sensitivity_0.95":
                        _patient_flags(args.test, args.report / "predictions.csv", thr, card)}
    _write_card(args.out, card)
    print(json.dumps({"validation_cpm": card["validation"]["cpm"], "test_cpm": test["cpm"], "test": card["test"]},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
