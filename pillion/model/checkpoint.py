"""Hugging Face model folders <-> pillion's Transformer.

Loading: config.json is translated into a `ModelConfig` (unknown architectures and unsupported
switches fail naming the field), the module is built on the meta device, and every tensor of
the one or many *.safetensors files is checked by name and shape (from the file header) and
copied straight into place on the target device in the target dtype, one tensor at a time, so
a load never holds a second copy of the model (e.g. a float32 one on the CPU); then
`load_state_dict(strict=True, assign=True)`. The key map is explicit (`hf_layout`, `to_hf`):
the identity except pillion's fused `qkv_proj` (HF q/k/v_proj) and `gate_up_proj` (HF
gate/up_proj), whose HF tensors fill row ranges on load and are split on save. Saving writes
safetensors (sharded with an index past `max_shard_bytes`), the original config.json with the
dtype updated, and the tokenizer and generation files, so
`transformers.AutoModelForCausalLM.from_pretrained` loads it unchanged.

A model with LoRA adapters (lora.py) is saved as a PEFT adapter folder (adapter_config.json +
adapter_model.safetensors, PEFT's key names, the base folder named inside); `load_model` on
such a folder loads the base and puts the adapters on, and `peft.PeftModel.from_pretrained`
loads the same folder onto the `transformers` model.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pillion.errors import UserError
from pillion.model import lora
from pillion.model.lora import PARTS, part_rows
from pillion.model.transformer import ModelConfig, Transformer

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FUSED = ("self_attn.qkv_proj", "mlp.gate_up_proj")  # one pillion matmul, several HF tensors
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "assets" / "tiny-arith"


class CheckpointError(UserError):
    """A model folder that cannot be loaded; the message names the file, field or tensor."""


def resolve_model(name: str | Path) -> Path:
    """A model folder; "default" is the tiny SFT-warmed arithmetic model shipped with pillion."""
    path = DEFAULT_MODEL if str(name) == "default" else Path(name)
    if not (path / "config.json").exists() and not (path / ADAPTER_CONFIG).exists():
        hint = " (regenerate it with scripts/make_default_model.py)" if str(name) == "default" else ""
        raise CheckpointError(f"model folder {path} has no config.json (nor {ADAPTER_CONFIG}){hint}")
    return path


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
    from pillion.model.transformer import rope_inv_freq

    rope_inv_freq(cfg)  # validates the rope type now, with a named error
    return cfg


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


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no 'weight_map' object")
        files = sorted({path / name for name in weight_map.values()})
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors weights found")
    for f in files:
        if not f.exists():
            raise CheckpointError(f"{index}: shard {f.name} is listed but missing")
    return files


def read_json(file: Path) -> dict[str, Any]:
    """A JSON object from `file`; malformed or binary content is a CheckpointError naming it."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: malformed JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


