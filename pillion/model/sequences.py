"""Training-side forward: per-token log-probabilities of given responses.

Layout shared with the rollout engine, so both see identical positions and masks:
each row is [left padding | prompt | response | right padding]; prompts are left-padded to
the batch's longest prompt P, responses right-padded to the longest response T. RoPE
positions count real tokens only, so padding never shifts a position.

Packed (the default, `packed=True`): the forward sees no padding at all. The real tokens of
the rows are concatenated into one sequence [1, N] (N = the rows' total length, against
B x (P + T) padded), RoPE positions restart at each row, and attention stays within each row
(`packed.PackedRows`: varlen flash attention on CUDA, rows in a few length buckets on CPU);
a prompt that several rows share (a GRPO group's) is held once (`share_prompts`). Only the
hidden states at response positions reach the LM head, and their log-probs are scattered back
to the [B, T] layout the losses use, so callers see the same tensors as from the padded
forward (`packed=False`, the reference: equal up to float summation order, tested).

Where each token goes is a `PackedLayout`, built from the batch once per micro-batch
(`packed_layout`) and read by every forward of it: the trainer's policy, old log-probs,
reference and critic forwards of one micro-batch share one layout.

Log-probabilities are computed only at response positions and in chunks whose logits are
recomputed in the backward pass (model/logprobs.py), so a [B, T, vocab] float32 tensor is
never held: peak extra memory is two [chunk, vocab] buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pillion.model.logprobs import chunked_logprobs
from pillion.model.packed import PackedRows, take_rows
from pillion.model.transformer import Transformer, causal_padding_mask, padding_positions

# float32 logits per chunk (128 MiB): a chunk holds two buffers of this size, so a large
# vocabulary costs a bounded, small amount, not [tokens, vocab].
LOGITS_PER_CHUNK = 2**25


@dataclass
class SequenceBatch:
    input_ids: Tensor  # [B, P + T] long
    attention_mask: Tensor  # [B, P + T] 0/1
    response_mask: Tensor  # [B, T] 0/1, 1 on response tokens
    prompt_len: int  # P

    def rows(self, index: Tensor) -> SequenceBatch:
        """The rows `index` (same P and T)."""
        return SequenceBatch(self.input_ids[index], self.attention_mask[index], self.response_mask[index],
                             self.prompt_len)

    def to(self, device) -> SequenceBatch:
        return SequenceBatch(self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device),
                             self.prompt_len)


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int, device=None) -> SequenceBatch:
    """Build the [left-padded prompt | right-padded response] batch described above."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    P = max(len(p) for p in prompts)
    T = max(1, max(len(r) for r in responses))
    # Rows built as Python lists and turned into one tensor: per-row slice writes cost ~20 us each
    # (5 ms for the README job's 256 rows; this, ~1 ms).
    ids = torch.tensor([[pad_id] * (P - len(p)) + list(p) + list(r) + [pad_id] * (T - len(r))
                        for p, r in zip(prompts, responses)], dtype=torch.long)  # [B, P + T]
    attn = torch.tensor([[0] * (P - len(p)) + [1] * (len(p) + len(r)) + [0] * (T - len(r))
                         for p, r in zip(prompts, responses)], dtype=torch.long)  # [B, P + T]
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
    """log pi(x_t | x_<t) / temperature-scaled, float32 [B, L], zero where target_mask is 0,
    through the padded forward (the reference the packed one is tested against).

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


def response_targets(batch: SequenceBatch) -> torch.Tensor:
    """[B, P + T]: 1 on the response tokens (the positions whose log-probs are scored)."""
    target = torch.zeros_like(batch.attention_mask)
    target[:, batch.prompt_len :] = batch.response_mask
    return target


def prompt_group_ids(batch: SequenceBatch) -> Tensor:
    """[B] long: the group of each row, rows with the same prompt tokens (left padding left out)
    in one group, groups numbered 0, 1, ... in the order their first row appears (a GRPO group's
    rows share one)."""
    P, B = batch.prompt_len, batch.input_ids.shape[0]
    device = batch.input_ids.device
    if P == 0:
        return torch.zeros(B, dtype=torch.long, device=device)
    key = batch.input_ids[:, :P].masked_fill(~batch.attention_mask[:, :P].bool(), -1)  # [B, P]
    _, label = torch.unique(key, dim=0, return_inverse=True)  # [B] groups in sorted order of their keys
    rows = torch.arange(B, device=device)
    first = torch.full((int(label.max()) + 1,), B, device=device).scatter_reduce(0, label, rows, "amin")
    return first.argsort().argsort()[label]  # renumbered by first appearance


@dataclass
class PackedLayout:
    """Where each token of a batch's rows goes in the packed forward: built once per micro-batch
    (`packed_layout`) and read by every forward of it (policy, old log-probs, reference, critic).

    The packed sequence holds N tokens; when rows share a prompt (`shared`) it is, group by
    group, the prompt once and then each row's response, and attention runs over the rows
    expanded, [prompt | response] each (`rows.gather`, `rows.owned`); otherwise it is the rows'
    real tokens end to end. A target is a response token with a real token before it in its row;
    the n targets are taken in row-major [B, T] order."""

    ids: Tensor  # [N] long: the packed tokens
    positions: Tensor  # [N] long: their RoPE positions within their (expanded) row
    rows: PackedRows  # the rows attention sees (lengths, cu_seqlens; gather, owned when shared);
    # the CPU route's bucket slots are kept on it after the first forward, for the next ones
    source: Tensor  # [n] long: the packed token whose hidden state predicts each target
    targets: Tensor  # [n] long: each target's token id
    where: Tensor  # [B, T] bool: the targets

    @property
    def shared(self) -> bool:
        return self.rows.gather is not None

    def to(self, device) -> PackedLayout:
        """The same layout with its tensors on `device` (a critic on another device); itself if there."""
        if self.ids.device == torch.device(device):
            return self
        r = self.rows
        rows = PackedRows(r.lengths, r.cu_seqlens.to(device), None if r.gather is None else r.gather.to(device),
                          None if r.owned is None else r.owned.to(device))
        return PackedLayout(self.ids.to(device), self.positions.to(device), rows, self.source.to(device),
                            self.targets.to(device), self.where.to(device))


def packed_layout(batch: SequenceBatch, share_prompts: bool = True) -> PackedLayout:
    """The `PackedLayout` of `batch`'s rows; with `share_prompts`, each prompt that several rows
    share held once (when no two rows share one, the plain layout: nothing to save).

    Built with tensor operations, no per-token Python: rows are visited group by group (groups
    in the order of their first row, rows in order within a group), each contributing its
    prompt if it is its group's first row, then its response; a row's expanded view reads its
    group's prompt where the first row put it."""
    ids, real = batch.input_ids, batch.attention_mask.bool()  # [B, P + T]
    P, (B, width) = batch.prompt_len, ids.shape
    positions = padding_positions(batch.attention_mask)  # [B, P + T]: 0 at each row's first real token
    groups = prompt_group_ids(batch) if share_prompts else None
    shared = groups is not None and int(groups.max()) + 1 < B
    if shared:
        order = torch.sort(groups, stable=True).indices  # [B] rows group by group, in order within each
        first = torch.ones(B, dtype=torch.bool, device=ids.device)
        first[1:] = groups[order][1:] != groups[order][:-1]  # [B] (in `order`) the group's first row
        kept = real[order].clone()
        kept[:, :P] &= first[:, None]  # a prompt's tokens are packed with its group's first row only
    else:
        order, kept = torch.arange(B, device=ids.device), real
    # index[b, c]: the packed token that row order[b]'s column c reads (-1: padding)
    index = torch.where(kept, kept.flatten().cumsum(0).view(B, width) - 1, -1)
    if shared:  # the prompt columns of later rows read the first row's
        leader = torch.arange(B, device=ids.device).masked_fill(~first, 0).cummax(0).values  # [B]
        index[:, :P] = index[leader, :P]
    rows = PackedRows.of(real[order].sum(-1).tolist(), ids.device, index[real[order]] if shared else None,
                         kept[real[order]] if shared else None)
    # Targets: each response token with a real token before it in its row, predicted by that token
    # (packed indices rise along a row, so the running maximum is the latest real token's).
    where = batch.response_mask.bool() & real[:, P:] & (positions[:, P:] > 0)  # [B, T]
    before = torch.empty_like(index)
    before[order] = F.pad(index.cummax(1).values[:, :-1], (1, 0), value=-1)  # [B, P + T], rows in row order
    return PackedLayout(ids[order][kept], positions[order][kept], rows, before[:, P:][where], ids[:, P:][where], where)


