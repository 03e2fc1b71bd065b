"""LUNA16 FROC/CPM: hand-worked cases of every official rule, plus a line-by-line port of the
official script (noduleCADEvaluationLUNA16.py: evaluateCAD, computeFROC with sklearn's
roc_curve, the CPM readout on its 10001-point grid) compared on randomized data.

The hand-worked curve cases read sensitivity at the rates themselves (``froc_rule="exact"``),
where the arithmetic is easy to follow; the official grid reading is checked by hand once and
against the port on 60 random cases."""
import math

import numpy as np
import pytest

from LesionDetectorLib.errors import EvaluationInputError
from LesionDetectorLib.evaluation import Annotation, Prediction, evaluate_luna16, match_candidates
from LesionDetectorLib.evaluation.bootstrap import bootstrap_froc, draw_weights
from LesionDetectorLib.evaluation.froc import CPM_FP_RATES, OFFICIAL_FP_GRID, CurveEvents, interp_rows, official_grid_rates
from LesionDetectorLib.luna16_format import cap_marks

RATES = CPM_FP_RATES


def hand_case():
    """12 scans (9 without any mark), 4 nodules; vertices by hand (cumFP, cumTP):
    (0,0) .95:(0,1) .9:(1,1) .8:(1,2) .7:(2,3) [FP and TP tied] .4:(3,3) .3:(4,3)."""
    uids = [f"scan{i:02d}" for i in range(12)]
    ann = [("scan00", 0, 0, 0, 10.0),    # A: hit at .95
           ("scan00", 100, 0, 0, 8.0),   # B: hit twice, .8 and .5 -> counts once at .8
           ("scan01", 0, 0, 0, 6.0),     # C: hit at .7, tied with an FP
           ("scan05", 0, 0, 0, 6.0)]     # D: missed, still in the denominator
    excl = [("scan01", 50, 50, 50, -1.0)]  # diameter -1 -> official default 10 mm (radius 5)
    preds = [("scan00", 1, 0, 0, 0.95),
             ("scan00", 103.9, 0, 0, 0.8),   # 3.9 < 4 mm radius of B
             ("scan00", 100, 2, 0, 0.5),     # duplicate hit on B
             ("scan00", 0, 0, 40, 0.9),      # FP
             ("scan01", 0, 0, 2.9, 0.7),     # C (radius 3)
             ("scan01", 0, 0, 30, 0.7),      # FP tied with C
             ("scan01", 50, 50, 54.9, 0.99),  # on the excluded finding: ignored (else top FP)
             ("scan02", 0, 0, 0, 0.4),       # FP on a negative scan
             ("scan05", 0, 0, 3.0, 0.3)]     # FP: distance == radius is NOT a hit
    return ann, excl, uids, preds


HAND_SENS = {0.125: 2.5 / 4, 0.25: 0.75, 0.5: 0.75, 1.0: 0.75, 2.0: 0.75, 4.0: 0.75, 8.0: 0.75}


def test_hand_worked_froc_and_cpm():
    ann, excl, uids, preds = hand_case()
    res = evaluate_luna16(ann, excl, uids, preds, bootstrap=0, froc_rule="exact")
    # 0.125 FP/scan = 1.5 FPs: halfway between (1,2) and the tie vertex (2,3) -> 2.5 TPs.
    # Splitting the tie FP-first would give 2.0, TP-first 3.0.
    assert res.sensitivities == pytest.approx(HAND_SENS)
    assert res.cpm == pytest.approx((2.5 / 4 + 6 * 0.75) / 7)
    c = res.matching.counts
    assert (c["true_positives"], c["false_positives"], c["false_negatives"]) == (3, 4, 1)
    assert c["ignored_on_excluded"] == 1 and c["duplicate_hits"] == 1
    np.testing.assert_allclose(res.curve.fps, np.array([0, 0, 1, 1, 2, 3, 4]) / 12)
    np.testing.assert_allclose(res.curve.sensitivity, np.array([0, 1, 1, 2, 3, 3, 3]) / 4)
    np.testing.assert_allclose(res.curve.thresholds[1:], [0.95, 0.9, 0.8, 0.7, 0.4, 0.3])


