"""Losses against the worked examples of docs/algorithms.md (§1.1, §2.1-2.4, §2.6, §3, §4,
§7, §12, §13), hand-computed cases with the arithmetic in comments, loop references,
micro-batch invariance, float64 gradcheck and the edge cases of §1.2."""

import math

import pytest
import torch

from pillion.algorithms import advantages as adv
from pillion.algorithms import losses

LN2, LN3 = math.log(2.0), math.log(3.0)


def close(actual, expected, atol=1e-6):
    actual, expected = torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def random_mask(gen, batch, length, holes=0.1):
    """Right-padded rows (some empty, some truncated) plus a few interior gaps."""
    lengths = torch.randint(0, length + 1, (batch,), generator=gen)
    lengths[0] = length  # at least one full (truncated) row
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return mask & ~(torch.rand(batch, length, generator=gen) < holes)


def agg_kwargs(mode, mask, norm_len=4.0):
    """The global counts a training loop passes for the full batch."""
    lengths = mask.sum(1)
    num_seqs = mask.shape[0] if mode == "seq_mean_token_sum_norm" else int((lengths > 0).sum())
    return {"num_tokens": int(mask.sum()), "num_seqs": num_seqs, "norm_len": norm_len}


# ---------------------------------------------------------------- aggregate (§1.1)


def test_aggregate_worked_example():
    # the 100 is masked; row sums 3 and 12, lengths 2 and 3, 5 tokens
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    close(losses.aggregate(x, mask, "token_mean"), 3.0)  # 15 / 5
    close(losses.aggregate(x, mask, "seq_mean_token_mean"), 2.75)  # (3/2 + 12/3) / 2
    close(losses.aggregate(x, mask, "seq_mean_token_sum"), 7.5)  # (3 + 12) / 2
    close(losses.aggregate(x, mask, "seq_mean_token_sum_norm", norm_len=4), 1.875)  # 15 / (2 * 4)


def test_aggregate_empty_rows():
    # row 1 is empty: excluded from S in the seq means, still counted in B for sum_norm
    x = torch.tensor([[2.0, 4.0], [7.0, 7.0]])
    mask = torch.tensor([[1, 1], [0, 0]])
    close(losses.aggregate(x, mask, "token_mean"), 3.0)  # 6 / 2
    close(losses.aggregate(x, mask, "seq_mean_token_mean"), 3.0)  # (6/2) / 1
    close(losses.aggregate(x, mask, "seq_mean_token_sum"), 6.0)  # 6 / 1
    close(losses.aggregate(x, mask, "seq_mean_token_sum_norm", norm_len=3), 1.0)  # 6 / (2 * 3)


@pytest.mark.parametrize("mode", losses.AGG_MODES)
def test_aggregate_all_zero_mask_is_zero_with_zero_gradient(mode):
    x = torch.tensor([[1.0, float("nan")], [float("inf"), 3.0]], requires_grad=True)
    out = losses.aggregate(x, torch.zeros(2, 2), mode, norm_len=4)
    out.backward()
    assert out.item() == 0.0
    assert torch.equal(x.grad, torch.zeros(2, 2))


def test_aggregate_bad_arguments():
    x, mask = torch.ones(1, 2), torch.ones(1, 2)
    with pytest.raises(ValueError, match="unknown aggregation"):
        losses.aggregate(x, mask, "mean")
    with pytest.raises(ValueError, match="norm_len"):
        losses.aggregate(x, mask, "seq_mean_token_sum_norm")


def aggregate_reference(x, mask, mode, norm_len):
    rows = [[v for v, m in zip(xr, mr) if m] for xr, mr in zip(x, mask)]
    nonempty = [r for r in rows if r]
    if mode == "token_mean":
        return sum(map(sum, rows)) / max(sum(map(len, rows)), 1)
    if mode == "seq_mean_token_mean":
        return sum(sum(r) / len(r) for r in nonempty) / max(len(nonempty), 1)
    if mode == "seq_mean_token_sum":
        return sum(sum(r) for r in nonempty) / max(len(nonempty), 1)
    return sum(map(sum, rows)) / (len(rows) * norm_len)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("batch,length", [(1, 1), (5, 7), (12, 20)])
@pytest.mark.parametrize("mode", losses.AGG_MODES)
def test_aggregate_matches_loop_reference(seed, batch, length, mode):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    mask = random_mask(gen, batch, length, holes=0.3)
    expected = aggregate_reference(x.tolist(), mask.tolist(), mode, 6.0)
    close(losses.aggregate(x, mask, mode, norm_len=6.0), expected, atol=1e-12)


