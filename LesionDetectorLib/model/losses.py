"""RPN losses: the adaptive focal loss of eq. (3), OHEM (the ablation alternative), Smooth L1.

Adaptive focal loss (section III-B, eq. 3), over all anchors of a batch::

    L_cls = T * log(N_TN) / N_TN * sum_{neg} FL(p_t)  +  1 / N_pos * sum_{pos} CE(p)
    FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t),  p_t = 1 - p for a negative, alpha_t = 1 - alpha

* ``N_TN`` (true negatives) counts the negative anchors whose probability is below 0.5, i.e.
  the negatives the classifier already gets right; it is a count (no gradient).
* Guards: ``N_TN`` is clamped to at least 2, so ``log(N_TN)`` is never 0 or undefined and the
  negative term never vanishes or divides by zero at the start of training; with no positive
  anchor in the batch the positive term is 0.
* ``T`` grows linearly with training progress (``focal_t_start`` -> ``focal_t_end``); the caller
  passes the current value (see ``focal_T``).
"""
from __future__ import annotations

import math
import torch
import torch.nn.functional as F


def focal_T(progress: float, t_start: float, t_end: float) -> float:
    """T of eq. (3) at training progress ``progress`` in [0, 1] (clamped)."""
    p = min(max(float(progress), 0.0), 1.0)
    return t_start + (t_end - t_start) * p


def adaptive_focal_loss(logits: torch.Tensor, labels: torch.Tensor, T: float,
                        alpha: float = 0.8, gamma: float = 5.0) -> torch.Tensor:
    """Eq. (3). ``logits [A]``, ``labels [A]`` in {1 pos, 0 neg, -1 ignored} -> scalar."""
    logits = logits.float()
    pos = labels == 1
    neg = labels == 0
    loss = logits.new_zeros(())
    if pos.any():
        loss = loss + F.binary_cross_entropy_with_logits(logits[pos], torch.ones_like(logits[pos]),
                                                         reduction="mean")
    if neg.any():
        ln = logits[neg]
        p = torch.sigmoid(ln)
        # log(1 - p) computed stably from the logit
        log_pt = F.logsigmoid(-ln)
        fl = -(1.0 - alpha) * p.pow(gamma) * log_pt
        n_tn = max(int((p.detach() < 0.5).sum()), 2)
        loss = loss + T * math.log(n_tn) / n_tn * fl.sum()
    return loss


def ohem_loss(logits: torch.Tensor, labels: torch.Tensor, neg_ratio: int = 3,
              min_neg: int = 16) -> torch.Tensor:
    """Online hard example mining: BCE over all positives and the hardest negatives.

    ``max(neg_ratio * N_pos, min_neg)`` negatives with the highest loss are kept;
    the two groups are averaged separately and summed (DeepLung's balance).
    """
    logits = logits.float()
    pos = labels == 1
    neg = labels == 0
    loss = logits.new_zeros(())
    n_pos = int(pos.sum())
    if n_pos:
        loss = loss + F.binary_cross_entropy_with_logits(logits[pos], torch.ones_like(logits[pos]))
    if neg.any():
        ln = logits[neg]
        k = min(max(neg_ratio * n_pos, min_neg), ln.numel())
        hard = torch.topk(ln.detach(), k).indices
        loss = loss + F.binary_cross_entropy_with_logits(ln[hard], torch.zeros_like(ln[hard]))
    return loss


def box_regression_loss(deltas: torch.Tensor, targets: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Smooth L1 over positives: sum over the 4 coordinates, mean over boxes (0 when none)."""
    if deltas.numel() == 0:
        return deltas.new_zeros(()).float()
    return F.smooth_l1_loss(deltas.float(), targets.float(), beta=beta, reduction="sum") / deltas.shape[0]
