"""Entry point of ``lesion-detector``.

Each subcommand lives in ``LesionDetectorLib/cli/<name>.py`` and provides
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
``func(args) -> int``. Exit codes: 0 ok, 2 bad input (one-line cause), 1 internal error.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from typing import List, Optional

from ..errors import CancelledError, LesionDetectorError
from ..version import __version__

SUBCOMMANDS = ("synth", "detect", "compare", "demo", "evaluate", "train", "labels")
#: Subcommands whose process may end without the interpreter's teardown (see console_main):
#: every file they write is complete (atomic renames, folders committed) before main returns.
FAST_EXIT_COMMANDS = ("detect", "compare", "demo", "evaluate")
_state = {"fast_exit": False}


def version_text() -> str:
    import torch

    try:
        from ..ops import backend_info

        backend = backend_info()
    except Exception as exc:  # noqa: BLE001 - --version must always answer
        backend = f"unavailable ({exc})"
    cuda = torch.version.cuda or "none"
    return (f"lesion-detector {__version__}\n"
            f"torch {torch.__version__} (CUDA build: {cuda}, CUDA available: {torch.cuda.is_available()})\n"
            f"roi_align_3d backend: {backend}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lesion-detector",
        description="Lesion / lung-nodule detection in CT with the 3D Aggregated Faster R-CNN.")
    parser.add_argument("--version", action="store_true", help="print versions and the op backend, then exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        modname = f"{__package__}.{name}"
        if importlib.util.find_spec(modname) is None:
            continue
        importlib.import_module(modname).register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a bad option value (argparse printed why) or --help: a code, not an exit
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    args.argv = list(sys.argv[1:] if argv is None else argv)     # recorded in model cards
    _state["fast_exit"] = args.command in FAST_EXIT_COMMANDS
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.version:
        print(version_text())
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CancelledError as exc:
        print(f"lesion-detector: cancelled: {exc}", file=sys.stderr)
        return 130
    except (LesionDetectorError, FileNotFoundError, ValueError) as exc:
        print(f"lesion-detector: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lesion-detector: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: one line, exit 1
        logging.getLogger("lesion-detector").debug("internal error", exc_info=True)
        print(f"lesion-detector: internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)",
              file=sys.stderr)
        return 1


def console_main() -> None:
    """The ``lesion-detector`` executable: :func:`main`, then, after a detection-type command,
    ``os._exit``. Finalizing an interpreter that has torch, SimpleITK, highdicom and ~1600
    modules loaded takes ~0.9 s on 2 CPU cores (measured on the 64-slice DICOM chest CT of
    docs/benchmarks.md), a tenth of a whole detection; nothing is left to do by then: the
    results are on disk and the streams are flushed here."""
    import os

    rc = main()
    if not _state["fast_exit"]:
        sys.exit(rc)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(rc)


if __name__ == "__main__":
    console_main()
