"""A hostile user's battery against ``lesion-detector detect`` and the library (issue #16).

Every input is built on the fly and small. For each one the contract is checked, not just
the exit code: bad input exits 2 with one message naming the cause and no traceback, good
input exits 0 with every result file, and no partial scan folder (hidden ``.partial-`` /
``.old-`` folders, ``.part`` files, a folder without ``findings.json``) is ever left behind.
Bad inputs are refused before the model runs: the model factory here fails the test if it
is called for them. Good inputs use a fake "model" that finds bright blobs (BlobModel) on a
coarse chest phantom, so a whole run takes well under a second. A few cases run the real
command in a subprocess with a timeout, so a hang fails instead of blocking.
"""
from __future__ import annotations

import csv
import errno
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from LesionDetectorLib import batch
from LesionDetectorLib.cli.main import main
from LesionDetectorLib.errors import ModelError, VolumeError
from LesionDetectorLib.export import read_findings_json
from LesionDetectorLib.io import read_volume, write_volume
from LesionDetectorLib.volume import Volume

from test_inference_pipeline import NODULE_D, NODULE_HU

REPO = Path(__file__).resolve().parents[2]
NODULE = np.array([50.0, -10.0, 5.0])
RESULT_FILES = {"findings.json", "findings.mrk.json", "luna16.csv"}


# --------------------------------------------------------------------------------- helpers
@pytest.fixture
def model_calls(blob_detector):
    """The fake detector (conftest's ``blob_detector``); empty = the model never ran."""
    return blob_detector


def cli(argv, capsys, characterize=False):
    """Run the CLI in-process; no traceback may appear. Characterization (on by default in
    ``detect``, seconds per candidate) runs only where a test asks for the full default pipeline."""
    if argv[:1] == ["detect"] and not characterize:
        argv = [*argv, "--no-characterize"]
    code = main(argv)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text, text
    return code, captured.out, captured.err


def assert_no_partial(out: Path, expected=RESULT_FILES):
    """Every scan folder is complete; nothing half-written anywhere under ``out``."""
    if not out.exists():
        return
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith(".part")]
    assert not leftovers, leftovers
    for folder in (p for p in out.iterdir() if p.is_dir()):
        names = {p.name for p in folder.iterdir()}
        assert expected <= names, (folder, names)


def phantom(chest_phantom, nodule=True, shape=(40, 56, 64), spacing=(4.0, 4.0, 4.0)):
    nodules = [(NODULE, NODULE_D, NODULE_HU)] if nodule else []
    return chest_phantom(shape_zyx=shape, spacing=spacing, nodules=nodules)


def write_mhd(folder: Path, name: str, header: dict, data: bytes, data_name=None) -> Path:
    """A hand-made MetaImage: ``header`` fields in order, then ElementDataFile."""
    data_name = data_name or name.replace(".mhd", ".raw")
    lines = ["ObjectType = Image"] + [f"{k} = {v}" for k, v in header.items()] + [f"ElementDataFile = {data_name}"]
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    (folder / data_name).write_bytes(data)
    return path


GOOD_HEADER = {"NDims": 3, "DimSize": "16 16 12", "ElementSpacing": "4 4 4", "ElementType": "MET_SHORT"}
GOOD_BYTES = 16 * 16 * 12 * 2


def hostile_mhd(tmp_path, **changes):
    header = dict(GOOD_HEADER)
    data = changes.pop("data", None)
    for k, v in changes.items():
        if v is None:
            header.pop(k, None)
        else:
            header[k] = v
    return write_mhd(tmp_path, "scan.mhd", header, b"\0" * GOOD_BYTES if data is None else data)


def subprocess_detect(args, timeout=60):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "LesionDetectorLib", "detect", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=env)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


# ------------------------------------------------------- corrupt / lying MetaImage (defect 4)
METAIMAGE_CASES = {
    "raw larger than declared": (dict(data=b"\0" * (GOOD_BYTES + 100)), "has 6,244 bytes but the header declares 6,144"),
    "ElementType disagrees with size": (dict(ElementType="MET_FLOAT"), "truncated"),
    "ElementType too small for data": (dict(ElementType="MET_UCHAR"), "but the header declares"),
    "DimSize smaller than data": (dict(DimSize="16 16 6"), "but the header declares"),
    "raw truncated": (dict(data=b"\0" * 100), "truncated"),
    "DimSize 0": (dict(DimSize="16 0 12"), "DimSize 16 0 12"),
    "DimSize negative": (dict(DimSize="16 -16 12"), "size 0 or less"),
    "DimSize not numbers": (dict(DimSize="sixteen 16 12"), "unreadable DimSize"),
    "NDims disagrees with DimSize": (dict(NDims=4), "NDims 4 but DimSize"),
    "Offset nan": (dict(Offset="nan 0 0"), "non-finite Offset"),
    "Offset inf": (dict(Offset="0 inf 0"), "non-finite Offset"),
    "ElementSpacing nan": (dict(ElementSpacing="4 nan 4"), "non-finite ElementSpacing"),
    "TransformMatrix nan": (dict(TransformMatrix="1 0 0 0 nan 0 0 0 1"), "non-finite TransformMatrix"),
    "Offset text": (dict(Offset="left right up"), "unreadable Offset"),
    "ElementSpacing 2 values": (dict(ElementSpacing="4 4"), "ElementSpacing has 2 values for 3 dimensions"),
    "TransformMatrix 6 values": (dict(TransformMatrix="1 0 0 0 1 0"), "TransformMatrix has 6 values"),
    "unknown ElementType": (dict(ElementType="MET_QUATERNION"), "unknown ElementType"),
    "no DimSize": (dict(DimSize=None), "no DimSize"),
    "2-D": (dict(NDims=2, DimSize="16 192", ElementSpacing="4 4", data=b"\0" * GOOD_BYTES), "single 2-D image"),
    "4-D": (dict(NDims=4, DimSize="16 16 6 2", ElementSpacing="4 4 4 1"), "4-D image"),
    "3 channels": (dict(ElementNumberOfChannels=3, DimSize="16 16 4"), "3 values per voxel"),
    "size limit": (dict(DimSize="2048 2048 1000", data=b"\0" * 16), "too large"),
    "spacing zero": (dict(ElementSpacing="0 4 4"), "invalid voxel spacing"),
    "spacing negative": (dict(ElementSpacing="4 -4 4"), "invalid voxel spacing"),
    "slices 10 mm": (dict(ElementSpacing="4 4 10"), "slice spacing of 10 mm"),
    "pixels 50 mm (defect 7)": (dict(ElementSpacing="50 50 4"), "pixel spacing of 50 x 50 mm"),
    "1 mm grid too large (defect 7)": (dict(DimSize="1024 1024 200", ElementSpacing="4.9 4.9 4.9",
                                            data=b"\0" * 16), "at the detector's 1 mm grid"),
    "missing raw": (dict(data=None), None),  # replaced below: the .raw is deleted
}


