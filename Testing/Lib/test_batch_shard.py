"""torchrun sharding of ``detect``: every scan is detected by exactly one rank, folder names are
the same as an unsharded run's, rank 0 writes one merged submission at the end, and a restarted
run (with any number of ranks) redoes only the unfinished scans."""
import csv
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from LesionDetectorLib.batch import SUBMISSION, BatchOptions, ScanBatchRunner, EventSink
from LesionDetectorLib.batch_shard import Shard, shard_from_env
from LesionDetectorLib.inference import Detector
from LesionDetectorLib.io import write_volume

from test_inference_pipeline import NODULE_D, NODULE_HU, BlobModel, fake_card

NODULE = (50.0, -10.0, 5.0)


@pytest.fixture
def three_scans(tmp_path, chest_phantom):
    folder = tmp_path / "in"
    folder.mkdir()
    paths = []
    for i in range(3):
        nodules = [(NODULE, NODULE_D, NODULE_HU)] if i % 2 == 0 else []
        vol = chest_phantom(shape_zyx=(48, 64, 80), spacing=(3.0, 3.0, 3.0), nodules=nodules)
        paths.append(str(write_volume(vol, folder / f"1.3.6.1.4.1.99.{i + 1}.mhd")))
    return paths


def _run_sharded(out, inputs, world):
    """Run ``world`` runners at once in threads, joined by a real barrier, as torchrun's ranks are."""
    gate = threading.Barrier(world, timeout=120)
    detected = {r: [] for r in range(world)}
    codes, errors = {}, []

    def rank(r):
        class Recording(ScanBatchRunner):
            def detect(self, scan, folder, volume=None, read_s=0.0):
                detected[r].append(folder.name)
                return super().detect(scan, folder, volume, read_s)
        try:
            runner = Recording(out, BatchOptions(formats=("json", "csv")),
                               lambda: Detector(BlobModel(), fake_card(), device="cpu", tile=64, overlap=16),
                               EventSink("none"), shard=Shard(rank=r, world_size=world, barrier=gate.wait))
            codes[r] = runner.run(inputs)
        except BaseException as exc:   # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(exc)
            gate.abort()
    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return codes, detected


def _submission_uids(out):
    with open(out / SUBMISSION, newline="") as f:
        return {row["seriesuid"] for row in csv.DictReader(f)}


def test_every_scan_is_detected_once_and_one_submission_covers_all(tmp_path, three_scans):
    out = tmp_path / "out"
    codes, detected = _run_sharded(out, three_scans, world=2)
    assert codes == {0: 0, 1: 0}
    done = detected[0] + detected[1]
    assert sorted(done) == sorted(f"1.3.6.1.4.1.99.{i + 1}" for i in range(3))       # each once
    assert len(detected[0]) == 2 and len(detected[1]) == 1                             # round robin
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} == set(done) | {SUBMISSION}
    assert {"1.3.6.1.4.1.99.1", "1.3.6.1.4.1.99.3"} <= _submission_uids(out)           # the nodules' scans

    # A restart after a scan's results are lost redoes that scan only, with another rank count.
    import shutil

    shutil.rmtree(out / "1.3.6.1.4.1.99.2")
    codes, detected = _run_sharded(out, three_scans, world=3)
    assert codes == {0: 0, 1: 0, 2: 0}
    assert detected == {0: ["1.3.6.1.4.1.99.2"], 1: [], 2: []}


def test_sharded_folder_names_match_an_unsharded_run(tmp_path, chest_phantom):
    """Two inputs with the same file name get 'scan' and 'scan-<hash>' whichever rank runs them."""
    vol = chest_phantom(shape_zyx=(48, 64, 80), spacing=(3.0, 3.0, 3.0))
    inputs = []
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        inputs.append(str(write_volume(vol, tmp_path / sub / "scan.mhd")))
    single = ScanBatchRunner(tmp_path / "one", BatchOptions(formats=("json",)), lambda: None)
    names_single = sorted(folder.name for _, folder, _ in single.plan([Path(p) for p in inputs]))
    assert len(set(names_single)) == 2
    _run_sharded(tmp_path / "two", inputs, world=2)
    assert sorted(p.name for p in (tmp_path / "two").iterdir() if p.is_dir()) == names_single


def test_shard_from_environment():
    assert shard_from_env({}) is None and shard_from_env({"WORLD_SIZE": "1"}) is None
    with pytest.raises(ValueError, match="rank"):
        Shard(rank=2, world_size=2)
    s = Shard(rank=1, world_size=4, local_rank=1, local_world_size=2)
    assert s.device("cpu") == "cpu" and not s.is_main
    assert s.cpu_threads() >= 1


@pytest.mark.slow
def test_torchrun_two_cpu_processes_share_one_detect_run(tmp_path, three_scans):
    """The real thing: torchrun starts two CPU ranks (Gloo) of ``lesion-detector detect`` with the
    bundled model; every scan gets its folder once and the merged submission lists all of them."""
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "LesionDetectorLib.cli.main", "detect", *three_scans, "--out", str(out),
           "--format", "json,csv", "--no-characterize", "--progress", "none", "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folders = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert folders == [f"1.3.6.1.4.1.99.{i}" for i in (1, 2, 3)]
    with open(out / SUBMISSION, newline="") as f:
        assert len(list(csv.DictReader(f))) > 0
