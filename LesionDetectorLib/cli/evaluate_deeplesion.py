"""``lesion-detector evaluate --dataset deeplesion``: the paper's Tables V and VI on DeepLesion.

The evaluated images are the scan chunks of one official split (``--split``, default
``test``) of a DeepLesion root (``DL_info.csv`` + ``Images_png/``, see
:mod:`LesionDetectorLib.data.deeplesion`); their lesions are the 3-D ``{X, Y, Z, D}`` lesions
of that module, typed by ``Coarse_lesion_type`` and sized by the RECIST long axis. The marks
come from one of:

* ``--predictions CSV``: LUNA16 submission columns ``seriesuid,coordX,coordY,coordZ,probability``
  with ``seriesuid`` = the chunk uid (``<patient>_<study>_<series>_<first>-<last>``, as in the
  ``seriesuids.csv`` of :mod:`LesionDetectorLib.data.deeplesion_csv`) and world LPS mm in
  that chunk's own frame;
* ``--model NAME_OR_DIR``: run a model over every chunk (a DeepLesion model card whose
  ``preprocessing.crop`` is ``"body"``), with the same resumable per-chunk predictions
  (``OUT/predictions/<uid>.csv``, ``--resume``) as the LUNA16 ``--data`` mode.

At most ``--max-marks`` marks per chunk are kept, by LUNA16's official cap (marks tied with the
first one over the cap go too: :func:`LesionDetectorLib.luna16_format.cap_marks`; <= 0 keeps all).
Metrics: :func:`LesionDetectorLib.evaluation.deeplesion_metrics.evaluate_deeplesion` (LUNA16
hit criterion, FP rates per evaluated chunk). Writes ``report.json``, ``report.md`` and
``froc.png`` into ``--out`` (:mod:`LesionDetectorLib.evaluation.report_deeplesion`).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Dict, Iterator, NamedTuple, Optional, Sequence

from ..errors import EvaluationInputError

log = logging.getLogger("lesion-detector.evaluate")

DEFAULT_SPLIT = "test"
SPLITS = ("train", "val", "test")
#: Options of the LUNA16 mode that have no meaning here (DeepLesion's ground truth comes from --data).
_LUNA16_ONLY = ("annotations", "excluded", "seriesuids")


def check_args(args: argparse.Namespace) -> None:
    """Refuse option combinations the DeepLesion mode cannot honour (exit 2)."""
    if args.data is None:
        raise EvaluationInputError("--dataset deeplesion needs --data (a folder with DL_info.csv and Images_png/)")
    given = [f"--{k}" for k in _LUNA16_ONLY if getattr(args, k, None) is not None]
    if given:
        raise EvaluationInputError(f"{', '.join(given)} apply to --dataset luna16; with --dataset deeplesion the "
                                   f"lesions come from --data/DL_info.csv")
    if (args.predictions is None) == (args.model is None):
        raise EvaluationInputError("--dataset deeplesion needs exactly one of --predictions (a CSV of marks on the "
                                   "chunks) or --model (run a model over the chunks)")
    if args.resume and args.model is None:
        raise EvaluationInputError("--resume applies to detection with --model, which is not given")
    if getattr(args, "batch_size", None) is not None and args.batch_size < 1:
        raise EvaluationInputError("--batch-size must be >= 1")


# ------------------------------------------------------------------------------ inputs
def load_chunks(root: Path, split: str):
    """The scan chunks of ``split`` under ``root`` (VolumeError when it is no DeepLesion root)."""
    from ..data.deeplesion import DeepLesionDataset

    dataset = DeepLesionDataset(root, splits=[split])
    if not len(dataset):
        raise EvaluationInputError(f"{root}: no usable scan chunk in split {split!r} (DL_info.csv Train_Val_Test)")
    return dataset


def lesions_of(scans) -> list:
    """Every chunk's 3-D lesions as metric records (image id = chunk uid, size = RECIST long axis)."""
    from ..evaluation.deeplesion_metrics import DeepLesionLesion as MetricLesion

    return [MetricLesion(image_id=scan.seriesuid, x=float(l.center_lps[0]), y=float(l.center_lps[1]),
                         z=float(l.center_lps[2]), diameter_mm=float(l.diameter_mm),
                         long_diameter_mm=float(l.long_axis_mm), lesion_type=int(l.lesion_type))
            for scan in scans for l in scan.lesions]


