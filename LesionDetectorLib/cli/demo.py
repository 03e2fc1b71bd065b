"""``lesion-detector demo``: the whole product on a freshly generated synthetic chest CT.

Generates a seeded scan (full size by default) (:func:`LesionDetectorLib.data.synthetic.generate_scan`),
writes it as a DICOM series (so it opens in Slicer or any PACS viewer and the DICOM SR has
instances to reference), runs the bundled model, writes every export and compares the
findings with the scan's truth: a true nodule is *hit* when a candidate centre lies within
its radius (the LUNA16 rule), reported with that candidate's rank and score.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np

from ..batch import BatchOptions, ScanBatchRunner, EventSink, ScanInput, check_output_folder, parse_formats, sr_available
from . import detect as detect_cli
from .options import add_device, add_model, add_progress, output_folder

DEFAULT_OUT = "lesion-detector-demo"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="run the bundled model on a generated synthetic CT and write every export",
        description="Generate a small synthetic chest CT with known nodules, detect, export (Slicer markups, "
                    "LUNA16 CSV, findings JSON, DICOM SR) and compare the findings with the truth.")
    p.add_argument("--out", type=output_folder, default=Path(DEFAULT_OUT),
                   help=f"output folder (default ./{DEFAULT_OUT})")
    add_model(p)
    p.add_argument("--seed", type=int, default=2, help="seed of the synthetic scan (default 2: three nodules)")
    add_device(p)
    add_progress(p, modes=("bar", "none"))
    p.add_argument("--no-characterize", action="store_true",
                   help="skip nodule characterization (size, type, Lung-RADS) of the top candidates")
    p.add_argument("--size", default="full", choices=("full", "small"),
                   help="full: a LUNA16-like 512x512 scan (default; minutes on a CPU); small: a coarse "
                        "~2 mm scan that runs in seconds but is below the resolution the model was trained on")
    p.add_argument("--no-confusers", action="store_true",
                   help="generate the scan without the look-alikes of real chest CT (fissures, end-on vessels, "
                        "plaques, ribs by the pleura, granulomas), as the bundled model's training scans were")
    p.set_defaults(func=run)


def truth_table(findings, nodules, threshold) -> List[str]:
    """One line per true nodule: hit (rank, score, distance) or miss."""
    lines = []
    centres = np.array([c.center_lps for c in findings.candidates]).reshape(-1, 3)
    for k, n in enumerate(nodules, start=1):
        where = ", ".join(f"{v:.1f}" for v in n.center_lps)
        dist = np.linalg.norm(centres - np.asarray(n.center_lps), axis=1) if len(centres) else np.zeros(0)
        hits = np.flatnonzero(dist <= n.diameter_mm / 2.0)
        if len(hits):
            c = findings.candidates[int(hits[0])]  # candidates are ranked: the first hit scores highest
            above = "" if threshold is None else (" (above operating point)" if c.score >= threshold
                                                  else " (below operating point)")
            lines.append(f"  nodule {k}: {n.diameter_mm:.1f} mm {n.category} at ({where}) -> HIT by {c.id}, "
                         f"score {c.score:.3f}{above}, {dist[hits[0]]:.1f} mm from the centre")
        else:
            lines.append(f"  nodule {k}: {n.diameter_mm:.1f} mm {n.category} at ({where}) -> MISS")
    return lines


def run(args) -> int:
    from ..data.synthetic import generate_scan
    from ..io.ct_series import write_ct_series

    out: Path = check_output_folder(args.out)
    sink = EventSink(args.progress)
    steps = () if args.no_characterize else (detect_cli.characterization_step,)
    runner = ScanBatchRunner(out, BatchOptions(formats=parse_formats("auto"), overwrite=True), sink=sink,
                             detector_factory=lambda: detect_cli.load_detector(args.model, args.device),
                             post_detection=steps)
    runner.load_detector()
    sink.message(f"generating synthetic CT (seed {args.seed}) ...")
    scan = generate_scan(args.seed, 0, size=args.size, confusers=not getattr(args, "no_confusers", False))
    series_dir = out / f"synthetic_ct_seed{args.seed}_{args.size}_dicom"
    if not series_dir.exists():
        write_ct_series(scan.to_volume(), series_dir, series_uid=scan.series_uid,
                        series_description=f"LesionDetector synthetic CT seed {args.seed}")
    result = runner.detect(ScanInput.from_path(series_dir), out / "results")
    findings, written = result.findings, result.written
    for text in result.warnings:
        sink.warning(text)
    sink.close_bar()
    truth = scan.annotations
    lines = [findings.summary_table(), "", f"Truth ({len(truth)} LUNA16-rule nodules, "
                                           f"{len(scan.excluded)} excluded findings):"]
    lines += truth_table(findings, truth, findings.patient_flag.get("threshold")) or ["  no nodules: a negative "
                                                                                      "patient"]
    hits = sum(" HIT " in line for line in lines)
    lines += [f"  {hits}/{len(truth)} nodules hit by {len(findings)} candidates", "",
              f"CT (DICOM series, open it in Slicer): {series_dir}"]
    lines += [f"{fmt:>9}: {path}" for fmt, path in written.items()]
    if not sr_available():
        lines.append("       sr: not written (install the 'dicom' extra: pip install 'lesion-detector[dicom]')")
    sink.message("\n".join(lines))
    return 0
