"""DICOM SEG of the nodule masks and the characterization in the DICOM SR, read back by pydicom."""
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from LesionDetectorLib.characterization import characterize_with_masks, label_volume  # noqa: E402
from LesionDetectorLib.coordinates import world_to_index  # noqa: E402
from LesionDetectorLib.export.dicom_seg import write_dicom_seg  # noqa: E402
from LesionDetectorLib.export.dicom_sr import write_dicom_sr  # noqa: E402
from LesionDetectorLib.findings import Candidate  # noqa: E402
from LesionDetectorLib.io import read_volume  # noqa: E402
from LesionDetectorLib.io.ct_series import write_ct_series  # noqa: E402

from test_characterization import _findings, phantom  # noqa: E402


@pytest.fixture
def characterized_dicom(tmp_path):
    folder = write_ct_series(phantom([dict(center=(-6, 0, 0), axes=(4, 4, 4), hu=30.0),
                                      dict(center=(8, 0, 0), axes=(5, 5, 5), hu=-600.0)]), tmp_path / "ct")
    volume = read_volume(str(folder))
    findings = _findings([Candidate("N1", 1, [-6.0, 0.0, 0.0], 8.0, 0.9, 0.9, 0.9),
                          Candidate("N2", 2, [8.0, 0.0, 0.0], 10.0, 0.8, 0.8, 0.8)])
    out, nodules = characterize_with_masks(volume, findings)
    return volume, out, label_volume(volume, nodules)


def test_seg_has_one_segment_per_finding_on_the_right_slices(tmp_path, characterized_dicom):
    volume, findings, labels = characterized_dicom
    path = write_dicom_seg(findings, labels, tmp_path / "masks_seg.dcm", volume.metadata["dicom_files"])
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert [s.SegmentLabel.split()[0] for s in ds.SegmentSequence] == ["N1", "N2"]
    assert "ground-glass" in ds.SegmentSequence[1].SegmentLabel
    assert ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"   # SCT Nodule
    assert ds.FrameOfReferenceUID == pydicom.dcmread(volume.metadata["dicom_files"][0]).FrameOfReferenceUID

    # Every frame's pixels land on the label volume's slice at the frame's position.
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    counts = {1: 0, 2: 0}
    for frame, fg in zip(pixels, ds.PerFrameFunctionalGroupsSequence):
        segment = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        pos = np.asarray([float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient])
        k = int(round(world_to_index(volume, pos)[0]))
        assert np.array_equal(frame > 0, labels.array[k] == segment)
        counts[segment] += int(frame.sum())
    assert counts == {1: int((labels.array == 1).sum()), 2: int((labels.array == 2).sum())}


def test_sr_carries_the_measurements_with_standard_codes(tmp_path, characterized_dicom):
    volume, findings, _ = characterized_dicom
    path = write_dicom_sr(findings, tmp_path / "sr.dcm", volume.metadata["dicom_files"])
    ds = pydicom.dcmread(path)

    def walk(items):
        for it in items:
            yield it
            yield from walk(getattr(it, "ContentSequence", []))

    items = list(walk(ds.ContentSequence))
    numeric = {}
    for it in items:
        if it.ValueType == "NUM":
            key = (it.ConceptNameCodeSequence[0].CodingSchemeDesignator, it.ConceptNameCodeSequence[0].CodeValue)
            numeric.setdefault(key, []).append(float(it.MeasuredValueSequence[0].NumericValue))
    ch = findings.candidate("N1").characterization
    assert numeric[("SCT", "118565006")][0] == pytest.approx(ch["volume_ml"] * 1000.0, abs=0.1)     # Volume mm3
    assert numeric[("SCT", "103339001")][0] == pytest.approx(ch["long_axis_mm"])                  # Long axis
    assert numeric[("SCT", "103340004")][0] == pytest.approx(ch["short_axis_mm"])                 # Short axis
    assert ("DCM", "112031") in numeric                                                             # mean HU
    meanings = [it.ConceptCodeSequence[0].CodeMeaning for it in items if it.ValueType == "CODE"]
    assert f"Lung-RADS {ch['lung_rads']}" in meanings and "ground-glass" in meanings
    assert f"Lung-RADS {findings.lung_rads['category']}" in meanings
