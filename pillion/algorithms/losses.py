"""Policy, value, KL, entropy and NLL losses as pure tensor functions (docs/algorithms.md
§1.1, §2, §3, §7, §12, §13).

Every per-token loss is built first and reduced by `aggregate` with a named mode, so the
normaliser is explicit. For gradient accumulation and data parallelism pass the *global*
num_tokens / num_seqs of the optimizer step: each micro-batch returns its partial sum divided
by the global count and the micro-batch losses are summed, not averaged (NeMo-RL
`global_normalization_factor`, verl `batch_num_tokens`).

Inputs are cast to float32 (float64 stays float64 so `gradcheck` runs); log-probabilities at
masked positions are replaced by 0 before any arithmetic, so NaN/inf padding never reaches a
value or a gradient. old/ref/gen log-probs, advantages, returns and weights carry no gradient.
Stats are detached 0-dim tensors (no host sync; call float() when logging), 0.0 for an
all-zero mask.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pillion.algorithms.advantages import as_float

# Length bias of each mode (Dr. GRPO 2503.20783 §3.1, DAPO 2503.14476 §3.3):
#   token_mean               every token of the batch weighs the same; the weight depends on
#                            the batch's token count (DAPO, verl/NeMo-RL default).
#   seq_mean_token_mean      token weight 1/L_i: short correct answers get larger updates and
#                            long wrong answers smaller penalties per token (GRPO paper).
#   seq_mean_token_sum       each sequence's summed loss, averaged over sequences.
#   seq_mean_token_sum_norm  summed loss / (B * norm_len), norm_len a run constant: no length
#                            bias (Dr. GRPO §3.2).
AGG_MODES = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm")

LOG_RATIO_CLAMP = 20.0  # ratio = exp(clamp(logp - old_logp, -20, 20)), docs/algorithms.md §1
K3_EXP_GUARD = 50.0  # overflow guard only: exp(-delta) is taken with -delta <= 50 (see kl)


def _zero_like(x: Tensor) -> Tensor:
    return torch.zeros((), dtype=x.dtype, device=x.device)


def _masked(x: Tensor, mask: Tensor) -> Tensor:
    """x where mask else exactly 0 (torch.where, so NaN/inf at masked positions vanish)."""
    return torch.where(mask, x, _zero_like(x))


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Detached mean over valid tokens, 0.0 for an all-zero mask (for stats)."""
    x = x.detach()
    return _masked(x, mask).sum() / mask.sum().clamp_min(1)


def aggregate(
    x: Tensor,
    mask: Tensor,
    mode: str,
    num_tokens: int | Tensor | None = None,
    num_seqs: int | Tensor | None = None,
    norm_len: float | None = None,
) -> Tensor:
    """Reduce a per-token loss [B, T] to a scalar (docs/algorithms.md §1.1; verl `agg_loss`).

    token_mean               sum m*x / max(N_tok, 1)
    seq_mean_token_mean      (1/S) sum_{i: L_i>0} (sum_t m*x) / L_i
    seq_mean_token_sum       (1/S) sum_{i: L_i>0} sum_t m*x
    seq_mean_token_sum_norm  (1/B) sum_i sum_t m*x / norm_len
    num_tokens overrides N_tok; num_seqs overrides S (seq_mean modes) or B (sum_norm). Empty
    rows contribute 0; an all-zero mask gives 0.0 with zero gradient.
    """
    x = as_float(x)
    mask = mask.bool()  # [B, T]
    summed = _masked(x, mask)  # [B, T]
    lengths = mask.sum(dim=1)  # [B]
    if mode == "token_mean":
        count = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens)
        return summed.sum() / count.clamp_min(1)
    if mode in ("seq_mean_token_mean", "seq_mean_token_sum"):
        row = summed.sum(dim=1)  # [B]
        if mode == "seq_mean_token_mean":
            row = row / lengths.clamp_min(1)  # [B], empty rows stay 0
        count = (lengths > 0).sum() if num_seqs is None else torch.as_tensor(num_seqs)
        return row.sum() / count.clamp_min(1)
    if mode == "seq_mean_token_sum_norm":
        if norm_len is None or norm_len <= 0:
            raise ValueError("seq_mean_token_sum_norm needs norm_len > 0 (loss.norm_len, e.g. max_new_tokens)")
        rows = mask.shape[0] if num_seqs is None else num_seqs
        return summed.sum() / (max(int(rows), 1) * norm_len)
    raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {AGG_MODES}")


