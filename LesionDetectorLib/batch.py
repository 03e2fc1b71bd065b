"""Batch detection: many scans -> one all-or-nothing result folder per scan, resumable.

:class:`ScanBatchRunner` owns what ``lesion-detector detect`` and ``demo`` do per scan:

* **inputs** (:func:`expand_inputs`): files, DICOM series folders, folders searched for
  both. Only regular files are opened (a FIFO would block a reader forever); FIFOs,
  devices, sockets and symbolic-link loops are skipped with a message, and the batch goes on.
* **identity** (:class:`ScanInput`): a scan is its resolved source path plus the chosen
  series UID, never its file stem, so ``a/scan.mhd`` and ``b/scan.mhd`` get different
  folders (``scan`` and ``scan-<hash>``) and different LUNA16 seriesuids in the submission.
  ``findings.json`` records it (``volume.input_id`` and ``volume.input_stamp``: size and
  mtime), so a rerun skips a scan only when the same, unchanged input already has results.
* **all-or-nothing folders**: every file of a scan is written into a hidden sibling
  ``<out>/.<name>.partial-*`` folder that is renamed into place as a whole; any failure
  (an exporter's exception, a full disk, Ctrl-C) removes it, so ``<out>/<name>/`` either
  holds every result of the scan or does not exist.
* **optional exports**: a DICOM SR or SEG that cannot be written is a ``warning`` (and no
  file of it is left); the other results still land.
* **nodule masks**: a post-detection step may return named outputs for the exporters
  (``{"masks": label Volume}`` from characterization); ``nodule_masks.seg.nrrd`` (every input)
  and the DICOM SEG ``nodule_masks_seg.dcm`` (DICOM input) are written from them.
* **events** (:class:`EventSink`): the jsonl progress protocol of ``docs/architecture.md``.
* **post-detection steps**: :meth:`ScanBatchRunner.analyse` is the one place where steps that
  run on ``(volume, findings)`` after detection and before export are called (``post_detection``).
* **sharding** (``shard``, :mod:`LesionDetectorLib.batch_shard`): under ``torchrun`` every rank
  plans the same list and detects every ``world_size``-th scan of it; rank 0 alone recovers an
  interrupted run, reports input problems and writes the merged submission at the end.

Checks that need no model (output folder, inputs, scan headers, geometry) run before the
model is loaded, so bad input is refused fast.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
import math
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import CancelledError, LesionDetectorError, OutputFolderError

log = logging.getLogger("lesion-detector.batch")

FORMATS = ("mrk.json", "csv", "json", "sr", "seg", "seg.nrrd")
DICOM_FORMATS = ("sr", "seg")  # need highdicom, and DICOM input to reference
SCAN_SUFFIXES = (".mhd", ".mha", ".nrrd", ".nhdr", ".nii.gz", ".nii")
FILES = {"json": "findings.json", "mrk.json": "findings.mrk.json", "csv": "luna16.csv", "sr": "findings_sr.dcm",
         "seg": "nodule_masks_seg.dcm", "seg.nrrd": "nodule_masks.seg.nrrd"}
SUBMISSION = "luna16_submission.csv"
_PARTIAL = ".partial-"
_HASH_CHARS = 8

# (volume, findings) -> None or {name: output for the exporters}; may edit findings in place.
# The one output the exporters read: "masks", the label Volume of characterization.label_volume.
PostDetectionStep = Callable[[Any, Any], Optional[Dict[str, Any]]]


# ------------------------------------------------------------------------------ event output
class EventSink:
    """Where progress, log lines, warnings and per-scan results go: a tqdm bar, JSON lines or nothing.

    ``mode``: ``"bar"`` (tqdm on stderr, human lines on ``stream``), ``"jsonl"`` (the event
    protocol on ``stream``) or ``"none"`` (human lines only).
    """

    def __init__(self, mode: str = "none", stream=None) -> None:
        self.mode = mode
        self.stream = stream or sys.stdout
        self._bar = None
        self._stage = None

    def emit(self, event: Dict[str, Any]) -> None:
        if self.mode == "jsonl":
            self.stream.write(json.dumps(event) + "\n")
            self.stream.flush()

    def progress(self, stage: str, done: int, total: int) -> None:
        self.emit({"event": "progress", "stage": stage, "done": done, "total": total})
        if self.mode != "bar":
            return
        from tqdm import tqdm

        if stage != self._stage or self._bar is None:
            self.close_bar()
            self._stage = stage
            self._bar = tqdm(total=total, desc=f"{stage:>11}", unit="tile" if stage == "model" else "step",
                             file=sys.stderr, leave=False, dynamic_ncols=True)
        self._bar.n = done
        self._bar.refresh()

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._stage = None

    def message(self, text: str) -> None:
        """A human line: a log event in jsonl mode (stdout is the protocol), else ``stream``."""
        self.close_bar()
        if self.mode == "jsonl":
            self.emit({"event": "log", "message": text})
        else:
            self._print(text)

    def warning(self, text: str) -> None:
        """Something the user should know that did not fail the scan (a skipped export or input)."""
        self.close_bar()
        if self.mode == "jsonl":
            self.emit({"event": "warning", "message": text})
        else:
            self._print(f"warning: {text}")

    def _print(self, text: str) -> None:
        # File names need not be valid in the terminal's encoding (undecodable bytes, an ASCII
        # console): escape what cannot be shown rather than end the batch on UnicodeEncodeError.
        encoding = getattr(self.stream, "encoding", None) or "utf-8"
        try:
            text.encode(encoding)
        except (UnicodeEncodeError, LookupError):
            text = text.encode(encoding, "backslashreplace").decode(encoding, "replace")
        print(text, file=self.stream, flush=True)


class JsonlLogHandler(logging.Handler):
    """Library log records (e.g. the out-of-memory fallback) become ``log`` events."""

    def __init__(self, sink: EventSink) -> None:
        super().__init__(level=logging.INFO)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.emit({"event": "log", "message": f"{record.levelname.lower()}: {record.getMessage()}"})


# ---------------------------------------------------------------------------------- inputs
def scan_name(path: Path) -> str:
    """The readable part of a scan's folder name: the file name without its scan suffix."""
    name = Path(path).name
    for suffix in SCAN_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def _kind(path: str) -> Tuple[str, Optional[os.stat_result]]:
    """``"file"``, ``"dir"``, ``"missing"``, ``"loop"``, ``"unreadable"`` or ``"special"`` (FIFO, device, socket)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ("loop" if os.path.islink(path) and _is_link_loop(path) else "missing"), None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "loop", None
        return "unreadable", None
    if stat.S_ISREG(st.st_mode):
        return "file", st
    if stat.S_ISDIR(st.st_mode):
        return "dir", st
    return "special", st


def _is_link_loop(path: str) -> bool:
    try:
        os.path.realpath(path, strict=True)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def _special_name(st: Optional[os.stat_result]) -> str:
    if st is None:
        return "special file"
    if stat.S_ISFIFO(st.st_mode):
        return "FIFO (named pipe)"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return "device"
    if stat.S_ISSOCK(st.st_mode):
        return "socket"
    return "special file"


def _describe_unusable(kind: str, st: Optional[os.stat_result]) -> str:
    """What is wrong with a path that is not a regular file or folder (the path itself is named by the caller)."""
    if kind == "missing":
        return "does not exist"
    if kind == "loop":
        return "is a symbolic link loop (it points back to itself)"
    if kind == "unreadable":
        return "cannot be accessed (permission denied or I/O error)"
    return f"is a {_special_name(st)}, not a regular file or folder; it was not opened"


def _has_dicom(folder: str) -> bool:
    """A regular file named ``*.dcm`` or carrying the DICOM Part 10 'DICM' marker directly in ``folder``."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    for entry in entries:
        if _kind(entry.path)[0] != "file":
            continue
        if entry.name.lower().endswith(".dcm"):
            return True
        try:
            with open(entry.path, "rb") as fh:
                fh.seek(128)
                if fh.read(4) == b"DICM":
                    return True
        except OSError:
            continue
    return False