def test_scans_without_marks_count_in_fp_rate():
    ann, excl, uids, preds = hand_case()
    fewer = evaluate_luna16(ann, excl, uids[:6], preds, bootstrap=0, froc_rule="exact")   # same marks, 6 scans
    # 0.125 FP/scan * 6 = 0.75 FPs -> between (0,1) and (1,1): 1 TP; 0.25*6 = 1.5 -> 2.5 TPs.
    assert fewer.sensitivities[0.125] == pytest.approx(0.25)
    assert fewer.sensitivities[0.25] == pytest.approx(2.5 / 4)


def test_rate_on_a_vertical_run_takes_its_top():
    ann, excl, _, preds = hand_case()
    four = evaluate_luna16(ann, excl, ["scan00", "scan01", "scan02", "scan05"], preds, bootstrap=0,
                           froc_rule="exact")
    # 0.25 FP/scan = 1 FP, where the curve climbs from (1,1) to (1,2): np.interp gives the top.
    assert four.sensitivities[0.25] == pytest.approx(0.5)
    assert four.sensitivities[0.125] == pytest.approx(0.25)
    assert four.sensitivities[0.5] == pytest.approx(0.75)


def test_official_rule_reads_the_nearest_grid_point():
    ann, excl, uids, preds = hand_case()
    g = official_grid_rates([0.125, 0.25, 4.0, 8.0])
    assert g[0] == 0.125 and g[3] == 8.0 and g[1] == pytest.approx(0.2502125) and g[2] == pytest.approx(4.0002875)
    assert set(g) <= set(OFFICIAL_FP_GRID)
    official = evaluate_luna16(ann, excl, uids[:6], preds, bootstrap=0)
    assert official.froc_rule == "official"
    # 0.2502125 FP/scan * 6 = 1.50128 FPs, on the segment (1, 2) -> (2, 3): 2.50128 TPs of 4.
    assert official.sensitivities[0.25] == pytest.approx((2 + (6 * g[1] - 1)) / 4, abs=1e-15)
    assert official.sensitivities[0.25] != evaluate_luna16(ann, excl, uids[:6], preds, bootstrap=0,
                                                           froc_rule="exact").sensitivities[0.25]
    with pytest.raises(ValueError, match="FROC rule"):
        evaluate_luna16(ann, excl, uids, preds, bootstrap=0, froc_rule="nearest")


def test_excluded_default_radius_and_strict_boundary():
    uids = ["s"]
    ann = [("s", 100, 100, 100, 10.0)]
    hit = evaluate_luna16(ann, [("s", 0, 0, 0, -1.0)], uids,
                          [("s", 100, 100, 100, 0.5), ("s", 4.99, 0, 0, 0.9)], bootstrap=0)
    assert hit.matching.counts["ignored_on_excluded"] == 1 and hit.matching.counts["false_positives"] == 0
    miss = evaluate_luna16(ann, [("s", 0, 0, 0, -1.0)], uids,
                           [("s", 100, 100, 100, 0.5), ("s", 5.0, 0, 0, 0.9)], bootstrap=0)
    assert miss.matching.counts["false_positives"] == 1


def test_one_mark_hitting_two_nodules_detects_both():
    ann = [("s", 0, 0, 0, 10.0), ("s", 3, 0, 0, 10.0)]
    res = evaluate_luna16(ann, [], ["s"], [("s", 1.5, 0, 0, 0.6)], bootstrap=0)
    assert res.matching.counts["true_positives"] == 2
    assert res.sensitivities[0.125] == 1.0


def test_mark_on_included_and_excluded_is_a_hit():
    res = evaluate_luna16([("s", 0, 0, 0, 10.0)], [("s", 1, 0, 0, 10.0)], ["s"], [("s", 0.5, 0, 0, 0.6)],
                          bootstrap=0)
    assert res.matching.counts["true_positives"] == 1 and res.matching.counts["ignored_on_excluded"] == 0


