"""Online iterative DPO: pair selection and the DPO / IPO losses (docs/algorithms.md §16).

Each step samples `group_size` responses per prompt; the best- and worst-rewarded of a group
form a (chosen, rejected) pair, and a group whose rewards are all equal has no preference: its
pair is kept as two rows outside the loss (`tied_pairs`), so that every rank holds two rows per
prompt, and counted. With S = sum_t log pi(y_t | ...) over a response's tokens and
h = (S_c - S_c^ref) - (S_r - S_r^ref), the per-pair losses are

    sigmoid (DPO, Rafailov et al. 2305.18290 eq. 7)   l(h) = -log sigmoid(beta * h)
    ipo     (IPO, Azar et al. 2310.12036 eq. 17)      l(h) = (h - 1 / (2 * beta))^2

and the step's loss is their mean over the pairs. The trainer reaches that loss through
`dpo_advantages`: the gradient of the mean loss is sum_i (dL/dS_i) grad S_i, so a
policy-gradient surrogate with one advantage per row, computed from the log-probs of a no-grad
pass at the current weights, has exactly the DPO gradient, whichever micro-batch or rank holds
the pair's two rows. Rows come in pairs: row 2k is pair k's chosen, row 2k+1 its rejected.

Where this departs from the papers: sums of log-probs over a response's tokens for both
losses (IPO's paper states it for whole sequences too; some libraries average per token), and
online: the pairs are the current policy's samples, ranked by the verifiable reward (the
iterative, on-policy DPO of Xiong et al. 2312.11456 and the RAFT study 2504.11343).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

KINDS = ("sigmoid", "ipo")


def select_pairs(scores: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """(chosen [N], rejected [N], tied [N] bool) for the N groups of `group_size` contiguous rows of
    `scores` [B]: in each group the row with the highest score (the first of equals) and the row
    with the lowest (the last of equals); `tied` marks groups whose scores are all equal (their
    pair is the group's first and last row, and carries no preference)."""
    if group_size < 2 or scores.numel() % group_size:
        raise ValueError(f"select_pairs: {scores.numel()} scores do not make groups of {group_size} (>= 2)")
    groups = scores.detach().float().view(-1, group_size)  # [N, G]
    best = groups.argmax(-1)  # [N] first maximum
    worst = group_size - 1 - groups.flip(-1).argmin(-1)  # [N] last minimum
    tied = groups.max(-1).values == groups.min(-1).values  # [N] all equal
    base = torch.arange(groups.shape[0], device=scores.device) * group_size  # [N]
    return base + best, base + worst, tied


def tied_pairs(scores: Tensor) -> Tensor:
    """bool [P]: pairs (rows 2k, 2k+1 of `scores` [2P]) whose two scores are equal, i.e. from a
    group whose scores were all equal; the loss leaves them out."""
    pairs = scores.view(-1, 2)  # [P, 2]
    return pairs[:, 0] == pairs[:, 1]


def margins(logp_sums: Tensor, ref_sums: Tensor) -> Tensor:
    """h [P] = (S_c - S_c^ref) - (S_r - S_r^ref) for rows in pairs (sums [2P])."""
    diff = (logp_sums - ref_sums).view(-1, 2)  # [P, 2]: chosen, rejected
    return diff[:, 0] - diff[:, 1]


def dpo_loss(h: Tensor, beta: float, kind: str = "sigmoid") -> Tensor:
    """Per-pair loss [P] at margins h [P]."""
    if kind == "sigmoid":
        return -F.logsigmoid(beta * h)
    if kind == "ipo":
        return (h - 1.0 / (2.0 * beta)) ** 2
    raise ValueError(f"dpo kind {kind!r}: expected one of {', '.join(KINDS)}")


def dpo_grad(h: Tensor, beta: float, kind: str = "sigmoid") -> Tensor:
    """dl/dh [P]: sigmoid -beta * sigmoid(-beta * h); ipo 2 * (h - 1 / (2 * beta))."""
    if kind == "sigmoid":
        return -beta * torch.sigmoid(-beta * h)
    if kind == "ipo":
        return 2.0 * (h - 1.0 / (2.0 * beta))
    raise ValueError(f"dpo kind {kind!r}: expected one of {', '.join(KINDS)}")


def dpo_advantages(logp_sums: Tensor, ref_sums: Tensor, beta: float, kind: str = "sigmoid") -> Tensor:
    """Per-row advantages [2P] whose surrogate has the DPO gradient.

    The trainer's loss is -(1/S) sum_i A_i * S_i with S = 2P rows (`seq_mean_token_sum`, the
    global row count). Its gradient in S_i is -A_i / (2P); the mean DPO loss (1/P) sum_k l(h_k)
    has gradient l'(h_k) / P in S_c and -l'(h_k) / P in S_r. So A_c = -2 l'(h), A_r = +2 l'(h):
    the chosen row is pushed up and the rejected one down, by twice the loss's slope.
    """
    slope = dpo_grad(margins(logp_sums.detach(), ref_sums.detach()), beta, kind)  # [P]
    return torch.stack([-2.0 * slope, 2.0 * slope], dim=-1).reshape(-1)  # [2P]
