"""Tool calls inside rollouts (pillion/rollout/tools.py and the engine's hook): a scripted model
that writes tool calls, the real sandbox, the masks the trainer sees, and a tiny random model
whose multi-turn rows must keep engine and trainer log-probs equal."""

import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pillion import config as C
from pillion.model.tiny import make_tokenizer
from pillion.problem import Problem
from pillion.rewards import RewardResult
from pillion.rewards.code import SandboxLimits
from pillion.rollout.engine import Engine, SamplingParams
from pillion.rollout.tools import RowTools, ToolResult, Tools, next_call, output_ids, run_calls, tool_metrics
from pillion.train.batch import Sample, make_batch

EOS = 256  # <|endoftext|> of the tiny byte-level tokenizer


class ScriptedModel:
    """Stands in for a Transformer in the engine: greedy decoding writes scripted turns.

    It keeps its context where a real model keeps keys: column c of a cache row holds the token
    at position c (written by `extend` and `decode`), so prefix sharing, compaction and the
    tool splice move it exactly as they move real keys. A row's prompt selects its turns; the
    model writes turn 0, and once the output frame's closing (`close`) follows a whole turn,
    the next turn; EOS when a turn is done and no output follows it (or none is left).
    """

    def __init__(self, tokenizer, scripts: dict[str, list[str]], close: str):
        encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        self.scripts = {tuple(encode(p)): [encode(t) for t in turns] for p, turns in scripts.items()}
        self.close = encode(close)
        self.cfg = SimpleNamespace(num_layers=1, num_kv_heads=1, head_dim=1, max_position_embeddings=4096)
        self.lm_head = SimpleNamespace(weight=torch.zeros(1))
        self.inv_freq = torch.ones(1)

    def decode_weights(self, contiguous=False):
        return SimpleNamespace(layers=[], lm_head_t=self.lm_head.weight)

    def extend(self, tokens, positions, rows, span, cache, weights=None, rope=None):
        for row, ids, cols in zip(rows.tolist(), tokens, positions):
            cache.k[0][row, 0, 0, cols] = ids.float()

    def decode(self, tokens, positions, key_bias, cache, weights=None, rope=None, far=None):
        rows = torch.arange(len(tokens))
        cache.k[0][rows, 0, 0, positions] = tokens.float()
        logits = torch.zeros(len(tokens), 320)  # [A, vocab]
        for a in range(len(tokens)):
            logits[a, self.next_token(cache.k[0][a, 0, 0, : int(positions[a]) + 1].long().tolist())] = 30.0
        return logits

    def next_token(self, context: list[int]) -> int:
        prompt = next(p for p in self.scripts if tuple(context[: len(p)]) == p)
        turns, response = self.scripts[prompt], context[len(prompt) :]
        start = 0
        for k, turn in enumerate(turns):
            if len(response) - start < len(turn):
                return turn[len(response) - start]
            rest, n = response[start + len(turn) :], len(self.close)
            ends = [j + n for j in range(len(rest) - n + 1) if rest[j : j + n] == self.close]
            if not ends or k + 1 == len(turns):
                return EOS
            start += len(turn) + ends[0]
        return EOS


def scripted_engine(scripts, tools, **kwargs):
    tokenizer = make_tokenizer()
    close = tools.output.split("{output}")[1]
    return Engine(ScriptedModel(tokenizer, scripts, close), tokenizer, [EOS], tools=tools, **kwargs)


def call(code: str) -> str:
    return f"```python\n{code}\n```\n```output"


GREEDY = SamplingParams(temperature=0, max_new_tokens=200)


