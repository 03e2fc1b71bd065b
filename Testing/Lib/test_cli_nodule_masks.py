"""``detect`` writes the characterized nodules' masks: a DICOM SEG for DICOM input (read back with
pydicom/highdicom: one segment per finding, frames on the source slices) and a ``.seg.nrrd`` for
every input, inside the scan's all-or-nothing result folder."""
import numpy as np
import pytest

from LesionDetectorLib import batch
from LesionDetectorLib.cli.main import main
from LesionDetectorLib.coordinates import world_to_index
from LesionDetectorLib.export import read_findings_json
from LesionDetectorLib.export.segmentation_nrrd import read_segmentation_nrrd
from LesionDetectorLib.io import read_volume, write_volume

from test_inference_pipeline import NODULE_D, NODULE_HU

NODULE = np.array([50.0, -10.0, 5.0])
SECOND = np.array([-50.0, 10.0, -10.0])


@pytest.fixture
def nodule_scans(tmp_path, chest_phantom):
    """The same two-nodule chest as an .mhd file and as a DICOM series."""
    from LesionDetectorLib.io.ct_series import write_ct_series

    vol = chest_phantom(shape_zyx=(48, 64, 80), spacing=(3.0, 3.0, 3.0),
                        nodules=[(NODULE, NODULE_D, NODULE_HU), (SECOND, NODULE_D, NODULE_HU)])
    inputs = tmp_path / "in"
    inputs.mkdir()
    return {"mhd": write_volume(vol, inputs / "chest.mhd"), "dicom": str(write_ct_series(vol, inputs / "chest_dcm"))}


def _segmented(findings):
    """Ids of the findings that got a mask (a characterization with a type)."""
    return [c.id for c in findings.candidates if (c.characterization or {}).get("type")]


def test_dicom_input_gets_a_seg_with_one_segment_per_characterized_finding(tmp_path, nodule_scans, blob_detector):
    pydicom = pytest.importorskip("pydicom")
    hd = pytest.importorskip("highdicom")
    out = tmp_path / "out"
    assert main(["detect", nodule_scans["dicom"], "--out", str(out), "--progress", "none"]) == 0
    folder = out / "chest_dcm"
    assert {"nodule_masks_seg.dcm", "nodule_masks.seg.nrrd", "findings_sr.dcm"} <= {p.name for p in folder.iterdir()}
    findings = read_findings_json(folder / "findings.json")
    ids = _segmented(findings)
    assert len(ids) == 2

    seg = hd.seg.segread(folder / "nodule_masks_seg.dcm")
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert [s.SegmentLabel.split()[0] for s in seg.SegmentSequence] == ids
    for s, fid in zip(seg.SegmentSequence, ids):
        ch = findings.candidate(fid).characterization
        assert s.TrackingID == fid and f"Lung-RADS {ch['lung_rads']}" in s.SegmentLabel

    source = read_volume(nodule_scans["dicom"])
    files = source.metadata["dicom_files"]
    first = pydicom.dcmread(files[0])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert (int(seg.Rows), int(seg.Columns)) == (int(first.Rows), int(first.Columns))
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == pytest.approx(
        [float(v) for v in first.PixelSpacing])
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == pytest.approx(
        [float(v) for v in first.ImageOrientationPatient])

    # Frame geometry: each frame sits on a source slice, and its pixels are that slice of the
    # segment's mask as the .seg.nrrd (the scan's own grid) holds it.
    labels = read_segmentation_nrrd(folder / "nodule_masks.seg.nrrd")
    value_of = {fid: v for v, fid in labels.metadata["labels"].items()}
    source_sops = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    voxels = {fid: 0 for fid in ids}
    for frame, fg in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        number = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        fid = ids[number - 1]
        assert fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID in source_sops
        pos = np.asarray([float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient])
        z = world_to_index(source, pos)[0]
        assert abs(z - round(z)) < 1e-3
        assert np.array_equal(frame > 0, labels.array[int(round(z))] == value_of[fid])
        voxels[fid] += int(frame.sum())
    assert voxels == {fid: int((labels.array == value_of[fid]).sum()) for fid in ids}
    # Each mask covers its finding's centre.
    for fid in ids:
        idx = np.round(world_to_index(source, np.asarray(findings.candidate(fid).center_lps))).astype(int)
        assert labels.array[tuple(idx)] == value_of[fid]


