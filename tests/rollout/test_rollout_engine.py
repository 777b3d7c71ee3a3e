"""The generation engine, tested by its properties on tiny random models: the same seed gives the same
tokens, greedy decoding is deterministic, budgets and stops are respected, n samples come back."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from pillion.model.checkpoint import load_model
from pillion.model.sequences import pack, response_logprobs
from pillion.model.tokenizer import eos_token_ids, load_tokenizer
from pillion.rollout.engine import Engine, SamplingParams
from pillion.rollout.step import compiled_decode_step, decode_step
from tests.conftest import FAMILIES

PROMPTS = ["12+35=", "What is 7 times 8?", "x"]
# 12 of the tiny models' 320 tokens: a random model then stops with probability ~1/27 per token,
# so the samples of one call end at very different lengths.
MANY_EOS = list(range(97, 109))


def _engine(folder, eos=None, **kwargs):
    tokenizer = load_tokenizer(folder)
    eos = eos_token_ids(folder, tokenizer) if eos is None else eos
    return Engine(load_model(folder).eval(), tokenizer, eos, **kwargs)


def _assert_same(a, b):
    """Same rows, tokens and finish reasons; log-probs equal up to float32 rounding (the matmuls
    of a step may block differently for another number of rows)."""
    assert [(x.prompt_index, x.sample_index, x.ids, x.finish_reason) for x in a] == \
        [(x.prompt_index, x.sample_index, x.ids, x.finish_reason) for x in b]
    for x, y in zip(a, b):
        torch.testing.assert_close(x.logprobs, y.logprobs, atol=1e-5, rtol=0)


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


@pytest.mark.parametrize("max_rows", [None, 2])
def test_max_new_tokens_and_length_finish(tiny_checkpoint, max_rows):
    engine = _engine(tiny_checkpoint("llama"), max_rows=max_rows)
    out = engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=5, seed=0))
    for c in out:
        assert len(c.ids) <= 5 and len(c.logprobs) == len(c.ids)
        assert c.finish_reason == ("length" if len(c.ids) == 5 else "stop")


@pytest.mark.parametrize("max_rows", [None, 2])
def test_stops_on_eos_and_keeps_it(tiny_checkpoint, max_rows):
    folder = tiny_checkpoint("qwen3")
    engine = _engine(folder, max_rows=max_rows)
    free = engine.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=12))
    # Declare the 4th greedy token of prompt 0 an EOS id: generation must stop right there.
    eos = free[0].ids[3]
    engine.eos_ids = [eos]
    stopped = engine.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=12))
    first = free[0].ids.index(eos)
    assert stopped[0].ids == free[0].ids[: first + 1]
    assert stopped[0].finish_reason == "stop"
    assert stopped[0].text == engine.tokenizer.decode(stopped[0].ids, skip_special_tokens=True)
    # Rows that finish leave their slots (refilled, or compacted away): the rows still running
    # must decode exactly as they did with every row present.
    running = [i for i, c in enumerate(free) if eos not in c.ids]
    assert running, "the test needs a row that never emits the chosen EOS"
    for i in running:
        assert stopped[i].ids == free[i].ids and stopped[i].finish_reason == "length"


@pytest.mark.parametrize("check_every,max_rows", [(1, None), (3, 2), (8, 1)])
def test_stop_strings(tiny_checkpoint, check_every, max_rows):
    folder = tiny_checkpoint("qwen2")
    engine = _engine(folder, check_every=check_every, max_rows=max_rows)
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


def test_release_drops_the_cache_and_the_next_call_is_unchanged(tiny_checkpoint):
    """`release` (after an evaluation's large call) frees the cache; the next call makes a fresh
    one and samples what it would have; with static shapes (CUDA graphs' addresses) it is kept."""
    params = SamplingParams(n=3, max_new_tokens=8, seed=1)
    kept = _engine(tiny_checkpoint("qwen2"))
    released = _engine(tiny_checkpoint("qwen2"))
    for engine in (kept, released):
        engine.generate(PROMPTS, SamplingParams(n=4, max_new_tokens=16, seed=0))  # the large call
    released.release()
    assert released.cache is None and released.slots is None
    _assert_same(released.generate(PROMPTS[:2], params), kept.generate(PROMPTS[:2], params))
    assert released.cache.rows == 6 and kept.cache.rows == 12  # sized for this call, not the large one
    static = _engine(tiny_checkpoint("qwen2"), static=True)
    static.generate(PROMPTS, params)
    cache = static.cache
    static.release()
    assert static.cache is cache


@pytest.mark.slow  # an inductor compile of the whole step (decode, sampling, bookkeeping): ~25-50 s here
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
    """Positions, spans and active-slot counts change every step / window; the decode step must
    trace to one dynamic graph, not one per step (an index write `cache[:, :, pos] = k` once made
    Dynamo recompile at every position), nor a second one when a single row is left or asked for
    (Dynamo specialises a size of 1: the engine decodes at least `min_slots` = 2 slots), and a
    spare slot leaves the completions as the eager step gives them."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    folder = tiny_checkpoint("qwen2")
    engine = _engine(folder, eos=MANY_EOS, decode_fn=compiled_decode_step(backend=counter), check_every=2)
    eager = _engine(folder, eos=MANY_EOS, check_every=2)
    # Different prompt lengths and rows finishing at different steps: positions and batch sizes vary,
    # down to one live row at the end.
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=60, seed=8)
    live = []  # live rows at each window
    window = engine._decode_window
    engine._decode_window = lambda run: live.append(sum(r is not None for r in run.rows)) or window(run)
    completions = engine.generate(PROMPTS * 3, params)
    assert len({len(c.ids) for c in completions}) > 1 and 1 in live, live  # rows ended apart, one was left alone
    _assert_same(completions, eager.generate(PROMPTS * 3, params))
    engine.generate(PROMPTS[:2], SamplingParams(n=3, temperature=1.0, max_new_tokens=24, seed=5))
    one = SamplingParams(n=1, temperature=1.0, max_new_tokens=8, seed=6)
    _assert_same(engine.generate(PROMPTS[:1], one), eager.generate(PROMPTS[:1], one))  # a call of one row
    assert counter.frame_count == 1, counter.frame_count


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_continuous_batching_equals_one_slot_per_row(tiny_checkpoint, temperature):
    """Rows admitted into 1 or 3 slots as others finish (and checked every 1, 5 or 8 steps) give
    exactly the completions of one slot per row: randomness is keyed by (seed, row, step)."""
    folder = tiny_checkpoint("qwen2")
    params = SamplingParams(n=3, temperature=temperature, max_new_tokens=24, seed=11)
    eos = MANY_EOS
    if temperature == 0:  # greedy rows of a random model rarely stop: make the 6th token of one an EOS
        eos = [_engine(folder, eos=[]).generate(PROMPTS[:1], params)[0].ids[5]]
    reference = _engine(folder, eos=eos).generate(PROMPTS, params)
    assert len({len(c.ids) for c in reference}) >= 2 and {c.finish_reason for c in reference} == {"stop", "length"}
    for max_rows, check_every in ((1, 1), (3, 5), (3, 8), (9, 3)):
        engine = _engine(folder, eos=eos, max_rows=max_rows, check_every=check_every)
        _assert_same(engine.generate(PROMPTS, params), reference)
        assert engine.cache.rows == max_rows


def test_admission_order_does_not_change_completions(tiny_checkpoint):
    """The queue shuffled (samples of one prompt admitted apart, the prompt prefilled again each
    time): the same completions."""
    import random

    folder = tiny_checkpoint("llama")
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=20, seed=2)
    reference = _engine(folder, eos=MANY_EOS).generate(PROMPTS, params)
    engine = _engine(folder, eos=MANY_EOS, max_rows=2)
    start = engine._start

    def shuffled_start(prompts, p):
        run = start(prompts, p)
        random.Random(0).shuffle(run.queue)
        return run

    engine._start = shuffled_start
    _assert_same(engine.generate(PROMPTS, params), reference)


def test_stream_yields_completions_as_they_finish(tiny_checkpoint):
    engine = _engine(tiny_checkpoint("qwen2"), eos=MANY_EOS, check_every=4)
    params = SamplingParams(n=4, max_new_tokens=32, seed=5)
    streamed = list(engine.stream(PROMPTS, params))
    # All rows start together, so a row leaves at the check after its last token: finishing
    # order is by ceil(length / 4).
    windows = [-(-len(c.ids) // 4) for c in streamed]
    assert windows == sorted(windows) and len(set(windows)) > 1
    ordered = sorted(streamed, key=lambda c: (c.prompt_index, c.sample_index))
    _assert_same(ordered, engine.generate(PROMPTS, params))


def test_static_shape_step_and_race_sampler_equal_the_cpu_path(tiny_checkpoint):
    """What CUDA runs, on CPU: the static-shape step (whole cache span, slot buckets, a rounded
    length) gives the completions of the CPU-tuned step, with either sampler."""
    folder = tiny_checkpoint("qwen3")
    for sampler in ("race", "cdf"):
        params = SamplingParams(n=3, temperature=0.8, top_k=50, max_new_tokens=20, seed=9)
        dynamic = _engine(folder, eos=MANY_EOS, sampler=sampler).generate(PROMPTS, params)
        static = _engine(folder, eos=MANY_EOS, sampler=sampler, static=True, max_rows=4)
        _assert_same(static.generate(PROMPTS, params), dynamic)


def test_compiled_static_step_does_not_recompile_across_steps_and_refills(tiny_checkpoint):
    """One compiled frame for the static step: every step and every slot refill reuses it (on
    CUDA, one captured graph replayed), and it gives the eager step's completions."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    folder = tiny_checkpoint("qwen2")
    step = torch.compile(decode_step, backend=counter, dynamic=True, fullgraph=True)
    engine = _engine(folder, eos=MANY_EOS, decode_fn=step, static=True, max_rows=3, sampler="race")
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=24, seed=4)
    compiled = engine.generate(PROMPTS, params)  # 9 rows through 3 slots: many refills
    assert counter.frame_count == 1, counter.frame_count
    eager = _engine(folder, eos=MANY_EOS, static=True, max_rows=3, sampler="race").generate(PROMPTS, params)
    _assert_same(compiled, eager)


def test_long_prompts_prefill_in_bounded_chunks(tiny_checkpoint):
    """prefill_tokens=8: every prefill call holds at most 8 tokens (a 60-token prompt goes in 8
    pieces), and the completions are those of one-piece prefills."""
    folder = tiny_checkpoint("qwen2")
    prompts = ["a long prompt " * 4 + "that goes on", "short", "mid-sized prompt"]
    params = SamplingParams(n=2, max_new_tokens=10, seed=1)
    reference = _engine(folder).generate(prompts, params)
    engine = _engine(folder, prefill_tokens=8)
    sizes = []
    extend = engine.model.extend

    def spy(tokens, *args, **kwargs):
        sizes.append(tokens.numel())
        return extend(tokens, *args, **kwargs)

    engine.model.extend = spy
    _assert_same(engine.generate(prompts, params), reference)
    assert max(sizes) <= 8 and sum(sizes) >= len(engine.encode(prompts[0])) - 1


def test_cache_bytes_sizes_the_slots(tiny_checkpoint):
    folder = tiny_checkpoint("qwen2")
    engine = _engine(folder, eos=MANY_EOS)
    cfg = engine.model.cfg
    params = SamplingParams(n=2, max_new_tokens=16, seed=0)
    length = max(len(engine.encode(p)) for p in PROMPTS) + 16
    per_row = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * length * 4  # K and V, float32
    budget = _engine(folder, eos=MANY_EOS, cache_bytes=2 * per_row + per_row // 2)
    _assert_same(budget.generate(PROMPTS, params), engine.generate(PROMPTS, params))
    assert budget.cache.rows == 2 and engine.cache.rows == 6


def test_continuous_logprobs_match_training_forward(tiny_checkpoint):
    """Engine log-probs equal the trainer's also when rows are refilled into slots and sampled
    by the race sampler over the static step."""
    engine = _engine(tiny_checkpoint("qwen2"), eos=MANY_EOS, max_rows=2, static=True, sampler="race")
    out = engine.generate(PROMPTS, SamplingParams(n=3, temperature=0.7, max_new_tokens=16, seed=3))
    batch = pack([c.prompt_ids for c in out], [c.ids for c in out], engine.pad_id)
    with torch.no_grad():
        trainer, _ = response_logprobs(engine.model, batch, 0.7)
    for i, c in enumerate(out):
        torch.testing.assert_close(c.logprobs, trainer[i, : len(c.ids)], atol=1e-5, rtol=0)


def test_split_spans_hand_examples():
    from pillion.rollout.engine import _split_spans

    # 8 slots, one row needing 100 columns, seven needing 20: all over 100 costs 8 x 100 = 800
    # score columns; the long row apart costs 8 x 20 + 1 x 100 = 260 (two apart: 8 x 20 + 2 x
    # 100 = 360), under 3/4 of 800: split, slot 5 alone over 100.
    needs, slots = [20, 20, 20, 20, 20, 100, 20, 20], [0, 1, 2, 3, 4, 5, 6, 7]
    assert _split_spans(needs, slots, 8) == (20, [5], 100)
    # Needs 100, 90, 80, ...: one apart costs 8 x 90 + 100 = 820 > 800: no split.
    assert _split_spans([100, 90, 80, 70, 60, 50, 40, 30], slots, 8) == (100, [], 0)
    # Two rows well apart, both long (k = 2 <= 8 // 4): 8 x 10 + 2 x 200 = 480 <= 0.75 x 1600.
    assert _split_spans([200, 10, 10, 195, 10, 10, 10, 10], slots, 8) == (10, [0, 3], 200)


def test_long_rows_attending_apart_give_the_same_completions(tiny_checkpoint):
    """One long prompt among short ones: on CPU its rows attend over their own span apart from
    the others (`far`); the completions equal the static step's, where every slot attends over
    the whole cache."""
    from pillion.rollout import engine as engine_module

    folder = tiny_checkpoint("qwen2")
    prompts = ["a much longer prompt than the others, " * 3, "1+1=", "2+2=", "3+3=", "x"]
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=16, seed=6)
    splits = []
    split = engine_module._split_spans

    def spy(needs, slots, active):
        splits.append(split(needs, slots, active))
        return splits[-1]

    engine = _engine(folder, eos=MANY_EOS, max_rows=8)
    engine_module._split_spans = spy
    try:
        apart = engine.generate(prompts, params)
    finally:
        engine_module._split_spans = split
    assert any(far for _, far, _ in splits)  # the long rows did attend apart
    _assert_same(apart, _engine(folder, eos=MANY_EOS, max_rows=8, static=True).generate(prompts, params))


def test_every_tensor_the_step_reads_is_a_static_input_for_cuda_graphs(tiny_checkpoint):
    """A CUDA-graph replay copies in any input that is neither a parameter nor marked static,
    and refuses to capture a step that mutates one: every tensor `decode_step` receives (the
    weights, their transposed views, cache, RoPE table, slot state) must be one or the other."""
    engine = _engine(tiny_checkpoint("qwen3"), static=True, sampler="race")
    pinned, steps = set(), []
    engine._pin = lambda *tensors: pinned.update(id(t) for t in tensors)  # what CUDA would mark
    engine.decode_fn = lambda *args: (steps.append(args), decode_step(*args))
    engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=4, seed=0))
    _, weights, cache, slots, rope, *_ = steps[-1]
    tensors = [t for layer in weights.layers for t in vars(layer).values() if t is not None]
    tensors += [weights.embedding, weights.final_norm, weights.lm_head_t, *cache.k, *cache.v, rope]
    tensors += list(vars(slots).values())
    assert all(isinstance(t, torch.nn.Parameter) or id(t) in pinned for t in tensors)
    assert any(id(layer.o_t) in pinned for layer in weights.layers)  # the views were marked
