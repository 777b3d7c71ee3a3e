"""The algorithm's knobs: `adv.*`, `loss.*`, `ppo.*`, `filter.*` and `dpo.*` (docs/algorithms.md §0).

Each group declares its choices and ranges beside its fields (pillion/fields.py). The loop's
modules turn them into calls of the pure functions in pillion/algorithms/: objective.py
(advantages and the actor loss), update.py (the critic's loss, aggregation) and collect.py
(the group filters); the algorithms themselves never see these records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pillion.fields import bounded, free


@dataclass
class AdvConfig:
    name: Literal["grpo", "dr_grpo", "rloo", "reinforce_pp", "gae", "raw", "raft", "dpo"] = "grpo"
    std_normalize: bool = True
    eps: float = bounded(1e-6, low=0, open="low")  # added to the group's std: 0 would give 0/0 on a uniform group
    whiten: bool = False  # whiten advantages over the batch's valid tokens (verl GAE default)


@dataclass
class LossConfig:
    name: Literal["ppo_clip", "nll", "reinforce"] = "ppo_clip"  # nll: RAFT
    clip_low: float = bounded(0.2, low=0)  # the ratio is clipped to [1 - clip_low, 1 + clip_high]
    clip_high: float = bounded(0.2, low=0)
    dual_clip: float | None = bounded(None, low=1, open="low")  # dual-clip PPO's c (> 1); null: off
    # token_mean | seq_mean_token_mean | seq_mean_token_sum | seq_mean_token_sum_norm.
    # Length bias (docs/algorithms.md §1.1): seq_mean_token_mean weighs a token by 1/L_i (short right
    # answers pushed harder, long wrong ones penalised less per token); token_mean weighs tokens
    # equally within a batch; seq_mean_token_sum_norm divides by a run constant (unbiased).
    agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"] = (
        "seq_mean_token_mean"
    )
    norm_len: int | None = bounded(None, low=1)  # Dr. GRPO's constant; None: max_new_tokens
    kl_coef: float = bounded(0.0, low=0)
    kl_kind: Literal["k1", "k2", "k3", "low_var"] = "k3"
    kl_in: Literal["loss", "reward"] = "loss"
    entropy_coef: float = bounded(0.0, low=0)
    nll_coef: float = bounded(0.0, low=0)  # VAPO positive-example LM loss
    ratio_level: Literal["token", "sequence"] = "token"  # sequence: GSPO
    # truncated importance sampling against engine log-probs: the weight is capped at tis_cap; null: off
    tis_cap: float | None = bounded(None, low=0, open="low")


@dataclass
class PPOConfig:
    gamma: float = bounded(1.0, low=0, high=1)  # discount (docs/algorithms.md §2.2)
    lam: float = bounded(0.95, low=0, high=1, aka="gae_lambda")  # GAE lambda
    lam_critic: float | None = bounded(None, low=0, high=1)  # VAPO decoupled GAE: critic targets; None: lam
    vapo_alpha: float | None = bounded(None, low=0, open="low")  # VAPO length-adaptive policy lambda; None: lam
    value_clip: float | None = bounded(0.2, low=0)  # values kept within old +- value_clip; null: unclipped
    vf_coef: float = bounded(1.0, low=0)
    critic_lr: float = bounded(1e-4, low=0, open="low")
    value_pretrain_steps: int = bounded(0, low=0)


@dataclass
class FilterConfig:
    reject: Literal["none", "all_equal"] = free("none")  # all_equal: Reinforce-Rej
    dynamic_sampling: bool = free(False)  # DAPO: keep mixed groups, refill the batch
    max_gen_batches: int = bounded(10, low=1)
    overlong_mask: bool = False  # zero the loss of truncated responses


@dataclass
class DpoConfig:
    """Online DPO (adv=dpo; docs/algorithms.md §16): read only with that advantage."""

    beta: float = bounded(0.1, low=0, open="low")  # the implicit reward's scale beta
    kind: Literal["sigmoid", "ipo"] = "sigmoid"  # sigmoid: DPO's -log sigmoid(beta h); ipo: (h - 1/(2 beta))^2
    # copy the policy into the reference every N steps (iterative DPO's rounds); 0: the reference stays the start
    ref_update_every: int = bounded(0, low=0, note="0: never")
