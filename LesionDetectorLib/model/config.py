"""Model configuration: every switch of the paper's ablation tables II-IV as a field.

``ModelConfig`` is a flat, JSON-safe dataclass. ``ModelConfig.preset(name)`` gives the
paper's configurations:

==================  ==========================================================
name                what it is
==================  ==========================================================
``luna16``          3D-AG-LM, crop 128, multi-scale anchor1, adaptive focal, DA+LM,
                    joint training (Table III "Crop 128, DA, Magnify, Joint")
``deeplesion``      same architecture, DeepLesion anchors, 64x128x128 crops
``rpn_baseline``    Table II row d: multi-scale anchor1 + focal, no FPRN
``table2_a`` .. ``table2_e``   the rows of Table II (single/multi-scale, OHEM/focal, anchor2)
``crop96``          Table III "Crop 96, DA, Magnify, Joint"
``no_da``           Table III "Crop 128, Joint" without Diameter Alignment
``no_lm``           3D-AG without Local Magnification ("3D-AG" of the paper)
``alternating``     Table III alternating training
``luna16_abs``      ``luna16`` plus one Anchor Based Sampling round (the paper's "dagger")
``tiny``            narrow widths for tests and CPU smoke runs (same topology)
==================  ==========================================================

Choices the paper leaves open are documented next to the field they belong to.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

ANCHOR_SETS: Dict[str, Tuple[Tuple[float, ...], ...]] = {
    # Section IV-B: anchors in mm (= voxels at 1 mm) for strides 4, 8, 16.
    "anchor1": ((4.0, 6.0), (8.0, 12.0), (16.0, 24.0)),
    "anchor2": ((5.0, 10.0), (15.0, 20.0), (25.0, 35.0)),
    # Section V-B.
    "deeplesion": ((3.0, 5.0, 7.0), (10.0, 13.0, 17.0), (22.0, 30.0, 40.0)),
}


@dataclass
class ModelConfig:
    # ---- backbone (Table I) ----
    in_channels: int = 1
    stem_channels: int = 24          # PreBlock width (Table I gives none; DeepLung's 24)
    pyramid_channels: int = 32       # every pyramid level has 32 channels (section III-A)
    growth_rate: int = 16            # DenseNet growth rate (Table I caption)
    bottleneck_factor: int = 4       # dense layer 1x1x1 conv width = factor * growth
    strides: Tuple[int, ...] = (4, 8, 16)

    # ---- RPN ----
    anchors: str = "anchor1"         # anchor1 | anchor2 | deeplesion
    multi_scale: bool = True         # False: all anchors of the set on stride 4 (Table II a/b)
    cls_loss: str = "focal"          # focal (adaptive, eq. 3) | ohem
    focal_alpha: float = 0.8
    focal_gamma: float = 5.0
    # T of eq. (3) grows linearly with training progress from t_start to t_end (the paper
    # says only "a linear factor increasing with iterations").
    focal_t_start: float = 1.0
    focal_t_end: float = 4.0
    ohem_neg_ratio: int = 3          # hard negatives per positive (DeepLung-style OHEM)
    ohem_min_neg: int = 16
    iou_pos: float = 0.5             # IoU+ (section IV-B)
    iou_neg: float = 0.02            # IoU-
    # The best anchor of each ground truth becomes positive when its IoU is at least this,
    # so small or off-grid nodules are never left without a positive anchor.
    best_anchor_floor: float = 0.1
    smooth_l1_beta: float = 1.0

    # ---- proposals / NMS ----
    pre_nms_top_n_train: int = 600
    post_nms_top_n_train: int = 24
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_test: int = 64
    proposal_nms_iou: float = 0.1
    proposal_min_score: float = 0.01

    # ---- FPRN (section III-C/D) ----
    fprn: bool = True
    diameter_alignment: bool = True
    local_magnification: bool = True
    roi_margin: float = 1.0          # margin (feature cells) on each side of the DA crop
    crop_samples: int = 3            # fixed crop size (samples per axis) fed to Local Magnification
    roi_output: int = 2              # RoI Align output 2x2x2 (Table I)
    fc_hidden: int = 256             # Classifier 768 x 256, 256 x 1 (Table I)
    fprn_batch_per_image: int = 16   # sampled proposals per crop in training
    fprn_pos_fraction: float = 0.25
    training: str = "joint"          # joint | alternating
    rpn_first_fraction: float = 0.5  # fraction of iterations training the RPN only (section III-E)

    # ---- data / training ----
    crop_size: Tuple[int, int, int] = (128, 128, 128)
    abs_rounds: int = 0              # Anchor Based Sampling boosting rounds (0 or 1 in the paper)
    max_train_diameter: float = 0.0  # >0: drop larger GT boxes in training (DeepLesion: 48 mm)

    # ---- outputs ----
    score_thresh: float = 0.05       # keep low scores for FROC; the paper's cut is sigmoid(-1)=0.269
    detections_per_crop: int = 64
    final_nms_iou: float = 0.1

    name: str = "custom"
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.strides = tuple(int(s) for s in self.strides)
        self.crop_size = tuple(int(s) for s in self.crop_size)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        if self.anchors not in ANCHOR_SETS:
            raise ValueError(f"anchors must be one of {sorted(ANCHOR_SETS)}, got {self.anchors!r}")
        if self.cls_loss not in ("focal", "ohem"):
            raise ValueError(f"cls_loss must be 'focal' or 'ohem', got {self.cls_loss!r}")
        if self.training not in ("joint", "alternating"):
            raise ValueError(f"training must be 'joint' or 'alternating', got {self.training!r}")
        if self.strides != (4, 8, 16):
            raise ValueError("the backbone of Table I has pyramid strides (4, 8, 16)")
        if any(c % 16 for c in self.crop_size):
            raise ValueError(f"crop_size must be a multiple of 16 on every axis, got {self.crop_size}")
        if not 0.0 <= self.iou_neg < self.iou_pos <= 1.0:
            raise ValueError("need 0 <= iou_neg < iou_pos <= 1")

    # ----------------------------------------------------------------- anchors
    def level_anchor_sizes(self) -> List[Tuple[float, ...]]:
        """Anchor diameters (voxels) per pyramid level; empty tuples for unused levels."""
        sets = ANCHOR_SETS[self.anchors]
        if self.multi_scale:
            return [tuple(s) for s in sets]
        flat = tuple(d for level in sets for d in level)
        return [flat, (), ()]

    # -------------------------------------------------------------- JSON I/O
    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["strides"] = list(self.strides)
        d["crop_size"] = list(self.crop_size)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------- presets
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        fields = dict(PRESETS[name])
        fields.update(overrides)
        fields.setdefault("name", name)
        return cls(**fields)

    @staticmethod
    def preset_names() -> List[str]:
        return sorted(PRESETS)


_RPN_ONLY = dict(fprn=False, diameter_alignment=False, local_magnification=False)

PRESETS: Dict[str, Dict[str, Any]] = {
    "luna16": dict(),
    "luna16_abs": dict(abs_rounds=1),
    "no_lm": dict(local_magnification=False),
    "no_da": dict(diameter_alignment=False, local_magnification=False),
    "crop96": dict(crop_size=(96, 96, 96)),
    "alternating": dict(crop_size=(96, 96, 96), training="alternating"),
    "rpn_baseline": dict(_RPN_ONLY),
    "table2_a": dict(_RPN_ONLY, multi_scale=False, cls_loss="ohem"),
    "table2_b": dict(_RPN_ONLY, multi_scale=False, cls_loss="focal"),
    "table2_c": dict(_RPN_ONLY, multi_scale=True, cls_loss="ohem"),
    "table2_d": dict(_RPN_ONLY, multi_scale=True, cls_loss="focal"),
    "table2_e": dict(_RPN_ONLY, multi_scale=True, cls_loss="focal", anchors="anchor2"),
    "table2_f": dict(_RPN_ONLY, abs_rounds=1),
    "deeplesion": dict(anchors="deeplesion", crop_size=(64, 128, 128), max_train_diameter=48.0),
    "tiny": dict(stem_channels=8, pyramid_channels=16, growth_rate=8, crop_size=(64, 64, 64),
                 pre_nms_top_n_train=200, post_nms_top_n_train=8, pre_nms_top_n_test=300,
                 post_nms_top_n_test=16, fprn_batch_per_image=8, fc_hidden=64),
}
