"""DetectionJob's process handling with fake children: the whole tree stops on Cancel,
bad bytes cannot kill the reader, and the Windows start-up arguments hide the console."""
import os
import sys
import textwrap
import time
import types

import pytest

from LesionDetectorLogicLib import detection_job

posix_only = pytest.mark.skipif(os.name != "posix", reason="process groups are POSIX")


def _script(tmp_path, body):
    path = tmp_path / "child.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _wait_for(path, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(path.read_text())


GRANDCHILD = """
    import subprocess, sys, time
    from pathlib import Path
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    Path(sys.argv[1]).write_text(str(worker.pid))
    print('{"event": "progress", "stage": "model", "done": 1, "total": 9}', flush=True)
    if sys.argv[2] == "stay":
        time.sleep(120)
"""


@posix_only
@pytest.mark.parametrize("leader", ["stay", "exit"])
def test_cancel_stops_the_child_and_the_workers_it_started(tmp_path, leader):
    """'exit': the launcher is gone but its worker still holds the pipes (PythonSlicer -> python-real)."""
    pid_file = tmp_path / "worker.pid"
    work = tmp_path / "work"
    work.mkdir()
    job = detection_job.DetectionJob(_script(tmp_path, GRANDCHILD) + [str(pid_file), leader], work).start()
    worker = _wait_for(pid_file)
    assert _alive(worker)
    deadline = time.monotonic() + 10
    while job.stage != "model" and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.05)
    assert job.state == detection_job.RUNNING  # the worker keeps stdout open either way
    started = time.monotonic()
    job.cancel(grace=2.0)
    assert time.monotonic() - started < 6
    assert job.state == detection_job.CANCELLED
    deadline = time.monotonic() + 5
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(worker)
    assert not work.exists()


@posix_only
def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path):
    cmd = _script(tmp_path, """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(120)
    """)
    work = tmp_path / "work"
    work.mkdir()
    job = detection_job.DetectionJob(cmd, work, keep_workdir=True).start()
    deadline = time.monotonic() + 10
    seen = []
    while not seen and time.monotonic() < deadline:
        seen = [e for e in job.poll() if e.get("message") == "ready"]
        time.sleep(0.05)
    job.cancel(grace=0.5)
    assert job._proc.poll() is not None and job.returncode == -9


def test_undecodable_output_does_not_stop_the_reader(tmp_path):
    cmd = _script(tmp_path, """
        import json, sys
        from pathlib import Path
        out = Path("findings.json")
        out.write_text(json.dumps({"candidates": []}))
        sys.stdout.buffer.write(b"garbage \\xff\\xfe\\x80 from a library\\n")
        sys.stdout.buffer.flush()
        sys.stderr.buffer.write(b"warning \\xc3\\x28\\n")
        sys.stderr.buffer.flush()
        print(json.dumps({"event": "progress", "stage": "model", "done": 2, "total": 4}), flush=True)
        print(json.dumps({"event": "done", "findings": "findings.json"}), flush=True)
    """)
    work = tmp_path / "work"
    work.mkdir()
    logged = []
    job = detection_job.DetectionJob(cmd, work, log_callback=logged.append, keep_workdir=True).start()
    assert job.wait(timeout=30) == detection_job.DONE, job.error
    assert job.findings == {"candidates": []}
    assert (job.stage, job.done, job.total) == ("model", 2, 4)
    assert any("garbage" in line and "\ufffd" in line for line in logged)
    assert any(line.startswith("warning") for line in logged)


def test_windows_start_hides_the_console_and_kills_the_tree():
    class StartupInfo:
        def __init__(self):
            self.dwFlags = 0
            self.wShowWindow = 1

    fake = types.SimpleNamespace(STARTUPINFO=StartupInfo, STARTF_USESHOWWINDOW=0x1, SW_HIDE=0,
                                 CREATE_NEW_PROCESS_GROUP=0x200, CREATE_NO_WINDOW=0x08000000)
    kwargs = detection_job.windows_popen_kwargs(fake)
    assert kwargs["startupinfo"].dwFlags & 0x1 and kwargs["startupinfo"].wShowWindow == 0
    assert kwargs["creationflags"] == 0x200 | 0x08000000
    assert detection_job.kill_tree_command(4242) == ["taskkill", "/PID", "4242", "/T", "/F"]
