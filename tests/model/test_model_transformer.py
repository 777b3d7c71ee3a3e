"""pillion's transformer against the `transformers` reference implementations."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from pillion.model.checkpoint import load_model
from pillion.model.decode import KVCache
from pillion.model.sequences import pack, response_logprobs, token_logprobs
from pillion.model.transformer import causal_padding_mask, padding_positions
from tests.conftest import FAMILIES


def _batch(vocab: int = 259, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, 17), generator=g)
    attn = torch.ones_like(ids)
    attn[0, :5] = 0  # left padding, as the engine and trainer lay batches out
    attn[1, :1] = 0
    return ids, attn


def _logits_both(folder, ids, attn, dtype=torch.float32):
    ours = load_model(folder, dtype=dtype).eval()
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    with torch.no_grad():
        pos = padding_positions(attn)
        a = ours.logits(ours(ids, pos, causal_padding_mask(attn)))
        b = ref(input_ids=ids, attention_mask=attn, position_ids=pos).logits.float()
    return a, b


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers_fp32(tiny_checkpoint, family):
    ids, attn = _batch()
    a, b = _logits_both(tiny_checkpoint(family), ids, attn)
    real = attn.bool()
    assert (a[real] - b[real]).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    "family,kwargs",
    [
        ("qwen2", dict(tie_word_embeddings=True)),
        ("qwen3", dict(tie_word_embeddings=True, rope_theta=1_000_000.0)),
        ("llama", dict(rope_theta=500000.0, max_position_embeddings=16384,
                       rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                         high_freq_factor=4.0, original_max_position_embeddings=64))),
    ],
)
def test_logits_match_variants(tiny_checkpoint, family, kwargs):
    # Long positions so the Llama-3 scaled frequencies matter: offset by left padding of 40.
    ids = torch.randint(0, 259, (2, 120), generator=torch.Generator().manual_seed(1))
    attn = torch.ones_like(ids)
    attn[1, :40] = 0
    a, b = _logits_both(tiny_checkpoint(family, **kwargs), ids, attn)
    assert (a[attn.bool()] - b[attn.bool()]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers_bf16(tiny_checkpoint, family):
    ids, attn = _batch()
    a, b = _logits_both(tiny_checkpoint(family), ids, attn, dtype=torch.bfloat16)
    # Same rounding points as HF: agreement to a few bf16 ulps of the logit scale.
    assert (a[attn.bool()] - b[attn.bool()]).abs().max().item() <= 0.05


def test_padding_does_not_change_real_tokens(tiny_checkpoint):
    model = load_model(tiny_checkpoint("qwen3")).eval()
    ids = torch.randint(0, 259, (1, 10), generator=torch.Generator().manual_seed(3))
    padded = torch.cat([torch.zeros(1, 6, dtype=torch.long), ids], 1)
    attn = torch.cat([torch.zeros(1, 6, dtype=torch.long), torch.ones(1, 10, dtype=torch.long)], 1)
    with torch.no_grad():
        plain = model.logits(
            model(ids, padding_positions(torch.ones_like(ids)), causal_padding_mask(torch.ones_like(ids)))
        )
        left = model.logits(model(padded, padding_positions(attn), causal_padding_mask(attn)))
    torch.testing.assert_close(left[:, 6:], plain, atol=1e-5, rtol=0)
    assert torch.isfinite(left).all()  # padding queries stay finite


def test_token_logprobs_match_full_log_softmax_and_gradients(tiny_checkpoint):
    """The chunked, checkpointed path equals the naive one in value and gradient."""
    model = load_model(tiny_checkpoint("llama"))
    prompts = [[5, 6, 7], [8, 9]]
    responses = [[10, 11, 12, 13], [14]]
    batch = pack(prompts, responses, pad_id=0)

    target = torch.zeros_like(batch.attention_mask)
    target[:, batch.prompt_len:] = batch.response_mask
    fast, entropy = token_logprobs(model, batch.input_ids, batch.attention_mask, target, 0.7, True, chunk=2)
    grad_fast = torch.autograd.grad(fast.sum(), model.lm_head.weight)[0]

    hidden = model(batch.input_ids, padding_positions(batch.attention_mask), causal_padding_mask(batch.attention_mask))
    logp_all = torch.log_softmax(model.logits(hidden)[:, :-1] / 0.7, -1)
    naive = logp_all.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    naive = torch.nn.functional.pad(naive, (1, 0)) * target
    grad_naive = torch.autograd.grad(naive.sum(), model.lm_head.weight)[0]
    naive_entropy = torch.nn.functional.pad(-(logp_all.exp() * logp_all).sum(-1), (1, 0)) * target

    torch.testing.assert_close(fast, naive, atol=1e-6, rtol=0)
    torch.testing.assert_close(grad_fast, grad_naive, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(entropy, naive_entropy.detach(), atol=1e-5, rtol=0)
    # The response view: row 1 has one response token, the rest is padding (exactly 0).
    resp, _ = response_logprobs(model, batch, 0.7)
    assert resp.shape == (2, 4)
    assert resp[1, 1:].abs().sum() == 0
    torch.testing.assert_close(resp[0], fast[0, batch.prompt_len:])


@pytest.mark.parametrize("family", FAMILIES)
def test_extend_and_decode_equal_one_full_pass(tiny_checkpoint, family):
    """The engine's fast path against the plain forward, per row: rows of different lengths in
    slots of one cache (no padding inside a row), a prefix through `extend` in two chunks (the
    second continuing the cache at a different column in each row, from rows given out of
    order), then single tokens through `decode` attending over the whole cache with unwritten
    columns masked: every logit as in one full pass of `forward` over that row alone."""
    model = load_model(tiny_checkpoint(family)).eval()
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    lengths = [17, 12, 15]  # each row's full length; prefixes 9/6/7 + 0..1 padding, then decode
    ids = [torch.randint(0, 259, (n,), generator=g) for n in lengths]
    first, second = [5, 3, 4], [4, 3, 3]  # chunk lengths; decode from first + second on
    slots = torch.tensor([2, 0, 1])  # row i lives in cache slot slots[i]
    max_len = 24
    cache = KVCache(cfg, 3, max_len, "cpu", torch.float32)
    with torch.no_grad():
        full = [model.logits(model(x[None], torch.arange(len(x))[None], None))[0] for x in ids]

        def chunk(starts, sizes):  # right-padded [3, W] tokens and positions, padding after each row
            width = max(sizes)
            tokens = torch.stack([torch.cat((x[s : s + n], torch.zeros(width - n, dtype=torch.long)))
                                  for x, s, n in zip(ids, starts, sizes)])
            positions = torch.tensor(starts)[:, None] + torch.arange(width)
            return tokens, positions, max(s + n for s, n in zip(starts, sizes))

        for starts, sizes in (([0, 0, 0], first), (first, second)):
            tokens, positions, span = chunk(starts, sizes)
            model.extend(tokens, positions, slots, span, cache)
        # The decode step runs over cache rows 0..2 in slot order; bias: 0 up to each position.
        order = slots.argsort()  # slot j holds row order[j]
        pos = torch.tensor([a + b for a, b in zip(first, second)])[order]
        steps = []
        for t in range(min(lengths) - max(pos).item()):
            p = pos + t
            bias = torch.where(torch.arange(max_len) <= p[:, None], 0.0, float("-inf"))  # [3, S]
            bias = bias[:, None, None].expand(3, cfg.num_kv_heads, 1, max_len).reshape(-1, 1, max_len)
            tokens = torch.stack([ids[r][q] for r, q in zip(order.tolist(), p.tolist())])
            steps.append(model.decode(tokens, p, bias, cache))
    assert len(steps) >= 2
    for j, r in enumerate(order.tolist()):
        expected = full[r][pos[j] : pos[j] + len(steps)]
        torch.testing.assert_close(torch.stack([s[j] for s in steps]), expected, atol=1e-5, rtol=0)


def test_decode_weights_are_named_records_of_the_parameters(tiny_checkpoint):
    """The fast path reads the parameters themselves (optimizer updates show through), one named
    record per layer; Qwen2 has q|k|v biases and no QK norm, Qwen3 the reverse. `contiguous`
    (the engine on CPU): [in, out] copies of the same values (the engine tests check its log-probs
    against the trainer's with them)."""
    for family, bias, qk_norm in (("qwen2", True, False), ("qwen3", False, True)):
        model = load_model(tiny_checkpoint(family))
        weights = model.decode_weights()
        assert len(weights.layers) == model.cfg.num_layers
        layer, block = weights.layers[1], model.model.layers[1]
        assert layer.qkv_t.data_ptr() == block.self_attn.qkv_proj.weight.data_ptr()  # a view, not a copy
        assert layer.down_t.data_ptr() == block.mlp.down_proj.weight.data_ptr()
        assert layer.down_t.shape == (model.cfg.intermediate_size, model.cfg.hidden_size)
        assert (layer.qkv_bias is not None) == bias and (layer.q_norm is not None) == qk_norm
        assert weights.lm_head_t.data_ptr() == model.lm_head.weight.data_ptr()
        assert weights.embedding is model.model.embed_tokens.weight
        copies = model.decode_weights(contiguous=True)
        for view, copy in [(layer.qkv_t, copies.layers[1].qkv_t), (layer.gate_up_t, copies.layers[1].gate_up_t),
                           (weights.lm_head_t, copies.lm_head_t)]:
            assert copy.is_contiguous() and not view.is_contiguous() and copy.data_ptr() != view.data_ptr()
            assert torch.equal(copy, view)
