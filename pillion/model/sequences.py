"""Training-side forward: per-token log-probabilities of given responses.

Layout shared with the rollout engine, so both see identical positions and masks:
each row is [left padding | prompt | response | right padding]; prompts are left-padded to
the batch's longest prompt P, responses right-padded to the longest response T. RoPE
positions count real tokens only, so padding never shifts a position.

Log-probabilities are computed only at response positions and in chunks whose logits are
recomputed in the backward pass (model/logprobs.py), so a [B, T, vocab] float32 tensor is
never held: peak extra memory is two [chunk, vocab] buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pillion.model.logprobs import chunked_logprobs
from pillion.model.transformer import Transformer, causal_padding_mask, padding_positions

# float32 logits per chunk (128 MiB): a chunk holds two buffers of this size, so a large
# vocabulary costs a bounded, small amount, not [tokens, vocab].
LOGITS_PER_CHUNK = 2**25


@dataclass
class SequenceBatch:
    input_ids: torch.Tensor  # [B, P + T] long
    attention_mask: torch.Tensor  # [B, P + T] 0/1
    response_mask: torch.Tensor  # [B, T] 0/1, 1 on response tokens
    prompt_len: int  # P


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int, device=None) -> SequenceBatch:
    """Build the [left-padded prompt | right-padded response] batch described above."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    P = max(len(p) for p in prompts)
    T = max(1, max(len(r) for r in responses))
    B = len(prompts)
    ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + T), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, P - len(p) : P] = torch.tensor(p, dtype=torch.long)
        ids[i, P : P + len(r)] = torch.tensor(r, dtype=torch.long)
        attn[i, P - len(p) : P + len(r)] = 1
    return SequenceBatch(ids.to(device), attn.to(device), attn[:, P:].clone().to(device), P)


def token_logprobs(
    model: Transformer,
    input_ids: torch.Tensor,  # [B, L]
    attention_mask: torch.Tensor,  # [B, L]
    target_mask: torch.Tensor,  # [B, L] 1 where log p(input_ids[:, t] | < t) is wanted
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk: int | None = None,
):
    """log pi(x_t | x_<t) / temperature-scaled, float32 [B, L], zero where target_mask is 0.

    Returns (logprobs, entropy) with entropy None unless asked for. `chunk` rows of logits at a
    time; by default as many as fit LOGITS_PER_CHUNK values (220 rows for a 151,936 vocab).
    """
    chunk = chunk or max(1, LOGITS_PER_CHUNK // model.cfg.vocab_size)
    hidden = model(input_ids, padding_positions(attention_mask), causal_padding_mask(attention_mask))
    select = target_mask[:, 1:].bool()  # position t-1 predicts token t
    h = hidden[:, :-1][select]  # [N, D]
    targets = input_ids[:, 1:][select]  # [N]
    flat_lp, flat_ent = chunked_logprobs(h, model.lm_head.weight, targets, temperature, chunk, with_entropy)  # [N]
    B, L = input_ids.shape
    logprobs = torch.zeros(B, L, dtype=torch.float32, device=input_ids.device)
    logprobs = logprobs.masked_scatter(F.pad(select, (1, 0)), flat_lp)
    entropy = None
    if with_entropy:
        entropy = torch.zeros_like(logprobs).masked_scatter(F.pad(select, (1, 0)), flat_ent)
    return logprobs, entropy


def response_logprobs(model: Transformer, batch: SequenceBatch, temperature: float = 1.0, with_entropy: bool = False):
    """Per-token log-probs of the responses, [B, T] float32 (and entropy [B, T] if asked)."""
    P = batch.prompt_len
    target = torch.zeros_like(batch.attention_mask)
    target[:, P:] = batch.response_mask
    logprobs, entropy = token_logprobs(model, batch.input_ids, batch.attention_mask, target, temperature, with_entropy)
    return logprobs[:, P:], (entropy[:, P:] if entropy is not None else None)
