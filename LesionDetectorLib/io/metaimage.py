"""MetaImage (``.mhd`` + ``.raw`` / ``.zraw``, ``.mha``) header checks, before ITK reads pixels.

ITK trusts the header: a ``.raw`` larger than ``DimSize x ElementType x channels`` is read
silently (half a scan when DimSize is too small, garbage when ElementType is wrong),
``Offset = nan`` becomes 0, and a corrupt ``.zraw`` only prints "Uncompress failed" and
returns uninitialised memory. So the header is parsed here (it is ``key = value`` text)
and the data is checked against it: the exact byte count for raw data, a full zlib
decompression (streamed, nothing kept) for compressed data.
"""
from __future__ import annotations

import math
import os
import zlib
from typing import Dict, List, Optional

import numpy as np

from ..errors import VolumeError
from .validate import check_dimensions, check_resampled_size

ELEMENT_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
                 "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8,
                 "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}
# Geometry fields (and their synonyms) that must be finite numbers.
_NUMERIC = ("ElementSpacing", "ElementSize", "Offset", "Origin", "Position", "TransformMatrix", "Rotation",
            "Orientation", "CenterOfRotation")
_CHUNK = 1 << 22


def read_header(path: str) -> Dict[str, str]:
    """Key/value pairs of a MetaImage header, plus ``_data_offset``: the byte where LOCAL data starts."""
    fields: Dict[str, str] = {}
    offset = 0
    with open(path, "rb") as f:
        for raw_line in f:
            offset += len(raw_line)
            key, sep, value = raw_line.decode("latin-1").partition("=")
            if not sep:
                if offset > 1 << 16:  # no ElementDataFile in the first 64 KiB: not a text header
                    break
                continue
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
    fields["_data_offset"] = str(offset)
    return fields


def _numbers(h: Dict[str, str], key: str, source: str) -> Optional[List[float]]:
    if key not in h:
        return None
    try:
        values = [float(v) for v in h[key].split()]
    except ValueError:
        raise VolumeError(f"{source} has an unreadable {key} '{h[key]}' in its header.") from None
    if not all(math.isfinite(v) for v in values):
        raise VolumeError(f"{source} has a non-finite {key} ({h[key]}) in its header: the image geometry "
                          "is unknown, so positions could not be trusted.")
    return values


