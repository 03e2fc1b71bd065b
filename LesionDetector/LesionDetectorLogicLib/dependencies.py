"""Python requirements of the Lesion Detector inside Slicer.

Slicer's Python has numpy and SimpleITK but no torch. On first use the module asks
the user, then installs torch through the PyTorch extension's ``PyTorchUtils`` (it
picks the CUDA build that matches the driver) or, without that extension, with
``slicer.util.pip_install`` and version bounds; then LesionDetectorLib itself from the
extension's own files (``pip install --no-build-isolation`` so that its ``roi_align_3d``
op is compiled against the torch just installed, or falls back to the reference op).
"""
from __future__ import annotations

import importlib
import importlib.util
import subprocess
from pathlib import Path
from typing import Callable, Dict, List, Optional

TORCH_REQUIREMENT = "torch>=2.4"
TORCH_MIN_VERSION = (2, 4)
# Runtime dependencies of LesionDetectorLib that Slicer does not bundle.
LIBRARY_REQUIREMENTS = ("safetensors>=0.4", "tqdm>=4.60")


class InstallError(RuntimeError):
    """Installation failed or needs a restart; the message says what to do."""

    def __init__(self, message: str, restartRequired: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.restartRequired = restartRequired


def _version_tuple(text: str):
    parts = []
    for piece in text.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def torch_status() -> Dict[str, Optional[str]]:
    """``{"installed": bool, "version": str|None, "ok": bool}`` without importing torch twice."""
    if importlib.util.find_spec("torch") is None:
        return {"installed": False, "version": None, "ok": False}
    import torch

    return {"installed": True, "version": torch.__version__,
            "ok": _version_tuple(torch.__version__) >= TORCH_MIN_VERSION}


def library_source_dir(module_dir: Path) -> Optional[Path]:
    """Folder holding LesionDetectorLib's pyproject.toml: the extension's shipped copy
    (``<module dir>/LesionDetectorLibSource``) or, in a source checkout, the repository root."""
    for candidate in (module_dir / "LesionDetectorLibSource", module_dir.parent):
        if (candidate / "pyproject.toml").is_file() and (candidate / "LesionDetectorLib").is_dir():
            return candidate
    return None


def missing_requirements() -> List[str]:
    """What still has to be installed (empty list: ready)."""
    missing = []
    status = torch_status()
    if not status["ok"]:
        missing.append(TORCH_REQUIREMENT if not status["installed"]
                       else f"{TORCH_REQUIREMENT} (found {status['version']})")
    for req in LIBRARY_REQUIREMENTS:
        name = req.split(">")[0].split("=")[0]
        if importlib.util.find_spec(name) is None:
            missing.append(req)
    if importlib.util.find_spec("LesionDetectorLib") is None:
        missing.append("LesionDetectorLib")
    return missing


def install_requirements(module_dir: Path, confirm: Callable[[str], bool],
                         log: Callable[[str], None] = print) -> bool:
    """Install what :func:`missing_requirements` lists, after ``confirm(question)`` says yes.

    Returns True when something was installed. Raises :class:`InstallError` when the
    user declines, an installation fails, or an old torch is already imported (restart).
    """
    missing = missing_requirements()
    if not missing:
        return False
    if not confirm("Lesion Detector needs these Python packages, which will be downloaded and "
                   f"installed now (this can take several minutes):\n\n  {chr(10).join(missing)}\n\nContinue?"):
        raise InstallError("Lesion Detector cannot run without: " + ", ".join(missing)
                           + ". Click Detect again to install them, or install them from the Python console "
                           "with slicer.util.pip_install().")
    import slicer

    status = torch_status()
    if not status["ok"]:
        if status["installed"]:
            # An imported old torch cannot be replaced in this process.
            raise InstallError(f"PyTorch {status['version']} is installed but Lesion Detector needs "
                               f"{TORCH_REQUIREMENT}. Update it with the PyTorch Utils module, restart Slicer "
                               "and try again.", restartRequired=True)
        log(f"Installing {TORCH_REQUIREMENT}...")
        _install_torch(log)
    for req in LIBRARY_REQUIREMENTS:
        if importlib.util.find_spec(req.split(">")[0]) is None:
            log(f"Installing {req}...")
            slicer.util.pip_install(req)
    if importlib.util.find_spec("LesionDetectorLib") is None:
        source = library_source_dir(Path(module_dir))
        if source is None:
            raise InstallError("the LesionDetectorLib sources are missing from this extension; reinstall the "
                               "Lesion Detector extension from the Extensions Manager")
        log(f"Installing LesionDetectorLib from {source} (compiles the roi_align_3d op when a compiler is present)...")
        slicer.util.pip_install(f"--no-build-isolation --no-deps \"{source}\"")
    importlib.invalidate_caches()
    still = missing_requirements()
    if still:
        raise InstallError("installation finished but these are still missing: " + ", ".join(still)
                           + ". Restart Slicer and try again; if it persists, install them from the Python "
                           "console with slicer.util.pip_install().", restartRequired=True)
    return True


def _install_torch(log: Callable[[str], None]) -> None:
    import slicer

    try:
        import PyTorchUtils  # the PyTorch extension's module: knows the right CUDA wheel
    except ImportError:
        PyTorchUtils = None
    if PyTorchUtils is not None:
        torch_logic = PyTorchUtils.PyTorchUtilsLogic()
        if not torch_logic.torchInstalled():
            torch_logic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT[len("torch"):])
        if not torch_logic.torchInstalled():
            raise InstallError("PyTorch installation through the PyTorch extension failed; install it with the "
                               "PyTorch Utils module, restart Slicer and try again.", restartRequired=True)
        return
    log("The PyTorch extension is not installed: installing the default (CPU or CUDA) torch wheel from PyPI. "
        "For the GPU build matching your driver install the PyTorch extension.")
    try:
        slicer.util.pip_install(TORCH_REQUIREMENT)
    except Exception as exc:  # noqa: BLE001 - any pip failure becomes one actionable message
        raise InstallError(f"installing {TORCH_REQUIREMENT} failed ({exc}); install the PyTorch extension from "
                           "the Extensions Manager, restart Slicer and try again.", restartRequired=True) from exc


def backend_report(python: str, timeout: float = 120.0) -> Dict[str, str]:
    """Ask the library (in a child process, like detection itself) which op backend and
    torch build it uses: ``{"version_text", "op_backend", "torch"}``. Never raises."""
    try:
        out = subprocess.run([python, "-m", "LesionDetectorLib", "--version"], capture_output=True, text=True,
                             timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"version_text": "", "op_backend": f"unknown ({exc})", "torch": "unknown"}
    text = out.stdout.strip()
    report = {"version_text": text, "op_backend": "unknown", "torch": "unknown"}
    for line in text.splitlines():
        if line.startswith("roi_align_3d backend:"):
            report["op_backend"] = line.split(":", 1)[1].strip()
        elif line.startswith("torch "):
            report["torch"] = line[len("torch "):].strip()
    if out.returncode != 0 and report["op_backend"] == "unknown":
        report["op_backend"] = f"unknown ({(out.stderr.strip().splitlines() or ['library failed to start'])[-1]})"
    return report
