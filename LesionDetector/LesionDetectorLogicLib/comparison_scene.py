"""A follow-up comparison (``comparison.json`` of ``lesion-detector compare``) in the MRML scene.

Two pieces for the module's widget, both testable with slicer-core alone:

* :func:`create_comparison_table` adds one locked table node, one row per pair (status,
  current and prior ids, mean diameters, change, volume change, VDT, Lung-RADS, RAS
  positions), and keeps the comparison document on the node (attribute
  ``LesionDetector.Comparison``) so a saved scene reopens with it;
* :func:`centre_views_on_pair` shows the current volume in one slice view and the prior in
  another and centres each on the pair's position *in its own scan* (LPS in the file, RAS
  here, through each volume's parent transform when it has one). For a ``new`` nodule the
  prior view is centred where the registration puts it in the prior scan, for a ``resolved``
  one the current view where it would be now, so the reader sees the same anatomy in both.

:func:`prior_series_for` finds the same patient's earlier CT series in Slicer's DICOM
database (``slicer.dicomDatabase``, a ``ctkDICOMDatabase``), newest first, for the "prior"
selector.

RAS appears only here, at the MRML boundary; the file and the library are LPS.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .geometry import lps_to_ras

ATTR_ROLE = "LesionDetector.Role"
ATTR_COMPARISON = "LesionDetector.Comparison"
TABLE_COLUMNS = ("Pair", "Status", "Current", "Prior", "Prior diameter (mm)", "Current diameter (mm)",
                 "Change (mm)", "Volume change (%)", "VDT (days)", "Lung-RADS", "Current RAS (mm)", "Prior RAS (mm)")


def validate_comparison(doc: Dict[str, Any]) -> None:
    if not isinstance(doc, dict) or doc.get("schema") != "lesion-detector/comparison":
        raise ValueError("not a lesion-detector comparison document (schema 'lesion-detector/comparison')")
    if not isinstance(doc.get("pairs"), list):
        raise ValueError("the comparison document has no 'pairs' list")


def pair_positions_lps(pair: Dict[str, Any]) -> Tuple[Optional[List[float]], Optional[List[float]]]:
    """``(current, prior)`` LPS centres of a pair, each in its own scan; the missing side of a
    ``new`` / ``resolved`` pair comes from the registration (None when the file has no mapping)."""
    cur = (pair.get("current") or {}).get("center_lps") or pair.get("prior_center_in_current_lps")
    pri = (pair.get("prior") or {}).get("center_lps") or pair.get("current_center_in_prior_lps")
    return cur, pri


def _fmt_ras(p) -> str:
    if p is None:
        return ""
    ras = lps_to_ras(p)
    return f"{ras[0]:.1f}, {ras[1]:.1f}, {ras[2]:.1f}"


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def create_comparison_table(scene, doc: Dict[str, Any], name: str = "Follow-up comparison"):
    """Add the pairs table (locked; the document on its ``LesionDetector.Comparison`` attribute)."""
    import vtk

    validate_comparison(doc)
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    try:
        string_cols = {"Status", "Current", "Prior", "Lung-RADS", "Current RAS (mm)", "Prior RAS (mm)"}
        cols = {}
        for col in TABLE_COLUMNS:
            arr = vtk.vtkStringArray() if col in string_cols else (vtk.vtkIntArray() if col == "Pair"
                                                                   else vtk.vtkDoubleArray())
            arr.SetName(col)
            cols[col] = arr
        for i, p in enumerate(doc["pairs"], start=1):
            cur, pri = p.get("current") or {}, p.get("prior") or {}
            cur_lps, pri_lps = pair_positions_lps(p)
            cols["Pair"].InsertNextValue(i)
            cols["Status"].InsertNextValue(str(p["status"]))
            cols["Current"].InsertNextValue(str(cur.get("id", "")))
            cols["Prior"].InsertNextValue(str(pri.get("id", "")))
            cols["Prior diameter (mm)"].InsertNextValue(_num(pri.get("mean_diameter_mm")))
            cols["Current diameter (mm)"].InsertNextValue(_num(cur.get("mean_diameter_mm")))
            cols["Change (mm)"].InsertNextValue(_num(p.get("diameter_change_mm")))
            cols["Volume change (%)"].InsertNextValue(_num(p.get("volume_change_pct")))
            cols["VDT (days)"].InsertNextValue(_num(p.get("volume_doubling_days")))
            cols["Lung-RADS"].InsertNextValue(str((p.get("lung_rads") or {}).get("category", "")))
            cols["Current RAS (mm)"].InsertNextValue(_fmt_ras(cur_lps))
            cols["Prior RAS (mm)"].InsertNextValue(_fmt_ras(pri_lps))
        for col in TABLE_COLUMNS:
            table.GetTable().AddColumn(cols[col])
        table.SetUseColumnTitleAsColumnHeader(True)
        table.SetAttribute(ATTR_ROLE, "comparison")
        table.SetAttribute(ATTR_COMPARISON, json.dumps(doc))
        table.SetLocked(True)
        table.Modified()
    except Exception:
        scene.RemoveNode(table)
        raise
    return table


def comparison_of(table) -> Dict[str, Any]:
    """The comparison document stored on a table made by :func:`create_comparison_table`."""
    text = table.GetAttribute(ATTR_COMPARISON)
    if not text:
        raise ValueError(f"table {table.GetName()!r} holds no follow-up comparison")
    return json.loads(text)


def _slice_nodes(scene, layout_name: str):
    slice_node = composite = None
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        n = scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
        if n.GetLayoutName() == layout_name:
            slice_node = n
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        n = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        if n.GetLayoutName() == layout_name:
            composite = n
    if slice_node is None or composite is None:
        raise ValueError(f"no slice view named {layout_name!r} in the scene")
    return slice_node, composite


def _world_ras(volume_node, ras: Sequence[float]) -> List[float]:
    """A point of the volume's own RAS frame in world RAS (through its parent transforms)."""
    import slicer
    import vtk

    parent = volume_node.GetParentTransformNode()
    if parent is None:
        return [float(v) for v in ras]
    t = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(parent, None, t)
    return [float(v) for v in t.TransformPoint([float(v) for v in ras])]


