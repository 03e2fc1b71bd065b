"""``lesion-detector compare``: a current scan against a prior one (follow-up reading).

``--prior`` and ``--current`` take anything ``detect`` takes (a DICOM series folder, .mhd,
.nrrd, .nii[.gz]) or a ``detect`` output folder (one holding ``findings.json``, whose
``volume.source`` names the scan). Existing findings are reused (``--prior-findings`` /
``--current-findings``, or the output folder's); otherwise the detector runs and its findings
are written to ``OUT/prior_findings.json`` / ``OUT/current_findings.json``. Then the lungs are
registered, findings measured (characterization), paired and categorised, and
``OUT/comparison.md`` and ``OUT/comparison.json`` are written (the JSON last; both atomic).
Bad input: one stderr line, exit code 2, nothing written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Tuple

from ..errors import VolumeError

FINDINGS_FILE = "findings.json"


def _positive_days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--interval-days must be a number of days, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"--interval-days must be > 0, got {text!r}")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="compare a current CT with a prior one: matched findings, growth, VDT, Lung-RADS",
        description="Follow-up reading: register the prior scan's lungs onto the current scan's, pair the findings, "
                    "and report new / resolved / stable / grown / shrunk nodules with diameter and volume change, "
                    "volume-doubling time and Lung-RADS v2022 with comparison.")
    p.add_argument("--prior", required=True, help="prior scan (DICOM folder, .mhd, .nrrd, .nii[.gz]) or a "
                                                  "'detect' output folder holding findings.json")
    p.add_argument("--current", required=True, help="current scan, or a 'detect' output folder")
    p.add_argument("--out", required=True, type=Path, help="output folder for comparison.json and comparison.md")
    p.add_argument("--interval-days", type=_positive_days, default=None,
                   help="days between the scans (default: from the DICOM StudyDates)")
    p.add_argument("--prior-findings", type=Path, help="findings.json of the prior scan (skips its detection)")
    p.add_argument("--current-findings", type=Path, help="findings.json of the current scan (skips its detection)")
    p.add_argument("--model", default="luna16-synthetic", help="model for scans without findings")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--min-score", type=float, default=None,
                   help="compare candidates down to this score (default: each findings' operating-point threshold)")
    p.add_argument("--bspline", action="store_true", help="add a B-spline stage to the lung registration")
    p.add_argument("--overwrite", action="store_true", help="replace an existing comparison in --out")
    p.set_defaults(func=run)


def _input(arg: str, findings_arg: Optional[Path], label: str) -> Tuple[Path, Optional[Path]]:
    """``(scan path, findings path or None)`` for ``--prior`` / ``--current``.

    A folder holding ``findings.json`` is a ``detect`` output folder (checked first: its DICOM SR
    would otherwise make it look like a DICOM series); anything else must be one scan, found by
    the same rules as ``detect``'s inputs.
    """
    from ..batch import expand_inputs

    findings = findings_arg
    if findings is not None and not findings.is_file():
        raise VolumeError(f"--{label}-findings '{findings}' is not a file")
    path = Path(arg)
    if path.is_dir() and (path / FINDINGS_FILE).is_file():
        findings = findings or path / FINDINGS_FILE
        from ..export import read_findings_json

        source = read_findings_json(findings).volume.get("source")
        if not source or not Path(source).exists():
            raise VolumeError(f"the {label} folder '{arg}' holds findings.json, but the scan it names "
                              f"({source!r}) is not there; give the scan and --{label}-findings")
        return Path(source), findings
    scans, problems, _ = expand_inputs([arg])
    if problems:
        why = problems[0][1]          # "does not exist", "is a FIFO ...", "the folder holds no ..."
        raise VolumeError(f"--{label} '{arg}': {why}" if why.startswith("the ") else f"the {label} path '{arg}' {why}")
    if len(scans) != 1:
        raise VolumeError(f"--{label} '{arg}' holds {len(scans)} scans; give one scan (file or DICOM series folder)")
    return scans[0], findings


def run(args) -> int:
    from ..export import read_findings_json, write_findings_json
    from ..followup.comparison import compare, write_comparison
    from ..io import read_volume

    out: Path = args.out
    if (out / "comparison.json").exists() and not args.overwrite:
        raise VolumeError(f"'{out / 'comparison.json'}' exists already; use --overwrite to replace it")
    prior_path, prior_findings_path = _input(args.prior, args.prior_findings, "prior")
    current_path, current_findings_path = _input(args.current, args.current_findings, "current")
    prior = read_volume(prior_path)
    current = read_volume(current_path)
    findings = {}
    detector = None
    written = []
    for label, volume, path in (("prior", prior, prior_findings_path), ("current", current, current_findings_path)):
        if path is not None:
            findings[label] = read_findings_json(path)
            continue
        if detector is None:
            from ..inference import Detector

            detector = Detector.from_pretrained(args.model, device=args.device)
        print(f"detecting on the {label} scan ({volume.metadata.get('source')}) ...", file=sys.stderr)
        findings[label] = detector(volume)
    doc = compare(prior, current, findings["prior"], findings["current"], interval_days=args.interval_days,
                  bspline=args.bspline, min_score=args.min_score)
    # Every check has passed: only now does anything go to disk.
    for label in ("prior", "current"):
        if (label == "prior" and prior_findings_path is None) or (label == "current" and current_findings_path is None):
            written.append(write_findings_json(findings[label], out / f"{label}_findings.json"))
    paths = write_comparison(doc, out)
    from ..followup.comparison import summary_markdown

    print(summary_markdown(doc))
    print("written: " + ", ".join(str(p) for p in [*written, paths["md"], paths["json"]]))
    return 0
