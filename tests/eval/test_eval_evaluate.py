"""evaluate(): pass@1 / pass@k / groups from scripted completions, and a run on the real engine."""

import json

import pytest
import torch

from pillion.data import generate, render_prompt
from pillion.eval.evaluate import evaluate
from pillion.eval.report import markdown_table
from pillion.eval.samples import EvalConfig
from pillion.model.checkpoint import load_model
from pillion.model.tokenizer import eos_token_ids, load_tokenizer
from pillion.problem import Problem
from pillion.rewards import RewardConfig, score
from pillion.rollout.engine import Completion, Engine


class ScriptedEngine:
    """Answers each prompt with fixed texts (one per sample) and records every call."""

    tokenizer = None  # plain templates ignore the tokenizer

    def __init__(self, script: dict[str, list[tuple[str, int, str]]]):
        self.script = script  # prompt -> [(text, num_tokens, finish_reason)] * n
        self.calls = []

    def generate(self, prompts, params):
        self.calls.append((list(prompts), params))
        out = []
        for index, prompt in enumerate(prompts):
            samples = self.script[prompt]
            assert len(samples) == params.n
            for text, num_tokens, finish in samples:
                out.append(Completion(prompt_ids=[0], ids=list(range(num_tokens)), text=text,
                                      logprobs=torch.zeros(num_tokens), finish_reason=finish,
                                      prompt_index=index))
        return out


RIGHT, WRONG = "so \\boxed{%s}", "so \\boxed{-1}"


def scripted_setup(template="qa"):
    problems = [
        Problem(id="p1", question="6*7?", answer="42", level=1, meta={"subject": "algebra"}),
        Problem(id="p2", question="3+4?", answer="7", level=1, meta={"subject": "geometry"}),
        Problem(id="p3", question="1/2?", answer="\\frac{1}{2}", level=2, meta={"subject": "algebra"}),
        Problem(id="p4", question="5+5?", answer="10", source="gsm8k"),  # no level, no subject
    ]
    samples = [
        [(RIGHT % 42, 10, "stop")] + [(WRONG, 10, "stop")] * 3,  # c = 1
        [(WRONG, 20, "length")] * 4,  # c = 0, every sample truncated
        [(RIGHT % "0.5", 10, "stop")] * 4,  # c = 4 (0.5 equals \frac{1}{2})
        [(RIGHT % 10, 10, "stop")] * 2 + [(WRONG, 10, "stop")] * 2,  # c = 2
    ]
    script = {render_prompt(p, template): s for p, s in zip(problems, samples)}
    return problems, ScriptedEngine(script)