def test_tool_output_is_spliced_in_and_the_row_resumes():
    scripts = {"Q1:": [call("print(6 * 7)"), " so \\boxed{42}"], "Q2:": ["no tool: \\boxed{1}"]}
    engine = scripted_engine(scripts, Tools())
    out = engine.generate(list(scripts), GREEDY)
    first, second = out
    # The sandbox printed 42; the frame "\n{output}\n```\n" was appended, then the row resumed.
    assert first.text == call("print(6 * 7)") + "\n42\n```\n" + " so \\boxed{42}"
    assert first.finish_reason == "stop" and first.ids[-1] == EOS
    assert (first.tool_calls, first.tool_errors) == (1, 0)
    start = len(engine.encode(call("print(6 * 7)")))
    spliced = engine.encode("\n42\n```\n")  # 8 byte tokens
    assert first.ids[start : start + len(spliced)] == spliced
    expected = torch.ones(len(first.ids), dtype=torch.bool)
    expected[start : start + len(spliced)] = False
    assert torch.equal(first.sampled, expected)
    assert torch.all(first.logprobs[~first.sampled] == 0)
    assert second.text == "no tool: \\boxed{1}" and second.tool_calls == 0 and bool(second.sampled.all())
    # Same completions with one slot for both rows and a host check after every token: the
    # splice does not depend on where in a window the call closed.
    again = scripted_engine(scripts, Tools(), max_rows=1, check_every=1).generate(list(scripts), GREEDY)
    assert [(c.ids, c.sampled.tolist()) for c in again] == [(c.ids, c.sampled.tolist()) for c in out]
    assert tool_metrics(engine.tools, out) == {"tool_calls": 0.5, "tool_errors": 0.0}
    assert tool_metrics(None, out) == {}


def fake_run(code: str) -> ToolResult:
    return ToolResult(f"ran {code}", error=False)


def test_call_limit_and_tag_pairs():
    tools = Tools(start="<code>", end="</code>", output="<output>{output}</output>", max_calls=2, run=fake_run)
    turns = ["<code>a</code>", "<code>b</code>", "<code>c</code>", "never"]
    out = scripted_engine({"P:": turns}, tools).generate(["P:"], GREEDY)[0]
    # Two calls ran; the third was left as text (no output), so the script ended the row there.
    assert out.text == "<code>a</code><output>ran a</output><code>b</code><output>ran b</output><code>c</code>"
    assert out.tool_calls == 2 and out.finish_reason == "stop"
    assert int((~out.sampled).sum()) == 2 * len("<output>ran a</output>")


def test_output_is_cut_to_its_budget_and_to_max_new_tokens():
    tokenizer = make_tokenizer()
    tools = Tools(max_output_tokens=4)
    ids = output_ids(tokenizer, tools, ToolResult("123456789", False), room=100)
    assert tokenizer.decode(ids) == "\n1234\n```\n"  # the output cut to 4 tokens, the frame kept
    assert output_ids(tokenizer, tools, ToolResult("123456789", False), room=3) == ids[:3]
    # A program cannot print an end-of-sequence token into the context: the text is split.
    assert EOS not in output_ids(tokenizer, tools, ToolResult("<|endoftext|>", False), room=100)
    # A row whose output fills max_new_tokens ends there, on its output.
    scripts = {"Q:": [call("print(1)"), "more"]}
    head = len(call("print(1)"))
    params = SamplingParams(temperature=0, max_new_tokens=head + 3)
    out = scripted_engine(scripts, Tools(run=fake_run)).generate(["Q:"], params)[0]
    assert out.finish_reason == "length" and len(out.ids) == head + 3 and out.text.endswith("\nra")
    assert out.sampled.tolist() == [True] * head + [False] * 3