@contextlib.contextmanager
def _open_safetensors(file: Path):
    """safe_open, with a corrupt or truncated file reported by name (safetensors raises at open)."""
    try:
        handle = safe_open(str(file), framework="pt", device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None
    with handle as st:
        yield st


def load_model(
    path: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu"
) -> Transformer:
    """Load a Hugging Face folder into a Transformer on `device` (dtype: as stored by default).

    Tensors are read one at a time and copied into place on the target device in the target
    dtype, so loading holds the model once plus one tensor: never a second (e.g. float32 CPU)
    copy of the whole model, and nothing left mapped from the file once it returns. A PEFT
    adapter folder (adapter_config.json, no config.json) loads its base model with the adapters on.
    """
    path = Path(path)
    if (path / ADAPTER_CONFIG).exists() and not (path / "config.json").exists():
        return load_adapter_folder(path, dtype, device)
    config_file = path / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{path}: config.json not found")
    hf = read_json(config_file)
    cfg = config_from_hf(hf, config_file)
    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    with torch.device("meta"):
        model = Transformer(cfg)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    layout = hf_layout(cfg, shapes)
    if cfg.tie_word_embeddings:
        layout.pop("lm_head.weight")
    state: dict[str, torch.Tensor] = {}
    seen: set[str] = set()
    for f in _weight_files(path):
        with _open_safetensors(f) as st:
            for key in st.keys():
                if key == "lm_head.weight" and cfg.tie_word_embeddings:
                    continue  # some tied checkpoints store the shared matrix twice
                if key not in layout:
                    raise CheckpointError(f"{f}: unexpected tensor '{key}' for a {cfg.family} model")
                target, rows, expected = layout[key]
                shape = tuple(st.get_slice(key).get_shape())  # read from the header, before the data
                if shape != expected:
                    raise CheckpointError(f"{f}: tensor '{key}' has shape {shape}, expected {expected}")
                t = st.get_tensor(key)
                if rows == slice(None):
                    u = t.to(device=device, dtype=dtype or t.dtype)
                    # Already right, `t` is a view of the file's memory map: copy it, or the map (the
                    # whole file, fused q/k/v and gate/up sources included) stays resident beside
                    # the model for as long as one such view lives (+1 GiB RSS at Qwen2.5-0.5B).
                    state[target] = u.clone() if u is t else u
                else:
                    if target not in state:
                        state[target] = torch.empty(shapes[target], dtype=dtype or t.dtype, device=device)
                    state[target][rows].copy_(t)
                seen.add(key)
    missing = sorted(set(layout) - seen)
    if missing:
        raise CheckpointError(
            f"{path}: tensor '{missing[0]}' is missing"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    model.load_state_dict(state, strict=not cfg.tie_word_embeddings, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.reset_rope(device)
    model.hf_config = hf  # kept so a save writes back the same config.json
    model.base_path = path.resolve()  # named by adapter_config.json when adapters are saved
    return model


def save_model(
    model: Transformer, path: str | Path, source: str | Path | None = None, max_shard_bytes: int = 5 * 2**30
) -> None:
    """Write a Hugging Face folder; copy tokenizer and generation files from `source` if given.

    A model with LoRA adapters is written as a PEFT adapter folder instead (`save_adapters`).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if lora.has_adapters(model):
        save_adapters(model, path, source)
        _copy_tokenizer(source, path)
        return
    state = {k: v.detach().cpu().clone() for k, v in to_hf(model.state_dict(), model.cfg).items()}
    if model.cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(state):
        nbytes = state[key].numel() * state[key].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = state[key]
        size += nbytes
    for stale in path.glob("model*.safetensors*"):
        stale.unlink()
    if len(shards) == 1:
        save_file(shards[0], str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(path / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    hf = dict(getattr(model, "hf_config", None) or hf_config_from(model.cfg))
    dtype_name = {v: k for k, v in DTYPES.items()}[model.lm_head.weight.dtype]
    hf["torch_dtype" if "torch_dtype" in hf else "dtype"] = dtype_name
    (path / "config.json").write_text(json.dumps(hf, indent=2))
    _copy_tokenizer(source, path)


def _copy_tokenizer(source: str | Path | None, path: Path) -> None:
    if source is not None and Path(source).resolve() != path.resolve():
        for name in TOKENIZER_FILES:
            if (Path(source) / name).exists():
                shutil.copy(Path(source) / name, path / name)


# adapter_config.json fields whose non-default values change the adapter's math; refused by name.
PEFT_DEFAULTS = {"peft_type": ("LORA",), "use_dora": (False, None), "use_rslora": (False, None),
                 "bias": ("none", None), "fan_in_fan_out": (False, None), "modules_to_save": (None, []),
                 "rank_pattern": ({}, None), "alpha_pattern": ({}, None), "layers_to_transform": (None, []),
                 "target_parameters": (None, []), "trainable_token_indices": (None,)}


def save_adapters(model: Transformer, path: Path, source: str | Path | None = None) -> None:
    """PEFT's layout: adapter_config.json and adapter_model.safetensors (float32, PEFT key names).

    `base_model_name_or_path` is the folder the base was loaded from (else `source`), as an
    absolute path, so `PeftModel.from_pretrained` and `load_model` find the base.
    """
    base = getattr(model, "base_path", None) or source
    if base is None:
        raise CheckpointError(f"{path}: saving adapters needs the base model's folder (pass source=)")
    rank, alpha, targets = lora.settings(model)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(Path(base).resolve()),
              "r": rank, "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
              "target_modules": targets, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
              "use_rslora": False, "use_dora": False, "init_lora_weights": True, "inference_mode": True,
              "modules_to_save": None}
    state = {k: v.detach().float().cpu().contiguous() for k, v in lora.peft_state(model).items()}
    for stale in [*path.glob("model*.safetensors*"), path / "config.json"]:
        stale.unlink(missing_ok=True)  # a full model left in the folder would shadow the adapters
    save_file(state, str(path / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (path / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))


def load_adapter_folder(path: Path, dtype=None, device: str | torch.device = "cpu") -> Transformer:
    """The base model named by adapter_config.json with the folder's LoRA adapters on."""
    config_file = path / ADAPTER_CONFIG
    config = json.loads(config_file.read_text())
    for key, allowed in PEFT_DEFAULTS.items():
        if config.get(key, allowed[0]) not in allowed:
            raise CheckpointError(f"{config_file}: field '{key}' = {config[key]!r} is not supported")
    base = Path(config.get("base_model_name_or_path") or "")
    if not (base / "config.json").exists():
        raise CheckpointError(f"{config_file}: field 'base_model_name_or_path' = {str(base)!r} is not a model folder")
    targets = config.get("target_modules")
    if not isinstance(targets, list):
        raise CheckpointError(f"{config_file}: field 'target_modules' must be a list of projection names")
    model = load_model(base, dtype, device)
    try:
        lora.apply_lora(model, int(config["r"]), float(config["lora_alpha"]), targets)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{config_file}: {e}") from None
    weights = path / ADAPTER_WEIGHTS
    if not weights.exists():
        raise CheckpointError(f"{path}: {ADAPTER_WEIGHTS} not found")
    expected = lora.peft_state(model)
    with safe_open(str(weights), framework="pt", device="cpu") as st:
        found = set(st.keys())
        unexpected = sorted(found - set(expected))
        if unexpected:
            raise CheckpointError(f"{weights}: unexpected tensor '{unexpected[0]}' for targets {targets}")
        for key, param in expected.items():
            if key not in found:
                raise CheckpointError(f"{weights}: tensor '{key}' is missing")
            t = st.get_tensor(key)
            if t.shape != param.shape:
                raise CheckpointError(f"{weights}: tensor '{key}' has shape {tuple(t.shape)}, "
                                      f"expected {tuple(param.shape)}")
            with torch.no_grad():
                param.copy_(t)
    return model


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


def load_tokenizer(path: str | Path):
    """The folder's tokenizer (tokenizer.json + tokenizer_config.json, with its chat template)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        raise CheckpointError(f"{path}: no tokenizer.json or tokenizer_config.json")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # a malformed tokenizer file surfaces as many exception types
        raise CheckpointError(f"{path}: cannot load the tokenizer ({type(e).__name__}: {e})") from None


def eos_token_ids(path: str | Path, tokenizer) -> list[int]:
    """Stop ids: generation_config.json's eos_token_id (int or list) plus the tokenizer's EOS."""
    ids: list[int] = []
    gen = Path(path) / "generation_config.json"
    if gen.exists():
        eos = read_json(gen).get("eos_token_id")
        ids += eos if isinstance(eos, list) else ([eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


RECIPE_FILE = "pillion.json"  # how a checkpoint was trained: {"template": ..., "answer_style": ...}


def write_recipe(path: str | Path, recipe: dict[str, Any]) -> None:
    """Record in a model folder the prompt template and answer style it was trained with."""
    (Path(path) / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe a model folder records ({} when it has none, e.g. a Hugging Face download)."""
    file = Path(path) / RECIPE_FILE
    return read_json(file) if file.is_file() else {}