def test_pass_rates_groups_and_lengths_by_hand():
    problems, engine = scripted_setup()
    cfg = EvalConfig(k=4, seed=5, batch_prompts=3, max_new_tokens=20)
    result = evaluate(engine, problems, cfg, template="qa", progress=False)

    # pass@1 = mean of c/k = (1/4 + 0 + 4/4 + 2/4) / 4 = 1.75 / 4
    assert result["pass@1"] == pytest.approx(0.4375, abs=1e-12)
    # pass@4 with n = k = 4 is 1 when c >= 1: (1 + 0 + 1 + 1) / 4
    assert result["pass@k"] == pytest.approx(0.75, abs=1e-12)
    # pass@2 = 1 - C(4-c, 2) / C(4, 2): c=1 -> 1 - 3/6, c=0 -> 0, c=4 -> 1, c=2 -> 1 - 1/6
    assert result["curve"]["1"] == pytest.approx(0.4375, abs=1e-12)
    assert result["curve"]["2"] == pytest.approx((0.5 + 0 + 1 + 5 / 6) / 4, abs=1e-12)
    assert result["curve"]["4"] == pytest.approx(0.75, abs=1e-12)
    assert result["k"] == 4 and result["n"] == 4

    # level 1: p1 (c=1), p2 (c=0) -> pass@1 (0.25 + 0) / 2, pass@4 (1 + 0) / 2; p4 has no level
    assert list(result["by_level"]) == ["1", "2", "unknown"]
    assert result["by_level"]["1"] == pytest.approx({"pass@1": 0.125, "pass@k": 0.5, "n": 2})
    assert result["by_level"]["2"] == pytest.approx({"pass@1": 1.0, "pass@k": 1.0, "n": 1})
    assert result["by_level"]["unknown"] == pytest.approx({"pass@1": 0.5, "pass@k": 1.0, "n": 1})
    # subject from meta, else the source: algebra = p1 + p3 -> (0.25 + 1) / 2
    assert result["by_subject"]["algebra"] == pytest.approx({"pass@1": 0.625, "pass@k": 1.0, "n": 2})
    assert result["by_subject"]["geometry"] == pytest.approx({"pass@1": 0.0, "pass@k": 0.0, "n": 1})
    assert result["by_subject"]["gsm8k"] == pytest.approx({"pass@1": 0.5, "pass@k": 1.0, "n": 1})

    # 12 samples of 10 tokens and 4 of 20: 200 / 16; the 4 of p2 are truncated: 4 / 16
    assert result["mean_length"] == pytest.approx(12.5, abs=1e-12)
    assert result["truncated"] == pytest.approx(0.25, abs=1e-12)
    assert result["ungradable"] == 0
    assert (result["temperature"], result["top_p"], result["max_new_tokens"], result["seed"]) == (0.7, 0.95, 20, 5)

    # batch_prompts=3 -> calls of 3 and 1 prompts, seeded seed + batch index, n = k
    assert [len(prompts) for prompts, _ in engine.calls] == [3, 1]
    assert [params.seed for _, params in engine.calls] == [5, 6]
    params = engine.calls[0][1]
    assert (params.n, params.temperature, params.top_p, params.max_new_tokens) == (4, 0.7, 0.95, 20)
    assert engine.calls[0][0][0] == "Q: 6*7?\nA:"

    samples = result["samples"]
    assert [s["id"] for s in samples] == ["p1", "p2", "p3", "p4"]
    assert samples[0] == {"id": "p1", "question": "6*7?", "gold": "42", "completion": RIGHT % 42,
                          "extracted": "42", "correct": True}
    assert samples[1]["extracted"] == "-1" and samples[1]["correct"] is False
    assert json.loads(json.dumps(result)) == result


@pytest.mark.parametrize("right,expected", [(0, 0.0), (4, 1.0)])
def test_all_wrong_and_all_right(right, expected):
    problem = Problem(id="p", question="q", answer="3", level=2)
    texts = [(RIGHT % 3, 5, "stop")] * right + [(WRONG, 5, "stop")] * (4 - right)
    engine = ScriptedEngine({render_prompt(problem, "plain"): texts})
    result = evaluate(engine, [problem], EvalConfig(k=4), progress=False)
    assert result["pass@1"] == result["pass@k"] == expected
    assert result["by_level"] == {"2": {"pass@1": expected, "pass@k": expected, "n": 1}}


def test_ungradable_counts_as_wrong():
    problems = [Problem(id="a", question="q1", answer=""), Problem(id="b", question="q2", answer="1")]
    engine = ScriptedEngine({render_prompt(problems[0], "plain"): [(RIGHT % 1, 3, "stop")] * 2,
                             render_prompt(problems[1], "plain"): [(RIGHT % 1, 3, "stop")] * 2})
    result = evaluate(engine, problems, EvalConfig(k=2), progress=False)
    # a has no gold: its right-looking samples count as wrong -> (0 + 1) / 2
    assert result["pass@1"] == 0.5 and result["ungradable"] == 1
    assert result["samples"][0]["correct"] is None


def test_markdown_table_rows():
    problems, engine = scripted_setup()
    table = markdown_table(evaluate(engine, problems, EvalConfig(k=4), template="qa", progress=False))
    lines = table.splitlines()
    assert lines[0] == "| group | n | pass@1 (%) | pass@4 (%) |"
    assert "| all | 4 | 43.8 | 75.0 |" in lines  # 0.4375 -> 43.75 -> 43.8
    assert "| level 1 | 2 | 12.5 | 50.0 |" in lines
    assert "| level unknown | 1 | 50.0 | 100.0 |" in lines
    assert "| algebra | 2 | 62.5 | 100.0 |" in lines  # three subjects: subject rows shown
    assert "temperature 0.7, top-p 0.95" in table

    single = ScriptedEngine({render_prompt(problems[0], "qa"): [(RIGHT % 42, 1, "stop")] * 4})
    table = markdown_table(evaluate(single, problems[:1], EvalConfig(k=4), template="qa", progress=False))
    assert "| algebra |" not in table  # one subject: no subject rows


