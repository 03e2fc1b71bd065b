"""The extension's CMake install, emulated: what an Extensions Manager package would hold.

The real extension build needs a Slicer build tree. The stand-in in
``fixtures/SlicerStandIn`` defines Slicer's real directory variables and macro names
(see its header), so configuring, building and installing the extension here runs the
extension's own CMake code exactly as Slicer would, and a misspelt Slicer variable
expands to nothing as it does in Slicer.
"""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAND_IN = Path(__file__).resolve().parent / "fixtures" / "SlicerStandIn"

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")


def _run(cmd, cwd=None):
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=240)
    return out.returncode, out.stdout + out.stderr


@pytest.fixture(scope="module", params=["5.6", "5.12"])
def installed(request, tmp_path_factory):
    version = request.param
    tmp = tmp_path_factory.mktemp(f"slicer{version}")
    build, prefix = tmp / "build", tmp / "prefix"
    rc, log = _run(["cmake", "-S", REPO, "-B", build, f"-DSlicer_DIR={STAND_IN}",
                    f"-DSTANDIN_SLICER_VERSION={version}", f"-DCMAKE_INSTALL_PREFIX={prefix}",
                    "-DBUILD_TESTING=ON"])
    if rc != 0 and "CMAKE_C_COMPILER" in log and "could not be found" in log.lower():
        pytest.skip("no C/C++ compiler for CMake's project() language check")
    assert rc == 0, log
    rc, log = _run(["cmake", "--build", build])
    assert rc == 0, log
    rc, log = _run(["cmake", "--install", build])
    assert rc == 0, log
    files = sorted(p.relative_to(prefix).as_posix() for p in prefix.rglob("*") if p.is_file())
    return version, prefix, files


def test_everything_lands_under_qt_scripted_modules(installed):
    version, _, files = installed
    root = f"lib/Slicer-{version}/qt-scripted-modules/"
    assert files, "nothing was installed"
    elsewhere = [f for f in files if not f.startswith(root)]
    assert elsewhere == []


def test_module_helpers_and_resources_are_installed(installed):
    version, _, files = installed
    root = f"lib/Slicer-{version}/qt-scripted-modules/"
    expected = {"LesionDetector.py", "Resources/UI/LesionDetector.ui", "Resources/Icons/LesionDetector.png"}
    # every helper file of the module, including ones added after this test was written
    expected |= {p.relative_to(REPO / "LesionDetector").as_posix()
                 for p in (REPO / "LesionDetector" / "LesionDetectorLogicLib").glob("*.py")}
    missing = sorted(f for f in expected if root + f not in files)
    assert missing == []


def test_library_model_and_lidc_shapes_ship_as_a_buildable_source_tree(installed):
    version, prefix, files = installed
    src = f"lib/Slicer-{version}/qt-scripted-modules/LesionDetectorLibSource/"
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE", "LesionDetectorLib/__init__.py",
                 "LesionDetectorLib/cli/main.py", "LesionDetectorLib/csrc/ops/roi_align_3d.cpp",
                 "Resources/LIDC/lidc_nodule_shapes.npz"):
        assert src + name in files, name
    for model_dir in (REPO / "Resources" / "Models").iterdir():
        for f in model_dir.iterdir():
            assert f"{src}Resources/Models/{model_dir.name}/{f.name}" in files
    # no build products of this checkout travel with the sources
    assert not [f for f in files if f.endswith((".so", ".pyd", ".pyc"))]
    # the module finds the shipped tree where the extension put it
    import sys

    sys.path.insert(0, str(REPO / "LesionDetector"))
    from LesionDetectorLogicLib import dependencies

    module_dir = prefix / f"lib/Slicer-{version}/qt-scripted-modules"
    assert dependencies.library_source_dir(module_dir) == module_dir / "LesionDetectorLibSource"


def test_files_named_by_pyproject_are_shipped(installed):
    """``readme`` and ``license-files`` must resolve inside the shipped tree, or pip fails."""
    version, prefix, _ = installed
    src = prefix / f"lib/Slicer-{version}/qt-scripted-modules/LesionDetectorLibSource"
    text = (src / "pyproject.toml").read_text()
    named = re.findall(r'^readme\s*=\s*"([^"]+)"', text, re.M)
    lic = re.search(r"^license-files\s*=\s*\[([^\]]*)\]", text, re.M)
    if lic:
        named += re.findall(r'"([^"]+)"', lic.group(1))
    assert named
    for name in named:
        assert list(src.glob(name)), name


def test_configure_refuses_a_slicer_without_the_scripted_modules_variable(tmp_path):
    """Installing with the variable undefined would put the library at the file-system root."""
    broken = tmp_path / "BrokenSlicer"
    shutil.copytree(STAND_IN, broken)
    cfg = broken / "SlicerConfig.cmake"
    cfg.write_text(cfg.read_text() + "\nunset(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR)\n")
    rc, log = _run(["cmake", "-S", REPO, "-B", tmp_path / "build", f"-DSlicer_DIR={broken}",
                    f"-DCMAKE_INSTALL_PREFIX={tmp_path / 'prefix'}"])
    assert rc != 0
    assert "Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR" in log


def test_catalog_entry_matches_the_cmake_metadata():
    """Extensions Index catalog entry (schema 1.0.2): required keys, known keys only, and the
    category and build dependencies the CMake project declares."""
    entry = json.loads((REPO / "LesionDetector.json").read_text())
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json#")
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "dicom_support_rule", "build_subdirectory", "enabled", "tier"}
    assert set(entry) <= allowed
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert entry.get("scm_type", "git") in ("git", "local")
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert entry["category"] == re.search(r'set\(EXTENSION_CATEGORY "([^"]+)"\)', cmake).group(1)
    depends = re.search(r'set\(EXTENSION_DEPENDS "([^"]+)"\)', cmake).group(1).split()
    assert entry["build_dependencies"] == depends == ["PyTorch"]
    assert isinstance(entry.get("enabled", True), bool)
