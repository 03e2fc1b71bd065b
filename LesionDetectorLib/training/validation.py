"""Validation during training: the detection engine on cached scans -> LUNA16 CPM.

Detection runs :class:`~LesionDetectorLib.inference.engine.DetectionEngine`, the code the
:class:`~LesionDetectorLib.inference.Detector` runs (same tiling, overlap, padding rule,
score fusion, NMS and one-mark-per-lesion merge), so the CPM and the operating points
measured here hold for the detector that later applies them.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..inference.engine import DetectionEngine, EngineSettings
from .cache import CachedScan
from .sampler import PAD_VALUE


def engine_settings_for(config: Any, tile: Optional[Sequence[int]] = None, **overrides: Any) -> EngineSettings:
    """Engine settings of a model being trained: its config's NMS, the training crop as the tile
    unless ``tile`` is given (precision fp32 unless overridden: validation must not depend on
    the CPU it runs on). The overlap is the card default (32) but at most a third of the tile:
    small test crops (32^3) would otherwise step by one voxel (thousands of tiles per scan)."""
    from dataclasses import asdict, replace

    config_dict = asdict(config) if not isinstance(config, Mapping) else dict(config)
    card = {"config": config_dict}
    overrides.setdefault("precision", "fp32")
    settings = EngineSettings.from_card(card, tile=tuple(tile) if tile is not None else None, **overrides)
    if "overlap" not in overrides:
        settings = replace(settings, overlap=min(settings.overlap, min(settings.tile) // 3))
    return settings


@torch.no_grad()
def detect_cached(model: torch.nn.Module, scan: CachedScan, settings: EngineSettings,
                  device: torch.device = torch.device("cpu")) -> np.ndarray:
    """``[K, 7]`` rows (z, y, x, d, score, score_rpn, score_fprn) in the scan's crop voxels, by
    decreasing score."""
    was = model.training
    model.eval()
    try:
        engine = DetectionEngine(model, settings, device)
        return engine.detect(np.asarray(scan.image, dtype=np.float32), PAD_VALUE).rows
    finally:
        model.train(was)


def scan_truth(scan: CachedScan) -> Tuple[List[tuple], List[tuple]]:
    """The scan's nodules and excluded findings as LUNA16 rows ``(uid, x, y, z, diameter)``."""
    annotations, excluded = [], []
    for b in scan.boxes:
        x, y, z = scan.to_world(b[:3])[0]
        annotations.append((scan.uid, x, y, z, float(b[3])))
    for b in scan.excluded:
        x, y, z = scan.to_world(b[:3])[0]
        excluded.append((scan.uid, x, y, z, float(b[3])))
    return annotations, excluded


def marks_in_world(scan: CachedScan, rows: np.ndarray) -> List[Dict[str, float]]:
    """Engine rows -> mark dicts with world LPS centres and both branch scores."""
    marks = []
    for r in np.asarray(rows).reshape(-1, 7):
        x, y, z = scan.to_world(r[:3])[0]
        marks.append({"seriesuid": scan.uid, "x": float(x), "y": float(y), "z": float(z), "d": float(r[3]),
                      "score": float(r[4]), "score_rpn": float(r[5]), "score_fprn": float(r[6])})
    return marks


def validate(model: torch.nn.Module, scans: List[CachedScan], settings: EngineSettings,
             device: torch.device = torch.device("cpu")) -> Tuple[Dict[str, float], object]:
    """CPM etc. of ``model`` on ``scans`` (LUNA16 rules via ``evaluation.evaluate_luna16``)."""
    from ..evaluation import evaluate_luna16

    annotations, excluded, predictions = [], [], []
    for scan in scans:
        a, e = scan_truth(scan)
        annotations += a
        excluded += e
        for m in marks_in_world(scan, detect_cached(model, scan, settings, device)):
            predictions.append((scan.uid, m["x"], m["y"], m["z"], m["score"]))
    if not annotations:
        return {"cpm": float("nan")}, None
    result = evaluate_luna16(annotations, excluded, [s.uid for s in scans], predictions, bootstrap=0)
    metrics = {"cpm": float(result.cpm)}
    metrics.update({f"sens@{k:g}": float(v) for k, v in result.sensitivities.items()})
    return metrics, result
