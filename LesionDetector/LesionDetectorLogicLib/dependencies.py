"""Python requirements of the Lesion Detector inside Slicer.

Slicer's Python has numpy and SimpleITK but no torch. On first use the module asks
the user, then installs torch through the PyTorch extension's ``PyTorchUtils`` (it
picks the CUDA build that matches the driver) or, without that extension, with
``slicer.util.pip_install`` and version bounds; then LesionDetectorLib itself from the
extension's own files (``pip install --no-build-isolation`` so that its ``roi_align_3d``
op is compiled against the torch just installed, or falls back to the reference op).

Nothing here imports torch into Slicer's process: what is installed is read from the
package metadata (``importlib.metadata``), and what the installed torch can do (CUDA)
is asked of a child process (:func:`backend_report`), as detection itself runs there.
The pip-installed library is compared with the one the extension ships, so an
extension update upgrades it (:func:`library_status`).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

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


def package_version(distribution: str) -> Optional[str]:
    """Installed version of a distribution from its metadata (None when absent); imports nothing."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_status() -> Dict[str, Optional[str]]:
    """``{"installed": bool, "version": str|None, "ok": bool}``, read without importing torch.

    When torch is already imported (by another module) its running version is what counts.
    """
    module = sys.modules.get("torch")
    version = getattr(module, "__version__", None) if module is not None else package_version("torch")
    if version is None:
        return {"installed": False, "version": None, "ok": False}
    return {"installed": True, "version": str(version), "ok": _version_tuple(str(version)) >= TORCH_MIN_VERSION}


def shipped_library_version(module_dir: Path) -> Optional[str]:
    """Version of the library source the extension ships (read from its version.py, not imported)."""
    source = library_source_dir(Path(module_dir))
    if source is None:
        return None
    match = re.search(r"""__version__\s*=\s*["']([^"']+)["']""",
                      (source / "LesionDetectorLib" / "version.py").read_text(encoding="utf-8"))
    return match.group(1) if match else None


def library_status(module_dir: Optional[Path] = None) -> Dict[str, Optional[str]]:
    """``{"installed", "shipped", "outdated"}``: the pip-installed library against the extension's.

    ``outdated`` is True when the installed version is older than the shipped one (an
    extension update left the previous library in Slicer's Python).
    """
    installed = package_version("lesion-detector")
    shipped = shipped_library_version(module_dir) if module_dir is not None else None
    outdated = bool(installed and shipped and _full_version_tuple(installed) < _full_version_tuple(shipped))
    return {"installed": installed, "shipped": shipped, "outdated": outdated}


def _full_version_tuple(text: str) -> Tuple[int, ...]:
    return tuple(int("".join(ch for ch in piece if ch.isdigit()) or 0) for piece in text.split("+")[0].split("."))


def library_source_dir(module_dir: Path) -> Optional[Path]:
    """Folder holding LesionDetectorLib's pyproject.toml: the extension's shipped copy
    (``<module dir>/LesionDetectorLibSource``) or, in a source checkout, the repository root."""
    for candidate in (module_dir / "LesionDetectorLibSource", module_dir.parent):
        if (candidate / "pyproject.toml").is_file() and (candidate / "LesionDetectorLib").is_dir():
            return candidate
    return None


def missing_requirements(module_dir: Optional[Path] = None) -> List[str]:
    """What still has to be installed or upgraded (empty list: ready).

    With ``module_dir`` an installed library older than the extension's counts as missing.
    """
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
    elif module_dir is not None:
        lib = library_status(module_dir)
        if lib["outdated"]:
            missing.append(f"LesionDetectorLib {lib['shipped']} (installed: {lib['installed']}, upgrade)")
    return missing


def install_requirements(module_dir: Path, confirm: Callable[[str], bool],
                         log: Callable[[str], None] = print) -> bool:
    """Install what :func:`missing_requirements` lists, after ``confirm(question)`` says yes.

    Returns True when something was installed. Raises :class:`InstallError` when the
    user declines, an installation fails, or an old torch is already imported (restart).
    An upgraded library is used by the next detection (a new process); the panel's own
    imports of it refresh only after a restart, which :func:`restart_recommended` says.
    """
    module_dir = Path(module_dir)
    missing = missing_requirements(module_dir)
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
    lib = library_status(module_dir)
    if importlib.util.find_spec("LesionDetectorLib") is None or lib["outdated"]:
        source = library_source_dir(module_dir)
        if source is None:
            raise InstallError("the LesionDetectorLib sources are missing from this extension; reinstall the "
                               "Lesion Detector extension from the Extensions Manager")
        verb = f"Upgrading LesionDetectorLib {lib['installed']} -> {lib['shipped']}" if lib["outdated"] \
            else "Installing LesionDetectorLib"
        log(f"{verb} from {source} (compiles the roi_align_3d op when a compiler is present)...")
        with build_copy(source) as tree:
            slicer.util.pip_install(f"--no-build-isolation --no-deps --upgrade \"{tree}\"")
    importlib.invalidate_caches()
    still = missing_requirements(module_dir)
    if still:
        raise InstallError("installation finished but these are still missing: " + ", ".join(still)
                           + ". Restart Slicer and try again; if it persists, install them from the Python "
                           "console with slicer.util.pip_install().", restartRequired=True)
    return True


