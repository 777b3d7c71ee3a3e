"""The numerics that the training forward (transformer.py) and the rollout engine's fast path
(decode.py) share: RMSNorm and rotary position embeddings.

Both follow the Hugging Face reference implementations on purpose, so that a bf16 forward rounds
the same way: RMSNorm normalises in float32 and casts back before the weight multiply, and RoPE
tables are computed in float32 and cast to the activation dtype.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from pillion.model.transformer import ModelConfig


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