def test_cap_keeps_strictly_above_the_next_probability():
    assert cap_marks(np.array([0.9, 0.8, 0.7, 0.7]), 3).tolist() == [True, True, False, False]
    assert cap_marks(np.array([0.9, 0.8, 0.7]), 3).all()
    assert cap_marks(np.array([0.1, 0.9, 0.5, 0.3]), 2).tolist() == [False, True, True, False]
    assert cap_marks(np.arange(200.0), 0).all()


def test_cap_of_100_drops_the_lowest_mark_and_its_hit():
    uids = ["s"]
    ann = [("s", 0, 0, 0, 10.0)]
    fps = [("s", 100 + 20 * i, 0, 0, 0.5 + i / 1000) for i in range(100)]
    res = evaluate_luna16(ann, [], uids, fps + [("s", 0, 0, 0, 0.4)], bootstrap=0)
    assert res.matching.counts["kept_marks"] == 100 and res.matching.counts["false_negatives"] == 1
    assert res.sensitivities[8.0] == 0.0
    uncapped = evaluate_luna16(ann, [], uids, fps + [("s", 0, 0, 0, 0.4)], bootstrap=0, max_marks=0)
    assert uncapped.sensitivities[8.0] == 0.0 and uncapped.sensitivities[8.0] == uncapped.sensitivities[0.125]
    assert uncapped.curve.sensitivity[-1] == 1.0   # found only past 100 FP/scan


def test_no_false_positives_keeps_last_sensitivity():
    res = evaluate_luna16([("s", 0, 0, 0, 10.0), ("t", 0, 0, 0, 10.0)], [], ["s", "t"], [("s", 0, 0, 0, 0.2)],
                          bootstrap=0)
    assert all(v == 0.5 for v in res.sensitivities.values())


def test_no_marks_at_all_gives_zero_and_no_nodule_is_an_error():
    res = evaluate_luna16([("s", 0, 0, 0, 10.0)], [], ["s"], [], bootstrap=0)
    assert res.cpm == 0.0
    with pytest.raises(EvaluationInputError, match="no annotated nodule"):
        evaluate_luna16([], [], ["s"], [("s", 0, 0, 0, 0.2)], bootstrap=0)


def test_annotations_of_unlisted_scans_are_ignored_but_unknown_marks_are_errors():
    res = evaluate_luna16([("s", 0, 0, 0, 10.0), ("other", 0, 0, 0, 10.0)], [], ["s"], [("s", 0, 0, 0, 0.2)],
                          bootstrap=0)
    assert res.n_nodules == 1 and res.cpm == 1.0
    with pytest.raises(EvaluationInputError, match="other"):
        evaluate_luna16([("s", 0, 0, 0, 10.0)], [], ["s"], [("other", 0, 0, 0, 0.2)], bootstrap=0)
    with pytest.raises(EvaluationInputError, match="non-finite"):
        evaluate_luna16([("s", 0, 0, 0, 10.0)], [], ["s"], [("s", 0, 0, 0, math.nan)], bootstrap=0)
    with pytest.raises(EvaluationInputError, match="item 1"):
        evaluate_luna16([("s", 0, 0, 10.0)], [], ["s"], [], bootstrap=0)


def test_records_dicts_and_tuples_are_equivalent():
    ann, excl, uids, preds = hand_case()
    as_dicts = [dict(seriesuid=p[0], coordX=p[1], coordY=p[2], coordZ=p[3], probability=p[4]) for p in preds]
    as_objs = [Annotation(*a) for a in ann]
    assert evaluate_luna16(as_objs, excl, uids, as_dicts, bootstrap=0).cpm == pytest.approx(
        evaluate_luna16(ann, excl, uids, [Prediction(*p) for p in preds], bootstrap=0).cpm)


def test_interp_rows_matches_numpy_interp():
    rng = np.random.default_rng(3)
    xp = np.hstack([np.zeros((5, 1)), np.cumsum(rng.integers(0, 3, size=(5, 30)), axis=1)]).astype(float)
    fp = np.hstack([np.zeros((5, 1)), np.cumsum(rng.integers(0, 2, size=(5, 30)), axis=1)]).astype(float)
    x = np.r_[np.linspace(0, xp.max() + 5, 57), xp[0], xp[2]]
    got = interp_rows(xp, fp, x)
    for b in range(5):
        np.testing.assert_allclose(got[b], np.interp(x, xp[b], fp[b]))


