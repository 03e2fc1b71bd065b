"""A follow-up comparison in the module: prior + current volume -> ``lesion-detector compare`` in a
background process -> both scans' findings and the pairs table in the scene.

The module's detection machinery is reused as it is: the volumes are written to NRRD files in a
private temporary folder (:mod:`.geometry`), the child runs through :class:`.detection_job.DetectionJob`
(own process group, Cancel ends the whole tree, the folder is removed at the end) and speaks
the jsonl protocol of ``compare --progress jsonl``: progress events with ``stage`` (``read``,
``detect prior``, ``detect current``, ``register``, ``characterize``, ``match``) and the run's
``fraction``, then one ``done`` naming ``comparison.json`` and the findings it wrote. The child
detects on, registers, measures and pairs; nothing of that runs in Slicer's process, so the GUI
never waits on it. :meth:`ComparisonRun.poll` (from a ``QTimer``) adds to the scene only once
everything succeeded, all or nothing: a failed, cancelled or unimportable run leaves the scene as
it was.

A volume that already has detection results in the scene can keep them
(``reuse_findings``): its latest run, with the reviewer's decisions, goes to the child as
``--prior-findings`` / ``--current-findings``, so rejected candidates stay out of the comparison
and only the other volume is detected on.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from . import comparison_scene, detection_job, findings_scene, geometry

REF_CURRENT = "LesionDetectorCurrentVolume"
REF_PRIOR = "LesionDetectorPriorVolume"
RESULT_KEYS = ("comparison", "prior_findings", "current_findings")


class ComparisonError(RuntimeError):
    """The comparison failed; the message names the cause. The scene is unchanged."""


def compare_command(prior_path: Path, current_path: Path, out_dir: Path, *, prior_findings: Optional[Path] = None,
                    current_findings: Optional[Path] = None, interval_days: Optional[float] = None,
                    device: str = "auto", model: Optional[str] = None, python: Optional[str] = None) -> List[str]:
    """argv of ``python -m LesionDetectorLib compare`` with the jsonl progress protocol."""
    argv = [python or detection_job.python_executable(), "-m", "LesionDetectorLib", "compare",
            "--prior", str(prior_path), "--current", str(current_path), "--out", str(out_dir),
            "--progress", "jsonl", "--device", device]
    if prior_findings is not None:
        argv += ["--prior-findings", str(prior_findings)]
    if current_findings is not None:
        argv += ["--current-findings", str(current_findings)]
    if interval_days is not None:
        argv += ["--interval-days", repr(float(interval_days))]
    if model:
        argv += ["--model", model]
    return argv


def latest_results_of(scene, volume_node):
    """The markups node of ``volume_node``'s most recent detection run in ``scene`` (None if none)."""
    found = None
    nodes = scene.GetNodesByClass("vtkMRMLMarkupsFiducialNode")
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.GetAttribute(findings_scene.ATTR_ROLE) != "findings" or not node.GetAttribute(findings_scene.ATTR_FINDINGS):
            continue
        volume = node.GetNodeReference(findings_scene.REF_VOLUME)
        if volume is not None and volume is volume_node:
            found = node   # scene order is creation order: the last one is the latest run
    return found


def volume_of_series(scene, series_uid: str):
    """The CT volume node loaded from DICOM series ``series_uid`` (None when it is not loaded)."""
    from .batch_detection import ct_volumes

    for node in ct_volumes(scene):
        if series_uid and geometry.series_instance_uid(node) == series_uid:
            return node
    return None


