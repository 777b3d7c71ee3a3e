"""Attention over packed rows: several sequences laid end to end without padding, each token
attending causally within its own row (the training forward's `PackedRows` mask, built by
model/sequences.py), with rows that share a prompt holding it once.

Two routes to the same result (tests compare each with the padded batch): varlen flash
attention on CUDA, and on CPU a few length buckets of rows, one fused attention each. Both are
kept out of compiled graphs, so that a compiled training forward is not specialised on the rows'
lengths. `take_rows` is the gather both use, with a backward that sums repeated rows in one order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class PackedRows:
    """B rows concatenated without padding into one sequence of N tokens (the packed forward,
    `sequences.PackedLayout.rows`): each token attends causally within its own row only.

    With `gather` (shared prompts), rows that share a prompt hold it once: the
    N packed tokens are each prompt once followed by its rows' responses, and attention runs over
    the rows expanded, [prompt | response] each (N' >= N tokens, `gather` [N'] the packed token in
    each slot); `lengths` and `cu_seqlens` then describe the expanded rows. `owned` [N] holds each
    packed token's one slot (a prompt's slots in its first row; `of` takes it as an [N'] mask),
    laid out so that gather[owned] = 0..N-1: the linear layers see every token once, attention
    every row whole.
    """

    lengths: list[int]  # [B] tokens per row, on the host
    cu_seqlens: torch.Tensor  # [B + 1] int32: row b is tokens cu_seqlens[b]:cu_seqlens[b + 1]
    gather: torch.Tensor | None = None  # [N'] long: shared prompts, see above
    owned: torch.Tensor | None = None  # [N] long: the slot of each packed token
    slots: Any = field(default=None, repr=False)  # the CPU route's BucketSlots: built on first use, then kept

    @staticmethod
    def of(lengths: list[int], device=None, gather: list[int] | torch.Tensor | None = None,
           owned: list[bool] | torch.Tensor | None = None) -> PackedRows:
        """From the rows' lengths and (shared prompts) `gather` [N'] and the mask `owned` [N']."""
        sizes = torch.tensor(lengths, dtype=torch.int32)
        cu = F.pad(sizes.cumsum(0, dtype=torch.int32), (1, 0))
        if gather is None:
            return PackedRows(list(lengths), cu.to(device))
        # an index, not a mask: no data-dependent shape
        kept = torch.as_tensor(owned, dtype=torch.bool).nonzero().view(-1)
        return PackedRows(list(lengths), cu.to(device), torch.as_tensor(gather, device=device), kept.to(device))


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: PackedRows) -> torch.Tensor:
    """Causal attention within each row of a packed sequence: q [N, H, D], k, v [N, KV, D] -> [N, H, D].

    Two routes to the same result (tests compare each with the padded batch):
    - CUDA: varlen flash attention over `cu_seqlens` (no mask, no padding, one kernel);
    - CPU: rows of similar length gathered into a few right-padded buckets (`length_buckets`),
      one fused causal `scaled_dot_product_attention` each (the linear layers, most of the cost,
      still see no padding).
    Under torch.compile (`compile: true`) either route runs eagerly, a graph break
    (`varlen_route`, `bucketed_attention`), and the graphs around it fuse the norms, RoPE and MLP.
    """
    if q.is_cuda:
        return varlen_route(q, k, v, rows)
    return bucketed_attention(q, k, v, rows)


@torch.compiler.disable
def varlen_route(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: PackedRows) -> torch.Tensor:
    """The CUDA route of `packed_attention`. Kept out of compiled graphs, as the CPU route is:
    `varlen_attn` takes the longest row as a Python int, on which a graph would specialise and
    compile again as the rows' lengths change from step to step."""
    if rows.gather is not None:  # shared prompts: attend over the expanded rows, keep one output per token
        q, k, v = (take_rows(x, rows.gather) for x in (q, k, v))
        return take_rows(varlen_attention(q, k, v, rows), rows.owned)
    return varlen_attention(q, k, v, rows)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: PackedRows) -> torch.Tensor:
    """The CUDA route of `packed_attention`, over rows laid end to end as `rows` describes them
    (the expanded rows when prompts are shared): q [N, H, D], k, v [N, KV, D] -> [N, H, D]."""
    from torch.nn.attention.varlen import varlen_attn

    longest = max(rows.lengths)
    return varlen_attn(q, k, v, rows.cu_seqlens, rows.cu_seqlens, longest, longest, window_size=(-1, 0),
                       enable_gqa=q.shape[1] != k.shape[1])