# --- the official script, ported line by line (Python 3, no files) ------------------------
# evaluateCAD's loops, computeFROC, sklearn's roc_curve (transcribed, so the port needs no
# sklearn; test_roc_curve_port_matches_sklearn checks the transcription where sklearn exists)
# and the CPM readout on the 10001-point grid, in the script's own order of operations.

def roc_curve_port(y_true, y_score):
    """sklearn.metrics.roc_curve(y_true, y_score) with drop_intermediate=True."""
    y_true, y_score = np.asarray(y_true, dtype=float), np.asarray(y_score, dtype=float)
    desc = np.argsort(-y_score, kind="stable")  # stable descending, as xp.argsort(descending=True)
    y_score, y_true = y_score[desc], y_true[desc]
    distinct = np.nonzero(np.diff(y_score))[0]
    threshold_idxs = np.r_[distinct, y_true.size - 1]
    tps = np.cumsum(y_true, dtype=np.float64)[threshold_idxs]
    fps = 1 + threshold_idxs.astype(np.float64) - tps
    thresholds = y_score[threshold_idxs]
    if fps.shape[0] > 2:
        optimal = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
        fps, tps, thresholds = fps[optimal], tps[optimal], thresholds[optimal]
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    thresholds = np.r_[np.inf, thresholds]
    fpr = np.full(fps.shape, np.nan) if fps[-1] <= 0 else fps / fps[-1]
    tpr = np.full(tps.shape, np.nan) if tps[-1] <= 0 else tps / tps[-1]
    return fpr, tpr, thresholds


def computeFROC(FROCGTList, FROCProbList, totalNumberOfImages, excludeList):
    FROCGTList_local = []
    FROCProbList_local = []
    for i in range(len(excludeList)):
        if excludeList[i] == False:  # noqa: E712 (the script's spelling)
            FROCGTList_local.append(FROCGTList[i])
            FROCProbList_local.append(FROCProbList[i])
    numberOfDetectedLesions = sum(FROCGTList_local)
    totalNumberOfLesions = sum(FROCGTList)
    totalNumberOfCandidates = len(FROCProbList_local)
    fpr, tpr, thresholds = roc_curve_port(FROCGTList_local, FROCProbList_local)
    if sum(FROCGTList) == len(FROCGTList):
        fps = np.zeros(len(fpr))
    else:
        fps = fpr * (totalNumberOfCandidates - numberOfDetectedLesions) / totalNumberOfImages
    sens = (tpr * numberOfDetectedLesions) / totalNumberOfLesions
    return fps, sens, thresholds


