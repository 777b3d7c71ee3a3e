"""Tiny random-initialised checkpoints, built in code: for tests and the CPU default.

Nothing here downloads anything. The tokenizer is byte-level with no merges (one token per
UTF-8 byte, plus three special tokens), so any text round-trips and a digit is one token,
which suits arithmetic. Weights are initialised by `transformers` itself, so a checkpoint
made here is an independent reference for pillion's loader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pillion.fields import bounded, reject

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer():
    """A `PreTrainedTokenizerFast`: 256 byte tokens + <|endoftext|> (EOS, pad) + chat markers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def _heads_divide_hidden(num_heads: int, tiny: TinyModelConfig) -> None:
    if tiny.hidden_size % num_heads or (tiny.hidden_size // num_heads) % 2:
        raise reject(num_heads, f"does not split tiny.hidden_size={tiny.hidden_size} into even head sizes",
                     "a divisor of hidden_size that leaves an even head size (rotary embeddings rotate pairs)")


def _kv_heads_divide_heads(num_kv_heads: int, tiny: TinyModelConfig) -> None:
    if tiny.num_heads % num_kv_heads:
        raise reject(num_kv_heads, f"does not divide tiny.num_heads={tiny.num_heads}", "a divisor of num_heads")


@dataclass
class TinyModelConfig:
    """Sizes of a fresh random model (`sft init=tiny`), built by `make_tiny_checkpoint`."""

    family: Literal["llama", "qwen2", "qwen3"] = "qwen2"
    hidden_size: int = bounded(128, low=1)
    num_layers: int = bounded(4, low=1)
    num_heads: int = bounded(4, low=1, check=_heads_divide_hidden)
    num_kv_heads: int = bounded(2, low=1, check=_kv_heads_divide_heads)
    intermediate_size: int = bounded(384, low=1)
    tie_word_embeddings: bool = True


FAMILY_DEFAULTS = {
    "llama": dict(attention_bias=False),
    "qwen2": dict(),
    "qwen3": dict(attention_bias=False),
}


def make_tiny_checkpoint(
    path: str | Path,
    family: str = "qwen2",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    tie_word_embeddings: bool = False,
    rope_theta: float = 10000.0,
    rope_scaling: dict | None = None,
    max_position_embeddings: int = 2048,
    seed: int = 0,
    dtype: str = "float32",
) -> Path:
    """Write config.json + model.safetensors + tokenizer files for a random model; return path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    classes = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    }
    config_cls, model_cls = classes[family]
    tokenizer = make_tokenizer()
    vocab = ((len(tokenizer) + 63) // 64) * 64  # padded like real checkpoints
    kwargs = dict(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        rope_theta=rope_theta,
        rms_norm_eps=1e-6,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        **FAMILY_DEFAULTS[family],
    )
    if rope_scaling is not None:
        kwargs["rope_scaling"] = rope_scaling
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs)).to(getattr(torch, dtype))
    # Norm weights start at 1 in transformers; perturb them so a loader bug in a norm shows.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    path = Path(path)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path
