"""Findings JSON (schema ``lesion-detector/findings`` v1.1, ``docs/findings.schema.json``).

:func:`validate_findings_dict` is a small hand-written checker of that schema (no
``jsonschema`` dependency); :func:`read_findings_json` validates before building
:class:`~LesionDetectorLib.findings.Findings`.
"""
from __future__ import annotations

import json
import math
from numbers import Real
from pathlib import Path
from typing import Any, List, Mapping

from ..characterization.lung_rads import CATEGORY_ORDER, NODULE_TYPES
from ..findings import REVIEW_STATES, SCHEMA_NAME, SCHEMA_VERSION, Findings
from ..atomic import PathLike, atomic_write_text

FLAG_STATES = ("positive", "likely negative", "unavailable")


def _number_or_none(v: Any) -> bool:
    return v is None or _is_number(v)


def _is_number(v: Any) -> bool:
    """A finite number: NaN and infinity are not JSON (``json`` would write bare ``NaN``)."""
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def validate_findings_dict(doc: Mapping[str, Any]) -> List[str]:
    """Problems found in ``doc`` against schema v1.x (empty list = valid; 1.0 files are valid 1.1)."""
    errors: List[str] = []

    def need(obj: Any, where: str, keys) -> bool:
        if not isinstance(obj, Mapping):
            errors.append(f"{where}: must be an object")
            return False
        for k in keys:
            if k not in obj:
                errors.append(f"{where}: missing {k!r}")
        return True

    need(doc, "document", ("schema", "schema_version", "volume", "model", "provenance",
                           "operating_point", "patient_flag", "timings_s", "candidates"))
    if errors:
        return errors
    if doc["schema"] != SCHEMA_NAME:
        errors.append(f"schema: expected {SCHEMA_NAME!r}")
    if str(doc["schema_version"]).split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        errors.append(f"schema_version: expected {SCHEMA_VERSION}")
    vol = doc["volume"]
    if need(vol, "volume", ("source", "series_uid", "shape_zyx", "spacing", "origin", "direction")):
        for key, n in (("shape_zyx", 3), ("spacing", 3), ("origin", 3), ("direction", 9)):
            v = vol.get(key)
            if not (isinstance(v, list) and len(v) == n and all(_is_number(x) for x in v)):
                errors.append(f"volume.{key}: must be {n} numbers")
    if need(doc["model"], "model", ("name", "version", "sha256")):
        sha = doc["model"].get("sha256")
        if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
            errors.append("model.sha256: must be 64 lowercase hex digits")
    need(doc["provenance"], "provenance", ("library_version", "torch_version", "device", "op_backend", "date"))
    op = doc["operating_point"]
    if need(op, "operating_point", ("name", "threshold")) and not _number_or_none(op.get("threshold")):
        errors.append("operating_point.threshold: must be a number or null")
    flag = doc["patient_flag"]
    if need(flag, "patient_flag", ("status", "operating_point", "threshold", "max_score")):
        if flag.get("status") not in FLAG_STATES:
            errors.append(f"patient_flag.status: must be one of {FLAG_STATES}")
        if flag.get("status") == "unavailable" and not flag.get("reason"):
            errors.append("patient_flag.reason: required when status is 'unavailable'")
        if flag.get("status") != "unavailable" and not _is_number(flag.get("threshold")):
            errors.append("patient_flag.threshold: must be a number unless status is 'unavailable'")
        if not _number_or_none(flag.get("max_score")):
            errors.append("patient_flag.max_score: must be a number or null")
    timings = doc["timings_s"]
    if need(timings, "timings_s", ("read", "preprocess", "model", "postprocess", "total")):
        for k, v in timings.items():
            if not _is_number(v):
                errors.append(f"timings_s.{k}: must be a number")
    cands = doc["candidates"]
    if not isinstance(cands, list):
        errors.append("candidates: must be an array")
        return errors
    for i, c in enumerate(cands):
        where = f"candidates[{i}]"
        if not need(c, where, ("id", "rank", "center_lps", "diameter_mm", "score", "score_rpn",
                               "score_fprn", "review")):
            continue
        extra = set(c) - {"id", "rank", "center_lps", "diameter_mm", "score", "score_rpn", "score_fprn", "review",
                          "characterization"}
        if extra:
            errors.append(f"{where}: unknown keys {sorted(extra)}")
        if not isinstance(c.get("id"), str):
            errors.append(f"{where}.id: must be a string")
        if not (isinstance(c.get("rank"), int) and c.get("rank", 0) >= 1):
            errors.append(f"{where}.rank: must be an integer >= 1")
        p = c.get("center_lps")
        if not (isinstance(p, list) and len(p) == 3 and all(_is_number(x) for x in p)):
            errors.append(f"{where}.center_lps: must be 3 numbers [x, y, z]")
        if not (_is_number(c.get("diameter_mm")) and c["diameter_mm"] >= 0):
            errors.append(f"{where}.diameter_mm: must be a number >= 0")
        for k in ("score", "score_rpn", "score_fprn"):
            if not (_is_number(c.get(k)) and 0.0 <= c[k] <= 1.0):
                errors.append(f"{where}.{k}: must be a probability in [0, 1]")
        if c.get("review") not in REVIEW_STATES:
            errors.append(f"{where}.review: must be one of {REVIEW_STATES}")
        if c.get("characterization") is not None:
            errors.extend(_characterization_errors(c["characterization"], f"{where}.characterization"))
    if doc.get("lung_rads") is not None:
        lr = doc["lung_rads"]
        if need(lr, "lung_rads", ("category", "finding_id")):
            if lr.get("category") not in CATEGORY_ORDER:
                errors.append(f"lung_rads.category: must be one of {CATEGORY_ORDER}")
            if not (lr.get("finding_id") is None or isinstance(lr.get("finding_id"), str)):
                errors.append("lung_rads.finding_id: must be a candidate id or null")
    return errors