def official_cpm(ann, excl, uids, preds, maxNumberOfCADMarks=100):
    """evaluateCAD + the CPM readout. Returns (the 7 sensitivities, CPM); NaN where the script
    gives NaN (no detected nodule)."""
    allNodules = {}
    for seriesuid in uids:   # collectNoduleAnnotations: included first, then excluded
        nodules = [dict(coordX=a[1], coordY=a[2], coordZ=a[3], diameter_mm=a[4], state="Included")
                   for a in ann if a[0] == seriesuid]
        nodules += [dict(coordX=a[1], coordY=a[2], coordZ=a[3], diameter_mm=a[4], state="Excluded")
                    for a in excl if a[0] == seriesuid]
        allNodules[seriesuid] = nodules
    allCandsCAD = {}
    for seriesuid in uids:
        nodules = {}
        i = 0
        for result in preds:
            if seriesuid == result[0]:
                nodules[i] = dict(coordX=result[1], coordY=result[2], coordZ=result[3], CADprobability=result[4])
                i += 1
        if maxNumberOfCADMarks > 0:
            if len(nodules.keys()) > maxNumberOfCADMarks:
                probs = []
                for keytemp, noduletemp in nodules.items():
                    probs.append(float(noduletemp["CADprobability"]))
                probs.sort(reverse=True)
                probThreshold = probs[maxNumberOfCADMarks]
                nodules2 = {}
                nrNodules2 = 0
                for keytemp, noduletemp in nodules.items():
                    if nrNodules2 >= maxNumberOfCADMarks:
                        break
                    if float(noduletemp["CADprobability"]) > probThreshold:
                        nodules2[keytemp] = noduletemp
                        nrNodules2 += 1
                nodules = nodules2
        allCandsCAD[seriesuid] = nodules

    minProbValue = -1000000000.0
    FROCGTList, FROCProbList, FPDivisorList, excludeList = [], [], [], []
    for seriesuid in uids:
        candidates = allCandsCAD.get(seriesuid, {})
        candidates2 = candidates.copy()
        noduleAnnots = allNodules.get(seriesuid, [])
        for noduleAnnot in noduleAnnots:
            x, y, z = float(noduleAnnot["coordX"]), float(noduleAnnot["coordY"]), float(noduleAnnot["coordZ"])
            diameter = float(noduleAnnot["diameter_mm"])
            if diameter < 0.0:
                diameter = 10.0
            radiusSquared = pow((diameter / 2.0), 2.0)
            found = False
            noduleMatches = []
            for key, candidate in candidates.items():
                x2, y2, z2 = float(candidate["coordX"]), float(candidate["coordY"]), float(candidate["coordZ"])
                dist = math.pow(x - x2, 2.) + math.pow(y - y2, 2.) + math.pow(z - z2, 2.)
                if dist < radiusSquared:
                    if noduleAnnot["state"] == "Included":
                        found = True
                        noduleMatches.append(candidate)
                        if key in candidates2.keys():
                            del candidates2[key]
                    elif noduleAnnot["state"] == "Excluded":
                        if key in candidates2.keys():
                            del candidates2[key]
            if noduleAnnot["state"] == "Included":
                if found:
                    maxProb = None
                    for idx in range(len(noduleMatches)):
                        candidate = noduleMatches[idx]
                        if (maxProb is None) or (float(candidate["CADprobability"]) > maxProb):
                            maxProb = float(candidate["CADprobability"])
                    FROCGTList.append(1.0)
                    FROCProbList.append(float(maxProb))
                    FPDivisorList.append(seriesuid)
                    excludeList.append(False)
                else:
                    FROCGTList.append(1.0)
                    FROCProbList.append(minProbValue)
                    FPDivisorList.append(seriesuid)
                    excludeList.append(True)
        for key, candidate3 in candidates2.items():
            FROCGTList.append(0.0)
            FROCProbList.append(float(candidate3["CADprobability"]))
            FPDivisorList.append(seriesuid)
            excludeList.append(False)

    with np.errstate(invalid="ignore", divide="ignore"):
        fps, sens, thresholds = computeFROC(FROCGTList, FROCProbList, len(uids), excludeList)
    FROC_minX, FROC_maxX = 0.125, 8
    fps_itp = np.linspace(FROC_minX, FROC_maxX, num=10001)
    sens_itp = np.interp(fps_itp, fps, sens)
    # The readout of the script's CPM-printing copies (DeepLung): one grid point per rate.
    points = []
    nxth = 0.125
    for fp, ss in zip(fps_itp, sens_itp):
        if abs(fp - nxth) < 3e-4:
            points.append(ss)
            nxth *= 2
        if abs(nxth - 16) < 1e-5:
            break
    assert len(points) == 7
    return np.array(points), sum(points) / 7


def exact_reference_sensitivities(ann, excl, uids, preds, max_marks=100, rates=RATES):
    """The same matching by plain loops, sensitivities read at the rates themselves."""
    gt, prob, excluded = [], [], []
    for uid in uids:
        marks = [p for p in preds if p[0] == uid]
        if max_marks > 0 and len(marks) > max_marks:
            cut = sorted((m[4] for m in marks), reverse=True)[max_marks]
            marks = [m for m in marks if m[4] > cut]
        remaining = set(range(len(marks)))
        notes = [(a, True) for a in ann if a[0] == uid] + [(a, False) for a in excl if a[0] == uid]
        for a, included in notes:
            d = a[4] if a[4] >= 0 else 10.0
            matches = []
            for k, m in enumerate(marks):
                if sum((a[i] - m[i]) ** 2 for i in (1, 2, 3)) < (d / 2) ** 2:
                    if included:
                        matches.append(m[4])
                    remaining.discard(k)
            if included:
                gt.append(1.0)
                prob.append(max(matches) if matches else -1e9)
                excluded.append(not matches)
        for k in remaining:
            gt.append(0.0)
            prob.append(marks[k][4])
            excluded.append(False)
    gt, prob, excluded = np.array(gt), np.array(prob), np.array(excluded)
    g, p = gt[~excluded], prob[~excluded]
    thr = np.unique(p)[::-1]
    fps = np.r_[0, [((p >= t) & (g == 0)).sum() for t in thr]] / len(uids)
    tps = np.r_[0, [((p >= t) & (g == 1)).sum() for t in thr]] / gt.sum()
    return np.interp(rates, fps, tps)


