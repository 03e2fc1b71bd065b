"""Which candidates are characterized: accepted ones always, rejected never, unreviewed ones at or
above the operating point up to MAX_CHARACTERIZED by rank."""


def test_selection_caps_unreviewed_candidates_and_keeps_accepted_ones():
    from LesionDetectorLib.characterization import MAX_CHARACTERIZED, selected_for_characterization
    from LesionDetectorLib.findings import Candidate, Findings

    cands = [Candidate(id=f"N{r}", rank=r, center_lps=[0.0, 0.0, float(r)], diameter_mm=6.0, score=1.0 - r / 100,
                       score_rpn=0.5, score_fprn=0.5) for r in range(1, 16)]
    cands[13].review = "accepted"     # N14, beyond the cap
    cands[0].review = "rejected"      # N1
    f = Findings(candidates=cands, patient_flag={"status": "positive", "operating_point": "x", "threshold": 0.1,
                                                 "max_score": 0.99},
                 model={}, volume={}, provenance={}, operating_point={"name": "x", "threshold": 0.1})
    ids = [c.id for c in selected_for_characterization(f)]
    assert ids[:MAX_CHARACTERIZED] == [f"N{r}" for r in range(2, 2 + MAX_CHARACTERIZED)]
    assert "N14" in ids and "N1" not in ids and len(ids) == MAX_CHARACTERIZED + 1
    assert len(selected_for_characterization(f, max_unreviewed=None)) == 14
