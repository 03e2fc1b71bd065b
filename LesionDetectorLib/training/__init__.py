"""Training: cached preprocessing, crop sampling (+ ABS), the loop (CPU / GPU / torchrun DDP),
safetensors checkpoints. ``train_model(config, train_scans, val_scans, TrainOptions(...))``."""
from .cache import CachedScan, build_deeplesion_cache, build_luna16_cache, read_cached_scan, write_cached_scan
from .checkpoint import load_checkpoint, save_checkpoint
from .loop import TrainOptions, train_model
from .sampler import CropDataset

__all__ = ["CachedScan", "CropDataset", "TrainOptions", "build_deeplesion_cache", "build_luna16_cache", "load_checkpoint",
           "read_cached_scan", "save_checkpoint", "train_model", "write_cached_scan"]
