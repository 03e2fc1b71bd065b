"""``lesion-detector compare``: a current scan against a prior one (follow-up reading).

``--prior`` and ``--current`` take anything ``detect`` takes (a DICOM series folder, .mhd,
.nrrd, .nii[.gz]) or a ``detect`` output folder (one holding ``findings.json``, whose
``volume.source`` names the scan). Existing findings are reused (``--prior-findings`` /
``--current-findings``, or the output folder's); otherwise the detector runs and its findings
are written to ``OUT/prior_findings.json`` / ``OUT/current_findings.json``. Then the lungs are
registered, findings measured (characterization), paired and categorised, and
``OUT/comparison.md`` and ``OUT/comparison.json`` are written (the JSON last; both atomic).
Bad input: one stderr line, exit code 2, nothing written.

``--progress jsonl`` prints the event protocol of ``docs/architecture.md`` on stdout (what the
Slicer module reads): ``progress`` events name the stage (``read``, ``detect prior``, ``detect
current``, ``register``, ``characterize``, ``match``) with the run's overall ``fraction``, and
the run ends with one ``done`` event naming ``comparison.json`` (or one ``error`` event).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..batch import EventSink
from ..errors import VolumeError
from .options import (add_device, add_model, add_progress, positive_number, probability, progress_mode,
                      run_with_progress)

FINDINGS_FILE = "findings.json"

#: Share of a comparison's time per stage (measured order of magnitude on a CPU: detection
#: dominates); stages that do not run (findings given) are left out and the rest rescaled.
STAGE_WEIGHTS = {"read": 0.04, "detect prior": 0.33, "detect current": 0.33, "register": 0.15,
                 "characterize": 0.13, "match": 0.02}
#: Where each step of one detection lies within its stage (the model's tiles take most of it).
DETECTION_STEPS = {"read": (0.0, 0.02), "preprocess": (0.02, 0.1), "model": (0.1, 0.95), "postprocess": (0.95, 1.0)}


class ComparisonProgress(EventSink):
    """``detect``'s :class:`~LesionDetectorLib.batch.EventSink` (bar / jsonl / none) for the stages
    of a comparison: each progress event also carries ``fraction`` (0-1, the whole run) and,
    inside a detection, the detector's ``step`` (``model`` ...)."""

    def __init__(self, mode: str, stream=None) -> None:
        super().__init__(mode, stream)
        self._span: Dict[str, Tuple[float, float]] = {}
        self.stage: Optional[str] = None
        self.step: Optional[str] = None
        self.fraction = 0.0

    def plan(self, stages: Sequence[str]) -> None:
        """The stages that will run, in order (each gets its share of :data:`STAGE_WEIGHTS`)."""
        total = sum(STAGE_WEIGHTS[s] for s in stages)
        start = 0.0
        for s in stages:
            self._span[s] = (start / total, (start + STAGE_WEIGHTS[s]) / total)
            start += STAGE_WEIGHTS[s]

    def report(self, stage: str, done: int, total: int, step: Optional[str] = None) -> None:
        lo, hi = self._span[stage]
        within = done / total if total else 0.0
        if step is not None:
            a, b = DETECTION_STEPS.get(step, (0.0, 1.0))
            within = a + (b - a) * within
        self.stage, self.step = stage, step
        self.fraction = max(self.fraction, lo + (hi - lo) * min(max(within, 0.0), 1.0))  # never backwards
        # The bar gets one line per stage and step (its total is the step's), the protocol the stage.
        super().progress(stage if step is None else f"{stage} ({step})", done, total)

    def detection_callback(self, stage: str):
        """A ``progress(step, done, total)`` callback for the detector running in ``stage``."""
        return lambda step, done, total: self.report(stage, done, total, step)

    def emit(self, event: Dict) -> None:
        if event.get("event") == "progress" and self.stage is not None:
            event = dict(event, stage=self.stage, fraction=round(self.fraction, 4))
            if self.step is not None:
                event["step"] = self.step
        super().emit(event)


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
    p.add_argument("--interval-days", type=positive_number, default=None,
                   help="days between the scans (default: from the DICOM StudyDates)")
    p.add_argument("--prior-findings", type=Path, help="findings.json of the prior scan (skips its detection)")
    p.add_argument("--current-findings", type=Path, help="findings.json of the current scan (skips its detection)")
    add_model(p, "model for scans without findings")
    add_device(p)
    add_progress(p, default=None)
    p.add_argument("--min-score", type=probability, default=None,
                   help="compare candidates down to this score in [0, 1] (default: each findings' operating-point threshold)")
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
    args.progress = progress_mode(args)
    sink = ComparisonProgress(args.progress)

    def work() -> int:
        if (args.out / "comparison.json").exists() and not args.overwrite:
            raise VolumeError(f"'{args.out / 'comparison.json'}' exists already; use --overwrite to replace it")
        inputs = {label: _input(arg, given, label) for label, arg, given in
                  (("prior", args.prior, args.prior_findings), ("current", args.current, args.current_findings))}
        sink.plan(["read"] + [f"detect {label}" for label, (_, given) in inputs.items() if given is None]
                  + ["register", "characterize", "match"])
        return _compare(args, sink, inputs)
    return run_with_progress(sink, work)


