"""`train/objective.py`: which formula the config picks, and how the actor loss is composed.

Hand-computed examples, arithmetic in the comments (docs/algorithms.md §2.5, §3, §4)."""

import math

import pytest
import torch

from pillion import config as C
from pillion.model.sequences import pack
from pillion.train.batch import TrainBatch
from pillion.train.objective import Counts, actor_loss, advantages, grad_free_rows, loss_mask


def cfg(*overrides):
    return C.resolve(C.TrainConfig, overrides=list(overrides))


def batch(mask, advantages, correct, ref=None, engine=None):
    mask = torch.tensor(mask, dtype=torch.float32)
    B, T = mask.shape
    seqs = pack([[1]] * B, [[2] * T] * B, pad_id=0)  # only sliced along with the rest here
    return TrainBatch(seqs=seqs, response_mask=mask, scores=torch.zeros(B), correct=torch.tensor(correct),
                      truncated=torch.zeros(B, dtype=torch.bool),
                      engine_logprobs=engine if engine is not None else torch.zeros_like(mask),
                      ref_logprobs=ref, advantages=torch.tensor(advantages), loss_mask=mask)


def test_counts_follow_the_aggregation_mode():
    mask = torch.tensor([[1.0, 1, 0], [0, 0, 0], [1, 1, 1]])
    correct = torch.tensor([True, False, False])
    c = Counts.of(mask, correct, "seq_mean_token_mean", 48)
    # 5 valid tokens; 2 rows with any token; 2 tokens in the correct row.
    assert (c.num_tokens, c.num_seqs, c.norm_len, c.num_positive_tokens) == (5, 2, 48, 2)
    assert Counts.of(mask, correct, "seq_mean_token_sum_norm", 48).num_seqs == 3  # Dr. GRPO: all rows


def test_grpo_advantages_and_kl_in_reward():
    mask = torch.ones(2, 2)
    adv, returns = advantages(cfg("group_size=2"), torch.tensor([1.0, 0.0]), mask)
    # mean 0.5, unbiased std sqrt(0.25 + 0.25) = 0.70711; A = +-0.5 / (0.70711 + 1e-6)
    expected = 0.5 / (math.sqrt(0.5) + 1e-6)
    torch.testing.assert_close(adv, torch.tensor([[expected, expected], [-expected, -expected]]))
    assert returns is None
    # kl_in=reward: score_i - kl_coef * sum_t k1, with k1 = old - ref = 0.2 per token on row 0 only:
    # scores [1 - 0.5 * 0.4, 0] = [0.8, 0]; Dr. GRPO A = s - mean = [0.4, -0.4] (without KL: +-0.5).
    old = torch.tensor([[0.2, 0.2], [0.0, 0.0]])
    adv, _ = advantages(cfg("group_size=2", "adv=dr_grpo", "loss.kl_in=reward", "loss.kl_coef=0.5"),
                        torch.tensor([1.0, 0.0]), mask, old, torch.zeros(2, 2))
    torch.testing.assert_close(adv[:, 0], torch.tensor([0.4, -0.4]))


def test_gae_gives_returns_for_the_critic():
    # One row, reward 1 at the last token, V = [0.5, 0.6, 0.7], gamma 1, lam 1: Monte-Carlo
    # returns [1, 1, 1] and A = R - V = [0.5, 0.4, 0.3] (docs/algorithms.md §2.2).
    adv, returns = advantages(cfg("algo=ppo", "ppo.lam=1.0", "adv.whiten=false"), torch.tensor([1.0]),
                              torch.ones(1, 3), values=torch.tensor([[0.5, 0.6, 0.7]]))
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.4, 0.3]]))
    torch.testing.assert_close(returns, torch.ones(1, 3))


def test_loss_mask_raft_positives_and_overlong_filter():
    mask = torch.ones(3, 2)
    correct = torch.tensor([True, False, True])
    truncated = torch.tensor([False, False, True])
    assert loss_mask(cfg("algo=raft"), mask, correct, truncated).sum(-1).tolist() == [2, 0, 2]
    assert loss_mask(cfg("filter.overlong_mask=true"), mask, correct, truncated).sum(-1).tolist() == [2, 2, 0]
    assert loss_mask(cfg("algo=raft", "filter.overlong_mask=true"), mask, correct, truncated).sum(-1).tolist() == [
        2, 0, 0]


