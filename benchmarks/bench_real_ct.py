"""The bundled detector on real chest CT: pyradiomics 3.1.0's ``lung1`` and ``lung2`` scans.

    python benchmarks/bench_real_ct.py [--model luna16-synthetic] [--sdist pyradiomics-3.1.0.tar.gz]

Not run in CI: it needs the pyradiomics 3.1.0 source archive (34 MB), fetched once from PyPI by
its own address (pip refuses that sdist by version: its metadata says 3.0.1a1) into
``~/.cache/lesion_detector/real_ct`` (or ``--cache``), or given with ``--sdist``. The archive
ships ``data/lung{1,2}_image.nrrd`` with ``lung{1,2}_label.nrrd`` lesion masks (5 mm slices).

Per scan it reports: the lesion (label centroid, volume, equivalent diameter), the rank of the
first mark on it (a mark is *on* the lesion when its centre lies in the label mask dilated by
2 mm, or within the lesion's equivalent radius of its centroid), how many marks are on it, how
many marks reach each operating point of the card, the patient flag and probability, and the
time. These are real scans no one here made: the model was trained on synthetic CT only.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tarfile
import time
import urllib.request
from datetime import date
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from LesionDetectorLib import Detector, read_volume
from LesionDetectorLib.coordinates import world_to_index
from LesionDetectorLib.inference.engine import cpu_model_name
from LesionDetectorLib.inference.patient_flag import OPERATING_POINT_NAMES

# The simple index (PEP 691 JSON): the version JSON of 3.1.0 is a 404, since the sdist's own
# metadata says 3.0.1a1; the file is found by its name and checked by the index's sha256.
PYPI_SIMPLE = "https://pypi.org/simple/pyradiomics/"
SDIST = "pyradiomics-3.1.0.tar.gz"
SCANS = ("lung1", "lung2")


def fetch_sdist(cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / "pyradiomics-3.1.0.tar.gz"
    if target.is_file():
        return target
    request = urllib.request.Request(PYPI_SIMPLE, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        meta = json.load(r)
    entry = next((f for f in meta["files"] if f["filename"] == SDIST), None)
    if entry is None:
        raise SystemExit(f"{SDIST} is not on {PYPI_SIMPLE}")
    part = target.with_suffix(".part")
    digest = hashlib.sha256()
    with urllib.request.urlopen(entry["url"], timeout=300) as r, open(part, "wb") as f:
        while chunk := r.read(1 << 20):
            f.write(chunk)
            digest.update(chunk)
    want = entry.get("hashes", {}).get("sha256")
    if want and digest.hexdigest() != want:
        part.unlink()
        raise SystemExit(f"{SDIST}: sha256 {digest.hexdigest()} is not the index's {want}")
    part.replace(target)
    return target


def extract(sdist: Path, cache: Path) -> Path:
    out = cache / "data"
    want = [f"{s}_{k}.nrrd" for s in SCANS for k in ("image", "label")]
    if all((out / w).is_file() for w in want):
        return out
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if name in want and "/data/" in member.name:
                with tar.extractfile(member) as src:
                    (out / name).write_bytes(src.read())
    missing = [w for w in want if not (out / w).is_file()]
    if missing:
        raise SystemExit(f"{sdist} holds no {', '.join(missing)}")
    return out


def lesion_of(label_path: Path):
    img = sitk.ReadImage(str(label_path))
    arr = sitk.GetArrayFromImage(img) > 0
    spacing = np.asarray(img.GetSpacing())
    idx = np.argwhere(arr).mean(axis=0)                        # z, y, x
    centre = np.asarray(img.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx[::-1]]))
    volume_ml = float(arr.sum() * np.prod(spacing)) / 1000.0
    diameter = float((6 * volume_ml * 1000.0 / np.pi) ** (1 / 3))
    dist = sitk.SignedMaurerDistanceMap(sitk.Cast(img > 0, sitk.sitkUInt8), insideIsPositive=False,
                                        squaredDistance=False, useImageSpacing=True)
    return img, dist, centre, volume_ml, diameter


def on_lesion(points_lps: np.ndarray, dist: sitk.Image, centre: np.ndarray, diameter: float) -> np.ndarray:
    arr = sitk.GetArrayViewFromImage(dist)
    out = np.zeros(len(points_lps), dtype=bool)
    for i, p in enumerate(points_lps):
        near_centre = np.linalg.norm(p - centre) < diameter / 2
        idx = np.round(world_to_index(dist, p[None])[0]).astype(int)
        inside = bool(np.all(idx >= 0) and np.all(idx < arr.shape) and arr[tuple(idx)] <= 2.0)
        out[i] = near_centre or inside
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="luna16-synthetic")
    p.add_argument("--sdist", type=Path, help="pyradiomics-3.1.0.tar.gz already on disk")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "lesion_detector" / "real_ct")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    sdist = args.sdist or fetch_sdist(args.cache)
    data = extract(sdist, args.cache)
    detector = Detector.from_pretrained(args.model, device="cpu", precision=args.precision)
    card = detector.card
    results = []
    for name in SCANS:
        volume = read_volume(str(data / f"{name}_image.nrrd"))
        _, dist, centre, volume_ml, diameter = lesion_of(data / f"{name}_label.nrrd")
        t0 = time.time()
        findings = detector(volume, min_score=0.0, max_candidates=100)
        seconds = time.time() - t0
        pts = np.array([c.center_lps for c in findings.candidates]).reshape(-1, 3)
        scores = np.array([c.score for c in findings.candidates])
        hits = on_lesion(pts, dist, centre, diameter) if len(pts) else np.zeros(0, dtype=bool)
        first = int(np.flatnonzero(hits)[0]) + 1 if hits.any() else None
        above = {}
        for op in OPERATING_POINT_NAMES:
            point = (card.get("operating_points") or {}).get(op)
            if point:
                above[op] = int((scores >= float(point["threshold"])).sum())
        nearest = float(np.min(np.linalg.norm(pts - centre, axis=1))) if len(pts) else None
        row = {"scan": name, "shape_zyx": list(volume.array.shape), "spacing": [round(s, 3) for s in volume.spacing],
               "lesion_volume_ml": round(volume_ml, 2), "lesion_diameter_mm": round(diameter, 1),
               "first_mark_rank": first, "marks_on_lesion": int(hits.sum()),
               "first_mark_score": round(float(scores[first - 1]), 4) if first else None,
               "nearest_mark_mm": round(nearest, 1) if nearest is not None else None,
               "marks_listed": len(pts), "marks_above": above, "flag": findings.patient_flag["status"],
               "patient_probability": findings.patient_flag.get("probability"),
               "seconds": round(seconds, 1), "timings_s": findings.timings_s,
               "precision": findings.provenance.get("precision")}
        results.append(row)
        print(json.dumps(row))
    summary = {"date": date.today().isoformat(), "cpu": cpu_model_name(), "model": detector.model_identity,
               "score_fusion": detector.settings.fusion.to_dict(), "results": results,
               "command": " ".join(["python", "benchmarks/bench_real_ct.py", *(argv or sys.argv[1:])])}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print("| scan | lesion | first mark rank | marks on lesion | marks >= sens-0.95 thr | flag (probability) | time |")
    print("|---|---|---:|---:|---:|---|---:|")
    for r in results:
        print(f"| {r['scan']} | {r['lesion_diameter_mm']} mm ({r['lesion_volume_ml']} mL) | {r['first_mark_rank']} | "
              f"{r['marks_on_lesion']} | {r['marks_above'].get('sensitivity_0.95')} | {r['flag']} "
              f"({r['patient_probability']}) | {r['seconds']} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