def centre_views_on_pair(scene, doc: Dict[str, Any], pair_index: int, current_volume_node, prior_volume_node,
                         current_view: str = "Red", prior_view: str = "Yellow") -> Dict[str, Optional[List[float]]]:
    """Show current / prior in two slice views and centre each on pair ``pair_index`` (0-based).

    Returns the world RAS each view was centred on (None where the pair has no position for it).
    """
    validate_comparison(doc)
    pairs = doc["pairs"]
    if not 0 <= pair_index < len(pairs):
        raise IndexError(f"pair {pair_index} out of range (the comparison has {len(pairs)} pairs)")
    cur_lps, pri_lps = pair_positions_lps(pairs[pair_index])
    out: Dict[str, Optional[List[float]]] = {"current": None, "prior": None}
    for key, lps, node, view in (("current", cur_lps, current_volume_node, current_view),
                                 ("prior", pri_lps, prior_volume_node, prior_view)):
        slice_node, composite = _slice_nodes(scene, view)
        if node is not None:
            composite.SetBackgroundVolumeID(node.GetID())
        if lps is None or node is None:
            continue
        ras = _world_ras(node, lps_to_ras(np.asarray(lps, dtype=np.float64)))
        slice_node.JumpSliceByCentering(*ras)
        out[key] = ras
    return out


def show_side_by_side(scene) -> bool:
    """Switch the scene's layout to Red | Yellow (``SlicerLayoutSideBySideView``: current | prior);
    False when the scene has no layout node (slicer-core without the application)."""
    import slicer

    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layout is None:
        return False
    arrangement = slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
    if layout.GetViewArrangement() != arrangement:
        layout.SetViewArrangement(arrangement)
    return True


_STUDY_DATE, _MODALITY, _DESCRIPTION = "0008,0020", "0008,0060", "0008,103e"


def series_value(db, series_uid: str, tag: str) -> str:
    """A tag of a series' first file in Slicer's DICOM database ("" when absent)."""
    files = list(db.filesForSeries(series_uid))
    return str(db.fileValue(files[0], tag)).strip() if files else ""


def interval_days_between(db, prior_series_uid: str, current_series_uid: str) -> Optional[int]:
    """Days from the prior series' StudyDate to the current one's; None when either is unknown.

    Negative when the "prior" is the later study (the caller refuses that: swapped volumes).
    """
    import datetime as dt

    dates = []
    for uid in (prior_series_uid, current_series_uid):
        text = series_value(db, uid, _STUDY_DATE) if uid else ""
        try:
            dates.append(dt.datetime.strptime(text[:8], "%Y%m%d").date())
        except ValueError:
            return None
    return (dates[1] - dates[0]).days


def prior_series_for(db, current_series_uid: str, modality: str = "CT") -> List[Dict[str, str]]:
    """The same patient's series from studies dated before the current series' study, newest first.

    ``db`` is ``slicer.dicomDatabase`` (``studyForSeries``, ``patientForStudy``,
    ``studiesForPatient``, ``seriesForStudy``, ``filesForSeries``, ``fileValue``). Each entry:
    ``{"series_uid", "study_uid", "study_date" (YYYYMMDD), "description"}``. Studies without a
    StudyDate cannot be ordered and are left out.
    """
    current_study = db.studyForSeries(current_series_uid)
    if not current_study:
        raise ValueError(f"series {current_series_uid!r} is not in the DICOM database")
    current_date = series_value(db, current_series_uid, _STUDY_DATE)
    if not current_date:
        raise ValueError("the current series has no StudyDate, so no study can be called earlier")
    patient = db.patientForStudy(current_study)
    found = []
    for study in db.studiesForPatient(patient):
        if study == current_study:
            continue
        for series in db.seriesForStudy(study):
            date = series_value(db, series, _STUDY_DATE)
            if not date or date >= current_date:
                continue
            if modality and series_value(db, series, _MODALITY) != modality:
                continue
            found.append({"series_uid": str(series), "study_uid": str(study), "study_date": date,
                          "description": series_value(db, series, _DESCRIPTION)})
    return sorted(found, key=lambda e: e["study_date"], reverse=True)
