"""Every export read back by its real reader: Slicer (slicer-core), csv, JSON schema, pydicom."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from LesionDetectorLib.atomic import atomic_open
from LesionDetectorLib.export import (read_findings_json, validate_findings_dict, write_findings_json,
                                      write_luna16_csv, write_markups_json)
from LesionDetectorLib.findings import Candidate, Findings

REPO = Path(__file__).resolve().parents[2]
SHA = "ab" * 32


def make_findings(flag_status="positive", series_uid="1.2.3.4"):
    cands = [Candidate("N1", 1, [-101.25, 33.5, -250.75], 8.4, 0.93, 0.9, 0.96, "accepted"),
             Candidate("N2", 2, [60.0, -12.0, -180.5], 5.1, 0.41, 0.5, 0.32, "rejected"),
             Candidate("N3", 3, [12.5, 40.0, -200.0], 4.0, 0.12, 0.2, 0.04)]
    threshold = None if flag_status == "unavailable" else 0.5
    flag = {"status": flag_status, "operating_point": "sensitivity_0.95", "threshold": threshold, "max_score": 0.93}
    if flag_status == "unavailable":
        flag["reason"] = "the model card has no operating points"
    return Findings(
        candidates=cands, patient_flag=flag,
        model={"name": "luna16-test", "version": "0.1.0", "sha256": SHA},
        volume={"source": "/data/scan.mhd", "series_uid": series_uid, "shape_zyx": [10, 20, 30],
                "spacing": [0.7, 0.7, 1.25], "origin": [-150.0, -160.0, -300.0],
                "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]},
        provenance={"library_version": "0.1.0", "torch_version": "2.x", "device": "cpu",
                    "op_backend": "reference", "date": "2026-01-01T00:00:00+00:00", "notes": []},
        operating_point={"name": "sensitivity_0.95", "threshold": threshold},
        timings_s={"read": 0.1, "preprocess": 0.2, "model": 0.3, "postprocess": 0.01, "total": 0.61})


# ----------------------------------------------------------------------------------- atomic

def test_atomic_write_failure_keeps_previous_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with atomic_open(target) as fh:
        fh.write("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


# ----------------------------------------------------------------------------- findings JSON

def test_findings_json_round_trips_and_validates(tmp_path):
    f = make_findings()
    path = write_findings_json(f, tmp_path / "findings.json")
    doc = json.loads(path.read_text())
    assert doc["schema"] == "lesion-detector/findings" and doc["schema_version"] == "1.1"
    assert validate_findings_dict(doc) == []
    back = read_findings_json(path)
    assert back.to_dict() == f.to_dict()
    assert [c.review for c in back] == ["accepted", "rejected", "unreviewed"]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["candidates"][0].update(score=1.5), "probability"),
    (lambda d: d["candidates"][0].update(review="maybe"), "review"),
    (lambda d: d["candidates"][0].pop("center_lps"), "center_lps"),
    (lambda d: d["model"].update(sha256="xyz"), "sha256"),
    (lambda d: d["patient_flag"].update(status="unavailable", threshold=None), "reason"),
    (lambda d: d.update(schema_version="2.0"), "schema_version"),
])
def test_findings_validator_rejects_bad_documents(mutate, message):
    doc = make_findings().to_dict()
    mutate(doc)
    problems = validate_findings_dict(doc)
    assert problems and any(message in p for p in problems)


def test_schema_file_requires_what_the_validator_requires():
    schema = json.loads((REPO / "docs" / "findings.schema.json").read_text())
    doc = make_findings().to_dict()
    assert set(schema["required"]) == set(doc)
    for block in ("volume", "model", "provenance", "operating_point", "patient_flag", "timings_s"):
        for key in schema["properties"][block]["required"]:
            broken = make_findings().to_dict()
            del broken[block][key]
            assert validate_findings_dict(broken), f"validator accepts {block} without {key}"
    item = schema["properties"]["candidates"]["items"]
    assert set(item["required"]) == set(doc["candidates"][0])
    assert item["properties"]["review"]["enum"] == ["unreviewed", "accepted", "rejected"]


def test_unavailable_flag_is_valid_without_threshold(tmp_path):
    f = make_findings("unavailable")
    write_findings_json(f, tmp_path / "f.json")
    assert read_findings_json(tmp_path / "f.json").patient_flag["threshold"] is None


# --------------------------------------------------------------------------------- LUNA16 CSV

def test_luna16_csv_has_challenge_columns(tmp_path):
    f1, f2 = make_findings(series_uid="1.1"), make_findings(series_uid=None)
    path = write_luna16_csv([f1, f2], tmp_path / "sub.csv", series_uids=[None, "2.2"])
    rows = list(csv.DictReader(open(path, newline="")))
    assert list(rows[0])[:5] == ["seriesuid", "coordX", "coordY", "coordZ", "probability"]
    assert len(rows) == 6
    assert [r["seriesuid"] for r in rows] == ["1.1"] * 3 + ["2.2"] * 3
    assert float(rows[0]["coordX"]) == pytest.approx(-101.25)
    assert float(rows[0]["coordZ"]) == pytest.approx(-250.75)
    assert float(rows[1]["probability"]) == pytest.approx(0.41)
    assert rows[1]["review"] == "rejected"
    with pytest.raises(ValueError, match="series UID"):
        write_luna16_csv([make_findings(series_uid=None)], tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


# ----------------------------------------------------------------------------- Slicer markups

def _read_with_slicer(path):
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return scene, node  # the scene owns the node: keep it alive while the node is used


def test_markups_load_in_slicer_at_the_right_place(tmp_path):
    f = make_findings()
    path = write_markups_json(f, tmp_path / "findings.mrk.json")
    doc = json.loads(path.read_text())
    assert "markups-schema-v1.0.3.json" in doc["@schema"]
    m = doc["markups"][0]
    assert (m["type"], m["coordinateSystem"], m["coordinateUnits"]) == ("Fiducial", "LPS", "mm")

    _scene, node = _read_with_slicer(path)
    assert node.GetNumberOfControlPoints() == 3
    for i, c in enumerate(f.candidates):
        ras = [0.0, 0.0, 0.0]
        node.GetNthControlPointPosition(i, ras)
        # Slicer holds RAS in memory: L->R and P->A flip sign, S stays.
        lps = [-ras[0], -ras[1], ras[2]]
        np.testing.assert_allclose(lps, c.center_lps, atol=1e-6)
        assert node.GetNthControlPointLabel(i) == f"{c.id} {c.score:.2f}"
        desc = node.GetNthControlPointDescription(i)
        assert f"review {c.review}" in desc and f"diameter {c.diameter_mm:.1f} mm" in desc
        assert f"RPN {c.score_rpn:.3f}" in desc and f"FPRN {c.score_fprn:.3f}" in desc
        assert node.GetNthControlPointLocked(i)
    assert not node.GetNthControlPointSelected(1)  # the rejected one

    measurements = {node.GetNthMeasurement(i).GetName(): node.GetNthMeasurement(i)
                    for i in range(node.GetNumberOfMeasurements())}
    flag = measurements["patient flag"]
    assert flag.GetValue() == 1.0 and flag.GetDescription().startswith("positive")
    assert "sensitivity_0.95" in flag.GetDescription()
    assert SHA in measurements["model"].GetDescription()
    assert measurements["operating point threshold"].GetValue() == pytest.approx(0.5)


def test_markups_round_trip_through_slicer_writer(tmp_path):
    """What Slicer writes back after loading our file still carries flag and model."""
    slicer = pytest.importorskip("slicer")
    scene, node = _read_with_slicer(write_markups_json(make_findings("likely negative"), tmp_path / "a.mrk.json"))
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "b.mrk.json"))
    assert storage.WriteData(node) == 1
    _scene2, again = _read_with_slicer(tmp_path / "b.mrk.json")
    names = {again.GetNthMeasurement(i).GetName(): again.GetNthMeasurement(i).GetDescription()
             for i in range(again.GetNumberOfMeasurements())}
    assert names["patient flag"].startswith("likely negative")
    assert SHA in names["model"]


# ----------------------------------------------------------------------------------- DICOM SR

def _ct_series(tmp_path):
    from LesionDetectorLib.io.ct_series import write_ct_series
    from LesionDetectorLib.io import read_volume
    from LesionDetectorLib.volume import Volume

    arr = np.full((4, 8, 8), -800.0, dtype=np.float32)
    vol = Volume(arr, (0.7, 0.7, 1.25), (-150.0, -160.0, -300.0), np.eye(3))
    folder = write_ct_series(vol, tmp_path / "ct")
    return read_volume(folder)


def test_dicom_sr_reads_back_with_pydicom(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    from LesionDetectorLib.export import write_dicom_sr

    ct = _ct_series(tmp_path)
    f = make_findings(series_uid=ct.series_uid)
    path = write_dicom_sr(f, tmp_path / "findings_sr.dcm", ct.metadata["dicom_files"])
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == ct.series_uid
    assert ({i.ReferencedSOPInstanceUID for i in evidence.ReferencedSOPSequence}
            == set(ct.metadata["sop_instance_uids"]))

    import highdicom as hd

    report = hd.sr.srread(path)
    groups = report.content.get_planar_roi_measurement_groups()
    assert len(groups) == 3
    for c, g in zip(f.candidates, groups):
        region = g.roi
        assert region.graphic_type.value == "POINT"
        assert region.frame_of_reference_uid == ct.metadata["FrameOfReferenceUID"]
        np.testing.assert_allclose(region.value[0], c.center_lps, atol=1e-4)
        assert g.tracking_identifier.startswith(c.id)
        diam = [m for m in g.get_measurements() if m.name.value == "81827009"][0]
        assert diam.value == pytest.approx(c.diameter_mm)
        review = g.get_qualitative_evaluations()[0]
        assert review.value.meaning == c.review
    texts, meanings = [], []

    def walk(items):
        for item in items:
            if "TextValue" in item:
                texts.append(item.TextValue)
            if "ConceptCodeSequence" in item:
                meanings.append(item.ConceptCodeSequence[0].CodeMeaning)
            walk(item.get("ContentSequence", []))

    walk(ds.ContentSequence)
    assert f"model_sha256={SHA}" in texts
    assert "operating_point=sensitivity_0.95" in texts and "threshold=0.5" in texts
    assert "positive" in meanings  # the patient flag group
