"""Memory options of one device: bf16 over float32 masters, activation checkpointing,
reference offload, LoRA reference, critic device, large-vocabulary log-probs, lean loading."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from pillion import config as C
from pillion.model import logprobs as logprobs_module
from pillion.model import lora
from pillion.model.checkpoint import load_model, resolve_model
from pillion.model.sequences import pack, packed_layout, response_logprobs, token_logprobs
from pillion.model.transformer import ModelConfig, Transformer
from pillion.train import models as M
from pillion.train import precision, rl
from tests.train.test_rl import _strip, metrics, small

W0 = 1.25 * 2**-7  # 0.009765625, exact in bf16; its bf16 neighbours are W0 +- 2^-14 (6.1e-5)


class Scalars(nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.w = nn.Parameter(torch.full((4,), W0, dtype=dtype))


def reference_logprobs(models, batch, temperature: float, rows_per_pass: int):
    """log pi_ref of the responses, [B, T] on the batch's device, `rows_per_pass` rows a forward
    (the no-grad pass's reference function over each micro-batch's layout); None without a reference."""
    fn = M.reference_fn(models, batch.input_ids.device, temperature)
    if fn is None:
        return None
    rows = torch.arange(batch.input_ids.shape[0])
    return torch.cat([fn(packed_layout(batch.rows(rows[i : i + rows_per_pass])))
                      for i in range(0, len(rows), rows_per_pass)])


def _steps(module, params, n, lr=1e-6):
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    return optimizer, [_one_step(module, optimizer) for _ in range(n)]


def _one_step(module, optimizer):
    (module.w.float() * 1.0).sum().backward()  # dL/dw = 1: Adam moves each weight by lr (m_hat / sqrt(v_hat) = 1)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_master_weights_keep_updates_that_bf16_adamw_rounds_away():
    # Pure bf16 AdamW: each step asks for w - 1e-6, below half the bf16 spacing (3.05e-5): lost.
    pure = Scalars(torch.bfloat16)
    _steps(pure, pure.parameters(), 100)
    assert torch.equal(pure.w.detach(), torch.full((4,), W0, dtype=torch.bfloat16))

    # float32 masters: after 1 step the master is W0 - 1e-6 (to float32 resolution, 9.3e-10 here)
    # and the bf16 weight still rounds to W0.
    mixed = Scalars(torch.float32)
    master = precision.master_weights(mixed, torch.bfloat16)
    assert mixed.w.dtype == torch.bfloat16 and master.params[0].dtype == torch.float32
    optimizer = torch.optim.AdamW(master.params, lr=1e-6, weight_decay=0.0)
    precision.sync_after_step(optimizer, master)
    (mixed.w.float() * 1.0).sum().backward()
    assert mixed.w.grad is None and master.params[0].grad.tolist() == [1.0] * 4  # moved to the master
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    torch.testing.assert_close(master.params[0].detach(), torch.full((4,), W0 - 1e-6), atol=2e-9, rtol=0)
    assert mixed.w.tolist() == [W0] * 4
    # 30 steps: 30e-6 < 3.05e-5, still W0 in bf16; 31 steps: 31e-6 > 3.05e-5, one grid step down.
    for _ in range(29):
        _one_step(mixed, optimizer)
    assert mixed.w.tolist() == [W0] * 4
    _one_step(mixed, optimizer)
    assert mixed.w.tolist() == [W0 - 2**-14] * 4
    torch.testing.assert_close(master.params[0].detach(), torch.full((4,), W0 - 31e-6), atol=1e-8, rtol=0)


def test_bf16_policy_has_float32_masters_and_tied_weights_once(tiny_checkpoint):
    path = tiny_checkpoint("qwen2", tie_word_embeddings=True)
    reference = load_model(path)
    model, params, master = M.load_trainable(path, torch.bfloat16, "cpu")
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    assert len(params) == len(list(reference.parameters()))  # one master for the tied matrix
    for p, m, ref in zip(model.parameters(), params, reference.parameters()):
        assert p.dtype == torch.bfloat16 and m.dtype == torch.float32
        assert torch.equal(m, ref) and torch.equal(p, ref.to(torch.bfloat16))
    assert model.decode_weights().layers[0].qkv_t.dtype == torch.bfloat16  # the engine reads bf16
    assert model.inv_freq.dtype == torch.float32


def _grads(model, batch):
    model.zero_grad(set_to_none=True)
    logp, entropy = response_logprobs(model, batch, with_entropy=True)
    (logp.sum() + 0.1 * entropy.sum()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _batch():
    return pack([[5, 6, 7, 8], [9, 10]], [[11, 12, 13, 14, 15], [16, 17, 18]], pad_id=0)


@pytest.mark.parametrize("mode,k,wrapped", [("blocks", 2, 4), ("every_k", 2, 2), ("every_k", 3, 2)])
def test_activation_checkpointing_gives_equal_gradients(tiny_checkpoint, mode, k, wrapped):
    path = tiny_checkpoint("qwen3", num_layers=4)
    plain, checked = load_model(path), load_model(path)
    assert M.apply_activation_checkpointing(checked, mode, k) == wrapped  # blocks 0, k, 2k, ... of 4
    assert list(checked.state_dict()) == list(plain.state_dict())  # names unchanged
    expected, got = _grads(plain, _batch()), _grads(checked, _batch())
    strip = "._checkpoint_wrapped_module"
    assert {n.replace(strip, "") for n in got} == set(expected)
    for name, grad in got.items():
        torch.testing.assert_close(grad, expected[name.replace(strip, "")], atol=0, rtol=0)


def _saved_bytes(model, batch):
    """Bytes autograd keeps for backward during the forward (what checkpointing trades away)."""
    total = 0

    def pack_hook(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t):
        hidden = model(batch.input_ids, torch.arange(batch.input_ids.shape[1])[None], None)
    return total, hidden


def test_checkpointed_blocks_keep_less_for_backward_and_generate_the_same(tiny_checkpoint):
    from pillion.model.tokenizer import load_tokenizer
    from pillion.rollout.engine import Engine, SamplingParams

    path = tiny_checkpoint("llama", num_layers=4)
    plain, checked = load_model(path), load_model(path)
    M.apply_activation_checkpointing(checked, "blocks")
    batch = pack([list(range(3, 40))], [list(range(40, 80))], pad_id=0)
    plain_bytes, _ = _saved_bytes(plain, batch)
    checked_bytes, _ = _saved_bytes(checked, batch)
    assert checked_bytes < plain_bytes / 3, (checked_bytes, plain_bytes)
    tok = load_tokenizer(path)
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=3)
    a = Engine(plain, tok, [tok.eos_token_id]).generate(["12+3="], params)
    b = Engine(checked, tok, [tok.eos_token_id]).generate(["12+3="], params)
    assert [c.ids for c in a] == [c.ids for c in b]


def _cfg(*overrides):
    return C.resolve(C.TrainConfig, overrides=["loss.kl_coef=0.05", *overrides])


def test_offloaded_reference_gives_the_same_kl(tiny_checkpoint):
    from pillion.algorithms.losses import aggregate, kl

    path = tiny_checkpoint("qwen2", tie_word_embeddings=True)
    on_device = M.build_models(_cfg(), path, torch.device("cpu"))
    offloaded = M.build_models(_cfg("ref.offload=true"), path, torch.device("cpu"))
    assert offloaded.ref_offloaded and not on_device.ref_offloaded
    twin = M.device_copy(offloaded.ref, "cpu")  # what the offloaded pass runs on: a separate module
    assert twin is not offloaded.ref and twin.lm_head.weight is twin.model.embed_tokens.weight
    with torch.no_grad():  # move the policy away from the reference so the KL is not 0
        for p in on_device.policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    batch = _batch()
    with torch.no_grad():
        logp = response_logprobs(on_device.policy, batch, 1.0)[0]
    ref_a = reference_logprobs(on_device, batch, 1.0, 8)
    ref_b = reference_logprobs(offloaded, batch, 1.0, 1)  # and row by row
    mask = batch.response_mask.float()
    kl_a = aggregate(kl(logp, ref_a, "k3", mask), mask, "token_mean")
    kl_b = aggregate(kl(logp, ref_b, "k3", mask), mask, "token_mean")
    assert kl_a > 1e-4
    torch.testing.assert_close(kl_b, kl_a, atol=1e-7, rtol=0)


def test_lora_reference_is_the_base_with_adapters_off(tiny_checkpoint):
    path = tiny_checkpoint("llama")
    models = M.build_models(_cfg("lora.rank=4", "lora.targets=[q_proj, up_proj]"), path, torch.device("cpu"))
    assert models.ref is None and models.lora_reference
    assert models.policy_params == lora.adapter_params(models.policy)
    with torch.no_grad():
        for p in models.policy_params:
            p.normal_(0, 0.1)
    batch = _batch()
    base_logp = response_logprobs(load_model(path), batch, 1.0)[0].detach()
    torch.testing.assert_close(reference_logprobs(models, batch, 1.0, 8), base_logp, atol=1e-6, rtol=0)
    assert (response_logprobs(models.policy, batch, 1.0)[0].detach() - base_logp).abs().max() > 1e-3  # adapters back on


def test_no_reference_without_kl_and_float16_is_refused(tiny_checkpoint):
    path = tiny_checkpoint("qwen2")
    models = M.build_models(C.TrainConfig(), path, torch.device("cpu"))
    assert models.ref is None and reference_logprobs(models, _batch(), 1.0, 8) is None
    with pytest.raises(ValueError, match="'dtype'"):
        M.build_models(_cfg("dtype=float16"), path, torch.device("cpu"))
    with pytest.raises(ValueError, match="activation_checkpointing"):
        M.apply_activation_checkpointing(load_model(path), "layers")


def test_kl_probe_without_a_reference_reads_the_starting_model_again(tiny_checkpoint):
    """No second copy of the model is held between probes (a 0.5B policy would hold 2 GB more):
    the probe reads the starting folder; 0 before any update, then the KL to those weights."""
    from pillion.eval.behaviour import kl_to_initial

    path = tiny_checkpoint("qwen2")
    models = M.build_models(C.TrainConfig(), path, torch.device("cpu"))  # grpo's KL off: no reference
    assert models.ref is None and models.initial_dir == Path(path)
    assert not any(isinstance(v, nn.Module) for v in vars(models).values() if v is not models.policy)
    batch = _batch()
    assert M.kl_probe(models, batch, 1.0, 8)["kl_initial"] == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        for p in models.policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    probed = M.kl_probe(models, batch, 1.0, 8)
    expected = kl_to_initial(models.policy, load_model(path), batch, 1.0, 8)
    assert probed["kl_initial"] > 1e-4 and probed == pytest.approx(expected, rel=1e-6, abs=1e-9)
    never = C.TrainConfig()
    never.behaviour.kl_probe_every = 0
    assert M.kl_probe(M.build_models(never, path, torch.device("cpu")), batch, 1.0, 8) == {}


@pytest.mark.parametrize("tied", [False, True])
def test_a_critic_trains_every_tensor_its_values_read(tiny_checkpoint, tied):
    """The critic's optimizer holds what a backward of its values reaches: every tensor but an
    untied LM head, which is frozen (no optimizer state that a resume must find); a tied one is
    the embedding, which trains. Frozen or not, the critic's tensors keep their names."""
    path = tiny_checkpoint("qwen2", tie_word_embeddings=tied)
    models = M.build_models(_cfg("adv=gae"), path, torch.device("cpu"))
    critic = models.critic
    names = {id(p): n for n, p in critic.named_parameters()}
    batch = pack([[5, 6, 7, 8], [9, 10]], [[11, 12, 13], [14]], pad_id=0)
    torch.nn.init.normal_(critic.value_head.weight)  # not the zero init: gradients reach the trunk
    critic.values(batch).sum().backward()
    reached = {n for n, p in critic.named_parameters() if p.grad is not None}
    assert {names[id(p)] for p in models.critic_params} == reached
    assert ("trunk.lm_head.weight" in reached) is False and "trunk.model.embed_tokens.weight" in reached
    assert "trunk.lm_head.weight" in critic.state_dict() and critic.trunk.lm_head.weight.requires_grad is tied


