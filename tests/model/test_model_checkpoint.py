"""Hugging Face folders: round trips, transformers compatibility and named errors."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from pillion.model.checkpoint import load_model, save_model
from pillion.model.hf_config import CheckpointError
from tests.conftest import FAMILIES


def _state(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_is_bit_identical(tiny_checkpoint, tmp_path, family):
    src = tiny_checkpoint(family)
    model = load_model(src)
    save_model(model, tmp_path / "out", source=src)
    original, saved = _state(type(tmp_path)(src)), _state(tmp_path / "out")
    assert original.keys() == saved.keys()
    for key in original:
        assert original[key].dtype == saved[key].dtype
        assert torch.equal(original[key], saved[key]), key
    # And a second load of the saved folder equals the first model, tensor for tensor.
    again = load_model(tmp_path / "out")
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def test_transformers_loads_saved_folder_unchanged(tiny_checkpoint, tmp_path):
    src = tiny_checkpoint("qwen3", tie_word_embeddings=True)
    model = load_model(src)
    with torch.no_grad():
        model.model.layers[0].mlp.gate_up_proj.weight.mul_(1.5)  # a change the reload must show
    save_model(model, tmp_path / "out", source=src)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    ids = torch.arange(3, 15)[None]
    with torch.no_grad():
        ours = model.logits(model(ids, torch.arange(12)[None], None))
        theirs = hf(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    assert (tmp_path / "out" / "tokenizer.json").exists()


def test_sharded_save_and_load(tiny_checkpoint, tmp_path):
    model = load_model(tiny_checkpoint("llama"))
    save_model(model, tmp_path / "sharded", source=tiny_checkpoint("llama"), max_shard_bytes=40_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    again = load_model(tmp_path / "sharded")
    for (k, v), (_, w) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(v, w), k
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "sharded"))
    assert torch.equal(hf.model.norm.weight, model.model.norm.weight.detach())


def test_bf16_load_and_save(tiny_checkpoint, tmp_path):
    model = load_model(tiny_checkpoint("qwen2"), dtype="bfloat16")
    assert model.lm_head.weight.dtype == torch.bfloat16
    save_model(model, tmp_path / "bf16", source=tiny_checkpoint("qwen2"))
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_model(tmp_path / "bf16").lm_head.weight.dtype == torch.bfloat16


def _copy(tiny_checkpoint, tmp_path, family="qwen2"):
    dst = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint(family), dst)
    return dst


def test_missing_tensor_is_named(tiny_checkpoint, tmp_path):
    folder = _copy(tiny_checkpoint, tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model(folder)


def test_wrong_shape_is_named(tiny_checkpoint, tmp_path):
    folder = _copy(tiny_checkpoint, tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    state["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(3, 64)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"k_proj\.weight.*\(3, 64\).*\(32, 64\)"):
        load_model(folder)


def test_unexpected_tensor_is_named(tiny_checkpoint, tmp_path):
    folder = _copy(tiny_checkpoint, tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    state["model.layers.0.extra.weight"] = torch.zeros(2)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.0\.extra\.weight'"):
        load_model(folder)


def test_unknown_architecture_and_missing_field_are_named(tiny_checkpoint, tmp_path):
    folder = _copy(tiny_checkpoint, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(CheckpointError, match=r"'architectures'.*GPT2LMHeadModel"):
        load_model(folder)
    del config["num_hidden_layers"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing field 'num_hidden_layers'"):
        load_model(folder)
    (folder / "config.json").write_text(
        json.dumps({**config, "num_hidden_layers": 2, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    )
    with pytest.raises(ValueError, match=r"rope_scaling.*yarn"):
        load_model(folder)


def test_missing_weights_and_config(tmp_path):
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_model(tmp_path)


def test_loaded_weights_are_copies_not_views_of_the_file(tiny_checkpoint, tmp_path):
    """A tensor already in the right dtype is copied out of the file's memory map: overwriting the
    file in place afterwards changes nothing in the model (a view of a private map would show the
    new bytes of every page not yet written to), and no map stays resident beside the model."""
    src = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint("qwen2"), src)
    model = load_model(src)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weights = src / "model.safetensors"
    header = 8 + int.from_bytes(weights.read_bytes()[:8], "little")
    with open(weights, "r+b") as f:  # zero every tensor's bytes, same size, same inode
        f.seek(header)
        f.write(bytes(weights.stat().st_size - header))
    assert load_model(src).model.norm.weight.abs().sum() == 0  # the file did change
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
