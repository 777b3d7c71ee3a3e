"""LoRA: per-projection adapters on fused projections, PEFT layout, merge, reference = base."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from pillion.model import lora
from pillion.model.checkpoint import load_model, save_model
from pillion.model.hf_config import CheckpointError
from pillion.model.sequences import pack, response_logprobs

peft = pytest.importorskip("peft")


def _logits(model, ids):
    with torch.no_grad():
        return model.logits(model(ids, torch.arange(ids.shape[1])[None].expand_as(ids), None))


def _adapted(path, targets=lora.TARGETS, rank=4, alpha=8.0, seed=1):
    """A model with LoRA on `targets` and random (nonzero) adapters, so a lost adapter shows."""
    model = load_model(path)
    lora.apply_lora(model, rank, alpha, list(targets))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.adapter_params(model):
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model


@pytest.mark.parametrize("family,targets", [
    ("qwen2", lora.TARGETS),  # q|k|v bias, tied embeddings below
    ("llama", ("q_proj", "v_proj", "up_proj")),  # k and gate slices of the fused matmuls left alone
    ("qwen3", ("k_proj", "o_proj", "gate_proj", "down_proj")),
])
def test_peft_loads_our_adapters_on_the_transformers_model(tiny_checkpoint, tmp_path, family, targets):
    base = tiny_checkpoint(family, tie_word_embeddings=family == "qwen2")
    model = _adapted(base, targets)
    save_model(model, tmp_path / "adapter", source=base)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and set(config["target_modules"]) == set(targets)
    assert not (tmp_path / "adapter" / "config.json").exists()  # adapters only, no second model

    hf = AutoModelForCausalLM.from_pretrained(base).eval()
    peft_model = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    # Every adapter PEFT expects is in our file and nothing else (PEFT only warns on a missing key).
    from safetensors.torch import load_file

    ours = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert set(ours) == set(peft.get_peft_model_state_dict(peft_model))
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        theirs = peft_model(input_ids=ids).logits
    torch.testing.assert_close(_logits(model, ids), theirs, atol=1e-5, rtol=0)
    # And the base (adapters off) differs: the comparison above saw the adapters.
    with lora.adapters_disabled(model):
        assert (_logits(model, ids) - theirs).abs().max() > 1e-2


def test_fresh_adapters_start_at_the_base_and_only_adapters_train(tiny_checkpoint):
    base = tiny_checkpoint("qwen2")
    model = load_model(base)
    ids = torch.arange(3, 30)[None]
    before = _logits(model, ids)
    params = lora.apply_lora(model, 8, 16.0, list(lora.TARGETS))
    # B = 0 at start (PEFT's init), so the adapted model is the base exactly.
    assert torch.equal(_logits(model, ids), before)
    # 2 layers x 7 projections x (A, B); A of q_proj: [8, 64], B of k_proj: [2 kv heads x 16, 8].
    assert len(params) == 2 * 7 * 2
    qkv = model.model.layers[0].self_attn.qkv_proj
    assert qkv.lora_A["q_proj"].shape == (8, 64) and qkv.lora_B["k_proj"].shape == (32, 8)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        n for n, _ in model.named_parameters() if ".lora_" in n]
    batch = pack([[5, 6, 7]], [[8, 9, 10, 11]], pad_id=0)
    response_logprobs(model, batch)[0].sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if ".lora_" not in n)
    assert all(p.grad is not None for p in params)


def test_adapter_math_by_hand():
    """One fused q|k|v-like linear (rows 2 + 1 + 1), adapters on the first and third slice.

    x = [1, 2]; W = 0; A_q = [[1, 0]], B_q = [[1], [2]]; A_v = [[0, 1]], B_v = [[3]]; rank 1,
    alpha 2 -> scale 2. q: 2 * B_q (A_q x) = 2 * [1, 2] * 1 = [2, 4]; k untouched: 0;
    v: 2 * 3 * (A_v x = 2) = 12. Output [2, 4, 0, 12].
    """
    base = torch.nn.Linear(2, 4, bias=False)
    torch.nn.init.zeros_(base.weight)
    layer = lora.LoRALinear(base, {"q_proj": 2, "k_proj": 1, "v_proj": 1}, ["q_proj", "v_proj"], rank=1, alpha=2.0)
    with torch.no_grad():
        layer.lora_A["q_proj"].copy_(torch.tensor([[1.0, 0.0]]))
        layer.lora_B["q_proj"].copy_(torch.tensor([[1.0], [2.0]]))
        layer.lora_A["v_proj"].copy_(torch.tensor([[0.0, 1.0]]))
        layer.lora_B["v_proj"].copy_(torch.tensor([[3.0]]))
    x = torch.tensor([[1.0, 2.0]])
    assert layer(x).tolist() == [[2.0, 4.0, 0.0, 12.0]]
    # The merged weight applies the same map: rows [2*B_q A_q; 0; 2*B_v A_v] = [[2,0],[4,0],[0,0],[0,6]].
    assert layer.merged_weight().tolist() == [[2.0, 0.0], [4.0, 0.0], [0.0, 0.0], [0.0, 6.0]]


def test_engine_decode_uses_merged_adapters_and_logprob_check_passes(tiny_checkpoint, tmp_path):
    from pillion.rollout.check import DEFAULT_PROMPTS, check

    base = tiny_checkpoint("qwen2")
    model = _adapted(base, seed=3)
    save_model(model, tmp_path / "adapter", source=base)
    # engine (merged weights in decode) vs trainer (unmerged) vs transformers + PEFT, all on the adapter folder
    report = check(str(tmp_path / "adapter"), DEFAULT_PROMPTS[:2], 2, 16, 1.0, "float32", "cpu", seed=0)
    for pair in ("engine_vs_trainer", "engine_vs_transformers", "trainer_vs_transformers"):
        assert report[pair]["max_abs_error"] < 1e-4, (pair, report[pair])
    # bf16: the engine's merged weights are rounded once; still within NeMo-RL's 1.05 bar.
    report = check(str(tmp_path / "adapter"), DEFAULT_PROMPTS[:2], 2, 16, 1.0, "bfloat16", "cpu", seed=0)
    for pair in ("engine_vs_trainer", "engine_vs_transformers", "trainer_vs_transformers"):
        assert report[pair]["metric"] < 1.05, (pair, report[pair])
    # And the adapters matter for what the engine samples from (merged != base weight).
    qkv = model.model.layers[0].self_attn.qkv_proj
    assert not torch.equal(qkv.merged_weight(), qkv.weight)
    with lora.adapters_disabled(model):
        assert qkv.merged_weight() is qkv.weight


def test_adapter_folder_loads_back_and_merge_equals_adapted(tiny_checkpoint, tmp_path):
    base = tiny_checkpoint("qwen3")
    model = _adapted(base, ("q_proj", "gate_proj", "up_proj"))
    save_model(model, tmp_path / "adapter", source=base)
    again = load_model(tmp_path / "adapter")
    ids = torch.arange(3, 30)[None]
    assert torch.equal(_logits(again, ids), _logits(model, ids))
    merged = lora.merge(load_model(tmp_path / "adapter"))
    assert not lora.has_adapters(merged)
    torch.testing.assert_close(_logits(merged, ids), _logits(model, ids), atol=1e-5, rtol=0)


def test_export_merge_writes_a_folder_transformers_loads(tiny_checkpoint, tmp_path):
    from pillion.cli import main

    base = tiny_checkpoint("qwen2", tie_word_embeddings=True)
    model = _adapted(base, seed=5)
    save_model(model, tmp_path / "adapter", source=base)
    assert main(["export", str(tmp_path / "adapter"), str(tmp_path / "merged"), "--merge"]) == 0
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    ids = torch.arange(3, 30)[None]
    with torch.no_grad():
        theirs = hf(input_ids=ids).logits
    torch.testing.assert_close(_logits(model, ids), theirs, atol=1e-5, rtol=0)
    assert (tmp_path / "merged" / "tokenizer.json").exists()
    # Without --merge an adapter folder is refused with a one-line reason.
    assert main(["export", str(tmp_path / "adapter"), str(tmp_path / "other")]) == 2


def test_bf16_base_keeps_float32_adapters_with_float32_grads(tiny_checkpoint):
    model = load_model(tiny_checkpoint("qwen2"), dtype="bfloat16")
    params = lora.apply_lora(model, 4, 8.0, ["q_proj", "down_proj"])
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.1)
    batch = pack([[5, 6, 7]], [[8, 9, 10, 11]], pad_id=0)
    logp, _ = response_logprobs(model, batch)
    logp.sum().backward()
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in params)


@pytest.mark.parametrize("field,value,message", [
    ("use_dora", True, "'use_dora'"),
    ("target_modules", "all-linear", "'target_modules'"),
    ("base_model_name_or_path", "/nowhere", "'base_model_name_or_path'"),
    ("target_modules", ["q_proj", "lm_head"], "lora.targets"),
])
def test_bad_adapter_config_is_named(tiny_checkpoint, tmp_path, field, value, message):
    base = tiny_checkpoint("qwen2")
    save_model(_adapted(base), tmp_path / "adapter", source=base)
    config_file = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config[field] = value
    config_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        load_model(tmp_path / "adapter")


def test_bad_targets_and_rank_are_named():
    with pytest.raises(ValueError, match="lora.targets"):
        lora.check_targets(["qkv_proj"])
    with pytest.raises(ValueError, match="lora.rank"):
        lora.apply_lora(None, 0, 1.0, ["q_proj"])