def find_prior(scene, dicom_database, current_node) -> Dict[str, Any]:
    """The same patient's most recent earlier CT series in the DICOM database, for the prior selector.

    Returns the :func:`comparison_scene.prior_series_for` entry plus ``"node"``: its volume node
    when that series is loaded, else None (the widget offers to load it). Raises ``ValueError``
    naming why none can be proposed.
    """
    if dicom_database is None:
        raise ValueError("Slicer's DICOM database is not available")
    if current_node is None:
        raise ValueError("choose the current volume first")
    uid = geometry.series_instance_uid(current_node)
    if not uid:
        raise ValueError(f"'{current_node.GetName()}' was not loaded from the DICOM database, so its patient "
                         "and study date are unknown: choose the prior volume yourself")
    found = comparison_scene.prior_series_for(dicom_database, uid)
    if not found:
        raise ValueError("the DICOM database holds no earlier CT study of this patient")
    return dict(found[0], node=volume_of_series(scene, found[0]["series_uid"]))


def resolve_interval_days(interval_days: Optional[float], prior_node, current_node, dicom_database=None) -> Optional[float]:
    """The interval the comparison uses: the one given (> 0), else the DICOM StudyDates' difference
    (``dicom_database`` is ``slicer.dicomDatabase``), else None (the volume-doubling time stays empty).

    Raises ``ValueError`` when the given interval is not > 0 or the "prior" study is the later one.
    """
    if interval_days is not None:
        if not float(interval_days) > 0:
            raise ValueError(f"the interval between the scans must be > 0 days, got {interval_days}")
        return float(interval_days)
    if dicom_database is None:
        return None
    prior_uid, current_uid = geometry.series_instance_uid(prior_node), geometry.series_instance_uid(current_node)
    if not prior_uid or not current_uid:
        return None
    days = comparison_scene.interval_days_between(dicom_database, prior_uid, current_uid)
    if days is not None and days < 0:
        raise ValueError(f"'{prior_node.GetName()}' was acquired {-days} days after '{current_node.GetName()}': "
                         "are the prior and the current volume swapped?")
    return float(days) if days else None      # the same day: no interval to grow in


@dataclass
class ComparisonResult:
    """What a finished comparison added: the pairs table, and the findings of each scan that was
    detected on (None where its existing results were reused)."""

    table: Any
    doc: Dict[str, Any]
    prior: Optional[findings_scene.ResultNodes]
    current: Optional[findings_scene.ResultNodes]