@pytest.mark.parametrize("case", sorted(METAIMAGE_CASES))
def test_lying_metaimage_is_refused_before_the_model(tmp_path, capsys, model_calls, case):
    changes, message = METAIMAGE_CASES[case]
    path = hostile_mhd(tmp_path, **changes)
    if case == "missing raw":
        (tmp_path / "scan.raw").unlink()
        message = "pixel data file"
    out = tmp_path / "out"
    code, stdout, err = cli(["detect", str(path), "--out", str(out), "--progress", "none"], capsys)
    assert code == 2
    assert message in err, err
    assert not model_calls  # refused before any model was loaded
    assert_no_partial(out)
    assert not out.exists()  # nothing written, not even the output folder


def _compressed_mhd(tmp_path, payload: bytes, declared=None):
    header = dict(GOOD_HEADER, CompressedData="True")
    if declared is not None:
        header["CompressedDataSize"] = declared
    return write_mhd(tmp_path, "scan.mhd", header, payload, data_name="scan.zraw")


@pytest.mark.parametrize("case", ["garbage", "bit flips", "truncated", "short stream", "declared size too big"])
def test_corrupt_zraw_is_refused_not_read_as_uninitialised_memory(tmp_path, case):
    good = zlib.compress(np.arange(GOOD_BYTES // 2, dtype=np.int16).tobytes())
    payload, declared = {
        "garbage": (b"\x13" * 400, None),
        "bit flips": (good[:20] + bytes(b ^ 0xFF for b in good[20:60]) + good[60:], len(good)),
        "truncated": (good[: len(good) // 2], None),
        "short stream": (zlib.compress(b"\0" * 100), None),
        "declared size too big": (good, len(good) + 1000),
    }[case]
    path = _compressed_mhd(tmp_path, payload, declared)
    with pytest.raises(VolumeError, match="compressed pixel data"):
        read_volume(path)


def test_good_zraw_and_mha_still_read(tmp_path, chest_phantom):
    vol = phantom(chest_phantom, nodule=False, shape=(10, 12, 14))
    for name, compress in (("a.mhd", True), ("b.mha", True), ("c.mha", False)):
        back = read_volume(write_volume(vol, tmp_path / name, compress=compress))
        np.testing.assert_allclose(back.array, vol.array, atol=1e-3)


def test_header_size_minus_one_raw_is_read(tmp_path):
    # HeaderSize = -1: the pixels are the last bytes of the data file, after a header of any size.
    data = np.full((12, 16, 16), -500, dtype=np.int16)
    path = write_mhd(tmp_path, "scan.mhd", dict(GOOD_HEADER, HeaderSize=-1), b"HDR" * 11 + data.tobytes())
    assert read_volume(path).array.mean() == -500


# ------------------------------------------------------------------- other corrupt files
@pytest.mark.parametrize("name, content, message", [
    ("empty.mhd", b"", "no DimSize"),
    ("binary.mhd", bytes(range(256)) * 4, "not a MetaImage"),
    ("garbage.nrrd", b"NRRD0004\nthis is not an image\n", "not an image file"),
    ("garbage.nii", b"\0" * 400, "not an image file"),
    ("empty.nii.gz", b"", "not an image file"),
    ("text.nii.gz", b"hello", "not an image file"),
    ("random.mha", os.urandom(300), "not a MetaImage"),
])
def test_corrupt_files_exit_2_naming_the_file(tmp_path, capsys, model_calls, name, content, message):
    (tmp_path / name).write_bytes(content)
    out = tmp_path / "out"
    code, _, err = cli(["detect", str(tmp_path / name), "--out", str(out), "--progress", "none"], capsys)
    assert code == 2 and message in err and name in err, err
    assert not model_calls
    assert_no_partial(out)


@pytest.mark.parametrize("case, message", [
    ("nrrd sizes larger than data", "truncated or corrupt"),
    ("nrrd origin nan", "not an image file"),
    ("nrrd spacing zero", "invalid voxel spacing"),
    ("nifti truncated", "pixel data is truncated"),
    ("nifti.gz truncated", "truncated or corrupt and cannot be uncompressed"),
    ("nifti.gz short stream", "pixel data is truncated"),
])
def test_lying_nrrd_and_nifti_headers(tmp_path, chest_phantom, case, message):
    vol = phantom(chest_phantom, nodule=False, shape=(10, 12, 14))
    if case.startswith("nrrd"):
        path = Path(write_volume(vol, tmp_path / "scan.nrrd"))
        data = path.read_bytes()
        header, sep, body = data.partition(b"\n\n")
        header = {"nrrd sizes larger than data": header.replace(b"sizes: 14 12 10", b"sizes: 14 12 20"),
                  "nrrd origin nan": header.replace(b"space origin: (", b"space origin: (nan,"),
                  "nrrd spacing zero": header.replace(b"space directions: (4,0,0)", b"space directions: (0,0,0)")
                  }[case]
        assert header != data.partition(b"\n\n")[0], header
        path.write_bytes(header + sep + body)
    elif case == "nifti truncated":
        path = Path(write_volume(vol, tmp_path / "scan.nii"))
        path.write_bytes(path.read_bytes()[:-500])
    else:  # ITK reads both without complaint and fills the missing voxels with zeros
        import gzip

        path = Path(write_volume(vol, tmp_path / "scan.nii.gz"))
        data = path.read_bytes()
        path.write_bytes(data[:-200] if case == "nifti.gz truncated" else gzip.compress(gzip.decompress(data)[:-500]))
    with pytest.raises(VolumeError, match=message):
        read_volume(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_voxels(tmp_path, capsys, chest_phantom, model_calls, bad):
    vol = phantom(chest_phantom, nodule=False)
    vol.array[3, 4, 5] = bad
    path = write_volume(vol, tmp_path / "bad.nrrd")
    code, _, err = cli(["detect", path, "--out", str(tmp_path / "out"), "--progress", "none"], capsys)
    assert code == 2 and "1 voxels with invalid values" in err
    assert not model_calls


def test_non_orthonormal_direction(tmp_path, capsys, model_calls):
    path = hostile_mhd(tmp_path, TransformMatrix="1 0 0 0 2 0 0 0 1")
    code, _, err = cli(["detect", str(path), "--out", str(tmp_path / "out"), "--progress", "none"], capsys)
    assert code == 2 and "direction cosines are not orthonormal" in err


# ---------------------------------------------------------------- geometry limits (defect 7)
def test_scan_too_small_to_hold_lungs(tmp_path, capsys, chest_phantom, model_calls):
    vol = phantom(chest_phantom, nodule=False, shape=(12, 16, 16), spacing=(1.0, 1.0, 1.0))
    path = write_volume(vol, tmp_path / "crop.mhd")
    code, _, err = cli(["detect", path, "--out", str(tmp_path / "out"), "--progress", "none"], capsys)
    assert code == 2 and "covers only 15 x 15 x 11 mm" in err and "hold a lung" in err
    assert not model_calls


def test_coarse_pixels_refused_in_memory_too():
    with pytest.raises(VolumeError, match="pixel spacing of 50 x 50 mm"):
        Volume.from_array(np.zeros((8, 8, 8)), (50.0, 50.0, 4.0))
    # the 1 mm grid of 32 x 32 x 16 voxels of 4.9 mm is small; of 200 mm slices it is refused anyway
    Volume.from_array(np.zeros((16, 32, 32)), (4.9, 4.9, 4.9))


# -------------------------------------------------------------------- DICOM (defects 3, 5, 10)
def _dicom(tmp_path, chest_phantom, write_dicom_series, strip=(), modality="CT", name="series"):
    import pydicom

    folder = tmp_path / name
    _, paths = write_dicom_series(folder, phantom(chest_phantom, nodule=False, shape=(40, 56, 64)), modality=modality)
    for p in paths:
        ds = pydicom.dcmread(p)
        for keyword in strip:
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(p)
    return folder, paths


@pytest.mark.parametrize("strip, message", [
    (("ImagePositionPatient",), "have no (readable) ImagePositionPatient"),
    (("ImageOrientationPatient",), "has no ImageOrientationPatient"),
    (("PixelData",), "no PixelData"),
])
def test_dicom_without_geometry_or_pixels_is_refused(tmp_path, capsys, chest_phantom, write_dicom_series,
                                                    model_calls, strip, message):
    folder, _ = _dicom(tmp_path, chest_phantom, write_dicom_series, strip)
    out = tmp_path / "out"
    code, _, err = cli(["detect", str(folder), "--out", str(out), "--progress", "none"], capsys)
    assert code == 2 and message in err, err
    assert not model_calls
    assert_no_partial(out)


def test_one_slice_without_position_is_refused(tmp_path, chest_phantom, write_dicom_series):
    import pydicom

    folder, paths = _dicom(tmp_path, chest_phantom, write_dicom_series)
    ds = pydicom.dcmread(paths[5])
    del ds.ImagePositionPatient
    ds.save_as(paths[5])
    with pytest.raises(VolumeError, match="1 of 40 slices have no"):
        read_volume(folder)


def test_a_truncated_slice_is_named_as_unreadable(tmp_path, chest_phantom, write_dicom_series):
    folder, paths = _dicom(tmp_path, chest_phantom, write_dicom_series)
    Path(paths[7]).write_bytes(Path(paths[7]).read_bytes()[:-100])
    with pytest.raises(VolumeError, match=r"uneven slice spacing.*1 DICOM file\(s\) in the folder could not be read"):
        read_volume(folder)


def test_mr_series_needs_allow_non_ct(tmp_path, capsys, chest_phantom, write_dicom_series, model_calls):
    folder, _ = _dicom(tmp_path, chest_phantom, write_dicom_series, modality="MR")
    out = tmp_path / "out"
    code, _, err = cli(["detect", str(folder), "--out", str(out), "--progress", "none", "--format", "json"], capsys)
    assert code == 2 and "is a MR series, not CT" in err and "--allow-non-ct on the command line" in err
    code, _, _ = cli(["detect", str(folder), "--out", str(out), "--progress", "none", "--format", "json",
                      "--allow-non-ct"], capsys)
    assert code == 0 and (out / "series" / "findings.json").is_file()


def test_several_series_message_names_the_cli_option(tmp_path, capsys, chest_phantom, write_dicom_series,
                                                     model_calls):
    vol = phantom(chest_phantom, nodule=False)
    write_dicom_series(tmp_path / "mixed", vol, prefix="A")
    write_dicom_series(tmp_path / "mixed", vol, prefix="B")
    code, _, err = cli(["detect", str(tmp_path / "mixed"), "--out", str(tmp_path / "out"), "--progress", "none"],
                       capsys)
    assert code == 2 and "choose one with --series-uid" in err
    code, _, err = cli(["detect", str(tmp_path / "mixed"), "--out", str(tmp_path / "out"), "--progress", "none",
                        "--series-uid", "1.2.3"], capsys)
    assert code == 2 and "The series 1.2.3 is not in" in err
    assert not model_calls


SR_OPTIONAL = pytest.mark.skipif(not batch.sr_available(), reason="needs the dicom extra (highdicom)")


@SR_OPTIONAL
def test_sr_without_type2_attributes_is_written_with_them_empty(tmp_path, capsys, chest_phantom,
                                                                write_dicom_series, model_calls):
    import pydicom

    type2 = ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime")
    folder, _ = _dicom(tmp_path, chest_phantom, write_dicom_series, strip=type2)
    out = tmp_path / "out"
    code, _, err = cli(["detect", str(folder), "--out", str(out), "--progress", "none"], capsys)
    assert code == 0, err
    sr = pydicom.dcmread(out / "series" / "findings_sr.dcm")
    assert all(keyword in sr and sr.data_element(keyword).value in ("", None) for keyword in type2)
    assert_no_partial(out, RESULT_FILES | {"findings_sr.dcm"})


@SR_OPTIONAL
def test_sr_that_cannot_be_written_is_a_warning_and_the_rest_lands(tmp_path, capsys, chest_phantom,
                                                                   write_dicom_series, model_calls):
    folder, _ = _dicom(tmp_path, chest_phantom, write_dicom_series, strip=("FrameOfReferenceUID",))
    out = tmp_path / "out"
    code, stdout, err = cli(["detect", str(folder), "--out", str(out), "--progress", "jsonl"], capsys)
    assert code == 0
    events = [json.loads(line) for line in stdout.splitlines()]
    warnings = [e for e in events if e["event"] == "warning"]
    assert len(warnings) == 1 and "FrameOfReferenceUID" in warnings[0]["message"]
    assert events[-1]["event"] == "done"
    assert {p.name for p in (out / "series").iterdir()} == RESULT_FILES
    assert_no_partial(out)


# ------------------------------------------------------------ special files (defect 6)
def test_fifo_device_and_link_loop_inputs_are_refused_and_the_batch_goes_on(tmp_path, capsys, chest_phantom,
                                                                            model_calls):
    good = write_volume(phantom(chest_phantom), tmp_path / "good.mhd")
    fifo = tmp_path / "pipe.mhd"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.mhd"
    os.symlink(loop, loop)
    dangling = tmp_path / "dangling.nrrd"
    os.symlink(tmp_path / "nowhere", dangling)
    out = tmp_path / "out"
    code, _, err = cli(["detect", str(fifo), "/dev/null", str(loop), str(dangling), good, "--out", str(out),
                        "--progress", "none"], capsys)
    assert code == 2
    assert "4 input(s) failed" in err
    assert "pipe.mhd: is a FIFO" in err and "/dev/null: is a device" in err
    assert "loop.mhd: is a symbolic link loop" in err and "dangling.nrrd: does not exist" in err
    assert {p.name for p in (out / "good").iterdir()} == RESULT_FILES
    assert_no_partial(out)


def test_folder_with_special_files_skips_them_with_a_message(tmp_path, capsys, chest_phantom, model_calls):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    write_volume(phantom(chest_phantom), data / "sub" / "good.nrrd")
    os.mkfifo(data / "pipe.mhd")
    os.mkfifo(data / "sub" / "notes")          # no scan suffix, but still never opened
    os.symlink(data / "self.nii", data / "self.nii")
    os.symlink(data, data / "sub" / "back-to-top")   # a directory loop
    out = tmp_path / "out"
    code, stdout, err = cli(["detect", str(data), "--out", str(out), "--progress", "none"], capsys)
    assert code == 0, err
    assert "pipe.mhd: is a FIFO (named pipe)" in stdout and "self.nii: is a symbolic link loop" in stdout
    assert "link loop); skipped" in stdout
    assert {p.name for p in (out / "good").iterdir()} == RESULT_FILES
    assert_no_partial(out)


def test_output_folder_inside_the_searched_folder_is_not_searched(tmp_path, capsys, chest_phantom,
                                                                  write_dicom_series, model_calls):
    data = tmp_path / "data"
    _dicom(data, chest_phantom, write_dicom_series, name="ct")
    for _ in range(2):  # the second run must not take results/ct/findings_sr.dcm for a DICOM series
        code, stdout, err = cli(["detect", str(data), "--out", str(data / "results"), "--progress", "none"], capsys)
        assert code == 0, err
    assert "already done" in stdout and len(model_calls) == 1


def _nhdr(tmp_path, data_file_line: str) -> Path:
    path = tmp_path / "scan.nhdr"
    path.write_text("NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 16 16 12\n"
                    "space directions: (4,0,0) (0,4,0) (0,0,4)\nendian: little\nencoding: raw\n"
                    f"space origin: (0,0,0)\n{data_file_line}\n\n")
    return path


@pytest.mark.parametrize("kind", ["fifo", "device", "folder", "missing", "list with a fifo"])
def test_a_header_naming_a_special_data_file_never_opens_it(tmp_path, kind):
    os.mkfifo(tmp_path / "pipe.raw")
    (tmp_path / "dir.raw").mkdir()
    (tmp_path / "ok.raw").write_bytes(b"\0" * GOOD_BYTES)
    name = {"fifo": "pipe.raw", "device": "/dev/zero", "folder": "dir.raw", "missing": "gone.raw",
            "list with a fifo": None}[kind]
    message = "is missing" if kind == "missing" else "not a regular file"
    mhd = tmp_path / "scan.mhd"
    mhd.write_text("".join(f"{k} = {v}\n" for k, v in GOOD_HEADER.items()) + f"ElementDataFile = {name or 'pipe.raw'}\n")
    for header in (_nhdr(tmp_path, f"data file: {name}" if name else "data file: LIST\nok.raw\npipe.raw"), mhd):
        with pytest.raises(VolumeError, match=message):
            read_volume(header)


def test_good_detached_nrrd_is_read(tmp_path):
    (tmp_path / "ok.raw").write_bytes(np.full((12, 16, 16), -700, dtype="<i2").tobytes())
    vol = read_volume(_nhdr(tmp_path, "data file: ok.raw"))
    assert vol.array.shape == (12, 16, 16) and float(vol.array.mean()) == -700.0


def test_read_volume_never_opens_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "x.nrrd")
    with pytest.raises(VolumeError, match="not a regular file"):
        read_volume(tmp_path / "x.nrrd")


def test_fifo_in_a_dicom_folder_does_not_hang(tmp_path, chest_phantom, write_dicom_series):
    folder, _ = _dicom(tmp_path, chest_phantom, write_dicom_series)
    os.mkfifo(folder / "fifo")
    proc = subprocess_detect([str(folder), "--out", str(tmp_path / "out"), "--format", "json", "--progress",
                              "none", "--model", str(tmp_path / "no-model")], timeout=120)
    assert proc.returncode == 2 and "neither a model directory nor a bundled model" in proc.stderr
    assert_no_partial(tmp_path / "out")


@pytest.mark.parametrize("kind", ["fifo", "loop"])
def test_subprocess_special_inputs_end_quickly(tmp_path, kind):
    target = {"fifo": tmp_path / "p", "fifo folder": tmp_path / "d", "dev null": Path("/dev/null"),
              "missing": tmp_path / "missing.mhd", "loop": tmp_path / "l"}[kind]
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "fifo folder":
        target.mkdir()
        os.mkfifo(target / "scan.mhd")
    elif kind == "loop":
        os.symlink(target, target)
    proc = subprocess_detect([str(target), "--out", str(tmp_path / "out"), "--progress", "jsonl"], timeout=60)
    assert proc.returncode == 2
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert any(e["event"] == "error" and e["exit_code"] == 2 for e in events)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------ output folder (defect 8)
def test_out_is_a_file_or_under_a_file(tmp_path, capsys, chest_phantom, model_calls):
    good = write_volume(phantom(chest_phantom), tmp_path / "good.mhd")
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / "file", "is a file, not a folder"),
                         (tmp_path / "file" / "sub", "is a file"), ("", "empty string")):
        code, _, err = cli(["detect", good, "--out", str(out), "--progress", "none"], capsys)
        assert code == 2 and "--out" in err and message in err, err
    assert not model_calls


def test_unwritable_out_fails_before_any_work(tmp_path, capsys, chest_phantom, model_calls, monkeypatch):
    good = write_volume(phantom(chest_phantom), tmp_path / "good.mhd")
    real_mkdtemp = batch.tempfile.mkdtemp

    def read_only(*args, **kwargs):
        if kwargs.get("prefix", "").startswith(".write-test-"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkdtemp(*args, **kwargs)

    monkeypatch.setattr(batch.tempfile, "mkdtemp", read_only)
    code, _, err = cli(["detect", good, "--out", str(tmp_path / "out"), "--progress", "none"], capsys)
    assert code == 2 and "is not writable (Read-only file system)" in err
    assert not model_calls


# ---------------------------------------------------------------- option values (defect 9)
@pytest.mark.parametrize("option, value, message", [
    ("--max-candidates", "-5", "whole number >= 1"),
    ("--max-candidates", "0", "whole number >= 1"),
    ("--max-candidates", "ten", "whole number >= 1"),
    ("--min-score", "nan", "between 0 and 1"),
    ("--min-score", "inf", "between 0 and 1"),
    ("--min-score", "-0.1", "between 0 and 1"),
    ("--min-score", "1.5", "between 0 and 1"),
    ("--batch-size", "-1", "whole number >= 1"),
    ("--batch-size", "0", "whole number >= 1"),
    ("--format", "png", "unknown --format"),
    ("--format", ",", "unknown --format"),
    ("--operating-point", "best", "invalid choice"),
    ("--device", "tpu", "invalid choice"),
])
def test_bad_option_values_are_refused_while_parsing(tmp_path, capsys, model_calls, option, value, message):
    code, _, err = cli(["detect", str(tmp_path / "never-read.mhd"), "--out", str(tmp_path / "out"), option, value],
                       capsys)
    assert code == 2 and option in err and message in err, err
    assert not model_calls and not (tmp_path / "out").exists()


def test_single_input_options_with_several_inputs(tmp_path, capsys, chest_phantom, model_calls):
    a = write_volume(phantom(chest_phantom), tmp_path / "a.mhd")
    b = write_volume(phantom(chest_phantom), tmp_path / "b.mhd")
    for extra in (["--series-uid", "1.2.3"], ["--lung-mask", a]):
        code, _, err = cli(["detect", a, b, "--out", str(tmp_path / "out"), "--progress", "none", *extra], capsys)
        assert code == 2 and "apply to a single input scan" in err
    code, _, err = cli(["detect", a, "--out", str(tmp_path / "out"), "--progress", "none", "--lung-mask",
                        str(tmp_path / "no-mask.mhd")], capsys)
    assert code == 2 and "does not exist" in err
    assert not model_calls


@pytest.mark.parametrize("field, value", [("max_candidates", -5), ("max_candidates", 2.5), ("min_score", float("nan")),
                                          ("min_score", 2.0), ("formats", ("png",)), ("formats", ())])
def test_library_batch_options_refuse_the_same_values(field, value):
    with pytest.raises(ValueError, match=field.rstrip("s")):
        batch.BatchOptions(**{field: value})


def test_messages_survive_a_terminal_that_cannot_show_the_file_name():
    import io

    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", errors="strict")
    sink = batch.EventSink("none", stream)
    sink.message("M\u00fcller/\udcff.mhd: FAILED")
    sink.warning("\u00e9t\u00e9")
    stream.flush()
    assert raw.getvalue().decode("ascii").splitlines() == ["M\\xfcller/\\udcff.mhd: FAILED", "warning: \\xe9t\\xe9"]


def test_subprocess_bad_option_value(tmp_path):
    proc = subprocess_detect(["x.mhd", "--out", str(tmp_path / "o"), "--max-candidates", "-5"], timeout=60)
    assert proc.returncode == 2 and "--max-candidates: must be a whole number >= 1, got '-5'" in proc.stderr


# --------------------------------------------------------------- model cards (defect 12)
@pytest.mark.parametrize("card, message", [
    ("null", "not a JSON object"),
    ('"a string"', "not a JSON object"),
    ("[1, 2]", "not a JSON object"),
    ('{"sha256": "0"}', "no 'config' field"),
    ('{"config": [], "sha256": "0"}', "'config' must be an object"),
    ('{"config": {}, "sha256": 5}', "'sha256' must be a hex string"),
    ('{"config": {}, "sha256": "0", "operating_points": []}', "'operating_points' must be an object"),
    ("{not json", "not valid JSON"),
])
def test_malformed_model_card_is_a_model_error(tmp_path, card, message):
    from LesionDetectorLib.model.card import read_card

    (tmp_path / "model.json").write_text(card)
    with pytest.raises(ModelError, match=message):
        read_card(tmp_path)


def test_non_utf8_card_and_wrong_typed_config_field(tmp_path):
    import hashlib

    from LesionDetectorLib.model import ModelConfig
    from LesionDetectorLib.model.card import load_pretrained, read_card

    (tmp_path / "model.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ModelError, match="not valid JSON"):
        read_card(tmp_path)
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"weights")
    config = ModelConfig.preset("luna16").to_dict()
    config["stem_channels"] = "many"
    (model_dir / "model.json").write_text(json.dumps({"config": config,
                                                      "sha256": hashlib.sha256(b"weights").hexdigest()}))
    with pytest.raises(ModelError, match="invalid config"):
        load_pretrained(model_dir)


def test_cli_with_a_null_model_card_exits_2(tmp_path, capsys, chest_phantom):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.json").write_text("null")
    good = write_volume(phantom(chest_phantom), tmp_path / "good.mhd")
    code, _, err = cli(["detect", good, "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out"),
                        "--progress", "none"], capsys)
    assert code == 2 and "not a JSON object" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("array, spacing, message", [
    (np.zeros((4, 4, 4)), (1.0, 1.0), "spacing has 2 values"),
    (np.zeros((4, 4, 4)), "1 1 1", "is not numbers"),
    (np.zeros((4, 4, 4)), ("a", "b", "c"), "is not numbers"),
    (np.zeros((4, 4, 4)), (1.0, 1.0, 1.0, 1.0), "spacing has 4 values"),
    (np.zeros((4, 4, 4), dtype=complex), (1.0, 1.0, 1.0), "complex128 values"),
    (np.full((4, 4, 4), None, dtype=object), (1.0, 1.0, 1.0), "object values"),
    (np.full((4, 4, 4), "x"), (1.0, 1.0, 1.0), "<U1 values"),
    (np.zeros((4, 0, 4)), (1.0, 1.0, 1.0), "is empty"),
])
def test_from_array_refuses_bad_arrays_and_geometry(array, spacing, message):
    with pytest.raises(VolumeError, match=message):
        Volume.from_array(array, spacing)


def test_from_array_refuses_bad_origin_and_direction():
    with pytest.raises(VolumeError, match="origin has 2 values"):
        Volume.from_array(np.zeros((4, 4, 4)), (1, 1, 1), origin=(0, 0))
    with pytest.raises(VolumeError, match="direction has 4 values"):
        Volume.from_array(np.zeros((4, 4, 4)), (1, 1, 1), direction=(1, 0, 0, 1))


# --------------------------------------------------------------- NaN and Infinity (defect 11)
def _findings(center=(1.0, 2.0, 3.0)):
    from test_export_formats import make_findings

    f = make_findings()
    f.candidates[0].center_lps = list(center)  # as a buggy caller would, after validation
    return f


def test_candidate_refuses_nan_and_inf():
    from LesionDetectorLib.findings import Candidate

    for bad in (dict(center_lps=[np.nan, 0, 0]), dict(center_lps=[0, np.inf, 0]), dict(score=np.nan),
                dict(diameter_mm=np.inf), dict(score_rpn=-np.inf)):
        fields = dict(id="N1", rank=1, center_lps=[0, 0, 0], diameter_mm=5.0, score=0.9, score_rpn=0.9,
                      score_fprn=0.9)
        fields.update(bad)
        with pytest.raises(ValueError, match="must be finite"):
            Candidate(**fields)


@pytest.mark.parametrize("writer", ["json", "mrk.json", "csv"])
def test_writers_refuse_nan_and_leave_no_file(tmp_path, writer):
    from LesionDetectorLib.export import write_findings_json, write_luna16_csv, write_markups_json

    f = _findings(center=(np.nan, 0.0, 0.0))
    path = tmp_path / f"out.{writer}"
    with pytest.raises(ValueError, match="(?i)nan|finite|number"):
        {"json": lambda: write_findings_json(f, path), "mrk.json": lambda: write_markups_json(f, path),
         "csv": lambda: write_luna16_csv([f], path, series_uids=["1.2"])}[writer]()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text, message", [
    ("NaN", "NaN is not a JSON number"),
    ("Infinity", "Infinity is not a JSON number"),
    ("-Infinity", "-Infinity is not a JSON number"),
])
def test_read_findings_json_refuses_nan(tmp_path, text, message):
    from LesionDetectorLib.export import write_findings_json

    path = write_findings_json(_findings(), tmp_path / "f.json")
    doc = path.read_text().replace('"score": 0.93,', f'"score": {text},', 1)
    assert text in doc
    path.write_text(doc)
    with pytest.raises(ValueError, match=message):
        read_findings_json(path)


