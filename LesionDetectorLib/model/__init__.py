"""3D Aggregated Faster R-CNN (the paper, section III, Table I).

``ModelConfig`` (every ablation switch, presets), ``build_model(config)``,
``AggregatedFasterRCNN`` (train: loss dict, eval: per-image detections) and the model-card
weight I/O ``save_pretrained`` / ``load_pretrained`` (safetensors + SHA-256).

Names load on first use, so ``ModelConfig`` (which the CLI's option parsing reads for the
preset names) imports without torch: a ``detect`` run then imports torch only when it loads the
model, while its first scan is read and preprocessed in another thread.
"""
import importlib

_LAZY = {
    "load_pretrained": "card", "read_card": "card_file", "save_pretrained": "card",
    "ModelConfig": "config",
    "AggregatedFasterRCNN": "faster_rcnn", "build_model": "faster_rcnn",
}

__all__ = ["ModelConfig", "build_model", "AggregatedFasterRCNN", "save_pretrained", "load_pretrained",
           "read_card"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'LesionDetectorLib.model' has no attribute {name!r}")
