"""The module's dependency checks: no torch import, library version against the extension's,
hardware advice from the child's report, DICOM SR per Slicer version."""
import subprocess
import sys
from pathlib import Path

import pytest

from LesionDetectorLogicLib import dependencies

MODULE_DIR = Path(__file__).resolve().parents[2] / "LesionDetector"


def test_checking_for_torch_does_not_import_it():
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from LesionDetectorLogicLib import dependencies\n"
            "s = dependencies.torch_status(); dependencies.missing_requirements()\n"
            "print(s['installed'], 'torch' in sys.modules)") % str(MODULE_DIR)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]  # torch is installed here, and was not imported


def _extension_with_library(tmp_path, version):
    module_dir = tmp_path / "qt-scripted-modules"
    lib = module_dir / "LesionDetectorLibSource" / "LesionDetectorLib"
    lib.mkdir(parents=True)
    (lib / "version.py").write_text(f'__version__ = "{version}"\n')
    (module_dir / "LesionDetectorLibSource" / "pyproject.toml").write_text("[project]\n")
    return module_dir


def test_an_older_installed_library_is_reported_for_upgrade(tmp_path, monkeypatch):
    module_dir = _extension_with_library(tmp_path, "0.3.0")
    monkeypatch.setattr(dependencies, "package_version",
                        lambda name: {"lesion-detector": "0.2.9", "torch": "2.13.0"}.get(name))
    status = dependencies.library_status(module_dir)
    assert status == {"installed": "0.2.9", "shipped": "0.3.0", "outdated": True}
    missing = dependencies.missing_requirements(module_dir)
    assert any("0.3.0" in m and "upgrade" in m for m in missing)


@pytest.mark.parametrize("installed,outdated", [("0.3.0", False), ("0.10.0", False), (None, False)])
def test_same_or_newer_library_is_not_downgraded(tmp_path, monkeypatch, installed, outdated):
    module_dir = _extension_with_library(tmp_path, "0.3.0")
    monkeypatch.setattr(dependencies, "package_version", lambda name: installed if name == "lesion-detector" else None)
    assert dependencies.library_status(module_dir)["outdated"] is outdated


def test_shipped_version_of_this_checkout_is_the_library_version():
    from LesionDetectorLib.version import __version__

    assert dependencies.shipped_library_version(MODULE_DIR) == __version__


def test_version_report_and_hardware_advice_without_cuda():
    text = ("lesion-detector 0.1.0\ntorch 2.13.0+cpu (CUDA build: none, CUDA available: False)\n"
            "roi_align_3d backend: reference (pure PyTorch)\n")
    report = dependencies.parse_version_report(text)
    assert report["library"] == "0.1.0" and report["cuda_available"] is False
    assert report["op_backend"] == "reference (pure PyTorch)"
    advice = dependencies.hardware_advice(report, cpu_count=4)
    assert "cuda" not in advice["devices"]
    assert "not available" in advice["text"] and "GiB" in advice["text"]
    with_gpu = dependencies.parse_version_report(text.replace("CUDA available: False", "CUDA available: True"))
    assert "cuda" in dependencies.hardware_advice(with_gpu, cpu_count=4)["devices"]


def test_version_report_of_a_broken_library_names_the_error():
    report = dependencies.parse_version_report("", returncode=1, stderr="Traceback\nImportError: no numpy\n")
    assert report["op_backend"] == "unknown (ImportError: no numpy)"


def test_backend_probe_runs_off_the_gui_thread():
    probe = dependencies.BackendProbe(sys.executable, timeout=60)
    probe._thread.join(60)
    assert probe.done and probe.report["library"]


def test_dicom_sr_is_disabled_before_slicer_5_12_without_highdicom(monkeypatch):
    real = dependencies.importlib.util.find_spec
    monkeypatch.setattr(dependencies.importlib.util, "find_spec",
                        lambda name, *a: None if name == "highdicom" else real(name, *a))
    ok, why = dependencies.dicom_sr_support((5, 8))
    assert not ok and "5.12" in why and "pydicom" in why
    ok, why = dependencies.dicom_sr_support((5, 12))
    assert not ok and why


def test_dicom_sr_is_offered_where_highdicom_is_present():
    pytest.importorskip("highdicom")
    assert dependencies.dicom_sr_support((5, 6)) == (True, "")


def test_the_library_builds_from_a_private_copy(tmp_path):
    module_dir = _extension_with_library(tmp_path, "0.3.0")
    source = module_dir / "LesionDetectorLibSource"
    (source / "build").mkdir()
    (source / "LesionDetectorLib" / "_C.so").write_bytes(b"old build")
    with dependencies.build_copy(source) as tree:
        assert tree != source and (tree / "pyproject.toml").is_file()
        assert (tree / "LesionDetectorLib" / "version.py").is_file()
        assert not (tree / "build").exists() and not (tree / "LesionDetectorLib" / "_C.so").exists()
        (tree / "build").mkdir()  # what pip leaves behind
    assert not tree.exists()
    assert not any(p.name.endswith(".egg-info") for p in source.iterdir())