def test_read_findings_json_names_a_non_utf8_file(tmp_path):
    (tmp_path / "f.json").write_bytes(b'{"schema": "\xff\xfe"}')
    with pytest.raises(ValueError, match=r"f\.json: not a findings file \(not UTF-8"):
        read_findings_json(tmp_path / "f.json")


# --------------------------------------------------------- scan identity (defect 1)
def _two_same_stem(tmp_path, chest_phantom):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write_volume(phantom(chest_phantom, nodule=True), tmp_path / "a" / "scan.mhd")
    b = write_volume(phantom(chest_phantom, nodule=False), tmp_path / "b" / "scan.mhd")
    return a, b


def test_same_stem_in_one_call_gets_two_folders_and_two_seriesuids(tmp_path, capsys, chest_phantom, model_calls):
    a, b = _two_same_stem(tmp_path, chest_phantom)
    out = tmp_path / "out"
    code, _, err = cli(["detect", a, b, "--out", str(out), "--progress", "none"], capsys)
    assert code == 0, err
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(folders) == 2 and folders[0] == "scan" and folders[1].startswith("scan-")
    sources = {read_findings_json(out / n / "findings.json").volume["source"] for n in folders}
    assert sources == {a, b}
    # the scan with the nodule has a row; each scan's own CSV and the submission agree on its seriesuid
    rows = list(csv.DictReader(open(out / "luna16_submission.csv", newline="")))
    with_nodule = next(n for n in folders if read_findings_json(out / n / "findings.json").volume["source"] == a)
    own = list(csv.DictReader(open(out / with_nodule / "luna16.csv", newline="")))
    assert [r["seriesuid"] for r in rows] == [r["seriesuid"] for r in own] == [with_nodule]
    assert sorted(uid for _, _, uid in batch.submission_uids(out)) == folders
    assert_no_partial(out)