def test_non_dicom_input_gets_the_seg_nrrd_only_in_the_scans_grid(tmp_path, nodule_scans, blob_detector):
    out = tmp_path / "out"
    assert main(["detect", nodule_scans["mhd"], "--out", str(out), "--progress", "none"]) == 0
    folder = out / "chest"
    names = {p.name for p in folder.iterdir()}
    assert "nodule_masks.seg.nrrd" in names and "nodule_masks_seg.dcm" not in names
    findings = read_findings_json(folder / "findings.json")
    labels = read_segmentation_nrrd(folder / "nodule_masks.seg.nrrd")
    source = read_volume(nodule_scans["mhd"])
    assert labels.array.shape == source.array.shape
    assert np.allclose(labels.spacing, source.spacing) and np.allclose(labels.origin, source.origin)
    assert sorted(labels.metadata["labels"].values()) == sorted(_segmented(findings))
    for value, fid in labels.metadata["labels"].items():
        mask = labels.array == value
        ch = findings.candidate(fid).characterization
        # The file's voxels are the mask that was measured (a 3 mm grid is coarse: within 40 %).
        assert mask.sum() * np.prod(source.spacing) / 1000.0 == pytest.approx(ch["mask_volume_ml"], rel=0.4)


def test_no_characterization_writes_no_masks(tmp_path, nodule_scans, blob_detector):
    out = tmp_path / "out"
    assert main(["detect", nodule_scans["mhd"], "--out", str(out), "--progress", "none", "--no-characterize"]) == 0
    assert not any(p.name.startswith("nodule_masks") for p in (out / "chest").iterdir())


def test_a_failing_seg_is_a_warning_and_leaves_no_file(tmp_path, nodule_scans, blob_detector, monkeypatch, capsys):
    pytest.importorskip("highdicom")
    from LesionDetectorLib.export import dicom_seg

    def broken(findings, labels, path, source_files):
        path.write_bytes(b"half a SEG")     # what a crash mid-write would leave
        raise RuntimeError("disk hiccup")

    monkeypatch.setattr(dicom_seg, "write_dicom_seg", broken)
    out = tmp_path / "out"
    assert main(["detect", nodule_scans["dicom"], "--out", str(out), "--progress", "none"]) == 0
    names = {p.name for p in (out / "chest_dcm").iterdir()}
    assert "nodule_masks_seg.dcm" not in names and {"findings.json", "nodule_masks.seg.nrrd"} <= names
    assert "the DICOM SEG was not written: disk hiccup" in capsys.readouterr().out


def test_a_failing_mask_file_leaves_no_result_folder(tmp_path, nodule_scans, blob_detector, monkeypatch):
    from LesionDetectorLib.export import segmentation_nrrd

    def broken(findings, labels, path):
        path.write_bytes(b"NRRD0004\n")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(segmentation_nrrd, "write_segmentation_nrrd", broken)
    out = tmp_path / "out"
    assert main(["detect", nodule_scans["mhd"], "--out", str(out), "--progress", "none"]) == 2
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*") if p.name != batch.SUBMISSION)


def test_seg_formats_are_parsed_and_refused_without_highdicom(monkeypatch):
    assert batch.parse_formats("json,seg.nrrd") == ["json", "seg.nrrd"]
    monkeypatch.setattr(batch, "sr_available", lambda: False)
    assert "seg" not in batch.parse_formats("auto") and "seg.nrrd" in batch.parse_formats("auto")
    with pytest.raises(ValueError, match="DICOM SEG export needs highdicom"):
        batch.parse_formats("json,seg")
