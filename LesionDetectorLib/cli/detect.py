"""``lesion-detector detect``: run the detector on one or more scans and write the exports.

Each scan gets its own folder ``<out>/<scan name>/`` holding ``findings.json`` (always; it
is written last and marks the scan as done), ``findings.mrk.json``, ``luna16.csv`` and,
for DICOM input, ``findings_sr.dcm``; ``<out>/luna16_submission.csv`` gathers every scan
of the output folder (refreshed after each scan). Scans already done are skipped unless ``--overwrite``. A bad scan
is reported and the run goes on; the exit code is 2 when any scan failed on bad input,
1 on an internal error.

``--progress jsonl`` prints the event protocol of ``docs/architecture.md`` on stdout, one
JSON object per line: ``progress`` / ``log`` events, then per scan ``done`` (findings
path) or ``error`` (message, exit code). The Slicer module reads this stream.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import CancelledError, LesionDetectorError

log = logging.getLogger("lesion-detector.detect")

FORMATS = ("mrk.json", "csv", "json", "sr")
DEFAULT_OUT = "lesion-detector-results"
SCAN_SUFFIXES = (".mhd", ".mha", ".nrrd", ".nhdr", ".nii.gz", ".nii")
FILES = {"json": "findings.json", "mrk.json": "findings.mrk.json", "csv": "luna16.csv", "sr": "findings_sr.dcm"}
SUBMISSION = "luna16_submission.csv"


# ------------------------------------------------------------------------------ event output
class EventSink:
    """Where progress, log lines and per-scan results go: a tqdm bar, JSON lines or nothing."""

    def __init__(self, mode: str, stream=None) -> None:
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
        """A human line: a log event in jsonl mode (stdout is the protocol), else stdout."""
        self.close_bar()
        if self.mode == "jsonl":
            self.emit({"event": "log", "message": text})
        else:
            print(text, file=self.stream, flush=True)


class _JsonlLogHandler(logging.Handler):
    """Library warnings (e.g. out-of-memory fallback) become ``log`` events."""

    def __init__(self, sink: EventSink) -> None:
        super().__init__(level=logging.INFO)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.emit({"event": "log", "message": f"{record.levelname.lower()}: {record.getMessage()}"})


# ---------------------------------------------------------------------------------- inputs
def scan_name(path: Path) -> str:
    name = path.name
    for suffix in SCAN_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _has_dicom(folder: Path) -> bool:
    for entry in os.scandir(folder):
        if not entry.is_file():
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


def expand_inputs(paths: Sequence[str]) -> Tuple[List[Path], List[Tuple[str, str]]]:
    """Scans to process and ``(input, problem)`` pairs for inputs that are not usable.

    A file is a scan; a folder holding DICOM files is one series; any other folder is
    searched (recursively) for scan files and DICOM series folders.
    """
    scans: List[Path] = []
    problems: List[Tuple[str, str]] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            problems.append((raw, f"the path '{raw}' does not exist"))
        elif path.is_file():
            scans.append(path)
        elif _has_dicom(path):
            scans.append(path)
        else:
            found = []
            for root, dirs, files in os.walk(path):
                dirs.sort()
                root_path = Path(root)
                if root_path != path and _has_dicom(root_path):
                    found.append(root_path)
                    dirs[:] = []
                    continue
                found.extend(root_path / f for f in sorted(files) if f.lower().endswith(SCAN_SUFFIXES))
            if not found:
                problems.append((raw, f"the folder '{raw}' holds no DICOM series and no scan files "
                                      f"({', '.join(SCAN_SUFFIXES)})"))
            scans.extend(found)
    return scans, problems


def unique_names(scans: Sequence[Path]) -> List[str]:
    """Output folder names: the scan names, with ``_2``, ``_3``... where two collide."""
    seen: Dict[str, int] = {}
    names = []
    for s in scans:
        base = scan_name(s)
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


def sr_available() -> bool:
    """The DICOM SR export needs the optional ``dicom`` extra (highdicom + pydicom)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("highdicom", "pydicom"))


def parse_formats(text: str) -> List[str]:
    """``auto`` = every format, the DICOM SR only when highdicom is installed; an explicit ``sr``
    without highdicom is refused up front rather than failing after detection."""
    if text.strip().lower() == "auto":
        return [f for f in FORMATS if f != "sr" or sr_available()]
    formats = [f.strip().lower().lstrip(".") for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"unknown --format {', '.join(bad) or text!r}; choose from auto, {', '.join(FORMATS)}")
    if "sr" in formats and not sr_available():
        raise ValueError("the DICOM SR export needs highdicom and pydicom: pip install 'lesion-detector[dicom]'")
    return formats


