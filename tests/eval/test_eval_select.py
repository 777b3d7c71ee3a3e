"""Pass-rate tools: difficulty levels, gold checks, selection of sometimes-solved problems, and
`pillion data difficulty` end to end."""

import json
import random

import pytest
import torch

from pillion.cli import main
from pillion.data import read, render_prompt
from pillion.eval.samples import EvalConfig
from pillion.eval.select import SelectConfig, difficulty_level, gold_issue, pass_counts, select_problems
from pillion.problem import Problem
from pillion.rewards import RewardConfig
from pillion.rollout.engine import Completion


@pytest.mark.parametrize("correct,level", [(8, 1), (7, 2), (6, 2), (5, 3), (3, 3), (2, 4), (1, 4), (0, 5)])
def test_levels_with_three_bins(correct, level):
    # level = 2 + (8 - c) * 3 // 8: c=6 -> 2 + 6//8 = 2; c=5 -> 2 + 9//8 = 3; c=3 -> 2 + 15//8 = 3;
    # c=2 -> 2 + 18//8 = 4; c=1 -> 2 + 21//8 = 4; all right -> 1; none right -> bins + 2 = 5
    assert difficulty_level(correct, 8, bins=3) == level


def test_level_edges_and_errors():
    assert [difficulty_level(c, 4, bins=1) for c in range(5)] == [3, 2, 2, 2, 1]
    assert difficulty_level(2, 3, bins=3) == 3  # rate exactly 2/3: 2 + (1 * 3) // 3 = 3, no float rounding
    with pytest.raises(ValueError):
        difficulty_level(5, 4)


@pytest.mark.parametrize("gold", ["42", "1,234", "\\frac{1}{2}", "(1, 2)", "\\{1, 2\\}", "Monday", "(C)",
                                  "x^2 + 1", "3\\sqrt{2}", "\\$5"])
def test_gradable_golds(gold):
    assert gold_issue(gold) is None


@pytest.mark.parametrize("gold,reason", [("", "no gold"), (None, "no gold"), ("   ", "no gold"),
                                         ("\\frac{1}{", "math-verify cannot parse"),
                                         ("}{", "math-verify cannot parse"),
                                         ("x = `rm -rf`", "only compares as a string")])
def test_ungradable_golds(gold, reason):
    assert reason in gold_issue(gold)


class ScriptedEngine:
    """Answers a prompt with `right` correct samples out of n, and counts calls."""

    tokenizer = None

    def __init__(self, right: dict[str, int]):
        self.right, self.calls = right, []

    def generate(self, prompts, params):
        self.calls.append((len(prompts), params.seed))
        out = []
        for index, prompt in enumerate(prompts):
            for i in range(params.n):
                text = "\\boxed{1}" if i < self.right[prompt] else "\\boxed{0}"
                out.append(Completion([0], [1, 2], text, torch.zeros(2), "stop", index))
        return out


def scripted(rights):
    problems = [Problem(id=f"p{i}", question=f"q{i}", answer="1") for i in range(len(rights))]
    return problems, ScriptedEngine({render_prompt(p, "qa"): r for p, r in zip(problems, rights)})


def test_pass_counts_grade_like_the_trainer():
    problems, engine = scripted([0, 3, 8])
    assert pass_counts(engine, problems, EvalConfig(k=8), "qa", RewardConfig(answer_style="boxed")) == [0, 3, 8]