class build_copy:
    """A private copy of the shipped library sources to build from.

    pip builds a source tree in place (``build/``, ``*.egg-info``), and the extension's
    folder may be read-only (a system-wide Slicer) or shared by several Slicer versions.
    """

    def __init__(self, source: Path) -> None:
        self.source = Path(source)
        self.tmp: Optional[Path] = None

    def __enter__(self) -> Path:
        import shutil
        import tempfile

        self.tmp = Path(tempfile.mkdtemp(prefix="LesionDetectorLib-build-"))
        tree = self.tmp / "src"
        shutil.copytree(self.source, tree, ignore=shutil.ignore_patterns(
            "build", "*.egg-info", "__pycache__", "*.pyc", "*.so", "*.pyd"))
        return tree

    def __exit__(self, *exc) -> bool:
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)
        return False


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


def restart_recommended() -> bool:
    """True when this process imported the library before it was upgraded."""
    return "LesionDetectorLib" in sys.modules


def parse_version_report(text: str, returncode: int = 0, stderr: str = "") -> Dict:
    """``lesion-detector --version`` output -> ``{"version_text", "library", "op_backend", "torch",
    "cuda_available"}``."""
    report = {"version_text": text.strip(), "library": None, "op_backend": "unknown", "torch": "unknown",
              "cuda_available": False}
    for line in text.splitlines():
        if line.startswith("roi_align_3d backend:"):
            report["op_backend"] = line.split(":", 1)[1].strip()
        elif line.startswith("torch "):
            report["torch"] = line[len("torch "):].strip()
            report["cuda_available"] = "CUDA available: True" in line
        elif line.startswith("lesion-detector "):
            report["library"] = line.split(" ", 1)[1].strip()
    if returncode != 0 and report["op_backend"] == "unknown":
        report["op_backend"] = f"unknown ({(stderr.strip().splitlines() or ['library failed to start'])[-1]})"
    return report


def backend_report(python: str, timeout: float = 120.0) -> Dict:
    """Ask the library (in a child process, like detection itself) which op backend and
    torch build it uses and whether CUDA works (see :func:`parse_version_report`). Never raises."""
    kwargs = {}
    if os.name == "nt":
        kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
    try:
        out = subprocess.run([python, "-m", "LesionDetectorLib", "--version"], capture_output=True, text=True,
                             encoding="utf-8", errors="replace", timeout=timeout, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"version_text": "", "library": None, "op_backend": f"unknown ({exc})", "torch": "unknown",
                "cuda_available": False}
    return parse_version_report(out.stdout, out.returncode, out.stderr)


class BackendProbe:
    """:func:`backend_report` in a thread, so the GUI stays live for the up to 2 minutes the
    first torch import can take; poll ``done`` / ``report`` from a timer."""

    def __init__(self, python: str, timeout: float = 120.0) -> None:
        self.report: Optional[Dict] = None
        self._thread = threading.Thread(target=self._run, args=(python, timeout), daemon=True)
        self._thread.start()

    def _run(self, python: str, timeout: float) -> None:
        self.report = backend_report(python, timeout)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()


# Measured, not guessed: docs/benchmarks.md ("Detection end to end"), synthetic 512x512 CT,
# bundled model, 2 CPU cores (AVX2): 37 s per scan on average (14-61 s), peak RSS 1.7 GiB.
CPU_SECONDS_PER_SCAN_2_CORES = (14.0, 37.0, 61.0)
CPU_PEAK_MEMORY_GIB = 1.7


def hardware_advice(report: Dict, cpu_count: Optional[int] = None) -> Dict:
    """What this machine can use and what a scan will cost: ``{"devices", "text"}``.

    ``devices`` are the library device names worth offering (``cuda`` only when the
    installed torch has a working CUDA); ``text`` says so in one paragraph.
    """
    cores = cpu_count or os.cpu_count() or 1
    devices = ["auto", "cpu"] + (["cuda"] if report.get("cuda_available") else [])
    low, mean, high = CPU_SECONDS_PER_SCAN_2_CORES
    # the network is compute-bound on CPU: time scales roughly with 2 / cores (not measured beyond 2)
    scale = 2.0 / max(min(cores, 16), 1)
    cpu_text = (f"CPU ({cores} cores): about {mean * scale:.0f} s per chest CT ({low * scale:.0f}-{high * scale:.0f} s), "
                f"peak memory about {CPU_PEAK_MEMORY_GIB:.1f} GiB (measured on 2 cores with synthetic CT and "
                "scaled by core count)")
    if report.get("cuda_available"):
        gpu_text = "GPU: PyTorch sees a CUDA device and 'auto' uses it (GPU time not measured yet)."
    else:
        gpu_text = (f"GPU: not available to the installed PyTorch ({report.get('torch', 'unknown')}); for a GPU "
                    "install the CUDA build with the PyTorch Utils module.")
    return {"devices": devices, "text": f"{cpu_text}. {gpu_text} roi_align_3d: {report.get('op_backend', 'unknown')}."}


def dicom_sr_support(slicer_version: Tuple[int, int]) -> Tuple[bool, str]:
    """Whether DICOM SR export can run in this Slicer, and why not.

    The SR writer needs highdicom. Slicer bundles it from 5.12; installing it into an
    older Slicer pulls pydicom 3 over the pydicom 2.4 that Slicer's DICOM module is
    built on, so the module does not offer that and disables SR export there.
    """
    if importlib.util.find_spec("highdicom") is not None:
        return True, ""
    if tuple(slicer_version) < (5, 12):
        return False, (f"DICOM SR export needs highdicom, which Slicer bundles from version 5.12 (this is "
                       f"{slicer_version[0]}.{slicer_version[1]}); installing it here would replace Slicer's "
                       "pydicom 2.4 with pydicom 3. Export findings JSON, or write the SR with "
                       "'lesion-detector detect --format sr' outside Slicer.")
    return False, "DICOM SR export needs highdicom, which this Slicer does not have; reinstall Slicer 5.12 or later."