def test_a_different_scan_with_the_same_stem_is_not_skipped(tmp_path, capsys, chest_phantom, model_calls):
    a, b = _two_same_stem(tmp_path, chest_phantom)
    out = tmp_path / "out"
    assert cli(["detect", a, "--out", str(out), "--progress", "jsonl"], capsys)[0] == 0
    code, stdout, _ = cli(["detect", b, "--out", str(out), "--progress", "jsonl"], capsys)
    assert code == 0
    done = [json.loads(line) for line in stdout.splitlines() if '"done"' in line][-1]
    assert not done.get("skipped") and Path(done["findings"]).parent.name.startswith("scan-")
    assert read_findings_json(done["findings"]).volume["source"] == b
    # both again: each is found in its own folder and skipped
    code, stdout, _ = cli(["detect", b, a, "--out", str(out), "--progress", "jsonl"], capsys)
    done = [json.loads(line) for line in stdout.splitlines() if '"done"' in line]
    assert code == 0 and len(done) == 2 and all(e["skipped"] for e in done)
    assert {read_findings_json(e["findings"]).volume["source"] for e in done} == {a, b}
    assert len(model_calls) == 2


def test_a_changed_scan_is_redone_in_its_folder(tmp_path, capsys, chest_phantom, model_calls):
    path = write_volume(phantom(chest_phantom), tmp_path / "scan.mhd")
    out = tmp_path / "out"
    assert cli(["detect", path, "--out", str(out), "--progress", "none"], capsys)[0] == 0
    write_volume(phantom(chest_phantom, nodule=False), path)
    os.utime(path, ns=(1, 1))
    code, stdout, _ = cli(["detect", path, "--out", str(out), "--progress", "none"], capsys)
    assert code == 0 and "changed since its results" in stdout
    assert [p.name for p in out.iterdir() if p.is_dir()] == ["scan"]
    assert len(read_findings_json(out / "scan" / "findings.json")) == 0
    assert_no_partial(out)


