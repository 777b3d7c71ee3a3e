"""Advantage estimators against the worked examples of docs/algorithms.md, hand-computed
cases (arithmetic in comments), python-loop references and the edge cases of §1.2."""

import math
import statistics
import warnings

import pytest
import torch

from pillion.algorithms import advantages as adv


def close(actual, expected, atol=1e-6):
    actual, expected = torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# ---------------------------------------------------------------- GRPO (§4)


def test_grpo_worked_example_01():
    # mean 0.25; unbiased std = sqrt((0.5625 + 3 * 0.0625) / 3) = sqrt(0.25) = 0.5
    # A = 0.75 / 0.500001 = 1.499997, -0.25 / 0.500001 = -0.499999
    a = adv.grpo(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4)
    close(a, [1.499997, -0.499999, -0.499999, -0.499999])
    assert a.dtype == torch.float32


def test_grpo_worked_example_pm1_and_affine_invariance():
    # mean -0.5; std = sqrt((2.25 + 3 * 0.25) / 3) = 1.0; A = 1.5 / 1.000001 = 1.4999985
    a = adv.grpo(torch.tensor([1.0, -1.0, -1.0, -1.0]), 4)
    close(a, [1.4999985, -0.4999995, -0.4999995, -0.4999995])
    # {0,1} and {-1,+1} rewards give the same advantages up to the eps term (1e-6 relative)
    close(a, adv.grpo(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4), atol=2e-6)


def test_grpo_two_groups_hand_computed():
    # group 0 = [3, 1]: mean 2, std = sqrt((1 + 1) / 1) = 1.414214 -> A = +-1 / 1.414215 = +-0.707106
    # group 1 = [5, 5]: all equal -> 0 exactly
    a = adv.grpo(torch.tensor([3.0, 1.0, 5.0, 5.0]), 2)
    close(a, [0.707106, -0.707106, 0.0, 0.0])
    assert (a[2:] == 0).all()


def test_grpo_without_std_is_dr_grpo():
    scores = torch.tensor([0.3, 0.9, 0.1, 2.0, -1.0, 0.5])
    assert torch.equal(adv.grpo(scores, 3, std_normalize=False), adv.dr_grpo(scores, 3))


@pytest.mark.parametrize("value", [0.1, 0.7, 1e6, -3.3])
def test_all_equal_groups_are_exactly_zero(value):
    # mean of three 0.1s in float32 is not bit-equal to 0.1; the spec needs an exact 0 numerator
    scores = torch.full((6,), value)
    for fn in (adv.grpo, adv.dr_grpo, adv.rloo):
        assert (fn(scores, 3) == 0).all()


@pytest.mark.parametrize("fn", [adv.grpo, adv.dr_grpo, adv.rloo, adv.raw])
def test_group_size_one_gives_zero_and_one_warning(fn):
    with pytest.warns(UserWarning, match="group_size=1") as record:
        a = fn(torch.tensor([1.0, -1.0, 0.5]), 1)
    assert len(record) == 1
    assert (a == 0).all()


@pytest.mark.parametrize("fn", [adv.grpo, adv.dr_grpo, adv.rloo, adv.raw, adv.raft])
def test_batch_not_multiple_of_group_is_value_error(fn):
    with pytest.raises(ValueError, match="multiple"):
        fn(torch.zeros(6), 4)


@pytest.mark.parametrize("fn", [adv.grpo, adv.dr_grpo, adv.rloo, adv.raw, adv.raft])
def test_nan_score_is_value_error(fn):
    with pytest.raises(ValueError, match="NaN"):
        fn(torch.tensor([1.0, float("nan")]), 2)


def test_advantages_carry_no_gradient():
    scores = torch.tensor([1.0, 0.0, 0.5, 0.2], requires_grad=True)
    for name, fn in adv.ADVANTAGES.items():
        assert not fn(scores, 2).requires_grad, name


def grpo_reference(scores, group_size, eps=1e-6):
    """Python loop with statistics.stdev (unbiased), verl test_core_algos_on_cpu style."""
    out = []
    for g in range(0, len(scores), group_size):
        group = scores[g : g + group_size]
        mean, std = statistics.fmean(group), statistics.stdev(group)
        out += [(s - mean) / (std + eps) for s in group]
    return out


