"""Progress reporting, cancellation and per-stage timing for long-running detection.

A progress callback has the signature ``callback(stage: str, done: int, total: int)``;
it is called when a stage starts (``done=0``), after every sliding-window tile and
when a stage ends (``done == total``). Stages: ``read``, ``preprocess``, ``model``,
``postprocess``.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, Optional

from ..errors import CancelledError

ProgressCallback = Callable[[str, int, int], None]


class CancelToken:
    """Thread-safe cancel flag: the GUI (or a signal handler) calls :meth:`cancel`,
    the detector calls :meth:`raise_if_cancelled` between tiles and stages."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise CancelledError("detection was cancelled; no results were written")


def report(callback: Optional[ProgressCallback], stage: str, done: int, total: int) -> None:
    """Call ``callback`` if one was given (the detector never requires one)."""
    if callback is not None:
        callback(stage, int(done), int(total))


class StageTimer:
    """Wall-clock seconds per named stage, accumulated; ``total`` spans first start to now."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}
        self._t0 = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def add(self, name: str, seconds: float) -> None:
        """Seconds of a stage done elsewhere (ahead of time, in another thread): they count for the
        stage, not for ``total``, which stays this timer's wall clock."""
        self.seconds[name] = self.seconds.get(name, 0.0) + float(seconds)

    def as_dict(self, stages=("read", "preprocess", "model", "postprocess")) -> Dict[str, float]:
        out = {name: round(self.seconds.get(name, 0.0), 4) for name in stages}
        out["total"] = round(time.perf_counter() - self._t0, 4)
        return out