def expand_inputs(paths: Sequence[str], exclude: Optional[Path] = None
                  ) -> Tuple[List[Path], List[Tuple[str, str]], List[str]]:
    """``(scans, problems, skipped)`` for the command-line inputs.

    A regular file is a scan; a folder holding DICOM files is one series; any other folder
    is searched (recursively, following symbolic links once) for scan files and DICOM series
    folders. ``problems``: ``(input, message)`` for inputs that are unusable themselves
    (missing, a FIFO, a device, a link loop...): they fail the run. ``skipped``: messages about
    entries inside searched folders that were passed over (special files, link loops).
    ``exclude``: a folder never searched (the output folder, whose SR files look like DICOM).
    """
    scans: List[Path] = []
    problems: List[Tuple[str, str]] = []
    skipped: List[str] = []
    for raw in paths:
        kind, st = _kind(raw)
        if kind == "file":
            scans.append(Path(raw))
        elif kind == "dir":
            if _has_dicom(raw):
                scans.append(Path(raw))
                continue
            found = _search_folder(Path(raw), skipped, exclude)
            if not found:
                problems.append((raw, f"the folder holds no DICOM series and no scan files "
                                      f"({', '.join(SCAN_SUFFIXES)})"))
            scans.extend(found)
        else:
            problems.append((raw, _describe_unusable(kind, st)))
    return scans, problems, skipped


