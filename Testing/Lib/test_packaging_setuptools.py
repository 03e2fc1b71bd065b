"""The library builds with the setuptools that Slicer bundles, without build isolation.

Inside Slicer the module runs ``pip install --no-build-isolation`` on the extension's
shipped source tree, so the build uses Slicer's own setuptools: 68.2.2 in Slicer 5.6,
70.0.0 in 5.8 (80.9 from 5.10). Each case builds a wheel in a fresh virtual environment
holding only that setuptools and ``wheel``; the compiled op is skipped
(``LESION_DETECTOR_NO_EXT=1``) because it is not what differs between versions.
"""
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("LesionDetectorLib", "Resources", "pyproject.toml", "setup.py", "README.md", "LICENSE")

pytestmark = pytest.mark.slow


def _pip(python, *args, timeout=300):
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", LESION_DETECTOR_NO_EXT="1")
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True, timeout=timeout, env=env)


# wheel 0.46 dropped its bdist_wheel for setuptools < 70.1, so the old pair keeps an old wheel.
@pytest.mark.parametrize("setuptools_version,slicer", [("68.2.2", "5.6"), ("70.0.0", "5.8")])
def test_wheel_builds_without_isolation(tmp_path, setuptools_version, slicer):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    got = _pip(python, "install", "-q", f"setuptools=={setuptools_version}", "wheel<0.46")
    if got.returncode != 0:
        text = (got.stdout + got.stderr).lower()
        if any(s in text for s in ("no matching distribution", "connection", "network", "resolve", "timed out")):
            pytest.skip(f"PyPI unreachable: {got.stderr.strip().splitlines()[-1:]}")
        pytest.fail(got.stdout + got.stderr)
    probe = subprocess.run([str(python), "-c", "import setuptools; print(setuptools.__version__)"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == setuptools_version

    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.pyd", "_resources")
    for name in SHIPPED:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    out = tmp_path / "wheels"
    got = _pip(python, "wheel", "--no-build-isolation", "--no-deps", "-w", str(out), str(src))
    assert got.returncode == 0, f"setuptools {setuptools_version} (Slicer {slicer}):\n{got.stdout}\n{got.stderr}"

    wheel = next(out.glob("lesion_detector-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "License: Apache-2.0" in meta
    assert any(n.endswith(".dist-info/LICENSE") or n.endswith("licenses/LICENSE") for n in names)
    assert "LesionDetectorLib/cli/main.py" in names
    assert any(n.startswith("LesionDetectorLib/_resources/Models/") and n.endswith("model.safetensors") for n in names)
    assert "lesion-detector = LesionDetectorLib.cli.main:console_main" in entry_points


def test_current_setuptools_writes_a_license_expression(tmp_path):
    """With setuptools >= 77 (Slicer 5.10+ and the development venv) the licence is a PEP 639 expression."""
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} predates PEP 639")
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.pyd", "_resources")
    for name in SHIPPED:
        path = REPO / name
        (shutil.copytree(path, src / name, ignore=ignore) if path.is_dir() else shutil.copy2(path, src / name))
    got = _pip(sys.executable, "wheel", "--no-build-isolation", "--no-deps", "-w", str(tmp_path / "w"), str(src))
    assert got.returncode == 0, got.stdout + got.stderr
    wheel = next((tmp_path / "w").glob("*.whl"))
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in meta
