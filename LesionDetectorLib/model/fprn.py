"""False Positive Reduction Network (section III-C/D, Fig. 3, Table I bottom row).

Every proposal ``(z, y, x, d)`` from reference level ``r`` (stride ``s_r``) is cropped from
**all three** pyramid levels (feature aggregation):

* **Diameter Alignment (DA)**: the RoI side in feature cells at the reference level,
  ``d / s_r``, is broadcast unchanged to every level (Fig. 3a: ``{60.56, 52.46, 57.56; 17.23}``
  from stride 16 -> 1.08 cells on every level). Small nodules thus get up to 16 mm x 1.25 cells
  of context on the stride-16 map; large ones are probed in detail on the stride-4 map.
  DA off: the standard RoI, ``d / s_l`` cells on level ``l``.
* **Crop with margin**: the crop window is the RoI plus ``roi_margin`` cells on every side,
  resampled (``roi_align_3d``) to a fixed ``crop_samples^3`` grid (3^3), so the transposed
  convolutions that follow see valid context at the RoI border.
* **Local Magnification (LM)**: 2 x [BN-ReLU-2^3 transposed conv (stride 2) + Bottle Neck x 2],
  weights shared by the three levels: 3^3 -> 6^3 -> 12^3, a 4x finer grid of the window.
  Table I prints "Magnify Output 5x5x5"; a stride-2 2^3 deconv always gives an even size, so we
  read 5 as approximate (it cannot be produced by the listed layers) and keep the arithmetic
  that the Classifier row pins down.
* **RoI Align 2^3**: the RoI (without margin) is aligned out of the magnified window (LM off: out
  of the feature map directly), giving ``C x 2^3`` per level; the three levels are concatenated:
  ``3 levels x 32 channels x 2^3 = 768`` inputs of the classifier ``768 -> 256 -> 1`` (Table I).

Coordinates: boxes are in input voxels (voxel centres at integers). On a level with stride
``s`` the continuous "edge" coordinate of input position ``z`` is ``(z + 0.5) / s`` (cell ``i``
spans ``[i, i + 1)``), which is the convention of ``roi_align_3d(..., aligned=True)``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .backbone import Bottleneck


def roi_sizes_in_cells(diameters: torch.Tensor, ref_levels: torch.Tensor, strides: Sequence[int],
                       diameter_alignment: bool) -> torch.Tensor:
    """RoI side in feature cells ``[K, L]`` for every proposal (rows) on every level (columns).

    ``diameters [K]`` in input voxels, ``ref_levels [K]`` the level each proposal came from.
    """
    s = diameters.new_tensor([float(x) for x in strides])
    if diameter_alignment:
        ref = (diameters / s[ref_levels]).unsqueeze(1)
        return ref.expand(-1, len(strides)).clone()
    return diameters.unsqueeze(1) / s.unsqueeze(0)


def _roi_align():
    from ..ops import roi_align_3d

    return roi_align_3d


class LocalMagnification(nn.Module):
    """``[K, C, n, n, n]`` -> ``[K, C, 4n, 4n, 4n]``: two x2 magnify stages, shared across levels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        stages = []
        for _ in range(2):
            stages += [nn.BatchNorm3d(channels), nn.ReLU(inplace=True),
                       nn.ConvTranspose3d(channels, channels, kernel_size=2, stride=2, bias=False),
                       Bottleneck(channels), Bottleneck(channels)]
        self.body = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class AggregatedFPRN(nn.Module):
    """Scores proposals from aggregated, diameter-aligned, magnified pyramid crops.

    ``forward(features [P4, P8, P16], boxes [K, 4], ref_levels [K], batch_index [K]) -> logits [K]``.
    """

    def __init__(self, channels: int, strides: Sequence[int] = (4, 8, 16), diameter_alignment: bool = True,
                 local_magnification: bool = True, roi_margin: float = 1.0, crop_samples: int = 3,
                 roi_output: int = 2, fc_hidden: int = 256) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.diameter_alignment = diameter_alignment
        self.roi_margin = roi_margin
        self.crop_samples = crop_samples
        self.roi_output = roi_output
        self.magnify = LocalMagnification(channels) if local_magnification else None
        in_features = len(self.strides) * channels * roi_output ** 3       # 3 x 32 x 2^3 = 768
        self.classifier = nn.Sequential(nn.Linear(in_features, fc_hidden), nn.ReLU(inplace=True),
                                        nn.Linear(fc_hidden, 1))

    @staticmethod
    def _cube_rois(index: torch.Tensor, centre: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        """``[K, 7]`` = (index, z1, y1, x1, z2, y2, x2) for cubes ``centre [K, 3]``, ``side [K]``."""
        half = (side / 2).unsqueeze(1)
        return torch.cat([index.to(centre).unsqueeze(1), centre - half, centre + half], dim=1)

    def windows(self, features: Sequence[torch.Tensor], boxes: torch.Tensor, ref_levels: torch.Tensor,
                batch_index: torch.Tensor):
        """The per-level crops the trainable part of the FPRN starts from.

        Returns ``(crops, inner)``: with Local Magnification, ``crops [K, L, C, n, n, n]`` are the
        RoI + margin windows (``n = crop_samples``) and ``inner [K, L]`` the RoI side inside
        the magnified window (in its cells); without it, ``crops [K, L, C, r, r, r]`` are the
        final RoI features and ``inner`` is None. Nothing here has parameters, so a frozen
        backbone's windows can be cached and the FPRN trained on them
        (:mod:`LesionDetectorLib.training.fprn_phase`).
        """
        roi_align_3d = _roi_align()
        roi_cells = roi_sizes_in_cells(boxes[:, 3], ref_levels, self.strides, self.diameter_alignment)
        r = self.roi_output
        crops, inner = [], []
        for level, (feat, stride) in enumerate(zip(features, self.strides)):
            # Under autocast the op computes in float32 (ops.roi_align_3d), so the boxes stay float32.
            box_dtype = torch.float32 if torch.is_autocast_enabled(feat.device.type) else feat.dtype
            centre = (boxes[:, :3] + 0.5) / stride
            side = roi_cells[:, level]
            if self.magnify is None:
                rois = self._cube_rois(batch_index, centre, side)
                crops.append(roi_align_3d(feat, rois.to(box_dtype), (r, r, r), 1.0, -1, True))
                continue
            n = self.crop_samples
            window = side + 2 * self.roi_margin
            rois = self._cube_rois(batch_index, centre, window)
            crops.append(roi_align_3d(feat, rois.to(box_dtype), (n, n, n), 1.0, 2, True))   # [K, C, n, n, n]
            inner.append(side / window)            # RoI side as a fraction of the window
        stacked = torch.stack(crops, dim=1)
        return stacked, (torch.stack(inner, dim=1) if inner else None)

    def from_windows(self, crops: torch.Tensor, inner: Optional[torch.Tensor]) -> torch.Tensor:
        """Aggregated features ``[K, L * C * r^3]`` from :meth:`windows`' output."""
        if self.magnify is None:
            return crops.flatten(1)
        roi_align_3d = _roi_align()
        k, n_levels = crops.shape[0], crops.shape[1]
        r = self.roi_output
        # One Local Magnification pass for all levels: its weights are shared across levels.
        mag = self.magnify(crops.flatten(0, 1))                                      # [K*L, C, m, m, m]
        m = mag.shape[-1]
        box_dtype = torch.float32 if torch.is_autocast_enabled(mag.device.type) else mag.dtype
        side = (inner.reshape(-1) * m).to(mag.device)
        mid = side.new_full((k * n_levels, 3), m / 2)
        own = torch.arange(k * n_levels, device=mag.device)
        rois = self._cube_rois(own, mid, side)
        out = roi_align_3d(mag, rois.to(box_dtype), (r, r, r), 1.0, -1, True)       # [K*L, C, r, r, r]
        return out.reshape(k, n_levels, *out.shape[1:]).flatten(1)

    def level_features(self, features: Sequence[torch.Tensor], boxes: torch.Tensor, ref_levels: torch.Tensor,
                       batch_index: torch.Tensor) -> torch.Tensor:
        """Aggregated features ``[K, L * C * r^3]`` (r = ``roi_output``)."""
        crops, inner = self.windows(features, boxes, ref_levels, batch_index)
        return self.from_windows(crops, inner)

    def classify(self, crops: torch.Tensor, inner: Optional[torch.Tensor]) -> torch.Tensor:
        """Logits ``[K]`` from cached :meth:`windows` output."""
        if crops.shape[0] == 0:
            return crops.new_zeros((0,))
        return self.classifier(self.from_windows(crops, inner)).squeeze(1)

    def forward(self, features: Sequence[torch.Tensor], boxes: torch.Tensor, ref_levels: torch.Tensor,
                batch_index: torch.Tensor) -> torch.Tensor:
        if boxes.shape[0] == 0:
            return boxes.new_zeros((0,))
        return self.classifier(self.level_features(features, boxes, ref_levels, batch_index)).squeeze(1)