def _search_folder(top: Path, skipped: List[str], exclude: Optional[Path] = None) -> List[Path]:
    found: List[Path] = []
    seen = set()
    if exclude is not None:
        try:
            st = os.stat(exclude)
            seen.add((st.st_dev, st.st_ino))  # as if already searched
        except OSError:
            pass
    for root, dirs, files in os.walk(top, followlinks=True):
        root_path = Path(root)
        try:
            st = os.stat(root)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            if exclude is None or not os.path.samefile(root, exclude):  # a link back to a searched folder
                skipped.append(f"{root}: links back to a folder already searched (a link loop); skipped")
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        if root_path != top and _has_dicom(root):
            found.append(root_path)
            dirs[:] = []
            continue
        for name in sorted(files):
            path = os.path.join(root, name)
            kind, fst = _kind(path)
            if kind == "file":
                if name.lower().endswith(SCAN_SUFFIXES):
                    found.append(root_path / name)
            elif kind == "dir":
                continue
            elif kind != "missing" or os.path.islink(path):
                skipped.append(f"{path}: {_describe_unusable(kind, fst)}; skipped")
    return found


@dataclass(frozen=True)
class ScanInput:
    """One scan of a batch: where it is, who it is, and how its result folder is named.

    ``input_id``: hash of the resolved source path and the chosen series UID (which scan);
    ``stamp``: size and modification time of the file (or of a series folder's files), so a
    changed input is redone.
    """

    path: Path
    source: str
    input_id: str
    stamp: str
    stem: str

    @classmethod
    def from_path(cls, path, series_uid: Optional[str] = None) -> "ScanInput":
        path = Path(path)
        resolved = os.path.realpath(path)
        input_id = hashlib.sha256(f"{resolved}\0{series_uid or ''}".encode("utf-8", "surrogateescape")
                                  ).hexdigest()[:16]
        return cls(path, resolved, input_id, _stamp(resolved), scan_name(Path(resolved) if path.name in
                                                                           ("", ".", "..") else path))

    @property
    def suffixed_name(self) -> str:
        return f"{self.stem}-{self.input_id[:_HASH_CHARS]}"


