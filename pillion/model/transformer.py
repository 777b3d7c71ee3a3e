"""One decoder-only transformer for the Llama, Qwen2/Qwen2.5 and Qwen3 families.

The same module serves every role in an RL run: the policy being trained, the frozen
reference, the critic's trunk, and the rollout engine's fast path over a KV cache (`decode`,
`extend`: the same weights and math, unrolled over a per-layer record of tensors). Using one
model everywhere is what keeps the engine's log-probabilities equal to the trainer's;
`pillion logprob-check` proves it per checkpoint.

Numerics follow the Hugging Face reference implementations on purpose, so that a bf16 forward
rounds the same way: RMSNorm normalises in float32 and casts back before the weight multiply,
RoPE tables are computed in float32 and cast to the activation dtype, attention runs through
`scaled_dot_product_attention`, and logits are taken to float32 before any log-softmax.

Families differ only in switches on `ModelConfig`: QKV bias (Qwen2), per-head QK RMSNorm
(Qwen3), tied embeddings (small Qwen models), and the RoPE frequency rule (Llama-3 scaling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    """Sizes and switches of one checkpoint, read from its config.json (see checkpoint.py)."""

    family: str  # "llama" | "qwen2" | "qwen3"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "llama3" | "linear", ...}
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q, k, v projections (Qwen2 always)
    qk_norm: bool = False  # RMSNorm over head_dim of q and k before RoPE (Qwen3)


class RMSNorm(nn.Module):
    """y = w * (x / sqrt(mean(x^2) + eps)), normalised in float32 and cast back first (as HF)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`RMSNorm` as a function (the decode step calls it without a module call)."""
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)  # same math, one call
    normed = F.rms_norm(x.float(), (x.shape[-1],), eps=eps)
    return weight * normed.to(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies [head_dim/2] in float32, with Llama-3 or linear scaling if configured."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, and the band in
        # between is interpolated smoothly (Meta's reference `apply_scaling`).
        factor = float(scaling["factor"])
        low = float(scaling["low_freq_factor"])
        high = float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"config.json field 'rope_scaling.rope_type': {kind!r} is not supported (default, linear, llama3)")


def rope_tables(inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
    """cos, signed sin [..., head_dim] for integer positions [...] (float32 math, cast to dtype).

    The sine table carries the sign of HF's `rotate_half` (-sin on the first half), so that
    `apply_rope` needs one roll instead of slice, negate and concatenate; -a*b == a*(-b)
    exactly in floating point, so the result is bit-identical.
    """
    freqs = positions.float()[..., None] * inv_freq.to(positions.device)  # [..., D/2]
    cos = torch.cat((freqs, freqs), dim=-1).cos()  # [..., D]
    sin = freqs.sin()
    return cos.to(dtype), torch.cat((-sin, sin), dim=-1).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x [B, L, heads, D] rotated by the half-split convention; cos, signed_sin [B, L, 1, D].

    x * cos + rotate_half(x) * sin, with rotate_half(x) = [-x2, x1] = roll(x, D/2) * sign.
    """
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin

def rope_table(inv_freq: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """[length, 2, head_dim]: cos and signed sin (`rope_tables`) of positions 0..length-1, stacked so
    that the fast path gathers a row's pair with one index."""
    cos, sin = rope_tables(inv_freq, torch.arange(length, device=inv_freq.device), dtype)
    return torch.stack((cos, sin), dim=1)


class KVCache:
    """A preallocated cache of `rows` rows (the engine's slots): per layer, keys stored transposed
    [rows, kv_heads, head_dim, max_len] and values [rows, kv_heads, max_len, head_dim].

    Column c of a row holds the key and value of the row's token at RoPE position c: a row's
    context starts at column 0 and is never padded. Keys are transposed so that a decode step's
    scores q @ K^T read them in the layout a matmul wants (about 2x faster for one query per row
    on CPU). Allocated once per engine and written in place, so the tensors keep their shape and
    address (what CUDA-graph capture needs).
    """

    def __init__(self, cfg: ModelConfig, rows: int, max_len: int, device, dtype):
        shape = (rows, cfg.num_kv_heads, max_len, cfg.head_dim)
        shape_t = (rows, cfg.num_kv_heads, cfg.head_dim, max_len)
        self.k = [torch.zeros(shape_t, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.rows, self.max_len = rows, max_len

    def copy_rows(self, dst: torch.Tensor, src: torch.Tensor, length: int) -> None:
        """Copy rows src[j] into rows dst[j], columns [0, length) (a prompt shared by its samples,
        or a row moved to another slot)."""
        for layer in range(len(self.k)):
            self.k[layer][dst, ..., :length] = self.k[layer][src, ..., :length]
            self.v[layer][dst, :, :length] = self.v[layer][src, :, :length]


@dataclass
class PackedRows:
    """B rows concatenated without padding into one sequence of N tokens (the packed update,
    `sequences.token_logprobs`): each token attends causally within its own row only.

    With `gather` (`sequences.shared_prompt_logprobs`), rows that share a prompt hold it once: the
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
    slots: Any = field(default=None, repr=False)  # the CPU route's BucketSlots, built on first use

    @staticmethod
    def of(lengths: list[int], device=None, gather: list[int] | None = None, owned: list[bool] | None = None
           ) -> PackedRows:
        sizes = torch.tensor(lengths, dtype=torch.int32)
        cu = F.pad(sizes.cumsum(0, dtype=torch.int32), (1, 0))
        if gather is None:
            return PackedRows(list(lengths), cu.to(device))
        kept = torch.tensor(owned, dtype=torch.bool).nonzero().view(-1)  # an index, not a mask: no data-dependent shape
        return PackedRows(list(lengths), cu.to(device), torch.tensor(gather, device=device), kept.to(device))


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
        qb, kb, vb = (x.view(b, width, x.shape[1], d).transpose(1, 2) for x in (qb, kb, vb))  # [b, heads, Lb, D]
        out = F.scaled_dot_product_attention(qb, kb, vb, is_causal=width > 1, enable_gqa=h != kv)  # [b, H, Lb, D]
        outs.append(out.transpose(1, 2).reshape(b * width, h, d))
    return take_rows(torch.cat(outs) if len(outs) > 1 else outs[0], slots.slot)  # [N, H, D]


@dataclass
class BucketSlots:
    """Where `bucketed_attention` puts each token: the buckets of `length_buckets` laid end to
    end, S slots in all (bucket j is b_j rows x Lb_j slots, row-major). Built on the host once per
    `PackedRows` (every layer reuses it)."""

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


class Attention(nn.Module):
    """Grouped-query attention with one fused q|k|v projection (split back to HF names on save)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        h, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, (h + 2 * kv) * d, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(h * d, cfg.hidden_size, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, attn_mask):
        bsz, length, _ = x.shape
        cfg = self.cfg
        h, kv = cfg.num_heads, cfg.num_kv_heads
        qkv = self.qkv_proj(x).view(bsz, length, h + 2 * kv, cfg.head_dim)  # [B, L, heads, D]
        # split rather than slices: a slice's backward zero-fills the whole input's shape, a split's is one cat
        qk, v = qkv.split((h + kv, kv), dim=2)
        if cfg.qk_norm:
            q, k = qk.split((h, kv), dim=2)
            qk = torch.cat((self.q_norm(q), self.k_norm(k)), dim=2)
        q, k = apply_rope(qk, cos, sin).split((h, kv), dim=2)  # q and k rotated together
        if isinstance(attn_mask, PackedRows):  # rows concatenated without padding: [1, N, ...]
            out = packed_attention(q[0], k[0], v[0], attn_mask)  # [N, H, D]
            return self.o_proj(out.reshape(bsz, length, h * cfg.head_dim))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, L, D]
        # No mask means no padding: plain causal attention.
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None and length > 1, enable_gqa=h != kv
        )  # [B, H, L, D]
        return self.o_proj(out.transpose(1, 2).reshape(bsz, length, h * cfg.head_dim))


def decode_attention(q, keys_t, values, key_bias):
    """Attention of M queries per (row, KV head), grouped: q [N, M, D], keys_t [N, D, S] (keys
    transposed, as the cache stores them), values [N, S, D].

    N = rows x KV heads; the query heads that share a KV head (times the new tokens of the row)
    are the M rows of one small matmul, so no key is repeated. key_bias: float32 additive,
    broadcastable to [N, M, S] (-inf = masked). Scores and softmax are float32, as the fused
    attention kernels accumulate.
    """
    scale = q.shape[-1] ** -0.5
    if q.dtype == torch.float32:  # scale and bias in the matmul: one call instead of three
        return torch.bmm(torch.baddbmm(key_bias, q, keys_t, alpha=scale).softmax(-1), values)  # [N, M, D]
    scores = torch.bmm(q, keys_t).float() * scale + key_bias
    return torch.bmm(scores.softmax(-1).to(values.dtype), values)


def causal_key_bias(positions: torch.Tensor, span: int, kv_heads: int, group: int) -> torch.Tensor:
    """Additive float32 bias [A * kv_heads, group * L, span] for L new tokens per row at `positions`
    [A, L]: 0 on the cache columns at or before each token's position, -inf after. Query rows are
    ordered (query head within the group, token), as `Transformer._blocks` lays them out."""
    rows, length = positions.shape
    columns = torch.arange(span, device=positions.device)
    bias = torch.zeros((rows, length, span), dtype=torch.float32, device=positions.device)
    bias.masked_fill_(columns > positions[..., None], float("-inf"))  # [A, L, S]
    bias = bias[:, None, None].expand(rows, kv_heads, group, length, span)
    return bias.reshape(rows * kv_heads, group * length, span)


def residual_linear(x: torch.Tensor, a: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """x + a @ weight_t, weight_t the weight laid out [in, out] (a transposed view of the parameter,
    or the engine's contiguous copy on CPU, `decode_weights`): in one addmm call in float32
    (other dtypes round the matmul first, as HF's linear does: the same mm call)."""
    if x.dtype == torch.float32:
        return torch.addmm(x, a, weight_t)
    return x + torch.mm(a, weight_t)


class MLP(nn.Module):
    """SwiGLU with one fused gate|up projection: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, attn_mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """Embedding, blocks and final norm; named as in Hugging Face checkpoints (`model.*`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


@dataclass
class LayerWeights:
    """One block's tensors, as the engine's fast path reads them (`Transformer.decode_weights`)."""

    input_norm: torch.Tensor  # [hidden]
    qkv_t: torch.Tensor  # [hidden, (H + 2 KV) * D]
    qkv_bias: torch.Tensor | None  # [(H + 2 KV) * D] (Qwen2) or None
    o_t: torch.Tensor  # [H * D, hidden]
    post_norm: torch.Tensor  # [hidden]
    gate_up_t: torch.Tensor  # [hidden, 2 * intermediate]
    down_t: torch.Tensor  # [intermediate, hidden]
    q_norm: torch.Tensor | None  # [D] (Qwen3) or None
    k_norm: torch.Tensor | None  # [D] (Qwen3) or None


@dataclass
class DecodeWeights:
    layers: list[LayerWeights]
    embedding: torch.Tensor  # [V, hidden]
    final_norm: torch.Tensor  # [hidden]
    lm_head_t: torch.Tensor  # [hidden, V]


def _weight(linear: nn.Linear) -> torch.Tensor:
    """The weight the fast path multiplies by. Every projection the engine reads goes through
    here: the parameter itself, or for a LoRA linear (pillion/model/lora.py) the base weight with
    its adapters merged, W + (alpha / r) B A (a new tensor: gather again after each optimizer step)."""
    merged = getattr(linear, "merged_weight", None)
    return linear.weight if merged is None else merged()


class Transformer(nn.Module):
    """The model. `forward` returns final hidden states; `logits` applies the LM head; `decode`
    and `extend` are the rollout engine's fast path over a KV cache.

    Parameter names follow Hugging Face (`model.layers.0.self_attn.o_proj.weight`, ...) except
    two fused projections, `qkv_proj` and `gate_up_proj` (one matmul instead of three or two);
    checkpoint.py maps them to and from the HF tensors explicitly.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Decoder(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # Kept out of the state dict: derived from the config, rebuilt after meta-device loading.
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)

    def reset_rope(self, device=None) -> None:
        self.inv_freq = rope_inv_freq(self.cfg).to(device if device is not None else self.lm_head.weight.device)

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, L]
        positions: torch.Tensor,  # [B, L] RoPE positions (real tokens before each)
        attn_mask: torch.Tensor | PackedRows | None,  # bool [B, 1, L, L], True = may attend; None = causal;
        # PackedRows: B = 1 and the L tokens are several rows end to end, each attending within itself
    ) -> torch.Tensor:
        """Final hidden states [B, L, hidden] (the training and scoring path)."""
        x = self.model.embed_tokens(input_ids)
        cos, sin = rope_tables(self.inv_freq, positions, x.dtype)
        cos, sin = cos[:, :, None], sin[:, :, None]  # [B, L, 1, D]: broadcast over heads
        for block in self.model.layers:
            x = block(x, cos, sin, attn_mask)
        return self.model.norm(x)

    def decode_weights(self, contiguous: bool = False) -> DecodeWeights:
        """The tensors `decode` and `extend` read, gathered once per rollout instead of once per step.

        Every projection is read through `_weight`, transposed ([in, out]: `x @ w_t`, the same
        matmul as F.linear). By default as views: plain weights are the parameters themselves, so
        in-place optimizer updates show through; a LoRA projection gives its merged weight,
        formed here, so gather after each optimizer step (the engine gathers once per call).
        `contiguous`: copies laid out [in, out] (one more copy of the weights while they live).
        On CPU a decode-sized matmul reads them 1.5-2.5x faster than a transposed view (measured,
        [16, 512] @ [512, 3072]: 328 us against 540 us), as the engine uses them there.
        """
        t = (lambda w: w.t().contiguous()) if contiguous else (lambda w: w.t())
        layers = []
        for block in self.model.layers:
            attn, mlp = block.self_attn, block.mlp
            layers.append(LayerWeights(
                input_norm=block.input_layernorm.weight,
                qkv_t=t(_weight(attn.qkv_proj)),
                qkv_bias=attn.qkv_proj.bias,
                o_t=t(_weight(attn.o_proj)),
                post_norm=block.post_attention_layernorm.weight,
                gate_up_t=t(_weight(mlp.gate_up_proj)),
                down_t=t(_weight(mlp.down_proj)),
                q_norm=attn.q_norm.weight if self.cfg.qk_norm else None,
                k_norm=attn.k_norm.weight if self.cfg.qk_norm else None,
            ))
        return DecodeWeights(layers, self.model.embed_tokens.weight, self.model.norm.weight, t(_weight(self.lm_head)))

    def decode(self, tokens, positions, key_bias, cache: KVCache, weights: DecodeWeights | None = None, rope=None,
               far=None):
        """The rollout step: one new token per row -> float32 logits [A, V].

        tokens [A] go to cache rows 0..A-1 at columns `positions` [A] (a tensor: each row has
        its own position, and the step has one shape whatever they are) and attend over cache
        columns [0, S) through key_bias, float32 [A * kv_heads, 1, S], additive, one row per row
        and KV head: 0 on the row's columns up to and including its new token, -inf elsewhere
        (unwritten or stale columns). rope is `rope_table(...)` [>= max position + 1, 2, D];
        `weights` is `decode_weights()`; both are gathered here if None, but callers that step
        many times pass them. far: None, or (rows [k], key_bias [k * kv_heads, 1, S']) for a few
        rows whose context reaches past S: those attend over [0, S') instead, so that the other
        rows do not pay for the longest row's span.

        The same weights and math as `forward` on one token, in fewer calls: at rollout batch
        sizes a step costs mostly per-call overhead (a module call alone costs about as much as
        a small kernel on CPU), so the layers are unrolled over the parameters (`_blocks`), with
        attention as two batched matmuls per layer (`decode_attention`, ~2x the fused CPU kernel
        for one query) and the residual adds folded into the output projections
        (`residual_linear`). Tests and `pillion logprob-check` compare it with `forward`.
        """
        weights = self.decode_weights() if weights is None else weights
        rope = rope_table(self.inv_freq, cache.max_len, weights.embedding.dtype) if rope is None else rope
        x = F.embedding(tokens, weights.embedding)  # [A, hidden]
        x = self._blocks(x, positions[:, None], None, key_bias, cache, weights, rope, far)
        return (rms_norm(x, weights.final_norm, self.cfg.rms_norm_eps) @ weights.lm_head_t).float()

    def extend(self, tokens, positions, rows, span: int, cache: KVCache, weights: DecodeWeights | None = None,
               rope=None) -> None:
        """Write L tokens per row into the cache, without logits: a prompt's prefill, or (later)
        tool output appended to a row that paused.

        tokens [A, L] (right-padded) go to cache rows `rows` [A] at columns `positions` [A, L];
        each attends over its row's columns [0, span) up to its own position, so a chunk may
        continue a row already in the cache. Padding entries must sit after a row's real tokens
        (at any column < max_len): their keys land beyond the row's context, where the engine
        masks them until they are overwritten. Peak memory is O(A * L * span * heads) for the
        scores, so the caller bounds A * L.
        """
        weights = self.decode_weights() if weights is None else weights
        rope = rope_table(self.inv_freq, cache.max_len, weights.embedding.dtype) if rope is None else rope
        cfg = self.cfg
        bias = causal_key_bias(positions, span, cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads)
        x = F.embedding(tokens.reshape(-1), weights.embedding)  # [A * L, hidden]
        self._blocks(x, positions, rows, bias, cache, weights, rope)

    def _blocks(self, x, positions, rows, key_bias, cache: KVCache, weights: DecodeWeights, rope, far=None):
        """The layers of the fast path over x [A * L, hidden] (L new tokens for each of A rows,
        at `positions` [A, L]); returns x after the last block. rows: cache rows [A], or None for
        rows 0..A-1 (the decode step: the cache is then read through views, not gathered); far:
        as `decode` takes it."""
        cfg = self.cfg
        h, kv, d, eps = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.rms_norm_eps
        g = h // kv  # query heads per KV head
        A, L = positions.shape
        span = key_bias.shape[-1]
        rot = rope[positions]  # [A, L, 2, D]
        cos, sin = rot[:, :, :1], rot[:, :, 1:]  # [A, L, 1, D]: broadcast over heads
        at = (torch.arange(A, device=x.device) if rows is None else rows)[:, None]  # [A, 1] cache row of each token
        for i, w in enumerate(weights.layers):
            normed = rms_norm(x, w.input_norm, eps)
            qkv = normed @ w.qkv_t if w.qkv_bias is None else torch.addmm(w.qkv_bias, normed, w.qkv_t)
            qkv = qkv.view(A, L, h + 2 * kv, d)
            if w.q_norm is not None:
                qk = torch.cat((rms_norm(qkv[:, :, :h], w.q_norm, eps), rms_norm(qkv[:, :, h : h + kv], w.k_norm, eps)),
                               dim=2)
            else:
                qk = qkv[:, :, : h + kv]
            qk = torch.addcmul(qk * cos, qk.roll(d // 2, -1), sin)  # apply_rope in one call fewer
            # Write the new keys and values at each token's own column (an index, so one graph
            # serves every position; index_put, which a compiled step does in place), then read
            # the rows back over [0, span).
            cache.k[i][at, :, :, positions] = qk[:, :, h:]  # [A, L, KV, D]
            cache.v[i][at, :, positions] = qkv[:, :, h + kv :]
            if rows is None:
                keys_t, values = cache.k[i][:A, ..., :span], cache.v[i][:A, :, :span]  # views
            else:
                keys_t, values = cache.k[i][rows, ..., :span], cache.v[i][rows, :, :span]  # gathered
            # Query rows grouped by KV head: [A * KV, G * L, D], ordered (head in group, token).
            if L == 1:
                q = qk[:, 0, :h].reshape(A * kv, g, d)
            else:
                q = qk[:, :, :h].reshape(A, L, kv, g, d).permute(0, 2, 3, 1, 4).reshape(A * kv, g * L, d)
            out = decode_attention(q, keys_t.reshape(A * kv, d, span), values.reshape(A * kv, span, d), key_bias)
            if far is not None:  # the far rows again over their longer span, gathered
                far_rows, far_bias = far
                k, far_span = far_rows.shape[0], far_bias.shape[-1]
                far_out = decode_attention(q.view(A, kv, g, d)[far_rows].reshape(k * kv, g, d),
                                           cache.k[i][far_rows, ..., :far_span].reshape(k * kv, d, far_span),
                                           cache.v[i][far_rows, :, :far_span].reshape(k * kv, far_span, d), far_bias)
                out.view(A, kv, g, d)[far_rows] = far_out.view(k, kv, g, d)
            if L > 1:
                out = out.view(A, kv, g, L, d).permute(0, 3, 1, 2, 4)
            x = residual_linear(x, out.reshape(A * L, h * d), w.o_t)
            gate, up = (rms_norm(x, w.post_norm, eps) @ w.gate_up_t).chunk(2, dim=-1)
            x = residual_linear(x, F.silu(gate) * up, w.down_t)
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits for hidden states [..., hidden] -> [..., vocab]."""
        return self.lm_head(hidden).float()


def padding_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """RoPE positions [B, L] from a 0/1 mask: the count of real tokens before each position."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def causal_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """bool [B, 1, L, L]: causal, keys restricted to real tokens.

    A padding query has no real key before it; it may see itself so that softmax stays finite
    (its output is never used).
    """
    length = attention_mask.shape[1]
    device = attention_mask.device
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    mask = causal[None] & attention_mask.bool()[:, None, :]  # [B, L, L]
    mask = mask | torch.eye(length, dtype=torch.bool, device=device)[None]
    return mask[:, None]