def random_case(rng, n_scans=25, marks_per_scan=(0, 14), max_marks_hint=10, crowded=0, on_excluded=False):
    """Nodules with 0-2 nearby marks (duplicate hits), excluded findings (some of size -1),
    background marks with probabilities rounded to 2 digits (ties), and ``crowded`` scans with
    95-130 marks at 0.01 steps, so the 100-mark cap bites and cuts through ties; with
    ``on_excluded`` a mark lands within 2 mm of every other excluded finding."""
    uids = [f"u{i}" for i in range(n_scans)]
    ann, excl, preds = [], [], []
    for s, uid in enumerate(uids):
        for _ in range(rng.integers(0, 3)):
            c = rng.uniform(-30, 30, 3)
            ann.append((uid, *c, float(rng.uniform(3, 20))))
            for _ in range(rng.integers(0, 3)):
                preds.append((uid, *(c + rng.normal(0, 3, 3)), float(np.round(rng.uniform(), 2))))
        for _ in range(rng.integers(0, 2)):
            excl.append((uid, *rng.uniform(-30, 30, 3), float(rng.choice([-1.0, 4.0]))))
            if on_excluded and rng.uniform() < 0.5:
                preds.append((uid, *(np.array(excl[-1][1:4]) + rng.uniform(-1.1, 1.1, 3)),
                              float(np.round(rng.uniform(), 2))))
        n_marks = rng.integers(95, 131) if s < crowded else rng.integers(*marks_per_scan)
        for _ in range(n_marks):
            preds.append((uid, *rng.uniform(-30, 30, 3), float(np.round(rng.uniform(), 2))))  # rounded: ties
    return ann, excl, uids, preds


def official_case(seed):
    rng = np.random.default_rng(1000 + seed)
    ann, excl, uids, preds = random_case(rng, n_scans=int(rng.integers(3, 40)), crowded=int(rng.integers(0, 3)),
                                         on_excluded=True)
    if not ann:
        ann.append((uids[0], 0.0, 0.0, 0.0, 5.0))
    return ann, excl, uids, preds


@pytest.mark.parametrize("seed", range(60))
def test_cpm_equals_the_official_script(seed):
    ann, excl, uids, preds = official_case(seed)
    res = evaluate_luna16(ann, excl, uids, preds, bootstrap=0)
    want_sens, want_cpm = official_cpm(ann, excl, uids, preds)
    # Documented deviation: no detected nodule is 0 here, NaN in the script.
    want_sens, want_cpm = np.nan_to_num(want_sens), float(np.nan_to_num(want_cpm))
    np.testing.assert_allclose(list(res.sensitivities.values()), want_sens, rtol=0, atol=1e-12)
    assert abs(res.cpm - want_cpm) <= 1e-9


def test_official_cases_exercise_cap_ties_duplicates_and_exclusions():
    cap = ties_at_cut = dup = ignored = 0
    for seed in range(60):
        ann, excl, uids, preds = official_case(seed)
        m = evaluate_luna16(ann, excl, uids, preds, bootstrap=0).matching.counts
        dup += m["duplicate_hits"] > 0
        ignored += m["ignored_on_excluded"] > 0
        for uid in uids:
            probs = sorted((p[4] for p in preds if p[0] == uid), reverse=True)
            if len(probs) > 100:
                cap += 1
                ties_at_cut += probs[99] == probs[100]
    assert cap >= 20 and ties_at_cut >= 10 and dup >= 30 and ignored >= 30


