"""Benchmark: ``Detector`` end to end on a LUNA16-size synthetic scan, per stage, with peak memory.

    python benchmarks/bench_detect.py [--model DIR_OR_NAME] [--device cpu] [--slices 300]
    python benchmarks/bench_detect.py --model luna16-synthetic --scan SERIES_FOLDER_OR_FILE

Without ``--model`` a randomly initialised ``luna16`` network is used: speed and memory
do not depend on the weights. The scan is a chest phantom of 512 x 512 x ``--slices``
voxels at 0.7 x 0.7 x 1.25 mm (float32 HU, ~300 MiB). Prints Markdown for
``docs/benchmarks.md``: seconds per stage, tiles, and peak resident memory of the process
(``resource.getrusage``, which includes the scan itself) plus the tracemalloc peak of
Python-level allocations. ``--scan`` times a real scan instead (DICOM series folder or any file
``read_volume`` takes), its reading included (stage ``read``).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch


def chest_scan(slices: int, seed: int = 0):
    """Body, two lungs, a 10 mm nodule; built slice by slice to keep the generator's own memory small."""
    from LesionDetectorLib.volume import Volume

    spacing = np.array([0.7, 0.7, 1.25])
    nz, ny, nx = slices, 512, 512
    origin = -np.array([(nx - 1) * spacing[0] / 2, (ny - 1) * spacing[1] / 2, (nz - 1) * spacing[2] / 2])
    y, x = np.meshgrid(origin[1] + np.arange(ny) * spacing[1], origin[0] + np.arange(nx) * spacing[0], indexing="ij")
    rng = np.random.default_rng(seed)
    hu = np.empty((nz, ny, nx), dtype=np.float32)
    body = (x / 160.0) ** 2 + (y / 120.0) ** 2 <= 1.0
    nodule = np.array([-70.0, 10.0, 20.0])
    for k in range(nz):
        z = origin[2] + k * spacing[2]
        sl = np.where(body, 40.0, -1000.0).astype(np.float32)
        for cx in (-75.0, 75.0):
            sl[((x - cx) / 60.0) ** 2 + (y / 85.0) ** 2 + (z / 150.0) ** 2 <= 1.0] = -850.0
        sl[(x - nodule[0]) ** 2 + (y - nodule[1]) ** 2 + (z - nodule[2]) ** 2 <= 25.0] = 30.0
        hu[k] = sl + rng.normal(0, 20, size=sl.shape).astype(np.float32)
    return Volume(hu, spacing, origin, np.eye(3), {"SeriesInstanceUID": "bench.1"})


def _cpu_model() -> str:
    """The CPU model and its bf16 support (the choice of precision depends on it)."""
    from LesionDetectorLib.inference.engine import cpu_has_native_bf16, cpu_model_name

    return f"{cpu_model_name()}, native bf16: {'yes' if cpu_has_native_bf16() else 'no'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory or bundled name (default: random luna16 weights)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--scan", type=Path, default=None,
                        help="a real scan to time instead of the phantom (its reading is timed too)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="auto: bf16 on CPUs with AMX/AVX512-BF16, fp16 on CUDA, else fp32")
    parser.add_argument("--tile", type=int, default=None, help="inference tile (default: the card's)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="detect N times, report the last (cuDNN autotuning and lazy CUDA loading happen "
                             "in the first call; earlier totals are printed too)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from LesionDetectorLib.inference import Detector
    from LesionDetectorLib.model import ModelConfig, build_model, save_pretrained

    t0 = time.perf_counter()
    volume = str(args.scan) if args.scan is not None else chest_scan(args.slices)
    t_gen = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            torch.manual_seed(0)
            save_pretrained(build_model(ModelConfig.preset("luna16")), Path(tmp) / "m",
                            {"name": "luna16-random", "version": "bench"})
            model_dir = Path(tmp) / "m"
        detector = Detector.from_pretrained(model_dir, device=args.device, precision=args.precision, tile=args.tile)
        first_totals = [detector(volume).timings_s["total"] for _ in range(max(args.repeat, 1) - 1)]
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        tracemalloc.start()
        findings = detector(volume)
        _, py_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    t = findings.timings_s
    prov = findings.provenance
    cpu = f"{os.cpu_count()} CPUs ({_cpu_model()})"
    print(f"### Detection end to end ({findings.model['name']}, {prov['device']}, {cpu}, torch {prov['torch_version']})")
    print()
    what = (f"Scan {args.scan} ({' x '.join(map(str, findings.volume.get('shape_zyx', [])))} voxels [z, y, x], read by the Detector)"
            if args.scan is not None else
            f"Scan 512 x 512 x {args.slices} at 0.7 x 0.7 x 1.25 mm (generated in {t_gen:.1f} s, not timed)")
    print(f"{what}; "
          f"{prov['n_tiles']} tiles of {'x'.join(map(str, prov['tile']))}, overlap {prov['overlap']}; "
          f"{prov.get('n_tiles_planned', prov['n_tiles']) - prov['n_tiles']} empty tiles skipped; "
          f"precision {prov.get('precision')}; op backend: {prov['op_backend']}.")
    if first_totals:
        print(f"Run {len(first_totals) + 1} of {len(first_totals) + 1} shown; earlier totals: "
              f"{', '.join(f'{v:.2f} s' for v in first_totals)}.")
    print()
    print("| stage | seconds |")
    print("|---|---:|")
    for stage in (("read",) if args.scan is not None else ()) + ("preprocess", "model", "postprocess", "total"):
        print(f"| {stage} | {t[stage]:.2f} |")
    print()
    print(f"| memory | MiB |\n|---|---:|\n| peak RSS before detection (scan + model) | {rss_before:.0f} |\n"
          f"| peak RSS of the process | {rss_peak:.0f} |\n| tracemalloc peak (Python allocations) | {py_peak / 2**20:.0f} |")
    print()
    print(f"{len(findings)} candidates; patient flag: {findings.patient_flag['status']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
