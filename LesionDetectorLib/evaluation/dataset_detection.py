"""Detection over a whole evaluation set: per-scan prediction CSVs (resumable) -> one submission CSV.

``lesion-detector evaluate --data --model`` (LUNA16) and ``--dataset deeplesion --model`` both run
:func:`detect_dataset`; the Detector inside is the one ``detect`` uses, so what is evaluated is
what a user runs. Marks are listed down to score 0 (the model's own ``score_thresh`` is the
floor): the FROC needs every mark.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import EvaluationInputError, NoLungsFoundError

log = logging.getLogger("lesion-detector.evaluate")

DEFAULT_MODEL = "luna16-synthetic"
PREDICTIONS_DIR = "predictions"
PREDICTIONS_CSV = "predictions.csv"
RUN_FILE = "run.json"
#: The FROC needs every mark down to the lowest scores; the model's own ``score_thresh`` is the floor.
DATA_MODE_MIN_SCORE = 0.0


def _model_identity(name_or_dir: str) -> Dict[str, str]:
    """Name, version and weights SHA-256 from the model card alone (weights are verified on load)."""
    from ..inference import resolve_model_dir
    from ..model import read_card

    directory = resolve_model_dir(name_or_dir)
    card = read_card(directory)
    return {"name": str(card.get("name", directory.name)), "version": str(card.get("version", "unknown")),
            "sha256": str(card["sha256"]), "directory": str(directory.resolve())}


def _prepare_predictions_dir(pred_dir: Path, settings: Dict[str, object], resume: bool,
                             seriesuids: List[str]) -> None:
    """Check (``--resume``) or reset the per-scan predictions folder, then record ``settings``."""
    from ..atomic import atomic_write_text

    run_file = pred_dir / RUN_FILE
    if resume and run_file.is_file():
        try:
            before = json.loads(run_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise EvaluationInputError(f"{run_file} is unreadable ({exc}); drop --resume to start over") from None
        if before.get("model", {}).get("sha256") != settings["model"]["sha256"]:
            raise EvaluationInputError(
                f"--resume: the predictions in {pred_dir} were made by model {before.get('model', {}).get('name')!r} "
                f"(sha256 {str(before.get('model', {}).get('sha256'))[:12]}...), not by "
                f"{settings['model']['name']!r} (sha256 {settings['model']['sha256'][:12]}...); "
                f"use another --out or drop --resume")
        for key in ("max_candidates", "min_score"):
            if before.get(key) != settings[key]:
                raise EvaluationInputError(
                    f"--resume: the predictions in {pred_dir} were made with {key}={before.get(key)}, this run "
                    f"asks for {settings[key]}; use another --out or drop --resume")
    elif resume and any((pred_dir / f"{uid}.csv").is_file() for uid in seriesuids):
        raise EvaluationInputError(f"--resume: {pred_dir} holds predictions but no {RUN_FILE} saying which model "
                                   f"made them; use another --out or drop --resume")
    elif not resume and pred_dir.is_dir():
        stale = [pred_dir / f"{uid}.csv" for uid in seriesuids if (pred_dir / f"{uid}.csv").is_file()]
        if stale:
            log.info("discarding %d earlier per-scan prediction file(s) in %s (--resume keeps them)",
                     len(stale), pred_dir)
        for path in stale:
            path.unlink()
    pred_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_file, json.dumps(settings, indent=2) + "\n")


def detect_dataset(dataset, seriesuids: List[str], out_dir: Path, *, model: Optional[str] = None,
                   device: str = "auto", batch_size: Optional[int] = None, max_marks: int = 100,
                   resume: bool = False, progress: bool = True) -> Tuple[Path, Dict[str, object]]:
    """Run the Detector (its detection engine: the code ``detect`` runs) over the evaluated
    scans of ``dataset``; returns the gathered submission CSV (``<out_dir>/predictions.csv``)
    and a summary ``{"model", "run", "skipped", "no_lungs"}``.

    ``dataset`` needs ``root``, ``__contains__``, ``scan(uid)`` (with ``lung_mask_path``) and
    ``read(uid)``: a LUNA16 folder (``data.luna16_dataset.Luna16Dataset``) or DeepLesion chunks.
    Per-scan CSVs under ``<out_dir>/predictions/`` are written atomically, so ``resume`` can trust
    every file that exists (after checking ``run.json`` names the same model and settings)."""
    from ..export import write_luna16_csv
    from ..io import read_volume
    from ..inference import Detector

    absent = [uid for uid in seriesuids if uid not in dataset]
    if absent:
        raise EvaluationInputError(
            f"{len(absent)} evaluated series have no scan under {dataset.root} (first: {absent[0]}); "
            f"pass the scan list with --seriesuids or complete the folder")
    model = model or DEFAULT_MODEL
    out_dir = Path(out_dir)
    max_candidates = max_marks if max_marks > 0 else None
    settings = {"model": _model_identity(model), "max_candidates": max_candidates,
                "min_score": DATA_MODE_MIN_SCORE, "data": str(Path(dataset.root).resolve())}
    pred_dir = out_dir / PREDICTIONS_DIR
    _prepare_predictions_dir(pred_dir, settings, resume, seriesuids)

    todo = [uid for uid in seriesuids if not (pred_dir / f"{uid}.csv").is_file()]
    skipped = len(seriesuids) - len(todo)
    if skipped:
        print(f"resume: {skipped} of {len(seriesuids)} scan(s) already have predictions in {pred_dir}")
    no_lungs: List[str] = []
    if todo:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        detector = Detector.from_pretrained(model, device=device, batch_size=batch_size)
        print(f"model {detector.card['name']} {detector.card['version']} on {detector.device}: "
              f"{len(todo)} scan(s) to detect -> {pred_dir}")
        with logging_redirect_tqdm(), tqdm(total=len(seriesuids), initial=skipped, desc="evaluate", unit="scan",
                                           disable=not progress, dynamic_ncols=True) as bar:
            for uid in todo:
                scan = dataset.scan(uid)
                volume = dataset.read(uid)
                mask = read_volume(str(scan.lung_mask_path), allow_non_ct=True) if scan.lung_mask_path else None
                try:
                    findings = [detector(volume, lung_mask=mask, min_score=DATA_MODE_MIN_SCORE,
                                         max_candidates=max_candidates)]
                except NoLungsFoundError as exc:
                    # The pipeline's honest outcome for this scan: no marks (its nodules count as missed).
                    log.warning("%s: %s; the scan gets no marks", uid, exc)
                    no_lungs.append(uid)
                    findings = []
                # Written atomically: a file that exists is complete, so --resume can trust it.
                write_luna16_csv(findings, pred_dir / f"{uid}.csv", series_uids=[uid] * len(findings))
                bar.set_postfix_str(f"{uid[-12:]}: {len(findings[0]) if findings else 0} marks")
                bar.update(1)
    return gather_predictions(pred_dir, seriesuids, out_dir / PREDICTIONS_CSV), {
        "model": settings["model"], "run": len(todo), "skipped": skipped, "no_lungs": no_lungs}


def gather_predictions(pred_dir: Path, seriesuids: List[str], out_csv: Path) -> Path:
    """Concatenate ``<pred_dir>/<uid>.csv`` (every one checked) into one LUNA16 submission CSV."""
    from ..luna16_format import read_predictions, write_predictions

    return write_predictions(out_csv, (p for uid in seriesuids for p in read_predictions(pred_dir / f"{uid}.csv", [uid])))
