"""One decoder-only transformer for the Llama, Qwen2/Qwen2.5 and Qwen3 families.

The same module serves every role in an RL run: the policy being trained, the frozen
reference, the critic's trunk, and the rollout engine's incremental forward over a KV cache.
Using one implementation everywhere is what keeps the engine's log-probabilities equal to the
trainer's (shared/DESIGN.md, "The one idea"); `pillion logprob-check` proves it per checkpoint.

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
    extra: dict[str, Any] = field(default_factory=dict)


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


class KVCache:
    """A preallocated cache: per layer, keys stored transposed [B, kv_heads, head_dim, max_len]
    and values [B, kv_heads, max_len, head_dim].

    Keys are transposed so that a decode step's scores q @ K^T read them in the layout a
    matmul wants (about 2x faster for one query per row on CPU). Allocated once per engine
    and reused across calls; new keys are copied into place, so the tensors never change
    shape (what CUDA-graph capture needs).
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype):
        shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        shape_t = (batch, cfg.num_kv_heads, cfg.head_dim, max_len)
        self.k = [torch.zeros(shape_t, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.batch, self.max_len = batch, max_len

    def keep_rows(self, rows: torch.Tensor, length: int) -> None:
        """Compact: move rows `rows[j]` to row j (first `length` positions); drops the others."""
        self.expand_rows(rows, length)

    def expand_rows(self, rows: torch.Tensor, length: int) -> None:
        """Copy cache rows `rows[j]` into row j for the first `length` positions (prompt sharing)."""
        for layer in range(len(self.k)):
            self.k[layer][: len(rows), ..., :length] = self.k[layer][rows, ..., :length]
            self.v[layer][: len(rows), :, :length] = self.v[layer][rows, :, :length]


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

    def forward(self, x, cos, sin, attn_mask, cache: KVCache | None, layer: int, cache_pos: int, kv_len: int):
        bsz, length, _ = x.shape
        cfg = self.cfg
        h, kv = cfg.num_heads, cfg.num_kv_heads
        qkv = self.qkv_proj(x).view(bsz, length, h + 2 * kv, cfg.head_dim)  # [B, L, heads, D]
        if cfg.qk_norm:
            qk = torch.cat((self.q_norm(qkv[:, :, :h]), self.k_norm(qkv[:, :, h : h + kv])), dim=2)
        else:
            qk = qkv[:, :, : h + kv]
        qk = apply_rope(qk, cos, sin)  # q and k rotated together
        q = qk[:, :, :h].transpose(1, 2)  # [B, H, L, D]
        k = qk[:, :, h:].transpose(1, 2)  # [B, KV, L, D]
        v = qkv[:, :, h + kv :].transpose(1, 2)
        if cache is not None:
            # Write this step's keys at [cache_pos, cache_pos + L) and attend over [0, kv_len).
            cache.k[layer][:bsz, :, :, cache_pos : cache_pos + length] = k.transpose(-1, -2)
            cache.v[layer][:bsz, :, cache_pos : cache_pos + length] = v
            if cache_pos > 0:  # attend over the cached prefix too (from 0 the new keys are all)
                k = cache.k[layer][:bsz, :, :, :kv_len].transpose(-1, -2)
                v = cache.v[layer][:bsz, :, :kv_len]
        # No mask means no padding: plain causal attention over the (cached) prefix.
        causal = attn_mask is None and length > 1
        if causal and cache_pos != 0:
            raise ValueError("a multi-token step after cache_pos 0 needs an explicit attn_mask")
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=causal, enable_gqa=h != kv
        )  # [B, H, L, D]
        return self.o_proj(out.transpose(1, 2).reshape(bsz, length, h * cfg.head_dim))


def decode_attention(q, keys_t, values, key_bias):
    """Attention of one query per row, grouped by KV head: q [N, G, D], keys_t [N, D, S] (keys
    transposed, as the cache stores them), values [N, S, D].

    N = rows x KV heads; the G query heads that share a KV head are the G rows of one small
    matmul, so no key is repeated. key_bias: float32 additive [N, 1, S] (-inf = masked).
    Scores and softmax are float32, as the fused attention kernels accumulate.
    """
    scale = q.shape[-1] ** -0.5
    if q.dtype == torch.float32:  # scale and bias in the matmul: one call instead of three
        scores = torch.baddbmm(key_bias, q, keys_t, alpha=scale)
    else:
        scores = torch.bmm(q, keys_t).float() * scale + key_bias
    return torch.bmm(scores.softmax(-1).to(values.dtype), values)  # [N, G, D]


def linear_weight(linear: nn.Module) -> torch.Tensor:
    """The matrix a fast path multiplies by: the parameter itself, or for a LoRA linear
    (pillion/model/lora.py) the base weight with its adapters merged (a new tensor)."""
    merged = getattr(linear, "merged_weight", None)
    return linear.weight if merged is None else merged()


def residual_linear(x: torch.Tensor, a: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x + a @ weight.T, in one addmm call in float32 (other dtypes round the matmul first, as HF)."""
    if x.dtype == torch.float32:
        return torch.addmm(x, a, weight.t())
    return x + F.linear(a, weight)


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

    def forward(self, x, cos, sin, attn_mask, cache, layer, cache_pos, kv_len):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, cache, layer, cache_pos, kv_len)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """Embedding, blocks and final norm; named as in Hugging Face checkpoints (`model.*`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Transformer(nn.Module):
    """The model. `forward` returns final hidden states; `logits` applies the LM head.

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
        positions: torch.Tensor | None,  # [B, L] RoPE positions (real tokens before each); None with rope
        attn_mask: torch.Tensor | None,  # bool [B, 1, L, kv_len], True = may attend; None = causal
        cache: KVCache | None = None,
        cache_pos: int = 0,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Final hidden states [B, L, hidden]. With a cache, keys go to [cache_pos, cache_pos+L).

        `rope` may pass precomputed (cos, sin) [B, L, 1, D] for `positions` (the engine does,
        from a table built once per call).
        """
        x = self.model.embed_tokens(input_ids)
        if rope is None:
            cos, sin = rope_tables(self.inv_freq, positions, x.dtype)
            rope = cos[:, :, None], sin[:, :, None]
        cos, sin = rope
        kv_len = cache_pos + input_ids.shape[1]
        for i, block in enumerate(self.model.layers):
            x = block(x, cos, sin, attn_mask, cache, i, cache_pos, kv_len)
        return self.model.norm(x)

    def decode_weights(self) -> list[tuple]:
        """The tensors `decode` reads, gathered once per rollout instead of once per step.

        One tuple per layer (input norm, q|k|v weight and bias, o weight, post-attention norm,
        gate|up and down weights, q and k norms), then (embedding, final norm, LM head). They are
        the parameters themselves, so in-place optimizer updates show through; gather again
        after replacing a parameter object. A LoRA projection gives its merged weight, formed
        here (so gather after each optimizer step; the engine gathers once per `generate`).
        """
        layers = []
        for block in self.model.layers:
            attn, mlp = block.self_attn, block.mlp
            layers.append((block.input_layernorm.weight, linear_weight(attn.qkv_proj), attn.qkv_proj.bias,
                           linear_weight(attn.o_proj), block.post_attention_layernorm.weight,
                           linear_weight(mlp.gate_up_proj), linear_weight(mlp.down_proj),
                           attn.q_norm.weight if self.cfg.qk_norm else None,
                           attn.k_norm.weight if self.cfg.qk_norm else None))
        layers.append((self.model.embed_tokens.weight, self.model.norm.weight, self.lm_head.weight))
        return layers

    def decode(self, tokens, cos, sin, key_bias, cache: KVCache, pos: int, weights: list[tuple] | None = None):
        """The rollout step: one new token per row -> float32 logits [A, V].

        tokens [A] are written to cache index `pos` (the same for every row: the engine
        left-pads prompts) and attend over cache positions [0, pos]; cos, sin [A, 1, head_dim]
        rotate them at each row's own RoPE position; key_bias float32 [A * kv_heads, 1, pos + 1]
        is additive (-inf on prompt padding), one row per row and KV head. `weights` is
        `decode_weights()`, passed in by callers that step many times (gathered here if None).

        The same weights and math as `forward` on one token, in fewer calls: at rollout batch
        sizes a step costs mostly per-call overhead (a module call alone costs about as much as
        a small kernel on CPU), so the layers are unrolled here over the parameters, with
        attention as two batched matmuls per layer (`decode_attention`, ~2x the fused CPU kernel
        for one query) and the residual adds folded into the output projections
        (`residual_linear`). `pillion logprob-check` compares it with `forward`.
        """
        cfg = self.cfg
        h, kv, d, eps = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.rms_norm_eps
        rows, length = tokens.shape[0], pos + 1
        weights = self.decode_weights() if weights is None else weights
        embedding, final_norm, lm_head = weights[-1]
        x = F.embedding(tokens, embedding)  # [A, hidden]
        for i, (norm1, w_qkv, b_qkv, w_o, norm2, w_gate_up, w_down, q_norm, k_norm) in enumerate(weights[:-1]):
            qkv = F.linear(rms_norm(x, norm1, eps), w_qkv, b_qkv).view(rows, h + 2 * kv, d)
            if q_norm is not None:
                qk = torch.cat((rms_norm(qkv[:, :h], q_norm, eps), rms_norm(qkv[:, h : h + kv], k_norm, eps)), dim=1)
            else:
                qk = qkv[:, : h + kv]
            qk = torch.addcmul(qk * cos, qk.roll(d // 2, -1), sin)  # apply_rope in one call fewer
            keys_t, values = cache.k[i][:rows], cache.v[i][:rows]
            keys_t[..., pos:length] = qk[:, h:, :, None]  # a slice, not an index: one graph for all pos
            values[:, :, pos:length] = qkv[:, h + kv :, None]
            keys_t = keys_t[..., :length].reshape(rows * kv, d, length)  # views, no copy
            values = values[:, :, :length].reshape(rows * kv, length, d)
            out = decode_attention(qk[:, :h].reshape(rows * kv, h // kv, d), keys_t, values, key_bias)
            x = residual_linear(x, out.view(rows, h * d), w_o)
            gate, up = F.linear(rms_norm(x, norm2, eps), w_gate_up).chunk(2, dim=-1)
            x = residual_linear(x, F.silu(gate) * up, w_down)
        return F.linear(rms_norm(x, final_norm, eps), lm_head).float()

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
