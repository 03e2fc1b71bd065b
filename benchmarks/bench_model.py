"""Model speed and size: forward time per crop, training-step time, parameter count, peak memory.

    python benchmarks/bench_model.py [--preset luna16] [--crop 128] [--repeats 3] [--device cpu cuda]
        [--layout channels_last contiguous]

Prints a Markdown table (for docs/benchmarks.md). CPU peak memory is the process's peak RSS
(ru_maxrss, includes everything loaded so far); CUDA peak memory is
``torch.cuda.max_memory_allocated``.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from typing import Optional

import torch

from LesionDetectorLib.inference.device import memory_format_for
from LesionDetectorLib.model import ModelConfig, build_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(preset: str, crop: int, device: torch.device, repeats: int, layout: Optional[str]) -> dict:
    torch.manual_seed(0)
    if layout is None:              # what the library uses on this device
        fmt = memory_format_for(device)
        layout = "channels_last" if fmt == torch.channels_last_3d else "contiguous"
    else:
        fmt = torch.channels_last_3d if layout == "channels_last" else torch.contiguous_format
    config = ModelConfig.preset(preset, crop_size=(crop,) * 3)
    model = build_model(config).to(device=device, memory_format=fmt)
    x = torch.rand(1, 1, crop, crop, crop, device=device).contiguous(memory_format=fmt)
    targets = [torch.tensor([[crop / 2, crop / 2 - 7, crop / 2 + 5, 10.0]], device=device)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.eval()
    with torch.inference_mode():
        model(x)                                    # warm-up (kernels, anchor cache)
        _sync(device)
        t = time.perf_counter()
        for _ in range(repeats):
            model(x)
        _sync(device)
    fwd = (time.perf_counter() - t) / repeats
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    steps = []
    for i in range(repeats + 1):
        _sync(device)
        t = time.perf_counter()
        loss = sum(model(x, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        _sync(device)
        if i:
            steps.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"preset": preset, "crop": crop, "layout": layout, "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            "threads": torch.get_num_threads(), "params": sum(p.numel() for p in model.parameters()),
            "forward_s": fwd, "train_step_s": sum(steps) / len(steps), "peak_mib": peak}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="luna16")
    p.add_argument("--crop", type=int, nargs="+", default=[128])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    p.add_argument("--layout", nargs="+", choices=["channels_last", "contiguous"], default=[None],
                   help="memory layout of weights and input (default: the library's, channels_last on CPU, "
                        "contiguous on CUDA)")
    args = p.parse_args(argv)
    rows = [bench(args.preset, c, torch.device(d), args.repeats, lay)
            for d in args.device for c in args.crop for lay in args.layout]
    print("| preset | crop | layout | device | threads | parameters | forward / crop (s) | train step (s) "
          "| peak memory (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['crop']}^3 | {r['layout']} | {r['device']} | {r['threads']} | {r['params']:,} | "
              f"{r['forward_s']:.3f} | {r['train_step_s']:.3f} | {r['peak_mib']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
