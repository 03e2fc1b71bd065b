"""Findings JSON (schema ``lesion-detector/findings`` v1.0) <-> MRML nodes.

One run gives one markups fiducial node (one locked control point per candidate, in
rank order, labelled ``"N<rank> <score>"``) and one table node listing the same
candidates, both placed in the subject hierarchy under the volume's study. The
full findings JSON, the patient flag and the model identity are node attributes, so a
saved scene restores everything and exports can be produced later.

Review state lives in each control point's description because the description is
the per-point field that ``.mrk.json`` files keep; the table's "Review" column mirrors
it. The description format, its parser and the meaning of ``selected`` are the
library's (``LesionDetectorLib.export.markups``), so a file written by
``lesion-detector detect`` and one exported here read the same way, and
:func:`adopt_markups_node` turns a loaded ``.mrk.json`` back into a reviewable run.

Candidates are matched to control points by the point IDs recorded when the run was
added (``ATTR_POINT_IDS``), never by position in the list, so a point a user adds
cannot shift the reviews. The node also has a fixed number of control points and is
locked, and adding it does not make it Slicer's active point list (the markups module
logic would otherwise send the user's next placed point into the findings).

Nodule masks: when the run brings them (``masks``, the label volume of the detection
child's ``nodule_masks.seg.nrrd``), a Segmentation node with one segment per characterized
finding is made with the markups and table, in the same all-or-nothing step, and referenced
from the markups (``REF_SEGMENTATION``). A rejected finding's segment is hidden; an edited
segment's new measurements come back through :func:`update_characterization`.

Colour: the display node's *selected* colour (red) marks the findings at the run's
operating point after review (accepted, or unreviewed and above the threshold); the
others are drawn in its normal colour (yellow).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from .geometry import lps_to_ras

SCHEMA = "lesion-detector/findings"
REVIEW_STATES = ("unreviewed", "accepted", "rejected")

ATTR_ROLE = "LesionDetector.Role"
ATTR_FINDINGS = "LesionDetector.Findings"
ATTR_FLAG = "LesionDetector.PatientFlag"
ATTR_FLAG_THRESHOLD = "LesionDetector.PatientFlagThreshold"
ATTR_FLAG_MAX_SCORE = "LesionDetector.PatientFlagMaxScore"
ATTR_OPERATING_POINT = "LesionDetector.OperatingPoint"
ATTR_MODEL_NAME = "LesionDetector.ModelName"
ATTR_MODEL_VERSION = "LesionDetector.ModelVersion"
ATTR_MODEL_SHA256 = "LesionDetector.ModelSHA256"
ATTR_OP_BACKEND = "LesionDetector.OpBackend"
ATTR_POINT_IDS = "LesionDetector.ControlPointIDs"  # JSON list: control point ID of candidate i
REF_TABLE = "LesionDetectorTable"
REF_VOLUME = "LesionDetectorVolume"
REF_SEGMENTATION = "LesionDetectorSegmentation"

ABOVE_THRESHOLD_COLOR = (1.0, 0.2, 0.2)
BELOW_THRESHOLD_COLOR = (1.0, 0.85, 0.1)

TABLE_COLUMNS = ("Rank", "ID", "Score", "Diameter (mm)", "Location RAS (mm)", "RPN", "FPRN", "Review",
                 "Type", "Mean diameter (mm)", "Volume (mL)", "Lung-RADS")


@dataclass
class ResultNodes:
    markups: Any   # vtkMRMLMarkupsFiducialNode
    table: Any     # vtkMRMLTableNode
    segmentation: Any = None   # vtkMRMLSegmentationNode of the nodule masks (None: the run has none)


def validate_findings(findings: Dict[str, Any]) -> None:
    """Raise ``ValueError`` naming what is wrong when ``findings`` is not a schema v1 document.

    The checks are the library's own (:meth:`LesionDetectorLib.findings.Findings.from_dict`:
    schema version, candidate fields, finite centres, review states), so the module accepts
    exactly what the library reads and writes.
    """
    if not isinstance(findings, dict) or findings.get("schema") != SCHEMA:
        raise ValueError(f"not a '{SCHEMA}' document")
    from LesionDetectorLib.findings import Findings

    if not isinstance(findings.get("candidates"), list):
        raise ValueError("findings have no 'candidates' list")
    try:
        Findings.from_dict(findings)
    except KeyError as exc:
        raise ValueError(f"findings lack {exc}") from None
    except TypeError as exc:
        raise ValueError(f"findings are malformed ({exc})") from None


def _ranked(candidates: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return sorted(candidates, key=lambda c: (c.get("rank", 10 ** 9), -float(c["score"])))


def _mapping():
    """The library's findings <-> markups mapping (imported on use: the module file loads
    in Slicer before the library is installed)."""
    from LesionDetectorLib.export import markups

    return markups


def describe(candidate: Dict[str, Any], review: str) -> str:
    """The control point description (the library's format): every number the reviewer needs,
    then the review state."""
    return _mapping().control_point_description(candidate, review)


def label(candidate: Dict[str, Any], rank: int) -> str:
    return f"N{rank} {float(candidate['score']):.2f}"


def format_location(ras) -> str:
    return "R {:.1f}, A {:.1f}, S {:.1f}".format(*(float(v) for v in ras))


def create_result_nodes(scene, volume_node, findings: Dict[str, Any], masks=None) -> ResultNodes:
    """Add the markups and table nodes of one run to ``scene``; all or nothing.

    ``masks``: the run's nodule masks, a label :class:`~LesionDetectorLib.volume.Volume` in
    ``volume_node``'s voxel grid with ``metadata["labels"]`` = {label: finding id}; they become
    a Segmentation node (one segment per finding). On any error the nodes added so far are
    removed again, so a failure leaves the scene as it was.
    """
    import vtk

    validate_findings(findings)
    candidates = _ranked(findings["candidates"])
    flag = findings.get("patient_flag") or {}
    threshold = flag.get("threshold")
    base = volume_node.GetName() if volume_node is not None else "volume"
    mapping = _mapping()
    added = []
    active = _ActivePlaceList(scene)
    try:
        markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode",
                                          scene.GenerateUniqueName(f"{base} lesion candidates"))
        added.append(markups)
        active.restore()
        markups.CreateDefaultDisplayNodes()
        display = markups.GetDisplayNode()
        if display is not None:
            added.append(display)
            display.SetSelectedColor(*ABOVE_THRESHOLD_COLOR)
            display.SetColor(*BELOW_THRESHOLD_COLOR)
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{base} lesion candidates table"))
        added.append(table)

        markups.SetMarkupLabelFormat("N%d")
        with _batch(markups):
            for rank, cand in enumerate(candidates, start=1):
                ras = lps_to_ras(cand["center_lps"])
                i = markups.AddControlPoint(vtk.vtkVector3d(*ras), label(cand, rank))
                markups.SetNthControlPointDescription(i, describe(cand, cand.get("review", "unreviewed")))
                markups.SetNthControlPointLocked(i, True)
                markups.SetNthControlPointSelected(
                    i, mapping.is_selected(cand.get("review", "unreviewed"), cand["score"], threshold))
        point_ids = [markups.GetNthControlPointID(i) for i in range(markups.GetNumberOfControlPoints())]
        markups.SetAttribute(ATTR_POINT_IDS, json.dumps(point_ids))
        # Points are the run's candidates: none added or removed by clicks, none moved.
        markups.SetFixedNumberOfControlPoints(True)
        markups.SetLocked(True)
        _fill_table(table, markups, candidates)

        stored = copy.deepcopy(findings)
        stored["candidates"] = candidates
        markups.SetAttribute(ATTR_ROLE, "findings")
        markups.SetAttribute(ATTR_FINDINGS, json.dumps(stored))
        markups.SetAttribute(ATTR_FLAG, str(flag.get("status", "unavailable")))
        markups.SetAttribute(ATTR_FLAG_THRESHOLD, "" if threshold is None else repr(float(threshold)))
        markups.SetAttribute(ATTR_FLAG_MAX_SCORE, "" if flag.get("max_score") is None else repr(float(flag["max_score"])))
        markups.SetAttribute(ATTR_OPERATING_POINT, str(flag.get("operating_point") or
                                                       (findings.get("operating_point") or {}).get("name", "")))
        model = findings.get("model") or {}
        markups.SetAttribute(ATTR_MODEL_NAME, str(model.get("name", "")))
        markups.SetAttribute(ATTR_MODEL_VERSION, str(model.get("version", "")))
        markups.SetAttribute(ATTR_MODEL_SHA256, str(model.get("sha256", "")))
        markups.SetAttribute(ATTR_OP_BACKEND, str((findings.get("provenance") or {}).get("op_backend", "")))
        table.SetAttribute(ATTR_ROLE, "table")
        markups.SetNodeReferenceID(REF_TABLE, table.GetID())
        if volume_node is not None:
            markups.SetNodeReferenceID(REF_VOLUME, volume_node.GetID())
        _place_in_subject_hierarchy(scene, volume_node, (markups, table))
        segmentation = None
        if masks is not None and masks.array.any():
            if volume_node is None:
                raise ValueError("nodule masks need the volume they were made on")
            from . import segmentation_scene

            chars = {c["id"]: c.get("characterization") for c in candidates}
            segmentation = segmentation_scene.create_segmentation_node(
                scene, volume_node, masks.array, masks.metadata.get("labels") or {}, chars,
                name=scene.GenerateUniqueName(f"{base} nodule masks"))
            added.append(segmentation)
            for cand in candidates:
                segmentation_scene.show_review(segmentation, cand["id"], cand.get("review", "unreviewed"))
            markups.SetNodeReferenceID(REF_SEGMENTATION, segmentation.GetID())
        return ResultNodes(markups, table, segmentation)
    except Exception:
        sh = scene.GetSubjectHierarchyNode()
        for node in reversed(added):
            if node.IsA("vtkMRMLSegmentationNode"):
                from . import segmentation_scene

                segmentation_scene.remove_segmentation_node(node)
                continue
            if sh is not None:
                item = sh.GetItemByDataNode(node)
                if item:
                    sh.RemoveItem(item, False, False)
            if node.GetScene() is scene:
                scene.RemoveNode(node)
        raise


class _batch:
    """Suspend per-point Modified events while many points are added (one render, not N)."""

    def __init__(self, node):
        self.node = node

    def __enter__(self):
        self.was = self.node.StartModify()

    def __exit__(self, *exc):
        self.node.EndModify(self.was)
        return False


def _fill_table(table, markups, candidates: List[Dict[str, Any]]) -> None:
    import vtk

    def column(cls, name):
        arr = cls()
        arr.SetName(name)
        return arr

    cols = {
        "Rank": column(vtk.vtkIntArray, "Rank"),
        "ID": column(vtk.vtkStringArray, "ID"),
        "Score": column(vtk.vtkDoubleArray, "Score"),
        "Diameter (mm)": column(vtk.vtkDoubleArray, "Diameter (mm)"),
        "Location RAS (mm)": column(vtk.vtkStringArray, "Location RAS (mm)"),
        "RPN": column(vtk.vtkDoubleArray, "RPN"),
        "FPRN": column(vtk.vtkDoubleArray, "FPRN"),
        "Review": column(vtk.vtkStringArray, "Review"),
        # characterization (computed by the library, not learned; empty when not characterized)
        "Type": column(vtk.vtkStringArray, "Type"),
        "Mean diameter (mm)": column(vtk.vtkDoubleArray, "Mean diameter (mm)"),
        "Volume (mL)": column(vtk.vtkDoubleArray, "Volume (mL)"),
        "Lung-RADS": column(vtk.vtkStringArray, "Lung-RADS"),
    }

    def number(value):
        return float("nan") if value is None else float(value)
    for rank, cand in enumerate(candidates, start=1):
        cols["Rank"].InsertNextValue(rank)
        cols["ID"].InsertNextValue(str(cand["id"]))
        cols["Score"].InsertNextValue(round(float(cand["score"]), 4))
        cols["Diameter (mm)"].InsertNextValue(round(float(cand["diameter_mm"]), 2))
        cols["Location RAS (mm)"].InsertNextValue(format_location(lps_to_ras(cand["center_lps"])))
        cols["RPN"].InsertNextValue(float(cand.get("score_rpn", float("nan"))))
        cols["FPRN"].InsertNextValue(float(cand.get("score_fprn", float("nan"))))
        cols["Review"].InsertNextValue(cand.get("review", "unreviewed"))
        cells = characterization_cells(cand)
        cols["Type"].InsertNextValue(cells["type"])
        cols["Mean diameter (mm)"].InsertNextValue(number(cells["mean_diameter_mm"]))
        cols["Volume (mL)"].InsertNextValue(number(cells["volume_ml"]))
        cols["Lung-RADS"].InsertNextValue(cells["lung_rads"])
    vtable = table.GetTable()
    for name in TABLE_COLUMNS:
        vtable.AddColumn(cols[name])
    table.SetUseColumnTitleAsColumnHeader(True)
    table.SetLocked(True)  # the reviewer decides with Accept / Reject, not by typing in cells
    table.Modified()


def characterization_cells(candidate: Dict[str, Any]) -> Dict[str, Any]:
    """What the table node and the panel show of a candidate's characterization: type (", calcified"
    appended), mean diameter, volume (None when not characterized) and Lung-RADS ("" when none)."""
    ch = candidate.get("characterization") or {}
    kind = ch.get("type") or ""
    return {"type": f"{kind}, calcified" if kind and ch.get("calcified") else kind,
            "mean_diameter_mm": ch.get("mean_diameter_mm"), "volume_ml": ch.get("volume_ml"),
            "lung_rads": str(ch.get("lung_rads") or "")}


# The module panel's candidate table (the table node has every column; the panel the reading ones).
PANEL_COLUMNS = ("Rank", "Score", "Type", "Size (mm)", "Volume (mL)", "Lung-RADS", "Location (RAS mm)", "Status")


def panel_cells(row: Dict[str, Any]) -> List[str]:
    """Texts of one panel row (a dict of the Logic's candidateRows). Size is the measured mean
    diameter when the finding is characterized, else the detector's box diameter marked "(box)"."""
    size = (f"{float(row['mean_diameter_mm']):.1f}" if row.get("mean_diameter_mm") is not None
            else f"{float(row['diameter_mm']):.1f} (box)")
    volume = f"{float(row['volume_ml']):.3f}" if row.get("volume_ml") is not None else ""
    return [str(row["rank"]), f"{row['score']:.3f}", row.get("type") or "", size, volume,
            row.get("lung_rads") or "", row["location"], row["review"]]


def _place_in_subject_hierarchy(scene, volume_node, nodes) -> int:
    """Put ``nodes`` under the volume's study (else beside the volume); returns the parent item."""
    sh = scene.GetSubjectHierarchyNode()
    parent = sh.GetSceneItemID()
    if volume_node is not None:
        volume_item = sh.GetItemByDataNode(volume_node) or sh.CreateItem(sh.GetSceneItemID(), volume_node)
        parent = sh.GetItemParent(volume_item) or sh.GetSceneItemID()
        ancestor = parent
        while ancestor and ancestor != sh.GetSceneItemID():
            if sh.GetItemLevel(ancestor) == "Study":
                parent = ancestor
                break
            ancestor = sh.GetItemParent(ancestor)
    for node in nodes:
        item = sh.GetItemByDataNode(node)
        if item:
            sh.SetItemParent(item, parent)
        else:
            sh.CreateItem(parent, node)
    return parent


class _ActivePlaceList:
    """Remembers which point list Slicer places new points into, to put it back.

    The markups module logic makes every markups node added to the scene the active list
    (``vtkSlicerMarkupsLogic`` on NodeAddedEvent); the findings must not become it.
    """

    def __init__(self, scene):
        self.selection = scene.GetFirstNodeByClass("vtkMRMLSelectionNode")
        self.node_id = self.selection.GetActivePlaceNodeID() if self.selection is not None else None
        self.class_name = self.selection.GetActivePlaceNodeClassName() if self.selection is not None else None

    def restore(self) -> None:
        if self.selection is None:
            return
        if self.class_name:
            self.selection.SetActivePlaceNodeClassName(self.class_name)
        self.selection.SetActivePlaceNodeID(self.node_id)


def _point_ids(markups) -> List[str]:
    text = markups.GetAttribute(ATTR_POINT_IDS)
    if text:
        return [str(v) for v in json.loads(text)]
    # a run added before point IDs were recorded: points are the candidates in order
    return [markups.GetNthControlPointID(i) for i in range(markups.GetNumberOfControlPoints())]


def _point_index(markups, index: int) -> int:
    """Control point index of candidate ``index`` (rank - 1); -1 when its point is gone."""
    ids = _point_ids(markups)
    if not 0 <= index < len(ids):
        raise IndexError(f"no candidate {index} (the run has {len(ids)})")
    return markups.GetNthControlPointIndexByID(ids[index])


def review_of(markups, index: int) -> str:
    """Review state of candidate ``index`` (rank - 1), from its control point's description."""
    i = _point_index(markups, index)
    if i < 0:
        return "unreviewed"
    return _mapping().review_from_description(markups.GetNthControlPointDescription(i))


def set_review(markups, index: int, state: str) -> None:
    """Record the reviewer's decision on control point ``index`` in the markups and its table."""
    if state not in REVIEW_STATES:
        raise ValueError(f"review state must be one of {REVIEW_STATES}, got {state!r}")
    mapping = _mapping()
    i = _point_index(markups, index)
    if i < 0:
        raise IndexError(f"the control point of candidate {index + 1} was deleted")
    markups.SetNthControlPointDescription(i, mapping.with_review(markups.GetNthControlPointDescription(i), state))
    findings = json.loads(markups.GetAttribute(ATTR_FINDINGS) or "{}")
    cands = findings.get("candidates") or []
    if index < len(cands):
        thr = markups.GetAttribute(ATTR_FLAG_THRESHOLD)
        markups.SetNthControlPointSelected(
            i, mapping.is_selected(state, cands[index]["score"], float(thr) if thr else None))
    _set_table_cells(markups, index, {"Review": state})
    if index < len(cands):
        seg = markups.GetNodeReference(REF_SEGMENTATION)
        if seg is not None:
            from . import segmentation_scene

            segmentation_scene.show_review(seg, str(cands[index]["id"]), state)
        if "lung_rads" in findings:   # a characterized run: a rejected finding no longer sets the exam's category
            for k, c in enumerate(cands):
                c["review"] = review_of(markups, k)
            findings["lung_rads"] = _exam_lung_rads(findings)
            markups.SetAttribute(ATTR_FINDINGS, json.dumps(findings))


def _set_table_cells(markups, index: int, values: Dict[str, Any]) -> None:
    table = markups.GetNodeReference(REF_TABLE)
    if table is None or index >= table.GetNumberOfRows():
        return
    was_locked = table.GetLocked()
    table.SetLocked(False)
    for name, value in values.items():
        column = table.GetTable().GetColumnByName(name)
        if column is not None:
            column.SetValue(index, value)
    table.GetTable().Modified()
    table.Modified()
    table.SetLocked(was_locked)


def _exam_lung_rads(findings: Dict[str, Any]) -> Dict[str, Any]:
    """The patient-level ``{category, finding_id}`` over the non-rejected findings (the library's rule)."""
    from LesionDetectorLib.characterization.lung_rads import exam_category

    return exam_category((c["id"], (c.get("characterization") or {}).get("lung_rads"))
                         for c in findings.get("candidates") or [] if c.get("review") != "rejected")


def candidate_index(markups, finding_id: str) -> int:
    """Rank - 1 of the finding ``finding_id`` in the run; raises ``KeyError`` when it has none."""
    findings = json.loads(markups.GetAttribute(ATTR_FINDINGS) or "{}")
    for i, cand in enumerate(findings.get("candidates") or []):
        if str(cand["id"]) == finding_id:
            return i
    raise KeyError(f"the run has no finding {finding_id!r}")


def update_characterization(markups, finding_id: str, characterization: Dict[str, Any]) -> Dict[str, Any]:
    """Record a finding's re-measured characterization (after a segment edit) everywhere it shows:
    the stored findings, the control point description, the table row and the patient-level
    Lung-RADS. Returns the new patient-level ``lung_rads``."""
    findings = json.loads(markups.GetAttribute(ATTR_FINDINGS) or "{}")
    index = candidate_index(markups, finding_id)
    cand = findings["candidates"][index]
    cand["characterization"] = dict(characterization)
    for i, c in enumerate(findings["candidates"]):
        c["review"] = review_of(markups, i)
    findings["lung_rads"] = _exam_lung_rads(findings)
    markups.SetAttribute(ATTR_FINDINGS, json.dumps(findings))
    i = _point_index(markups, index)
    if i >= 0:
        markups.SetNthControlPointDescription(i, describe(cand, cand["review"]))
    ch = cand["characterization"]
    kind = ch.get("type") or ""
    _set_table_cells(markups, index, {
        "Type": f"{kind}, calcified" if kind and ch.get("calcified") else kind,
        "Mean diameter (mm)": float("nan") if ch.get("mean_diameter_mm") is None else float(ch["mean_diameter_mm"]),
        "Volume (mL)": float("nan") if ch.get("volume_ml") is None else float(ch["volume_ml"]),
        "Lung-RADS": str(ch.get("lung_rads") or "")})
    return findings["lung_rads"]


def findings_with_review(markups) -> Dict[str, Any]:
    """The run's findings with every candidate's ``review`` taken from the markups node."""
    text = markups.GetAttribute(ATTR_FINDINGS)
    if not text:
        raise ValueError(f"'{markups.GetName()}' holds no Lesion Detector findings")
    findings = json.loads(text)
    # Matched by point ID: points a user placed in this list are not candidates, and a
    # candidate whose point was deleted keeps no decision.
    for i, cand in enumerate(findings["candidates"]):
        cand["review"] = review_of(markups, i)
    return findings


def adopt_markups_node(scene, node, volume_node=None) -> ResultNodes:
    """Turn a point list loaded from a Lesion Detector ``.mrk.json`` (written by
    ``lesion-detector detect`` or exported by this module) into a run: markups with the
    findings attached, table and subject hierarchy, keeping every review decision.

    The loaded node is replaced by the new one (same name), so the scene holds the run once.
    Raises ``ValueError`` when the list was not written by Lesion Detector.
    """
    from .geometry import ras_to_lps

    points = []
    for i in range(node.GetNumberOfControlPoints()):
        ras = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(i, ras)
        points.append({"id": node.GetNthControlPointID(i), "label": node.GetNthControlPointLabel(i),
                       "description": node.GetNthControlPointDescription(i),
                       "position_lps": [float(v) for v in ras_to_lps(ras)]})
    measurements = {}
    for i in range(node.GetNumberOfMeasurements()):
        m = node.GetNthMeasurement(i)
        measurements[m.GetName()] = {"value": m.GetValue(), "description": m.GetDescription()}
    findings = _mapping().findings_from_markups(points, measurements).to_dict()
    name = node.GetName()
    if volume_node is None:
        volume_node = scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
    result = create_result_nodes(scene, volume_node, findings)
    scene.RemoveNode(node)
    result.markups.SetName(name)
    return result


def patient_flag_of(markups) -> Dict[str, Optional[str]]:
    """The flag and model identity stored on a run's markups node (for the panel)."""
    def get(attr):
        return markups.GetAttribute(attr) or None

    return {"status": get(ATTR_FLAG), "threshold": get(ATTR_FLAG_THRESHOLD),
            "max_score": get(ATTR_FLAG_MAX_SCORE), "operating_point": get(ATTR_OPERATING_POINT),
            "model_name": get(ATTR_MODEL_NAME), "model_version": get(ATTR_MODEL_VERSION),
            "op_backend": get(ATTR_OP_BACKEND)}


def exam_lung_rads_of(markups) -> Dict[str, Any]:
    """The run's patient-level Lung-RADS ``{category, finding_id}`` (after reviews and edits);
    empty when the run was not characterized."""
    findings = json.loads(markups.GetAttribute(ATTR_FINDINGS) or "{}")
    return dict(findings.get("lung_rads") or {})


def candidate_position_ras(markups, index: int) -> List[float]:
    """World RAS position of candidate ``index`` (rank - 1)."""
    i = _point_index(markups, index)
    if i < 0:
        raise IndexError(f"the control point of candidate {index + 1} was deleted")
    pos = [0.0, 0.0, 0.0]
    markups.GetNthControlPointPositionWorld(i, pos)
    return pos
