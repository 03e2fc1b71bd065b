"""Follow-up comparison accuracy on synthetic pairs, and the rigid-copy self-match.

    python benchmarks/bench_followup.py [--pairs 10] [--size small] [--seed 100] [--real-ct DIR]

Each pair is :func:`LesionDetectorLib.data.synthetic_followup.generate_followup` (the same
synthetic patient a year later: nodules grown / shrunk / stable / new / resolved by known
amounts, moved by 2-6 degrees and 5-20 mm, breath-hold scaling, another slice spacing and
field of view). The findings given to the comparison are the *true* nodule centres (no
detection errors: this measures registration, measurement and matching), sized by the
characterization package exactly as ``lesion-detector compare`` does. Reported:

* matching: a true nodule is right when it lands in a pair with its own counterpart (or alone,
  as ``new`` / ``resolved``, when it has none);
* growth status (``grown`` / ``shrunk`` / ``stable``) of the nodules seen on both scans whose
  true mean diameter is >= 6 mm on either, against the truth, and the error of the measured
  diameter change;
* registration: distance between registered and true nodule positions, lung-surface residual;
* rigid-copy self-match: a rigidly moved and resampled copy of each prior scan (``changes=[]``,
  no breath-hold change), where every finding must come out ``stable`` with |d mean diameter|
  < 1.5 mm and |d volume| < 15 %; with ``--real-ct`` (a folder holding pyradiomics'
  ``lung1_image.nrrd`` / ``lung1_label.nrrd``, see ``bench_real_ct.py``) also on those real
  scans, their labelled lesion as the finding;
* with ``--real-ct-detect`` as well, the product's path on those real scans: the bundled model
  detects on the scan and on its copy (100 marks each), the characterization measures every
  mark, and ``compare`` pairs them. Reported for every paired mark, for the marks above the
  card's 4 FP/scan operating point, and for the top-ranked mark.

A nodule whose true centre lies outside the current scan (the current field of view is trimmed
in z) counts as absent there, and is left out of the self-match rows; the ids are listed
(``outside_current_fov``, ``outside_copy_fov``).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from LesionDetectorLib.characterization import characterize
from LesionDetectorLib.data.synthetic_followup import generate_followup, truth_findings
from LesionDetectorLib.followup.comparison import compare
from LesionDetectorLib.followup.registration import register_lungs


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except Exception:  # noqa: BLE001 - informational only
        return platform.processor() or "unknown"


SIZES = "characterization"
#: (seconds, findings) of each characterization call: the product's measuring cost per finding
CHAR_TIMES = []


def _measured(volume, findings):
    """Sizes as ``compare`` gets them (characterization), or the truth (``--sizes truth``: isolates
    registration and matching from measurement)."""
    if SIZES == "truth":
        from LesionDetectorLib.followup.matching import sphere_volume_ml

        for c in findings.candidates:
            c.characterization = {"type": "solid", "calcified": False, "mean_diameter_mm": c.diameter_mm,
                                  "volume_ml": sphere_volume_ml(c.diameter_mm)}
        return findings
    t0 = time.perf_counter()
    out = characterize(volume, findings, min_score=-np.inf)
    CHAR_TIMES.append((time.perf_counter() - t0, len(findings.candidates)))
    return out


def evaluate_pair(pair, doc):
    truth = {t["id"]: t for t in pair.truth}
    right, rows = 0, []
    for p in doc["pairs"]:
        cur, pri = p["current"], p["prior"]
        if cur and pri:
            ok = cur["id"] == pri["id"] and truth[cur["id"]]["prior_center_lps"] is not None
            right += 2 if ok else 0
        else:
            side = cur or pri
            t = truth[side["id"]]
            ok = (t["prior_center_lps"] is None) if cur else (t["current_center_lps"] is None)
            right += 1 if ok else 0
        if cur and pri and cur["id"] == pri["id"]:
            t = truth[cur["id"]]
            true_change = t["current_diameter_mm"] - t["prior_diameter_mm"]
            true_status = t["status"]
            rows.append({"id": cur["id"], "added": t["added"], "true_status": true_status, "status": p["status"],
                         "true_max_mm": max(t["current_diameter_mm"], t["prior_diameter_mm"]),
                         "true_change_mm": true_change, "change_mm": p["diameter_change_mm"],
                         "size_source": cur["size_source"]})
    n_items = sum((t["prior_center_lps"] is not None) + (t["current_center_lps"] is not None) for t in truth.values())
    return right, n_items, rows


def registration_error(pair, doc_reg):
    pts = np.array([t["prior_center_lps"] for t in pair.truth if t["prior_center_lps"] is not None])
    return np.linalg.norm(doc_reg.prior_to_current(pts) - pair.prior_to_current(pts), axis=1) if len(pts) else np.zeros(0)


def drop_outside_current(pair) -> list:
    """Ids of the nodules whose true current centre lies outside the current scan (its field of view
    is trimmed in z, so a nodule near the prior's end can be cut off); they count as absent from
    the current scan (their current centre and diameter become None). Returns those ids."""
    from LesionDetectorLib.coordinates import world_to_index

    shape = np.asarray(pair.current.array.shape)
    out = []
    for t in pair.truth:
        c = t["current_center_lps"]
        if c is None:
            continue
        idx = world_to_index(pair.current, np.asarray(c, float)[None])[0]
        if np.any(idx < 0) or np.any(idx > shape - 1):
            t["current_center_lps"], t["current_diameter_mm"] = None, None
            out.append(t["id"])
    return out


def self_match(prior_volume, prior_findings, moved_volume, moved_findings, skip_ids=()):
    """Rows of the rigid-copy comparison; ``skip_ids``: prior findings the copy does not show (outside
    its field of view), left out of the rows."""
    doc = compare(prior_volume, moved_volume, prior_findings, moved_findings, interval_days=365)
    out = []
    for p in doc["pairs"]:
        cur, pri = p["current"], p["prior"]
        if (cur or pri)["id"] in skip_ids:
            continue
        same = bool(cur and pri and cur["id"] == pri["id"])
        out.append({"id": (cur or pri)["id"], "status": p["status"], "same": same,
                    "d_diameter_mm": p["diameter_change_mm"], "d_volume_pct": p["volume_change_pct"],
                    "diameter_mm": (pri or cur)["mean_diameter_mm"], "size_source": (cur or pri)["size_source"],
                    "ok": same and _stable_within_bar(p)})
    return out, doc["registration"]


def _stable_within_bar(p) -> bool:
    """The bar's self-match criterion for one pair: ``stable``, |d mean diameter| < 1.5 mm, |d volume| < 15 %."""
    return (p["status"] == "stable" and p["diameter_change_mm"] is not None
            and abs(p["diameter_change_mm"]) < 1.5 and abs(p["volume_change_pct"]) < 15.0)


def _rigid_copy(volume, rng):
    """A rigidly moved copy of ``volume`` resampled on another grid (the synthetic pairs' field-of-view
    and slice-spacing rules); returns (copy, 4x4 prior -> copy world map)."""
    from LesionDetectorLib.coordinates import from_sitk, index_to_world, to_sitk
    from LesionDetectorLib.data.synthetic_followup import _current_grid, _rotation

    center = index_to_world(volume, (np.array(volume.array.shape) - 1) / 2.0)
    rot = _rotation(np.radians(rng.uniform(2, 6, 3) * rng.choice([-1, 1], 3)))
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = center - rot @ center + rng.uniform(5, 20, 3) * rng.choice([-1, 1], 3)
    grid = _current_grid(rng, volume, m, "full")
    inv = np.linalg.inv(m)
    t = sitk.AffineTransform(3)
    t.SetMatrix(tuple(inv[:3, :3].ravel()))
    t.SetTranslation(tuple(inv[:3, 3]))
    ref = sitk.Image([int(v) for v in grid.shape_zyx[::-1]], sitk.sitkFloat32)
    ref.SetSpacing(tuple(grid.spacing))
    ref.SetOrigin(tuple(grid.origin))
    ref.SetDirection(tuple(grid.direction.ravel()))
    moved = from_sitk(sitk.Resample(sitk.Cast(to_sitk(volume), sitk.sitkFloat32), ref, t, sitk.sitkLinear, -1024.0,
                                    sitk.sitkFloat32), dict(volume.metadata))
    return moved, m


def real_ct_self_match(folder: Path, rng):
    from LesionDetectorLib import read_volume

    results = []
    for name in ("lung1", "lung2"):
        img, lab = folder / f"{name}_image.nrrd", folder / f"{name}_label.nrrd"
        if not img.is_file() or not lab.is_file():
            continue
        vol = read_volume(img)
        label = sitk.ReadImage(str(lab))
        arr = sitk.GetArrayFromImage(label) > 0
        idx = np.argwhere(arr).mean(0)
        center = np.array(label.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in idx[::-1])))
        vol_ml = arr.sum() * np.prod(label.GetSpacing()) / 1000.0
        d = float((6 * vol_ml * 1000 / np.pi) ** (1 / 3))
        moved, m = _rigid_copy(vol, rng)
        prior_f = _findings_at(vol, [("L1", center, d)])
        moved_f = _findings_at(moved, [("L1", m[:3, :3] @ center + m[:3, 3], d)])
        rows, reg = self_match(vol, _measured(vol, prior_f), moved, _measured(moved, moved_f))
        results.append({"scan": name, "rows": rows, "registration": {k: reg.get(k) for k in
                                                                     ("surface_mean_mm", "surface_p95_mm", "dice")}})
    return results


