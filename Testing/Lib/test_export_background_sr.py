"""The DICOM SR written by a background process: the same report as written here, written here
when the background process is gone, and an SR that cannot be made is still only a warning."""
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from LesionDetectorLib.batch import write_exports  # noqa: E402
from test_export_formats import _ct_series, make_findings  # noqa: E402


def _groups(path):
    import highdicom as hd

    report = hd.sr.srread(path)
    return [(g.tracking_identifier, tuple(g.roi.value[0])) for g in report.content.get_planar_roi_measurement_groups()]


@pytest.fixture(scope="module")
def pool():
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        yield ex


def test_background_sr_is_the_same_report(tmp_path, pool):
    ct = _ct_series(tmp_path)
    f = make_findings(series_uid=ct.series_uid)
    here, w1 = write_exports(f, ct, tmp_path / "here", ("sr", "json"))
    there, w2 = write_exports(f, ct, tmp_path / "there", ("sr", "json"), background=pool)
    assert not w1 and not w2
    assert _groups(here["sr"]) == _groups(there["sr"]) and len(_groups(there["sr"])) == len(f.candidates)
    assert sorted(p.name for p in (tmp_path / "there").iterdir()) == ["findings.json", "findings_sr.dcm"]


def test_a_gone_background_process_still_gives_the_sr(tmp_path):
    ct = _ct_series(tmp_path)
    f = make_findings(series_uid=ct.series_uid)
    gone = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    gone.shutdown()
    written, warnings = write_exports(f, ct, tmp_path / "out", ("sr",), background=gone)
    assert not warnings and pydicom.dcmread(written["sr"]).Modality == "SR"


def test_an_sr_that_cannot_be_made_is_a_warning_with_its_reason(tmp_path, pool):
    ct = _ct_series(tmp_path)
    f = make_findings(series_uid=ct.series_uid)
    missing = [str(tmp_path / "nope.dcm")]         # the source series vanished before the export
    ct.metadata["dicom_files"] = missing
    written, warnings = write_exports(f, ct, tmp_path / "out", ("sr", "json"), background=pool)
    assert "sr" not in written and len(warnings) == 1 and "DICOM SR was not written" in warnings[0]
    assert "nope.dcm" in warnings[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["findings.json"]