def split_rows(batch, gen):
    """Random micro-batch boundaries over the rows, e.g. [(0, 3), (3, 4), (4, 8)]."""
    cuts = sorted(torch.randperm(batch - 1, generator=gen)[:2].add(1).tolist())
    edges = [0, *cuts, batch]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mode", losses.AGG_MODES)
def test_micro_batches_sum_to_full_batch_value_and_gradient(seed, mode):
    # each micro-batch divides its partial sum by the global count; the losses are summed
    gen = torch.Generator().manual_seed(seed)
    batch, length = 8, 6
    mask = random_mask(gen, batch, length, holes=0.2)
    logp = (-torch.rand(batch, length, generator=gen, dtype=torch.float64)).requires_grad_()
    old_logp = logp.detach() + 0.3 * torch.randn(batch, length, generator=gen, dtype=torch.float64)
    advantages = torch.randn(batch, generator=gen, dtype=torch.float64)
    values = torch.randn(batch, length, generator=gen, dtype=torch.float64, requires_grad=True)
    returns = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    kwargs = agg_kwargs(mode, mask)

    def total(rows, counts):
        a, b = rows
        rows = (logp[a:b], old_logp[a:b], advantages[a:b], mask[a:b])
        pg, _ = losses.ppo_policy_loss(*rows, 0.2, 0.28, 3.0, mode, **counts)
        gs, _ = losses.gspo_policy_loss(*rows, 0.1, 0.1, agg=mode, **counts)
        vf, _ = losses.value_loss(values[a:b], returns[a:b] + 0.1, returns[a:b], mask[a:b], 0.2, mode, **counts)
        kl = losses.aggregate(losses.kl(logp[a:b], old_logp[a:b], "k3"), mask[a:b], mode, **counts)
        return pg + gs + vf + kl

    full = total((0, batch), {"norm_len": 4.0})
    full_grads = torch.autograd.grad(full, (logp, values))
    micro = sum(total(rows, kwargs) for rows in split_rows(batch, gen))
    micro_grads = torch.autograd.grad(micro, (logp, values))
    close(micro, full, atol=1e-12)
    for g_micro, g_full in zip(micro_grads, full_grads):
        close(g_micro, g_full, atol=1e-12)


@pytest.mark.parametrize("mode", losses.AGG_MODES)
def test_aggregate_gradcheck(mode):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = random_mask(gen, 4, 5, holes=0.3)
    assert torch.autograd.gradcheck(lambda x: losses.aggregate(x, mask, mode, norm_len=3.0), (x,))


# ---------------------------------------------------------------- KL estimators (§3)


def test_kl_worked_examples():
    # delta = ln 0.5 - ln 0.25 = ln 2: k1 = 0.693147, k2 = ln2^2/2 = 0.240227, k3 = 0.5 + ln2 - 1 = 0.193147
    logp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    close(losses.kl(logp, ref, "k1"), [[0.693147]])
    close(losses.kl(logp, ref, "k2"), [[0.240227]])
    close(losses.kl(logp, ref, "k3"), [[0.193147]])
    close(losses.kl(logp, ref, "low_var"), [[0.193147]])
    # delta = -ln 2: k1 = -0.693147, k2 = 0.240227, k3 = 2 - ln2 - 1 = 0.306853
    close(losses.kl(ref, logp, "k1"), [[-0.693147]])
    close(losses.kl(ref, logp, "k2"), [[0.240227]])
    close(losses.kl(ref, logp, "k3"), [[0.306853]])


def test_low_var_clamps():
    # logp=-30, ref=0: delta=-30 clamped to -20, k3 = e^20 - 21 clamped to 10
    # logp=0, ref=-30: delta=30 -> 20, k3 = e^-20 + 19 = 19.0 clamped to 10
    close(losses.kl(torch.tensor([[-30.0, 0.0]]), torch.tensor([[0.0, -30.0]]), "low_var"), [[10.0, 10.0]])


def test_kl_gradients_per_token():
    # delta = ln 2, rho = 0.5: dk1 = 1, dk2 = delta = 0.693147, dk3 = 1 - rho = 0.5, low_var = 0.5
    for kind, expected in [("k1", 1.0), ("k2", LN2), ("k3", 0.5), ("low_var", 0.5)]:
        logp = torch.tensor([[math.log(0.5)]], requires_grad=True)
        losses.kl(logp, torch.tensor([[math.log(0.25)]]), kind).sum().backward()
        close(logp.grad, [[expected]])


