"""Slicer markups point list (``.mrk.json``, markups schema v1.0.3, LPS mm): writer and parser.

This module is the one findings <-> markups mapping. The library's ``.mrk.json`` writer
and the Slicer module (``LesionDetector/LesionDetectorLogicLib/findings_scene.py``) both
encode a candidate's numbers and review state with :func:`control_point_description`,
read them back with :func:`parse_description` / :func:`review_from_description`, and
colour a point with :func:`is_selected`, so a file written by ``lesion-detector detect``
and reviewed anywhere keeps its decisions when the module loads it.

Control point description: ``"; "``-separated parts, each ``<key> <value>`` with a key of
one word (no spaces; use hyphens) and free text after it, e.g.
``score 0.930; diameter 8.4 mm; RPN 0.910; FPRN 0.950; rank 1; review accepted``.
Writers may add parts (characterization: ``type``, ``size``, ``Lung-RADS`` ...);
readers keep unknown parts and ignore what they cannot read, and also accept the
``" | review: accepted"`` form older module versions wrote.

``selected`` means "a finding at the run's operating point after review": accepted
candidates always, rejected ones never, unreviewed ones when their score reaches the
operating-point threshold (or always when the card has no threshold). Slicer draws
selected points in the display node's selected colour.

One control point per candidate: id = candidate id, label ``"N1 0.93"`` (id and score),
``locked`` so review clicks do not move it. The patient flag, operating point and model
identity go into the node's ``measurements`` as static measurements, and so does the
whole findings document (``"lesion-detector findings"``) so that loading the file gives
back every number at full precision: Slicer's ``vtkMRMLMarkupsJsonStorageNode`` does
not store node attributes, but it reads and writes measurements with name, value and
description (checked against slicer-core in Testing/Lib/test_export_formats.py).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..findings import REVIEW_STATES, Candidate, Findings
from ..atomic import PathLike, atomic_write_text

MARKUPS_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
                  "Resources/Schema/markups-schema-v1.0.3.json#")
FINDINGS_MEASUREMENT = "lesion-detector findings"
_FLAG_VALUE = {"positive": 1.0, "likely negative": 0.0, "unavailable": -1.0}
_PART_SPLIT = re.compile(r"\s*[;|]\s*")


def _get(candidate, key, default=None):
    if isinstance(candidate, Mapping):
        return candidate.get(key, default)
    return getattr(candidate, key, default)


def description_parts(candidate, review: Optional[str] = None) -> List[Tuple[str, str]]:
    """``[(key, value), ...]`` of one candidate's description, in display order.

    ``candidate`` is a :class:`Candidate` or a findings-JSON candidate dict; ``review``
    overrides its review state.
    """
    parts = [("score", f"{float(_get(candidate, 'score')):.3f}"),
             ("diameter", f"{float(_get(candidate, 'diameter_mm')):.1f} mm")]
    for key, field in (("RPN", "score_rpn"), ("FPRN", "score_fprn")):
        value = _get(candidate, field)
        if value is not None:
            parts.append((key, f"{float(value):.3f}"))
    if _get(candidate, "rank") is not None:
        parts.append(("rank", str(int(_get(candidate, "rank")))))
    ch = _get(candidate, "characterization")
    if ch and ch.get("type"):
        parts.append(("type", ch["type"] + (" calcified" if ch.get("calcified") else "")))
        parts.append(("size", f"{float(ch['mean_diameter_mm']):.1f} mm"))
        parts.append(("volume", f"{float(ch['volume_ml']) * 1000.0:.0f} mm3"))
        if ch.get("solid_component_mm") is not None:
            parts.append(("solid", f"{float(ch['solid_component_mm']):.1f} mm"))
        parts.append(("Lung-RADS", str(ch.get("lung_rads"))))
    parts.append(("review", review or _get(candidate, "review", "unreviewed") or "unreviewed"))
    return parts


def join_description(parts) -> str:
    return "; ".join(f"{key} {value}".rstrip() for key, value in parts)


def control_point_description(candidate, review: Optional[str] = None) -> str:
    """The control point description of ``candidate`` (format in the module docstring)."""
    return join_description(description_parts(candidate, review))


def parse_description(text: Optional[str]) -> Dict[str, str]:
    """Description -> ``{key: value}`` of every part, known or not (later parts win).

    Never raises: text that is not ``key value`` becomes a key with an empty value.
    """
    out: Dict[str, str] = {}
    for part in _PART_SPLIT.split(text or ""):
        part = part.strip()
        if not part:
            continue
        key, _, value = part.partition(" ")
        out[key.rstrip(":")] = value.strip().lstrip(":").strip()
    return out


def review_from_description(text: Optional[str]) -> str:
    """The review state a description records (``unreviewed`` when none or unknown)."""
    state = (parse_description(text).get("review") or "unreviewed").split()[0] if text else "unreviewed"
    return state if state in REVIEW_STATES else "unreviewed"


def with_review(text: Optional[str], state: str) -> str:
    """``text`` with its review part set to ``state``; every other part kept as written."""
    if state not in REVIEW_STATES:
        raise ValueError(f"review state must be one of {REVIEW_STATES}, got {state!r}")
    parts = []
    replaced = False
    for part in _PART_SPLIT.split(text or ""):
        part = part.strip()
        if not part:
            continue
        if part.partition(" ")[0].rstrip(":") == "review":
            if replaced:
                continue
            part, replaced = f"review {state}", True
        parts.append(part)
    if not replaced:
        parts.append(f"review {state}")
    return "; ".join(parts)


def is_selected(review: str, score: float, threshold: Optional[float]) -> bool:
    """Whether a candidate is drawn as a finding (see the module docstring)."""
    if review == "accepted":
        return True
    if review == "rejected":
        return False
    return threshold is None or float(score) >= float(threshold)


def _number(text: Optional[str]) -> Optional[float]:
    match = re.match(r"\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)", text or "")
    return float(match.group(1)) if match else None


def _flag_threshold(findings: Findings) -> Optional[float]:
    thr = findings.patient_flag.get("threshold")
    return None if thr is None else float(thr)


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
    # Reviews live in the control points (what a reader edits); the stored copy omits them
    # so that there is one place to read them from.
    stored = findings.to_dict()
    for cand in stored["candidates"]:
        cand.pop("review", None)
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
        {"name": FINDINGS_MEASUREMENT, "enabled": False, "value": float(len(findings.candidates)), "units": "",
         "description": json.dumps(stored, separators=(",", ":"), allow_nan=False), "printFormat": ""},
    ]


def markups_document(findings: Findings) -> Dict[str, Any]:
    threshold = _flag_threshold(findings)
    points = []
    for c in findings.candidates:
        points.append({
            "id": c.id,
            "label": f"{c.id} {c.score:.2f}",
            "description": control_point_description(c),
            "associatedNodeID": "",
            "position": [float(v) for v in c.center_lps],
            "orientation": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            "selected": is_selected(c.review, c.score, threshold),
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


# ------------------------------------------------------------------------------- reading

def findings_from_markups(points: List[Mapping[str, Any]], measurements: Mapping[str, Mapping[str, Any]]) -> Findings:
    """Rebuild the findings of a Lesion Detector point list, with the reviews its points record.

    ``points``: ``{"id", "label", "description", "position_lps"}`` per control point, in
    list order; ``measurements``: ``{name: {"value", "description"}}``. The Slicer module
    passes what it reads from a markups node, :func:`read_markups_json` what a file holds.

    With the ``"lesion-detector findings"`` measurement every number comes back at full
    precision and points are matched to candidates by id; points that match no candidate
    (placed by a user) are ignored. Without it (a file from an older writer) candidates
    are rebuilt from the descriptions (3 decimals) and the flag and model measurements.
    Raises ``ValueError`` naming what is missing when the list is not one of ours.
    """
    stored = measurements.get(FINDINGS_MEASUREMENT)
    if stored is not None:
        try:
            doc = json.loads(stored.get("description") or "")
        except json.JSONDecodeError as exc:
            raise ValueError(f"the '{FINDINGS_MEASUREMENT}' measurement is not findings JSON ({exc})") from exc
        by_id = {str(p.get("id")): p for p in points}
        by_label_id = {str(p.get("label") or "").split(" ")[0]: p for p in points}
        for cand in doc.get("candidates", []):
            point = by_id.get(str(cand.get("id"))) or by_label_id.get(str(cand.get("id")))
            cand["review"] = review_from_description(point.get("description")) if point else "unreviewed"
        return Findings.from_dict(doc)
    return _findings_from_parts(points, measurements)


def _findings_from_parts(points, measurements) -> Findings:
    if "patient flag" not in measurements or "model" not in measurements:
        raise ValueError("this point list was not written by Lesion Detector (no 'patient flag' / 'model' "
                         "measurements)")
    candidates = []
    for i, p in enumerate(points):
        parts = parse_description(p.get("description"))
        score, diameter = _number(parts.get("score")), _number(parts.get("diameter"))
        if score is None or diameter is None:
            continue  # a point a user placed: not a candidate
        rpn, fprn = _number(parts.get("RPN")), _number(parts.get("FPRN"))
        rank = _number(parts.get("rank"))
        cid = str(p.get("id") or "") or str(p.get("label") or "").split(" ")[0] or f"N{i + 1}"
        candidates.append(Candidate(id=cid, rank=int(rank) if rank is not None else len(candidates) + 1,
                                    center_lps=[float(v) for v in p["position_lps"]], diameter_mm=diameter,
                                    score=score, score_rpn=score if rpn is None else rpn,
                                    score_fprn=score if fprn is None else fprn,
                                    review=review_from_description(p.get("description"))))
    flag_m = measurements["patient flag"]
    status = {v: k for k, v in _FLAG_VALUE.items()}.get(float(flag_m.get("value", -1.0)), "unavailable")
    thr_m = measurements.get("operating point threshold") or {}
    thr = float(thr_m.get("value", -1.0))
    threshold = None if thr < 0 or not math.isfinite(thr) else thr
    op_name = (thr_m.get("description") or "") or None
    model_words = (measurements["model"].get("description") or "").split()
    model = {"name": model_words[0] if model_words else "unknown",
             "version": model_words[1] if len(model_words) > 1 else "",
             "sha256": next((w.split(":", 1)[1] for w in model_words if w.startswith("sha256:")), "")}
    scores = [c.score for c in candidates]
    return Findings(candidates=candidates,
                    patient_flag={"status": status, "operating_point": op_name, "threshold": threshold,
                                  "max_score": max(scores) if scores else None},
                    model=model, volume={}, provenance={"notes": "rebuilt from a .mrk.json without findings"},
                    operating_point={"name": op_name, "threshold": threshold})


def read_markups_json(path: PathLike) -> Findings:
    """The findings (with reviews) of a ``.mrk.json`` written by :func:`write_markups_json`,
    possibly reviewed and saved again by Slicer (LPS or RAS files)."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    markups = (doc.get("markups") or [None])[0]
    if not isinstance(markups, dict):
        raise ValueError(f"{path} holds no markups")
    ras = str(markups.get("coordinateSystem", "LPS")).upper() == "RAS"
    points = []
    for p in markups.get("controlPoints") or []:
        pos = [float(v) for v in p.get("position", [0.0, 0.0, 0.0])]
        if ras:  # RAS -> LPS: L and P are the negated R and A axes
            pos = [-pos[0], -pos[1], pos[2]]
        points.append({"id": p.get("id"), "label": p.get("label"), "description": p.get("description"),
                       "position_lps": pos})
    measurements = {m.get("name"): {"value": m.get("value"), "description": m.get("description")}
                    for m in markups.get("measurements") or []}
    return findings_from_markups(points, measurements)


__all__ = ["FINDINGS_MEASUREMENT", "MARKUPS_SCHEMA", "control_point_description", "description_parts",
           "findings_from_markups", "is_selected", "join_description", "markups_document", "parse_description",
           "read_markups_json", "review_from_description", "with_review", "write_markups_json"]