def test_next_call_finds_each_call_once():
    tokenizer = make_tokenizer()
    tools = Tools(max_calls=5)
    state = RowTools()
    text = "x " + call("print(1)") + " tail"
    ids = tokenizer.encode(text, add_special_tokens=False)
    cut = len(tokenizer.encode("x " + call("print(1)"), add_special_tokens=False))
    assert next_call(tokenizer, tools, state, ids, cut - 1) is None and state.checked == cut - 1
    assert next_call(tokenizer, tools, state, ids, len(ids)) == (cut, "print(1)")
    assert next_call(tokenizer, tools, state, ids, len(ids)) is None  # not found twice
    # An end marker with no code block before it (back to the floor) is not a call.
    ids = tokenizer.encode("```output then " + call("2"), add_special_tokens=False)
    assert next_call(tokenizer, tools, RowTools(), ids, len(ids)) == (len(ids), "2")
    # The output of an earlier call lies below the floor: a marker printed by a program is not a call.
    state = RowTools(floor=20, checked=20)
    ids = tokenizer.encode("```python\nprint(1)\n```output" + "." * 10, add_special_tokens=False)
    assert next_call(tokenizer, tools, state, ids, len(ids)) is None


def test_identical_programs_run_once():
    seen = []

    def run(code):
        seen.append(code)
        return ToolResult(code.upper(), False, timed_out=code == "slow")

    tools = Tools(run=run)
    assert [r.output for r in run_calls(tools, ["a", "b", "a"])] == ["A", "B", "A"]
    assert [r.output for r in run_calls(tools, ["b", "slow"])] == ["B", "SLOW"]
    assert [r.output for r in run_calls(tools, ["slow"])] == ["SLOW"]
    # "a" and "b" ran once each; a call that hit the wall clock is run again.
    assert sorted(seen) == ["a", "b", "slow", "slow"]


def test_hostile_calls_are_contained_and_the_run_goes_on():
    # A short path (the call's text must fit the scripted budget; pytest-xdist's tmp_path is longer)
    outside = Path(tempfile.mkdtemp(prefix="pt")) / "escaped.txt"
    hostile = {
        "H1:": "while True:\n    pass",
        "H2:": "import os\nos.fork()\nprint('forked')",
        "H3:": "import socket\nsocket.create_connection(('1.1.1.1', 80))",
        "H4:": f"open({str(outside)!r}, 'w').write('x')",
        "H5:": "print(sum(range(10)))",
    }
    scripts = {p: [call(code), " after"] for p, code in hostile.items()}
    # The CPU limit (1 s) stops the loop; the wall clock is only a backstop for a busy machine.
    tools = Tools(limits=SandboxLimits(wall_s=60.0, cpu_s=1))
    out = scripted_engine(scripts, tools).generate(list(scripts), GREEDY)
    for c, code in zip(out, hostile.values()):
        assert c.tool_calls == 1 and c.text.startswith(call(code)) and c.text.endswith("```\n after")
    loop, fork, network, write, fine = (tool_text(c) for c in out)
    assert [c.tool_errors for c in out] == [1, 1, 1, 1, 0]
    assert "Error" in loop
    assert fork == "\nPermissionError: sandbox: os.fork is not allowed\n```\n"
    assert network == "\nImportError: sandbox: import of socket is not allowed\n```\n"
    assert write == "\nPermissionError: sandbox: writing outside the working directory\n```\n"
    assert not outside.exists()
    shutil.rmtree(outside.parent)
    assert fine == "\n45\n```\n"


def tool_text(c) -> str:
    """The text of a completion's tool-output tokens."""
    return make_tokenizer().decode([t for t, s in zip(c.ids, c.sampled.tolist()) if not s])