@pytest.mark.parametrize("kind", losses.KL_KINDS)
def test_kl_gradcheck_and_masking(kind):
    gen = torch.Generator().manual_seed(1)
    logp = (-3 * torch.rand(3, 4, generator=gen, dtype=torch.float64)).requires_grad_()
    ref = -3 * torch.rand(3, 4, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    assert torch.autograd.gradcheck(lambda x: losses.kl(x, ref, kind, mask), (logp,))
    out = losses.kl(logp, ref.masked_fill(~mask.bool(), float("nan")), kind, mask)
    assert (out[~mask.bool()] == 0).all() and torch.isfinite(out).all()


def test_k3_is_never_negative_and_unclamped():
    gen = torch.Generator().manual_seed(0)
    delta = 10 * torch.randn(1000, generator=gen)
    assert (losses.kl(delta[None], torch.zeros(1, 1000), "k3") >= 0).all()
    # delta = -30: unclamped k3 = e^30 - 31 (low_var would give 10)
    logp = torch.tensor([[-30.0]], dtype=torch.float64)
    close(losses.kl(logp, torch.zeros_like(logp), "k3"), [[math.exp(30) - 31]])


def test_kl_unknown_kind():
    with pytest.raises(ValueError, match="unknown KL kind"):
        losses.kl(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


# ---------------------------------------------------------------- PPO policy loss (§2.1)


def one_token(advantage, ratio, clip_low=0.2, clip_high=0.2, dual_clip=None, weight=None):
    """Loss and d loss / d logp of a single token with the given advantage and ratio."""
    logp = torch.tensor([[math.log(ratio)]], dtype=torch.float64, requires_grad=True)
    weights = None if weight is None else torch.tensor([[weight]])
    advantages, mask = torch.tensor([[advantage]]), torch.ones(1, 1)
    loss, stats = losses.ppo_policy_loss(
        logp, torch.zeros(1, 1), advantages, mask, clip_low, clip_high, dual_clip, weights=weights
    )
    loss.backward()
    return loss.item(), logp.grad.item(), stats


@pytest.mark.parametrize(
    "advantage,ratio,clip_high,dual_clip,expected,grad",
    [
        (+1, 1.5, 0.2, None, -1.2, 0.0),  # -min(1.5, 1.2) = -1.2, clipped: no gradient
        (-1, 0.5, 0.2, None, 0.8, 0.0),  # max(0.5, 0.8) = 0.8, clipped
        (-1, 1.5, 0.2, None, 1.5, 1.5),  # max(1.5, 1.2) = 1.5: pessimistic, grad -A r = 1.5
        (+1, 0.5, 0.2, None, -0.5, -0.5),  # max(-0.5, -0.8) = -0.5, grad -A r = -0.5
        (+1, 1.0, 0.2, None, -1.0, -1.0),  # on-policy: l = -A, grad -A
        (+1, 1.5, 0.28, None, -1.28, 0.0),  # clip-higher 0.28: -min(1.5, 1.28)
        (-1, 5.0, 0.2, 3.0, 3.0, 0.0),  # dual-clip: min(max(5, 1.2), 3) = 3, constant
        (-1, 5.0, 0.2, None, 5.0, 5.0),  # without dual-clip: 5.0
        (-1, 2.0, 0.2, 3.0, 2.0, 2.0),  # dual-clip inactive below c: max(2, 1.2) = 2
    ],
)
def test_ppo_worked_tokens(advantage, ratio, clip_high, dual_clip, expected, grad):
    loss, g, _ = one_token(advantage, ratio, 0.2, clip_high, dual_clip)
    close(loss, expected)
    close(g, grad)


def test_ppo_tis_weight_scales_the_term():
    # old - gen = 1 -> e = 2.718282 capped to 2; l = -1.2 -> -2.4 (gradient stays 0: clipped)
    w = losses.tis_weights(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.ones(1, 1))
    loss, g, _ = one_token(+1, 1.5, weight=w.item())
    close(loss, -2.4)
    # unclipped token: l = -A r w = -0.5 * 2 = -1.0, grad -A r w = -1.0
    loss, g, _ = one_token(+1, 0.5, weight=2.0)
    close((loss, g), (-1.0, -1.0))


def test_ppo_stats_hand_computed():
    # tokens (A, r): (+1,1.5) clipped, (-1,0.5) clipped, (-1,1.5) not, (+1,1.0) not, (-1,5.0) dual-clipped
    advantages = torch.tensor([[1.0, -1.0, -1.0, 1.0, -1.0, 9.0]])
    ratio = torch.tensor([[1.5, 0.5, 1.5, 1.0, 5.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])  # last token masked: must not count
    _, stats = losses.ppo_policy_loss(ratio.log(), torch.zeros(1, 6), advantages, mask, 0.2, 0.2, dual_clip=3.0)
    close(stats["clipfrac"], 2 / 5)  # (+1,1.5) and (-1,0.5); (-1,5.0): l1=5 > l2=1.2, not clipped
    close(stats["clipfrac_lower"], 1 / 5)  # (-1,5.0): lc = 5 > -A c = 3
    # approx_kl = mean(old - logp) = -(ln1.5 + ln0.5 + ln1.5 + 0 + ln5)/5 = -(0.405465*2 - 0.693147 + 1.609438)/5
    close(stats["approx_kl"], -(2 * math.log(1.5) + math.log(0.5) + math.log(5.0)) / 5)
    close(stats["ratio_mean"], (1.5 + 0.5 + 1.5 + 1.0 + 5.0) / 5)  # 1.9
    close(stats["ratio_min"], 0.5)
    close(stats["ratio_max"], 5.0)
    assert all(not s.requires_grad and s.dim() == 0 for s in stats.values())


def test_grpo_full_loss_worked_example():
    # G=2, s=[1,0]: A = +-0.5/(0.707107+1e-6) = +-0.707106; on-policy; delta = ln2 everywhere -> k3 = 0.193147
    # l = -A + 0.04*k3: row 0 = -0.707106 + 0.007726 = -0.699380, row 1 = 0.714832
    a = adv.grpo(torch.tensor([1.0, 0.0]), 2)
    close(a, [0.707106, -0.707106])
    mask = torch.tensor([[1, 1], [1, 0]])
    expected = {
        "seq_mean_token_mean": 0.007726,  # (-0.699380 + 0.714832) / 2
        "token_mean": -0.227976,  # (2 * -0.699380 + 0.714832) / 3
        "seq_mean_token_sum_norm": -0.085491,  # (2 * -0.699380 + 0.714832) / (2 * 4)
    }
    for agg, value in expected.items():
        logp = torch.full((2, 2), math.log(0.5), requires_grad=True)
        ref = torch.full((2, 2), math.log(0.25))
        pg, _ = losses.ppo_policy_loss(logp, logp.detach(), a, mask, 0.2, 0.2, agg=agg, norm_len=4)
        total = pg + 0.04 * losses.aggregate(losses.kl(logp, ref, "k3"), mask, agg, norm_len=4)
        close(total, value)
        if agg == "token_mean":
            # d l / d logp = -A + 0.04 * (1 - rho) = -0.707106 + 0.02 = -0.687106 (row 0), 0.727106 (row 1);
            # token_mean divides each by N_tok = 3
            total.backward()
            close(logp.grad * 3, [[-0.687106, -0.687106], [0.727106, 0.0]])


def test_ppo_row_advantages_equal_expanded():
    gen = torch.Generator().manual_seed(0)
    logp, old = -torch.rand(3, 4, generator=gen), -torch.rand(3, 4, generator=gen)
    a, mask = torch.randn(3, generator=gen), random_mask(gen, 3, 4)
    l1, _ = losses.ppo_policy_loss(logp, old, a, mask, 0.2, 0.2)
    l2, _ = losses.ppo_policy_loss(logp, old, adv.expand(a, mask), mask, 0.2, 0.2)
    assert torch.equal(l1, l2)


POLICY_LOSS_FNS = [losses.ppo_policy_loss, losses.gspo_policy_loss]


@pytest.mark.parametrize("fn", POLICY_LOSS_FNS)
@pytest.mark.parametrize("mode", losses.AGG_MODES)
def test_policy_loss_all_zero_mask(fn, mode):
    # NaN/inf padding everywhere: loss 0.0, gradient exactly 0, every stat 0.0
    logp = torch.full((2, 3), float("nan")).requires_grad_()
    old = torch.full((2, 3), float("-inf"))
    loss, stats = fn(logp, old, torch.ones(2, 3), torch.zeros(2, 3), 0.2, 0.2, 3.0, mode, torch.ones(2, 3), norm_len=4)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logp.grad, torch.zeros(2, 3))
    assert all(float(v) == 0.0 for v in stats.values()), stats


def ppo_reference(logp, old, advantages, mask, clip_low, clip_high, dual_clip, weights):
    """Scalar python per token, then aggregate_reference."""
    out = []
    for i in range(len(logp)):
        row = []
        for t in range(len(logp[i])):
            if not mask[i][t]:
                row.append(0.0)
                continue
            a = advantages[i][t]
            r = math.exp(max(min(logp[i][t] - old[i][t], 20.0), -20.0))
            lc = max(-a * r, -a * min(max(r, 1 - clip_low), 1 + clip_high))
            if dual_clip is not None and a < 0:
                lc = min(lc, -a * dual_clip)
            row.append(lc * weights[i][t])
        out.append(row)
    return out


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("batch,length", [(1, 3), (6, 9)])
@pytest.mark.parametrize("mode", losses.AGG_MODES)
@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_ppo_matches_loop_reference(seed, batch, length, mode, dual_clip):
    gen = torch.Generator().manual_seed(seed)
    logp = -3 * torch.rand(batch, length, generator=gen, dtype=torch.float64)
    old = logp + 0.5 * torch.randn(batch, length, generator=gen, dtype=torch.float64)
    old[0, 0] = logp[0, 0] + 2.0  # one far-off ratio so dual-clip has work to do
    a = 2 * torch.randn(batch, length, generator=gen, dtype=torch.float64)
    a[0, 0] = -1.0
    weights = 2 * torch.rand(batch, length, generator=gen, dtype=torch.float64)
    mask = random_mask(gen, batch, length)
    loss, _ = losses.ppo_policy_loss(logp, old, a, mask, 0.2, 0.28, dual_clip, mode, weights, norm_len=5.0)
    lists = [x.tolist() for x in (logp, old, a, mask)]
    per_token = ppo_reference(*lists, 0.2, 0.28, dual_clip, weights.tolist())
    close(loss, aggregate_reference(per_token, mask.tolist(), mode, 5.0), atol=1e-12)


@pytest.mark.parametrize("mode", losses.AGG_MODES)
@pytest.mark.parametrize("fn", POLICY_LOSS_FNS)
def test_policy_loss_gradcheck(fn, mode):
    gen = torch.Generator().manual_seed(3)
    logp = (-2 * torch.rand(4, 5, generator=gen, dtype=torch.float64)).requires_grad_()
    old = logp.detach() + 0.3 * torch.randn(4, 5, generator=gen, dtype=torch.float64)
    a = torch.randn(4, generator=gen, dtype=torch.float64)
    weights = torch.rand(4, 5, generator=gen, dtype=torch.float64) + 0.5
    mask = random_mask(gen, 4, 5)
    clip = (0.2, 0.28) if fn is losses.ppo_policy_loss else (0.05, 0.05)

    def loss(x):
        return fn(x, old, a, mask, *clip, 3.0, mode, weights, norm_len=3.0)[0]

    assert torch.autograd.gradcheck(loss, (logp,))


@pytest.mark.parametrize("fn", POLICY_LOSS_FNS)
def test_policy_loss_bf16_equals_float32_on_rounded_values(fn):
    gen = torch.Generator().manual_seed(0)
    logp = (-torch.rand(3, 4, generator=gen)).bfloat16()
    old = (logp.float() + 0.2 * torch.randn(3, 4, generator=gen)).bfloat16()
    a, mask = torch.randn(3, generator=gen).bfloat16(), random_mask(gen, 3, 4)
    l16, s16 = fn(logp, old, a, mask, 0.2, 0.2)
    l32, s32 = fn(logp.float(), old.float(), a.float(), mask, 0.2, 0.2)
    assert l16.dtype == torch.float32 and torch.equal(l16, l32)
    assert all(torch.equal(s16[k], s32[k]) for k in s32)


# ---------------------------------------------------------------- GSPO (§12)


def gspo_one_row(log_ratios, advantage):
    logp = torch.tensor([log_ratios], dtype=torch.float64)
    advantages = torch.tensor([advantage])
    return losses.gspo_policy_loss(logp, torch.zeros_like(logp), advantages, torch.ones_like(logp), 3e-4, 4e-4)


def test_gspo_worked_examples():
    # s = exp(mean(0.3, 0.3)) = 1.349859 -> clip to 1.0004 -> l = max(-1.349859, -1.0004) = -1.0004
    loss, stats = gspo_one_row([0.3, 0.3], 1.0)
    close(loss, -1.0004)
    close(stats["ratio_mean"], math.exp(0.3))
    close(stats["clipfrac"], 1.0)
    # [0.1, -0.3, 0.2]: mean 0 -> s = 1.0, l = -A
    close(gspo_one_row([0.1, -0.3, 0.2], 1.0)[0], -1.0)
    # A=-1, s = exp(-0.3) = 0.740818 -> l = max(0.740818, 0.9997) = 0.9997
    close(gspo_one_row([-0.3, -0.3], -1.0)[0], 0.9997)


def gspo_sequence_reference(logp, old, advantages, mask, clip_low, clip_high):
    """The sequence form of eq. 5 taken literally, differentiable through s_i."""
    m = mask.bool()
    lengths = m.sum(1)
    log_s = torch.where(m, logp - old, 0.0).sum(1) / lengths.clamp_min(1)
    s = log_s.exp()
    per_row = torch.maximum(-advantages * s, -advantages * s.clamp(1 - clip_low, 1 + clip_high))
    return torch.where(lengths > 0, per_row, 0.0).sum() / (lengths > 0).sum().clamp_min(1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch,length", [(2, 3), (8, 10)])
def test_gspo_token_form_matches_sequence_form(seed, batch, length):
    gen = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(batch, length, generator=gen, dtype=torch.float64)).requires_grad_()
    old = logp.detach() + 0.01 * torch.randn(batch, length, generator=gen, dtype=torch.float64)
    a = torch.randn(batch, generator=gen, dtype=torch.float64)
    mask = random_mask(gen, batch, length)
    fast, _ = losses.gspo_policy_loss(logp, old, a, mask, 3e-3, 4e-3)
    ref = gspo_sequence_reference(logp, old, a, mask, 3e-3, 4e-3)
    close(fast, ref, atol=1e-12)
    close(torch.autograd.grad(fast, logp)[0], torch.autograd.grad(ref, logp)[0], atol=1e-12)


def test_gspo_on_policy_equals_grpo_loss():
    # ratio 1 everywhere: both reduce to seq_mean_token_mean(-A), same value and gradient
    gen = torch.Generator().manual_seed(0)
    logp = (-torch.rand(4, 6, generator=gen)).requires_grad_()
    a, mask = torch.randn(4, generator=gen), random_mask(gen, 4, 6)
    g, _ = losses.gspo_policy_loss(logp, logp.detach(), a, mask, 3e-4, 4e-4)
    p, _ = losses.ppo_policy_loss(logp, logp.detach(), a, mask, 0.2, 0.2, agg="seq_mean_token_mean")
    close(g, p)
    close(torch.autograd.grad(g, logp)[0], torch.autograd.grad(p, logp)[0])


def test_gspo_empty_row_excluded():
    # row 1 empty: loss = l_0 / 1 = -A_0 * 1 = -2 (on-policy)
    logp = torch.zeros(2, 2)
    loss, _ = losses.gspo_policy_loss(logp, logp, torch.tensor([2.0, 5.0]), torch.tensor([[1, 1], [0, 0]]))
    close(loss, -2.0)


# ---------------------------------------------------------------- TIS (§13.2), mismatch metric (§13.1)


def test_tis_weights_worked_examples():
    old, gen_logp = torch.tensor([[1.0, -1.0, 0.0, 7.0]]), torch.zeros(1, 4)
    mask = torch.tensor([[1, 1, 1, 0]])
    # e^1 = 2.718282 -> 2; e^-1 = 0.367879 (no lower truncation); e^0 = 1; masked -> 0
    close(losses.tis_weights(old, gen_logp, mask), [[2.0, 0.367879, 1.0, 0.0]])
    # sequence level: exp(1 - 1 + 0) = 1 on every valid token
    close(losses.tis_weights(old, gen_logp, mask, level="sequence"), [[1.0, 1.0, 1.0, 0.0]])
    # sequence level, row sum 0.5 + 0.3 = 0.8 -> e^0.8 = 2.225541 -> 2; row sum -0.3 -> 0.740818
    rows = torch.tensor([[0.5, 0.3], [-0.5, 0.2]])
    w = losses.tis_weights(rows, torch.zeros(2, 2), torch.ones(2, 2), level="sequence")
    close(w, [[2.0, 2.0], [0.740818, 0.740818]])
    # huge differences never overflow
    old_huge, gen_huge = torch.tensor([[1e4, 1e4]]), torch.tensor([[-1e4, 0.0]])
    huge = losses.tis_weights(old_huge, gen_huge, torch.ones(1, 2), level="sequence")
    assert torch.isfinite(huge).all()
    with pytest.raises(ValueError):
        losses.tis_weights(old, gen_logp, mask, level="row")


def test_token_mult_prob_error_worked_examples():
    train = torch.zeros(1, 3)
    mask = torch.tensor([[1, 1, 0]])
    # (e^0.1 + e^0.1) / 2 = 1.105171; (e^0.1 + e^0.3) / 2 = (1.105171 + 1.349859) / 2 = 1.227515
    # the masked third token with diff 5.0 changes nothing
    close(losses.token_mult_prob_error(torch.tensor([[0.1, -0.1, 5.0]]), train, mask), 1.105171)
    close(losses.token_mult_prob_error(torch.tensor([[0.1, 0.3, 5.0]]), train, mask), 1.227515)
    assert isinstance(losses.token_mult_prob_error(train, train, mask), float)
    assert losses.token_mult_prob_error(train, train, mask) == 1.0
    assert losses.token_mult_prob_error(train, train, torch.zeros(1, 3)) == 0.0
    assert math.isfinite(losses.token_mult_prob_error(torch.tensor([[-1e4, 0, 0]]), train, mask))


# ---------------------------------------------------------------- value loss (§2.3), explained variance (§7)


def value_token(v, v_old=0.5, r=1.0, clip=0.2):
    values = torch.tensor([[v]], dtype=torch.float64, requires_grad=True)
    old_values, returns = torch.tensor([[v_old]]), torch.tensor([[r]])
    loss, stats = losses.value_loss(values, old_values, returns, torch.ones(1, 1), clip, "token_mean")
    loss.backward()
    return loss.item(), values.grad.item(), stats


def test_value_loss_worked_examples():
    # V=0.9: Vc = 0.7, (V-R)^2 = 0.01, (Vc-R)^2 = 0.09 -> 0.5 * 0.09 = 0.045, clamped branch: grad 0
    loss, grad, stats = value_token(0.9)
    close((loss, grad, stats["vf_clipfrac"]), (0.045, 0.0, 1.0))
    # V=0.55: inside the clip range, 0.5 * 0.45^2 = 0.10125, grad V - R = -0.45
    loss, grad, stats = value_token(0.55)
    close((loss, grad, stats["vf_clipfrac"]), (0.10125, -0.45, 0.0))
    # V=1.4, V_old=1.0, R=1.0: Vc = 1.2, max(0.16, 0.04) = 0.16 -> 0.08, unclipped branch: grad 0.4
    close(value_token(1.4, v_old=1.0)[:2], (0.08, 0.4))
    # clip=None: plain 0.5 (V-R)^2 = 0.5 * 0.01 = 0.005
    close(value_token(0.9, clip=None)[:2], (0.005, -0.1))


@pytest.mark.parametrize("mode", losses.AGG_MODES)
def test_value_loss_gradcheck_and_zero_mask(mode):
    gen = torch.Generator().manual_seed(2)
    values = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    old = values.detach() + 0.3 * torch.randn(3, 4, generator=gen, dtype=torch.float64)
    returns = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    mask = random_mask(gen, 3, 4)
    def loss(v):
        return losses.value_loss(v, old, returns, mask, 0.2, mode, norm_len=2.0)[0]

    assert torch.autograd.gradcheck(loss, (values,))
    loss, stats = losses.value_loss(values, old, returns, torch.zeros(3, 4), 0.2, mode, norm_len=2.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(values.grad, torch.zeros(3, 4))
    assert all(float(v) == 0.0 for v in stats.values())


def test_explained_variance_hand_computed():
    returns, mask = torch.tensor([[1.0, 2.0, 3.0, 99.0]]), torch.tensor([[1, 1, 1, 0]])
    close(losses.explained_variance(returns, returns, mask), 1.0)  # perfect critic
    close(losses.explained_variance(torch.zeros(1, 4), returns, mask), 0.0)  # Var(R - 0) = Var(R)
    # V = [1, 2, 4]: R - V = [0, 0, -1], var = 2/9; Var(R) = 2/3 -> 1 - (2/9)/(2/3) = 2/3
    close(losses.explained_variance(torch.tensor([[1.0, 2.0, 4.0, 0.0]]), returns, mask), 2 / 3)
    close(losses.explained_variance(torch.zeros(1, 4), torch.ones(1, 4), mask), 0.0)  # Var(R)=0
    close(losses.explained_variance(torch.zeros(1, 4), returns, torch.zeros(1, 4)), 0.0)


# ---------------------------------------------------------------- NLL (§7), adaptive KL (§2.6)


def test_nll_positive_worked_example():
    # row 0 correct with logp [-1, -2], row 1 wrong: loss = (1 + 2) / 2 = 1.5; mu * loss = 0.15
    logp = torch.tensor([[-1.0, -2.0], [-3.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    loss = losses.nll_positive(logp, mask, torch.tensor([True, False]))
    close(loss, 1.5)
    close(0.1 * loss, 0.15)
    loss.backward()
    close(logp.grad, [[-0.5, -0.5], [0.0, 0.0]])  # -1 / N_pos on positive tokens


def test_nll_positive_no_positive_rows():
    logp = torch.tensor([[-1.0, float("nan")]], requires_grad=True)
    loss = losses.nll_positive(logp, torch.tensor([[1, 0]]), torch.tensor([0]))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logp.grad, torch.zeros(1, 2))


def test_nll_positive_gradcheck():
    gen = torch.Generator().manual_seed(0)
    logp = (-torch.rand(3, 4, generator=gen, dtype=torch.float64)).requires_grad_()
    mask, correct = random_mask(gen, 3, 4), torch.tensor([True, False, True])
    assert torch.autograd.gradcheck(lambda x: losses.nll_positive(x, mask, correct), (logp,))


def test_adaptive_kl_update_worked_example():
    # KL 0.05 vs target 0.1: error -0.5 clipped to -0.2 -> 0.001 * (1 - 0.2 * 1/10000) = 0.00099998
    close(losses.adaptive_kl_update(0.001, 0.05, 0.1, 1, 10000), 0.00099998, atol=1e-12)
    # KL 0.11: error 0.1 (inside the clip) -> 0.001 * (1 + 0.1 * 100/10000) = 0.001001
    close(losses.adaptive_kl_update(0.001, 0.11, 0.1, 100, 10000), 0.001001, atol=1e-12)


# ---------------------------------------------------------------- no NaN / inf on extreme inputs


@pytest.mark.parametrize("seed", range(4))
def test_no_nan_or_inf_on_extreme_inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    batch, length = 6, 10
    mask = random_mask(gen, batch, length, holes=0.2)
    pad = torch.full((batch, length), float("nan"))
    logp = torch.where(mask, -1e4 * torch.rand(batch, length, generator=gen) ** 4, pad).requires_grad_()
    old = torch.where(mask, -1e4 * torch.rand(batch, length, generator=gen) ** 4, -pad.abs())
    ref = -1e4 * torch.rand(batch, length, generator=gen) ** 4
    values = torch.where(mask, 1e4 * torch.randn(batch, length, generator=gen), pad).requires_grad_()
    a = 1e6 * torch.randn(batch, generator=gen)
    total = torch.zeros(())
    for mode in losses.AGG_MODES:
        for fn in POLICY_LOSS_FNS:
            loss, stats = fn(logp, old, a, mask, 0.2, 0.28, 3.0, mode, losses.tis_weights(old, ref, mask), norm_len=10)
            total = total + loss
            assert all(torch.isfinite(v) for v in stats.values())
        for kind in ("k1", "k2", "k3", "low_var"):  # k3 guard: exp(-delta) with -delta <= 50 stays finite
            total = total + 1e-30 * losses.aggregate(losses.kl(logp, ref, kind, mask), mask, mode, norm_len=10)
        old_values, returns = values.detach() + 1.0, values.detach() * 2
        loss, stats = losses.value_loss(values, old_values, returns, mask, 0.2, mode, norm_len=10)
        total = total + loss
    total = total + losses.nll_positive(logp, mask, a > 0)
    assert torch.isfinite(total)
    total.backward()
    for x in (logp, values):
        assert torch.isfinite(x.grad).all()
    assert math.isfinite(losses.token_mult_prob_error(logp.detach(), old, mask))
    assert torch.isfinite(losses.explained_variance(values, values * 3, mask))