@torch.compiler.disable
def bucketed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: PackedRows) -> torch.Tensor:
    """The CPU route of `packed_attention`. Each of q, k, v is gathered once into the buckets'
    slots (`BucketSlots`: shared prompts are repeated there, padding slots copy some token and
    their outputs are never read), one fused attention runs per bucket, and one gather takes each
    token's output back from its slot. Gathers only (`take_rows`), no scatter in the forward.

    Kept out of compiled graphs: its buckets are host-side Python over the rows' lengths, which
    would specialise a graph on every step's lengths. The alternative inside a graph, one
    attention over a block-diagonal [N, N] mask, measured 6.5x slower than eager for the tiny
    model's update (1.70 s against 0.26 s, 5.3k tokens); with this break the compiled forward and
    backward take 0.21 s."""
    h, kv, d = q.shape[1], k.shape[1], q.shape[2]
    slots = BucketSlots.of(rows, q.device)
    sizes = [b * width for b, width in slots.shapes]
    # Split, not sliced: a slice's backward writes into a zeroed copy of the whole input, a split's is one cat.
    qs, ks, vs = (take_rows(x, slots.source).split(sizes) for x in (q, k, v))  # per bucket [b * Lb, heads, D]
    outs = []
    for (b, width), qb, kb, vb in zip(slots.shapes, qs, ks, vs):
        attend = short_attention if width <= SHORT_ROWS and q.dtype == torch.float32 else fused_attention
        outs.append(attend(qb.view(b, width, h, d), kb.view(b, width, kv, d), vb.view(b, width, kv, d)))
    return take_rows(torch.cat(outs) if len(outs) > 1 else outs[0], slots.slot)  # [N, H, D]


# Widest bucket (tokens) that `short_attention` takes on the CPU route. benchmarks/attention_cpu.py
# on 2 AVX2 cores (head_dim 32, 4 query and 2 KV heads, ~6k tokens a bucket, forward + backward of
# the kernels alone; three runs, noisy), fused / short: at 2 threads 2.0-2.6x at 16 tokens,
# 1.2-1.6x at 32, 0.95-1.35x at 64, 1.04-1.2x at 96, 1.0-1.2x at 128, 0.8-0.9x at 192 and 256; at
# 1 thread 0.7-0.97x at every width. At one thread the README batch's forward + backward is the
# same either way (849 vs 837 ms, medians of 20) and its job's update was 5% faster with this
# route (two runs each), so the width does not depend on the threads.
SHORT_ROWS = 64


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention over b right-padded rows of `width` tokens through the fused
    `scaled_dot_product_attention`, as `short_attention` takes and returns them: q [b, width, H, D],
    k, v [b, width, KV, D] -> [b * width, H, D]."""
    b, width, h, d = q.shape
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # [b, heads, width, D]
    out = F.scaled_dot_product_attention(q, k, v, is_causal=width > 1, enable_gqa=h != k.shape[1])  # [b, H, width, D]
    return out.transpose(1, 2).reshape(b * width, h, d)


def short_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention over b right-padded rows of `width` tokens, q [b, width, H, D], k, v
    [b, width, KV, D] -> [b * width, H, D], as three batched matmuls: scores = q k^T / sqrt(D)
    plus a causal mask of -inf, softmax, times v. On the CPU the fused kernel works in blocks and
    spends more on them than on the arithmetic of short rows (see SHORT_ROWS); this route holds
    [b * KV, g * width, width] scores, g = H / KV, small only because the rows are short. Each KV
    head's g query heads are stacked into one matmul (query head j reads KV head j // g, as the
    fused kernel's `enable_gqa`)."""
    b, width, h, d = q.shape
    kv = k.shape[2]
    g = h // kv
    qg = q.view(b, width, kv, g, d).permute(0, 2, 3, 1, 4).reshape(b * kv, g * width, d)  # [b KV, g L, D]
    keys, values = (x.transpose(1, 2).reshape(b * kv, width, d) for x in (k, v))  # [b KV, L, D]
    mask = torch.full((width, width), float("-inf"), dtype=q.dtype, device=q.device).triu_(1).repeat(g, 1)  # [g L, L]
    scores = torch.baddbmm(mask, qg, keys.transpose(1, 2), alpha=d**-0.5)  # [b KV, g L, L]
    out = torch.bmm(scores.softmax(-1), values)  # [b KV, g L, D]
    return out.view(b, kv, g, width, d).permute(0, 3, 1, 2, 4).reshape(b * width, h, d)