def packed_states(model: Transformer, layout: PackedLayout) -> Tensor:
    """The packed forward: hidden states [n, D] of the tokens that predict the layout's targets."""
    hidden = model(layout.ids[None], layout.positions[None], layout.rows)[0]  # [N, D]
    return take_rows(hidden, layout.source)


def packed_logprobs(model: Transformer, layout: PackedLayout, temperature: float = 1.0, with_entropy: bool = False,
                    chunk: int | None = None):
    """Response log-probs [B, T] float32 (and entropy [B, T] if asked) from one packed forward
    over `layout`: zero off the targets, the same values as the padded forward up to float
    summation order (tested). With shared prompts the linear layers, most of the cost, see G
    prompts instead of B, attention still sees each row whole, and gradients from every row
    reach the shared prompt's tokens."""
    chunk = chunk or max(1, LOGITS_PER_CHUNK // model.cfg.vocab_size)
    states = packed_states(model, layout)
    flat_lp, flat_ent = chunked_logprobs(states, model.lm_head.weight, layout.targets, temperature, chunk,
                                         with_entropy)  # [n]
    where = layout.where
    logprobs = torch.zeros(where.shape, dtype=torch.float32, device=where.device).masked_scatter(where, flat_lp)
    entropy = torch.zeros_like(logprobs).masked_scatter(where, flat_ent) if with_entropy else None
    return logprobs, entropy


def response_logprobs(model: Transformer, batch: SequenceBatch, temperature: float = 1.0, with_entropy: bool = False,
                      packed: bool = True, share_prompts: bool = True):
    """Per-token log-probs of the responses, [B, T] float32 (and entropy [B, T] if asked);
    packed: without padding in the forward (`packed_logprobs` over the batch's layout), else the
    padded batch; share_prompts (packed only; the trainer's `share_prompts` key): a prompt that
    several rows share runs through the linear layers once."""
    if packed:
        return packed_logprobs(model, packed_layout(batch, share_prompts), temperature, with_entropy)
    P = batch.prompt_len
    logprobs, entropy = token_logprobs(model, batch.input_ids, batch.attention_mask, response_targets(batch),
                                       temperature, with_entropy)
    return logprobs[:, P:], (entropy[:, P:] if entropy is not None else None)


def compile_training(model: Transformer, backend: str = "inductor") -> None:
    """`compile: true`: compile the model's `forward` (the training and scoring path; the engine's
    `decode` is compiled apart) with dynamic shapes, so that packed sequences of every length, and
    every row count, run one graph: the packed attention stays out of the graph (a graph break,
    `packed.packed_attention`), so nothing in it is specialised on the rows' lengths. Its
    backward is compiled with it (AOTAutograd)."""
    model.compile(dynamic=True, backend=backend)