def test_a_critic_optimizer_of_another_size_is_one_line(tiny_checkpoint, tmp_path, capsys):
    """A one-process checkpoint whose critic optimizer holds one tensor more than this run's (as
    one saved before an untied critic head was frozen): exit 2, one line naming it."""
    from pillion.cli import main

    model = tiny_checkpoint("qwen2", tie_word_embeddings=False)
    rl.train(small(tmp_path / "run", f"model={model}", "algo=ppo", "steps=1", "save_every=1"))
    state_file = tmp_path / "run" / "checkpoints" / "step-000001" / "trainer_state.pt"
    saved = torch.load(state_file, weights_only=False)
    group = saved["critic_optimizer"]["param_groups"][0]
    group["params"].append(max(group["params"]) + 1)
    torch.save(saved, state_file)
    assert main(["train", f"out={tmp_path / 'run'}", "--resume", "steps=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step-000001: its critic optimizer does not match this run's" in err[0], err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_offloaded_reference_and_cpu_critic(tiny_checkpoint):
    path = tiny_checkpoint("qwen2")
    cuda = torch.device("cuda")
    cfg = _cfg("ref.offload=true", "adv=gae", "critic.device=cpu", "dtype=bfloat16")
    models = M.build_models(cfg, path, cuda)
    on_device = M.build_models(_cfg("dtype=bfloat16"), path, cuda)
    assert models.ref.lm_head.weight.device.type == "cpu" and models.critic.value_head.weight.device.type == "cpu"
    batch = pack([[5, 6, 7, 8]], [[11, 12, 13]], pad_id=0, device=cuda)
    torch.testing.assert_close(reference_logprobs(models, batch, 1.0, 8),
                               reference_logprobs(on_device, batch, 1.0, 8), atol=0, rtol=0)
    values = models.critic.values(batch)
    assert values.device.type == "cuda"
    values.sum().backward()
    assert models.critic_params[-1].grad is not None


def test_large_vocabulary_logprobs_in_bounded_chunks(monkeypatch):
    """Qwen2.5's 151,936-token vocabulary: log-probs come in chunks of 2^25 // 151936 = 220 rows
    and equal a full log-softmax over the vocabulary."""
    torch.manual_seed(0)
    cfg = ModelConfig(family="qwen2", vocab_size=151936, hidden_size=16, intermediate_size=32, num_layers=1,
                      num_heads=2, num_kv_heads=1, head_dim=8, attention_bias=True, tie_word_embeddings=True)
    model = Transformer(cfg)
    model.lm_head.weight = model.model.embed_tokens.weight
    ids = torch.randint(0, cfg.vocab_size, (2, 300))
    attn = torch.ones_like(ids)
    rows = []
    real = logprobs_module._chunk_logits
    monkeypatch.setattr(logprobs_module, "_chunk_logits", lambda h, *a: (rows.append(h.shape[0]), real(h, *a))[1])
    with torch.no_grad():
        logp, _ = token_logprobs(model, ids, attn, attn)
        full = torch.log_softmax(model.logits(model(ids, torch.arange(300)[None].expand(2, -1), None)), -1)
    assert max(rows) == 220 and sum(rows) == 2 * 299
    expected = full[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    # float32 sums over 151,936 terms in another order: log-probs near -12 agree to ~3e-6 relative.
    torch.testing.assert_close(logp[:, 1:], expected, atol=0, rtol=1e-5)


def test_sharded_load_to_another_dtype_holds_the_model_once(tmp_path):
    """A bf16 checkpoint in several shards loaded as float32: the loading process grows by about
    the float32 model (256 MB) plus allocator slack (measured 1.36x), not by the file's tensors
    plus a float32 copy on top (the previous loader: 2.15x)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=1024, hidden_size=512, intermediate_size=2048, num_hidden_layers=16,
                      num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp_path / "m", max_shard_size="30MB")
    assert len(list((tmp_path / "m").glob("*.safetensors"))) > 2
    script = textwrap.dedent(f"""
        import json, resource, torch
        from pillion.model.checkpoint import load_model
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        model = load_model("{tmp_path / 'm'}", dtype="float32")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        size = sum(p.numel() * 4 for p in model.parameters())
        print(json.dumps({{"grew": peak - before, "size": size, "dtype": str(model.lm_head.weight.dtype)}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["dtype"] == "torch.float32"
    assert result["grew"] < 1.7 * result["size"], result


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    ["dtype=bfloat16", "activation_checkpointing=blocks", "loss.kl_coef=0.05", "ref.offload=true"],
    ["lora.rank=4", "lora.alpha=16", "activation_checkpointing=every_k", "loss.kl_coef=0.05", "lr=1e-3"],
], ids=["bf16-masters", "lora"])
def test_rl_with_memory_options_saves_and_resumes_exactly(tmp_path, options):
    rl.train(small(tmp_path / "straight", "steps=2", "save_every=1", *options))
    # A run that stopped after step 1: the same directory without step 2's checkpoint.
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-000002")
    rl.train(small(tmp_path / "resumed", "steps=2", "save_every=1", *options), resume=True)
    assert _strip(metrics(tmp_path / "resumed")) == _strip(metrics(tmp_path / "straight"))
    straight = metrics(tmp_path / "straight")
    assert all(r["kl"] >= 0 for r in straight)  # the reference (offloaded, or the adapters-off base) was used
    assert all(r["logprob_error"] < 1.01 for r in straight)  # engine (bf16 / merged) vs trainer
    checkpoint = tmp_path / "straight" / "checkpoints" / "step-000002"
    saved = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    if "lora.rank=4" in options:
        assert (checkpoint / "adapter_model.safetensors").exists() and not (checkpoint / "model.safetensors").exists()
        assert saved["master"] == {"policy": None, "critic": None}
        assert lora.has_adapters(load_model(checkpoint))
    else:
        assert json.loads((checkpoint / "config.json").read_text())["dtype"] == "bfloat16"
        masters = saved["master"]["policy"]
        assert all(m.dtype == torch.float32 for m in masters)
        # The saved bf16 model is the rounding of the saved masters, which training moved.
        model = load_model(checkpoint)
        assert all(torch.equal(p, m.to(torch.bfloat16)) for p, m in zip(model.parameters(), masters))
        start = load_model(resolve_model("default"))
        assert any(not torch.equal(m, p) for m, p in zip(masters, start.parameters()))


def test_dpo_refreshes_the_reference_and_probes_the_starting_model(tiny_checkpoint):
    """dpo.ref_update_every: the reference takes the policy's weights; the KL probe still measures
    the drift from the starting model (read from its folder), not from the refreshed reference."""
    from pillion.eval.behaviour import kl_to_initial

    path = tiny_checkpoint("qwen2")
    cfg = C.resolve(C.TrainConfig, overrides=["algo=dpo", "dpo.ref_update_every=1"])
    models = M.build_models(cfg, path, torch.device("cpu"))
    assert models.ref is not None and models.initial_dir == Path(path)
    with torch.no_grad():
        for p in models.policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    M.refresh_reference(models)
    for name, value in models.policy.state_dict().items():
        torch.testing.assert_close(models.ref.state_dict()[name], value, rtol=0, atol=0)
    batch = _batch()
    probed = M.kl_probe(models, batch, 1.0, 8)
    assert probed["kl_initial"] > 1e-4  # against the refreshed reference it would be 0
    assert probed == pytest.approx(kl_to_initial(models.policy, load_model(path), batch, 1.0, 8), rel=1e-6, abs=1e-9)
    without = M.build_models(C.resolve(C.TrainConfig, overrides=["algo=dpo"]), path, torch.device("cpu"))
    assert without.ref is not None and without.initial_dir is None  # a reference that stays the start serves
