"""The model card's file, read without torch: ``model.json`` beside ``model.safetensors``.

:func:`read_card` checks what every reader relies on (a JSON object with ``config`` and
``sha256``); the weights are loaded and verified by :mod:`.card`. Torch-free so that the CLI
can read a card's preprocessing before torch has been imported.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Union

from ..errors import ModelError

CARD_FORMAT = "lesion-detector/model-card"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"


def read_card(directory: Union[str, Path]) -> Dict[str, Any]:
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise ModelError(f"model card {path} not found")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"model card {path} is not valid JSON: {exc}") from exc
    if not isinstance(card, dict):
        raise ModelError(f"model card {path} is not a JSON object (it holds {type(card).__name__} "
                         f"{json.dumps(card)[:40]}); the card is corrupt")
    for key in ("config", "sha256"):
        if key not in card:
            raise ModelError(f"model card {path} has no '{key}' field")
    if not isinstance(card["config"], dict):
        raise ModelError(f"model card {path}: 'config' must be an object, not {type(card['config']).__name__}")
    if not isinstance(card["sha256"], str):
        raise ModelError(f"model card {path}: 'sha256' must be a hex string, not {type(card['sha256']).__name__}")
    for key in ("operating_points", "training_data", "preprocessing"):
        if card.get(key) is not None and not isinstance(card[key], dict):
            raise ModelError(f"model card {path}: '{key}' must be an object, not {type(card[key]).__name__}")
    if not isinstance(card.get("weights_file", WEIGHTS_FILE), str):
        raise ModelError(f"model card {path}: 'weights_file' must be a file name")
    return card
