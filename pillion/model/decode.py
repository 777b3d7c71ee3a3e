"""The rollout engine's fast path over a KV cache: `decode` (one new token per row -> logits) and
`extend` (a prompt's prefill, or tool output, written into the cache without logits).

The same weights and math as `Transformer.forward`, in fewer calls: at rollout batch sizes a
step costs mostly per-call overhead (a module call alone costs about as much as a small kernel
on CPU), so the layers are unrolled over a per-layer record of tensors (`DecodeWeights`,
gathered once per rollout), attention is two batched matmuls per layer (`decode_attention`)
and the residual adds are folded into the output projections (`residual_linear`). The model
exposes these as `Transformer.decode`, `.extend` and `.decode_weights`, the interface the
engine (rollout/engine.py) calls; tests and `pillion logprob-check` compare them with `forward`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from pillion.model.layers import rms_norm, rope_tables

if TYPE_CHECKING:
    from pillion.model.transformer import ModelConfig, Transformer


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


def decode_weights(model: Transformer, contiguous: bool = False) -> DecodeWeights:
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
    for block in model.model.layers:
        attn, mlp = block.self_attn, block.mlp
        layers.append(LayerWeights(
            input_norm=block.input_layernorm.weight,
            qkv_t=t(_weight(attn.qkv_proj)),
            qkv_bias=attn.qkv_proj.bias,
            o_t=t(_weight(attn.o_proj)),
            post_norm=block.post_attention_layernorm.weight,
            gate_up_t=t(_weight(mlp.gate_up_proj)),
            down_t=t(_weight(mlp.down_proj)),
            q_norm=attn.q_norm.weight if model.cfg.qk_norm else None,
            k_norm=attn.k_norm.weight if model.cfg.qk_norm else None,
        ))
    return DecodeWeights(layers, model.model.embed_tokens.weight, model.model.norm.weight, t(_weight(model.lm_head)))


def decode(model: Transformer, tokens, positions, key_bias, cache: KVCache, weights: DecodeWeights | None = None,
           rope=None, far=None):
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
    weights = decode_weights(model) if weights is None else weights
    rope = rope_table(model.inv_freq, cache.max_len, weights.embedding.dtype) if rope is None else rope
    x = F.embedding(tokens, weights.embedding)  # [A, hidden]
    x = _blocks(model.cfg, x, positions[:, None], None, key_bias, cache, weights, rope, far)
    return (rms_norm(x, weights.final_norm, model.cfg.rms_norm_eps) @ weights.lm_head_t).float()


def extend(model: Transformer, tokens, positions, rows, span: int, cache: KVCache,
           weights: DecodeWeights | None = None, rope=None) -> None:
    """Write L tokens per row into the cache, without logits: a prompt's prefill, or (later)
    tool output appended to a row that paused.

    tokens [A, L] (right-padded) go to cache rows `rows` [A] at columns `positions` [A, L];
    each attends over its row's columns [0, span) up to its own position, so a chunk may
    continue a row already in the cache. Padding entries must sit after a row's real tokens
    (at any column < max_len): their keys land beyond the row's context, where the engine
    masks them until they are overwritten. Peak memory is O(A * L * span * heads) for the
    scores, so the caller bounds A * L.
    """
    weights = decode_weights(model) if weights is None else weights
    rope = rope_table(model.inv_freq, cache.max_len, weights.embedding.dtype) if rope is None else rope
    cfg = model.cfg
    bias = causal_key_bias(positions, span, cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads)
    x = F.embedding(tokens.reshape(-1), weights.embedding)  # [A * L, hidden]
    _blocks(model.cfg, x, positions, rows, bias, cache, weights, rope)


def _blocks(cfg: ModelConfig, x, positions, rows, key_bias, cache: KVCache, weights: DecodeWeights, rope, far=None):
    """The layers of the fast path over x [A * L, hidden] (L new tokens for each of A rows,
    at `positions` [A, L]); returns x after the last block. rows: cache rows [A], or None for
    rows 0..A-1 (the decode step: the cache is then read through views, not gathered); far:
    as `decode` takes it."""
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