def test_select_sometimes_solved_problems():
    rights = [0, 1, 8, 4, 2, 8, 0, 7, 5, 3]  # of 8: rates 0, .125, 1, .5, .25, 1, 0, .875, .625, .375
    problems, engine = scripted(rights)
    cfg = SelectConfig(size=3, k=8, min_pass=0.1, max_pass=0.9, max_candidates=10)
    sampling = EvalConfig(temperature=0.6, max_new_tokens=16, seed=7, batch_prompts=4)
    chosen, stats = select_problems(engine, problems, cfg, sampling, "qa", RewardConfig(), seed=1)
    assert len(chosen) == 3 and stats["selected"] == 3 and stats["wanted"] == 3
    assert all(0 < rights[int(p.id[1:])] < 8 for p in chosen)  # never 0/8 or 8/8
    assert stats["rates"] == {p.id: rights[int(p.id[1:])] / 8 for p in chosen}
    # Candidates in the seeded order; the first three qualifying ones are kept, and testing stops
    # after the chunk of 4 that held the third.
    order = list(range(10))
    random.Random("select/1").shuffle(order)
    hits = [i for i, j in enumerate(order) if 0 < rights[j] < 8]
    assert [p.id for p in chosen] == [f"p{order[i]}" for i in hits[:3]]
    assert stats["tested"] == min(10, (hits[2] // 4 + 1) * 4) == sum(n for n, _ in engine.calls)
    assert [seed for _, seed in engine.calls] == list(range(7, 7 + len(engine.calls)))  # seed + chunk index
    assert sum(stats["histogram"].values()) == stats["tested"]
    again, _ = select_problems(ScriptedEngine(engine.right), problems, cfg, sampling, "qa", RewardConfig(), seed=1)
    assert [p.id for p in again] == [p.id for p in chosen]  # seeded order


def test_select_returns_fewer_when_candidates_run_out():
    problems, engine = scripted([0, 8, 4, 0])
    cfg = SelectConfig(size=3, k=8, max_candidates=4)
    chosen, stats = select_problems(engine, problems, cfg, EvalConfig(batch_prompts=64), "qa", RewardConfig())
    assert [p.id for p in chosen] == ["p2"] and stats["tested"] == 4
    assert stats["histogram"]["0"] == 2 and stats["histogram"]["8"] == 1 and stats["histogram"]["4"] == 1
    with pytest.raises(ValueError, match="min_pass"):
        select_problems(engine, problems, SelectConfig(size=1, min_pass=0.9, max_pass=0.1), EvalConfig(), "qa",
                        RewardConfig())
    with pytest.raises(ValueError, match="size"):
        select_problems(engine, problems, SelectConfig(size=0), EvalConfig(), "qa", RewardConfig())


def test_select_on_a_tiny_model(tiny_checkpoint):
    from pillion.data import generate
    from pillion.model.checkpoint import load_model
    from pillion.model.tokenizer import eos_token_ids, load_tokenizer
    from pillion.rollout.engine import Engine

    folder = tiny_checkpoint("qwen2")
    tokenizer = load_tokenizer(folder)
    engine = Engine(load_model(folder).eval(), tokenizer, eos_token_ids(folder, tokenizer))
    problems = generate(6, levels=(1,), split="test")
    sampling = EvalConfig(temperature=1.0, top_p=1.0, max_new_tokens=4, batch_prompts=3)
    cfg = SelectConfig(size=2, k=2, min_pass=0.0, max_pass=1.0, max_candidates=6)  # every rate qualifies
    chosen, stats = select_problems(engine, problems, cfg, sampling, "qa", RewardConfig(answer_style="boxed"))
    assert len(chosen) == 2 and stats["tested"] == 3  # the first chunk of 3 already held 2
    assert set(stats["rates"]) == {p.id for p in chosen} and all(r in (0.0, 0.5, 1.0) for r in stats["rates"].values())


def _fixture(tmp_path):
    rows = [
        {"question": "Ann has 3 apples and buys 2. How many?", "answer": "3+2=5\n#### 5"},
        {"question": "Tom has 9 coins and loses 1.", "answer": "9-1=8\n#### 8"},
        {"question": "No gold here.", "answer": "it is 3"},  # no #### line: no gold answer
        {"question": "Broken gold.", "answer": "so\n#### \\frac{1}{"},  # the grader cannot parse it
        {"question": "Bob has 2 pens and gets 2 more.", "answer": "2+2=4\n#### 4"},
    ]
    path = tmp_path / "gsm.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_difficulty_command_writes_levels(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    import pillion.eval.select as select

    monkeypatch.setattr(select, "pass_counts", lambda engine, problems, *a, **k: [8, 3, 0][:len(problems)])
    out = tmp_path / "levels.jsonl"
    argv = ["data", "difficulty", str(_fixture(tmp_path)), "--model", tiny_checkpoint("qwen2"), "--k", "8",
            "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "dropped:  1 without gold answer, 1 with a gold the grader cannot parse, 0 malformed rows" in text
    assert "gsm8k/4: math-verify cannot parse the gold answer" in text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # pass rates 8/8, 3/8, 0/8 -> levels 1, 2 + 5*3//8 = 3, 5
    assert [(r["id"], r["correct"], r["pass_rate"], r["level"]) for r in rows] == [
        ("1", 8, 1.0, 1), ("2", 3, 0.375, 3), ("5", 0, 0.0, 5)]
    back = read(out)  # the generic reader gives back the same problems, now with levels
    assert [(p.id, p.answer, p.level, p.meta["pass_rate"]) for p in back] == [
        ("gsm8k/1", "5", 1, 1.0), ("gsm8k/2", "8", 3, 0.375), ("gsm8k/5", "4", 5, 0.0)]
    assert back[0].solution == "3+2=5\n#### 5"
    assert "  1   1" in text.split("by level:")[1] and "mean pass rate: 0.4583" in text  # 11 / 24


def test_difficulty_command_on_the_model(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["data", "difficulty", str(_fixture(tmp_path)), "--model", tiny_checkpoint("qwen2"), "--k", "2",
            "--max-new-tokens", "4", "--limit", "2"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "limit:    the first 2 of 3 gradable problems" in text and "scored:   2 problems x 2 samples" in text
    rows = [json.loads(line) for line in (tmp_path / "gsm.difficulty.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["1", "2"]
    assert all(r["level"] == difficulty_level(r["correct"], 2, 3) and r["k"] == 2 for r in rows)


def test_difficulty_command_errors(tmp_path, capsys):
    assert main(["data", "difficulty", str(tmp_path / "missing.jsonl")]) == 2  # every command's user errors: exit 2
    assert main(["data", "difficulty", str(_fixture(tmp_path)), "--model", str(tmp_path)]) == 2
    assert main(["data", "difficulty", str(_fixture(tmp_path)), "--k", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 3


def test_difficulty_file_trains_by_level_through_the_config(tmp_path, tiny_checkpoint, monkeypatch):
    """difficulty file -> data.sources + data.level_weights -> the RL loop's mixture."""
    import pillion.eval.select as select
    from pillion import config as C
    from pillion.train.rl import build_data

    monkeypatch.setattr(select, "pass_counts", lambda engine, problems, *a, **k: [8, 3, 0][:len(problems)])
    out = tmp_path / "levels.jsonl"
    assert main(["data", "difficulty", str(_fixture(tmp_path)), "--model", tiny_checkpoint("qwen2"), "--out",
                 str(out)]) == 0
    cfg = C.resolve(C.TrainConfig, overrides=[f"data.sources={{gsm: {out}}}", "data.level_weights={1: 0, 3: 1, 5: 0}",
                                              "data.heldout=synthetic:1", "data.heldout_size=2"])
    assert cfg.data.level_weights == {1: 0, 3: 1, 5: 0}
    from pillion.model.tokenizer import load_tokenizer

    _, mixture, *_ = build_data(cfg, load_tokenizer(tiny_checkpoint("qwen2")), 2048)
    assert {p.id for p in mixture.sample(10)} == {"gsm8k/2"}  # the only level-3 problem (3 of 8 right)


def test_concise_preset():
    from pillion import config as C

    cfg = C.resolve(C.TrainConfig, overrides=["algo=concise"])
    assert (cfg.adv.name, cfg.ppo.lam, cfg.loss.agg) == ("gae", 0.95, "seq_mean_token_mean")  # docs §11
    assert (cfg.prompts_per_step, cfg.group_size, cfg.temperature) == (8, 8, 0.6)  # the release's batch
    assert (cfg.data.select.size, cfg.data.select.k, cfg.data.select.min_pass) == (64, 8, 0.5)  # docs §11: measured
    assert 0 < cfg.data.select.min_pass <= cfg.data.select.max_pass < 1
    # release rewards: +1 right, -0.5 wrong with a boxed answer, -1 without one
    r = cfg.reward
    assert (r.correct + r.format_weight, r.incorrect + r.format_weight, r.incorrect) == (1.0, -0.5, -1.0)