def kl(logp: Tensor, ref_logp: Tensor, kind: str, mask: Tensor | None = None) -> Tensor:
    """Per-token KL estimators (Schulman 2020; docs/algorithms.md §3), delta = logp - ref_logp:
    k1 = delta; k2 = delta^2/2; k3 = exp(-delta) + delta - 1;
    low_var = clamp(k3 of clamp(delta, -20, 20), -10, 10) (verl `low_var_kl`).

    k3 is unclamped (§15.6) except for an overflow guard: exp(-delta) uses -delta <= 50, which
    changes nothing unless logp is more than 50 nats below ref_logp (where k3 would reach inf
    in float32). Gradient flows through logp only. mask given: masked positions are 0. [B, T].
    """
    logp, ref_logp = as_float(logp), as_float(ref_logp).detach()
    if mask is not None:
        mask = mask.bool()
        logp, ref_logp = _masked(logp, mask), _masked(ref_logp, mask)
    delta = logp - ref_logp  # [B, T]
    if kind == "k1":
        out = delta
    elif kind == "k2":
        out = 0.5 * delta.square()
    elif kind == "k3":
        out = torch.expm1((-delta).clamp_max(K3_EXP_GUARD)) + delta
    elif kind == "low_var":
        clamped = delta.clamp(-20.0, 20.0)
        out = (torch.expm1(-clamped) + clamped).clamp(-10.0, 10.0)
    else:
        raise ValueError(f"unknown KL kind {kind!r}; expected one of {tuple(KL_KINDS)}")
    return out if mask is None else _masked(out, mask)


KL_KINDS = ("k1", "k2", "k3", "low_var")


def _policy_stats(
    ratio: Tensor, clipped: Tensor, lower_clipped: Tensor, logp: Tensor, old_logp: Tensor, mask: Tensor
) -> dict[str, Tensor]:
    """Masked token means (docs/algorithms.md §2.1); every stat is 0.0 when no token is valid."""
    ratio = ratio.detach()
    any_valid = mask.any()
    zero = _zero_like(ratio)
    big = torch.finfo(ratio.dtype).max
    ratio_min = torch.where(mask, ratio, big).amin() if ratio.numel() else zero
    ratio_max = torch.where(mask, ratio, -big).amax() if ratio.numel() else zero
    return {
        "clipfrac": _masked_mean(clipped.to(ratio.dtype), mask),
        "clipfrac_lower": _masked_mean(lower_clipped.to(ratio.dtype), mask),
        "approx_kl": _masked_mean(old_logp - logp, mask),  # verl `ppo_kl`
        "ratio_mean": _masked_mean(ratio, mask),
        "ratio_min": torch.where(any_valid, ratio_min, zero),
        "ratio_max": torch.where(any_valid, ratio_max, zero),
    }


