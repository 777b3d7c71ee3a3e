"""Training-side forward: per-token log-probabilities of given responses.

Layout shared with the rollout engine, so both see identical positions and masks:
each row is [left padding | prompt | response | right padding]; prompts are left-padded to
the batch's longest prompt P, responses right-padded to the longest response T. RoPE
positions count real tokens only, so padding never shifts a position.

Packed (the default, `packed=True`): the forward sees no padding at all. The real tokens of
the rows are concatenated into one sequence [1, N] (N = the rows' total length, against
B x (P + T) padded), RoPE positions restart at each row, and attention stays within each row
(`transformer.PackedRows`: varlen flash attention on CUDA, per-row attention on CPU), and a
prompt that several rows share (a GRPO group's) is held once (`shared_prompt_logprobs`). Only the
hidden states at response positions reach the LM head, and their log-probs are scattered back
to the [B, T] layout the losses use, so callers see the same tensors as from the padded
forward (`packed=False`, the reference: equal up to float summation order, tested).

Log-probabilities are computed only at response positions and in chunks whose logits are
recomputed in the backward pass (model/logprobs.py), so a [B, T, vocab] float32 tensor is
never held: peak extra memory is two [chunk, vocab] buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pillion.model.logprobs import chunked_logprobs
from pillion.model.packed import PackedRows, take_rows
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


def packed_token_logprobs(
    model: Transformer,
    input_ids: torch.Tensor,  # [B, L]
    attention_mask: torch.Tensor,  # [B, L]
    target_mask: torch.Tensor,  # [B, L]
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk: int | None = None,
):
    """`token_logprobs` through one forward over the rows' real tokens end to end, [1, N].

    Same outputs ([B, L] float32, zero off target) as the padded forward; a row's first token
    is never a target (nothing of its own row precedes it).
    """
    chunk = chunk or max(1, LOGITS_PER_CHUNK // model.cfg.vocab_size)
    states, targets, target = _packed_states(model, input_ids, attention_mask, target_mask)
    flat_lp, flat_ent = chunked_logprobs(states, model.lm_head.weight, targets, temperature, chunk, with_entropy)  # [n]
    logprobs = torch.zeros(target.shape, dtype=torch.float32, device=input_ids.device).masked_scatter(target, flat_lp)
    entropy = torch.zeros_like(logprobs).masked_scatter(target, flat_ent) if with_entropy else None
    return logprobs, entropy


def _packed_states(model: Transformer, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   target_mask: torch.Tensor):
    """The packed forward of `packed_token_logprobs`: (the hidden states [n, D] that predict the
    targets, the targets' ids [n], `target` [B, L] bool where they are, row-major)."""
    keep = attention_mask.bool()  # [B, L]: row-major order of the real tokens = packed order
    positions = padding_positions(attention_mask)  # [B, L]: 0 at each row's first real token
    ids = input_ids[keep]  # [N]
    rows = PackedRows.of(keep.sum(-1).tolist(), input_ids.device)
    hidden = model(ids[None], positions[keep][None], rows)[0]  # [N, D]
    target = target_mask.bool() & keep & (positions > 0)  # [B, L]
    select = target[keep][1:]  # [N - 1]: packed token j predicts token j + 1 of the same row
    return take_rows(hidden, select.nonzero().view(-1)), ids[1:][select], target


def same_prompt_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int
                     ) -> dict[tuple[int, ...], list[int]]:
    """Rows [B, P + T] grouped by their prompt tokens (left padding left out): prompt -> its rows,
    in the order each prompt first appears (a GRPO group's rows share one)."""
    ids = input_ids[:, :prompt_len].tolist()
    real = attention_mask[:, :prompt_len].bool().tolist()
    groups: dict[tuple[int, ...], list[int]] = {}
    for b, (row, keep) in enumerate(zip(ids, real)):
        groups.setdefault(tuple(t for t, k in zip(row, keep) if k), []).append(b)
    return groups


def response_targets(batch: SequenceBatch) -> torch.Tensor:
    """[B, P + T]: 1 on the response tokens (the positions whose log-probs are scored)."""
    target = torch.zeros_like(batch.attention_mask)
    target[:, batch.prompt_len :] = batch.response_mask
    return target


