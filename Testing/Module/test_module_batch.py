"""Detect on every CT volume of the scene: one after the other, failures recorded, one Cancel."""
import time

import numpy as np
import pytest

import LesionDetector as module
from LesionDetectorLogicLib import batch_detection
from module_test_helpers import add_volume


def _volume(scene, name, bright=True):
    array = np.full((6, 10, 12), -800, dtype=np.int16)
    if bright:
        array[3, 5, 9] = 300
    node, _ = add_volume(scene, array, np.eye(4), name=name)
    return node


def _logic(scene, command):
    logic = module.LesionDetectorLogic(scene=scene, detectCommand=command)
    logic.checkRequirements = False
    return logic


def _run(batch, timeout=60):
    deadline = time.monotonic() + timeout
    while not batch.poll():
        assert time.monotonic() < deadline, "batch did not finish"
        time.sleep(0.05)


def test_every_ct_volume_gets_its_own_results(scene, fake_detect):
    volumes = [_volume(scene, "CT A"), _volume(scene, "CT B")]
    assert batch_detection.ct_volumes(scene) == volumes
    scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "lungs")  # not a CT: skipped
    assert [v.GetName() for v in batch_detection.ct_volumes(scene)] == ["CT A", "CT B"]
    logs = []
    batch = batch_detection.BatchDetection(_logic(scene, fake_detect("ok")), batch_detection.ct_volumes(scene),
                                           {"device": "cpu"}, log=logs.append).start()
    _run(batch)
    assert batch.errors == [] and len(batch.results) == 2
    assert [r.markups.GetName() for r in batch.results] == ["CT A lesion candidates", "CT B lesion candidates"]
    assert "Volume 2 of 2: CT B" in logs


def test_a_failing_volume_is_recorded_and_the_batch_goes_on(scene, fake_detect):
    good = _volume(scene, "good")
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no image")  # refused before starting
    batch = batch_detection.BatchDetection(_logic(scene, fake_detect("ok")), [empty, good], {}).start()
    _run(batch)
    assert [name for name, _ in batch.errors] == ["no image"]
    assert len(batch.results) == 1


def test_cancel_stops_the_running_volume_and_skips_the_rest(scene, fake_detect):
    volumes = [_volume(scene, "a"), _volume(scene, "b")]
    logic = _logic(scene, fake_detect("slow"))
    batch = batch_detection.BatchDetection(logic, volumes, {}).start()
    deadline = time.monotonic() + 20
    while (logic.job is None or logic.job.stage != "model") and time.monotonic() < deadline:
        batch.poll()
        time.sleep(0.05)
    before = scene.GetNumberOfNodes()
    batch.cancel()
    assert batch.poll() is True and batch.cancelled and batch.results == []
    assert not logic.isRunning() and scene.GetNumberOfNodes() == before


def test_an_empty_scene_is_refused(scene, fake_detect):
    with pytest.raises(ValueError, match="no CT volume"):
        batch_detection.BatchDetection(_logic(scene, fake_detect("ok")), batch_detection.ct_volumes(scene))
