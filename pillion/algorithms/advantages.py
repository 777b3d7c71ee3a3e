"""Advantage estimators as pure tensor functions (docs/algorithms.md §2.2, §4, §5, §7-9).

Conventions (docs/algorithms.md §1): B rows = P prompts x G samples, rows of one prompt contiguous
(group(i) = i // G); token tensors are [B, T], right-padded, with a response mask that is 1 on
response tokens. Inputs are cast to float32 (float64 stays float64, so `gradcheck` and float64
references can run); outputs carry no gradient and are exactly 0 at masked positions.

Outcome-level estimators share the call `fn(scores[B], group_size) -> [B]` and are listed in
`ADVANTAGES`; token-level ones (`gae`, `reinforce_pp`) take [B, T] rewards built with
`terminal_rewards` and are called by name.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor


def as_float(x: Tensor | float | list) -> Tensor:
    """float32 for every dtype below float32 (bf16, fp16, ints, bool); float64 is kept so that
    gradcheck and float64 references work. Nothing is ever computed in bf16."""
    x = torch.as_tensor(x)
    return x if x.dtype == torch.float64 else x.float()


def check_scores(scores: Tensor, group_size: int | None) -> Tensor:
    """Validate a [B] score vector (docs/algorithms.md §1: B % G != 0 and NaN are ValueErrors)."""
    scores = as_float(scores).detach()
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D [B], got shape {tuple(scores.shape)}")
    if torch.isnan(scores).any():
        raise ValueError("NaN in scores: decide grader failures upstream (e.g. reward.incorrect)")
    if group_size is not None:
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if scores.numel() % group_size != 0:
            raise ValueError(f"batch of {scores.numel()} rows is not a multiple of group_size={group_size}")
    return scores


def _zero(x: Tensor) -> Tensor:
    """A 0-dim zero on x's dtype and device, the fill value for torch.where."""
    return torch.zeros((), dtype=x.dtype, device=x.device)


def _warn_group_size_one(name: str) -> None:
    warnings.warn(f"{name}: group_size=1 gives no baseline, advantages are set to 0", stacklevel=3)


