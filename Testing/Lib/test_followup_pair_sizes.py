"""Both findings of a pair are measured the same way (``compare``'s pair re-measurement)."""
import numpy as np
import pytest
import SimpleITK as sitk

from LesionDetectorLib.characterization import characterize
from LesionDetectorLib.findings import Candidate, Findings
from LesionDetectorLib.followup.comparison import compare
from LesionDetectorLib.followup.registration import Registration

from test_characterization import phantom


def _findings(volume, diameter_mm, size=None):
    c = Candidate("N1", 1, [0.0, 0.0, 0.0], diameter_mm, 0.9, 0.9, 0.9)
    f = Findings(candidates=[c],
                 patient_flag={"status": "positive", "operating_point": None, "threshold": 0.0, "max_score": 0.9},
                 model={"name": "test", "version": "0", "sha256": "0" * 64},
                 volume={"source": None, "series_uid": None, "shape_zyx": list(volume.array.shape),
                         "spacing": volume.spacing.tolist(), "origin": volume.origin.tolist(),
                         "direction": volume.direction.ravel().tolist()},
                 provenance={"library_version": "0", "torch_version": "0", "device": "cpu", "op_backend": "reference",
                             "date": "2026-12-01T00:00:00Z"},
                 operating_point={"name": None, "threshold": 0.0})
    if size is not None:
        c.characterization = {"type": "solid", "calcified": False, "mean_diameter_mm": size, "volume_ml": 0.2}
        return f
    return characterize(volume, f, min_score=-np.inf)


@pytest.fixture(scope="module")
def scan():
    # A 9 mm nodule with a thick vessel against it: how much vessel the attachment cut leaves on
    # depends on the expected diameter the segmentation is given.
    return phantom([dict(center=(0, 0, 0), axes=(4.5, 4.5, 4.5), hu=30.0),
                    dict(center=(0, 5.5, 0), axes=(2.2, 30, 2.2), hu=40.0)], shape=(40, 72, 72))


def _identity():
    return Registration(sitk.Transform(3, sitk.sitkIdentity), {"surface_mean_mm": 0.0, "note": "identity (test)"})


def _pair(doc):
    (p,) = [p for p in doc["pairs"] if p["prior"] and p["current"]]
    return p


def test_two_detections_of_one_nodule_get_one_size(scan):
    # The same image twice; the detector said 8 mm on one and 18 mm on the other.
    small, large = _findings(scan, 8.0), _findings(scan, 18.0)
    own = _pair(compare(scan, scan, small, large, interval_days=365, registration=_identity(), remeasure_pairs=False))
    doc = compare(scan, scan, small, large, interval_days=365, registration=_identity())
    p = _pair(doc)
    assert abs(own["volume_change_pct"]) > 15.0            # each scan's own measurement differs
    assert p["status"] == "stable" and p["diameter_change_mm"] == 0.0 and p["volume_change_pct"] == 0.0
    assert doc["matching"]["pair_sizes"].startswith("both findings of a pair")


def test_sizes_given_from_elsewhere_are_kept(scan):
    p = _pair(compare(scan, scan, _findings(scan, 8.0, size=9.0), _findings(scan, 18.0, size=12.0), interval_days=365,
                      registration=_identity()))
    assert p["prior"]["mean_diameter_mm"] == 9.0 and p["current"]["mean_diameter_mm"] == 12.0
    assert p["status"] == "grown"
