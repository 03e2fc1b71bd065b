"""One call for a full LUNA16 evaluation over in-memory structures (no files needed).

    result = evaluate_luna16(annotations, excluded, seriesuids, predictions, bootstrap=0)
    result.cpm, result.sensitivities[1.0], result.operating_points["sensitivity_0.95"].threshold

The training loop computes validation CPM this way; the CLI reads the CSV files with
:mod:`LesionDetectorLib.luna16_format` and calls the same function, so a future ``--data/--model`` mode only has to
produce the predictions list.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Sequence

from ..luna16_format import as_annotations, as_predictions
from .bootstrap import BootstrapResult, bootstrap_froc
from .froc import (CPM_FP_RATES, LUNA16_MAX_MARKS, OFFICIAL, CurveEvents, FrocCurve, Matching, check_rule, cpm,
                   match_candidates, require_nodules)
from .operating_points import OperatingPoint, operating_points
from .tnp import TnpCurve, TnpResult, tnp_at_sensitivity, tnp_curve


@dataclass(frozen=True)
class FrocResult:
    """Everything a LUNA16 evaluation reports.

    Attributes:
        cpm: mean sensitivity at 1/8 ... 8 FP/scan.
        sensitivities: FP/scan rate -> sensitivity.
        ci: bootstrap intervals, None when ``bootstrap=0``.
        curve: FROC vertices.
        tnp: TNP at the ``tnp_sensitivity`` operating point; tnp_curve: TNP vs sensitivity.
        operating_points: model-card operating points (see :mod:`.operating_points`).
        matching: per-event / per-nodule detail and counts (TP, FP, FN, ignored marks...).
        max_marks: the per-scan cap used.
        froc_rule: how the sensitivities were read off the curve (``official`` or ``exact``,
            :mod:`.froc`).
    """

    cpm: float
    sensitivities: Dict[float, float]
    ci: Optional[BootstrapResult]
    curve: FrocCurve
    tnp: TnpResult
    tnp_curve: TnpCurve
    operating_points: Dict[str, OperatingPoint]
    matching: Matching
    max_marks: int
    froc_rule: str = OFFICIAL

    @property
    def n_scans(self) -> int:
        return self.matching.n_scans

    @property
    def n_nodules(self) -> int:
        return self.matching.n_nodules


def sensitivities_at(matching: Matching, fp_rates: Sequence[float] = CPM_FP_RATES,
                     rule: str = OFFICIAL) -> Dict[float, float]:
    """FP/scan rate -> sensitivity on the FROC curve, read by ``rule`` (:mod:`.froc`: ``official``
    = the script's grid point nearest each rate, ``exact`` = at the rate itself)."""
    events = CurveEvents(matching)
    if check_rule(rule) == OFFICIAL:
        sens = events.official_sensitivity_at(fp_rates)[0]
    else:
        sens = events.sensitivity_at(fp_rates)[0]
    return {float(r): float(s) for r, s in zip(fp_rates, sens)}


def evaluate_luna16(annotations: Iterable, excluded: Iterable, seriesuids: Sequence[str], predictions: Iterable, *,
                    max_marks: int = LUNA16_MAX_MARKS, bootstrap: int = 1000, seed: Optional[int] = 0,
                    confidence: float = 0.95, tnp_sensitivity: float = 0.95,
                    froc_rule: str = OFFICIAL) -> FrocResult:
    """LUNA16 FROC/CPM, bootstrap CIs, TNP and operating points.

    Args:
        annotations, excluded: :class:`~LesionDetectorLib.luna16_format.Annotation` objects, dicts with LUNA16 column
            names or ``(seriesuid, x, y, z, diameter_mm)`` tuples (world LPS mm).
        seriesuids: evaluated scans (``seriesuids.csv``).
        predictions: :class:`~LesionDetectorLib.luna16_format.Prediction` objects, dicts or
            ``(seriesuid, x, y, z, probability)`` tuples.
        max_marks: per-scan cap (100 as in the challenge; ``<= 0`` keeps all).
        bootstrap: number of scan resamples; 0 skips the confidence intervals (fast path).
        seed: seed of the resampling, None for fresh entropy.
        confidence: two-sided level of the intervals.
        tnp_sensitivity: sensitivity whose threshold defines the TNP.
        froc_rule: ``official`` (default: the challenge script's CPM to the last digit) or
            ``exact`` (sensitivity at the rates themselves), see :mod:`.froc`.
    Raises:
        EvaluationInputError: bad records, unknown series in predictions, no nodule at all.
    """
    matching = match_candidates(as_annotations(annotations), as_annotations(excluded, "excluded"),
                                list(seriesuids), as_predictions(predictions), max_marks=max_marks)
    require_nodules(matching)
    sens = sensitivities_at(matching, rule=froc_rule)
    ci = (bootstrap_froc(matching, n_draws=bootstrap, seed=seed, confidence=confidence, rule=froc_rule)
          if bootstrap > 0 else None)
    return FrocResult(cpm=cpm(list(sens.values())), sensitivities=sens, ci=ci, curve=CurveEvents(matching).curve(),
                      tnp=tnp_at_sensitivity(matching, tnp_sensitivity), tnp_curve=tnp_curve(matching),
                      operating_points=operating_points(matching), matching=matching, max_marks=max_marks,
                      froc_rule=froc_rule)
