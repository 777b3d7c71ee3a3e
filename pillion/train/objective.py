"""The per-preset glue between the loop and `pillion.algorithms`: advantages, the actor loss, the
critic loss, and the step's checks of the rollout's log-probs.

`pillion.algorithms` holds the formulas as pure tensor functions; this module only chooses
among them from the config, in the order docs/algorithms.md §2.5 gives:

    loss = loss_pg + kl_coef * aggregate(kl) - entropy_coef * aggregate(H) + nll_coef * loss_nll
    critic loss = vf_coef * clipped value loss (token mean over the step's tokens)

All tensors are [B, T] response tensors with `mask` (1 on response tokens) unless noted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pillion import ranks
from pillion.algorithms import advantages as A
from pillion.algorithms import filters, preference
from pillion.algorithms import losses as L
from pillion.train.batch import TrainBatch

GROUP_ADVANTAGES = {"grpo", "dr_grpo", "rloo", "raw", "raft"}  # one scalar per response


@dataclass
class Counts:
    """Global normalisers of one optimizer step (so micro-batch losses sum to the full loss)."""

    num_tokens: int  # valid tokens
    num_seqs: int  # rows with at least one valid token (seq_mean modes) or all rows (sum_norm)
    norm_len: float  # Dr. GRPO's constant divisor
    num_positive_tokens: int  # tokens of correct rows (VAPO / RAFT NLL)

    @staticmethod
    def of(mask: torch.Tensor, correct: torch.Tensor, agg: str, norm_len: float,
           real: torch.Tensor | None = None) -> Counts:
        """real [B] bool: rows that are samples (padding rows, which hold no valid token, are
        not sequences of the sum_norm mode's count); None: every row."""
        every = mask.shape[0] if real is None else int(real.sum())
        rows = every if agg == "seq_mean_token_sum_norm" else int((mask.sum(-1) > 0).sum())
        positive = int((mask.bool() & correct.bool()[:, None]).sum())
        return Counts(int(mask.sum()), rows, norm_len, positive)


def sequence_kl(old_logp, ref_logp, mask) -> torch.Tensor:
    """sum_t k1 per row [B]: the KL penalty folded into a sequence-level score."""
    return L.kl(old_logp, ref_logp, "k1", mask).sum(-1)


def advantages(cfg, scores, mask, old_logp=None, ref_logp=None, values=None, world=None):
    """Advantages [B, T] (and returns [B, T] for the critic when the advantage is GAE).

    scores [B] are the rewards of the responses, groups contiguous (cfg.group_size rows each).
    With loss.kl_in == "reward", -kl_coef * k1 enters the reward: per token for token-level
    advantages (gae, reinforce_pp), summed per response for group advantages.
    """
    name = cfg.adv.name
    kl_in_reward = cfg.loss.kl_in == "reward" and cfg.loss.kl_coef > 0 and ref_logp is not None
    returns = None
    if name == "dpo":  # rows in (chosen, rejected) pairs: the DPO gradient as advantages (§16)
        seq = preference.dpo_advantages((old_logp * mask).sum(-1), (ref_logp * mask).sum(-1), cfg.dpo.beta,
                                        cfg.dpo.kind)  # [B]
        adv = A.expand(seq, mask)  # [B, T]
    elif name in GROUP_ADVANTAGES:
        if kl_in_reward:
            scores = scores - cfg.loss.kl_coef * sequence_kl(old_logp, ref_logp, mask)
        if name == "grpo":
            seq = A.grpo(scores, cfg.group_size, cfg.adv.std_normalize, cfg.adv.eps)
        else:
            seq = A.ADVANTAGES[name](scores, cfg.group_size)
        adv = A.expand(seq, mask)  # [B, T]
    else:
        token_rewards = A.terminal_rewards(scores, mask)  # [B, T], s_i on the last valid token
        if kl_in_reward:
            token_rewards = token_rewards - cfg.loss.kl_coef * L.kl(old_logp, ref_logp, "k1", mask)
        if name == "reinforce_pp":
            adv = A.reinforce_pp(token_rewards, mask, cfg.ppo.gamma, sum_over=ranks.tensor_sum(world))
        elif name == "gae":
            lengths = mask.sum(-1)
            # VAPO decoupled GAE: the critic learns from lam_critic returns, the policy uses a
            # length-adaptive lambda (2504.05118 §4.1-4.2); plain PPO uses lam for both.
            lam_policy = A.vapo_lambda(lengths, cfg.ppo.vapo_alpha) if cfg.ppo.vapo_alpha else cfg.ppo.lam
            lam_critic = cfg.ppo.lam_critic if cfg.ppo.lam_critic is not None else cfg.ppo.lam
            adv, _ = A.gae(token_rewards, values, mask, cfg.ppo.gamma, lam_policy)
            _, returns = A.gae(token_rewards, values, mask, cfg.ppo.gamma, lam_critic)
        else:
            raise ValueError(f"config key 'adv': unknown advantage {name!r}")
    if cfg.adv.whiten:  # over the global batch: every rank's valid tokens
        adv = A.whiten(adv, mask, sum_over=ranks.tensor_sum(world))
    return adv, returns


def rows_per_group(cfg) -> int:
    """Rows the batch holds per prompt: DPO keeps a pair of each group, the rest all `group_size`."""
    return 2 if cfg.adv.name == "dpo" else cfg.group_size


def preference_metrics(cfg, batch: TrainBatch, world=None) -> dict[str, float]:
    """DPO's logged figures over every rank's pairs, at the rollout policy (before the update):
    dpo_loss (the mean loss), dpo_accuracy (pairs with h > 0), dpo_margin (mean h)."""
    mask = batch.response_mask
    h = preference.margins((batch.old_logprobs * mask).sum(-1), (batch.ref_logprobs * mask).sum(-1))  # [P]
    real = batch.real.view(-1, 2)[:, 0]  # [P] several ranks: a padding pair (a copy) is no pair
    h = h[~preference.tied_pairs(batch.scores) & real]  # the pairs with a preference
    sums = ranks.sum_floats({"pairs": float(h.numel()), "loss": float(preference.dpo_loss(h, cfg.dpo.beta,
                            cfg.dpo.kind).sum()), "right": float((h > 0).sum()), "margin": float(h.sum())},
                           world or ranks.World())
    n = max(sums["pairs"], 1.0)
    return {"dpo_loss": sums["loss"] / n, "dpo_accuracy": sums["right"] / n, "dpo_margin": sums["margin"] / n}


def loss_mask(cfg, mask, correct, truncated, scores=None):
    """The tokens the actor loss sees: RAFT trains on positives only (docs/algorithms.md §9), DPO
    on pairs with a preference (§16), and overlong filtering drops truncated responses (§6.4);
    their scores still shaped the groups."""
    if cfg.adv.name == "raft":
        mask = mask * correct.to(mask.dtype)[:, None]
    if cfg.adv.name == "dpo":
        mask = mask * (~preference.tied_pairs(scores)).repeat_interleave(2).to(mask.dtype)[:, None]
    if cfg.filter.overlong_mask:
        mask = filters.overlong_mask(mask, truncated)
    return mask


def actor_loss(cfg, logp, old_logp, mb: TrainBatch, counts: Counts, entropy=None):
    """The actor objective of micro-batch `mb` at log-probs `logp` [b, T] (old_logp: the
    ratio's denominator), scaled by the step's global counts; returns (loss, stats)."""
    adv, mask, ref_logp, correct = mb.advantages, mb.loss_mask, mb.ref_logprobs, mb.correct
    agg = cfg.loss.agg
    norm = dict(num_tokens=counts.num_tokens, num_seqs=counts.num_seqs, norm_len=counts.norm_len)
    weights = None
    if cfg.loss.tis_cap is not None:
        # Truncated importance sampling (Yao et al. 2025; docs/algorithms.md §13.2).
        weights = L.tis_weights(old_logp, mb.engine_logprobs, mask, cfg.loss.tis_cap)
    name = cfg.loss.name
    stats: dict[str, torch.Tensor] = {}
    if name == "ppo_clip":
        if cfg.loss.ratio_level == "sequence":  # GSPO
            seq_adv = adv.sum(-1) / mask.sum(-1).clamp_min(1)  # [B] (constant per row)
            pg, stats = L.gspo_policy_loss(logp, old_logp, seq_adv, mask, cfg.loss.clip_low, cfg.loss.clip_high,
                                           cfg.loss.dual_clip, agg, weights, **norm)
        else:
            pg, stats = L.ppo_policy_loss(logp, old_logp, adv, mask, cfg.loss.clip_low, cfg.loss.clip_high,
                                          cfg.loss.dual_clip, agg, weights, **norm)
    elif name == "reinforce":
        per_token = -adv * logp  # [B, T] REINFORCE: ratio 1 on-policy
        if weights is not None:
            per_token = weights * per_token
        pg = L.aggregate(per_token, mask, agg, **norm)
    elif name == "nll":
        pg = L.aggregate(-logp, mask, "token_mean", num_tokens=counts.num_tokens)  # RAFT: positives only
    else:
        raise ValueError(f"config key 'loss': unknown policy loss {name!r} (ppo_clip, reinforce, nll)")
    loss = pg
    stats = {k: float(v) for k, v in stats.items()}
    stats["pg_loss"] = float(pg.detach())
    if cfg.loss.kl_in == "loss" and cfg.loss.kl_coef > 0 and ref_logp is not None:
        kl_term = L.aggregate(L.kl(logp, ref_logp, cfg.loss.kl_kind, mask), mask, agg, **norm)
        loss = loss + cfg.loss.kl_coef * kl_term
        stats["kl_loss"] = float(kl_term.detach())
    if cfg.loss.entropy_coef > 0 and entropy is not None:
        loss = loss - cfg.loss.entropy_coef * L.aggregate(entropy, mask, agg, **norm)
    if cfg.loss.nll_coef > 0:
        # VAPO positive-example LM loss (2504.05118 §4.3 eq. 9-10).
        nll = L.nll_positive(logp, mask, correct, num_tokens=max(counts.num_positive_tokens, 1))
        loss = loss + cfg.loss.nll_coef * nll
        stats["nll_loss"] = float(nll.detach())
    if entropy is not None:  # the policy's entropy over the loss's tokens, logged
        stats["entropy"] = float(L.aggregate(entropy.detach(), mask, "token_mean"))
    return loss, stats


def grad_free_rows(cfg, advantages: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor | None:
    """[B] bool: the rows whose actor loss has no gradient, or None when no row can be without.

    Every policy-gradient term (PPO clip with or without dual clip, GSPO, REINFORCE, with TIS
    weights) is the advantage times a function of the ratio, so a row with advantage 0 on every
    loss token adds exactly 0 to the gradient (a GRPO group whose rewards are all equal: often
    half the rows). Only the KL, entropy and NLL terms reach such a row; with any of them on, or
    with the NLL loss, no row is free."""
    if (cfg.loss.name == "nll" or cfg.loss.entropy_coef > 0 or cfg.loss.nll_coef > 0
            or (cfg.loss.kl_in == "loss" and cfg.loss.kl_coef > 0)):
        return None
    return ((advantages != 0) & (loss_mask != 0)).sum(-1) == 0  # [B]


def critic_loss(cfg, values, mb: TrainBatch, counts: Counts):
    """The critic objective of micro-batch `mb` at values [b, T]: vf_coef x the clipped value loss
    against the returns, a token mean over the step's global token count; returns (loss, stats)."""
    loss, stats = L.value_loss(values, mb.values, mb.returns, mb.loss_mask, cfg.ppo.value_clip, "token_mean",
                               num_tokens=counts.num_tokens)
    return cfg.ppo.vf_coef * loss, {"value_loss": float(loss.detach()), "vf_clipfrac": float(stats["vf_clipfrac"])}


def rollout_checks(old_logp, mb: TrainBatch) -> dict[str, float]:
    """Token-weighted sums over micro-batch `mb` for the step's log, at the rollout policy as the
    trainer computes it (`old_logp` [b, T]): tokens, the engine's log-probs against the trainer's
    (`logprob_error`, docs/algorithms.md §13.1) and the k3 KL to the reference (with one)."""
    n = float(mb.response_mask.sum())
    sums = {"tokens": n, "logprob_error": n * L.token_mult_prob_error(mb.engine_logprobs, old_logp, mb.response_mask)}
    if mb.ref_logprobs is not None:
        kl = L.kl(old_logp, mb.ref_logprobs, "k3", mb.response_mask)  # [b, T]
        sums["kl"] = float(L.aggregate(kl, mb.response_mask, "token_mean")) * n
    return sums
