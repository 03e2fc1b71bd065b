"""Detector: a CT volume in, ranked lesion candidates with a patient-level flag out.

Pipeline of :meth:`Detector.__call__` (stages as reported to the progress callback):

1. ``read``: a path is read with :func:`LesionDetectorLib.io.read_volume`;
2. ``preprocess``: lung mask, 1 mm isotropic resampling, crop to the lungs, HU window
   (:func:`LesionDetectorLib.preprocess.preprocess`);
3. ``model``: the detection engine (:mod:`.engine`, the same code that validation, calibration
   and evaluation run): sliding-window tiles of the card's ``inference.tile`` (else the training
   crop), tiles owning no anatomy skipped, batches under the chosen precision with
   out-of-memory fallback, owned centres, the card's score fusion, 3-D NMS and one mark per
   lesion; cancellation is checked after every batch;
4. ``postprocess``: listing floor and cap, patient flag, and the exact mapping of
   every centre from crop voxels back to world LPS mm (``Preprocessed.to_world``).

Nothing is written to disk here: exports are separate (:mod:`LesionDetectorLib.export`),
so a cancelled or failed run leaves no files behind.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import ModelError
from ..version import __version__
from ..volume import Volume
from .device import memory_format_for, resolve_device
from .engine import DetectionEngine, EngineSettings
from ..findings import Candidate, Findings
from .patient_flag import DEFAULT_OPERATING_POINT, patient_flag, patient_probability, resolve_operating_point
from .progress import CancelToken, ProgressCallback, StageTimer, report

from ..resources import resolve_model_dir  # noqa: F401 - re-exported: callers import it from here

log = logging.getLogger("lesion-detector.inference")

DEFAULT_OVERLAP = 32
# Listing floor for candidates: the paper's probability cut sigmoid(-1) (section IV-F).
# The operating point's threshold lowers it when it is lower, so every candidate that can
# make the patient positive is listed.
DEFAULT_MIN_SCORE = 0.269
DEFAULT_MAX_CANDIDATES = 100


def _op_backend() -> str:
    try:
        from ..ops import backend_info

        return str(backend_info())
    except Exception as exc:  # noqa: BLE001 - provenance must never stop detection
        return f"unknown ({type(exc).__name__}: {exc})"


def _series_uid(volume: Volume) -> Optional[str]:
    uid = volume.metadata.get("SeriesInstanceUID")
    if uid:
        return str(uid)
    source = volume.metadata.get("source")
    # LUNA16 names each .mhd after its seriesuid; other file names are not UIDs.
    if source and str(source).lower().endswith((".mhd", ".mha")):
        return Path(source).stem
    return None


def volume_identity(volume: Volume) -> Dict[str, Any]:
    """The findings' ``volume`` block: source, UIDs and exact geometry (ITK order)."""
    return {"source": volume.metadata.get("source"),
            "series_uid": _series_uid(volume),
            "frame_of_reference_uid": volume.metadata.get("FrameOfReferenceUID"),
            "shape_zyx": [int(n) for n in volume.array.shape],
            "spacing": [float(v) for v in volume.spacing],
            "origin": [float(v) for v in volume.origin],
            "direction": [float(v) for v in volume.direction.reshape(-1)]}


