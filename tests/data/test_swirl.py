"""SWiRL step samples: a two-call tool trajectory cut, masked and filtered, checked by hand; and
`pillion data swirl` on the shipped model: rows `pillion sft` reads, resumable."""

import json

import pytest
import torch

from pillion.cli import main
from pillion.data import swirl
from pillion.data.formats import read
from pillion.data.templates import render_prompt
from pillion.model.sequences import pack
from pillion.model.tiny import make_tokenizer
from pillion.problem import Problem
from pillion.train.sft import examples

# A trajectory with two tool calls, as the engine returns it (default markers, rollout/tools.py):
# two actions that end in the end marker, each followed by a tool output (not sampled), then the
# answer. Byte tokenizer: one token per character, plus EOS.
ACTION_1 = "```python\nprint(3*4)\n```output"  # 3 + 6 + 1 + 10 + 1 + 9 = 30 tokens
OUTPUT_1 = "\n12\n```\n"  # 8
ACTION_2 = "```python\nprint(12+5)\n```output"  # 3 + 6 + 1 + 11 + 1 + 9 = 31
OUTPUT_2 = "\n17\n```\n"  # 8
ACTION_3 = "So 3*4+5=17. \\boxed{17}"  # 3 + 9 + 1 + 10 = 23, then EOS: 24


@pytest.fixture(scope="module")
def trajectory():
    tokenizer = make_tokenizer()
    pieces = [(ACTION_1, True), (OUTPUT_1, False), (ACTION_2, True), (OUTPUT_2, False), (ACTION_3, True)]
    ids, sampled = [], []
    for text, was_sampled in pieces:
        piece = tokenizer.encode(text, add_special_tokens=False)
        ids += piece
        sampled += [was_sampled] * len(piece)
    ids.append(tokenizer.eos_token_id)
    sampled.append(True)
    problem = Problem(id="arith/7", question="What is 3*4+5?", answer="17", source="arith")
    return tokenizer, problem, ids, sampled


def test_the_cut_by_hand(trajectory):
    tokenizer, problem, ids, sampled = trajectory
    assert len(ids) == 30 + 8 + 31 + 8 + 24 == 101
    # actions: [0, 30), [30 + 8, 38 + 31) = [38, 69), [69 + 8, 101) = [77, 101)
    assert swirl.action_spans(len(ids), sampled) == [(0, 30), (38, 69), (77, 101)]
    assert swirl.action_spans(5, None) == [(0, 5)] and swirl.action_spans(0, None) == []
    samples = swirl.cut(problem, 3, ids, sampled)
    assert [(s.step, s.steps, s.trajectory, s.continues) for s in samples] == [
        (1, 3, 3, True), (2, 3, 3, True), (3, 3, 3, False)]
    assert [len(s.context_ids) for s in samples] == [0, 38, 77]
    assert [len(s.action_ids) for s in samples] == [30, 31, 24]
    decode = lambda t: tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
    rows = [swirl.row(s, decode) for s in samples]
    assert [r["step_context"] for r in rows] == ["", ACTION_1 + OUTPUT_1, ACTION_1 + OUTPUT_1 + ACTION_2 + OUTPUT_2]
    assert [r["solution"] for r in rows] == [ACTION_1, ACTION_2, ACTION_3]  # EOS is SFT's to add
    assert [r["id"] for r in rows] == ["7/t3/s1", "7/t3/s2", "7/t3/s3"]
    assert all(r["problem_id"] == "arith/7" and r["answer"] == "17" for r in rows)


def test_only_the_action_span_carries_loss(trajectory, tmp_path):
    """The rows, written and read back as a data file, give SFT examples whose response (the
    loss-bearing span) is exactly the action: the prefix joins the prompt, EOS only at the end."""
    tokenizer, problem, ids, sampled = trajectory
    decode = lambda t: tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
    path = tmp_path / "steps.jsonl"
    path.write_text("".join(json.dumps(swirl.row(s, decode)) + "\n" for s in swirl.cut(problem, 0, ids, sampled)))
    problems = read(str(path))
    eos = tokenizer.eos_token_id
    pairs = examples(problems, tokenizer, "qa", eos)
    prompt_only = tokenizer.encode(render_prompt(problem, "qa", tokenizer), add_special_tokens=False)
    # prompts: the rendered question, then the trajectory before the action
    assert [p for p, _ in pairs] == [prompt_only, prompt_only + ids[:38], prompt_only + ids[:77]]
    # responses: the action's tokens; EOS only after the last (a tool output follows the others)
    assert [r for _, r in pairs] == [ids[:30], ids[38:69], ids[77:101]]
    assert pairs[2][1][-1] == eos and eos not in pairs[0][1] + pairs[1][1]
    batch = pack([p for p, _ in pairs], [r for _, r in pairs], eos)
    assert batch.response_mask.sum(1).tolist() == [30, 31, 24]
    for row, (_, response) in enumerate(pairs):  # the masked tokens are the action, in place
        masked = batch.input_ids[row, batch.prompt_len:][batch.response_mask[row].bool()]
        assert masked.tolist() == response