def read_chunk_predictions(path: Path, seriesuids: Sequence[str]) -> list:
    """Rows of a predictions CSV whose ``seriesuid`` must be an evaluated chunk; errors name ``file:line``."""
    from ..luna16_format import read_predictions

    example = next(iter(seriesuids)).replace("{", "{{").replace("}", "}}")   # literal inside the template
    return read_predictions(path, seriesuids, unknown=(
        "seriesuid {uid!r} is not a DeepLesion scan chunk of the evaluated split "
        "(expected <patient>_<study>_<series>_<first>-<last>, e.g. " + example + ")"))


# --------------------------------------------------------------------------- model mode
class _Chunk(NamedTuple):
    seriesuid: str
    lung_mask_path: Optional[Path]


class _ChunkSource:
    """The chunks in the interface of :func:`.evaluate.detect_dataset` (``root``, ``in``, ``scan``, ``read``)."""

    def __init__(self, root: Path, scans) -> None:
        self.root = Path(root)
        self._scans = {s.seriesuid: s for s in scans}

    def __contains__(self, uid: str) -> bool:
        return uid in self._scans

    def __iter__(self) -> Iterator[_Chunk]:
        return (self.scan(uid) for uid in self._scans)

    def scan(self, uid: str) -> _Chunk:
        return _Chunk(uid, None)        # DeepLesion ships no lung masks; a body-crop model needs none

    def read(self, uid: str):
        return self._scans[uid].load()


def _warn_if_lung_model(args) -> None:
    from ..inference import resolve_model_dir
    from ..model import read_card

    card = read_card(resolve_model_dir(args.model))
    if (card.get("preprocessing") or {}).get("crop") != "body":
        log.warning("model %s crops every scan to the lungs; DeepLesion lesions outside the lungs cannot be "
                    "found (train one with `lesion-detector train --dataset deeplesion`)", card.get("name", args.model))


# ------------------------------------------------------------------------------------ run
def run_deeplesion(args: argparse.Namespace) -> int:
    from ..evaluation.deeplesion_metrics import curve_points, evaluate_deeplesion
    from ..evaluation.report_deeplesion import write_deeplesion_report
    from ..luna16_format import cap_predictions

    check_args(args)
    split = args.split or DEFAULT_SPLIT
    dataset = load_chunks(args.data, split)
    scans = list(dataset)
    image_ids = [s.seriesuid for s in scans]
    lesions = lesions_of(scans)
    if not lesions:
        raise EvaluationInputError(f"{args.data}: the {len(scans)} chunk(s) of split {split!r} hold no lesion "
                                   f"(noisy rows are dropped); sensitivity is undefined")
    inputs: Dict[str, str] = {"dataset": "deeplesion", "data": str(args.data), "split": split,
                              "info_csv": str(dataset.info_csv)}
    summary = None
    if args.model is not None:
        from ..evaluation.dataset_detection import detect_dataset

        _warn_if_lung_model(args)
        predictions_csv, summary = detect_dataset(
            _ChunkSource(args.data, scans), image_ids, Path(args.out), model=args.model, device=args.device,
            batch_size=args.batch_size, max_marks=args.max_marks, resume=args.resume,
            progress=not args.no_progress)
        inputs.update({"predictions": str(predictions_csv), "model": summary["model"]["name"],
                       "model_version": summary["model"]["version"], "model_sha256": summary["model"]["sha256"]})
    else:
        predictions_csv = args.predictions
        inputs["predictions"] = str(predictions_csv)
    predictions = read_chunk_predictions(predictions_csv, image_ids)
    kept, dropped = cap_predictions(predictions, args.max_marks)
    result = evaluate_deeplesion(lesions, kept, image_ids)
    curves = curve_points(lesions, kept, image_ids)
    counts = {"predictions": len(predictions), "predictions_evaluated": len(kept), "dropped_over_max_marks": dropped,
              "max_marks_per_image": args.max_marks if args.max_marks > 0 else None}
    written = write_deeplesion_report(result, args.out, inputs=inputs, counts=counts, curves=curves)
    if summary is not None and summary["no_lungs"]:
        print(f"{len(summary['no_lungs'])} chunk(s) without lungs found got no marks: "
              f"{', '.join(summary['no_lungs'])}")
    for label, m in (("all lesions", result.all_lesions), ("without lesions >= 48 mm", result.without_large)):
        sens = ", ".join(f"{s:.3f}@{r:g}" for r, s in m.sensitivities.items())
        print(f"DeepLesion {label}: {m.n_lesions} lesions on {m.n_images} chunks; sensitivity {sens} "
              f"(average {m.average:.4f})")
    print(f"report: {written['report.md']}")
    return 0