@dataclass
class BucketSlots:
    """Where `bucketed_attention` puts each token: the buckets of `length_buckets` laid end to
    end, S slots in all (bucket j is b_j rows x Lb_j slots, row-major). Built on the host once per
    `PackedRows` (every layer, and every forward of the same layout, reuses it)."""

    shapes: list[tuple[int, int]]  # (rows b, width Lb) of each bucket
    source: torch.Tensor  # [S] long: the packed token each slot holds (padding slots: any token)
    slot: torch.Tensor  # [N] long: the slot whose output is each packed token's

    @staticmethod
    def of(rows: PackedRows, device=None) -> BucketSlots:
        if rows.slots is None:
            buckets = length_buckets(rows.lengths)
            index = torch.cat([i.reshape(-1) for i, _ in buckets])  # [S] expanded token of each slot
            valid = torch.cat([ok.reshape(-1) for _, ok in buckets])
            expanded = torch.empty(sum(rows.lengths), dtype=torch.long)
            expanded[index[valid]] = valid.nonzero().view(-1)  # the slot of each expanded token
            source, slot = index, expanded
            if rows.gather is not None:  # a packed token's slots: every row it is in; its output: its owned one
                source, slot = rows.gather.cpu()[index], expanded[rows.owned.cpu()]
            rows.slots = BucketSlots([tuple(i.shape) for i, _ in buckets], source.to(device), slot.to(device))
        return rows.slots


class _TakeRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.num_rows = x.shape[0]
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        return grad.new_zeros((ctx.num_rows, *grad.shape[1:])).index_add_(0, index, grad), None


def take_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[index] for a long index along dim 0, with a backward that sums the gradients of repeated
    rows by `index_add_` rather than autograd's accumulating `index_put_` (on CPU, rows of 192
    floats, 5k of them: 0.45 ms against 3.8 ms at two threads, measured; the packed update makes
    some 40 such gathers a step)."""
    return _TakeRows.apply(x, index)


def length_buckets(lengths: list[int], slack: float = 1.25) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Rows grouped by length for the CPU route of `packed_attention`: each bucket is (index [b, Lb]:
    the packed position of each row's token t, valid [b, Lb]: t < the row's length), rows right-padded
    to the bucket's longest. Rows are taken shortest first and a bucket closes before its padded size
    would pass `slack` x its real tokens, so attention computes at most ~25% padding, in a few fused
    calls rather than one per row (a call costs ~1-2 ms of fixed overhead on CPU, measured). Right
    padding is harmless under causal attention: a real token sees no later position."""
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    order = sorted((i for i in range(len(lengths)) if lengths[i] > 0), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        group = groups[-1] if groups else None
        if group is not None and (len(group) + 1) * lengths[i] <= slack * (sum(lengths[j] for j in group) + lengths[i]):
            group.append(i)
        else:
            groups.append([i])
    buckets = []
    for group in groups:
        width = max(lengths[i] for i in group)
        t = torch.arange(width)
        valid = t[None] < torch.tensor([lengths[i] for i in group])[:, None]  # [b, Lb]
        index = torch.tensor([starts[i] for i in group])[:, None] + t[None]  # [b, Lb]
        buckets.append((index.masked_fill(~valid, 0), valid))  # on the host: `BucketSlots` moves what it keeps
    return buckets
