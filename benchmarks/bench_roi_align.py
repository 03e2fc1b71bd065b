"""Speed of roi_align_3d at the FPRN's shapes: compiled kernels vs the pure-PyTorch reference.

Cases (paper, Table I; 128^3 crop, 32-channel pyramid at strides 4/8/16):
  * pyramid: the op on one feature level, input [1, 32, S, S, S] with S = 32, 16, 8 and
    K proposals of nodule size (4-32 voxels of the crop), spatial_scale = 1 / stride;
  * magnified: the op on Local-Magnification outputs, 5^3 crops magnified x4 -> input
    [K, 32, 20, 20, 20], one RoI per crop (N = K);
each with output 2x2x2 (the paper) and 7x7x7, forward + backward (gradient to the input).

Prints a Markdown table (machine, date, command) for docs/benchmarks.md. On CUDA it also
prints the effective bandwidth (bytes of input read + output written, forward; grad read +
grad input written, backward) per second.

    python benchmarks/bench_roi_align.py                 # CPU (and CUDA when present)
    python benchmarks/bench_roi_align.py --quick         # fewer cases, for a smoke run
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time

import torch

from LesionDetectorLib.ops import backend_info, roi_align_3d_reference
from LesionDetectorLib.ops import _loader

CROP = 128
CHANNELS = 32


def _proposals(n_rois: int, n_images: int, crop: int, gen: torch.Generator) -> torch.Tensor:
    """[K, 7] cubic boxes of 4-32 voxels centred anywhere in the crop, in crop voxels."""
    diameter = 4 + torch.rand(n_rois, 1, generator=gen) * 28
    centre = torch.rand(n_rois, 3, generator=gen) * crop
    batch = torch.randint(0, n_images, (n_rois, 1), generator=gen).float()
    return torch.cat([batch, centre - diameter / 2, centre + diameter / 2], dim=1)


def _cases(quick: bool):
    gen = torch.Generator().manual_seed(0)
    for n_rois in ((64,) if quick else (64, 512)):
        for output in ((2, 7) if not quick else (2,)):
            for stride in (4, 8, 16):
                size = CROP // stride
                feats = torch.randn(1, CHANNELS, size, size, size, generator=gen)
                rois = _proposals(n_rois, 1, CROP, gen)
                yield f"pyramid stride {stride}", feats, rois, output, 1.0 / stride
            crops = torch.randn(n_rois, CHANNELS, 20, 20, 20, generator=gen)
            rois = torch.cat([torch.arange(n_rois).float()[:, None], torch.zeros(n_rois, 3), torch.full((n_rois, 3), 20.0)], 1)
            yield "magnified 20^3", crops, rois, output, 1.0


def _time(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of fn() over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _fwd_bwd(op, feats, rois, output, scale):
    def run():
        x = feats.detach().requires_grad_()
        out = op(x, rois, output, scale)
        out.backward(torch.ones_like(out))
        return out

    return run


def _compiled(x, rois, output, scale):
    return torch.ops.lesion_detector.roi_align_3d(x, rois, scale, output, output, output, -1, True)


def _reference(x, rois, output, scale):
    return roi_align_3d_reference(x, rois, (output,) * 3, scale, -1, True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", action="append", help="cpu and/or cuda (default: cpu, plus cuda if present)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="K = 64 and output 2^3 only")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))

    print("# roi_align_3d: compiled vs reference (forward + backward)\n")
    print(f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"- command: `python {' '.join(sys.argv)}`")
    print(f"- machine: {platform.node()} {platform.machine()} {platform.processor() or ''}, "
          f"{torch.get_num_threads()} torch CPU threads, Python {platform.python_version()}, torch {torch.__version__}")
    for dev in devices:
        name = torch.cuda.get_device_name(0) if dev == "cuda" else "CPU"
        print(f"- {dev}: {name}; backend: {backend_info(dev)}")
    print(f"- repeats: median of {args.repeats} after one warm-up; adaptive sampling (sampling_ratio=-1), aligned\n")

    header = "| device | case | K | input | output | compiled ms | reference ms | speed-up |"
    rule = "|---|---|---|---|---|---|---|---|"
    if "cuda" in devices:
        header += " compiled GB/s |"
        rule += "---|"
    print(header)
    print(rule)
    ratios = {}
    for dev in devices:
        device = torch.device(dev)
        have_compiled = _loader.use_compiled(device.type)
        for case, feats, rois, output, scale in _cases(args.quick):
            feats, rois = feats.to(device), rois.to(device)
            ref_s = _time(_fwd_bwd(_reference, feats, rois, output, scale), device, args.repeats)
            cells = [dev, case, str(rois.shape[0]), "x".join(map(str, feats.shape)), f"{output}^3"]
            if have_compiled:
                comp_s = _time(_fwd_bwd(_compiled, feats, rois, output, scale), device, args.repeats)
                ratios.setdefault(dev, []).append(ref_s / comp_s)
                cells += [f"{comp_s * 1e3:.2f}", f"{ref_s * 1e3:.2f}", f"{ref_s / comp_s:.1f}x"]
            else:
                cells += ["n/a", f"{ref_s * 1e3:.2f}", "n/a"]
            if "cuda" in devices:
                if dev == "cuda" and have_compiled:
                    out_bytes = rois.shape[0] * feats.shape[1] * output ** 3 * feats.element_size()
                    # forward reads input + writes output; backward reads grad + writes grad input
                    moved = 2 * (feats.numel() * feats.element_size() + out_bytes)
                    cells.append(f"{moved / comp_s / 1e9:.1f}")
                else:
                    cells.append("")
            print("| " + " | ".join(cells) + " |")
    for dev, values in ratios.items():
        geo = statistics.geometric_mean(values)
        print(f"\n{dev}: geometric-mean speed-up {geo:.1f}x (min {min(values):.1f}x, max {max(values):.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