def test_roc_curve_port_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(4)
    for _ in range(20):
        y = rng.integers(0, 2, 60).astype(float)
        score = np.round(rng.uniform(size=60), 1)
        for got, want in zip(roc_curve_port(y, score), metrics.roc_curve(y, score)):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", range(6))
def test_exact_rule_matches_the_loops(seed):
    rng = np.random.default_rng(seed)
    ann, excl, uids, preds = random_case(rng)
    if not ann:
        ann.append((uids[0], 0.0, 0.0, 0.0, 5.0))
    max_marks = 8 if seed % 2 else 100
    res = evaluate_luna16(ann, excl, uids, preds, bootstrap=0, max_marks=max_marks, froc_rule="exact")
    np.testing.assert_allclose(list(res.sensitivities.values()),
                               exact_reference_sensitivities(ann, excl, uids, preds, max_marks), atol=1e-12)


def test_bootstrap_weights_equal_duplicated_scans():
    rng = np.random.default_rng(11)
    ann, excl, uids, preds = random_case(rng, n_scans=15)
    ann.append((uids[0], 0.0, 0.0, 0.0, 5.0))
    matching = match_candidates([Annotation(*a) for a in ann], [Annotation(*a) for a in excl], uids,
                                [Prediction(*p) for p in preds])
    weights = draw_weights(np.random.default_rng(5), 4, len(uids))
    got = CurveEvents(matching).sensitivity_at(RATES, weights)
    official = CurveEvents(matching).official_sensitivity_at(RATES, weights)
    for b in range(4):
        dup_uids, dup_ann, dup_excl, dup_preds = [], [], [], []
        for s, uid in enumerate(uids):
            for copy in range(int(weights[b, s])):
                new = f"{uid}#{copy}"
                dup_uids.append(new)
                dup_ann += [(new, *a[1:]) for a in ann if a[0] == uid]
                dup_excl += [(new, *a[1:]) for a in excl if a[0] == uid]
                dup_preds += [(new, *p[1:]) for p in preds if p[0] == uid]
        # the official bootstrap divides by the original scan count, not the distinct draws
        dup_uids += [f"pad{i}" for i in range(len(uids) - len(dup_uids))]
        if sum(1 for a in dup_ann) == 0:
            assert np.isnan(got[b]).all()
            continue
        np.testing.assert_allclose(got[b], exact_reference_sensitivities(dup_ann, dup_excl, dup_uids, dup_preds),
                                   atol=1e-12)
        np.testing.assert_allclose(official[b], np.nan_to_num(official_cpm(dup_ann, dup_excl, dup_uids, dup_preds)[0]),
                                   rtol=0, atol=1e-12)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(2)
    ann, excl, uids, preds = random_case(rng, n_scans=40)
    a = evaluate_luna16(ann, excl, uids, preds, bootstrap=200, seed=7)
    b = evaluate_luna16(ann, excl, uids, preds, bootstrap=200, seed=7)
    c = evaluate_luna16(ann, excl, uids, preds, bootstrap=200, seed=8)
    assert a.ci.cpm_ci == b.ci.cpm_ci and a.ci.cpm_ci != c.ci.cpm_ci
    lo, hi = a.ci.cpm_ci
    assert lo < a.cpm < hi
    for rate, (l, h) in a.ci.sensitivity_ci.items():
        assert l <= h and 0.0 <= l and h <= 1.0
    assert np.all(a.ci.band_lower <= a.ci.band_upper)


def test_bootstrap_of_identical_scans_has_no_spread():
    uids = [f"s{i}" for i in range(10)]
    ann = [(u, 0, 0, 0, 10.0) for u in uids]
    preds = [(u, 0, 0, 0, 0.9) for u in uids] + [(u, 50, 0, 0, 0.5) for u in uids]
    res = bootstrap_froc(match_candidates([Annotation(*a) for a in ann], [], uids, [Prediction(*p) for p in preds]),
                         n_draws=50, seed=0)
    assert res.cpm_ci == (1.0, 1.0)
