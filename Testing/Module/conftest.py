"""Fixtures of the Slicer module's tests: a real MRML scene from slicer-core, no Qt.

``LesionDetector/`` (the module folder) goes on ``sys.path`` exactly as Slicer puts
it there, so ``import LesionDetector`` loads the module file and its helper package.
"""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "LesionDetector"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) is needed")


@pytest.fixture
def scene():
    """A fresh scene installed as ``slicer.mrmlScene`` with its subject hierarchy, as in Slicer."""
    previous = getattr(slicer, "mrmlScene", None)
    s = slicer.vtkMRMLScene()
    s.GetSubjectHierarchyNode()  # Slicer always has one; create it before tests count nodes
    slicer.mrmlScene = s
    yield s
    s.Clear(1)
    slicer.mrmlScene = previous


@pytest.fixture
def findings_doc():
    return json.loads((FIXTURES / "findings_three_candidates.json").read_text())


@pytest.fixture
def fake_detect(monkeypatch):
    """detectCommand for the Logic that runs fixtures/fake_detect.py; set its mode with the arg."""
    def factory(mode="ok"):
        monkeypatch.setenv("FAKE_DETECT_MODE", mode)

        def command(input_path, out_dir, device, operating_point, model):
            return [sys.executable, str(FIXTURES / "fake_detect.py"), str(input_path), "--out", str(out_dir),
                    "--device", device, "--operating-point", operating_point]
        return command
    return factory


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch):
    monkeypatch.delenv("FAKE_DETECT_MODE", raising=False)
    yield
