"""Device choice and the out-of-memory fallback of batched inference.

``resolve_device("auto")`` picks CUDA when available, else CPU; ``memory_format_for`` the
tensor layout used there (training and detection). :class:`BatchRunner`
runs a per-batch function and, on a CUDA out-of-memory error, frees the cache and
retries with half the batch, then (at batch size 1) moves to the CPU; every fallback is
logged and recorded in :attr:`BatchRunner.notes` so it reaches the results' provenance.
"""
from __future__ import annotations

import logging
from typing import Callable, List, Sequence, TypeVar

import torch

log = logging.getLogger("lesion-detector.inference")

T = TypeVar("T")
R = TypeVar("R")


def memory_format_for(device: torch.device) -> torch.memory_format:
    """Layout of weights and inputs on ``device``: channels-last (NDHWC) on CPU, where oneDNN's
    3-D convolutions run ~20-25 % faster (docs/benchmarks.md); CUDA keeps the contiguous layout
    it was validated with."""
    return torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format


def resolve_device(device: "str | torch.device" = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when available else ``cpu``; explicit names are checked."""
    if isinstance(device, torch.device):
        dev = device
    else:
        name = str(device).strip().lower()
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(name)
        except RuntimeError as exc:
            raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {str(dev)!r}; use auto, cpu or cuda")
    return dev


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA OOM (the dedicated class, or the older RuntimeError message)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class BatchRunner:
    """Runs ``fn(items, device)`` over ``items`` in batches with OOM fallback.

    ``fn`` receives a slice of the item list and the current device and returns one
    result per item. On OOM the same items are retried with a halved batch; at batch
    size 1 on a GPU, ``on_device_change(cpu)`` is called (the caller moves its model)
    and the run continues on the CPU. OOM on the CPU is re-raised.
    """

    def __init__(self, device: torch.device, batch_size: int,
                 on_device_change: Callable[[torch.device], None] = lambda dev: None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.notes: List[str] = []
        self._on_device_change = on_device_change

    def _fallback(self, exc: BaseException) -> None:
        if self.device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self.batch_size > 1:
            self.batch_size //= 2
            note = f"out of memory on {self.device}; retrying with batch size {self.batch_size}"
        elif self.device.type != "cpu":
            note = f"out of memory on {self.device} at batch size 1; continuing on the CPU (slower)"
            self.device = torch.device("cpu")
            self._on_device_change(self.device)
        else:
            raise exc
        log.warning(note)
        self.notes.append(note)

    def run(self, items: Sequence[T], fn: Callable[[Sequence[T], torch.device], List[R]],
            after_batch: Callable[[int], None] = lambda n_done: None) -> List[R]:
        """Results in item order; ``after_batch(n_done)`` runs after each successful batch
        (progress and cancellation hook: it may raise to stop)."""
        results: List[R] = []
        i = 0
        while i < len(items):
            chunk = items[i:i + self.batch_size]
            try:
                out = fn(chunk, self.device)
            except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
                if not is_out_of_memory(exc):
                    raise
                self._fallback(exc)
                continue
            if len(out) != len(chunk):
                raise RuntimeError(f"batch function returned {len(out)} results for {len(chunk)} items")
            results.extend(out)
            i += len(chunk)
            after_batch(i)
        return results