def real_ct_detected_self_match(folder: Path, rng, model: str = "luna16-synthetic"):
    """The rigid-copy self-match on the detector's own marks (module docstring)."""
    from LesionDetectorLib import Detector, read_volume

    detector = Detector.from_pretrained(model, device="cpu")
    point = (detector.card.get("operating_points") or {}).get("fp_per_scan_4") or {}
    threshold = float(point.get("threshold", 0.0))
    results = []
    for name in ("lung1", "lung2"):
        img = folder / f"{name}_image.nrrd"
        if not img.is_file():
            continue
        vol = read_volume(img)
        moved, _ = _rigid_copy(vol, rng)
        found = [detector(v, min_score=0.0, max_candidates=100) for v in (vol, moved)]
        # compare measures every mark it compares (all of them at min_score 0), as the CLI does
        doc = compare(vol, moved, found[0], found[1], interval_days=365, min_score=0.0)
        score = {c.id: c.score for c in found[0].candidates}
        rank = {c.id: c.rank for c in found[0].candidates}

        paired = [p for p in doc["pairs"] if p["prior"] and p["current"]]
        above = [p for p in doc["pairs"] if p["prior"] and score[p["prior"]["id"]] >= threshold]
        top = [p for p in doc["pairs"] if p["prior"] and rank[p["prior"]["id"]] == 1]
        results.append({
            "scan": name, "marks": [len(f.candidates) for f in found], "paired": len(paired),
            "paired_within_bar": sum(_stable_within_bar(p) for p in paired),
            "above_fp4": len(above), "above_fp4_paired": sum(1 for p in above if p["current"]),
            "above_fp4_within_bar": sum(_stable_within_bar(p) for p in above), "fp4_threshold": threshold,
            "top_mark": [{k: p[k] for k in ("status", "diameter_change_mm", "volume_change_pct")}
                         | {"prior_mm": p["prior"]["mean_diameter_mm"],
                            "copy_mm": p["current"] and p["current"]["mean_diameter_mm"]} for p in top]})
        print(f"{name} (detected): {results[-1]}", flush=True)
    return results


