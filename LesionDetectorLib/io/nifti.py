"""NIfTI (``.nii``, ``.nii.gz``) data-size check, before ITK reads pixels.

ITK reads a truncated ``.nii`` or ``.nii.gz`` without complaint and fills the missing voxels
with zeros (seen with ITK 5.4), so part of a scan would silently be 0 HU. The header's
``dim``, ``bitpix`` and ``vox_offset`` give the byte count the pixels need; a plain file must
be that long, a gzip stream must uncompress (streamed, nothing kept) to at least that much.
Pairs (``.hdr`` + ``.img``) and headers that cannot be parsed are left to ITK.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from typing import Optional, Tuple

import numpy as np

from ..errors import VolumeError

_CHUNK = 1 << 22


def _layout(head: bytes) -> Optional[Tuple[list, int, int]]:
    """``(dim[1:ndim+1], bitpix, vox_offset)`` of a single-file NIfTI-1 / NIfTI-2 header, else None."""
    if len(head) < 348:
        return None
    for endian in "<>":
        (size,) = struct.unpack(endian + "i", head[:4])
        if size == 348 and head[344:347] == b"n+1":
            dim = struct.unpack(endian + "8h", head[40:56])
            (bitpix,) = struct.unpack(endian + "h", head[72:74])
            (vox_offset,) = struct.unpack(endian + "f", head[108:112])
            offset = max(int(vox_offset), 352) if np.isfinite(vox_offset) else -1
            break
        if size == 540 and len(head) >= 540 and head[4:7] == b"n+2":
            (bitpix,) = struct.unpack(endian + "h", head[14:16])
            dim = struct.unpack(endian + "8q", head[16:80])
            (offset,) = struct.unpack(endian + "q", head[168:176])
            offset = max(int(offset), 544)
            break
    else:
        return None
    ndim = int(dim[0])
    if not 1 <= ndim <= 7 or bitpix <= 0 or bitpix % 8 or offset < 0:
        return None
    return [int(n) for n in dim[1:ndim + 1]], int(bitpix), offset


def check_nifti(path: str, source: str) -> None:
    """Refuse a NIfTI file whose pixel data is shorter than its header declares, naming the cause."""
    compressed = path.lower().endswith(".gz")
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
            head = f.read(544)
    except (OSError, EOFError, zlib.error):
        return  # not a readable gzip / NIfTI: ITK reports it
    layout = _layout(head)
    if layout is None:
        return
    dims, bitpix, offset = layout
    if min(dims) < 1:
        raise VolumeError(f"{source} is empty: its header says dim {' x '.join(map(str, dims))} "
                          "(an axis of size 0 or less), so it holds no image.")
    expected = offset + int(np.prod(dims, dtype=np.int64)) * bitpix // 8
    if not compressed:
        available = os.path.getsize(path)
    else:
        available = 0
        try:
            with gzip.open(path, "rb") as f:
                while available < expected:
                    block = f.read(_CHUNK)
                    if not block:
                        break
                    available += len(block)
        except (OSError, EOFError, zlib.error) as exc:
            raise VolumeError(f"{source}: its compressed data is truncated or corrupt and cannot be "
                              f"uncompressed ({exc}).") from exc
    if available < expected:
        raise VolumeError(f"{source}: the pixel data is truncated ({max(available - offset, 0):,} of "
                          f"{expected - offset:,} bytes for {' x '.join(map(str, dims))} voxels of {bitpix} bits); "
                          "the file was not copied or downloaded completely.")