def rloo_reference(scores, group_size):
    out = []
    for g in range(0, len(scores), group_size):
        group = scores[g : g + group_size]
        out += [s - (sum(group) - s) / (group_size - 1) for s in group]
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("prompts,group_size", [(1, 2), (3, 4), (8, 16), (5, 3)])
def test_grpo_and_rloo_match_loop_reference(seed, prompts, group_size):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(prompts * group_size, generator=gen, dtype=torch.float64)
    scores[: group_size] = torch.randint(0, 2, (group_size,), generator=gen).double()  # 0/1 rewards too
    if scores[:group_size].unique().numel() == 1:
        scores[0] = 1 - scores[0]
    listed = scores.tolist()
    close(adv.grpo(scores, group_size), grpo_reference(listed, group_size), atol=1e-9)
    close(adv.rloo(scores, group_size), rloo_reference(listed, group_size), atol=1e-9)
    group_means = [statistics.fmean(listed[g : g + group_size]) for g in range(0, len(listed), group_size)]
    close(adv.dr_grpo(scores, group_size), [s - group_means[i // group_size] for i, s in enumerate(listed)], atol=1e-9)


def test_bf16_scores_equal_float32_on_rounded_values():
    scores = torch.tensor([0.3, 0.77, 0.1, 1.9, -0.45, 0.61], dtype=torch.bfloat16)
    for fn in (adv.grpo, adv.dr_grpo, adv.rloo, adv.raw, adv.raft):
        out = fn(scores, 3)
        assert out.dtype == torch.float32
        assert torch.equal(out, fn(scores.float(), 3))


def test_float64_stays_float64():
    assert adv.grpo(torch.tensor([1.0, 0.0], dtype=torch.float64), 2).dtype == torch.float64


# ---------------------------------------------------------------- Dr. GRPO (§5), RLOO, ReMax (§8)


def test_dr_grpo_worked_example():
    # mean 0.25: A = [0.75, -0.25, -0.25, -0.25]; with +1/-1 rewards (mean -0.5) twice that
    close(adv.dr_grpo(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4), [0.75, -0.25, -0.25, -0.25])
    close(adv.dr_grpo(torch.tensor([1.0, -1.0, -1.0, -1.0]), 4), [1.5, -0.5, -0.5, -0.5])


def test_rloo_worked_example():
    # A_0 = 1 - (0+0+0)/3 = 1; A_1 = 0 - (1+0+0)/3 = -1/3
    close(adv.rloo(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4), [1.0, -1 / 3, -1 / 3, -1 / 3])


def test_remax_subtracts_greedy_score():
    # A = s - s_greedy: 1 - 1 = 0, 1 - 0 = 1, 0 - 1 = -1
    close(adv.remax(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 1.0])), [0.0, 1.0, -1.0])


# ---------------------------------------------------------------- RAFT, Reinforce-Rej (§9)


def test_raft_and_raw_worked_examples():
    scores = torch.tensor([1.0, -1.0, -1.0, 1.0])
    close(adv.raft(scores), [1, 0, 0, 1])
    close(adv.raw(scores, 4), [1, -1, -1, 1])
    close(adv.raft(torch.ones(4)), [1, 1, 1, 1])  # RAFT trains on all four
    close(adv.raft(-torch.ones(4)), [0, 0, 0, 0])  # nothing to train on
    close(adv.raft(torch.tensor([0.0, 0.5])), [0, 1])  # s > 0 strictly (1/0 scorer: 0 is negative)


# ---------------------------------------------------------------- token tensors


def test_expand_puts_advantage_on_response_tokens():
    # row 0: A=2 on its two tokens; row 1 is empty (its 5.0 never appears); row 2 truncated (L=T)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 1]])
    out = adv.expand(torch.tensor([2.0, 5.0, -1.0]), mask)
    assert torch.equal(out, torch.tensor([[2.0, 2.0, 0.0], [0.0, 0.0, 0.0], [-1.0, -1.0, -1.0]]))


def test_terminal_rewards_at_last_valid_token():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]])
    rew = adv.terminal_rewards(torch.tensor([1.0, -1.0, 7.0, 0.5]), mask)
    # row 0: L=2 -> t=1; row 1 truncated (L=T) -> t=3; row 2 empty -> nothing; row 3 gap -> t=2
    expected = torch.tensor([[0, 1.0, 0, 0], [0, 0, 0, -1.0], [0, 0, 0, 0], [0, 0, 0.5, 0]])
    assert torch.equal(rew, expected)


