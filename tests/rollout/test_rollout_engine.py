"""The generation engine, tested by its properties on tiny random models (STYLE rule 7)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from pillion.model.checkpoint import eos_token_ids, load_model, load_tokenizer
from pillion.model.sequences import pack, response_logprobs
from pillion.rollout.engine import Engine, SamplingParams, compiled_decode_step, decode_step, sample_tokens
from tests.conftest import FAMILIES

PROMPTS = ["12+35=", "What is 7 times 8?", "x"]


def _engine(folder, **kwargs):
    tokenizer = load_tokenizer(folder)
    return Engine(load_model(folder).eval(), tokenizer, eos_token_ids(folder, tokenizer), **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equals_transformers_generate(tiny_checkpoint, family):
    folder = tiny_checkpoint(family)
    engine = _engine(folder)
    ours = engine.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=24))
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = engine.tokenizer
    tok.padding_side = "left"
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    out = hf.generate(**enc, do_sample=False, max_new_tokens=24, pad_token_id=tok.pad_token_id)
    for row, completion in zip(out[:, enc.input_ids.shape[1]:].tolist(), ours):
        # transformers pads rows that stopped early; compare up to our stop point.
        assert row[: len(completion.ids)] == completion.ids


def test_same_seed_same_tokens_and_n_samples_prompt_major(tiny_checkpoint):
    engine = _engine(tiny_checkpoint("qwen2"))
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=16, seed=7)
    a = engine.generate(PROMPTS, params)
    b = engine.generate(PROMPTS, params)
    c = engine.generate(PROMPTS, SamplingParams(n=3, temperature=1.0, max_new_tokens=16, seed=8))
    assert len(a) == 9 and [x.prompt_index for x in a] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [x.ids for x in a] == [x.ids for x in b]
    assert [x.ids for x in a] != [x.ids for x in c]
    # The n samples of one prompt differ from one another (they share the prefill, not the draw).
    assert len({tuple(x.ids) for x in a[:3]}) == 3
    assert all(x.prompt_ids == engine.encode(PROMPTS[x.prompt_index]) for x in a)


def test_max_new_tokens_and_length_finish(tiny_checkpoint):
    engine = _engine(tiny_checkpoint("llama"))
    out = engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=5, seed=0))
    for c in out:
        assert len(c.ids) <= 5 and len(c.logprobs) == len(c.ids)
        assert c.finish_reason == ("length" if len(c.ids) == 5 else "stop")


def test_stops_on_eos_and_keeps_it(tiny_checkpoint):
    folder = tiny_checkpoint("qwen3")
    engine = _engine(folder)
    free = engine.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=12))
    # Declare the 4th greedy token of prompt 0 an EOS id: generation must stop right there.
    eos = free[0].ids[3]
    engine.eos_ids = [eos]
    stopped = engine.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=12))
    first = free[0].ids.index(eos)
    assert stopped[0].ids == free[0].ids[: first + 1]
    assert stopped[0].finish_reason == "stop"
    assert stopped[0].text == engine.tokenizer.decode(stopped[0].ids, skip_special_tokens=True)
    # Rows that finish are dropped from the batch (their cache rows compacted away): the rows
    # still running must decode exactly as they did with every row present.
    running = [i for i, c in enumerate(free) if eos not in c.ids]
    assert running, "the test needs a row that never emits the chosen EOS"
    for i in running:
        assert stopped[i].ids == free[i].ids and stopped[i].finish_reason == "length"


@pytest.mark.parametrize("check_every", [1, 3, 8])
def test_stop_strings(tiny_checkpoint, check_every):
    folder = tiny_checkpoint("qwen2")
    engine = _engine(folder, check_every=check_every)
    tok = engine.tokenizer
    free = engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=20, seed=3))
    # A printable ASCII character that some sample produces after its first few tokens.
    stop = next(ch for c in free for ch in tok.decode(c.ids[3:]) if ch.isascii() and ch.isalnum())
    stopped = engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=20, seed=3, stop=[stop]))
    hits = 0
    for a, b in zip(free, stopped):
        # The shortest prefix of the free sample whose text holds the stop string.
        k = next((k for k in range(1, len(a.ids) + 1) if stop in tok.decode(a.ids[:k])), None)
        if k is None:
            assert b.ids == a.ids and b.finish_reason == a.finish_reason
        else:
            hits += 1
            assert b.ids == a.ids[:k] and b.finish_reason == "stop"
            assert b.logprobs.shape == (k,)
    assert hits >= 1


@pytest.mark.parametrize("family", FAMILIES)
def test_logprobs_match_training_forward(tiny_checkpoint, family):
    engine = _engine(tiny_checkpoint(family))
    for temperature in (1.0, 0.6):
        out = engine.generate(PROMPTS, SamplingParams(n=2, temperature=temperature, max_new_tokens=16, seed=1))
        batch = pack([c.prompt_ids for c in out], [c.ids for c in out], engine.pad_id)
        with torch.no_grad():
            trainer, _ = response_logprobs(engine.model, batch, temperature)
        for i, c in enumerate(out):
            assert c.logprobs.dtype == torch.float32
            torch.testing.assert_close(c.logprobs, trainer[i, : len(c.ids)], atol=1e-5, rtol=0)


def test_top_k_one_and_tiny_top_p_are_greedy(tiny_checkpoint):
    engine = _engine(tiny_checkpoint("llama"))
    greedy = engine.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=10))
    top1 = engine.generate(PROMPTS, SamplingParams(temperature=1.0, top_k=1, max_new_tokens=10, seed=5))
    nucleus = engine.generate(PROMPTS, SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=10, seed=5))
    assert [c.ids for c in top1] == [c.ids for c in greedy] == [c.ids for c in nucleus]


def test_sampler_frequencies_follow_the_distribution():
    # p = softmax(logits) = [0.5, 0.25, 0.125, 0.125]; 40k draws, 4-sigma bounds.
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.125]])).repeat(40000, 1)
    g = torch.Generator().manual_seed(0)

    def u():
        return torch.rand((40000, 1), generator=g, dtype=torch.float64)

    tokens, logprobs = sample_tokens(logits, SamplingParams(temperature=1.0), u())
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    assert torch.allclose(freq, torch.tensor([0.5, 0.25, 0.125, 0.125]), atol=4 * (0.25 / 40000) ** 0.5)
    torch.testing.assert_close(logprobs, torch.log(torch.tensor([0.5, 0.25, 0.125, 0.125]))[tokens])
    # top_k=2 keeps tokens {0, 1} with renormalised mass [2/3, 1/3]; log-probs stay the
    # untruncated policy's (ALGORITHMS.md §1).
    tokens, logprobs = sample_tokens(logits, SamplingParams(top_k=2), u())
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    assert freq[2:].sum() == 0 and abs(freq[0] - 2 / 3) < 0.01
    torch.testing.assert_close(logprobs, torch.log(torch.tensor([0.5, 0.25]))[tokens])
    # top_p=0.7: the mass before token 1 is 0.5 < 0.7, before token 2 it is 0.75 >= 0.7 -> {0, 1}.
    tokens, _ = sample_tokens(logits, SamplingParams(top_p=0.7), u())
    assert set(tokens.tolist()) == {0, 1}
    # temperature 0.5 squares the odds: p ∝ [0.25, 0.0625, 0.015625, 0.015625] / 0.34375.
    tokens, logprobs = sample_tokens(logits, SamplingParams(temperature=0.5), u())
    expected = torch.tensor([0.25, 0.0625, 0.015625, 0.015625]) / 0.34375
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    assert torch.allclose(freq, expected, atol=0.01)
    torch.testing.assert_close(logprobs, expected.log()[tokens])


def test_cache_is_reused_and_bad_input_rejected(tiny_checkpoint):
    engine = _engine(tiny_checkpoint("qwen2"))
    engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=8, seed=0))
    cache = engine.cache
    engine.generate(PROMPTS[:1], SamplingParams(n=1, max_new_tokens=4, seed=0))
    assert engine.cache is cache  # smaller request: same preallocated tensors
    with pytest.raises(ValueError, match="empty prompt"):
        engine.generate([""], SamplingParams())
    with pytest.raises(ValueError, match="max_position_embeddings"):
        engine.generate(["hi"], SamplingParams(max_new_tokens=10**6))


def test_compiled_decode_matches_eager(tiny_checkpoint):
    """The fast path (torch.compile of the decode step) against the reference eager step."""
    folder = tiny_checkpoint("qwen3")
    eager = _engine(folder)
    fast = _engine(folder, decode_fn=compiled_decode_step())
    for params in (SamplingParams(n=2, max_new_tokens=12, seed=4), SamplingParams(temperature=0, max_new_tokens=12)):
        a, b = eager.generate(PROMPTS, params), fast.generate(PROMPTS, params)
        assert [x.ids for x in a] == [x.ids for x in b]
        for x, y in zip(a, b):
            torch.testing.assert_close(x.logprobs, y.logprobs, atol=1e-5, rtol=0)


def test_decode_step_compiles_once_for_all_positions_and_batch_sizes(tiny_checkpoint):
    """Cache position and active-row count change every step / window; the decode step must
    trace to one dynamic graph (plus the first, specialised one), not one per step: an index
    write `cache[:, :, pos] = k` once made Dynamo recompile at every position."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    folder = tiny_checkpoint("qwen2")
    engine = _engine(folder, decode_fn=torch.compile(decode_step, backend=counter, dynamic=True), check_every=2)
    # Different prompt lengths and rows finishing at different steps: positions and batch sizes vary.
    completions = engine.generate(PROMPTS * 3, SamplingParams(n=2, temperature=1.0, max_new_tokens=40, seed=3))
    assert len({len(c.ids) for c in completions}) > 1  # rows did finish at different lengths
    engine.generate(PROMPTS[:2], SamplingParams(n=3, temperature=1.0, max_new_tokens=24, seed=5))
    assert counter.frame_count <= 2, counter.frame_count