def test_an_unreadable_findings_file_elsewhere_is_left_out_of_the_submission(tmp_path, capsys, chest_phantom,
                                                                           model_calls):
    out = tmp_path / "out"
    (out / "edited").mkdir(parents=True)
    (out / "edited" / "findings.json").write_text('{"schema": "lesion-detector/findings", "candidates": NaN}')
    path = write_volume(phantom(chest_phantom), tmp_path / "scan.mhd")
    code, stdout, _ = cli(["detect", path, "--out", str(out), "--progress", "none"], capsys)
    assert code == 0 and "luna16_submission.csv: edited left out" in stdout
    rows = list(csv.DictReader(open(out / "luna16_submission.csv", newline="")))
    assert [r["seriesuid"] for r in rows] == ["scan"]


def test_the_same_input_twice_is_done_once(tmp_path, capsys, chest_phantom, model_calls):
    path = write_volume(phantom(chest_phantom), tmp_path / "scan.mhd")
    out = tmp_path / "out"
    code, _, _ = cli(["detect", path, str(tmp_path / "." / "scan.mhd"), "--out", str(out), "--progress", "none"],
                     capsys)
    assert code == 0 and [p.name for p in out.iterdir() if p.is_dir()] == ["scan"]


# ------------------------------------------------------------- all-or-nothing (defect 2)
@pytest.mark.parametrize("failing, exc", [
    ("write_findings_json", OSError(errno.ENOSPC, "No space left on device")),
    ("write_markups_json", OSError(errno.ENOSPC, "No space left on device")),
    ("write_luna16_csv", ValueError("exporter bug")),
    ("write_findings_json", RuntimeError("internal exporter error")),
])
def test_an_export_failure_leaves_no_scan_folder(tmp_path, capsys, chest_phantom, model_calls, monkeypatch,
                                                 failing, exc):
    from LesionDetectorLib import export

    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(export, failing, boom)
    path = write_volume(phantom(chest_phantom), tmp_path / "scan.mhd")
    out = tmp_path / "out"
    code, _, err = cli(["detect", path, "--out", str(out), "--progress", "none"], capsys)
    assert code == (1 if isinstance(exc, RuntimeError) else 2)
    assert str(exc.args[-1]) in err
    assert not out.exists() or not any(out.iterdir())


