"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

``<dir>/checkpoint.safetensors`` holds ``model.<name>`` (state dict), ``optim.<param>.<key>``
(per-parameter optimizer tensors, e.g. Adam moments and step) and ``rng.torch`` (the CPU
RNG state); ``<dir>/checkpoint.json`` holds the optimizer's param-group hyper-parameters,
its non-tensor per-parameter state, the training state (epoch, iteration, best CPM...) and
the model config. Writes are atomic (temp file + rename), so an interrupted save never
leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from ..atomic import atomic_write_bytes
from ..errors import ModelError

TENSORS = "checkpoint.safetensors"
STATE = "checkpoint.json"


def save_checkpoint(directory: Union[str, Path], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    train_state: Dict[str, Any], scaler: Optional[torch.amp.GradScaler] = None) -> Path:
    """Write the checkpoint into ``directory``; returns the JSON path."""
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)
    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalar_state: Dict[str, Dict[str, Any]] = {}
    for pid, pstate in opt["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalar_state.setdefault(str(pid), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"train_state": train_state, "param_groups": opt["param_groups"], "optim_scalars": scalar_state,
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "config": model.config.to_dict() if hasattr(model, "config") else None}
    atomic_write_bytes(directory / TENSORS, save(tensors))
    atomic_write_bytes(directory / STATE, (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode())
    return directory / STATE


def load_checkpoint(directory: Union[str, Path], model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer],
                    scaler: Optional[torch.amp.GradScaler] = None, restore_rng: bool = True
                    ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Restore model (and optimizer, scaler, RNG) in place -> (train_state, saved config dict)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / TENSORS).is_file() or not (directory / STATE).is_file():
        raise ModelError(f"no checkpoint in {directory} (expected {TENSORS} and {STATE})")
    meta = json.loads((directory / STATE).read_text())
    tensors = load_file(str(directory / TENSORS))
    model = getattr(model, "module", model)
    device = next(model.parameters()).device
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"checkpoint in {directory} does not fit this model: {exc}") from exc
    if optimizer is not None:
        per_param: Dict[int, Dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, key = k.split(".", 2)
                # the "step" counter stays on CPU as torch's optimizers expect
                per_param.setdefault(int(pid), {})[key] = v if key == "step" else v.to(device)
        for pid, scalars in meta["optim_scalars"].items():
            per_param.setdefault(int(pid), {}).update(scalars)
        optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    if restore_rng and "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    return meta["train_state"], meta.get("config") or {}
