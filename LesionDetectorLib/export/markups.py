"""Slicer markups point list (``.mrk.json``, markups schema v1.0.3, LPS mm).

One control point per candidate: label ``"N1 0.93"`` (id and score), a description with
score / diameter / RPN / FPRN / review state, ``locked`` so review clicks do not move it;
``selected`` is False for rejected candidates (Slicer draws them in the unselected color).
The patient flag, operating point and model identity go into the node's ``measurements``
as static measurements: Slicer's ``vtkMRMLMarkupsJsonStorageNode`` does not store node
attributes, but it reads and writes measurements with name, value and description
(checked against slicer-core in Testing/Lib/test_export_formats.py).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

from ..findings import Findings
from .atomic import PathLike, atomic_write_text

MARKUPS_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
                  "Resources/Schema/markups-schema-v1.0.3.json#")
_FLAG_VALUE = {"positive": 1.0, "likely negative": 0.0, "unavailable": -1.0}


def control_point_description(c) -> str:
    return (f"score {c.score:.3f}; diameter {c.diameter_mm:.1f} mm; RPN {c.score_rpn:.3f}; "
            f"FPRN {c.score_fprn:.3f}; rank {c.rank}; review {c.review}")


def _measurements(findings: Findings) -> List[Dict[str, Any]]:
    flag = findings.patient_flag
    thr = flag.get("threshold")
    flag_text = (f"{flag['status']} (operating point {flag.get('operating_point')}, "
                 f"threshold {'n/a' if thr is None else format(thr, '.4f')}, max score "
                 f"{'n/a' if flag.get('max_score') is None else format(flag['max_score'], '.4f')})")
    if flag.get("reason"):
        flag_text += f": {flag['reason']}"
    model = findings.model
    prov = findings.provenance
    # enabled=False: these are static facts of the detection, Slicer must not recompute them.
    return [
        {"name": "patient flag", "enabled": False, "value": _FLAG_VALUE[flag["status"]], "units": "",
         "description": flag_text, "printFormat": ""},
        {"name": "operating point threshold", "enabled": False,
         "value": float(thr) if thr is not None else -1.0, "units": "",
         "description": str(findings.operating_point.get("name")), "printFormat": "%-#4.4g"},
        {"name": "model", "enabled": False, "value": 0.0, "units": "",
         "description": f"{model['name']} {model['version']} sha256:{model['sha256']}", "printFormat": ""},
        {"name": "provenance", "enabled": False, "value": 0.0, "units": "",
         "description": (f"lesion-detector {prov.get('library_version')}; torch {prov.get('torch_version')}; "
                         f"device {prov.get('device')}; op {prov.get('op_backend')}; {prov.get('date')}"),
         "printFormat": ""},
    ]


def markups_document(findings: Findings) -> Dict[str, Any]:
    points = []
    for c in findings.candidates:
        points.append({
            "id": c.id,
            "label": f"{c.id} {c.score:.2f}",
            "description": control_point_description(c),
            "associatedNodeID": "",
            "position": [float(v) for v in c.center_lps],
            "orientation": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            "selected": c.review != "rejected",
            "locked": True,
            "visibility": True,
            "positionStatus": "defined",
        })
    return {"@schema": MARKUPS_SCHEMA,
            "markups": [{
                "type": "Fiducial",
                "coordinateSystem": "LPS",
                "coordinateUnits": "mm",
                "locked": True,
                "fixedNumberOfControlPoints": True,
                "labelFormat": "N%d",
                "lastUsedControlPointNumber": len(points),
                "controlPoints": points,
                "measurements": _measurements(findings),
            }]}


def write_markups_json(findings: Findings, path: PathLike) -> Path:
    """Write the candidates as a Slicer point list (atomically). Returns the path."""
    try:
        text = json.dumps(markups_document(findings), indent=4, allow_nan=False)
    except ValueError as exc:  # bare NaN / Infinity would make the file unreadable as JSON
        raise ValueError(f"the markups hold a NaN or infinite number, which JSON cannot store: {exc}") from exc
    return atomic_write_text(path, text + "\n")
