"""Characterization of one scan's candidates in worker processes, beside the calling process
(and, through :attr:`CharacterizationWorkers.executor`, the scan's DICOM SR).

Segmenting and measuring a candidate is scipy and numpy work that holds the GIL (distance
transforms, labelling), so threads do not run it side by side; processes do. After detection
the model's threads are idle, so on 2 CPU cores one worker halves the characterization of the
10 findings of a chest CT (docs/benchmarks.md).

* Workers are started with ``spawn`` (never ``fork``: the parent holds torch's and ITK's thread
  pools) when :class:`CharacterizationWorkers` is made, so their imports (numpy, scipy,
  SimpleITK; not torch) overlap the detection that comes first.
* The scan's voxels travel once per scan through one shared-memory block, not once per task.
* The workers take candidates from the lowest rank up, the caller from the highest down, until
  they meet; the results come back in the caller's order and are
  exactly the serial results (same code, same inputs).
* A worker that dies or cannot be reached (``BrokenProcessPool``, a pickling error) is not an
  error of the scan: its share is characterized here, and the pool is not used again.
* A worker ends itself when its parent is gone (a killed CLI cannot stop its pool).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from . import characterize_outcomes

log = logging.getLogger("lesion-detector.characterization")

#: What a task returns per candidate: ``("ok", CharacterizedNodule)`` or ``("error", message)``.
Outcome = Tuple[str, Any]

_attached: dict = {}   # in a worker: the current scan's shared block and Volume


def default_worker_count() -> int:
    """One process per core beyond the caller's, at most 3 (10 findings are split 4 ways then)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(0, min(cores - 1, 3))


def _exit_with_parent(parent: int, every_s: float = 0.5) -> None:
    """Watch the parent from a daemon thread and end this worker when it is gone. A parent that is
    killed (SIGKILL, a plain SIGTERM to its pid) cannot stop its pool, and a pool worker never sees
    its task queue close (it holds the queue's write end itself): it would wait forever."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(0)

    threading.Thread(target=watch, name="lesion-detector-parent-watch", daemon=True).start()


def _initialize(parent: int) -> None:
    _exit_with_parent(parent)
    _warm()


def _warm() -> None:
    # Import the characterization stack now, while the parent reads and preprocesses. (Not at a
    # lower priority: a worker cannot raise it again, and the parent's idle OpenMP threads spin
    # for a while after the model, which starved a nice +10 worker in its characterization.)
    from . import characterize_candidate  # noqa: F401 - imported for its side effect
    try:   # the DICOM SR writer may run here too (batch.write_exports' background)
        from ..export import dicom_sr  # noqa: F401
        import highdicom  # noqa: F401
    except ImportError:
        pass


def _worker_task(block: str, shape, dtype: str, geometry: dict, candidates: Sequence) -> List[Outcome]:
    from multiprocessing import shared_memory

    from ..volume import Volume

    if _attached.get("name") != block:
        old = _attached.pop("shm", None)
        if old is not None:
            old.close()
        # Attaching registers the block with the resource tracker that spawned workers share with
        # the parent (a set: the parent's registration already holds the name); the parent unlinks it.
        shm = shared_memory.SharedMemory(name=block)
        array = np.ndarray(shape, dtype=np.dtype(dtype), buffer=shm.buf)
        array.flags.writeable = False
        _attached.update(name=block, shm=shm, volume=Volume(array=array, **geometry))
    return characterize_outcomes(_attached["volume"], candidates)


class CharacterizationWorkers:
    """A small pool of characterization processes for a run of scans (close it, or use ``with``)."""

    def __init__(self, n_workers: Optional[int] = None) -> None:
        self.n_workers = default_worker_count() if n_workers is None else max(0, int(n_workers))
        self._pool: Optional[ProcessPoolExecutor] = None
        if self.n_workers:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.n_workers, mp_context=ctx, initializer=_initialize,
                                             initargs=(os.getpid(),))
            for _ in range(self.n_workers):   # start them (the pool spawns lazily) and let them import
                self._pool.submit(_warm)

    @property
    def usable(self) -> bool:
        return self._pool is not None

    @property
    def executor(self) -> Optional[ProcessPoolExecutor]:
        """The worker pool for other post-detection work of the scan (the DICOM SR), or None."""
        return self._pool

    def close(self, wait: bool = True) -> None:
        """Stop the workers. ``wait=False`` ends them at once (SIGTERM) instead of letting each run
        its interpreter's teardown (~0.5-1 s): for a process that is about to end. Ending the parent
        alone would not do: a pool worker holds its task queue's write end itself, never sees the
        end of it, and would keep the parent's stdout open forever."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # (the executor drops its process table in shutdown; the processes are taken first)
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=wait, cancel_futures=True)
        if wait:
            return
        for proc in procs:
            try:
                proc.terminate()
            except (OSError, AttributeError, ValueError):
                pass
        for proc in procs:
            try:
                proc.join(timeout=1.0)
            except (OSError, AttributeError, ValueError, AssertionError):
                pass

    def __enter__(self) -> "CharacterizationWorkers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def outcomes(self, volume, candidates: Sequence, lung_mask=None) -> List[Outcome]:
        """One outcome per candidate, in order; the serial loop's results.

        Every candidate is a task, queued from the lowest rank up; this process takes candidates
        from the highest rank down, each one whose task it can still cancel, so the two ends meet
        wherever the per-candidate times put them."""
        candidates = list(candidates)
        if not self.usable or len(candidates) < 2 or lung_mask is not None:
            # A supplied lung mask stays on the serial path (the CLI's characterization has none).
            return characterize_outcomes(volume, candidates, lung_mask)
        from multiprocessing import shared_memory

        array = np.ascontiguousarray(volume.array)
        shm = shared_memory.SharedMemory(create=True, size=max(array.nbytes, 1))
        futures: List[Optional[Future]] = [None] * len(candidates)
        try:
            np.ndarray(array.shape, dtype=array.dtype, buffer=shm.buf)[...] = array
            geometry = {"spacing": volume.spacing, "origin": volume.origin, "direction": volume.direction,
                        "metadata": dict(volume.metadata)}
            for i, c in enumerate(candidates):
                try:
                    futures[i] = self._pool.submit(_worker_task, shm.name, array.shape, array.dtype.str,
                                                   geometry, [c])
                except Exception as exc:  # noqa: BLE001 - a broken pool: this process does the rest
                    log.warning("characterization worker unavailable (%s); characterizing here", exc)
                    self._drop_pool()
                    break
            results: List[Optional[Outcome]] = [None] * len(candidates)
            for i in range(len(candidates) - 1, -1, -1):
                fut = futures[i]
                if fut is None or fut.cancel():
                    results[i] = characterize_outcomes(volume, [candidates[i]])[0]
            for i, fut in enumerate(futures):
                if results[i] is not None:
                    continue
                try:
                    results[i] = fut.result()[0]
                except Exception as exc:  # noqa: BLE001 - the worker died, not the candidate
                    log.warning("characterization worker failed (%s: %s); characterizing here",
                                type(exc).__name__, exc)
                    self._drop_pool()
                    results[i] = characterize_outcomes(volume, [candidates[i]])[0]
            return results   # type: ignore[return-value]
        finally:
            for fut in futures:
                if fut is not None:
                    fut.cancel()
            shm.close()
            shm.unlink()

    def _drop_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
