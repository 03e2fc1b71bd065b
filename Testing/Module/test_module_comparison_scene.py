"""Follow-up comparison -> pairs table and two slice views centred on a pair (real MRML scene)."""
import json

import numpy as np
import pytest
import slicer

from LesionDetectorLogicLib import comparison_scene
from module_test_helpers import FakeDicomDatabase, add_volume, flipped_ijk_to_ras, oblique_ijk_to_ras


def _doc():
    def side(i, lps, d, v):
        return {"id": i, "center_lps": lps, "mean_diameter_mm": d, "volume_ml": v, "size_source": "characterization"}
    return {"schema": "lesion-detector/comparison", "schema_version": "1.0", "pairs": [
        {"current": side("N1", [10.0, 20.0, -30.0], 9.0, 0.38), "prior": side("N4", [12.0, 25.0, -41.0], 6.5, 0.14),
         "status": "grown", "diameter_change_mm": 2.5, "volume_change_pct": 171.4, "volume_doubling_days": 253.1,
         "lung_rads": {"category": "4B", "rule": "growing solid >= 8 mm"},
         "current_center_in_prior_lps": [12.0, 25.0, -41.0]},
        {"current": side("N2", [-60.0, 5.0, 12.0], 5.0, 0.06), "prior": None, "status": "new",
         "diameter_change_mm": None, "volume_change_pct": None, "volume_doubling_days": None,
         "lung_rads": {"category": "3", "rule": "new solid 4 to < 6 mm"},
         "current_center_in_prior_lps": [-58.0, 9.0, 1.0]},
        {"current": None, "prior": side("N7", [40.0, -10.0, 70.0], 7.0, 0.18), "status": "resolved",
         "diameter_change_mm": None, "volume_change_pct": None, "volume_doubling_days": None, "lung_rads": None,
         "prior_center_in_current_lps": [38.0, -14.0, 81.0]}]}


@pytest.fixture
def views(scene):
    out = {}
    for name in ("Red", "Yellow"):
        sn = slicer.vtkMRMLSliceNode()
        sn.SetLayoutName(name)
        sn.SetName(name)
        scene.AddNode(sn)
        cn = slicer.vtkMRMLSliceCompositeNode()
        cn.SetLayoutName(name)
        scene.AddNode(cn)
        out[name] = (sn, cn)
    return out


def _centre_ras(slice_node):
    m = slice_node.GetSliceToRAS()
    return [m.GetElement(i, 3) for i in range(3)]


def test_table_rows_and_document_round_trip(scene):
    doc = _doc()
    table = comparison_scene.create_comparison_table(scene, doc)
    t = table.GetTable()
    assert t.GetNumberOfRows() == 3
    assert [t.GetColumn(i).GetName() for i in range(t.GetNumberOfColumns())] == list(comparison_scene.TABLE_COLUMNS)
    assert [t.GetValueByName(r, "Status").ToString() for r in range(3)] == ["grown", "new", "resolved"]
    assert t.GetValueByName(0, "Lung-RADS").ToString() == "4B"
    assert t.GetValueByName(0, "Change (mm)").ToDouble() == pytest.approx(2.5)
    assert np.isnan(t.GetValueByName(1, "Prior diameter (mm)").ToDouble())
    # RAS at the boundary: x and y negated.
    assert t.GetValueByName(0, "Current RAS (mm)").ToString() == "-10.0, -20.0, -30.0"
    assert table.GetLocked() and comparison_scene.comparison_of(table) == json.loads(json.dumps(doc))
    with pytest.raises(ValueError):
        comparison_scene.create_comparison_table(scene, {"pairs": []})


def test_views_centre_each_volume_on_its_own_position(scene, views):
    current, _ = add_volume(scene, np.zeros((4, 5, 6), np.int16), oblique_ijk_to_ras(), "current")
    prior, _ = add_volume(scene, np.zeros((4, 5, 6), np.int16), flipped_ijk_to_ras(), "prior")
    doc = _doc()
    got = comparison_scene.centre_views_on_pair(scene, doc, 0, current, prior)
    assert views["Red"][1].GetBackgroundVolumeID() == current.GetID()
    assert views["Yellow"][1].GetBackgroundVolumeID() == prior.GetID()
    np.testing.assert_allclose(_centre_ras(views["Red"][0]), [-10, -20, -30], atol=1e-6)
    np.testing.assert_allclose(_centre_ras(views["Yellow"][0]), [-12, -25, -41], atol=1e-6)
    assert got["current"] == pytest.approx([-10, -20, -30])
    # A new nodule: the prior view goes where the registration puts it on the prior scan.
    comparison_scene.centre_views_on_pair(scene, doc, 1, current, prior)
    np.testing.assert_allclose(_centre_ras(views["Yellow"][0]), [58, -9, 1], atol=1e-6)
    # A resolved one: the current view goes where it would be now.
    comparison_scene.centre_views_on_pair(scene, doc, 2, current, prior)
    np.testing.assert_allclose(_centre_ras(views["Red"][0]), [-38, 14, 81], atol=1e-6)
    with pytest.raises(IndexError):
        comparison_scene.centre_views_on_pair(scene, doc, 3, current, prior)


def test_parent_transform_of_a_volume_is_followed(scene, views):
    current, _ = add_volume(scene, np.zeros((4, 5, 6), np.int16), oblique_ijk_to_ras(), "current")
    prior, _ = add_volume(scene, np.zeros((4, 5, 6), np.int16), flipped_ijk_to_ras(), "prior")
    shift = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = np.eye(4)
    m[:3, 3] = [5.0, -3.0, 2.0]
    shift.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(m))
    prior.SetAndObserveTransformNodeID(shift.GetID())
    comparison_scene.centre_views_on_pair(scene, _doc(), 0, current, prior)
    np.testing.assert_allclose(_centre_ras(views["Yellow"][0]), [-12 + 5, -25 - 3, -41 + 2], atol=1e-6)


def test_missing_view_is_an_error(scene):
    current, _ = add_volume(scene, np.zeros((4, 5, 6), np.int16), oblique_ijk_to_ras(), "current")
    with pytest.raises(ValueError, match="no slice view"):
        comparison_scene.centre_views_on_pair(scene, _doc(), 0, current, current)


def test_prior_series_are_the_same_patients_earlier_ct_newest_first():
    ct = lambda date, desc="CHEST": {"0008,0020": date, "0008,0060": "CT", "0008,103e": desc}
    db = FakeDicomDatabase({
        "cur": ("P1", "S2026", ct("20260304")),
        "older": ("P1", "S2024", ct("20240301", "LDCT 2024")),
        "prior": ("P1", "S2025", ct("20250304", "LDCT 2025")),
        "prior_sr": ("P1", "S2025", {"0008,0020": "20250304", "0008,0060": "SR"}),
        "later": ("P1", "S2027", ct("20270301")),
        "undated": ("P1", "SX", ct("")),
        "other_patient": ("P2", "Q2025", ct("20250101")),
    })
    found = comparison_scene.prior_series_for(db, "cur")
    assert [f["series_uid"] for f in found] == ["prior", "older"]
    assert found[0] == {"series_uid": "prior", "study_uid": "S2025", "study_date": "20250304",
                        "description": "LDCT 2025"}
    with pytest.raises(ValueError, match="not in the DICOM database"):
        comparison_scene.prior_series_for(db, "nope")
