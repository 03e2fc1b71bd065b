"""The module's own self-test (what Slicer's "Reload and Test" and the build factory run),
executed here with slicer-core: its light parts must pass without the application."""
import types

import pytest
import slicer

import LesionDetector as module


def _load_markups(path):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    slicer.mrmlScene.AddNode(storage)
    node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return node


@pytest.fixture
def selftest(scene, monkeypatch):
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(processEvents=lambda: None, testingEnabled=lambda: True),
                        raising=False)
    monkeypatch.setattr(slicer.util, "loadMarkups", _load_markups)
    return module.LesionDetectorTest()


def test_geometry_and_process_protocol_part(selftest):
    selftest.test_GeometryAndProcessProtocol()


def test_review_and_export_round_trip_part(selftest):
    selftest.test_ReviewAndExportRoundTrip()
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLMarkupsFiducialNode").GetNumberOfItems() == 2


def test_full_detection_is_not_attempted_under_ctest(selftest, monkeypatch):
    monkeypatch.setattr(module.dependencies, "missing_requirements", lambda module_dir=None: [])
    monkeypatch.delenv("LESION_DETECTOR_FULL_SELFTEST", raising=False)
    assert "ctest" in module.fullDetectionSkipReason()
    monkeypatch.setenv("LESION_DETECTOR_FULL_SELFTEST", "1")
    assert module.fullDetectionSkipReason() == ""
    monkeypatch.setattr(module.dependencies, "missing_requirements", lambda module_dir=None: ["torch>=2.4"])
    assert "torch" in module.fullDetectionSkipReason()


def test_sample_is_registered_with_sampledata_as_slicer_expects(monkeypatch):
    """The call matches SampleDataLogic.registerCustomSampleDataSource's signature (Slicer 5.x)."""
    import sys

    calls = []

    class SampleDataLogic:
        @staticmethod
        def registerCustomSampleDataSource(category="Custom", sampleName=None, uris=None, fileNames=None,
                                           nodeNames=None, customDownloader=None, thumbnailFileName=None,
                                           loadFileType="VolumeFile", loadFiles=None, loadFileProperties={},
                                           checksums=None):
            calls.append(dict(category=category, uris=uris, fileNames=fileNames, nodeNames=nodeNames,
                              customDownloader=customDownloader, thumbnailFileName=thumbnailFileName))

    monkeypatch.setitem(sys.modules, "SampleData", types.SimpleNamespace(SampleDataLogic=SampleDataLogic))
    module.registerSampleData()
    (call,) = calls
    assert call["category"] == "Lesion Detector"
    assert len(call["uris"]) == len(call["fileNames"]) == len(call["nodeNames"]) == 1
    assert callable(call["customDownloader"])
    from pathlib import Path

    assert Path(call["thumbnailFileName"]).is_file()
