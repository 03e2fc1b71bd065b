"""Findings: the result of detection on one scan (schema ``lesion-detector/findings`` v1.1; reads 1.0).

Every exporter reads this object; its dictionary form is the findings JSON documented in
``docs/architecture.md`` and ``docs/findings.schema.json``. World coordinates are LPS mm.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from numbers import Real
from typing import Any, Dict, List, Mapping, Optional

SCHEMA_NAME = "lesion-detector/findings"
SCHEMA_VERSION = "1.1"   # 1.1 adds the optional characterization / lung_rads keys
REVIEW_STATES = ("unreviewed", "accepted", "rejected")


@dataclass
class Candidate:
    """One detected lesion candidate.

    ``center_lps`` is ``[x, y, z]`` in LPS mm; ``diameter_mm`` the predicted diameter;
    ``score`` the mean of ``score_rpn`` and ``score_fprn`` (paper, section III-C);
    ``rank`` 1 = highest score; ``id`` a stable label (``"N<rank>"`` at detection time).
    ``characterization``: set by :func:`LesionDetectorLib.characterization.characterize`
    (``type``, ``calcified``, ``volume_ml``, ``long_axis_mm``, ``short_axis_mm``,
    ``mean_diameter_mm``, ``solid_component_mm``, ``mean_hu``, ``lung_rads`` ...), else None.
    """
    id: str
    rank: int
    center_lps: List[float]
    diameter_mm: float
    score: float
    score_rpn: float
    score_fprn: float
    review: str = "unreviewed"
    characterization: Optional[Dict[str, Any]] = None

    def __post_init__(self) -> None:
        if self.review not in REVIEW_STATES:
            raise ValueError(f"review must be one of {REVIEW_STATES}, got {self.review!r}")
        self.center_lps = [float(v) for v in self.center_lps]
        if len(self.center_lps) != 3:
            raise ValueError("center_lps must have 3 coordinates (x, y, z LPS mm)")
        # NaN / infinity would make the findings JSON invalid and point Slicer nowhere.
        numbers = {"center_lps": self.center_lps, "diameter_mm": [self.diameter_mm], "score": [self.score],
                   "score_rpn": [self.score_rpn], "score_fprn": [self.score_fprn]}
        for name, values in numbers.items():
            if not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                raise ValueError(f"candidate {self.id}: {name} must be finite numbers, got {values}")


@dataclass
class Findings:
    """Ranked candidates, patient flag and provenance of one scan.

    ``volume``: ``{source, series_uid, shape_zyx, spacing, origin, direction}`` (ITK order,
    direction flat row-major 9-tuple); ``model``: ``{name, version, sha256}``;
    ``provenance``: ``{library_version, torch_version, device, op_backend, date, notes}``;
    ``operating_point``: ``{name, threshold}``; ``patient_flag``: see
    :func:`LesionDetectorLib.inference.patient_flag.patient_flag`; ``timings_s`` per stage.
    """
    candidates: List[Candidate]
    patient_flag: Dict[str, Any]
    model: Dict[str, Any]
    volume: Dict[str, Any]
    provenance: Dict[str, Any]
    operating_point: Dict[str, Any]
    timings_s: Dict[str, float] = field(default_factory=dict)
    lung_rads: Optional[Dict[str, Any]] = None      # patient level: {category, finding_id}

    def __len__(self) -> int:
        return len(self.candidates)

    def __iter__(self):
        return iter(self.candidates)

    @property
    def series_uid(self) -> Optional[str]:
        return self.volume.get("series_uid")

    def candidate(self, candidate_id: str) -> Candidate:
        for c in self.candidates:
            if c.id == candidate_id:
                return c
        raise KeyError(f"no candidate with id {candidate_id!r}")

    def set_review(self, candidate_id: str, state: str) -> None:
        """Record a reader's decision (``accepted`` / ``rejected`` / ``unreviewed``)."""
        if state not in REVIEW_STATES:
            raise ValueError(f"review must be one of {REVIEW_STATES}, got {state!r}")
        self.candidate(candidate_id).review = state

    def to_dict(self) -> Dict[str, Any]:
        doc = {
            "schema": SCHEMA_NAME,
            "schema_version": SCHEMA_VERSION,
            "volume": copy.deepcopy(self.volume),
            "model": copy.deepcopy(self.model),
            "provenance": copy.deepcopy(self.provenance),
            "operating_point": copy.deepcopy(self.operating_point),
            "patient_flag": copy.deepcopy(self.patient_flag),
            "timings_s": dict(self.timings_s),
            "candidates": [_candidate_dict(c) for c in self.candidates],
        }
        if self.lung_rads is not None:
            doc["lung_rads"] = copy.deepcopy(self.lung_rads)
        return doc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Findings":
        if data.get("schema") != SCHEMA_NAME:
            raise ValueError(f"not a findings document (schema {data.get('schema')!r}, expected {SCHEMA_NAME!r})")
        major = str(data.get("schema_version", "")).split(".")[0]
        if major != SCHEMA_VERSION.split(".")[0]:
            raise ValueError(f"findings schema version {data.get('schema_version')!r} is not supported "
                             f"(this library reads {SCHEMA_VERSION})")
        return cls(
            candidates=[Candidate(**c) for c in data["candidates"]],
            patient_flag=dict(data["patient_flag"]),
            model=dict(data["model"]),
            volume=dict(data["volume"]),
            provenance=dict(data["provenance"]),
            operating_point=dict(data["operating_point"]),
            timings_s=dict(data.get("timings_s", {})),
            lung_rads=copy.deepcopy(data.get("lung_rads")),
        )

    def summary_table(self, limit: int = 10) -> str:
        """A Markdown-style ranked table for terminals and logs."""
        flag = self.patient_flag
        thr, top = flag.get("threshold"), flag.get("max_score")
        thr_text = "n/a" if thr is None else f"{thr:.3f}"
        top_text = "n/a" if top is None else f"{top:.3f}"
        head = (f"Patient flag: {flag['status']} (operating point {flag.get('operating_point')}, "
                f"threshold {thr_text}, max score {top_text})")
        if flag.get("reason"):
            head += f"\n  {flag['reason']}"
        if self.lung_rads is not None:
            lr = self.lung_rads
            head += (f"\nLung-RADS v2022 (baseline, computed): {lr.get('category')}"
                     + (f" from {lr['finding_id']}" if lr.get("finding_id") else " (no characterized nodule)"))
        lines = [head, "", "| rank | id | x (L) | y (P) | z (S) | diam mm | score | rpn | fprn | review "
                           "| type | mean diam mm | vol mL | Lung-RADS |",
                 "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---|"]
        for c in self.candidates[:limit]:
            x, y, z = c.center_lps
            ch = c.characterization or {}
            kind = ch.get("type") or "-"
            if ch.get("calcified"):
                kind += " (calcified)"
            size = "-" if ch.get("mean_diameter_mm") is None else f"{ch['mean_diameter_mm']:.1f}"
            vol = "-" if ch.get("volume_ml") is None else f"{ch['volume_ml']:.3f}"
            lines.append(f"| {c.rank} | {c.id} | {x:.1f} | {y:.1f} | {z:.1f} | {c.diameter_mm:.1f} | "
                         f"{c.score:.3f} | {c.score_rpn:.3f} | {c.score_fprn:.3f} | {c.review} "
                         f"| {kind} | {size} | {vol} | {ch.get('lung_rads') or '-'} |")
        if len(self.candidates) > limit:
            lines.append(f"... {len(self.candidates) - limit} more candidates in the exports")
        if not self.candidates:
            lines.append("| - | no candidates | | | | | | | | | | | | |")
        return "\n".join(lines)


def _candidate_dict(c: Candidate) -> Dict[str, Any]:
    d = asdict(c)
    if d.get("characterization") is None:      # a 1.0-shaped candidate stays 1.0-shaped
        d.pop("characterization", None)
    return d