# --------------------------------------------------------------------------------- exports
def write_exports(findings, volume, scan_dir: Path, formats: Iterable[str],
                  series_uid: Optional[str] = None) -> Dict[str, Path]:
    """Write the asked formats into ``scan_dir`` (each atomically), ``findings.json`` last.

    The DICOM SR is written only for DICOM input (it references the source instances).
    Returns ``{format: path}`` of what was written.
    """
    from ..export import write_dicom_sr, write_findings_json, write_luna16_csv, write_markups_json

    formats = set(formats)
    scan_dir.mkdir(parents=True, exist_ok=True)
    written: Dict[str, Path] = {}
    if "mrk.json" in formats:
        written["mrk.json"] = write_markups_json(findings, scan_dir / FILES["mrk.json"])
    if "csv" in formats:
        uid = findings.series_uid or series_uid or scan_dir.name
        written["csv"] = write_luna16_csv([findings], scan_dir / FILES["csv"], series_uids=[uid])
    if "sr" in formats:
        files = volume.metadata.get("dicom_files") if volume is not None else None
        if files:
            written["sr"] = write_dicom_sr(findings, scan_dir / FILES["sr"], files)
        else:
            log.info("DICOM SR skipped for %s: the input is not a DICOM series", scan_dir.name)
    written["json"] = write_findings_json(findings, scan_dir / FILES["json"])
    return written


def write_submission(out: Path) -> Optional[Path]:
    """``luna16_submission.csv`` over every finished scan folder in ``out``."""
    from ..export import read_findings_json, write_luna16_csv

    done = sorted(p for p in out.glob(f"*/{FILES['json']}"))
    if not done:
        return None
    items = [read_findings_json(p) for p in done]
    uids = [f.series_uid or p.parent.name for f, p in zip(items, done)]
    return write_luna16_csv(items, out / SUBMISSION, series_uids=uids)


# ------------------------------------------------------------------------------------- CLI
def register(subparsers) -> None:
    p = subparsers.add_parser(
        "detect", help="detect lung nodules in CT scans and write Slicer / LUNA16 / JSON / DICOM SR results",
        description="Detect lesion candidates in one or more CT scans (DICOM series folders, .mhd, .nrrd, "
                    ".nii[.gz], or folders of them). Results go to one folder per scan inside --out.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="scan file, DICOM series folder, or folder of scans")
    p.add_argument("--out", default=DEFAULT_OUT, type=Path, help=f"output folder (default ./{DEFAULT_OUT})")
    p.add_argument("--model", default="luna16-synthetic", help="bundled model name or model directory")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--operating-point", default="sensitivity_0.95",
                   choices=("sensitivity_0.90", "sensitivity_0.95", "fp_per_scan_1", "fp_per_scan_4"),
                   help="model-card operating point deciding the patient flag (default sensitivity_0.95)")
    p.add_argument("--format", default="auto",
                   help="comma-separated exports: mrk.json, csv, json, sr (sr for DICOM input only, needs the "
                        "'dicom' extra); 'auto' (default) = all of them, sr when highdicom is installed; "
                        "findings.json is always written")
    p.add_argument("--series-uid", help="DICOM series to read when a folder holds several; also the LUNA16 "
                                        "seriesuid when the scan has none (single input only)")
    p.add_argument("--lung-mask", type=Path, help="lung mask / LUNA16 seg-lungs file (single input only)")
    p.add_argument("--progress", default="bar", choices=("bar", "jsonl", "none"))
    p.add_argument("--overwrite", action="store_true", help="redo scans that already have results")
    p.add_argument("--min-score", type=float, default=None,
                   help="list candidates down to this score (default 0.269, or the operating point if lower)")
    p.add_argument("--max-candidates", type=int, default=100, help="at most this many candidates per scan (100)")
    p.add_argument("--batch-size", type=int, default=None, help="tiles per forward pass (default 2 GPU / 1 CPU)")
    p.set_defaults(func=run)


def _load_detector(args):
    from ..inference import Detector

    return Detector.from_pretrained(args.model, device=args.device, batch_size=args.batch_size)