def test_filtering_by_outcome_and_by_a_step_judge(trajectory):
    tokenizer, problem, ids, sampled = trajectory
    decode = lambda t: tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
    samples = swirl.cut(problem, 0, ids, sampled)
    assert swirl.keep(samples, True, decode) == samples  # right answer: every step kept
    assert swirl.keep(samples, False, decode) == [] and swirl.keep(samples, None, decode) == []
    seen = []

    def judge(p, context, action):  # rejects the second call; records what it was shown
        seen.append((p.id, context, action))
        return "12+5" not in action

    kept = swirl.keep(samples, True, decode, judge)
    assert [s.step for s in kept] == [1, 3]
    assert seen == [("arith/7", "", ACTION_1), ("arith/7", ACTION_1 + OUTPUT_1, ACTION_2),
                    ("arith/7", ACTION_1 + OUTPUT_1 + ACTION_2 + OUTPUT_2, ACTION_3)]
    assert swirl.keep(samples, False, decode, judge) == [] and len(seen) == 3  # outcome first: no judge calls


def test_swirl_command_writes_rows_sft_reads_and_resumes(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "question": f"What is {i}+{i + 1}?", "answer": str(2 * i + 1)})
                            + "\n" for i in range(1, 7)))
    out = tmp_path / "steps.jsonl"
    args = ["data", "swirl", "--data", str(data), "--out", str(out), "--k", "2", "--max-calls", "1",
            "--temperature", "0.7", "--batch-prompts", "3", "--device", "cpu"]
    assert main(args) == 0
    text = capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    dropped = [json.loads(line) for line in (tmp_path / "steps.dropped.jsonl").read_text().splitlines()]
    # every problem is accounted for: some kept step, or listed as dropped
    assert {r["problem_id"] for r in rows} | {d["problem_id"] for d in dropped} == {f"generic/{i}" for i in range(1, 7)}
    assert rows, text  # the shipped model answers most of these sums
    assert all(r["step"] <= r["steps"] and r["continues"] == (r["step"] < r["steps"]) for r in rows)
    assert len(read(str(out))) == len(rows)  # a data file for `pillion sft`
    assert main(args) == 0  # resumed: nothing left to do, nothing appended
    assert "6 problems; 6 already in" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == len(rows)


def test_sft_trains_on_step_rows(trajectory, tmp_path):
    """`pillion sft` on step rows: the data loads, the loss is finite (the mask is the action)."""
    tokenizer, problem, ids, sampled = trajectory
    decode = lambda t: tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
    path = tmp_path / "steps.jsonl"
    path.write_text("".join(json.dumps(swirl.row(s, decode)) + "\n" for s in swirl.cut(problem, 0, ids, sampled)))
    assert main(["sft", f"out={tmp_path / 'run'}", "steps=2", "batch_size=3", f"data.sources={{steps: '{path}'}}",
                 "data.heldout_size=2", "eval.k=1", "eval.max_new_tokens=8"]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert torch.isfinite(torch.tensor(report["final_loss"]))


def test_step_rows_render_from_their_context_and_train_runs_on_them(trajectory, tmp_path):
    tokenizer, problem, ids, sampled = trajectory
    decode = lambda t: tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
    path = tmp_path / "steps.jsonl"
    path.write_text("".join(json.dumps(swirl.row(s, decode)) + "\n" for s in swirl.cut(problem, 0, ids, sampled)))
    last = read(str(path))[2]
    assert render_prompt(last, "qa") == render_prompt(problem, "qa") + ACTION_1 + OUTPUT_1 + ACTION_2 + OUTPUT_2
    assert main(["train", f"out={tmp_path / 'rl'}", "steps=1", "prompts_per_step=2", "group_size=2",
                 "max_new_tokens=16", f"data.sources={{steps: '{path}'}}", "data.heldout_size=2", "eval.k=1",
                 "eval.max_new_tokens=16"]) == 0