class ComparisonRun:
    """One comparison of ``prior_node`` with ``current_node``: :meth:`start`, then :meth:`poll`
    from a timer until it returns the :class:`ComparisonResult` (or raises :class:`ComparisonError`),
    or :meth:`cancel`.

    While it runs: ``stage`` (the child's stage), ``done`` / ``total`` (that stage's steps) and
    ``fraction`` (0-1, the whole comparison). ``command`` builds the child's argv like
    :func:`compare_command` (replaceable, e.g. by tests).
    """

    def __init__(self, scene, prior_node, current_node, *, interval_days: Optional[float] = None,
                 reuse_findings: bool = True, device: str = "auto", model: Optional[str] = None,
                 dicom_database=None, command: Callable[..., List[str]] = compare_command,
                 log: Optional[Callable[[str], None]] = None) -> None:
        self.scene = scene
        self.prior_node = prior_node
        self.current_node = current_node
        self.interval_days = interval_days
        self.reuse_findings = reuse_findings
        self.device = device
        self.model = model
        self.dicom_database = dicom_database
        self.command = command
        self.log = log
        self.job: Optional[detection_job.DetectionJob] = None
        self.fraction = 0.0
        self.reused: Dict[str, Any] = {}     # "prior" / "current" -> the markups node whose findings were reused

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> "ComparisonRun":
        """Check the inputs, write them to a temporary folder and start the child.

        Raises ``ValueError`` naming the problem (no volume, the same volume twice, swapped dates,
        a volume that cannot be a CT); nothing is started and nothing is left on disk then.
        """
        if self.job is not None:
            raise RuntimeError("this comparison has been started already")
        for role, node in (("prior", self.prior_node), ("current", self.current_node)):
            if node is None:
                raise ValueError(f"choose the {role} volume")
            geometry.check_scalar_volume(node)
        if self.prior_node is self.current_node:
            raise ValueError("the prior and the current volume are the same volume: choose an earlier scan as prior")
        uids = [geometry.series_instance_uid(n) for n in (self.prior_node, self.current_node)]
        if uids[0] and uids[0] == uids[1]:
            raise ValueError("the prior and the current volume are the same DICOM series")
        days = resolve_interval_days(self.interval_days, self.prior_node, self.current_node, self.dicom_database)
        volumes = {role: geometry.volume_from_node(node)
                   for role, node in (("prior", self.prior_node), ("current", self.current_node))}
        workdir = detection_job.make_workdir("LesionDetector-compare-")
        try:
            paths, given = {}, {}
            for role, volume in volumes.items():
                paths[role] = workdir / f"{role}.nrrd"
                geometry.write_volume_nrrd(volume, paths[role])
                markups = latest_results_of(self.scene, getattr(self, f"{role}_node")) if self.reuse_findings else None
                if markups is not None:
                    given[role] = workdir / f"{role}_given_findings.json"
                    given[role].write_text(json.dumps(findings_scene.findings_with_review(markups)), encoding="utf-8")
                    self.reused[role] = markups
            command = self.command(paths["prior"], paths["current"], workdir / "out",
                                   prior_findings=given.get("prior"), current_findings=given.get("current"),
                                   interval_days=days, device=self.device, model=self.model)
        except Exception:
            shutil.rmtree(workdir, ignore_errors=True)
            self.reused = {}
            raise
        for role, node in self.reused.items():
            self._say(f"{role}: using the results in '{node.GetName()}' (with their reviews)")
        self._say("interval: " + (f"{days:g} days" if days else "unknown (no interval given, no DICOM StudyDates)"
                                                                "; volume-doubling times stay empty"))
        self._say("Running: " + " ".join(str(c) for c in command))
        self.job = detection_job.DetectionJob(command, workdir, log_callback=self.log, result_keys=RESULT_KEYS).start()
        return self

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    @property
    def stage(self) -> str:
        return self.job.stage if self.job is not None else ""

    @property
    def done(self) -> int:
        return self.job.done if self.job is not None else 0

    @property
    def total(self) -> int:
        return self.job.total if self.job is not None else 0

    def poll(self) -> Optional[ComparisonResult]:
        """Advance without blocking: None while running or after Cancel, the result once done.

        Raises :class:`ComparisonError` when the child failed or its results cannot be imported.
        """
        job = self.job
        if job is None:
            return None
        for event in job.poll():
            if event.get("event") == "progress" and isinstance(event.get("fraction"), (int, float)):
                self.fraction = max(self.fraction, min(float(event["fraction"]), 1.0))
        if job.state == detection_job.FAILED:
            raise ComparisonError(job.error or "the comparison failed")
        if job.state != detection_job.DONE:
            return None
        return self._import(job.results)

    def wait(self, timeout: Optional[float] = None, interval: float = 0.1) -> ComparisonResult:
        """Poll until done (scripts and tests); on ``timeout`` seconds the run is cancelled."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            result = self.poll()
            if result is not None:
                return result
            if self.job is None or self.job.state == detection_job.CANCELLED:
                raise ComparisonError("the comparison was cancelled")
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise ComparisonError(f"the comparison did not finish within {timeout:.0f} s")
            time.sleep(interval)

    def cancel(self) -> None:
        """Stop the child and everything it started; its temporary files go, nothing is added."""
        if self.job is not None:
            self.job.cancel()
            self._say("Comparison cancelled.")

    # -- import ----------------------------------------------------------------------
    def _import(self, results: Dict[str, Dict]) -> ComparisonResult:
        added: List[findings_scene.ResultNodes] = []
        table = None
        try:
            sides = {}
            for role in ("prior", "current"):
                findings = results.get(f"{role}_findings")
                if findings is None:
                    if role not in self.reused:
                        raise ValueError(f"the child reported no {role} findings")
                    sides[role] = None
                    continue
                node = getattr(self, f"{role}_node")
                # The child saw a temporary file: name the real source and series.
                findings.setdefault("volume", {})["source"] = node.GetName()
                uid = geometry.series_instance_uid(node)
                if uid:
                    findings["volume"]["series_uid"] = uid
                sides[role] = findings_scene.create_result_nodes(self.scene, node, findings)
                added.append(sides[role])
            doc = results["comparison"]
            for role in ("prior", "current"):
                doc.get(role, {})["source"] = getattr(self, f"{role}_node").GetName()
            table = comparison_scene.create_comparison_table(
                self.scene, doc, name=f"{self.current_node.GetName()} vs {self.prior_node.GetName()}")
            table.SetNodeReferenceID(REF_CURRENT, self.current_node.GetID())
            table.SetNodeReferenceID(REF_PRIOR, self.prior_node.GetID())
        except Exception as exc:
            for nodes in added:
                _remove_result_nodes(self.scene, nodes)
            if table is not None:
                _remove_result_nodes(self.scene, findings_scene.ResultNodes(None, table))
            raise ComparisonError(f"the comparison results could not be imported: {exc}") from exc
        counts = ", ".join(f"{n} {s}" for s, n in (doc.get("counts") or {}).items() if n) or "no findings"
        self._say(f"Comparison: {counts}; Lung-RADS {(doc.get('lung_rads') or {}).get('category', '-')}")
        return ComparisonResult(table, doc, sides["prior"], sides["current"])

    def _say(self, message: str) -> None:
        if self.log:
            self.log(message)


def _remove_result_nodes(scene, nodes: findings_scene.ResultNodes) -> None:
    sh = scene.GetSubjectHierarchyNode()
    for node in (nodes.markups, nodes.table):
        if node is None or node.GetScene() is not scene:
            continue
        display = node.GetDisplayNode() if hasattr(node, "GetDisplayNode") else None
        for n in (node, display):
            if n is None:
                continue
            item = sh.GetItemByDataNode(n) if sh is not None else 0
            if item:
                sh.RemoveItem(item, False, False)
            if n.GetScene() is scene:
                scene.RemoveNode(n)


def comparison_volumes(table):
    """``(current, prior)`` volume nodes a comparison table was made from (None where deleted)."""
    return table.GetNodeReference(REF_CURRENT), table.GetNodeReference(REF_PRIOR)


def centre_on_pair(scene, table, pair_index: int, views: Sequence[str] = ("Red", "Yellow")) -> Dict[str, Optional[List[float]]]:
    """A row click: Red | Yellow side by side (when the scene has a layout), the current volume in
    the first view and the prior in the second, each centred on the pair in its own scan."""
    current, prior = comparison_volumes(table)
    if current is None and prior is None:
        raise ValueError(f"the volumes of '{table.GetName()}' are no longer in the scene")
    comparison_scene.show_side_by_side(scene)
    return comparison_scene.centre_views_on_pair(scene, comparison_scene.comparison_of(table), pair_index,
                                                 current, prior, views[0], views[1])


#: The panel's columns: a subset of the table node's (:data:`comparison_scene.TABLE_COLUMNS`).
PANEL_COLUMNS = ("Status", "Prior diameter (mm)", "Current diameter (mm)", "Change (mm)", "Volume change (%)",
                 "VDT (days)", "Lung-RADS")
_PANEL_FORMATS = {"Change (mm)": "+.1f", "Volume change (%)": "+.0f", "VDT (days)": ".0f"}


def panel_rows(table) -> List[List[str]]:
    """The panel's text per pair, read from the comparison table node (the one place the pairs'
    values are laid out); a value that does not apply (NaN) is empty."""
    import math

    t = table.GetTable()
    rows = []
    for r in range(t.GetNumberOfRows()):
        row = []
        for col in PANEL_COLUMNS:
            value = t.GetValueByName(r, col)
            if col in ("Status", "Lung-RADS"):
                row.append(value.ToString())
                continue
            number = value.ToDouble()
            row.append("" if math.isnan(number) else format(number, _PANEL_FORMATS.get(col, ".1f")))
        rows.append(row)
    return rows
