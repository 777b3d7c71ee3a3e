"""LoRA adapters as PEFT adapter folders: adapter_config.json + adapter_model.safetensors (PEFT's
key names, float32, the base folder named inside), which `peft.PeftModel.from_pretrained` loads
onto the `transformers` model and `checkpoint.load_model` onto pillion's (the base, then
`read_adapter_config` and `put_adapters`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pillion.model import hub, lora
from pillion.model.hf_config import CheckpointError, read_json
from pillion.model.transformer import Transformer

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def is_adapter_folder(path: Path) -> bool:
    """A PEFT adapter folder: adapter_config.json and no config.json of a full model."""
    return (path / ADAPTER_CONFIG).exists() and not (path / "config.json").exists()


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
    from_hub = hub.snapshot_id(Path(base).resolve())  # a Hub model: its id and commit, as PEFT names them
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM",
              "base_model_name_or_path": from_hub[0] if from_hub else str(Path(base).resolve()),
              **({"revision": from_hub[1]} if from_hub else {}),
              "r": rank, "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
              "target_modules": targets, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
              "use_rslora": False, "use_dora": False, "init_lora_weights": True, "inference_mode": True,
              "modules_to_save": None}
    state = {k: v.detach().float().cpu().contiguous() for k, v in lora.peft_state(model).items()}
    for stale in [*path.glob("model*.safetensors*"), path / "config.json"]:
        stale.unlink(missing_ok=True)  # a full model left in the folder would shadow the adapters
    save_file(state, str(path / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (path / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))


def read_adapter_config(path: Path) -> dict[str, Any]:
    """adapter_config.json of an adapter folder, checked: only plain LoRA, a base folder that
    exists or a Hub id (`base_model_name_or_path`), a list of target projections."""
    config_file = path / ADAPTER_CONFIG
    config = read_json(config_file)  # malformed: a CheckpointError naming the file
    for key, allowed in PEFT_DEFAULTS.items():
        if config.get(key, allowed[0]) not in allowed:
            raise CheckpointError(f"{config_file}: field '{key}' = {config[key]!r} is not supported")
    if not isinstance(config.get("target_modules"), list):
        raise CheckpointError(f"{config_file}: field 'target_modules' must be a list of projection names")
    name = str(config.get("base_model_name_or_path") or "")
    if not hub.is_hub_id(name) and not (Path(name) / "config.json").exists():
        raise CheckpointError(f"{config_file}: field 'base_model_name_or_path' = {name!r} is not a model folder")
    return config


def base_folder(config: dict[str, Any]) -> Path:
    """The base model's folder an adapter_config.json (`read_adapter_config`) names: a folder, or a
    Hub id (with its `revision`) fetched into the Hub cache."""
    name = str(config.get("base_model_name_or_path") or "")
    if hub.is_hub_id(name):
        revision = config.get("revision")
        return hub.fetch(f"{name}@{revision}" if revision else name)
    return Path(name)


def put_adapters(model: Transformer, path: Path, config: dict[str, Any]) -> None:
    """Put the folder's adapters (`config`: `read_adapter_config`) on the base `model`, in place."""
    targets = config["target_modules"]
    try:
        lora.apply_lora(model, int(config["r"]), float(config["lora_alpha"]), targets)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path / ADAPTER_CONFIG}: {e}") from None
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
