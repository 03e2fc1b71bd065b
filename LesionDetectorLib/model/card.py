"""Pretrained weights on disk: ``model.safetensors`` + ``model.json`` (the model card).

``model.json``::

    {"format": "lesion-detector/model-card", "format_version": 1,
     "name", "version", "config": ModelConfig.to_dict(), "sha256": <of model.safetensors>,
     "training_data": {...}, "operating_points": {"sensitivity_0.90": {...}, ...}, ...}

Weights are safetensors only (nothing is ever unpickled). ``load_pretrained`` recomputes the
SHA-256 of the weight file and refuses a mismatch with ``ModelError``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import torch

from ..atomic import atomic_write_bytes
from ..errors import ModelError
from ..version import __version__
from .config import ModelConfig
from .faster_rcnn import AggregatedFasterRCNN, build_model

from .card_file import CARD_FILE, CARD_FORMAT, WEIGHTS_FILE, read_card  # noqa: F401 - read here, re-exported


def sha256_file(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def model_state_tensors(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """State dict as contiguous CPU tensors (safetensors refuses shared or strided storage)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def save_pretrained(model: AggregatedFasterRCNN, directory: Union[str, Path], card: Dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``directory``; returns the card path.

    ``card`` supplies ``name``, ``training_data``, ``operating_points`` and any other fields;
    ``config``, ``sha256``, ``format`` and ``library_version`` are filled in here.
    """
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)          # unwrap DDP
    blob = save(model_state_tensors(model), metadata={"format": "pt"})
    atomic_write_bytes(directory / WEIGHTS_FILE, blob)
    full = dict(card)
    full.update({
        "format": CARD_FORMAT, "format_version": 1,
        "name": card.get("name", model.config.name),
        "version": card.get("version", "0.0.0"),
        "library_version": __version__,
        "config": model.config.to_dict(),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "weights_file": WEIGHTS_FILE,
    })
    full.setdefault("training_data", {})
    full.setdefault("operating_points", {})
    atomic_write_bytes(directory / CARD_FILE, (json.dumps(full, indent=2, sort_keys=True) + "\n").encode())
    return directory / CARD_FILE


def load_pretrained(directory: Union[str, Path], device: Union[str, torch.device] = "cpu"
                    ) -> Tuple[AggregatedFasterRCNN, Dict[str, Any]]:
    """Verified model (eval mode, on ``device``) and its card from ``directory``.

    Raises ``ModelError`` when a file is missing, the SHA-256 does not match the card, or the
    weights do not fit the configured architecture.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    directory = Path(directory)
    card = read_card(directory)
    wpath = directory / card.get("weights_file", WEIGHTS_FILE)
    if not wpath.is_file():
        raise ModelError(f"weights file {wpath} not found")
    blob = wpath.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != card["sha256"]:
        raise ModelError(f"weights file {wpath} does not match its model card (sha256 {digest[:12]}... "
                         f"!= {str(card['sha256'])[:12]}...): the file is corrupt or was replaced")
    try:
        config = ModelConfig.from_dict(card["config"])
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ModelError(f"model card {directory / CARD_FILE} has an invalid config: {exc}") from exc
    try:
        model = build_model(config)
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as exc:  # wrong-typed config fields
        raise ModelError(f"model card {directory / CARD_FILE} has an invalid config ({exc}); the model "
                         "cannot be built from it") from exc
    try:
        state = load(blob)
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError) as exc:
        raise ModelError(f"weights in {wpath} do not fit the model of its card: {exc}") from exc
    return model.to(device).eval(), card
