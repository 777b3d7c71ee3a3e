"""One decoder-only transformer for the Llama, Qwen2/Qwen2.5 and Qwen3 families.

The same module serves every role in an RL run: the policy being trained, the frozen
reference, the critic's trunk, and the rollout engine's fast path over a KV cache (`decode`,
`extend`: the same weights and math, unrolled over a per-layer record of tensors, in
decode.py). Using one model everywhere is what keeps the engine's log-probabilities equal to
the trainer's; `pillion logprob-check` proves it per checkpoint.

Numerics follow the Hugging Face reference implementations on purpose, so that a bf16 forward
rounds the same way (layers.py: RMSNorm in float32, RoPE tables in float32 cast to the
activation dtype); attention runs through `scaled_dot_product_attention`, or over packed rows
without padding (packed.py), and logits are taken to float32 before any log-softmax.

Families differ only in switches on `ModelConfig`: QKV bias (Qwen2), per-head QK RMSNorm
(Qwen3), tied embeddings (small Qwen models), and the RoPE frequency rule (Llama-3 scaling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pillion.model import decode as fast_path
from pillion.model.layers import RMSNorm, apply_rope, rope_inv_freq, rope_tables
from pillion.model.packed import PackedRows, packed_attention


@dataclass
class ModelConfig:
    """Sizes and switches of one checkpoint, read from its config.json (hf_config.py)."""

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


class Transformer(nn.Module):
    """The model. `forward` returns final hidden states; `logits` applies the LM head; `decode`
    and `extend` are the rollout engine's fast path over a KV cache.

    Parameter names follow Hugging Face (`model.layers.0.self_attn.o_proj.weight`, ...) except
    two fused projections, `qkv_proj` and `gate_up_proj` (one matmul instead of three or two);
    hf_config.py maps them to and from the HF tensors explicitly.
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

    def decode_weights(self, contiguous: bool = False) -> fast_path.DecodeWeights:
        """The tensors `decode` and `extend` read, gathered once per rollout (decode.py)."""
        return fast_path.decode_weights(self, contiguous)

    def decode(self, tokens, positions, key_bias, cache: fast_path.KVCache,
               weights: fast_path.DecodeWeights | None = None, rope=None, far=None) -> torch.Tensor:
        """The rollout step: one new token per row -> float32 logits [A, V] (`decode.decode`)."""
        return fast_path.decode(self, tokens, positions, key_bias, cache, weights, rope, far)

    def extend(self, tokens, positions, rows, span: int, cache: fast_path.KVCache,
               weights: fast_path.DecodeWeights | None = None, rope=None) -> None:
        """Write L tokens per row into the cache without logits: a prefill (`decode.extend`)."""
        fast_path.extend(self, tokens, positions, rows, span, cache, weights, rope)

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