def _findings_at(volume, items):
    pair_like = type("P", (), {})()
    pair_like.prior = volume
    pair_like.current = volume
    pair_like.truth = [{"id": i, "prior_center_lps": list(map(float, c)), "prior_diameter_mm": d,
                        "current_center_lps": None, "current_diameter_mm": None} for i, c, d in items]
    return truth_findings(pair_like, "prior")


def summarize(state, args) -> dict:
    """The reported numbers from the per-pair rows (also of a partial run's ``--json`` dump)."""
    growth_rows, self_rows, reg_err = state["growth_rows"], state["self_rows"], state["reg_err"]
    big = [g for g in growth_rows if g["true_max_mm"] >= 6.0]
    changed = [g for g in big if g["added"]]
    dchange = np.array([g["change_mm"] - g["true_change_mm"] for g in big])
    self_big = [s for s in self_rows if s["diameter_mm"] >= 6.0]
    return {
        "date": date.today().isoformat(), "machine": cpu_model(), "command": " ".join(["python"] + sys.argv),
        "pairs": state["done_pairs"], "size": args.size, "sizes": args.sizes,
        "matching_accuracy": state["right"] / max(state["items"], 1), "matching_items": state["items"],
        "growth_status_accuracy_ge6mm": sum(g["status"] == g["true_status"] for g in big) / max(len(big), 1),
        "growth_nodules_ge6mm": len(big),
        "growth_status_accuracy_changed_ge6mm": sum(g["status"] == g["true_status"] for g in changed)
        / max(len(changed), 1),
        "changed_nodules_ge6mm": len(changed),
        "growth_confusion_ge6mm": {f"{t}->{p}": sum(1 for g in big if g["true_status"] == t and g["status"] == p)
                                   for t in ("grown", "shrunk", "stable") for p in ("grown", "shrunk", "stable")},
        "diameter_change_error_mm": {"mean_abs": float(np.abs(dchange).mean()) if len(dchange) else None,
                                     "p90_abs": float(np.percentile(np.abs(dchange), 90)) if len(dchange) else None},
        "registration_point_error_mm": {"mean": float(np.mean(reg_err)), "p95": float(np.percentile(reg_err, 95)),
                                        "max": float(np.max(reg_err))},
        "surface_mean_mm": float(np.mean(state["surface"])),
        "outside_current_fov": state.get("outside_current_fov"), "outside_copy_fov": state.get("outside_copy_fov"),
        "registration_s": float(np.mean(state.get("reg_times") or [np.nan])),
        "characterize_s_per_finding": (sum(t for t, _ in CHAR_TIMES) / max(sum(n for _, n in CHAR_TIMES), 1)
                                       if CHAR_TIMES else None),
        "self_match": {"findings": len(self_rows), "ok": sum(s["ok"] for s in self_rows),
                       "findings_ge6mm": len(self_big), "ok_ge6mm": sum(s["ok"] for s in self_big),
                       "paired_with_itself": sum(s["same"] for s in self_rows),
                       "stable": sum(s["status"] == "stable" for s in self_rows),
                       "max_abs_d_diameter_mm": max((abs(s["d_diameter_mm"]) for s in self_rows
                                                     if s["d_diameter_mm"] is not None), default=None),
                       "max_abs_d_volume_pct": max((abs(s["d_volume_pct"]) for s in self_rows
                                                    if s["d_volume_pct"] is not None), default=None)},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--size", default="small", choices=("small", "full"))
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--real-ct", type=Path, default=None)
    ap.add_argument("--real-ct-detect", action="store_true",
                    help="also the self-match of the bundled model's own marks on the --real-ct scans")
    ap.add_argument("--sizes", default="characterization", choices=("characterization", "truth"))
    ap.add_argument("--json", type=Path, default=None, help="write the raw results here (after every pair)")
    ap.add_argument("--summarize", type=Path, default=None, help="only print the numbers of an earlier --json dump")
    args = ap.parse_args(argv)
    if args.summarize:
        print(json.dumps(summarize(json.loads(args.summarize.read_text()), args), indent=2))
        return 0
    global SIZES
    SIZES = args.sizes
    t0 = time.perf_counter()
    right = items = 0
    growth_rows, reg_err, surf, self_rows, reg_times = [], [], [], [], []
    outside, outside_self = [], []           # nodules outside the current scan's field of view
    for k in range(args.pairs):
        pair = generate_followup(args.seed + k, 0, args.size)
        outside += [f"pair {k}: {i}" for i in drop_outside_current(pair)]
        reg = register_lungs(pair.prior, pair.current)
        reg_times.append(reg.quality["timings_s"]["total"])
        doc = compare(pair.prior, pair.current, _measured(pair.prior, truth_findings(pair, "prior")),
                      _measured(pair.current, truth_findings(pair, "current")), registration=reg)
        r, n, rows = evaluate_pair(pair, doc)
        right, items = right + r, items + n
        growth_rows += rows
        reg_err += registration_error(pair, reg).tolist()
        surf.append(reg.quality["surface_mean_mm"])
        rigid = generate_followup(args.seed + k, 0, args.size, changes=[], breath_hold=False)
        cut = drop_outside_current(rigid)
        outside_self += [f"pair {k}: {i}" for i in cut]
        rows_self, _ = self_match(rigid.prior, _measured(rigid.prior, truth_findings(rigid, "prior")), rigid.current,
                                  _measured(rigid.current, truth_findings(rigid, "current")), skip_ids=cut)
        self_rows += rows_self
        print(f"pair {k}: matched {r}/{n}, growth status right {sum(g['status'] == g['true_status'] for g in rows)}"
              f"/{len(rows)}, self-match ok {sum(x['ok'] for x in rows_self)}/{len(rows_self)} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"done_pairs": k + 1, "right": right, "items": items,
                                             "growth_rows": growth_rows, "self_rows": self_rows,
                                             "reg_err": reg_err, "surface": surf, "reg_times": reg_times,
                                             "outside_current_fov": outside, "outside_copy_fov": outside_self},
                                            indent=1, default=float))
    state = {"done_pairs": args.pairs, "right": right, "items": items, "growth_rows": growth_rows,
             "self_rows": self_rows, "reg_err": reg_err, "surface": surf, "reg_times": reg_times,
             "outside_current_fov": outside, "outside_copy_fov": outside_self}
    summary = summarize(state, args)
    summary["real_ct_self_match"] = real_ct_self_match(args.real_ct, np.random.default_rng(args.seed)) \
        if args.real_ct else []
    if args.real_ct and args.real_ct_detect:
        summary["real_ct_detected_self_match"] = real_ct_detected_self_match(args.real_ct,
                                                                             np.random.default_rng(args.seed))
    summary["seconds"] = time.perf_counter() - t0
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "growth_rows": growth_rows, "self_rows": self_rows},
                                        indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
