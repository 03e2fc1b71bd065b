"""Follow-up reading: register a prior CT onto the current one, pair their findings, measure change.

Torch-free (numpy, SimpleITK, scipy). ``registration`` (lung registration + its residual on
the lung surface), ``matching`` (gated Hungarian pairing, statuses, diameter / volume change,
volume-doubling time), ``lung_rads_followup`` (Lung-RADS v2022 with comparison),
``comparison`` (the whole comparison and its ``comparison.json`` / ``comparison.md``).
"""
from .lung_rads_followup import NoduleForRads, exam_category, followup_category
from .matching import FollowupNodule, match_nodules, nodule_from_candidate, volume_doubling_days

__all__ = ["NoduleForRads", "exam_category", "followup_category", "FollowupNodule", "match_nodules",
           "nodule_from_candidate", "volume_doubling_days"]