def test_tool_tokens_get_no_gradient_no_kl_and_stay_in_context(tiny_checkpoint):
    """The trainer's loss (policy + KL + entropy) has an exactly zero gradient at tool-output
    positions and a non-zero one at sampled positions, while the forward sees the output."""
    from pillion.model.checkpoint import load_model
    from pillion.model.sequences import response_logprobs
    from pillion.train.objective import Counts, actor_loss, advantages, loss_mask

    scripts = {"Q1:": [call("print(3)"), "a\\boxed{3}"], "Q2:": [call("print(4)"), "b\\boxed{4}"]}
    completions = scripted_engine(scripts, Tools(run=fake_run)).generate(list(scripts), GREEDY)
    problem = Problem(id="p", question="q", answer="3")
    samples = [Sample(problem, c, RewardResult(score=s, correct=bool(s), parts={}))
               for c, s in zip(completions, (1.0, 0.0))]
    batch = make_batch(samples, pad_id=EOS, device=torch.device("cpu"))
    tool = torch.zeros_like(batch.response_mask, dtype=torch.bool)  # [B, T]
    for i, c in enumerate(completions):
        tool[i, : len(c.ids)] = ~c.sampled
    assert tool.sum() == 2 * len("\nran print(3)\n```\n")
    assert torch.all(batch.response_mask[tool] == 0) and torch.all(batch.engine_logprobs[tool] == 0)
    assert torch.all(batch.seqs.response_mask[tool] == 1)  # still part of the sequence the model reads

    cfg = C.resolve(C.TrainConfig, overrides=["group_size=2", "loss.kl_coef=0.5", "loss.entropy_coef=0.1"])
    model = load_model(tiny_checkpoint("qwen2"))
    logp, entropy = response_logprobs(model, batch.seqs, with_entropy=True)  # [B, T]
    logp.retain_grad()
    entropy.retain_grad()
    batch.ref_logprobs = logp.detach() - 0.3
    batch.advantages, _ = advantages(cfg, batch.scores, batch.response_mask)
    batch.loss_mask = loss_mask(cfg, batch.response_mask, batch.correct, batch.truncated)
    counts = Counts.of(batch.loss_mask, batch.correct, cfg.loss.agg, cfg.max_new_tokens)
    loss, _ = actor_loss(cfg, logp, logp.detach(), batch, counts, entropy)
    loss.backward()
    assert torch.all(logp.grad[tool] == 0) and torch.all(entropy.grad[tool] == 0)
    assert torch.all(logp.grad[batch.response_mask.bool()] != 0)


def test_multi_turn_rows_keep_engine_and_trainer_logprobs_equal(tiny_checkpoint):
    """A random model and a one-character end marker (no start marker: everything since the
    last turn is the 'code'): rows make several calls. The completions do not depend on the
    slots or the check interval, and the log-prob check, over sampled tokens, still finds the
    engine, the trainer and transformers in agreement, which it cannot unless each output was
    written into the cache where the trainer's forward reads it in the sequence."""
    from pillion.model.checkpoint import load_model
    from pillion.model.tokenizer import eos_token_ids, load_tokenizer
    from pillion.rollout.check import check

    folder = tiny_checkpoint("qwen2")
    tokenizer, model = load_tokenizer(folder), load_model(folder).eval()
    eos = eos_token_ids(folder, tokenizer)
    params = SamplingParams(n=4, max_new_tokens=40, seed=3, temperature=0.7)  # peakier: repeats a character more
    prompts = ["12+35=", "What is 7 times 8?"]
    # The most frequent letter or digit of these samples becomes the end marker.
    chars = [ch for c in Engine(model, tokenizer, eos).generate(prompts, params) for ch in c.text if ch.isalnum()]
    marker = max(sorted(set(chars)), key=chars.count)
    tools = Tools(start="", end=marker, output="[{output}]", max_calls=3, max_output_tokens=6,
                  run=lambda code: ToolResult(f"{len(code)}:{code[-3:]}", False))
    out = Engine(model, tokenizer, eos, tools=tools).generate(prompts, params)
    again = Engine(model, tokenizer, eos, tools=tools, max_rows=3, check_every=2).generate(prompts, params)
    assert [(c.ids, c.sampled.tolist()) for c in out] == [(c.ids, c.sampled.tolist()) for c in again]
    for x, y in zip(out, again):
        torch.testing.assert_close(x.logprobs, y.logprobs, atol=1e-5, rtol=0)
    assert sum(c.tool_calls for c in out) >= 4 and max(c.tool_calls for c in out) >= 2, marker

    report = check(folder, prompts, 4, 40, 0.7, "float32", "cpu", 3, tools=tools)
    assert report["tool_calls"] == sum(c.tool_calls for c in out) and report["tool_tokens"] > 0
    for pair in ("engine_vs_trainer", "engine_vs_transformers", "trainer_vs_transformers"):
        assert report[pair]["max_abs_error"] < 1e-4, (pair, report[pair])


