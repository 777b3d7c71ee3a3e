"""Hugging Face config.json <-> `ModelConfig`, and the map between HF tensor names and pillion's.

`config_from_hf` translates a config.json (unknown architectures and unsupported switches fail
naming the field); `hf_config_from` writes one for a model built in code. The key map is
explicit (`hf_layout`, `to_hf`): the identity except pillion's fused `qkv_proj` (HF
q/k/v_proj) and `gate_up_proj` (HF gate/up_proj), whose HF tensors fill row ranges on load and
are split on save. `CheckpointError` is the one error every model-folder reader raises.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pillion.errors import UserError
from pillion.model.layers import rope_inv_freq
from pillion.model.lora import PARTS, part_rows
from pillion.model.transformer import ModelConfig

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}
FUSED = ("self_attn.qkv_proj", "mlp.gate_up_proj")  # one pillion matmul, several HF tensors


class CheckpointError(UserError):
    """A model folder that cannot be loaded; the message names the file, field or tensor."""


def read_json(file: Path) -> dict[str, Any]:
    """A JSON object from `file`; malformed or binary content is a CheckpointError naming it."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: malformed JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def _field(hf: dict[str, Any], name: str, path: Path):
    if name not in hf:
        raise CheckpointError(f"{path}: config.json is missing field '{name}'")
    return hf[name]


def config_from_hf(hf: dict[str, Any], path: Path = Path("config.json")) -> ModelConfig:
    """Translate a Hugging Face config dict; refuse what the module does not implement."""
    archs = hf.get("architectures") or []
    if len(archs) != 1 or archs[0] not in ARCHITECTURES:
        raise CheckpointError(
            f"{path}: config.json field 'architectures' is {archs!r}; supported: {sorted(ARCHITECTURES)}"
        )
    family = ARCHITECTURES[archs[0]]
    num_heads = _field(hf, "num_attention_heads", path)
    hidden = _field(hf, "hidden_size", path)
    # transformers >= 5 nests theta and scaling in `rope_parameters`; older files keep them flat.
    rope = dict(hf.get("rope_parameters") or {})
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    if family == "llama" and hf.get("mlp_bias"):
        raise CheckpointError(f"{path}: config.json field 'mlp_bias' = true is not supported")
    if hf.get("use_sliding_window"):
        raise CheckpointError(f"{path}: config.json field 'use_sliding_window' = true is not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(
            f"{path}: config.json field 'hidden_act' = {hf['hidden_act']!r}; only 'silu' is supported"
        )
    cfg = ModelConfig(
        family=family,
        vocab_size=_field(hf, "vocab_size", path),
        hidden_size=hidden,
        intermediate_size=_field(hf, "intermediate_size", path),
        num_layers=_field(hf, "num_hidden_layers", path),
        num_heads=num_heads,
        num_kv_heads=hf.get("num_key_value_heads") or num_heads,
        head_dim=hf.get("head_dim") or hidden // num_heads,
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(theta),
        rope_scaling=scaling,
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=True if family == "qwen2" else bool(hf.get("attention_bias", False)),
        qk_norm=family == "qwen3",
    )
    rope_inv_freq(cfg)  # validates the rope type now, with a named error
    return cfg


def hf_config_from(cfg: ModelConfig) -> dict[str, Any]:
    """A config.json for a model built in code (tests, the embedded default)."""
    arch = {v: k for k, v in ARCHITECTURES.items()}[cfg.family]
    hf = {
        "architectures": [arch],
        "model_type": cfg.family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "hidden_act": "silu",
    }
    if cfg.rope_scaling:
        hf["rope_scaling"] = cfg.rope_scaling
    if cfg.family != "qwen2":
        hf["attention_bias"] = cfg.attention_bias
    return hf


def to_hf(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """pillion state dict -> Hugging Face tensors (fused projections split into row views)."""
    layout = hf_layout(cfg, {k: v.shape for k, v in state.items()})
    return {hf_key: state[key][rows] for hf_key, (key, rows, _) in layout.items()}


def hf_layout(cfg: ModelConfig, shapes: dict[str, torch.Size]) -> dict[str, tuple[str, slice, tuple]]:
    """Hugging Face tensor name -> (pillion key, rows of that tensor it fills, its expected shape).

    The identity except the fused projections: "model.layers.0.self_attn.k_proj.weight" fills
    rows [q, q + kv) of "model.layers.0.self_attn.qkv_proj.weight".
    """
    out = {}
    for key, shape in shapes.items():
        fused = next((f for f in FUSED if key.endswith((f".{f}.weight", f".{f}.bias"))), None)
        if fused is None:
            out[key] = (key, slice(None), tuple(shape))
            continue
        prefix, suffix = key.split(f"{fused}.")
        parent = fused.split(".")[0]
        start = 0
        for name, rows in zip(PARTS[fused], part_rows(cfg, fused)):
            out[f"{prefix}{parent}.{name}.{suffix}"] = (key, slice(start, start + rows), (rows, *shape[1:]))
            start += rows
    return out