def shared_prompt_layout(batch: SequenceBatch) -> dict | None:
    """The packed layout of `shared_prompt_logprobs`, built on the host; None when no two rows share
    a prompt (then there is nothing to save). Rows with the same prompt tokens form a group; the
    packed sequence is, group by group, the prompt once and then each row's response. Returns the
    packed ids and RoPE positions [N], the expanded rows (`PackedRows.of` arguments), and for each
    target (a response token under response_mask, in row-major [B, T] order) the packed token
    whose hidden state predicts it and its id, and `where` [B, T] the targets."""
    P = batch.prompt_len
    ids = batch.input_ids.tolist()
    real = batch.attention_mask.bool().tolist()
    wanted = batch.response_mask.bool().tolist()
    groups = same_prompt_rows(batch.input_ids, batch.attention_mask, P)
    if len(groups) == len(ids):
        return None
    tokens, positions, gather, owned, lengths = [], [], [], [], []
    slots: list[list[int]] = [[] for _ in ids]  # row b: the packed token at each of its positions
    for prompt, rows in groups.items():
        first = len(tokens)
        tokens += prompt
        positions += range(len(prompt))
        for i, b in enumerate(rows):
            response = [t for t, k in zip(ids[b][P:], real[b][P:]) if k]
            start = len(tokens)
            tokens += response
            positions += range(len(prompt), len(prompt) + len(response))
            slots[b] = [*range(first, first + len(prompt)), *range(start, start + len(response))]
            gather += slots[b]
            owned += [i == 0] * len(prompt) + [True] * len(response)
            lengths.append(len(slots[b]))
    source, target_ids, where = [], [], []
    for b, keep in enumerate(wanted):
        prompt_len = len(slots[b]) - sum(real[b][P:])
        # A target needs a real token before it in its row (as packed_token_logprobs: a row's
        # first token is never one; nor is padding, which pack() never marks).
        where.append([want and real[b][P + j] and prompt_len + j > 0 for j, want in enumerate(keep)])
        for j, on in enumerate(where[-1]):
            if on:
                source.append(slots[b][prompt_len + j - 1])
                target_ids.append(ids[b][P + j])
    return {"tokens": tokens, "positions": positions, "lengths": lengths, "gather": gather, "owned": owned,
            "source": source, "target_ids": target_ids, "where": where}


def shared_prompt_logprobs(model: Transformer, batch: SequenceBatch, layout: dict, temperature: float = 1.0,
                           with_entropy: bool = False, chunk: int | None = None):
    """Response log-probs [B, T] (and entropy) from one packed forward in which each prompt
    repeated across rows (a GRPO group's) is computed once: the linear layers, most of the
    cost, see G prompts instead of B; attention still sees each row whole, [prompt | response]
    (`PackedRows.gather`), and gradients from every row reach the shared prompt's tokens. The
    same values as `packed_token_logprobs` up to float summation order (tested)."""
    device = batch.input_ids.device
    chunk = chunk or max(1, LOGITS_PER_CHUNK // model.cfg.vocab_size)
    states, where = _shared_states(model, layout, device)
    targets = torch.tensor(layout["target_ids"], device=device, dtype=torch.long)
    flat_lp, flat_ent = chunked_logprobs(states, model.lm_head.weight, targets, temperature, chunk, with_entropy)
    logprobs = torch.zeros(where.shape, dtype=torch.float32, device=device).masked_scatter(where, flat_lp)
    entropy = torch.zeros_like(logprobs).masked_scatter(where, flat_ent) if with_entropy else None
    return logprobs, entropy


def _shared_states(model: Transformer, layout: dict, device):
    """The forward of `shared_prompt_logprobs`: (the hidden states [n, D] that predict the
    layout's targets, `where` [B, T] bool where they are, row-major)."""
    ids = torch.tensor(layout["tokens"], device=device)
    rows = PackedRows.of(layout["lengths"], device, layout["gather"], layout["owned"])
    hidden = model(ids[None], torch.tensor(layout["positions"], device=device)[None], rows)[0]  # [N, D]
    source = torch.tensor(layout["source"], device=device, dtype=torch.long)
    return take_rows(hidden, source), torch.tensor(layout["where"], dtype=torch.bool, device=device)


def response_states(model: Transformer, batch: SequenceBatch, share_prompts: bool = True):
    """The state before each response token, as the critic reads it (`Critic.values`): (hidden
    states [n, D] of the positions whose logits predict the response tokens, `where` [B, T] bool
    marking those tokens, row-major). One packed forward without padding, each shared prompt
    once (as `response_logprobs`)."""
    layout = shared_prompt_layout(batch) if share_prompts else None
    if layout is not None:
        return _shared_states(model, layout, batch.input_ids.device)
    states, _, where = _packed_states(model, batch.input_ids, batch.attention_mask, response_targets(batch))
    return states, where[:, batch.prompt_len :]


def response_logprobs(model: Transformer, batch: SequenceBatch, temperature: float = 1.0, with_entropy: bool = False,
                      packed: bool = True, share_prompts: bool = True):
    """Per-token log-probs of the responses, [B, T] float32 (and entropy [B, T] if asked);
    packed: without padding in the forward (see the module docstring), else the padded batch;
    share_prompts (packed only; the trainer's `share_prompts` key): a prompt that several rows
    share runs through the linear layers once (`shared_prompt_logprobs`)."""
    layout = shared_prompt_layout(batch) if packed and share_prompts else None
    if layout is not None:
        return shared_prompt_logprobs(model, batch, layout, temperature, with_entropy)
    P = batch.prompt_len
    fn = packed_token_logprobs if packed else token_logprobs
    logprobs, entropy = fn(model, batch.input_ids, batch.attention_mask, response_targets(batch), temperature,
                           with_entropy)
    return logprobs[:, P:], (entropy[:, P:] if entropy is not None else None)


def compile_training(model: Transformer, backend: str = "inductor") -> None:
    """`compile: true`: compile the model's `forward` (the training and scoring path; the engine's
    `decode` is compiled apart) with dynamic shapes, so that packed sequences of every length, and
    every row count, run one graph: inside it the packed attention takes its tensor-only route
    (`transformer.packed_attention`), with no per-row loop to specialise on. Its backward is
    compiled with it (AOTAutograd)."""
    model.compile(dynamic=True, backend=backend)