def _for_device(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    return model.to(device=device, memory_format=memory_format_for(device))


class Detector:
    """Callable lesion detector around an eval-mode model and its model card.

    Args:
        model: eval output per image ``{"boxes" [K,4] (z,y,x,d) crop voxels, "scores",
            "scores_rpn", "scores_fprn"}`` (see ``LesionDetectorLib.model``).
        card: the model card (``name``, ``version``, ``sha256``, ``config``,
            ``operating_points``).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or a ``torch.device``.
        batch_size: tiles per forward pass (default 2 on CUDA, 1 on CPU).
        tile: window ``(D, H, W)`` voxels; default the card's ``inference.tile``, else the training crop.
        overlap: voxels shared by neighbouring tiles (default: the card's ``inference.overlap``, else 32).
        nms_iou: IoU above which overlapping candidates merge (default: the config's
            ``final_nms_iou``, else 0.1).
        precision: ``auto`` (fp16 autocast on CUDA, bf16 on CPUs with native bf16, else fp32),
            ``fp32``, ``bf16`` or ``fp16`` (CUDA only); see :mod:`.engine`.

    Example::

        detector = Detector.from_pretrained("luna16-synthetic")
        findings = detector("scan.mhd", progress=lambda stage, done, total: print(stage, done, total))
    """

    def __init__(self, model: torch.nn.Module, card: Mapping[str, Any], device: Union[str, torch.device] = "auto",
                 batch_size: Optional[int] = None, tile: Optional[Union[int, Sequence[int]]] = None,
                 overlap: Optional[int] = None, nms_iou: Optional[float] = None,
                 precision: str = "auto", max_tile: Optional[Union[int, Sequence[int]]] = None) -> None:
        for key in ("name", "version", "sha256"):
            if key not in card:
                raise ModelError(f"model card has no {key!r}")
        self.card = dict(card)
        self.device = resolve_device(device)
        self.model = _for_device(model, self.device).eval()
        # A card may name a larger inference window than its training crop (the network is
        # fully convolutional: fewer, larger tiles waste less compute on overlap), its score
        # fusion and its overlap, and a ``max_tile`` up to which the engine fits the tile to
        # each scan; the engine reads them all from the card.
        self.settings = EngineSettings.from_card(self.card, tile=tile, overlap=overlap, nms_iou=nms_iou,
                                                 precision=precision, max_tile=max_tile)
        self.tile: Tuple[int, int, int] = self.settings.tile
        self.overlap = self.settings.overlap
        self.nms_iou = self.settings.nms_iou
        self.batch_size = int(batch_size) if batch_size else (2 if self.device.type == "cuda" else 1)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.engine = DetectionEngine(self.model, self.settings, self.device, self.batch_size,
                                      on_device_change=self._move_to)

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, name_or_dir: Union[str, os.PathLike] = "luna16-synthetic",
                        device: Union[str, torch.device] = "auto", **kwargs: Any) -> "Detector":
        """Load a bundled model (``Resources/Models/<name>/``) or a model directory; the
        weights' SHA-256 is verified against the card (``ModelError`` on mismatch)."""
        from ..model import load_pretrained

        directory = resolve_model_dir(name_or_dir)
        dev = resolve_device(device)
        model, card = load_pretrained(directory, dev)
        card = dict(card)
        card.setdefault("name", directory.name)
        card.setdefault("version", "unknown")
        return cls(model, card, device=dev, **kwargs)

    @property
    def model_identity(self) -> Dict[str, str]:
        return {"name": str(self.card["name"]), "version": str(self.card["version"]),
                "sha256": str(self.card["sha256"])}

    def _move_to(self, device: torch.device) -> None:
        self.model = _for_device(self.model, device)
        self.device = device
        self.engine.model = self.model
        self.engine.device = device

    # ---------------------------------------------------------------------------- inference
    def preprocess(self, volume: Volume, lung_mask: Optional[Union[np.ndarray, Volume]] = None):
        """The network input of ``volume`` as this model was trained on it
        (:class:`~LesionDetectorLib.preprocess.Preprocessed`)."""
        from ..preprocess import Preprocessing

        # The card's own description (crop, spacing, margin, HU window, padding): models trained
        # without lung masks (DeepLesion) see the whole body crop.
        return Preprocessing.from_card(self.card).apply(volume, lung_mask)

    def __call__(self, volume: Union[Volume, str, os.PathLike], progress: Optional[ProgressCallback] = None,
                 cancel: Optional[CancelToken] = None, lung_mask: Optional[Union[np.ndarray, Volume]] = None,
                 operating_point: str = DEFAULT_OPERATING_POINT, min_score: Optional[float] = None,
                 max_candidates: Optional[int] = DEFAULT_MAX_CANDIDATES, prepared=None) -> Findings:
        """Detect lesions in ``volume`` (a :class:`Volume` or a path ``read_volume`` accepts).

        ``lung_mask``: optional bool array in the volume's grid or a label Volume (LUNA16
        ``seg-lungs``); ``min_score``: listing floor (default 0.269, lowered to the operating
        point's threshold); ``max_candidates``: keep the top N (None = all); ``prepared``: a
        :class:`~LesionDetectorLib.preprocess.Prepared` input of this ``volume`` and ``lung_mask``
        made ahead of time, used when it was made with this card's preprocessing.

        Raises ``NoLungsFoundError`` (no lungs), ``CancelledError`` (``cancel.cancel()``
        was called), ``ValueError`` (unknown operating point), ``ModelError``.
        """
        from ..preprocess import PAD_HU, Preprocessing, normalize_hu

        timer = StageTimer()
        token = cancel or CancelToken()
        op = resolve_operating_point(self.card, operating_point)  # bad names fail before any work
        token.raise_if_cancelled()

        with timer.stage("read"):
            report(progress, "read", 0, 1)
            if not isinstance(volume, Volume):
                from ..io import read_volume

                volume = read_volume(volume)
            report(progress, "read", 1, 1)
        token.raise_if_cancelled()

        prefetched = prepared is not None and prepared.preprocessing == Preprocessing.from_card(self.card)
        if prefetched:
            report(progress, "preprocess", 0, 1)
            pre = prepared.result
            timer.add("preprocess", prepared.seconds)
            report(progress, "preprocess", 1, 1)
        else:
            with timer.stage("preprocess"):
                report(progress, "preprocess", 0, 1)
                pre = self.preprocess(volume, lung_mask)
                report(progress, "preprocess", 1, 1)
        token.raise_if_cancelled()

        with timer.stage("model"):
            pad_value = float(normalize_hu(np.float32(PAD_HU), pre.hu_window))

            def after_batch(n_done: int, n_total: int) -> None:
                report(progress, "model", n_done, n_total)
                token.raise_if_cancelled()

            result = self.engine.detect(pre.image, pad_value, after_batch)

        with timer.stage("postprocess"):
            report(progress, "postprocess", 0, 1)
            rows = result.rows
            flag = patient_flag(rows[:, 4].tolist(), op)
            probability = patient_probability(flag["max_score"], self.card)
            if probability is not None:
                flag["probability"] = round(probability, 4)
            floor = DEFAULT_MIN_SCORE if min_score is None else float(min_score)
            if op["threshold"] is not None:
                floor = min(floor, op["threshold"])
            rows = rows[rows[:, 4] >= floor]
            if max_candidates is not None:
                rows = rows[: int(max_candidates)]
            centres_lps = pre.to_world(rows[:, :3]) if len(rows) else np.zeros((0, 3))
            candidates = [
                Candidate(id=f"N{rank}", rank=rank, center_lps=centres_lps[rank - 1].tolist(),
                          diameter_mm=round(float(r[3]) * pre.spacing, 3), score=float(np.clip(r[4], 0, 1)),
                          score_rpn=float(np.clip(r[5], 0, 1)), score_fprn=float(np.clip(r[6], 0, 1)))
                for rank, r in enumerate(rows, start=1)]
            report(progress, "postprocess", 1, 1)

        provenance = {"library_version": __version__, "torch_version": torch.__version__,
                      "device": str(result.device), "op_backend": _op_backend(),
                      "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                      "amp": result.precision != "fp32", "precision": result.precision,
                      "score_fusion": self.settings.fusion.to_dict(),
                      "tile": list(result.tile), "overlap": self.overlap, "n_tiles": result.n_tiles,
                      "n_tiles_planned": result.n_tiles_planned, "notes": list(result.notes),
                      "preprocess_prefetched": bool(prefetched)}
        findings = Findings(candidates=candidates, patient_flag=flag, model=self.model_identity,
                            volume=volume_identity(volume), provenance=provenance,
                            operating_point={"name": op["name"], "threshold": op["threshold"],
                                             "sensitivity": op["sensitivity"], "fp_per_scan": op["fp_per_scan"]},
                            timings_s=timer.as_dict())
        log.info("%d candidates, patient flag %s (%s tiles, %.1f s)", len(candidates), flag["status"],
                 result.n_tiles, findings.timings_s["total"])
        return findings