def test_a_failed_overwrite_keeps_the_previous_results_whole(tmp_path, capsys, chest_phantom, model_calls,
                                                             monkeypatch):
    from LesionDetectorLib import export

    path = write_volume(phantom(chest_phantom), tmp_path / "scan.mhd")
    out = tmp_path / "out"
    assert cli(["detect", path, "--out", str(out), "--progress", "none"], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in (out / "scan").iterdir()}

    def boom(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "write_findings_json", boom)
    code, _, _ = cli(["detect", path, "--out", str(out), "--progress", "none", "--overwrite"], capsys)
    assert code == 2
    assert {p.name: p.read_bytes() for p in (out / "scan").iterdir()} == before
    assert_no_partial(out)


def test_leftovers_of_a_killed_run_are_cleaned_or_restored(tmp_path, capsys, chest_phantom, model_calls):
    path = write_volume(phantom(chest_phantom), tmp_path / "scan.mhd")
    out = tmp_path / "out"
    assert cli(["detect", path, "--out", str(out), "--progress", "none"], capsys)[0] == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # killed between "old results moved aside" and "new folder renamed in", and while writing another scan
    os.rename(out / "scan", out / f".scan.old-{dead.pid}-abcd1234")
    (out / f".other.partial-{dead.pid}-x").mkdir()
    (out / f".other.partial-{dead.pid}-x" / "findings.mrk.json").write_text("{}")
    (out / f".busy.partial-{os.getpid()}-y").mkdir()  # a live process's folder is left alone
    code, stdout, _ = cli(["detect", path, "--out", str(out), "--progress", "none"], capsys)
    assert code == 0 and "restored the previous results" in stdout and "already done" in stdout
    assert sorted(p.name for p in out.iterdir()) == [f".busy.partial-{os.getpid()}-y", "luna16_submission.csv",
                                                      "scan"]
    assert len(model_calls) == 1