def _centered(scores: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """(s - group mean) as [P, G], exactly 0 for all-equal groups, and the [P, G] scores.

    The mean of G equal floats can differ from them in the last bit (e.g. 0.1 * 3 / 3), so
    all-equal groups are zeroed explicitly: docs/algorithms.md §1.2 requires a numerator of exactly 0.
    """
    grouped = scores.view(-1, group_size)  # [P, G]
    centered = grouped - grouped.mean(dim=1, keepdim=True)  # [P, G]
    all_equal = (grouped == grouped[:, :1]).all(dim=1, keepdim=True)  # [P, 1]
    return torch.where(all_equal, torch.zeros_like(centered), centered), grouped


def grpo(scores: Tensor, group_size: int, std_normalize: bool = True, eps: float = 1e-6) -> Tensor:
    """GRPO outcome advantage (2402.03300 §4.1.2): A_i = (s_i - mean_g) / (std_g + eps).

    std is the unbiased group std (verl, TRL, oat; docs/algorithms.md §4, §15.2). G = 1 gives 0 and a
    warning (§15.1); all-equal groups give exactly 0. [B] -> [B].
    """
    scores = check_scores(scores, group_size)
    if group_size == 1:
        _warn_group_size_one("grpo")
        return torch.zeros_like(scores)
    centered, grouped = _centered(scores, group_size)  # [P, G]
    if not std_normalize:
        return centered.reshape(-1)
    std = grouped.std(dim=1, unbiased=True, keepdim=True)  # [P, 1]
    return (centered / (std + eps)).reshape(-1)


def dr_grpo(scores: Tensor, group_size: int) -> Tensor:
    """Dr. GRPO advantage (2503.20783 §3.2): A_i = s_i - mean_g, no std division. [B] -> [B]."""
    scores = check_scores(scores, group_size)
    if group_size == 1:
        _warn_group_size_one("dr_grpo")
        return torch.zeros_like(scores)
    return _centered(scores, group_size)[0].reshape(-1)


def rloo(scores: Tensor, group_size: int) -> Tensor:
    """RLOO (2402.14740): A_i = s_i - mean_{j != i} s_j = G/(G-1) * (s_i - mean_g). [B] -> [B]."""
    scores = check_scores(scores, group_size)
    if group_size == 1:
        _warn_group_size_one("rloo")
        return torch.zeros_like(scores)
    centered = _centered(scores, group_size)[0]  # [P, G]
    return (centered * (group_size / (group_size - 1))).reshape(-1)


def raw(scores: Tensor, group_size: int | None = None) -> Tensor:
    """Reinforce-Rej advantage (2504.11343 §5.1): A_i = s_i (raw +-1, no baseline, no std).

    Groups with equal outcomes are removed beforehand by `filters.reject_all_equal`. With
    group_size given, B % G is checked and G = 1 gives 0 and a warning (docs/algorithms.md §1.2).
    """
    scores = check_scores(scores, group_size)
    if group_size == 1:
        _warn_group_size_one("raw")
        return torch.zeros_like(scores)
    return scores.clone()


def raft(scores: Tensor, group_size: int | None = None) -> Tensor:
    """RAFT selection (2504.11343 §3): A_i = 1[s_i > 0], i.e. train only on positive samples.

    group_size is accepted so every entry of `ADVANTAGES` has the same call; it is only checked.
    """
    scores = check_scores(scores, group_size)
    return (scores > 0).to(scores.dtype)


def remax(scores: Tensor, greedy_scores: Tensor) -> Tensor:
    """ReMax (2310.10505): A_i = s_i - s(greedy_i), the greedy response's score as baseline. [B]."""
    scores, greedy_scores = check_scores(scores, None), check_scores(greedy_scores, None)
    if scores.shape != greedy_scores.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and greedy_scores {tuple(greedy_scores.shape)} differ")
    return scores - greedy_scores


def expand(advantages: Tensor, mask: Tensor) -> Tensor:
    """Broadcast a per-row advantage to its response tokens: A[i,t] = A_i where m[i,t] = 1, else 0."""
    advantages = as_float(advantages).detach()
    mask = mask.bool()  # [B, T]
    return torch.where(mask, advantages[:, None], _zero(advantages))  # [B, T]


def terminal_rewards(scores: Tensor, mask: Tensor) -> Tensor:
    """Token rewards for gae / reinforce_pp (docs/algorithms.md §2.2): rew[i,t] = s_i at the last valid
    token of row i, else 0. Rows with no valid token get no reward. [B], [B, T] -> [B, T]."""
    scores = check_scores(scores, None)
    mask = mask.bool()  # [B, T]
    positions = torch.arange(mask.shape[1], device=mask.device)  # [T]
    last = torch.where(mask, positions, -1).amax(dim=1)  # [B], -1 for empty rows
    at_last = positions[None, :] == last[:, None]  # [B, T]
    return torch.where(at_last, scores[:, None], _zero(scores))  # [B, T]


def whiten(values: Tensor, mask: Tensor, eps: float = 1e-8, sum_over: Callable[[Tensor], Tensor] | None = None
           ) -> Tensor:
    """(x - mu) / sqrt(var + eps) with mu and unbiased var over the valid tokens of the whole
    batch (verl `masked_whiten`; docs/algorithms.md §2.2). With <= 1 valid token whitening is skipped
    and x is returned (masked) unchanged. [B, T] -> [B, T].

    `sum_over`: sums a tensor over the batch's parts held elsewhere (torchrun ranks: every rank's
    rows), so that mu and var are the whole batch's whatever the number of ranks; None: this
    batch is the whole batch."""
    total = sum_over or (lambda x: x)
    values = as_float(values).detach()
    mask = mask.bool()  # [B, T]
    zero = _zero(values)
    values = torch.where(mask, values, zero)  # [B, T]
    value_sum, count = total(torch.stack([values.sum(), mask.sum().to(values.dtype)])).unbind()
    if count <= 1:
        return values
    mean = value_sum / count
    centered = torch.where(mask, values - mean, zero)  # [B, T]
    var = total(centered.square().sum()) / (count - 1)  # unbiased, N/(N-1)
    return torch.where(mask, centered * torch.rsqrt(var + eps), zero)  # [B, T]


def _discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """G[i,t] = sum_{k >= t, m[i,k]} gamma^(k-t) rew[i,k], one vectorised pass right to left."""
    zero = _zero(rewards)
    rewards = torch.where(mask, rewards, zero)  # [B, T]
    returns = torch.zeros_like(rewards)  # [B, T]
    running = torch.zeros_like(rewards[:, 0])  # [B]
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return torch.where(mask, returns, zero)


def reinforce_pp(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0,
                 sum_over: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """REINFORCE++ (2501.03262; verl `compute_reinforce_plus_plus_outcome_advantage`):
    A = whiten(G) with G[i,t] = sum_{k>=t valid} gamma^(k-t) rew[i,k], mu and unbiased var over
    all valid tokens of the batch (docs/algorithms.md §8, §15.8). <= 1 valid token -> zeros.

    token_rewards: [B, T], e.g. terminal_rewards(s, m) - kl_coef * k1 (kl_in=reward). For
    "REINFORCE++-baseline" pass dr_grpo(s, G) as the scores. `sum_over`: as in `whiten` (the
    batch's statistics over every rank's rows). Returns [B, T].
    """
    token_rewards = as_float(token_rewards).detach()
    mask = mask.bool()  # [B, T]
    count = mask.sum().to(token_rewards.dtype)
    if (sum_over(count) if sum_over else count) <= 1:
        return torch.zeros_like(token_rewards)
    returns = _discounted_returns(token_rewards, mask, gamma)  # [B, T]
    return whiten(returns, mask, sum_over=sum_over)


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float | Tensor
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (1506.02438 §3 eq. 16; verl `compute_gae_advantage_return`).

    delta_t = rew_t + gamma V_next - V_t, A_t = delta_t + gamma lam A_next, returns = A + V,
    right to left per row. V_next and A_next come from the next *valid* token: a masked
    position carries both through unchanged; after the last valid token both are 0 (no
    bootstrap, truncated responses included). lam is a float or a per-row [B] tensor (VAPO,
    `vapo_lambda`). Whitening is separate (`whiten`), applied to A only (docs/algorithms.md §2.2).
    rewards, values, mask: [B, T] -> (advantages [B, T], returns [B, T]), 0 where masked.
    """
    rewards, values = as_float(rewards).detach(), as_float(values).detach()
    mask = mask.bool()  # [B, T]
    zero = _zero(rewards)
    # masked inputs are replaced before any arithmetic, so NaN padding cannot leak through
    rewards = torch.where(mask, rewards, zero)  # [B, T]
    values = torch.where(mask, values, zero)  # [B, T]
    lam = as_float(lam).to(device=rewards.device, dtype=rewards.dtype)  # [] or [B]
    advantages = torch.zeros_like(rewards)  # [B, T]
    next_value = torch.zeros_like(rewards[:, 0])  # [B]
    next_advantage = torch.zeros_like(rewards[:, 0])  # [B]
    for t in range(rewards.shape[1] - 1, -1, -1):
        valid = mask[:, t]  # [B]
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # [B]
        advantage = delta + gamma * lam * next_advantage  # [B]
        next_value = torch.where(valid, values[:, t], next_value)
        next_advantage = torch.where(valid, advantage, next_advantage)
        advantages[:, t] = next_advantage
    advantages = torch.where(mask, advantages, zero)  # [B, T]
    returns = torch.where(mask, advantages + values, zero)  # [B, T]
    return advantages, returns


def vapo_lambda(lengths: Tensor, alpha: float = 0.05) -> Tensor:
    """Length-adaptive GAE lambda (VAPO 2504.05118 §4.2 eq. 5): lam_i = 1 - 1/(alpha * L_i),
    clamped to [0, 1): alpha * L_i <= 1 gives 0 (as NeMo-RL clamps alpha*l >= 1). [B] -> [B]."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    lengths = as_float(lengths).detach()
    return 1.0 - 1.0 / (alpha * lengths).clamp_min(1.0)


# Outcome-level advantages, all called as fn(scores[B], group_size) -> [B].
ADVANTAGES: dict[str, Callable[..., Tensor]] = {
    "grpo": grpo,
    "dr_grpo": dr_grpo,
    "rloo": rloo,
    "raw": raw,
    "raft": raft,
}