def check_metaimage(path: str, source: str) -> None:
    """Refuse a MetaImage whose header or pixel data cannot be trusted, naming the cause.

    Checks: DimSize (positive integers, as many as NDims), finite geometry fields, a known
    ElementType, and for a single data file (``LOCAL`` or a file name; ``LIST`` and patterns
    are left to ITK) the exact data size, or a clean decompression to that size.
    """
    try:
        h = read_header(path)
    except OSError as exc:
        raise VolumeError(f"{source} cannot be read: {exc.strerror or exc}.") from exc
    if "ElementDataFile" not in h or "DimSize" not in h:
        missing = "DimSize" if "DimSize" not in h else "ElementDataFile"
        raise VolumeError(f"{source} is not a MetaImage: its header has no {missing} line.")
    try:
        dims = [int(v) for v in h["DimSize"].split()]
    except ValueError:
        raise VolumeError(f"{source} has an unreadable DimSize '{h['DimSize']}' in its header.") from None
    if not dims or min(dims) < 1:
        raise VolumeError(f"{source} is empty: its header says DimSize {h['DimSize']} (an axis of size 0 or less), "
                          "so it holds no image.")
    if "NDims" in h and h["NDims"].strip() != str(len(dims)):
        raise VolumeError(f"{source} has an inconsistent header: NDims {h['NDims']} but DimSize {h['DimSize']}.")
    for key in _NUMERIC:
        values = _numbers(h, key, source)
        expected_n = len(dims) ** 2 if key in ("TransformMatrix", "Rotation", "Orientation") else len(dims)
        if values is not None and len(values) != expected_n:
            raise VolumeError(f"{source} has an inconsistent header: {key} has {len(values)} values for "
                              f"{len(dims)} dimensions (DimSize {h['DimSize']}).")
    element = h.get("ElementType", "")
    if element not in ELEMENT_BYTES:
        raise VolumeError(f"{source} has an unknown ElementType '{element}' in its header "
                          f"(known: {', '.join(sorted(ELEMENT_BYTES))}).")
    try:
        channels = int(h.get("ElementNumberOfChannels", "1"))
    except ValueError:
        raise VolumeError(f"{source} has an unreadable ElementNumberOfChannels in its header.") from None
    check_dimensions(tuple(reversed(dims)), channels, source)  # the size limit before any data is touched
    spacing = _numbers(h, "ElementSpacing", source) or _numbers(h, "ElementSize", source)
    if spacing and len(spacing) == len(dims) == 3:
        check_resampled_size(tuple(reversed(dims)), spacing, source)
    data_file = h["ElementDataFile"]
    if data_file.split()[0].upper() == "LIST" or "%" in data_file:
        return  # several data files: ITK checks each
    expected = int(np.prod(dims, dtype=np.int64)) * ELEMENT_BYTES[element] * max(channels, 1)
    if data_file == "LOCAL":
        data_path, start = path, int(h["_data_offset"])
    else:
        data_path = data_file if os.path.isabs(data_file) else os.path.join(os.path.dirname(path), data_file)
        start = 0
        if os.path.exists(data_path) and not os.path.isfile(data_path):
            raise VolumeError(f"{source}: its pixel data file '{data_path}' is not a regular file (a folder, "
                              "FIFO or device); it was not opened.")
        if not os.path.isfile(data_path):
            raise VolumeError(f"{source}: its pixel data file '{data_path}' is missing "
                              "(copy the .raw file that belongs next to the .mhd header).")
    available = os.path.getsize(data_path) - start
    compressed = h.get("CompressedData", "False").strip().lower() == "true"
    if compressed:
        _check_compressed(h, data_path, start, available, expected, source)
        return
    header_size = int(h.get("HeaderSize", "0") or 0) if h.get("HeaderSize", "0").lstrip("-").isdigit() else 0
    if header_size == -1:  # data at the end of the file, after a header of any size
        header_size = max(available - expected, 0)
    available -= header_size
    if available < expected:
        raise VolumeError(f"{source}: the pixel data in '{data_path}' is truncated ({available:,} of {expected:,} "
                          "bytes); the file was not copied or downloaded completely.")
    if available > expected:
        raise VolumeError(f"{source}: the pixel data in '{data_path}' has {available:,} bytes but the header "
                          f"declares {expected:,} (DimSize {h['DimSize']}, {element}"
                          f"{'' if channels == 1 else f' x {channels} channels'}); the header's DimSize or "
                          "ElementType is wrong, so the image would be read scrambled or in part.")


def _check_compressed(h: Dict[str, str], data_path: str, start: int, available: int, expected: int,
                      source: str) -> None:
    declared = h.get("CompressedDataSize")
    if declared is not None:
        try:
            declared_n = int(declared)
        except ValueError:
            raise VolumeError(f"{source} has an unreadable CompressedDataSize '{declared}'.") from None
        if declared_n > available:
            raise VolumeError(f"{source}: the compressed pixel data in '{data_path}' is truncated "
                              f"({available:,} of {declared_n:,} bytes).")
    budget = int(declared) if declared is not None else available
    inflater = zlib.decompressobj()
    produced = 0
    try:
        with open(data_path, "rb") as f:
            f.seek(start)
            while budget > 0:
                chunk = f.read(min(_CHUNK, budget))
                if not chunk:
                    break
                budget -= len(chunk)
                produced += len(inflater.decompress(chunk, max(expected - produced, 0) + 1))
                while inflater.unconsumed_tail and produced <= expected:
                    produced += len(inflater.decompress(inflater.unconsumed_tail, max(expected - produced, 0) + 1))
                if produced > expected or inflater.eof:
                    break
            produced += len(inflater.flush())
    except zlib.error as exc:
        raise VolumeError(f"{source}: the compressed pixel data in '{data_path}' is corrupt and cannot be "
                          f"uncompressed ({exc}).") from exc
    if produced != expected or not inflater.eof:
        raise VolumeError(f"{source}: the compressed pixel data in '{data_path}' uncompresses to "
                          f"{'more than ' if produced > expected else ''}{produced:,} bytes, but the header declares "
                          f"{expected:,} (DimSize {h['DimSize']}, {h['ElementType']}); the file is truncated, "
                          "corrupt or its header is wrong.")
