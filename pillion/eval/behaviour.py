"""Behaviour of the policy's responses: reflection phrases, lengths by outcome, drift from the start.

    from pillion.eval.behaviour import behaviour_metrics, kl_to_initial
    record.update(behaviour_metrics(texts, correct, num_tokens, cfg.behaviour.phrases))
    record.update(kl_to_initial(policy, initial, batch, temperature=cfg.temperature, rows=16))

`behaviour_metrics` (pure, no tensors) returns, over a batch of responses:

    reflection_rate            share of responses with at least one reflection phrase
    reflection_count           mean number of reflection phrases per response
    response_length_correct    mean generated tokens of the correct responses (absent if none)
    response_length_incorrect  mean generated tokens of the other responses (absent if none)

SRPO (Kwaipilot 2504.14286) tracks how often responses recheck or reconsider during RL, and
Fatemi et al. (2504.05185, docs/algorithms.md §11) show that wrong answers are the long ones;
these four numbers show both per step and per evaluation. A phrase matches case-insensitively
as whole words: "wait" counts in "Wait," but not in "awaited"; spaces inside a phrase match any
run of whitespace. Phrases are matched in one left-to-right scan, longest first, without
overlaps, so "let me check again" is one match when both "let me check" and "check again" are
listed. An ungradable response (correct None) counts as incorrect, as in `evaluate`.

`kl_to_initial` estimates KL(pi_theta || pi_init) on a few rows of a step's batch: the current
policy against the weights the run started from (docs/algorithms.md §3: k3 and k1, both
unbiased for this reverse KL on tokens sampled from pi_theta; here the tokens come from the
engine, so both are slightly off-policy, as the in-loss KL is). Presets without a reference
model (kl_coef 0: DAPO, SRPO, VAPO, ...) otherwise show no drift at all. Rows are taken evenly
spaced over the batch (so every part of it, not only the first groups), and the cost is two
no-grad forwards of `rows` rows every `kl_probe_every` steps, against the reference model when
the run has one, else the initial weights read again from their folder for the probe and freed
after it (`train/models.py: kl_probe`), so no second copy is held between probes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pillion.fields import ConfigError, bounded, checked

DEFAULT_PHRASES = (
    "wait", "let me check", "check again", "let me verify", "verify", "double-check", "double check",
    "recheck", "re-check", "re-examine", "reconsider", "rethink", "think again", "on second thought",
)


def _phrases(phrases: list[str], behaviour: BehaviourConfig) -> None:
    try:
        phrase_pattern(phrases)
    except ValueError as e:  # the message names the key
        raise ConfigError(f"config key {e}") from None


@dataclass
class BehaviourConfig:
    """`behaviour.*` in the trainer config."""

    phrases: list[str] = checked(list(DEFAULT_PHRASES), _phrases)
    kl_probe_every: int = bounded(10, low=0, note="0: off")  # steps between KL-to-initial probes; 0: never
    kl_probe_rows: int = bounded(16, low=1)  # rows of the step's batch the probe scores


def phrase_pattern(phrases: Sequence[str]) -> re.Pattern:
    """One case-insensitive regex matching any phrase as whole words (longest first)."""
    if isinstance(phrases, str) or not phrases:
        raise ValueError(f"'behaviour.phrases': expected a non-empty list of strings, got {phrases!r}")
    bad = [p for p in phrases if not isinstance(p, str) or not p.strip()]
    if bad:
        raise ValueError(f"'behaviour.phrases': every phrase must be a non-empty string, got {bad!r}")
    words = sorted({" ".join(p.lower().split()) for p in phrases}, key=len, reverse=True)
    alternatives = "|".join(r"\s+".join(re.escape(w) for w in phrase.split(" ")) for phrase in words)
    # (?<!\w) / (?!\w): the phrase is not part of a longer word on either side.
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def phrase_counts(texts: Sequence[str], phrases: Sequence[str] = DEFAULT_PHRASES) -> list[int]:
    """Number of reflection phrases in each text."""
    pattern = phrase_pattern(phrases)
    return [sum(1 for _ in pattern.finditer(text)) for text in texts]


def behaviour_metrics(texts: Sequence[str], correct: Sequence[bool | None], num_tokens: Sequence[int],
                      phrases: Sequence[str] = DEFAULT_PHRASES) -> dict[str, float]:
    """The metric dict described in the module docstring, for one batch of responses."""
    if not len(texts) == len(correct) == len(num_tokens):
        raise ValueError(f"texts ({len(texts)}), correct ({len(correct)}) and num_tokens ({len(num_tokens)}) "
                         "must have the same length")
    if not texts:
        return {}
    counts = phrase_counts(texts, phrases)
    out = {
        "reflection_rate": sum(c > 0 for c in counts) / len(counts),
        "reflection_count": sum(counts) / len(counts),
    }
    right = [n for n, c in zip(num_tokens, correct) if c is True]
    wrong = [n for n, c in zip(num_tokens, correct) if c is not True]
    if right:
        out["response_length_correct"] = sum(right) / len(right)
    if wrong:
        out["response_length_incorrect"] = sum(wrong) / len(wrong)
    return out


def probe_rows(num_rows: int, rows: int) -> torch.Tensor:
    """`rows` row indices evenly spaced over [0, num_rows) (all of them when rows >= num_rows)."""
    if rows >= num_rows:
        return torch.arange(num_rows)
    return torch.linspace(0, num_rows - 1, rows).round().long().unique()


@torch.no_grad()
def kl_to_initial(policy, initial, batch, temperature: float = 1.0, rows: int = 16) -> dict[str, float]:
    """KL(policy || initial) per response token, k3 and k1, on `rows` rows of `batch`.

    batch: a `pillion.model.sequences.SequenceBatch` ([B, P + T] rows as the trainer packs
    them). Returns {"kl_initial": k3 token mean, "kl_initial_k1": k1 token mean}.
    """
    index = probe_rows(batch.input_ids.shape[0], rows).to(batch.input_ids.device)
    sums = kl_sums(policy, initial, batch.rows(index), temperature)
    return {name: sums[name] / sums["tokens"] if sums["tokens"] else 0.0 for name in ("kl_initial", "kl_initial_k1")}


@torch.no_grad()
def kl_sums(policy, initial, batch, temperature: float = 1.0) -> dict[str, float]:
    """Sums over the response tokens of `batch` (a SequenceBatch) of KL(policy || initial), k3
    and k1, and the token count: the parts of `kl_to_initial` that add up over ranks."""
    from pillion.algorithms.losses import kl
    from pillion.model.sequences import response_logprobs

    logp = response_logprobs(policy, batch, temperature)[0]  # [r, T]
    init_logp = response_logprobs(initial, batch, temperature)[0]  # [r, T]
    mask = batch.response_mask.float()  # [r, T]
    # float64 sums: k1's signed terms cancel, and partial sums (one per rank) must add up to the whole
    return {"kl_initial": float(kl(logp, init_logp, "k3", mask).double().sum()),
            "kl_initial_k1": float(kl(logp, init_logp, "k1", mask).double().sum()), "tokens": float(mask.sum())}