def test_whiten_hand_computed():
    # valid [1, 2, 3, 6] (the 100 is masked): mu = 3, unbiased var = (4+1+0+9)/3 = 14/3
    # A = (x - 3) / sqrt(14/3 + 1e-8) = (x - 3) / 2.160247
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 6.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    out = adv.whiten(x, mask)
    s = math.sqrt(14 / 3 + 1e-8)
    close(out, [[-2 / s, -1 / s, 0.0], [0.0, 3 / s, 0.0]])


def test_whiten_skips_single_token():
    out = adv.whiten(torch.tensor([[5.0, 9.0]]), torch.tensor([[1, 0]]))
    assert torch.equal(out, torch.tensor([[5.0, 0.0]]))


# ---------------------------------------------------------------- GAE (§2.2), VAPO lambda (§7)


def test_gae_worked_examples():
    rew = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3)
    # gamma=1 lam=0.9: delta = [0+0.6-0.5, 0+0.7-0.6, 1+0-0.7] = [0.1, 0.1, 0.3]
    # A2 = 0.3; A1 = 0.1 + 0.9*0.3 = 0.37; A0 = 0.1 + 0.9*0.37 = 0.433; returns = A + V
    a, r = adv.gae(rew, values, mask, gamma=1.0, lam=0.9)
    close(a, [[0.433, 0.37, 0.3]])
    close(r, [[0.933, 0.97, 1.0]])
    # lam=1: A = [0.5, 0.4, 0.3], returns = Monte-Carlo return 1.0 everywhere (V cancels)
    a, r = adv.gae(rew, values, mask, gamma=1.0, lam=1.0)
    close(a, [[0.5, 0.4, 0.3]])
    close(r, [[1.0, 1.0, 1.0]])
    # gamma=0.9 lam=0.9: delta = [0.9*0.6-0.5, 0.9*0.7-0.6, 0.3] = [0.04, 0.03, 0.3]
    # A1 = 0.03 + 0.81*0.3 = 0.273; A0 = 0.04 + 0.81*0.273 = 0.26113
    a, _ = adv.gae(rew, values, mask, gamma=0.9, lam=0.9)
    close(a, [[0.26113, 0.273, 0.3]])


def test_gae_carries_through_masked_gap():
    # mask [1,0,1]: the masked 99 reward and 42 value are ignored and must not leak
    # t=2: delta = 1 - 0.7 = 0.3, A = 0.3; t=1 carries (V_next=0.7, A_next=0.3)
    # t=0: delta = 0 + 0.7 - 0.5 = 0.2, A = 0.2 + 0.9 * 0.3 = 0.47; returns = 0.97, 1.0
    rew = torch.tensor([[0.0, 99.0, 1.0]])
    values = torch.tensor([[0.5, float("nan"), 0.7]])
    a, r = adv.gae(rew, values, torch.tensor([[1, 0, 1]]), gamma=1.0, lam=0.9)
    close(a, [[0.47, 0.0, 0.3]])
    close(r, [[0.97, 0.0, 1.0]])