def test_an_empty_output_resumes_the_row_right_after_the_call():
    tools = Tools(start="<c>", end="</c>", output="{output}", run=lambda code: ToolResult("", False))
    out = scripted_engine({"E:": ["<c>x</c>", "y"]}, tools, check_every=3).generate(["E:"], GREEDY)[0]
    # Nothing was appended (an empty frame): the row went on from the call's end, to its next turn.
    assert out.text == "<c>x</c>y" and out.tool_calls == 1 and bool(out.sampled.all())


@pytest.mark.parametrize("override, message", [
    ("tool.max_calls=-1", "'tool.max_calls': -1"),
    ("tool.max_output_tokens=0", "'tool.max_output_tokens'"),
    ("tool.timeout=0", "'tool.timeout'"),
    ("tool.end=", "'tool.end'"),
    ("tool.output=no-placeholder", "'tool.output'"),
])
def test_tool_keys_are_checked(override, message):
    with pytest.raises(C.ConfigError, match=message):
        C.resolve(C.TrainConfig, overrides=["algo=tool", override])


@pytest.mark.slow  # ~20-40 s on 2 busy cores, most of it the run's setup and evaluations
def test_train_algo_tool_runs_and_logs_tool_metrics(tmp_path):
    """`pillion train algo=tool` through the CLI on the shipped model, for two short steps. The
    model seldom writes ```output, so here "=" (which it writes in every arithmetic answer) ends
    a call: rows become multi-turn, and the engine's log-probs still match the trainer's."""
    import json

    from pillion.cli import main

    out = tmp_path / "tool"
    assert main(["train", "algo=tool", f"out={out}", "steps=2", "prompts_per_step=2", "group_size=4",
                 "max_new_tokens=32", "data.heldout_size=2", "eval.k=1", "eval.max_new_tokens=32",
                 "data.synthetic_size=200", 'tool.start=""', "tool.end='='", "tool.output='[{output}]'"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["tool_calls"] > 0 and 0 <= r["tool_errors"] <= r["tool_calls"] for r in rows), rows
    assert all(r["logprob_error"] < 1.001 for r in rows)
    assert json.loads((out / "report.json").read_text())["pass1_after"] >= 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_skipping_windows_without_the_markers_last_character_finds_the_same_calls(seed):
    """The fast path of `next_call` (no decode unless a token can end the marker) against the
    plain search on every window, on random texts full of near-markers fed in random windows."""
    import random

    from pillion.rollout.tools import closing_ids

    tokenizer, rng = make_tokenizer(), random.Random(seed)
    pieces = ["```", "python", "\n", "output", "print(1)", "t", "x", "```output", "```python\n"]
    ids = tokenizer.encode("".join(rng.choice(pieces) for _ in range(200)), add_special_tokens=False)
    fast, plain = Tools(max_calls=1000), Tools(max_calls=1000)
    plain.end_ids[id(tokenizer)] = None  # no skipping: decode every window
    assert closing_ids(tokenizer, fast) == {i for i in range(len(tokenizer)) if "t" in tokenizer.decode([i])}
    found = {"fast": [], "plain": []}
    for name, tools in (("fast", fast), ("plain", plain)):
        state, upto, windows = RowTools(), 0, random.Random(seed + 100)
        while upto < len(ids):
            upto = min(len(ids), upto + windows.randint(1, 9))
            while (call := next_call(tokenizer, tools, state, ids, upto)) is not None:
                found[name].append(call)
    assert found["fast"] == found["plain"] and len(found["fast"]) >= 3
