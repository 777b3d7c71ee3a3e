"""The samplers and their keyed randomness: hand-checked hashes, and both samplers drawing from
the filtered distribution (chi-square tests on fixed seeds, so they cannot flake)."""

import pytest
import torch

from pillion.rollout.sampling import (
    Sampler,
    _mix32,
    _mul32,
    hash32,
    row_keys,
    sample_cdf,
    sample_race,
    step_uniforms,
    token_exponentials_log,
)

M32 = 0xFFFFFFFF


def mix32_reference(x: int) -> int:
    """murmur3 fmix32 with Python's unbounded ints (the multiplication cannot overflow here)."""
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & M32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & M32
    return x ^ (x >> 16)


def test_hash_matches_unbounded_reference_without_int64_overflow():
    # (2^32 - 1)^2 = 2^64 - 2^33 + 1 = 1 mod 2^32: the product itself does not fit in int64.
    assert _mul32(torch.tensor([M32]), M32).item() == 1
    assert mix32_reference(0) == 0 and _mix32(0) == 0  # xor-shift-multiply fixes 0
    g = torch.Generator().manual_seed(0)
    xs = torch.cat((torch.randint(0, 2**32, (1000,), generator=g), torch.tensor([0, 1, 2**31, M32 - 1, M32])))
    assert _mix32(xs).tolist() == [mix32_reference(x) for x in xs.tolist()]
    # Chained: the same function on ints and tensors, broadcast.
    keys, steps = torch.tensor([[3], [4]]), torch.tensor([[0, 1, 2]])
    table = hash32(keys, steps).tolist()
    assert table == [[mix32_reference(k ^ mix32_reference(s)) for s in (0, 1, 2)] for k in (3, 4)]


def test_row_keys_and_uniforms_are_per_row_streams():
    keys = row_keys(2**40 + 7, torch.arange(64))
    assert len(set(keys.tolist())) == 64 and keys.min() >= 0 and keys.max() <= M32
    assert not torch.equal(keys, row_keys(2**40 + 8, torch.arange(64)))  # the seed's high and
    assert not torch.equal(keys, row_keys(7, torch.arange(64)))  # low words both matter
    u = step_uniforms(keys[:, None], torch.arange(500)[None])  # [64, 500]
    assert u.dtype == torch.float64 and u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.003
    # A row's stream depends only on its key: the same draws whatever rows sit beside it.
    torch.testing.assert_close(step_uniforms(keys[5:6, None], torch.arange(500)[None]), u[5:6], rtol=0, atol=0)
    logs = token_exponentials_log(keys[:4], torch.tensor([0, 0, 1, 1]), 1000)
    e = logs.exp()  # E ~ Exp(1): mean 1, finite and positive
    assert torch.isfinite(logs).all() and e.min() > 0 and abs(e.mean().item() - 1) < 0.05


def _chi_square(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(tokens, minlength=len(probs)).double()
    expected = probs.double() * len(tokens)
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a token of probability 0 was drawn"
    return (((counts - expected)[keep] ** 2) / expected[keep]).sum().item()


# p = softmax(logits) = [0.4, 0.3, 0.15, 0.1, 0.05] (each case's filtered, renormalised p below).
P = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
CASES = [
    (Sampler(), P),
    # top_k=3 keeps {0, 1, 2}: [0.4, 0.3, 0.15] / 0.85.
    (Sampler(top_k=3), torch.tensor([0.4, 0.3, 0.15, 0, 0]) / 0.85),
    # top_p=0.6: the mass before token 1 is 0.4 < 0.6 (kept), before token 2 0.7 >= 0.6 -> {0, 1}.
    (Sampler(top_p=0.6), torch.tensor([0.4, 0.3, 0, 0, 0]) / 0.7),
    # temperature 0.5 squares the odds: [0.16, 0.09, 0.0225, 0.01, 0.0025] / 0.285.
    (Sampler(temperature=0.5), P**2 / (P**2).sum()),
]


@pytest.mark.parametrize("method", ["cdf", "race"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_samplers_draw_the_filtered_distribution(method, case):
    """20,000 draws keyed by (row, step); chi-square with 4 degrees of freedom (fewer when
    tokens are filtered out) below its 0.999 quantile, 18.47; log-probs are the unfiltered
    policy's (docs/algorithms.md §1)."""
    sampler, expected = CASES[case]
    sampler = Sampler(sampler.temperature, sampler.top_p, sampler.top_k, method)
    rows, steps = torch.arange(2000).repeat_interleave(10), torch.arange(10).repeat(2000)  # 20,000 pairs
    keys = row_keys(123, rows)
    logits = P.log().repeat(len(rows), 1)
    if method == "cdf":
        tokens, logprobs = sample_cdf(logits, sampler, step_uniforms(keys, steps)[:, None])
    else:
        tokens, logprobs = sample_race(logits, sampler, keys, steps)
    assert _chi_square(tokens, expected) < 18.47
    policy = torch.log_softmax(P.log() / sampler.temperature, -1)
    torch.testing.assert_close(logprobs, policy[tokens])


@pytest.mark.parametrize("method", ["cdf", "race"])
def test_samplers_on_a_qwen_sized_vocabulary(method):
    """151,936 tokens: valid draws, greedy at temperature 0, top-k honoured."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 151936, generator=g) * 3
    keys, steps = row_keys(5, torch.arange(6)), torch.zeros(6, dtype=torch.long)

    def draw(sampler):
        if method == "cdf":
            return sample_cdf(logits, sampler, step_uniforms(keys, steps)[:, None])
        return sample_race(logits, sampler, keys, steps)

    tokens, logprobs = draw(Sampler(method=method))
    assert tokens.min() >= 0 and tokens.max() < 151936
    torch.testing.assert_close(logprobs, torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1))
    greedy, _ = draw(Sampler(temperature=0, method=method))
    assert torch.equal(greedy, logits.argmax(-1))
    top, _ = draw(Sampler(top_k=5, method=method))
    assert all(t in row for t, row in zip(top.tolist(), logits.topk(5).indices.tolist()))
