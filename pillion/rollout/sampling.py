"""Token sampling for the rollout engine, with randomness keyed by (seed, row, step).

Every (prompt, sample) row of a `generate` call draws from its own stream: the random numbers
of row r at sampling step t are a hash of (seed, r, t) (a counter-based generator, as Philox is,
written here in plain integer tensor ops so that it runs inside a compiled or CUDA-graph step).
Which slot a row occupies, which rows decode beside it, how often the host checks and in what
order rows are admitted change nothing: the same seed gives the same completions.

Two samplers, one distribution:
- `sample_cdf` (CPU): inverts the CDF with one uniform per row and step (`searchsorted` on a
  float64 cumulative sum). On CPU this is ~10x cheaper than torch.multinomial or a race over
  the vocabulary.
- `sample_race` (CUDA): the exponential race (Gumbel-max), argmax over tokens of
  log p_i - log E_i with E_i ~ Exp(1) drawn per token. It needs no float64 [R, vocab] cumsum
  (151,936 x 512 rows x 8 bytes = 600 MB per step) and, compiled, fuses into one pass.

Both sample from the filtered distribution (top-k, then top-p, of softmax(logits / temperature))
and report the log-probability of the sampled token under the unfiltered policy
log_softmax(logits / temperature), in float32 (docs/algorithms.md §1). Temperature 0 is greedy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

_M32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Sampler:
    """What a decode step needs of `SamplingParams` (frozen: a compiled step specialises on it)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k truncation
    method: str = "cdf"  # "cdf" (CPU) | "race" (CUDA)


def _mul32(x, c: int):
    """(x * c) mod 2^32 for int64 x in [0, 2^32) without int64 overflow: c in two 16-bit halves
    (x * c_lo < 2^48; x * c_hi < 2^48, of which only the low 16 bits survive the shift)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _mix32(x):
    """murmur3's 32-bit finaliser: a bijection of [0, 2^32) in which every output bit depends on
    every input bit. Works on Python ints and int64 tensors alike."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def hash32(key, *words):
    """A 32-bit hash of (key, words...), chained: h <- mix(h ^ mix(word)). Words are ints or int64
    tensors of values in [0, 2^32) (they broadcast)."""
    h = key
    for w in words:
        h = _mix32(h ^ _mix32(w))
    return h


def row_keys(seed: int, rows: torch.Tensor) -> torch.Tensor:
    """The 32-bit randomness key of each result row [R] (int64) for a call's 64-bit seed."""
    return hash32(torch.full_like(rows, _mix32(seed & _M32)), (seed >> 32) & _M32, rows)


def step_uniforms(keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """float64 uniforms in [0, 1) with 53 random bits: keys [R, 1] x steps [1, T] -> [R, T]
    (the CDF sampler's one draw per row and step, from two 32-bit hashes)."""
    high = hash32(keys, steps, 0)  # 32 bits
    low = hash32(keys, steps, 1) >> 11  # 21 bits
    return (high * 2**21 + low).double() * 2.0**-53


def token_exponentials_log(keys: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """log E for E ~ Exp(1) per row and token: keys, steps [R] -> float32 [R, vocab].

    The uniform takes the hash's top 23 bits plus one half, u = (h >> 9 + 0.5) / 2^23, exact in
    float32 and never 0 or 1, so E = -log u is finite and positive (E < 16.7).
    """
    row = hash32(keys, steps)[:, None]  # [R, 1]
    tokens = torch.arange(vocab, device=keys.device)
    u = ((hash32(row, tokens) >> 9).float() + 0.5) * 2.0**-23  # [R, V]
    return torch.log(-torch.log(u))


def policy_and_filtered(logits: torch.Tensor, sampler: Sampler):
    """(logprobs, filtered) for float32 logits [R, V]: the policy's log_softmax(logits / T), and
    logits / T with -inf on the tokens top-k and top-p drop (None when nothing is dropped)."""
    scaled = logits / sampler.temperature if sampler.temperature != 1.0 else logits
    logprobs = F.log_softmax(scaled, -1)  # [R, V] the policy distribution
    filtered = None
    if sampler.top_k > 0:
        kth = torch.topk(scaled, min(sampler.top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
        filtered = scaled.masked_fill(scaled < kth, float("-inf"))
    if sampler.top_p < 1.0:
        base = scaled if filtered is None else filtered
        sorted_logits, order = torch.sort(base, descending=True, dim=-1)
        sorted_probs = sorted_logits.softmax(-1)
        # Drop a token when the mass strictly before it already reaches top_p (keeps >= 1 token).
        drop = (sorted_probs.cumsum(-1) - sorted_probs) >= sampler.top_p
        filtered = base.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logprobs, filtered


def _greedy(logits: torch.Tensor):
    tokens = logits.argmax(-1)
    return tokens, F.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)


def sample_cdf(logits: torch.Tensor, sampler: Sampler, uniform: torch.Tensor):
    """Pick one token per row of float32 logits [R, V]; return (tokens [R], logprobs [R]).

    uniform: float64 [R, 1] in [0, 1). Scaled to the row's total mass, the token is the first
    index whose cumulative probability exceeds it, i.e. index i with probability p_i
    (zero-probability tokens never qualify: the CDF does not rise at them). float64 keeps the
    CDF exact enough; no host synchronisation.
    """
    if sampler.temperature == 0:
        return _greedy(logits)
    logprobs, filtered = policy_and_filtered(logits, sampler)
    probs = logprobs.exp() if filtered is None else filtered.softmax(-1)  # [R, V]
    # Cast, then scan: the same float64 values as cumsum(dtype=float64), ~3x faster on CPU.
    cdf = probs.double().cumsum(-1)  # [R, V]
    tokens = torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True).clamp_(max=cdf.shape[-1] - 1)  # [R, 1]
    return tokens.view(-1), logprobs.gather(-1, tokens).view(-1)


def sample_race(logits: torch.Tensor, sampler: Sampler, keys: torch.Tensor, steps: torch.Tensor):
    """Pick one token per row of float32 logits [R, V] by the exponential race; (tokens, logprobs).

    argmax_i p_i / E_i with E_i ~ Exp(1) independent picks token i with probability p_i
    (P(E_i / p_i is the smallest) = p_i / sum p); in log space argmax_i (logit_i - log E_i),
    with the filtered tokens at -inf. keys, steps [R] key each row's draws.
    """
    if sampler.temperature == 0:
        return _greedy(logits)
    logprobs, filtered = policy_and_filtered(logits, sampler)
    scores = (logprobs if filtered is None else filtered) - token_exponentials_log(keys, steps, logits.shape[-1])
    tokens = scores.argmax(-1)  # [R]
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)