def test_actor_loss_composes_policy_kl_and_entropy_terms():
    c = cfg("group_size=2", "loss.kl_coef=0.5", "loss.kl_kind=k3", "loss.entropy_coef=0.1")
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    logp = torch.full((2, 2), -1.0)
    ref = torch.full((2, 2), -0.9)  # ref - logp = 0.1 everywhere
    mb = batch([[1, 1], [1, 1]], [[a, a], [-a, -a]], [True, False], ref=ref)
    counts = Counts.of(mb.loss_mask, mb.correct, c.loss.agg, 48)
    entropy = torch.ones(2, 2)
    loss, stats = actor_loss(c, logp, logp.detach(), mb, counts, entropy)
    # Policy term: ratio 1, l = -A per token, seq_mean_token_mean: (-a + a) / 2 = 0.
    # KL term: k3 = exp(0.1) - 0.1 - 1 = 0.0051709 per token, times 0.5 = 0.0025855.
    # Entropy bonus: -0.1 * 1 = -0.1.   Total: -0.0974145.
    k3 = math.exp(0.1) - 0.1 - 1
    assert stats["pg_loss"] == pytest.approx(0.0, abs=1e-7)
    assert stats["kl_loss"] == pytest.approx(k3, rel=1e-5)
    assert float(loss) == pytest.approx(0.5 * k3 - 0.1, rel=1e-5)


def test_actor_loss_micro_batches_sum_to_the_full_batch_loss():
    torch.manual_seed(0)
    c = cfg("group_size=2", "loss.agg=token_mean", "loss.kl_coef=0.1", "mini_batches=1")
    mask = [[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]]
    mb = batch(mask, torch.randn(4, 3).tolist(), [True, False, True, False], ref=torch.randn(4, 3))
    logp, old = torch.randn(4, 3), torch.randn(4, 3)
    counts = Counts.of(mb.loss_mask, mb.correct, c.loss.agg, 48)
    full, _ = actor_loss(c, logp, old, mb, counts)
    rows = (torch.tensor([0, 1]), torch.tensor([2, 3]))
    halves = [actor_loss(c, logp[r], old[r], mb.rows(r), counts)[0] for r in rows]
    torch.testing.assert_close(halves[0] + halves[1], full)


def test_tis_weights_use_the_engine_logprobs():
    # old - engine = 1 on every token: w = min(e, 2) = 2, so the policy term doubles (§13.2).
    c = cfg("group_size=2", "loss.tis_cap=2.0")
    logp = torch.zeros(2, 1)
    plain = batch([[1], [1]], [[1.0], [-0.5]], [True, False])
    weighted = batch([[1], [1]], [[1.0], [-0.5]], [True, False], engine=torch.full((2, 1), -1.0))
    counts = Counts.of(plain.loss_mask, plain.correct, c.loss.agg, 48)
    base, _ = actor_loss(c, logp, logp, plain, counts)
    tis, _ = actor_loss(c, logp, logp, weighted, counts)
    # l = -A: (-1 + 0.5) / 2 = -0.25 without weights, -0.5 with w = 2.
    assert float(base) == pytest.approx(-0.25) and float(tis) == pytest.approx(-0.5)


def test_grad_free_rows_are_those_with_zero_advantage_on_every_loss_token():
    # row 0: advantage 0 everywhere; row 1: 0.5 on a loss token; row 2: 0.5 only where the loss
    # mask is 0 (prompt padding or a masked token): no gradient reaches it; row 3: -1 on a token.
    adv = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5], [0.0, -1.0]])  # [4, 2]
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])  # [4, 2]
    assert grad_free_rows(cfg("loss.kl_coef=0"), adv, mask).tolist() == [True, False, True, False]
    assert grad_free_rows(cfg("loss.kl_in=reward"), adv, mask).tolist() == [True, False, True, False]
    assert grad_free_rows(cfg(), adv, mask) is None  # grpo: a KL term (0.04) in the loss reaches every row
    for other in ("loss.entropy_coef=0.01", "loss.nll_coef=0.1", "loss.name=nll"):  # terms without the advantage
        assert grad_free_rows(cfg("loss.kl_coef=0", other), adv, mask) is None, other