def test_bad_arguments():
    problems, engine = scripted_setup()
    with pytest.raises(ValueError):
        evaluate(engine, [], EvalConfig(), progress=False)
    with pytest.raises(ValueError):
        evaluate(engine, problems, EvalConfig(k=0), progress=False)


class RecordingEngine:
    """The real engine, keeping every completion it returns."""

    def __init__(self, engine):
        self.engine, self.tokenizer, self.completions = engine, engine.tokenizer, []

    def generate(self, prompts, params):
        out = self.engine.generate(prompts, params)
        self.completions += out
        return out


def test_real_engine_on_tiny_checkpoint(tiny_checkpoint):
    folder = tiny_checkpoint("qwen2")
    tokenizer = load_tokenizer(folder)
    engine = RecordingEngine(Engine(load_model(folder).eval(), tokenizer, eos_token_ids(folder, tokenizer)))
    problems = generate(3, levels=(1, 2, 3), split="test")
    cfg = EvalConfig(k=2, max_new_tokens=8, batch_prompts=2)
    result = evaluate(engine, problems, cfg, template="qa", progress=False)

    assert result["n"] == 3 and result["k"] == 2
    assert len(engine.completions) == 6  # 3 problems x k
    assert list(result["by_level"]) == ["1", "2", "3"]
    assert [g["n"] for g in result["by_level"].values()] == [1, 1, 1]
    assert list(result["by_subject"]) == ["synthetic"]
    assert len(result["samples"]) == 3
    assert result["samples"][0]["completion"] == engine.completions[0].text
    assert 1 <= result["mean_length"] <= 8
    assert result["mean_length"] == pytest.approx(sum(len(c.ids) for c in engine.completions) / 6)
    # pass@1 re-derived by grading each completion on its own with rewards.score
    correct = [score(problems[i // 2], c.text, len(c.ids), RewardConfig()).correct is True
               for i, c in enumerate(engine.completions)]
    assert result["pass@1"] == pytest.approx(sum(correct) / 6)
    assert 0.0 <= result["pass@1"] <= result["pass@k"] <= 1.0
    # Same seed and batching: the same draws, so the same result.
    assert evaluate(engine, problems, cfg, template="qa", progress=False) == result


def test_records_and_behaviour_in_the_result():
    problems, engine = scripted_setup()
    result = evaluate(engine, problems, EvalConfig(k=4, seed=2), template="qa", progress=False,
                      phrases=["so"])
    # counts 1, 0, 4, 2 of 4 (see the first test): se = sqrt(0.4375 * 0.5625 / 4)
    assert result["pass@1_se"] == pytest.approx(0.2480392, abs=1e-7)
    assert result["ci"]["seed"] == 2 and len(result["pass@1_ci95"]) == 2
    # every sample says "so" once; the 7 correct samples have 10 tokens; of the 9 others,
    # 4 have 20 tokens (p2) and 5 have 10: (80 + 50) / 9
    assert result["behaviour"] == pytest.approx({"reflection_rate": 1.0, "reflection_count": 1.0,
                                                 "response_length_correct": 10.0,
                                                 "response_length_incorrect": 130 / 9})
    assert result["num_prompts"] == 4 and result["template_text"] == "Q: {question}\nA:"
    assert result["answer_style"] == RewardConfig().answer_style and result["versions"]["pillion"]
    table = markdown_table(result)
    assert "pass@1 43.8%, 95% CI [" in table and "binomial standard error 24.8 points" in table
    assert "Behaviour: reflection phrases in 100.0% of samples; 1.00 reflection phrases per sample;" in table
    assert "Records: 4 prompts; template 'qa'" in table
