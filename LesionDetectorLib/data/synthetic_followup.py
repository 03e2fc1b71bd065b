"""The same synthetic patient at two time points, with known nodule changes (follow-up tests).

:func:`generate_followup` draws a scan with :func:`.synthetic.generate_scan` (the prior; its
own nodules stay the same at both time points) and then, in that scan's array:

* adds a few LIDC-shaped nodules whose size changes by a known amount between the time points:
  ``grown`` (mean diameter + 2.5 to 5 mm), ``shrunk`` (- 2.5 to 4 mm), ``stable`` (same), ``new``
  (current only) and ``resolved`` (prior only). Each is rendered by the generator's own
  renderer at both time points with the same random stream (same orientation and density), the
  LIDC mask scaled about its centre for the size change, plus the scan's noise level inside it;
* re-images the second time point: the patient is moved (rotation of 2-6 degrees about each
  axis, translation of 5-20 mm), breathes in differently (scaling of 0.95-1.05 cranio-caudally
  and 0.98-1.02 in-plane about the lungs' centre) and is scanned with another slice spacing and
  field of view; the current volume is resampled (linear) from the second time point through
  that world transform.

Truth (``SyntheticFollowup.truth``): one entry per nodule with its true status, the prior and
current centres (LPS mm of each scan) and true mean diameters (the LIDC readers' mean of the
shape, times the scale). ``prior_to_current`` is the exact world transform. Both volumes carry a
``StudyDate`` ``interval_days`` apart.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from ..coordinates import Geometry, from_sitk, index_to_world, to_sitk
from ..volume import Volume
from .lidc_shapes import load_shape_library
from .synthetic import _Placer, _render_nodule, generate_scan

if TYPE_CHECKING:
    from ..findings import Findings

CHANGES = ("grown", "shrunk", "stable", "new", "resolved")
PRIOR_DATE = _dt.date(2025, 3, 4)


@dataclass
class SyntheticFollowup:
    prior: Volume
    current: Volume
    truth: List[Dict[str, Any]]
    interval_days: int
    prior_to_current_matrix: np.ndarray        # 4x4 homogeneous, prior LPS -> current LPS
    info: Dict[str, Any] = field(default_factory=dict)

    def prior_to_current(self, points_lps: np.ndarray) -> np.ndarray:
        p = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
        return p @ self.prior_to_current_matrix[:3, :3].T + self.prior_to_current_matrix[:3, 3]


def _rotation(angles_rad) -> np.ndarray:
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _pose(rng: np.random.Generator, center_lps: np.ndarray, moved: bool, breath_hold: bool) -> np.ndarray:
    """4x4 prior -> current world transform: breath-hold scaling about the lungs, rotation, shift."""
    if not moved:
        return np.eye(4)
    scale = np.diag([rng.uniform(0.98, 1.02), rng.uniform(0.98, 1.02), rng.uniform(0.95, 1.05)])
    if not breath_hold:
        scale = np.eye(3)
    rot = _rotation(np.radians(rng.uniform(2.0, 6.0, 3) * rng.choice([-1.0, 1.0], 3)))
    shift = rng.uniform(5.0, 20.0, 3) * rng.choice([-1.0, 1.0], 3)
    a = rot @ scale
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = center_lps - a @ center_lps + shift
    return m


def _current_grid(rng: np.random.Generator, prior: Volume, m: np.ndarray, size: str) -> Geometry:
    """Another slice spacing and field of view around the moved patient (axis-aligned)."""
    sp_prior = prior.spacing
    if size == "small":
        sp = np.array([sp_prior[0], sp_prior[1], rng.uniform(1.6, 3.2)])
    else:
        sp = np.array([sp_prior[0] * rng.uniform(0.9, 1.1)] * 2 + [float(rng.choice([0.8, 1.0, 1.25, 2.0, 2.5]))])
    g = Geometry.of(prior)
    corners = np.array([[i, j, k] for i in (0, g.shape_zyx[2] - 1) for j in (0, g.shape_zyx[1] - 1)
                        for k in (0, g.shape_zyx[0] - 1)], float)
    world = g.origin + (corners * g.spacing) @ g.direction.T
    world = world @ m[:3, :3].T + m[:3, 3]
    lo, hi = world.min(0), world.max(0)
    # Field of view: the in-plane extent of the prior; in z, only what the moved prior covers
    # everywhere (no air from outside the prior's slab next to the trachea), trimmed by up to 10 mm.
    center = (lo + hi) / 2
    ext_xy = np.asarray(g.shape_zyx[:0:-1]) * g.spacing[:2]
    z_sorted = np.sort(world[:, 2])
    z_lo, z_hi = z_sorted[3] + rng.uniform(0, 10.0), z_sorted[4] - rng.uniform(0, 10.0)
    n = [int(np.ceil(ext_xy[0] / sp[0])), int(np.ceil(ext_xy[1] / sp[1])), int(np.ceil((z_hi - z_lo) / sp[2]))]
    origin = np.array([center[0] - (n[0] - 1) * sp[0] / 2, center[1] - (n[1] - 1) * sp[1] / 2, z_lo])
    return Geometry((n[2], n[1], n[0]), sp, origin, np.eye(3))


def generate_followup(seed: int, index: int = 0, size: str = "small", interval_days: int = 365,
                      changes: Optional[List[str]] = None, moved: bool = True,
                      breath_hold: bool = True) -> SyntheticFollowup:
    """Prior and current scans of one synthetic patient (deterministic in ``(seed, index)``).

    ``changes``: the added nodules' statuses (default: one of each of :data:`CHANGES` plus one
    more ``grown``); ``moved=False`` keeps pose, breath-hold and grid (only the nodules change);
    ``breath_hold=False`` makes the move rigid (rotation + translation + another grid).
    """
    library = load_shape_library()
    scan = generate_scan(seed, index, size, library)
    rng = np.random.default_rng([seed, index, 0xF011])
    changes = list(changes) if changes is not None else ["grown", "shrunk", "stable", "new", "resolved", "grown"]
    bad = [c for c in changes if c not in CHANGES]
    if bad:
        raise ValueError(f"unknown change(s) {bad}; choose from {CHANGES}")
    sp = scan.spacing[::-1].copy()                                      # array mm per index (z, y, x)
    lung = scan.lung_labels > 0
    lung_pts = np.argwhere(lung)[rng.choice(int(lung.sum()), size=min(20000, int(lung.sum())), replace=False)] * sp
    placer = _Placer(rng, lung, sp, lung_pts.astype(np.float64), [])
    for n in scan.nodules:
        placer.taken.append((np.asarray(n.center_zyx) * sp, n.diameter_mm / 2))

    truth: List[Dict[str, Any]] = []
    for n in scan.nodules:
        truth.append(dict(status="stable", added=False, category=n.category, prior_zyx=np.asarray(n.center_zyx),
                          current_zyx=np.asarray(n.center_zyx), prior_diameter_mm=n.diameter_mm,
                          current_diameter_mm=n.diameter_mm))
    hu_prior = scan.hu.astype(np.float32)
    hu_current = hu_prior.copy()
    noise_std = float(scan.info["noise_std"])
    solid_pool = np.nonzero(library.centroid_inside & (library.diameter_mm >= 6.0) & (library.diameter_mm <= 12.0)
                            & (library.calcification == 6) & (library.texture >= 3.0))[0]
    for k, change in enumerate(changes):
        shape_index = int(rng.choice(solid_pool))
        nod = library[shape_index]
        d0 = nod.diameter_mm
        if change == "grown":
            d_prior, d_current = d0, d0 + rng.uniform(2.5, 5.0)
        elif change == "shrunk":
            d_prior, d_current = d0 + rng.uniform(2.5, 4.0), d0
        else:
            d_prior = d_current = d0
        d_max = max(d_prior, d_current)
        # The generator's placement radius, for the larger of the two renderings.
        radius = 0.5 * max(d_max, 0.5 * nod.grid_mm * d_max / d0 * float(max(nod.mask.shape) - 2))
        center = placer.place(radius, "isolated")
        if center is None:
            continue
        entry = dict(status=change, added=True, category=nod.category, prior_zyx=None, current_zyx=None,
                     prior_diameter_mm=None, current_diameter_mm=None, lidc_shape_index=shape_index)
        for which, hu, d in (("prior", hu_prior, d_prior), ("current", hu_current, d_current)):
            if (which == "prior" and change == "new") or (which == "current" and change == "resolved"):
                continue
            before = hu.copy()
            # Same stream at both time points: same orientation and density; the scale sets the size.
            render_rng = np.random.default_rng([seed, index, 0xF011, k])
            centroid = _render_nodule(render_rng, hu, sp, nod.mask, nod.grid_mm * d / d0, center, nod.category,
                                      -850.0)
            changed = hu != before
            hu[changed] += rng.normal(0.0, noise_std, int(changed.sum())).astype(np.float32)
            entry[f"{which}_zyx"] = centroid / sp
            entry[f"{which}_diameter_mm"] = float(d)
        truth.append(entry)

    prior = Volume(hu_prior, scan.spacing, scan.origin, scan.direction,
                   {"SeriesInstanceUID": scan.series_uid, "Modality": "CT", "source": "synthetic follow-up prior",
                    "StudyDate": PRIOR_DATE.strftime("%Y%m%d")})
    second = Volume(hu_current, scan.spacing, scan.origin, scan.direction)
    lung_center = index_to_world(prior, np.argwhere(lung).mean(0))
    m = _pose(rng, lung_center, moved, breath_hold)
    if moved:
        grid = _current_grid(rng, prior, m, size)
        inverse = np.linalg.inv(m)
        t = sitk.AffineTransform(3)
        t.SetMatrix(tuple(inverse[:3, :3].ravel()))
        t.SetTranslation(tuple(inverse[:3, 3]))
        ref = sitk.Image([int(v) for v in grid.shape_zyx[::-1]], sitk.sitkFloat32)
        ref.SetSpacing(tuple(grid.spacing))
        ref.SetOrigin(tuple(grid.origin))
        ref.SetDirection(tuple(grid.direction.ravel()))
        current_img = sitk.Resample(to_sitk(second), ref, t, sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
        current = from_sitk(current_img)
    else:
        current = second
    current.metadata.update({"SeriesInstanceUID": scan.series_uid + ".2", "Modality": "CT",
                             "source": "synthetic follow-up current",
                             "StudyDate": (PRIOR_DATE + _dt.timedelta(days=int(interval_days))).strftime("%Y%m%d")})
    out_truth = []
    for i, e in enumerate(truth):
        p = None if e["prior_zyx"] is None else index_to_world(prior, np.asarray(e["prior_zyx"])[None])[0]
        c = None if e["current_zyx"] is None else index_to_world(prior, np.asarray(e["current_zyx"])[None])[0]
        c = None if c is None else (m[:3, :3] @ c + m[:3, 3])
        out_truth.append({"id": f"T{i + 1}", "status": e["status"], "added": e["added"], "category": e["category"],
                          "prior_center_lps": None if p is None else p.tolist(),
                          "current_center_lps": None if c is None else c.tolist(),
                          "prior_diameter_mm": e["prior_diameter_mm"], "current_diameter_mm": e["current_diameter_mm"]})
    info = {"seed": seed, "index": index, "size": size, "moved": moved, "breath_hold": breath_hold,
            "noise_std": noise_std,
            "prior_spacing": scan.spacing.tolist(), "current_spacing": current.spacing.tolist()}
    return SyntheticFollowup(prior, current, out_truth, int(interval_days), m, info)


def truth_findings(pair: SyntheticFollowup, which: str) -> "Findings":
    """Findings holding the true nodules of the ``prior`` or ``current`` scan (score 1), for tests and
    benchmarks that measure registration, measurement and matching without detection errors.
    ``diameter_mm`` is the true diameter (the detector's would be an estimate too)."""
    from ..coordinates import Geometry
    from ..findings import Candidate, Findings

    if which not in ("prior", "current"):
        raise ValueError("which must be 'prior' or 'current'")
    volume = pair.prior if which == "prior" else pair.current
    cands = []
    for t in pair.truth:
        center, d = t[f"{which}_center_lps"], t[f"{which}_diameter_mm"]
        if center is None:
            continue
        cands.append(Candidate(t["id"], len(cands) + 1, center, float(d), 1.0, 1.0, 1.0))
    g = Geometry.of(volume).to_dict()
    return Findings(cands, {"status": "unavailable", "operating_point": None, "threshold": None,
                            "max_score": 1.0 if cands else None, "reason": "synthetic truth, not a detection"},
                    {"name": "synthetic-truth", "version": "0", "sha256": "0" * 64},
                    {"source": volume.metadata.get("source"), "series_uid": volume.metadata.get("SeriesInstanceUID"),
                     "frame_of_reference_uid": None, **g},
                    {"library_version": "", "torch_version": "none", "device": "none", "op_backend": "none",
                     "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     "notes": ["truth of a synthetic follow-up pair"]},
                    {"name": None, "threshold": None},
                    {"read": 0.0, "preprocess": 0.0, "model": 0.0, "postprocess": 0.0, "total": 0.0})