def _clipped_surrogate(
    ratio: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token PPO loss (1707.06347 §3 eq. 7, clip-higher DAPO §3.1, dual-clip 1912.09729):
    lc = max(-A r, -A clip(r, 1-clip_low, 1+clip_high)); where A < 0, l = min(lc, -A c).
    Returns (l [B, T], clipped [B, T] bool, lower_clipped [B, T] bool)."""
    unclipped = -advantages * ratio  # [B, T]
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # [B, T]
    loss = torch.maximum(unclipped, clipped)  # [B, T], pessimistic bound
    lower_clipped = torch.zeros_like(mask)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        bound = -advantages * dual_clip  # [B, T]
        lower_clipped = (advantages < 0) & (loss > bound) & mask
        loss = torch.where(advantages < 0, torch.minimum(loss, bound), loss)
    return loss, (clipped > unclipped) & mask, lower_clipped


def _token_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    """Accept a per-row [B] advantage (broadcast to tokens) or a per-token [B, T] one."""
    advantages = as_float(advantages).detach()
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand(mask.shape)
    return _masked(advantages, mask)  # [B, T]


def ppo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token_mean",
    weights: Tensor | None = None,
    num_tokens: int | Tensor | None = None,
    num_seqs: int | Tensor | None = None,
    norm_len: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate (docs/algorithms.md §2.1): ratio = exp(clamp(logp - old_logp, -20, 20)),
    l = max(-A r, -A clip(r, 1-clip_low, 1+clip_high)), dual-clip min(l, -A c) where A < 0,
    optional TIS weight l <- w * l (§13.2), then aggregate(l, mask, agg, ...).

    advantages: [B, T] or [B] (broadcast). A clipped token gets zero gradient; on-policy
    (ratio 1) the gradient is -A * grad(logp). Returns (loss, stats) with clipfrac,
    clipfrac_lower, approx_kl, ratio_mean, ratio_min, ratio_max over valid tokens.
    """
    mask = mask.bool()  # [B, T]
    logp = _masked(as_float(logp), mask)  # [B, T]
    old_logp = _masked(as_float(old_logp).detach(), mask)  # [B, T]
    advantages = _token_advantages(advantages, mask)  # [B, T]
    ratio = torch.exp((logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # [B, T]
    loss, clipped, lower_clipped = _clipped_surrogate(ratio, advantages, mask, clip_low, clip_high, dual_clip)
    if weights is not None:
        loss = loss * _masked(as_float(weights).detach(), mask)
    total = aggregate(loss, mask, agg, num_tokens=num_tokens, num_seqs=num_seqs, norm_len=norm_len)
    return total, _policy_stats(ratio, clipped, lower_clipped, logp, old_logp, mask)


def gspo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    dual_clip: float | None = None,
    agg: str = "seq_mean_token_mean",
    weights: Tensor | None = None,
    num_tokens: int | Tensor | None = None,
    num_seqs: int | Tensor | None = None,
    norm_len: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO (2507.18071 §4 eq. 5): s_i = exp((1/L_i) sum_t m (logp - old_logp)),
    l_i = max(-A_i s_i, -A_i clip(s_i, 1-clip_low, 1+clip_high)), loss = (1/S) sum_{L_i>0} l_i.

    Written in the GSPO-token form (verl `compute_policy_loss_gspo`): the per-token ratio
    sg[s_i] * exp(logp - sg(logp)) has the value s_i and, for per-row advantages, exactly the
    sequence-level gradient under every aggregation (the L_i tokens of a row share s_i); it
    also accepts [B, T] advantages. Empty rows are excluded. dual_clip and weights act as in ppo_policy_loss, so
    both losses share one call. Stats as in ppo_policy_loss (ratio stats are s_i).
    """
    mask = mask.bool()  # [B, T]
    logp = _masked(as_float(logp), mask)  # [B, T]
    old_logp = _masked(as_float(old_logp).detach(), mask)  # [B, T]
    advantages = _token_advantages(advantages, mask)  # [B, T]
    lengths = mask.sum(dim=1).clamp_min(1)  # [B]
    seq_log_ratio = (logp - old_logp).sum(dim=1) / lengths  # [B], masked terms are 0
    token_log_ratio = seq_log_ratio.detach()[:, None] + logp - logp.detach()  # [B, T], value log s_i
    ratio = torch.exp(token_log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # [B, T]
    loss, clipped, lower_clipped = _clipped_surrogate(ratio, advantages, mask, clip_low, clip_high, dual_clip)
    if weights is not None:
        loss = loss * _masked(as_float(weights).detach(), mask)
    total = aggregate(loss, mask, agg, num_tokens=num_tokens, num_seqs=num_seqs, norm_len=norm_len)
    return total, _policy_stats(ratio, clipped, lower_clipped, logp, old_logp, mask)


def tis_weights(
    old_logp: Tensor, gen_logp: Tensor, mask: Tensor, cap: float = 2.0, level: str = "token"
) -> Tensor:
    """Truncated importance sampling weights (Yao et al. 2025; docs/algorithms.md §13.2), no gradient:
    token: w = min(exp(old_logp - gen_logp), C); sequence: w_i = min(exp(sum_t m (old - gen)), C)
    broadcast to the row's tokens. Computed as exp(min(x, log C)), which never overflows. [B, T]."""
    if cap <= 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    mask = mask.bool()  # [B, T]
    diff = _masked(as_float(old_logp).detach() - as_float(gen_logp).detach(), mask)  # [B, T]
    if level == "sequence":
        diff = diff.sum(dim=1, keepdim=True).expand(mask.shape)  # [B, T]
    elif level != "token":
        raise ValueError(f"level must be 'token' or 'sequence', got {level!r}")
    return _masked(torch.exp(diff.clamp_max(math.log(cap))), mask)


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float | None = 0.2,
    agg: str = "token_mean",
    num_tokens: int | Tensor | None = None,
    num_seqs: int | Tensor | None = None,
    norm_len: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss (docs/algorithms.md §2.3; verl `compute_value_loss`):
    Vc = clip(V, V_old - clip, V_old + clip), l = 0.5 max((V - R)^2, (Vc - R)^2), aggregated.
    clip=None disables clipping. Stats: vf_clipfrac = mean 1[(Vc-R)^2 > (V-R)^2], value_mean."""
    mask = mask.bool()  # [B, T]
    values = _masked(as_float(values), mask)  # [B, T]
    old_values = _masked(as_float(old_values).detach(), mask)  # [B, T]
    returns = _masked(as_float(returns).detach(), mask)  # [B, T]
    error = (values - returns).square()  # [B, T]
    if clip is None:
        clipped_error = error
    else:
        clipped_values = old_values + (values - old_values).clamp(-clip, clip)  # [B, T]
        clipped_error = (clipped_values - returns).square()  # [B, T]
    loss = 0.5 * torch.maximum(error, clipped_error)  # [B, T]
    total = aggregate(loss, mask, agg, num_tokens=num_tokens, num_seqs=num_seqs, norm_len=norm_len)
    stats = {
        "vf_clipfrac": _masked_mean((clipped_error > error).to(values.dtype), mask),
        "value_mean": _masked_mean(values, mask),
    }
    return total, stats


def nll_positive(
    logp: Tensor, mask: Tensor, correct: Tensor, num_tokens: int | Tensor | None = None
) -> Tensor:
    """Positive-example LM loss (VAPO 2504.05118 §4.3 eq. 9-10; RAFT 2504.11343 §3):
    -(1 / sum_{i in T} L_i) sum_{i in T} sum_t m logp over correct rows T; 0.0 when T is
    empty. num_tokens: the global count of positive tokens for micro-batching."""
    mask = mask.bool() & torch.as_tensor(correct, device=mask.device).bool()[:, None]  # [B, T]
    return aggregate(-_masked(as_float(logp), mask), mask, "token_mean", num_tokens=num_tokens)


def token_mult_prob_error(a_logp: Tensor, b_logp: Tensor, mask: Tensor) -> float:
    """Multiplicative token probability error (NeMo-RL `ClippedPGLossFn`; docs/algorithms.md §13.1):
    sum m exp(|a - b|) / N_valid, >= 1 with 1 = exact; 0.0 for an all-zero mask. Computed in
    float64; |a - b| is capped at 100 nats so the metric stays finite."""
    mask = mask.bool()
    diff = (a_logp.detach().double() - b_logp.detach().double()).abs()  # [B, T]
    ratio = torch.exp(_masked(diff, mask).clamp_max(100.0))  # [B, T]
    return float(_masked(ratio, mask).sum() / mask.sum().clamp_min(1))


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var(R - V) / Var(R) over valid tokens (VAPO §4.1 value pretraining). 0.0 when
    Var(R) is 0 (nothing to explain) or no token is valid. Detached 0-dim tensor."""
    mask = mask.bool()
    values, returns = as_float(values).detach(), as_float(returns).detach()
    count = mask.sum().clamp_min(1)

    def variance(x: Tensor) -> Tensor:
        mean = _masked(x, mask).sum() / count
        return _masked((x - mean).square(), mask).sum() / count

    var_returns = variance(returns)
    result = 1.0 - variance(returns - values) / var_returns.clamp_min(torch.finfo(var_returns.dtype).tiny)
    return torch.where(var_returns > 0, result, _zero_like(result))


def adaptive_kl_update(beta: float, kl: float, target: float, n_steps: int, horizon: int) -> float:
    """Adaptive KL coefficient (Ziegler et al. 1909.08593; verl `AdaptiveKLController`):
    beta * (1 + clip(KL/target - 1, -0.2, 0.2) * n_steps / horizon). kl: the measured mean KL."""
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return beta * (1.0 + error * n_steps / horizon)
