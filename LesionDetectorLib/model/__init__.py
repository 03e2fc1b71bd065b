"""3D Aggregated Faster R-CNN (the paper, section III, Table I).

``ModelConfig`` (every ablation switch, presets), ``build_model(config)``,
``AggregatedFasterRCNN`` (train: loss dict, eval: per-image detections) and the model-card
weight I/O ``save_pretrained`` / ``load_pretrained`` (safetensors + SHA-256).
"""
from .card import load_pretrained, read_card, save_pretrained
from .config import ModelConfig
from .faster_rcnn import AggregatedFasterRCNN, build_model

__all__ = ["ModelConfig", "build_model", "AggregatedFasterRCNN", "save_pretrained", "load_pretrained",
           "read_card"]
