"""Validation during training: sliding-window detection on cached scans -> LUNA16 CPM.

Tiles come from ``inference.sliding_window`` (the same tiling as the Detector); each tile's
detections are kept only where the tile owns their centre, then 3-D NMS merges the scan.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..inference.sliding_window import extract_tile, plan_tiles
from ..model.nms import nms_3d
from .cache import CachedScan
from .sampler import PAD_VALUE


@torch.no_grad()
def detect_cached(model: torch.nn.Module, scan: CachedScan, tile: Sequence[int], overlap: int = 16,
                  device: torch.device = torch.device("cpu"), nms_iou: float = 0.1) -> np.ndarray:
    """``[K, 5]`` rows (z, y, x, d, score) in the scan's crop voxels, by decreasing score."""
    model.eval()
    rows = []
    for t in plan_tiles(scan.image.shape, tuple(tile), overlap):
        x = torch.from_numpy(extract_tile(np.asarray(scan.image, dtype=np.float32), t, PAD_VALUE))[None, None]
        out = model(x.to(device))[0]
        r = torch.cat([out["boxes"], out["scores"][:, None]], 1).float().cpu().numpy()
        r[:, :3] += np.asarray(t.start)
        rows.append(r[t.owns(r[:, :3])])
    rows = np.concatenate(rows) if rows else np.zeros((0, 5))
    if not len(rows):
        return rows
    keep = nms_3d(torch.from_numpy(rows[:, :4]), torch.from_numpy(rows[:, 4]), nms_iou).numpy()
    return rows[keep]


def validate(model: torch.nn.Module, scans: List[CachedScan], tile: Sequence[int],
             device: torch.device = torch.device("cpu")) -> Tuple[Dict[str, float], object]:
    """CPM etc. of ``model`` on ``scans`` (LUNA16 rules via ``evaluation.evaluate_luna16``)."""
    from ..evaluation import evaluate_luna16

    annotations, excluded, predictions = [], [], []
    for scan in scans:
        for b in scan.boxes:
            x, y, z = scan.to_world(b[:3])[0]
            annotations.append((scan.uid, x, y, z, float(b[3])))
        for b in scan.excluded:
            x, y, z = scan.to_world(b[:3])[0]
            excluded.append((scan.uid, x, y, z, float(b[3])))
        det = detect_cached(model, scan, tile, device=device)
        for r in det:
            x, y, z = scan.to_world(r[:3])[0]
            predictions.append((scan.uid, x, y, z, float(r[4])))
    if not annotations:
        return {"cpm": float("nan")}, None
    result = evaluate_luna16(annotations, excluded, [s.uid for s in scans], predictions, bootstrap=0)
    metrics = {"cpm": float(result.cpm)}
    metrics.update({f"sens@{k:g}": float(v) for k, v in result.sensitivities.items()})
    return metrics, result
