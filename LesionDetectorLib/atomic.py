"""Atomic file writes, used by every writer of the library (exports, model cards,
checkpoints, training cache, evaluation reports).

A temporary file in the destination folder, flushed to disk, then ``os.replace``: a reader
(Slicer, a PACS import, the next batch run, another DDP rank) sees either the previous file
or the complete new one, never a partial one; an exception or a cancel while writing removes
the temporary file and leaves the destination untouched. The file gets the permissions of an
ordinary ``open`` (the umask), not ``mkstemp``'s owner-only 0600, so shared results stay readable.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path``.

    For writers that need a file name (pydicom, SimpleITK) rather than an open file.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:  # flush to disk before the rename makes it visible
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: PathLike, mode: str = "w", encoding: str = "utf-8",
                newline: Optional[str] = None) -> Iterator[IO]:
    """``open()`` for writing (``"w"`` or ``"wb"``) that commits atomically on success."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports modes 'w' and 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        if mode == "wb":
            with open(tmp, "wb") as fh:
                yield fh
        else:
            with open(tmp, "w", encoding=encoding, newline=newline) as fh:
                yield fh


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    with atomic_open(path, "w") as fh:
        fh.write(text)
    return Path(path)