_CHARACTERIZATION_KEYS = ("type", "calcified", "volume_ml", "long_axis_mm", "short_axis_mm", "mean_diameter_mm",
                          "solid_component_mm", "mean_hu", "lung_rads")


def _characterization_errors(ch: Any, where: str) -> List[str]:
    """Schema 1.1 ``characterization`` block: the nine keys of the issue, numbers or null."""
    if not isinstance(ch, Mapping):
        return [f"{where}: must be an object or null"]
    errors = [f"{where}: missing {k!r}" for k in _CHARACTERIZATION_KEYS if k not in ch]
    if ch.get("type") not in (*NODULE_TYPES, None):
        errors.append(f"{where}.type: must be one of {NODULE_TYPES} or null")
    if not isinstance(ch.get("calcified"), (bool, type(None))):
        errors.append(f"{where}.calcified: must be true, false or null")
    for k in ("volume_ml", "long_axis_mm", "short_axis_mm", "mean_diameter_mm", "solid_component_mm"):
        if not (ch.get(k) is None or (_is_number(ch[k]) and ch[k] >= 0)):
            errors.append(f"{where}.{k}: must be a number >= 0 or null")
    if not _number_or_none(ch.get("mean_hu")):
        errors.append(f"{where}.mean_hu: must be a number or null")
    if ch.get("lung_rads") not in (*CATEGORY_ORDER, None):
        errors.append(f"{where}.lung_rads: must be one of {CATEGORY_ORDER} or null")
    return errors


def write_findings_json(findings: Findings, path: PathLike) -> Path:
    """Write (atomically) the findings document; refuses to write an invalid one."""
    doc = findings.to_dict()
    problems = validate_findings_dict(doc)
    if problems:
        raise ValueError(f"findings do not match schema v{SCHEMA_VERSION}: " + "; ".join(problems))
    try:
        text = json.dumps(doc, indent=2, allow_nan=False)
    except ValueError as exc:  # NaN / infinity in an extra field
        raise ValueError(f"findings hold a NaN or infinite number, which JSON cannot store: {exc}") from exc
    return atomic_write_text(path, text + "\n")


def read_findings_json(path: PathLike) -> Findings:
    """Read and validate a findings JSON file."""
    def refuse_constant(name: str):
        raise ValueError(f"{path}: not valid JSON ({name} is not a JSON number)")

    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=refuse_constant)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a findings file (not UTF-8 text: {exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    problems = validate_findings_dict(doc)
    if problems:
        raise ValueError(f"{path}: not a valid findings file: " + "; ".join(problems))
    return Findings.from_dict(doc)
