"""One detection run of ``LesionDetectorLib detect`` in a background process.

The GUI must never block and Cancel must work at any time, so the heavy part runs
as a child process (same interpreter: in Slicer that is PythonSlicer) whose stdout
carries the jsonl progress protocol of ``docs/architecture.md``::

    {"event": "progress", "stage": str, "done": int, "total": int}
    {"event": "log", "message": str}
    {"event": "done", "findings": path}      or     {"event": "error", "message": str, "exit_code": int}

Two reader threads move stdout/stderr lines into queues; :meth:`DetectionJob.poll`
drains them without waiting, so a ``QTimer`` in the widget (or :meth:`wait` in a
script) drives the job. The job owns a temporary directory (input NRRD + outputs)
and removes it when it finishes, fails or is cancelled; before that, the nodule masks
``detect`` writes beside the findings (``nodule_masks.seg.nrrd``, when it segmented any
finding) are read into memory too.

Process handling, because Slicer's launcher sits between us and Python:

- In Slicer the child is ``PythonSlicer``, a launcher that starts ``python-real``; the
  detection itself may fork workers. Cancel therefore stops the whole process tree:
  a new process group and ``os.killpg`` on POSIX, ``taskkill /T /F`` on Windows
  (psutil is not part of Slicer's Python).
- On Windows the child starts without a console window (``STARTUPINFO`` + ``CREATE_NO_WINDOW``).
- Output is decoded as UTF-8 with ``errors="replace"``, so a stray byte cannot kill a
  reader thread (the child would then block on a full pipe). Only the reader threads
  close the pipes, at end of file: closing a pipe another thread is reading can block.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

# States of a job; the widget shows them to the user.
PENDING, RUNNING, DONE, FAILED, CANCELLED = "pending", "running", "done", "failed", "cancelled"
FINISHED_STATES = (DONE, FAILED, CANCELLED)

# Exit codes of ``lesion-detector`` (LesionDetectorLib/cli/main.py): 2 bad input, 130 cancelled.
# The nodule masks ``detect`` writes beside findings.json (LesionDetectorLib.batch.FILES["seg.nrrd"]).
MASKS_FILE = "nodule_masks.seg.nrrd"
_EXIT_MEANING = {1: "internal error", 2: "bad input", 130: "cancelled"}


def parse_event(line: str) -> Dict:
    """One stdout line -> event dict. Lines that are not protocol JSON become log events
    (a stray print in the child must not kill the run)."""
    text = line.strip()
    if text.startswith("{"):
        try:
            event = json.loads(text)
        except json.JSONDecodeError:
            event = None
        if isinstance(event, dict) and isinstance(event.get("event"), str):
            return event
    return {"event": "log", "message": text}


def _pump(stream, sink: "queue.Queue[Optional[str]]") -> None:
    """Reader thread: lines -> ``sink``, then None at end of file. Never dies on bad output."""
    try:
        for line in iter(stream.readline, ""):
            sink.put(line)
    except (ValueError, OSError) as exc:  # stream closed or broken: nothing more to read
        sink.put(f"(output reader stopped: {exc})\n")
    finally:
        try:
            stream.close()
        except OSError:
            pass
        sink.put(None)


def windows_popen_kwargs(sp=subprocess) -> Dict:
    """Popen arguments that start a child without a console window, in its own process group.

    ``sp`` is the ``subprocess`` module (replaceable so the values are testable off Windows).
    """
    startupinfo = sp.STARTUPINFO()
    startupinfo.dwFlags |= sp.STARTF_USESHOWWINDOW
    startupinfo.wShowWindow = sp.SW_HIDE
    return {"startupinfo": startupinfo, "creationflags": sp.CREATE_NEW_PROCESS_GROUP | sp.CREATE_NO_WINDOW}


def kill_tree_command(pid: int) -> List[str]:
    """Windows: the command that ends ``pid`` and every process it started."""
    return ["taskkill", "/PID", str(int(pid)), "/T", "/F"]


class DetectionJob:
    """Runs ``command`` (a full argv) in the background and interprets its jsonl stream.

    ``workdir`` is removed when the job ends (``keep_workdir=False``). Attributes the
    caller reads after :meth:`poll`: ``state``, ``stage``, ``done``, ``total``,
    ``findings`` (the parsed findings dict once ``state == DONE``), ``masks`` (the nodule
    masks beside it as a label :class:`~LesionDetectorLib.volume.Volume`, or None), ``error``
    (a one-line cause once ``state == FAILED``), ``returncode``.

    ``result_keys``: the JSON files the ``done`` event names and the job reads before the
    workdir goes, into ``results[key]``; the first must be there (``findings`` for
    ``detect``; ``lesion-detector compare`` names ``comparison`` and the findings it wrote).
    """

    def __init__(self, command: Sequence[str], workdir: Path, env: Optional[Dict[str, str]] = None,
                 log_callback: Optional[Callable[[str], None]] = None, keep_workdir: bool = False,
                 result_keys: Sequence[str] = ("findings",)) -> None:
        self.command = [str(c) for c in command]
        self.workdir = Path(workdir)
        self.env = env
        self.log_callback = log_callback
        self.keep_workdir = keep_workdir
        self.state = PENDING
        self.stage = ""
        self.done = 0
        self.total = 0
        self.result_keys = tuple(result_keys)
        self.results: Dict[str, Dict] = {}
        self.findings: Optional[Dict] = None
        self.masks = None
        self.error: Optional[str] = None
        self.returncode: Optional[int] = None
        self._proc: Optional[subprocess.Popen] = None
        self._stdout: "queue.Queue[Optional[str]]" = queue.Queue()
        self._stderr: "queue.Queue[Optional[str]]" = queue.Queue()
        self._stdout_open = self._stderr_open = True
        self._stderr_tail: deque = deque(maxlen=20)
        self._done_event: Optional[Dict] = None
        self._error_event: Optional[str] = None

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> "DetectionJob":
        if self.state != PENDING:
            raise RuntimeError(f"job already {self.state}")
        if os.name == "posix":
            # Own process group (its id is the child's pid): cancel() signals the whole tree.
            kwargs = {"start_new_session": True}
        else:
            kwargs = windows_popen_kwargs()
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")  # progress lines must arrive as they happen
        env.setdefault("PYTHONIOENCODING", "utf-8")  # what the readers decode, on every platform
        try:
            self._proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          stdin=subprocess.DEVNULL, text=True, encoding="utf-8",
                                          errors="replace", bufsize=1, env=env,
                                          cwd=str(self.workdir), **kwargs)
        except OSError as exc:
            self._finish(FAILED, f"could not start the detection process ({exc})")
            return self
        self.state = RUNNING
        for stream, sink in ((self._proc.stdout, self._stdout), (self._proc.stderr, self._stderr)):
            threading.Thread(target=_pump, args=(stream, sink), daemon=True).start()
        return self

    def poll(self) -> List[Dict]:
        """Handle everything the child wrote since the last call; never blocks.

        Returns the new events (progress / log / done / error) in arrival order.
        """
        if self.state != RUNNING:
            return []
        events = []
        for line in self._drain(self._stderr, "_stderr_open"):
            text = line.rstrip()
            if text:
                self._stderr_tail.append(text)
                self._log(text)
        for line in self._drain(self._stdout, "_stdout_open"):
            if not line.strip():
                continue
            event = parse_event(line)
            self._handle(event)
            events.append(event)
        if not self._stdout_open and not self._stderr_open and self._proc.poll() is not None:
            self._conclude(self._proc.returncode)
        return events

    def wait(self, timeout: Optional[float] = None, interval: float = 0.1,
             on_events: Optional[Callable[[List[Dict]], None]] = None) -> str:
        """Poll until the job ends (synchronous use, e.g. ``Logic.process``); returns the state.
        On ``timeout`` seconds the job is cancelled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.state in (PENDING, RUNNING):
            events = self.poll()
            if events and on_events:
                on_events(events)
            if self.state != RUNNING:
                break
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                self.error = f"detection did not finish within {timeout:.0f} s"
                break
            time.sleep(interval)
        return self.state

    def cancel(self, grace: float = 5.0) -> None:
        """Stop the child and everything it started, then remove the temporary files.

        POSIX: SIGTERM to the process group, SIGKILL to what is left after ``grace``
        seconds (also when the child itself already exited but left workers behind).
        Windows: ``taskkill /T /F`` on the tree, then ``kill()`` if that failed.
        """
        if self.state in FINISHED_STATES:
            return
        if self._proc is not None:
            if os.name == "posix":
                self._signal_group(signal.SIGTERM)
                deadline = time.monotonic() + grace
                while self._group_alive() and time.monotonic() < deadline:
                    time.sleep(0.05)
                if self._group_alive():
                    self._signal_group(signal.SIGKILL)
            else:
                self._kill_tree_windows()
            try:
                self._proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=grace)
            self.returncode = self._proc.returncode
        self._finish(CANCELLED, None)

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    # -- internals -----------------------------------------------------------------
    def _drain(self, sink: "queue.Queue[Optional[str]]", flag: str) -> List[str]:
        lines = []
        while True:
            try:
                line = sink.get_nowait()
            except queue.Empty:
                return lines
            if line is None:
                setattr(self, flag, False)
            else:
                lines.append(line)

    def _handle(self, event: Dict) -> None:
        kind = event["event"]
        if kind == "progress":
            self.stage = str(event.get("stage", ""))
            self.done = int(event.get("done", 0) or 0)
            self.total = int(event.get("total", 0) or 0)
        elif kind == "log":
            self._log(str(event.get("message", "")))
        elif kind == "done":
            self._done_event = event
        elif kind == "error":
            self._error_event = str(event.get("message") or "detection failed")

    def _conclude(self, returncode: int) -> None:
        self.returncode = returncode
        if self._error_event is not None:
            self._finish(FAILED, self._error_event)
        elif returncode != 0:
            meaning = _EXIT_MEANING.get(returncode, f"exit code {returncode}")
            detail = self._stderr_tail[-1] if self._stderr_tail else "no message"
            self._finish(FAILED, f"detection process failed ({meaning}): {detail}")
        elif not (self._done_event or {}).get(self.result_keys[0]):
            self._finish(FAILED, f"detection process ended without reporting a {self.result_keys[0]} file")
        else:
            for key in self.result_keys:
                name = self._done_event.get(key)
                if not name:
                    continue
                try:
                    path = Path(name)
                    if not path.is_absolute():
                        path = self.workdir / path
                    with open(path, encoding="utf-8") as f:
                        self.results[key] = json.load(f)
                except (OSError, json.JSONDecodeError) as exc:
                    self._finish(FAILED, f"{key} file could not be read ({exc})")
                    return
            self.findings = self.results.get("findings")
            if not self._read_masks():
                return
            self._finish(DONE, None)

    def _read_masks(self) -> bool:
        """Read the nodule masks beside the findings file, if there are any; a file that cannot be
        read fails the job (the run is imported with its masks or not at all)."""
        name = (self._done_event or {}).get("findings")
        if not name:
            return True
        path = Path(name) if Path(name).is_absolute() else self.workdir / name
        masks_path = path.with_name(MASKS_FILE)
        if not masks_path.is_file():
            return True
        try:
            from LesionDetectorLib.export.segmentation_nrrd import read_segmentation_nrrd

            self.masks = read_segmentation_nrrd(masks_path)
        except (OSError, RuntimeError, ValueError) as exc:
            self.findings = None
            self._finish(FAILED, f"nodule masks could not be read ({exc})")
            return False
        return True

    def _finish(self, state: str, error: Optional[str]) -> None:
        # The pipes are closed by their reader threads at end of file (see the module docstring).
        self.state = state
        self.error = error
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _signal_group(self, sig) -> None:
        try:
            os.killpg(self._proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _group_alive(self) -> bool:
        """Whether any process of the child's group is left (the leader is reaped first: a
        zombie would keep the group alive)."""
        self._proc.poll()
        try:
            os.killpg(self._proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def _kill_tree_windows(self) -> None:
        if self._proc.poll() is not None and self._proc.returncode is not None:
            return
        try:
            subprocess.run(kill_tree_command(self._proc.pid), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=10, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        except (OSError, subprocess.TimeoutExpired):
            pass
        if self._proc.poll() is None:
            self._proc.kill()

    def _log(self, message: str) -> None:
        if self.log_callback and message:
            self.log_callback(message)


def make_workdir(prefix: str = "LesionDetector-") -> Path:
    """A fresh private temporary directory for one run (the job removes it)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def detect_command(input_path: Path, out_dir: Path, device: str = "auto",
                   operating_point: str = "sensitivity_0.95", model: Optional[str] = None,
                   python: Optional[str] = None) -> List[str]:
    """argv of ``python -m LesionDetectorLib detect`` producing findings JSON, the nodule masks
    (``.seg.nrrd``) and jsonl progress."""
    argv = [python or python_executable(), "-m", "LesionDetectorLib", "detect", str(input_path),
            "--out", str(out_dir), "--format", "json,seg.nrrd", "--progress", "jsonl",
            "--device", device, "--operating-point", operating_point]
    if model:
        argv += ["--model", model]
    return argv


def python_executable() -> str:
    """The interpreter for child processes: PythonSlicer inside Slicer (``sys.executable``
    is the Slicer application there), else the running interpreter."""
    exe = Path(sys.executable)
    if exe.stem.lower().startswith("slicer"):
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable
