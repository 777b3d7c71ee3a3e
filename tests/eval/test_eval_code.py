"""Evaluation on code: pass@1 / pass@k from scripted completions graded in the sandbox, the same
record as math, `pillion eval` on a code file, and several named held-out sets."""

import json

import torch

from pillion.cli import main
from pillion.data import render_prompt, synthetic_code
from pillion.eval.evaluate import eval_metrics, evaluate, evaluate_sets, report_entries
from pillion.eval.samples import EvalConfig
from pillion.problem import Problem
from pillion.rollout.engine import Completion


class ScriptedEngine:
    """Answers each prompt with fixed texts, one per sample."""

    tokenizer = None

    def __init__(self, script):
        self.script = script  # prompt -> [text] * n

    def generate(self, prompts, params):
        out = []
        for index, prompt in enumerate(prompts):
            assert len(self.script[prompt]) == params.n
            for text in self.script[prompt]:
                out.append(Completion(prompt_ids=[0], ids=[1, 2, 3], text=text, logprobs=torch.zeros(3),
                                      finish_reason="stop", prompt_index=index))
        return out


def code_setup():
    problems = synthetic_code.generate(3, levels=(1, 2), seed=0, split="test")
    prompt = 'def inc(x):\n    """x + 1"""\n'
    humaneval = Problem(id="he/0", question=prompt, answer="", kind="code", source="humaneval",
                        tests=["def check(candidate):\n    assert candidate(1) == 2\n\ncheck(inc)\n"],
                        meta={"code_prefix": prompt})
    bare = [p.solution.removeprefix("```python\n").removesuffix("\n```") for p in problems]
    samples = [
        [problems[0].solution] * 3 + [bare[0]],  # c = 3: the bare answer is not graded
        ["```python\ndef nothing():\n    pass\n```"] * 4,  # c = 0
        [problems[2].solution] * 4,  # c = 4
        ["    return x + 1\n", "```python\ndef inc(x):\n    return x + 1\n```", "    return x\n", ""],  # c = 2
    ]
    problems.append(humaneval)
    return problems, {render_prompt(p, "plain"): s for p, s in zip(problems, samples)}


def test_pass_at_1_and_k_on_code_by_hand():
    problems, script = code_setup()
    result = evaluate(ScriptedEngine(script), problems, EvalConfig(k=4), template="plain", progress=False)
    # pass@1 = mean of c/k = (3/4 + 0 + 4/4 + 2/4) / 4 = 2.25 / 4; pass@4 = 3 of 4 problems have c >= 1
    assert result["pass@1"] == 2.25 / 4 and result["pass@k"] == 0.75
    assert result["ungradable"] == 0
    assert result["samples"][0]["extracted"] == problems[0].solution.removeprefix("```python\n").removesuffix("```")
    assert result["samples"][3]["extracted"] == problems[3].meta["code_prefix"] + "    return x + 1\n\n"


def test_code_and_math_records_have_the_same_keys():
    problems, script = code_setup()
    code = evaluate(ScriptedEngine(script), problems, EvalConfig(k=4), template="plain", progress=False)
    math = Problem(id="m/1", question="What is 1+1?", answer="2")
    engine = ScriptedEngine({render_prompt(math, "plain"): ["\\boxed{2}"] * 4})
    assert set(evaluate(engine, [math], EvalConfig(k=4), progress=False)) == set(code)


def test_pillion_eval_on_a_code_file(tiny_checkpoint, tmp_path, capsys):
    rows = [{"task_id": f"HumanEval/{i}", "prompt": f'def f{i}():\n    """One."""\n', "entry_point": f"f{i}",
             "canonical_solution": "    return 1\n", "test": "def check(c):\n    assert c() == 1\n"} for i in range(2)]
    data = tmp_path / "he.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["eval", "--model", tiny_checkpoint("qwen2"), "--data", str(data), "--k", "2", "--max-new-tokens", "4",
            "--out", str(tmp_path / "out"), "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 2 and result["k"] == 2 and result["ungradable"] == 0
    assert 0.0 <= result["pass@1"] <= result["pass@k"] <= 1.0 and set(result["curve"]) == {"1", "2"}


def test_several_held_out_sets_reported_by_name(capsys):
    problems, script = code_setup()
    math = Problem(id="m/1", question="What is 1+1?", answer="2")
    script[render_prompt(math, "plain")] = ["\\boxed{2}", "\\boxed{3}", "\\boxed{2}", "\\boxed{2}"]
    sets = {"arith": [math], "code": problems}
    results = evaluate_sets(ScriptedEngine(script), sets, EvalConfig(k=4), "plain", tag="before RL")
    printed = capsys.readouterr().out
    assert "eval before RL [arith]: pass@1 0.750" in printed and "eval before RL [code]: pass@1 0.562" in printed
    entries = report_entries(results, "before")
    assert entries["pass1_before"] == entries["pass1_before/arith"] == 0.75  # the first set keeps the old keys
    assert entries["pass1_before/code"] == 2.25 / 4 and entries["eval_before/code"]["n"] == 4
    assert entries["eval_before"] is results["arith"]
    metrics = eval_metrics(results)
    assert metrics["eval/pass@1"] == 0.75 and metrics["eval/code/pass@4"] == 0.75
    # one set: the keys a single held-out set always had, nothing more
    assert set(report_entries({"heldout": results["arith"]}, "after")) == {"eval_after", "pass1_after"}
    assert set(eval_metrics({"heldout": results["arith"]})) == {"eval/pass@1", "eval/pass@4"}
