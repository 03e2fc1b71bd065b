"""Characterization shared out to worker processes gives exactly the serial results, and a worker
that dies or a pool that is gone costs time, not results."""
import os
import signal

import numpy as np
import pytest

from LesionDetectorLib.characterization import characterize_outcomes
from LesionDetectorLib.characterization.parallel import CharacterizationWorkers
from LesionDetectorLib.findings import Candidate


@pytest.fixture(scope="module")
def scan_and_candidates():
    from LesionDetectorLib.data.synthetic import generate_scan

    scan = generate_scan(2, 0, size="small", confusers=False)
    cands = [Candidate(id=f"N{k + 1}", rank=k + 1, center_lps=list(n.center_lps), diameter_mm=float(n.diameter_mm),
                       score=0.9 - 0.1 * k, score_rpn=0.9, score_fprn=0.9)
             for k, n in enumerate(scan.annotations)]
    # one candidate in plain parenchyma, away from any nodule: an empty or tiny segmentation
    cands.append(Candidate(id="NX", rank=len(cands) + 1, center_lps=list(scan.annotations[0].center_lps[:2]) +
                           [scan.annotations[0].center_lps[2] + 25.0], diameter_mm=6.0, score=0.1,
                           score_rpn=0.1, score_fprn=0.1))
    assert len(cands) >= 3
    return scan.to_volume(), cands


def _same(a, b):
    assert [s for s, _ in a] == [s for s, _ in b]
    for (sa, va), (sb, vb) in zip(a, b):
        if sa == "ok":
            assert va.candidate_id == vb.candidate_id and va.characterization == vb.characterization
            assert np.array_equal(va.segmentation.mask, vb.segmentation.mask)
        else:
            assert va == vb


def test_workers_give_the_serial_results(scan_and_candidates):
    volume, cands = scan_and_candidates
    serial = characterize_outcomes(volume, cands)
    with CharacterizationWorkers(1) as workers:
        assert workers.usable
        _same(workers.outcomes(volume, cands), serial)
        _same(workers.outcomes(volume, cands[:2]), serial[:2])   # a second scan through the same pool
    assert not workers.usable


# CPython 3.11's pool manager thread may try to fail a future this process has just cancelled
# (InvalidStateError in that thread, fixed in later CPythons); the results are unaffected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_worker_costs_time_not_results(scan_and_candidates):
    volume, cands = scan_and_candidates
    serial = characterize_outcomes(volume, cands)
    with CharacterizationWorkers(1) as workers:
        workers.outcomes(volume, cands[:2])                         # the worker is up
        for proc in list(workers._pool._processes.values()):       # noqa: SLF001 - kill it on purpose
            os.kill(proc.pid, signal.SIGKILL)
        _same(workers.outcomes(volume, cands), serial)
        assert not workers.usable                                   # not used again
        _same(workers.outcomes(volume, cands), serial)


def test_characterize_with_workers_matches_without(scan_and_candidates):
    from LesionDetectorLib.characterization import characterize_with_masks
    from LesionDetectorLib.findings import Findings

    volume, cands = scan_and_candidates
    findings = Findings(candidates=cands, patient_flag={}, model={}, volume={}, provenance={},
                        operating_point={"threshold": 0.0})
    plain, masks = characterize_with_masks(volume, findings)
    with CharacterizationWorkers(1) as workers:
        shared, masks2 = characterize_with_masks(volume, findings, workers=workers)
    assert [c.characterization for c in plain.candidates] == [c.characterization for c in shared.candidates]
    assert plain.lung_rads == shared.lung_rads and len(masks) == len(masks2)


def test_workers_end_when_their_parent_is_killed(tmp_path):
    """A parent killed outright (SIGKILL: no chance to stop its pool) leaves no worker behind."""
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from LesionDetectorLib.characterization.parallel import CharacterizationWorkers\n"
        "if __name__ == '__main__':\n"
        "    w = CharacterizationWorkers(1)\n"
        "    print(w.executor.submit(__import__('os').getpid).result(), flush=True)\n"
        "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(proc.stdout.readline())
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the worker outlived its killed parent by 10 s")