def test_ctrl_c_during_export_leaves_nothing(tmp_path, chest_phantom, model_calls, monkeypatch):
    from LesionDetectorLib import export

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "write_luna16_csv", interrupt)
    path = write_volume(phantom(chest_phantom), tmp_path / "scan.mhd")
    assert main(["detect", path, "--out", str(tmp_path / "out"), "--progress", "none", "--no-characterize"]) == 130
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------ good input
@pytest.mark.parametrize("fmt", ["mhd", "mha", "nrrd", "nii", "nii.gz", "zraw"])
def test_good_scans_in_every_format_give_complete_results(tmp_path, capsys, chest_phantom, model_calls, fmt):
    vol = phantom(chest_phantom)
    path = write_volume(vol, tmp_path / f"case.{'mhd' if fmt == 'zraw' else fmt}", compress=fmt == "zraw")
    out = tmp_path / "out"
    code, stdout, err = cli(["detect", path, "--out", str(out), "--progress", "none", "--max-candidates", "1",
                             "--min-score", "0.3"], capsys, characterize=fmt in ("mhd", "nii.gz"))
    assert code == 0, err
    folder = out / "case"
    masks = {"nodule_masks.seg.nrrd"} if fmt in ("mhd", "nii.gz") else set()   # characterized runs
    assert {p.name for p in folder.iterdir()} == RESULT_FILES | masks
    findings = read_findings_json(folder / "findings.json")
    assert len(findings) == 1 and np.linalg.norm(np.asarray(findings.candidates[0].center_lps) - NODULE) < 3.0
    assert findings.volume["input_id"] and (out / "luna16_submission.csv").is_file()
    assert_no_partial(out)


def test_good_dicom_series_gives_complete_results(tmp_path, capsys, chest_phantom, write_dicom_series, model_calls):
    folder, _ = _dicom(tmp_path, chest_phantom, write_dicom_series)
    out = tmp_path / "out"
    code, _, err = cli(["detect", str(folder), "--out", str(out), "--progress", "none"], capsys, characterize=True)
    assert code == 0, err
    expected = RESULT_FILES | ({"findings_sr.dcm"} if batch.sr_available() else set())
    assert {p.name for p in (out / "series").iterdir()} == expected
    assert_no_partial(out, expected)