def test_gae_no_bootstrap_after_last_token_and_empty_rows():
    # row 0 ends at t=1 (padding after it carries garbage values); row 1 is empty
    # row 0: t=1: delta = 2 - 1 = 1 (no V_next), t=0: delta = 0 + 1 - 0 = 1, A0 = 1 + 1*1 = 2 (lam=1)
    rew = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    values = torch.tensor([[0.0, 1.0, 50.0], [3.0, 3.0, 3.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    a, r = adv.gae(rew, values, mask, gamma=1.0, lam=1.0)
    close(a, [[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    close(r, [[2.0, 2.0, 0.0], [0.0, 0.0, 0.0]])


def test_gae_per_row_lambda_equals_row_by_row_calls():
    gen = torch.Generator().manual_seed(0)
    rew, values = torch.randn(3, 6, generator=gen), torch.randn(3, 6, generator=gen)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    lam = torch.tensor([0.0, 0.5, 0.98])
    a, r = adv.gae(rew, values, mask, gamma=1.0, lam=lam)
    for i in range(3):
        a_i, r_i = adv.gae(rew[i : i + 1], values[i : i + 1], mask[i : i + 1], 1.0, float(lam[i]))
        close(a[i : i + 1], a_i)
        close(r[i : i + 1], r_i)


def test_vapo_decoupled_critic_targets_equal_score():
    # gamma = lam_critic = 1 with a terminal reward: every valid token's return is s_i, whatever V is
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    rew = adv.terminal_rewards(torch.tensor([1.0, -1.0]), mask)
    _, r = adv.gae(rew, torch.randn(2, 4), mask, gamma=1.0, lam=1.0)
    close(r, [[1.0, 1.0, 1.0, 0.0], [-1.0, -1.0, -1.0, -1.0]], atol=1e-5)


def gae_reference(rewards, values, mask, gamma, lams):
    """Per row: collect the valid tokens, run the textbook recursion on them, scatter back."""
    out_a = [[0.0] * len(rewards[0]) for _ in rewards]
    out_r = [[0.0] * len(rewards[0]) for _ in rewards]
    for i in range(len(rewards)):
        idx = [t for t in range(len(rewards[i])) if mask[i][t]]
        next_v = next_a = 0.0
        for t in reversed(idx):
            delta = rewards[i][t] + gamma * next_v - values[i][t]
            next_a = delta + gamma * lams[i] * next_a
            next_v = values[i][t]
            out_a[i][t], out_r[i][t] = next_a, next_a + values[i][t]
    return out_a, out_r


def random_mask(gen, batch, length):
    """Right-padded rows (some empty, some truncated) plus a few interior gaps."""
    lengths = torch.randint(0, length + 1, (batch,), generator=gen)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    holes = torch.rand(batch, length, generator=gen) < 0.1
    return mask & ~holes


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch,length", [(1, 1), (4, 7), (16, 33)])
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_gae_matches_loop_reference(seed, batch, length, gamma):
    gen = torch.Generator().manual_seed(seed)
    rew = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    values = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    mask = random_mask(gen, batch, length)
    lam = torch.rand(batch, generator=gen, dtype=torch.float64)
    a, r = adv.gae(rew, values, mask, gamma, lam)
    ref_a, ref_r = gae_reference(rew.tolist(), values.tolist(), mask.tolist(), gamma, lam.tolist())
    close(a, ref_a, atol=1e-10)
    close(r, ref_r, atol=1e-10)


def test_vapo_lambda_worked_examples():
    # 1 - 1/(0.05 L): L=10 -> -1 clamped to 0; 20 -> 0; 40 -> 0.5; 100 -> 0.8; 1000 -> 0.98; L=0 -> 0
    close(adv.vapo_lambda(torch.tensor([10, 20, 40, 100, 1000, 0]), 0.05), [0.0, 0.0, 0.5, 0.8, 0.98, 0.0])


# ---------------------------------------------------------------- REINFORCE++ (§8)


def test_reinforce_pp_worked_example():
    # returns [1,1 | 0,0,0], mu = 2/5 = 0.4, unbiased var = (2*0.36 + 3*0.16)/4 = 0.3
    # A = 0.6 / sqrt(0.3) = 1.095445 and -0.4 / sqrt(0.3) = -0.730297
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    rew = adv.terminal_rewards(torch.tensor([1.0, 0.0]), mask)
    close(adv.reinforce_pp(rew, mask), [[1.095445, 1.095445, 0.0], [-0.730297, -0.730297, -0.730297]])


def test_reinforce_pp_discounted_hand_computed():
    # gamma = 0.5, one row of 3 with reward 1 at the end: returns [0.25, 0.5, 1]
    # mu = 1.75/3 = 0.583333; var = (0.111111 + 0.006944 + 0.173611)/2 = 0.145833; sd = 0.381881
    # A = [-0.333333, -0.083333, 0.416667] / 0.381881 = [-0.872872, -0.218218, 1.091089]
    rew = torch.tensor([[0.0, 0.0, 1.0]])
    close(adv.reinforce_pp(rew, torch.ones(1, 3), gamma=0.5), [[-0.872872, -0.218218, 1.091089]])


def test_reinforce_pp_single_token_gives_zeros():
    out = adv.reinforce_pp(torch.tensor([[3.0, 0.0]]), torch.tensor([[1, 0]]))
    assert torch.equal(out, torch.zeros(1, 2))


def reinforce_pp_reference(rewards, mask, gamma):
    returns, valid = [], []
    for i in range(len(rewards)):
        row = []
        for t in range(len(rewards[i])):
            g = sum(gamma ** (k - t) * rewards[i][k] for k in range(t, len(rewards[i])) if mask[i][k])
            row.append(g)
            if mask[i][t]:
                valid.append(g)
        returns.append(row)
    if len(valid) <= 1:
        return [[0.0] * len(r) for r in returns]
    mu, var = statistics.fmean(valid), statistics.variance(valid)
    scale = math.sqrt(var + 1e-8)
    return [[(g - mu) / scale if m else 0.0 for g, m in zip(row, row_mask)] for row, row_mask in zip(returns, mask)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch,length", [(2, 3), (8, 17)])
@pytest.mark.parametrize("gamma", [1.0, 0.95])
def test_reinforce_pp_matches_loop_reference(seed, batch, length, gamma):
    gen = torch.Generator().manual_seed(seed)
    mask = random_mask(gen, batch, length)
    rew = adv.terminal_rewards(torch.randn(batch, generator=gen, dtype=torch.float64), mask)
    rew = rew - 0.01 * torch.randn(batch, length, generator=gen, dtype=torch.float64)  # a k1 penalty per token
    close(adv.reinforce_pp(rew, mask, gamma), reinforce_pp_reference(rew.tolist(), mask.tolist(), gamma), atol=1e-9)


# ---------------------------------------------------------------- no NaN / inf, bf16


@pytest.mark.parametrize("seed", range(5))
def test_no_nan_or_inf_on_extreme_inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    batch, length, group = 8, 12, 4
    scale = 10.0 ** torch.randint(-8, 7, (batch,), generator=gen)
    scores = torch.randn(batch, generator=gen) * scale
    scores[:group] = 1e-30  # an all-equal group of denormal-ish values
    mask = random_mask(gen, batch, length)
    garbage = torch.full((batch, length), float("nan"))
    values = torch.where(mask, torch.randn(batch, length, generator=gen) * 1e4, garbage)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outs = [fn(scores, group) for fn in adv.ADVANTAGES.values()]
    rew = adv.terminal_rewards(scores, mask)
    outs += [adv.reinforce_pp(rew, mask), *adv.gae(rew, values, mask, 1.0, adv.vapo_lambda(mask.sum(1)))]
    outs += [adv.whiten(values, mask), adv.expand(outs[0], mask)]
    for out in outs:
        assert torch.isfinite(out).all()


def test_bf16_token_inputs_equal_float32_on_rounded_values():
    gen = torch.Generator().manual_seed(0)
    rew = torch.randn(3, 5, generator=gen).bfloat16()
    values = torch.randn(3, 5, generator=gen).bfloat16()
    mask = random_mask(gen, 3, 5)
    a16, r16 = adv.gae(rew, values, mask, 1.0, 0.95)
    a32, r32 = adv.gae(rew.float(), values.float(), mask, 1.0, 0.95)
    assert a16.dtype == torch.float32 and torch.equal(a16, a32) and torch.equal(r16, r32)
    assert torch.equal(adv.reinforce_pp(rew, mask), adv.reinforce_pp(rew.float(), mask))
