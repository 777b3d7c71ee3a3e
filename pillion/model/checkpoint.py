"""Load and save model folders: Hugging Face folders <-> pillion's Transformer.

Loading: config.json is translated into a `ModelConfig` (hf_config.py), the module is built on
the meta device, and every tensor of the one or many *.safetensors files is checked by name and
shape (from the file header) and copied straight into place on the target device in the target
dtype, one tensor at a time, so a load never holds a second copy of the model (e.g. a float32
one on the CPU); then `load_state_dict(strict=True, assign=True)`, through the explicit key map
of hf_config.py. Saving writes safetensors (sharded with an index past `max_shard_bytes`), the
original config.json with the dtype updated, and the tokenizer and generation files
(tokenizer.py), so `transformers.AutoModelForCausalLM.from_pretrained` loads it unchanged.

A model with LoRA adapters is saved as a PEFT adapter folder (adapters.py); `load_model` on such
a folder loads the base and puts the adapters on.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pillion.model import adapters, hub, lora
from pillion.model.hf_config import CheckpointError, config_from_hf, hf_config_from, hf_layout, read_json, to_hf
from pillion.model.tokenizer import copy_tokenizer_files
from pillion.model.transformer import Transformer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "assets" / "tiny-arith"
# The same recipe, its answers often ending in a redundant self-check: something to shorten.
SHIPPED = {"default": DEFAULT_MODEL, "verbose": DEFAULT_MODEL.with_name("tiny-arith-verbose")}
STEP_DIR = re.compile(r"step-(\d+)")  # a run's checkpoint folders: checkpoints/step-000020


def resolve_model(name: str | Path) -> Path:
    """The model folder `name` stands for: "default" (the tiny SFT-warmed arithmetic model shipped
    with pillion), "verbose" (its sibling with redundant self-checks, for the methods that
    shorten reasoning), a Hugging Face folder, a PEFT adapter folder (a LoRA run's checkpoint), a run
    folder (its newest complete checkpoint; an SFT run's final model), or a Hugging Face Hub id
    `org/name[@revision]` (fetched into the Hub cache: hub.py)."""
    if hub.is_hub_id(str(name)):
        return hub.fetch(str(name))
    path = SHIPPED.get(str(name), Path(name))
    if not _is_model(path) and (path / "config.yaml").is_file():  # a run folder
        found = newest_checkpoint(path) or (path / "final" if _is_model(path / "final") else None)
        if found is None:
            raise CheckpointError(f"run folder {path} has no complete checkpoint yet (checkpoints/step-N)")
        return found
    if not _is_model(path):
        hint = " (regenerate it with scripts/make_default_model.py)" if str(name) in SHIPPED else ""
        raise CheckpointError(f"model folder {path} has no config.json (nor {adapters.ADAPTER_CONFIG}){hint}")
    return path


def _is_model(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / adapters.ADAPTER_CONFIG).is_file()


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """A run's complete checkpoints, oldest first: `checkpoints/step-N` folders renamed into place
    with their trainer state (a `.tmp` folder is a write that did not finish)."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := STEP_DIR.fullmatch(p.name)) and (p / "trainer_state.pt").is_file()]
    return [p for _, p in sorted(found)]


def newest_checkpoint(run_dir: Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


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
    if adapters.is_adapter_folder(path):
        config = adapters.read_adapter_config(path)
        model = load_model(adapters.base_folder(config), dtype, device)
        adapters.put_adapters(model, path, config)
        return model
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

    A model with LoRA adapters is written as a PEFT adapter folder instead (`adapters.save_adapters`).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if lora.has_adapters(model):
        adapters.save_adapters(model, path, source)
        copy_tokenizer_files(source, path)
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
    copy_tokenizer_files(source, path)


RECIPE_FILE = "pillion.json"  # how a checkpoint was trained: {"template": ..., "answer_style": ...}


def write_recipe(path: str | Path, recipe: dict[str, Any]) -> None:
    """Record in a model folder the prompt template and answer style it was trained with."""
    (Path(path) / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe a model folder records ({} when it has none, e.g. a Hugging Face download)."""
    file = Path(path) / RECIPE_FILE
    return read_json(file) if file.is_file() else {}