def measure_compared(volume, findings, min_score: Optional[float], sink: ComparisonProgress,
                     done: int, total: int) -> int:
    """Characterize, in place, the candidates the comparison will use that have no size yet.

    The selection is the comparison's (not rejected; accepted, or at/above ``min_score`` /
    the operating point; no cap); sizes already there (``detect``'s, a reader's edited mask)
    are kept. One candidate at a time, so progress counts nodules. Returns ``done``.
    """
    from ..characterization import characterize_with_masks, exam_lung_rads

    by_id = {c.id: c for c in findings.candidates}
    for cid in unmeasured_ids(findings, min_score):
        out, _ = characterize_with_masks(volume, findings, None, candidate_ids=[cid])
        by_id[cid].characterization = next(c for c in out.candidates if c.id == cid).characterization
        done += 1
        sink.report("characterize", done, total)
    findings.lung_rads = exam_lung_rads(findings)
    return done


def unmeasured_ids(findings, min_score: Optional[float]) -> List[str]:
    from ..characterization import selected_for_characterization

    return [c.id for c in selected_for_characterization(findings, min_score, max_unreviewed=None)
            if not (c.characterization or {}).get("mean_diameter_mm")]


def _compare(args, sink: ComparisonProgress, inputs) -> int:
    from ..export import read_findings_json, write_findings_json
    from ..followup.comparison import (check_findings_match, compare, resolve_interval, summary_markdown,
                                       write_comparison)
    from ..followup.registration import register_lungs
    from ..io import read_volume

    out: Path = args.out
    volumes, findings = {}, {}
    for i, (label, (path, findings_path)) in enumerate(inputs.items()):
        sink.report("read", i, 2)
        volumes[label] = read_volume(path)
        if findings_path is not None:
            findings[label] = read_findings_json(findings_path)
            check_findings_match(findings[label], volumes[label], label)
    sink.report("read", 2, 2)
    # Swapped or equal StudyDates are refused now, not after minutes of detection.
    resolve_interval(volumes["prior"], volumes["current"], args.interval_days)
    detector = None
    for label in ("prior", "current"):
        if label in findings:
            continue
        if detector is None:
            from .detect import load_detector

            detector = load_detector(args.model, args.device)
        sink.message(f"detecting on the {label} scan ({volumes[label].metadata.get('source')}) ...")
        findings[label] = detector(volumes[label], progress=sink.detection_callback(f"detect {label}"))
    sink.report("register", 0, 1)
    registration = register_lungs(volumes["prior"], volumes["current"], bspline=args.bspline)
    sink.report("register", 1, 1)
    total = sum(len(unmeasured_ids(findings[label], args.min_score)) for label in ("prior", "current"))
    sink.report("characterize", 0, total)
    done = 0
    for label in ("prior", "current"):
        done = measure_compared(volumes[label], findings[label], args.min_score, sink, done, total)
    sink.report("match", 0, 1)
    doc = compare(volumes["prior"], volumes["current"], findings["prior"], findings["current"],
                  interval_days=args.interval_days, registration=registration, measure=False,
                  min_score=args.min_score)
    sink.report("match", 1, 1)
    # Every check has passed: only now does anything go to disk.
    written = {f"{label}_findings": write_findings_json(findings[label], out / f"{label}_findings.json")
               for label in ("prior", "current") if inputs[label][1] is None}
    paths = write_comparison(doc, out)
    sink.close_bar()
    sink.message(summary_markdown(doc))
    sink.message("written: " + ", ".join(str(p) for p in [*written.values(), paths["md"], paths["json"]]))
    sink.emit({"event": "done", "comparison": str(paths["json"]), **{k: str(v) for k, v in written.items()}})
    return 0
