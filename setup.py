"""Build hooks: the compiled roi_align_3d op and the bundled resources.

The C++ (and, with a CUDA toolkit, CUDA) op is built against the torch that is
already installed, so install with ``pip install --no-build-isolation .``.
A failed build never fails the install: the library falls back to a JIT build
and then to the pure-PyTorch reference, and says which it uses.

Environment: ``USE_CUDA=0`` skips CUDA even when a toolkit is present,
``LESION_DETECTOR_NO_EXT=1`` skips the compiled op, ``DEBUG=1`` builds -O0 -g.
"""
import glob
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
CSRC = Path("LesionDetectorLib") / "csrc"


class BuildPyWithResources(build_py):
    """Copy the top-level Resources/ (weights, model cards, LIDC shapes) into the wheel."""

    def run(self):
        super().run()
        src = ROOT / "Resources"
        dst = Path(self.build_lib) / "LesionDetectorLib" / "_resources"
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)


def _extensions():
    if os.environ.get("LESION_DETECTOR_NO_EXT") == "1":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("lesion-detector: torch not importable at build time; the op will be JIT-built or use the reference", file=sys.stderr)
        return [], {}

    sources = sorted(glob.glob(str(CSRC / "ops" / "*.cpp")) + glob.glob(str(CSRC / "ops" / "cpu" / "*.cpp")))
    if not sources:
        return [], {}
    debug = os.environ.get("DEBUG") == "1"
    extra = {"cxx": ["-O0", "-g"] if debug else ["-O3", "-fopenmp"]}
    use_cuda = (
        os.environ.get("USE_CUDA", "1") != "0"
        and cpp_extension.CUDA_HOME is not None
        and torch.version.cuda is not None
    )
    ext_cls = cpp_extension.CppExtension
    if use_cuda:
        sources += sorted(glob.glob(str(CSRC / "ops" / "cuda" / "*.cu")))
        extra["nvcc"] = ["-O0", "-g"] if debug else ["-O3", "--use_fast_math"]
        ext_cls = cpp_extension.CUDAExtension
    ext = ext_cls(
        "LesionDetectorLib._C",
        sources,
        include_dirs=[str(ROOT / CSRC)],
        extra_compile_args=extra,
        extra_link_args=[] if debug else ["-fopenmp"],
        define_macros=[("WITH_CUDA", None)] if use_cuda else [],
        py_limited_api=False,
        optional=True,  # a compiler failure must not fail `pip install`
    )

    class BuildExt(cpp_extension.BuildExtension):
        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:  # noqa: BLE001 - reported, then the fallbacks take over
                print(f"lesion-detector: compiled op build failed ({exc}); "
                      "the JIT build or the reference implementation will be used", file=sys.stderr)

    return [ext], {"build_ext": BuildExt.with_options(no_python_abi_suffix=False)}


def _license_metadata():
    """Apache-2.0 in the form the running setuptools accepts.

    setuptools >= 77 writes a PEP 639 ``License-Expression``; 68.2.2 and 70.0.0 (the
    versions Slicer 5.6 and 5.8 bundle, which build the library with
    ``--no-build-isolation``) reject the SPDX string in pyproject.toml and take the
    classic ``license`` field instead.
    """
    import setuptools

    major = int(setuptools.__version__.split(".")[0])
    key = "license_expression" if major >= 77 else "license"
    return {key: "Apache-2.0", "license_files": ["LICENSE"]}


ext_modules, ext_cmdclass = _extensions()
setup(**_license_metadata(), ext_modules=ext_modules, cmdclass={"build_py": BuildPyWithResources, **ext_cmdclass})