def detect_one(detector, path: Path, scan_dir: Path, args, formats: Sequence[str], sink: EventSink,
               lung_mask=None, cancel=None):
    """Read, detect and export one scan; returns ``(findings, {format: path})``."""
    from ..io import read_volume

    t0 = time.perf_counter()
    sink.progress("read", 0, 1)
    volume = read_volume(path, series_uid=args.series_uid)
    read_s = time.perf_counter() - t0
    findings = detector(volume, progress=sink.progress, cancel=cancel, lung_mask=lung_mask,
                        operating_point=args.operating_point, min_score=args.min_score,
                        max_candidates=args.max_candidates)
    findings.timings_s["read"] = round(read_s, 4)
    findings.timings_s["total"] = round(findings.timings_s["total"] + read_s, 4)
    written = write_exports(findings, volume, scan_dir, formats, series_uid=args.series_uid)
    return findings, written


def run(args) -> int:
    sink = EventSink(args.progress)
    handler = None
    if args.progress == "jsonl":
        handler = _JsonlLogHandler(sink)
        logging.getLogger("lesion-detector").addHandler(handler)
    try:
        return _run(args, sink)
    except (LesionDetectorError, ValueError, FileNotFoundError) as exc:
        if args.progress != "jsonl" or isinstance(exc, CancelledError):
            raise
        sink.emit({"event": "error", "message": str(exc), "exit_code": 2})
        return 2
    finally:
        sink.close_bar()
        if handler is not None:
            logging.getLogger("lesion-detector").removeHandler(handler)


def _run(args, sink: EventSink) -> int:
    formats = parse_formats(args.format)
    scans, problems = expand_inputs(args.inputs)
    if (args.series_uid or args.lung_mask) and len(scans) + len(problems) > 1:
        raise ValueError("--series-uid and --lung-mask apply to a single input scan")
    lung_mask = None
    if args.lung_mask is not None:
        from ..io import read_volume

        lung_mask = read_volume(args.lung_mask, allow_non_ct=True)
    out: Path = args.out
    names = unique_names(scans)
    todo = []
    for scan, name in zip(scans, names):
        if (out / name / FILES["json"]).exists() and not args.overwrite:
            sink.message(f"{scan}: already done ({out / name / FILES['json']}); --overwrite to redo")
            sink.emit({"event": "done", "findings": str(out / name / FILES["json"]), "skipped": True})
        else:
            todo.append((scan, name))

    failures: List[Tuple[str, str, int]] = [(p, msg, 2) for p, msg in problems]
    for raw, msg in problems:
        sink.emit({"event": "error", "message": f"{raw}: {msg}", "exit_code": 2})
    detector = _load_detector(args) if todo else None
    if detector is not None:
        sink.message(f"model {detector.card['name']} {detector.card['version']} on {detector.device}; "
                     f"{len(todo)} scan(s) to process -> {out}")
    for i, (scan, name) in enumerate(todo, start=1):
        sink.message(f"[{i}/{len(todo)}] {scan}")
        try:
            findings, written = detect_one(detector, scan, out / name, args, formats, sink, lung_mask)
        except CancelledError:
            raise
        except (LesionDetectorError, ValueError, FileNotFoundError, OSError) as exc:
            failures.append((str(scan), str(exc), 2))
            sink.message(f"{scan}: FAILED: {exc}")
            sink.emit({"event": "error", "message": f"{scan}: {exc}", "exit_code": 2})
            continue
        except Exception as exc:  # noqa: BLE001 - report, keep going with the other scans
            log.debug("internal error on %s", scan, exc_info=True)
            failures.append((str(scan), f"internal error: {type(exc).__name__}: {exc}", 1))
            sink.message(f"{scan}: FAILED (internal error): {type(exc).__name__}: {exc}")
            sink.emit({"event": "error", "message": f"{scan}: internal error: {exc}", "exit_code": 1})
            continue
        sink.close_bar()
        sink.message(findings.summary_table())
        if "csv" in formats:
            # Refreshed after every scan so it is complete even if a later scan is interrupted.
            written["submission"] = write_submission(out)
        sink.message("written: " + ", ".join(str(p) for p in written.values()))
        sink.emit({"event": "done", "findings": str(written["json"])})
    if failures:
        lines = [f"{len(failures)} input(s) failed:"] + [f"  {p}: {m}" for p, m, _ in failures]
        sink.message("\n".join(lines))
        print("\n".join(lines), file=sys.stderr)
        return 1 if any(code == 1 for _, _, code in failures) else 2
    return 0