def _stamp(resolved: str) -> str:
    h = hashlib.sha256()
    try:
        if os.path.isdir(resolved):
            for entry in sorted(os.scandir(resolved), key=lambda e: e.name):
                if entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    h.update(f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        else:
            st = os.stat(resolved)
            h.update(f"{st.st_size}\0{st.st_mtime_ns}".encode())
    except OSError:
        pass
    return h.hexdigest()[:16]


def _recorded_identity(folder: Path) -> Optional[Dict[str, Any]]:
    """``{"input_id", "input_stamp", "source"}`` of a finished result folder, None when it has none."""
    try:
        doc = json.loads((folder / FILES["json"]).read_text(encoding="utf-8"))
        vol = doc["volume"]
        return {"input_id": vol.get("input_id"), "input_stamp": vol.get("input_stamp"), "source": vol.get("source")}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _belongs_to(folder: Path, scan: ScanInput) -> Optional[bool]:
    """True: ``folder`` holds results of ``scan``; False: of another scan; None: no such folder."""
    if not folder.exists():
        return None
    rec = _recorded_identity(folder)
    if rec is None:
        return False
    if rec["input_id"]:
        return rec["input_id"] == scan.input_id
    # Results written before input ids existed: the same source path is the same scan.
    return bool(rec["source"]) and os.path.realpath(str(rec["source"])) == scan.source


def assign_folders(scans: Sequence[ScanInput], out: Path) -> List[str]:
    """Result folder names: the readable stem, ``<stem>-<hash>`` where the stem is taken.

    The stem is taken when an earlier scan of this batch has it, or ``<out>/<stem>`` holds
    another scan's results. A scan keeps the folder it already has from an earlier run.
    """
    claimed: set = set()
    names = []
    for scan in scans:
        plain, suffixed = scan.stem, scan.suffixed_name
        if plain not in claimed and _belongs_to(out / plain, scan):
            name = plain
        elif suffixed not in claimed and _belongs_to(out / suffixed, scan):
            name = suffixed
        elif plain not in claimed and _belongs_to(out / plain, scan) is None:
            name = plain
        else:
            name = suffixed
        claimed.add(name)
        names.append(name)
    return names


# -------------------------------------------------------------------------- output folder
def check_output_folder(out: Path) -> Path:
    """Create ``out`` if needed and prove it is a writable folder before any work.

    Raises :class:`OutputFolderError` naming the cause (a file, read-only, immutable, no space...).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"the output folder '{out}' is a file, not a folder; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputFolderError(f"the output folder '{out}' cannot be created: a part of its path is a file")
    except OSError as exc:
        raise OutputFolderError(f"the output folder '{out}' cannot be created: {exc.strerror or exc}") from exc
    try:
        probe = tempfile.mkdtemp(prefix=".write-test-", dir=out)
        with open(os.path.join(probe, "probe"), "wb") as fh:
            fh.write(b"ok")
        shutil.rmtree(probe)
    except OSError as exc:
        raise OutputFolderError(f"the output folder '{out}' is not writable ({exc.strerror or exc}); "
                                "choose another --out or fix its permissions") from exc
    return out


_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)-")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def recover_interrupted(out: Path) -> List[str]:
    """Clean up after a run that was killed (SIGKILL, power loss) while writing a scan folder.

    A ``.<name>.partial-<pid>-*`` folder of a dead process is removed; a ``.<name>.old-<pid>-*``
    folder (previous results moved aside by ``--overwrite``) is put back when ``<name>`` is
    missing, else removed. Folders of running processes are left alone. Returns what was done.
    """
    done = []
    try:
        entries = list(os.scandir(out))
    except OSError:
        return done
    for entry in entries:
        m = _LEFTOVER.match(entry.name)
        if not m or not entry.is_dir(follow_symlinks=False) or _pid_alive(int(m["pid"])):
            continue
        dest = Path(out) / m["name"]
        if m["kind"] == "old" and not dest.exists():
            os.rename(entry.path, dest)
            done.append(f"{dest}: restored the previous results from an interrupted --overwrite")
        else:
            shutil.rmtree(entry.path, ignore_errors=True)
            done.append(f"{entry.path}: removed the unfinished folder of an interrupted run")
    return done


def _commit_folder(staging: Path, dest: Path) -> None:
    """Move the complete ``staging`` folder to ``dest``, replacing an older result folder as a whole."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.rename(dest, old)
    try:
        os.rename(staging, dest)
    except BaseException:
        if old is not None:
            os.rename(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------- exports
def sr_available() -> bool:
    """The DICOM SR and SEG exports need the optional ``dicom`` extra (highdicom + pydicom)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("highdicom", "pydicom"))


def parse_formats(text: str) -> List[str]:
    """``auto`` = every format, the DICOM SR and SEG only when highdicom is installed; an explicit
    ``sr`` or ``seg`` without highdicom is refused up front rather than failing after detection."""
    if text.strip().lower() == "auto":
        return [f for f in FORMATS if f not in DICOM_FORMATS or sr_available()]
    formats = [f.strip().lower().lstrip(".") for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"unknown --format {', '.join(bad) or text!r}; choose from auto, {', '.join(FORMATS)}")
    needs = [f for f in formats if f in DICOM_FORMATS]
    if needs and not sr_available():
        raise ValueError(f"the DICOM {' and '.join(f.upper() for f in needs)} export needs highdicom and pydicom: "
                         "pip install 'lesion-detector[dicom]'")
    return formats


def luna16_seriesuid(findings, folder_name: str, series_uid: Optional[str] = None) -> str:
    """The LUNA16 seriesuid of a scan whose results are in the folder ``folder_name``.

    The scan's series UID (DICOM SeriesInstanceUID, or a LUNA16 ``.mhd`` named by its UID), else
    ``series_uid`` (``--series-uid``), else the folder name. A UID that was only read from the file
    name is replaced by the folder name when that file name was taken by another scan (the folder
    got a ``-<hash>`` suffix), so ``a/scan.mhd`` and ``b/scan.mhd`` never share one.
    """
    uid = findings.series_uid or series_uid
    source = findings.volume.get("source")
    if uid and source and uid == scan_name(Path(source)) and folder_name != uid:
        return folder_name
    return uid or folder_name


def write_exports(findings, volume, scan_dir: Path, formats: Iterable[str],
                  series_uid: Optional[str] = None, folder_name: Optional[str] = None,
                  masks=None, background=None) -> Tuple[Dict[str, Path], List[str]]:
    """Write the asked formats into ``scan_dir`` (named ``folder_name`` once committed), ``findings.json`` last.

    The DICOM SR and SEG are optional: they are written only for DICOM input, and when one
    cannot be written that is returned as a warning instead of failing the scan. ``masks``:
    the characterized nodules' label Volume in ``volume``'s grid
    (:func:`LesionDetectorLib.characterization.label_volume`); ``seg.nrrd`` and ``seg`` are
    written from it (skipped with a log line when nothing was segmented). ``background``: an
    executor of other processes (``concurrent.futures``) that writes the DICOM SR while this one
    writes the rest (building an SR of 100 findings is ~1.6 s of pydicom work on 2 CPU cores,
    which holds the GIL); when it cannot, the SR is written here. Returns
    ``({format: path}, warnings)``.
    """
    from .export import write_findings_json, write_luna16_csv, write_markups_json

    formats = set(formats)
    scan_dir.mkdir(parents=True, exist_ok=True)
    written: Dict[str, Path] = {}
    warnings: List[str] = []
    files = volume.metadata.get("dicom_files") if volume is not None else None
    has_masks = masks is not None and bool(masks.array.any())
    dicom = []
    for fmt, what in (("sr", "SR"), ("seg", "SEG")):
        if fmt not in formats:
            continue
        if not files:
            log.info("DICOM %s skipped: the input is not a DICOM series", what)
        elif fmt == "seg" and not has_masks:
            log.info("DICOM SEG skipped: no finding was segmented")
        else:
            dicom.append(fmt)
    sr_future = None
    if "sr" in dicom and background is not None:
        try:
            sr_future = background.submit(_write_sr, findings, scan_dir / FILES["sr"], list(files))
            _let_it_go(sr_future)
        except Exception as exc:  # noqa: BLE001 - no background process: written here below
            log.debug("background SR writer unavailable: %s", exc)
    if "mrk.json" in formats:
        written["mrk.json"] = write_markups_json(findings, scan_dir / FILES["mrk.json"])
    if "csv" in formats:
        uid = luna16_seriesuid(findings, folder_name or scan_dir.name, series_uid)
        written["csv"] = write_luna16_csv([findings], scan_dir / FILES["csv"], series_uids=[uid])
    if "seg.nrrd" in formats:
        if has_masks:
            from .export.segmentation_nrrd import write_segmentation_nrrd

            written["seg.nrrd"] = write_segmentation_nrrd(findings, masks, scan_dir / FILES["seg.nrrd"])
        else:
            log.info("nodule masks skipped: no finding was segmented")
    # The SEG (here) before waiting for the SR (being built elsewhere); alone, the SR comes first.
    for fmt in sorted(dicom, key=lambda f: (f == "sr") == (sr_future is not None)):
        what = fmt.upper()
        try:
            if fmt == "sr":
                written["sr"] = _sr_result(sr_future, findings, scan_dir / FILES["sr"], files)
            else:
                from .export.dicom_seg import write_dicom_seg

                written["seg"] = write_dicom_seg(findings, masks, scan_dir / FILES["seg"], files)
        except CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the DICOM objects are optional; the other results still land
            log.debug("DICOM %s failed", what, exc_info=True)
            (scan_dir / FILES[fmt]).unlink(missing_ok=True)
            warnings.append(f"the DICOM {what} was not written: {exc}")
    written["json"] = write_findings_json(findings, scan_dir / FILES["json"])
    return written, warnings


def _let_it_go(future, limit_s: float = 0.2) -> None:
    """Give the executor's threads (in this process) the GIL long enough to hand ``future``'s task
    to its worker: the exports below are C calls that keep the GIL for up to a second (SimpleITK's
    writer, pydicom's reader), and the hand-off waited behind them (0.86 s, measured)."""
    deadline = time.monotonic() + limit_s
    while not (future.running() or future.done()) and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(0.01)   # the queue's feeder thread pickles and writes the task after that


class _SRFailed(Exception):
    """The SR itself could not be written (as opposed to the process that was to write it)."""


def _write_sr(findings, path: Path, files) -> Path:
    """The background task: the SR of ``findings`` at ``path`` (atomic), or :class:`_SRFailed`."""
    from .export import write_dicom_sr

    try:
        return write_dicom_sr(findings, path, files)
    except Exception as exc:  # noqa: BLE001 - travels back as the SR's own failure
        raise _SRFailed(str(exc)) from None


def _sr_result(future, findings, path: Path, files) -> Path:
    """The SR's path: the background task's, or written here when there was none or its process
    failed (a dead worker is not a reason to lose the SR)."""
    from .export import write_dicom_sr

    if future is not None:
        try:
            return Path(future.result())
        except _SRFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - the worker, not the SR, failed
            log.warning("the background SR writer failed (%s: %s); writing the SR here", type(exc).__name__, exc)
    return write_dicom_sr(findings, path, files)


def _finished_folders(out: Path) -> List[Path]:
    return sorted(p.parent for p in out.glob(f"*/{FILES['json']}") if not p.parent.name.startswith("."))


def submission_uids(out: Path, problems: Optional[List[str]] = None) -> List[Tuple[Path, Any, str]]:
    """``(folder, findings, seriesuid)`` for every finished scan of ``out``.

    A scan's seriesuid is :func:`luna16_seriesuid` (as in its own ``luna16.csv``). When several
    folders still carry the same one (two copies of one DICOM series), the first folder in name
    order keeps it and the others are named by their folder, so no two scans share a seriesuid.
    A folder whose ``findings.json`` cannot be read (edited by hand, from a newer version) is left
    out and described in ``problems`` when a list is given, else raises ``ValueError``.
    """
    from .export import read_findings_json

    rows = []
    used: set = set()
    for folder in _finished_folders(out):
        try:
            findings = read_findings_json(folder / FILES["json"])
        except (ValueError, OSError) as exc:
            if problems is None:
                raise
            problems.append(f"{folder.name} left out: {exc}")
            continue
        uid = luna16_seriesuid(findings, folder.name)
        if uid in used:
            uid = folder.name
        used.add(uid)
        rows.append((folder, findings, uid))
    return rows


def write_submission(out: Path, problems: Optional[List[str]] = None) -> Optional[Path]:
    """``luna16_submission.csv`` over every finished scan folder in ``out`` (see :func:`submission_uids`)."""
    from .export import write_luna16_csv

    rows = submission_uids(out, problems)
    if not rows:
        return None
    return write_luna16_csv([f for _, f, _ in rows], out / SUBMISSION, series_uids=[u for _, _, u in rows])


# ----------------------------------------------------------------------------- the runner
@dataclass
class BatchOptions:
    """What to do with each scan (the library side of ``detect``'s options)."""

    formats: Sequence[str] = ("mrk.json", "csv", "json")
    overwrite: bool = False
    series_uid: Optional[str] = None
    lung_mask: Optional[Path] = None
    operating_point: str = "sensitivity_0.95"
    min_score: Optional[float] = None
    max_candidates: Optional[int] = 100
    allow_non_ct: bool = False

    def __post_init__(self) -> None:
        # The CLI checks these while parsing; library callers get the same refusal up front.
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ValueError(f"unknown formats {bad or list(self.formats)}; choose from {', '.join(FORMATS)}")
        if self.max_candidates is not None and (isinstance(self.max_candidates, bool)
                                                or not isinstance(self.max_candidates, int)
                                                or self.max_candidates < 1):
            raise ValueError(f"max_candidates must be a whole number >= 1 or None, got {self.max_candidates!r}")
        if self.min_score is not None and not (isinstance(self.min_score, (int, float))
                                               and math.isfinite(self.min_score) and 0 <= self.min_score <= 1):
            raise ValueError(f"min_score must be a number between 0 and 1 or None, got {self.min_score!r}")


@dataclass
class ScanResult:
    scan: ScanInput
    folder: Path
    findings: Any = None
    written: Dict[str, Path] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)


def _takes(func: Callable, name: str) -> bool:
    """Whether ``func`` accepts the keyword ``name`` (stand-in detectors of tests may not)."""
    import inspect

    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


class ScanBatchRunner:
    """Run detection over scans into ``out``: one all-or-nothing folder per scan, resumable.

    ``detector_factory()`` returns a :class:`~LesionDetectorLib.inference.Detector`; it is called
    once, when the first scan has been read and passed every check, so bad input never waits
    for (or loads) the model. ``post_detection``: steps ``step(volume, findings)`` run by
    :meth:`analyse` after detection, before export.

    ``preprocessing_factory()`` (optional) returns the model's
    :class:`~LesionDetectorLib.preprocess.Preprocessing` without loading it (the card's JSON):
    each scan is then preprocessed in a background thread as soon as it has been read and
    checked, while the model loads (first scan) or runs on the previous scan. Preprocessing is
    SimpleITK and numpy, which release the GIL; loading torch and the model is Python. On the
    64-slice DICOM chest CT of docs/benchmarks.md the two took 1.8 s and ~1.5 s one after the
    other.
    """

    def __init__(self, out, options: BatchOptions, detector_factory: Callable[[], Any],
                 sink: Optional[EventSink] = None, post_detection: Sequence[PostDetectionStep] = (),
                 cancel=None, shard=None, preprocessing_factory: Optional[Callable[[], Any]] = None,
                 background=None) -> None:
        self.out = Path(out)
        self.options = options
        self._detector_factory = detector_factory
        self.detector = None
        self.sink = sink or EventSink("none")
        self.post_detection = list(post_detection)
        self.cancel = cancel
        self.shard = shard            # batch_shard.Shard under torchrun, else None
        self._lung_mask = None
        self.background = background   # an executor of other processes for the DICOM SR (write_exports)
        self._preprocessing_factory = preprocessing_factory
        self._preprocessing = None
        self._prep_pool: Optional[ThreadPoolExecutor] = None

    # -- steps
    def load_detector(self):
        if self.detector is None:
            self.detector = self._detector_factory()
            card = getattr(self.detector, "card", None) or {}
            self.sink.message(f"model {card.get('name')} {card.get('version')} on "
                              f"{getattr(self.detector, 'device', '?')} -> {self.out}")
        return self.detector

    def read(self, scan: ScanInput):
        from .io import read_volume
        from .io.validate import check_detectable

        volume = read_volume(scan.path, series_uid=self.options.series_uid, allow_non_ct=self.options.allow_non_ct)
        check_detectable(volume)
        return volume

    def analyse(self, volume, findings) -> Dict[str, Any]:
        """The one place where post-detection steps run (characterisation of findings...);
        returns their named outputs for the exporters (``masks``)."""
        outputs: Dict[str, Any] = {}
        for step in self.post_detection:
            outputs.update(step(volume, findings) or {})
        return outputs

    def detect(self, scan: ScanInput, folder: Path, volume=None, read_s: float = 0.0, prepared=None) -> ScanResult:
        """Read (unless ``volume`` is given, read in ``read_s`` seconds), detect, analyse and export one
        scan into ``folder``, all or nothing. ``prepared``: the future of the scan's
        :class:`~LesionDetectorLib.preprocess.Prepared` input (the prefetch thread's), or None."""
        opts = self.options
        if volume is None:
            t0 = time.perf_counter()
            self.sink.progress("read", 0, 1)
            volume = self.read(scan)
            read_s = time.perf_counter() - t0
        detector = self.load_detector()
        # A failed prefetch (no lungs, ...) fails the scan as the Detector's own preprocessing would.
        extra = {"prepared": prepared.result()} if prepared is not None and _takes(detector, "prepared") else {}
        findings = detector(volume, progress=self.sink.progress, cancel=self.cancel, lung_mask=self._lung_mask,
                            operating_point=opts.operating_point, min_score=opts.min_score,
                            max_candidates=opts.max_candidates, **extra)
        findings.timings_s["read"] = round(read_s, 4)
        findings.timings_s["total"] = round(findings.timings_s["total"] + read_s, 4)
        outputs = self.analyse(volume, findings)
        findings.volume["input_id"] = scan.input_id
        findings.volume["input_stamp"] = scan.stamp
        result = ScanResult(scan, folder, findings)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}{_PARTIAL}{os.getpid()}-", dir=folder.parent))
        try:
            written, result.warnings = write_exports(findings, volume, staging, opts.formats,
                                                     series_uid=opts.series_uid, folder_name=folder.name,
                                                     masks=outputs.get("masks"), background=self.background)
            _fsync_dir(staging)
            _commit_folder(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        result.written = {fmt: folder / path.name for fmt, path in written.items()}
        return result

    # -- the batch
    def _failed(self, scan: ScanInput, exc: Exception) -> Tuple[str, str, int]:
        """Report a failed scan; bad input (exit 2) or, for anything unexpected, an internal error (exit 1)."""
        if isinstance(exc, (LesionDetectorError, ValueError, OSError)):
            self.sink.message(f"{scan.path}: FAILED: {exc}")
            self.sink.emit({"event": "error", "message": f"{scan.path}: {exc}", "exit_code": 2})
            return str(scan.path), str(exc), 2
        log.debug("internal error on %s", scan.path, exc_info=exc)
        self.sink.message(f"{scan.path}: FAILED (internal error): {type(exc).__name__}: {exc}")
        self.sink.emit({"event": "error", "message": f"{scan.path}: internal error: {exc}", "exit_code": 1})
        return str(scan.path), f"internal error: {type(exc).__name__}: {exc}", 1

    def plan(self, scans: Sequence[Path]) -> List[Tuple[ScanInput, Path, bool]]:
        """``(scan, folder, done)`` per scan; ``done`` when unchanged results exist (and no overwrite)."""
        inputs: List[ScanInput] = []
        for path in scans:
            scan = ScanInput.from_path(path, self.options.series_uid)
            if all(scan.input_id != other.input_id for other in inputs):  # the same input listed twice
                inputs.append(scan)
        names = assign_folders(inputs, self.out)
        plan = []
        for scan, name in zip(inputs, names):
            folder = self.out / name
            rec = _recorded_identity(folder) if _belongs_to(folder, scan) else None
            done = rec is not None and not self.options.overwrite and rec.get("input_stamp") in (None, scan.stamp)
            if rec is not None and not done and not self.options.overwrite:
                self.sink.message(f"{scan.path}: changed since its results in {folder} were written; redoing it")
            plan.append((scan, folder, done))
        return plan

    def run(self, inputs: Sequence[str]) -> int:
        """Process every input; returns the exit code (0 ok, 2 some input failed on bad input, 1 internal)."""
        created = not self.out.exists()
        check_output_folder(self.out)
        try:
            return self._run(inputs)
        finally:
            if created and self.out.is_dir() and not any(self.out.iterdir()):
                self.out.rmdir()  # nothing was written: leave no trace of the run

    def _run(self, inputs: Sequence[str]) -> int:
        opts = self.options
        shard = self.shard
        main = shard is None or shard.is_main
        if main:
            for text in recover_interrupted(self.out):
                self.sink.warning(text)
        if shard is not None:
            shard.barrier()   # no rank plans (or writes) while rank 0 removes dead runs' partial folders
        scans, problems, skipped = expand_inputs(inputs, exclude=self.out)
        if (opts.series_uid or opts.lung_mask) and len(scans) + len(problems) > 1:
            raise ValueError("--series-uid and --lung-mask apply to a single input scan")
        if opts.lung_mask is not None:
            from .io import read_volume

            self._lung_mask = read_volume(opts.lung_mask, allow_non_ct=True)
        if not main:
            skipped, problems = [], []   # rank 0 reports the input list's problems once
        for text in skipped:
            self.sink.warning(text)
        failures: List[Tuple[str, str, int]] = [(p, msg, 2) for p, msg in problems]
        for raw, msg in problems:
            self.sink.emit({"event": "error", "message": f"{raw}: {msg}", "exit_code": 2})
        todo = []
        plan = self.plan(scans)
        if shard is not None:
            shard.barrier()   # every rank has named its folders before any rank creates one
        for scan, folder, done in plan:
            if not done:
                todo.append((scan, folder))
            elif main:
                self.sink.message(f"{scan.path}: already done ({folder / FILES['json']}); --overwrite to redo")
                self.sink.emit({"event": "done", "findings": str(folder / FILES["json"]), "skipped": True})
        if shard is not None:
            todo = todo[shard.rank::shard.world_size]
        # The next scan is read (I/O and decoding, which release the GIL) in a background thread
        # while the model runs on this one; at most one scan waits in memory.
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lesion-detector-read")
        if self._preprocessing_factory is not None:
            self._prep_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lesion-detector-prep")
        pending = pool.submit(self._timed_read, todo[0][0]) if todo else None
        try:
            self._run_todo(todo, pool, pending, failures)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            if self._prep_pool is not None:
                self._prep_pool.shutdown(wait=True, cancel_futures=True)
                self._prep_pool = None
        if shard is not None:
            shard.barrier()   # every rank's folders are final: one submission over all of them
            if main and "csv" in opts.formats:
                self._refresh_submission()
        if failures:
            lines = [f"{len(failures)} input(s) failed:"] + [f"  {p}: {m}" for p, m, _ in failures]
            self.sink.message("\n".join(lines))
            print("\n".join(lines), file=sys.stderr)
            return 1 if any(code == 1 for _, _, code in failures) else 2
        return 0

    def _refresh_submission(self) -> Optional[Path]:
        """Rewrite ``luna16_submission.csv`` over the folder's finished scans; a failure is a warning."""
        left_out: List[str] = []
        path = None
        try:
            path = write_submission(self.out, left_out)
        except (LesionDetectorError, ValueError, OSError) as exc:
            self.sink.warning(f"{SUBMISSION} was not refreshed: {exc}")
        for text in left_out:
            self.sink.warning(f"{SUBMISSION}: {text}")
        return path

    def _timed_read(self, scan: ScanInput):
        """``(volume, read seconds, future of its Prepared input or None)``: once the scan has passed
        its checks, its preprocessing starts in the prep thread."""
        t0 = time.perf_counter()
        volume = self.read(scan)
        read_s = time.perf_counter() - t0
        prepared = None
        if self._prep_pool is not None:
            if self._preprocessing is None:
                self._preprocessing = self._preprocessing_factory()
            if self._preprocessing is not None:
                prepared = self._prep_pool.submit(self._timed_preprocess, volume, self._preprocessing)
        return volume, read_s, prepared

    def _timed_preprocess(self, volume, preprocessing):
        from .preprocess import Prepared

        t0 = time.perf_counter()
        result = preprocessing.apply(volume, self._lung_mask)
        return Prepared(preprocessing, result, time.perf_counter() - t0)

    def _run_todo(self, todo, pool, pending, failures) -> None:
        opts = self.options
        for i, (scan, folder) in enumerate(todo, start=1):
            self.sink.message(f"[{i}/{len(todo)}] {scan.path}")
            try:
                self.sink.progress("read", 0, 1)
                volume, read_s, prepared = pending.result()
            except Exception as exc:  # noqa: BLE001 - one bad scan never ends the batch
                pending = pool.submit(self._timed_read, todo[i][0]) if i < len(todo) else None
                failures.append(self._failed(scan, exc))
                continue
            pending = pool.submit(self._timed_read, todo[i][0]) if i < len(todo) else None
            self.load_detector()  # a model that cannot be loaded ends the whole run (exit 2)
            try:
                extra = {"prepared": prepared} if prepared is not None else {}
                result = self.detect(scan, folder, volume, read_s, **extra)
            except CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - report, keep going with the other scans
                failures.append(self._failed(scan, exc))
                continue
            self.sink.close_bar()
            self.sink.message(result.findings.summary_table())
            for text in result.warnings:
                self.sink.warning(f"{scan.path}: {text}")
            if "csv" in opts.formats and self.shard is None:
                # Refreshed after every scan so it is complete even if a later scan is interrupted
                # (a sharded run writes it once, on rank 0, when every rank is done).
                result.written["submission"] = self._refresh_submission()
            self.sink.message("written: " + ", ".join(str(p) for p in result.written.values() if p))
            self.sink.emit({"event": "done", "findings": str(result.written["json"])})
