"""Option value types and the options several subcommands share.

A bad value is refused while parsing (argparse ``type=``): the cause on stderr, exit code 2,
before anything is read or written. The ``add_*`` helpers give every subcommand that has the
option the same spelling, choices and default.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Callable, Optional

from ..evaluation.dataset_detection import DEFAULT_MODEL

DEVICES = ("auto", "cpu", "cuda")
PROGRESS_MODES = ("bar", "jsonl", "none")


# ------------------------------------------------------------------------ option value types
def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _finite_float(text: str, ok: Callable[[float], bool], not_a_number: str, out_of_range: str) -> float:
    """``text`` as a finite float for which ``ok`` holds, else argparse's error with the given wording."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{not_a_number}, got {text!r}") from None
    if not math.isfinite(value) or not ok(value):
        raise argparse.ArgumentTypeError(f"{out_of_range}, got {text!r}")
    return value


def positive_number(text: str) -> float:
    """argparse type: a finite number > 0 (a duration, a distance)."""
    return _finite_float(text, lambda v: v > 0, "must be a number > 0", "must be a finite number > 0")


def probability(text: str) -> float:
    """argparse type: a finite number in [0, 1] (scores are probabilities)."""
    return _finite_float(text, lambda v: 0.0 <= v <= 1.0, "must be a number between 0 and 1",
                         "must be a number between 0 and 1")


def output_folder(text: str) -> Path:
    """argparse type: a path that is, or can become, a folder (writability is probed before any work)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must be a folder path, got an empty string")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"'{text}' is a file, not a folder")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"'{text}' cannot be created: '{parent}' is a file")
            break
    return path


# ---------------------------------------------------------------------------- shared options
def add_model(p: argparse.ArgumentParser, help: str = "bundled model name or model directory") -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"{help} (default {DEFAULT_MODEL})")


def add_device(p: argparse.ArgumentParser, help: str = "where the model runs (auto: CUDA when available)") -> None:
    p.add_argument("--device", default="auto", choices=DEVICES, help=help)


def add_progress(p: argparse.ArgumentParser, modes=PROGRESS_MODES, default: Optional[str] = "bar") -> None:
    """``--progress``: ``bar`` (tqdm on stderr), ``jsonl`` (the event protocol of
    ``docs/architecture.md`` on stdout, what the Slicer module reads) or ``none``.

    ``default=None``: resolved by :func:`progress_mode` (a bar only on a terminal)."""
    meaning = {"bar": "a progress bar on stderr", "jsonl": "one JSON event per line on stdout, for programs",
               "none": "no progress"}
    p.add_argument("--progress", default=default, choices=tuple(modes),
                   help="; ".join(f"{m}: {meaning[m]}" for m in modes)
                        + (f" (default {default})" if default else " (default: bar on a terminal, else none)"))


def progress_mode(args) -> str:
    """``args.progress``, or for an unset one ``bar`` when stderr is a terminal, else ``none``
    (a bar's redraws would fill a log file, and stderr would no longer be one line on bad input)."""
    if args.progress:
        return args.progress
    isatty = getattr(sys.stderr, "isatty", None)
    return "bar" if isatty is not None and isatty() else "none"


def run_with_progress(sink, work: Callable[[], int]) -> int:
    """Run ``work()`` (a subcommand's body, returning its exit code) under ``sink``, an
    :class:`~LesionDetectorLib.batch.EventSink` in the ``--progress`` mode.

    With ``jsonl`` the library's log records become ``log`` events and bad input (a
    ``LesionDetectorError``, ``ValueError`` or missing file) is one ``error`` event with exit code
    2, since stdout is the protocol a program reads; otherwise it propagates to ``main``, which
    prints the one-line cause. Cancellation always propagates (exit code 130).
    """
    from ..errors import CancelledError, LesionDetectorError

    handler = None
    if sink.mode == "jsonl":
        from ..batch import JsonlLogHandler

        handler = JsonlLogHandler(sink)
        logging.getLogger("lesion-detector").addHandler(handler)
    try:
        return work()
    except (LesionDetectorError, ValueError, FileNotFoundError) as exc:
        if sink.mode != "jsonl" or isinstance(exc, CancelledError):
            raise
        sink.emit({"event": "error", "message": str(exc), "exit_code": 2})
        return 2
    finally:
        sink.close_bar()
        if handler is not None:
            logging.getLogger("lesion-detector").removeHandler(handler)
