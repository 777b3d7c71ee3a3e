"""Retro-Search: switch points, the token cut, sampling around the switch token, the command's
refusal of a file without gold answers, and resuming."""

import json

import pytest
import torch

from pillion.cli import main
from pillion.eval import retro
from pillion.model.checkpoint import load_model
from pillion.model.tiny import make_tokenizer
from pillion.model.tokenizer import load_tokenizer
from pillion.rollout.sampling import Sampler


@pytest.mark.parametrize("text,phrases,cuts", [
    ("x=2. Wait, x=3", ("Wait",), [4]),  # the space before "Wait" is cut off: text[:4] == "x=2."
    ("x=2.\n\nWait, x=3", ("Wait",), [4]),  # a whitespace run, newlines too
    ("Wait, x=3", ("Wait",), []),  # nothing before it to continue
    ("12 \\boxed{12} Let me check: 12 is right.", ("Let me check",), [13]),
    ("Awaiting x. Waiting", ("Wait",), []),  # inside a word, or the start of a longer one: not a switch
    # "a." ends at 2, "a. Hmm b." at 9, "...Alternatively c." at 9 + 1 + 13 + 3 = 26
    ("a. Hmm b. Alternatively c. Hmm d", ("Hmm", "Alternatively"), [2, 9, 26]),
])
def test_switch_points(text, phrases, cuts):
    assert retro.switch_points(text, phrases) == cuts
    assert all(text[c:].lstrip().startswith(phrases) for c in cuts)


def test_token_cut_is_the_longest_token_prefix_within_the_cut():
    tokenizer = make_tokenizer()
    ids = tokenizer.encode("x=2. Wait", add_special_tokens=False)  # bytes: one token per character
    assert retro.token_cut(tokenizer, ids, 4) == 4 and retro.token_cut(tokenizer, ids, 0) == 0
    assert retro.token_cut(tokenizer, ids, 9) == 9
    # a character split across tokens: "é" is two byte tokens; a cut inside it keeps neither
    ids = tokenizer.encode("aé b", add_special_tokens=False)
    assert len(ids) == 5 and retro.token_cut(tokenizer, ids, 1) == 1 and retro.token_cut(tokenizer, ids, 2) == 3


def test_sample_avoiding_never_samples_the_banned_token(tiny_checkpoint):
    """At temperature 0 the greedy token is banned: the second-best comes instead; sampled rows
    never hold the banned token within the suppressed positions; EOS ends a row."""
    folder = tiny_checkpoint("qwen2")
    model = load_model(folder, dtype=torch.float32).eval()
    tokenizer = load_tokenizer(folder)
    context = tokenizer.encode("What is 2+2? 2+2=4.", add_special_tokens=False)
    positions = torch.arange(len(context))[None]
    with torch.no_grad():
        logits = model.lm_head(model(torch.tensor([context]), positions, None)[:, -1])[0]
    first, second = logits.topk(2).indices.tolist()
    generator = torch.Generator().manual_seed(0)
    greedy = retro.sample_avoiding(model, context, [first], 2, 1, Sampler(0.0), generator, [-1])
    assert greedy == [[second], [second]]
    rows = retro.sample_avoiding(model, context, [first, second], 16, 4, Sampler(1.0), generator, [-1])
    assert all(len(r) == 4 and first not in r and second not in r for r in rows)
    eos = retro.sample_avoiding(model, context, [first], 3, 4, Sampler(0.0), generator, [second])
    assert eos == [[second]] * 3  # the row ends at its EOS, which it keeps


def test_the_verbose_asset_is_shipped_small():
    from pillion.model.checkpoint import resolve_model

    folder = resolve_model("verbose")
    assert folder.name == "tiny-arith-verbose" and folder.parent == resolve_model("default").parent
    assert sum(f.stat().st_size for f in folder.iterdir()) < 5 * 2**20  # a few MB, as the default


def problems_file(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_file_without_gold_answers_is_refused_and_nothing_is_written(tmp_path, capsys):
    data = problems_file(tmp_path / "q.jsonl", [{"question": "What is 1+1?", "answer": "2"},
                                               {"question": "What is 2+2?"}])
    out = tmp_path / "out" / "revised.jsonl"
    assert main(["data", "retro-search", "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{data}: 1 of 2 rows have no gold answer (first: row 2)" in err
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["q.jsonl"]
    assert main(["data", "retro-search", str(data), "--data", str(data)]) == 2  # the file named twice
    assert "name the data file once" in capsys.readouterr().err


def test_retro_search_writes_rows_and_resumes(tmp_path, capsys):
    """The shipped model's traces end in `\\boxed{N}` or `The answer is N.`: with "The answer" as
    the switch phrase, revisions at it are tried. Every problem lands in the output or the
    unsolved file; a kept solution is right and never longer than the trace; a run stopped after
    its first batch and resumed writes what one straight run writes."""
    data = problems_file(tmp_path / "q.jsonl", [
        {"id": str(i), "question": f"What is {i}+{i + 2}?", "answer": str(2 * i + 2)} for i in range(1, 9)])
    common = ["--k", "2", "--phrases", "The answer", "--batch-prompts", "4", "--temperature", "0.7",
              "--device", "cpu"]
    straight = tmp_path / "straight.jsonl"
    assert main(["data", "retro-search", "--data", str(data), "--out", str(straight), *common]) == 0
    rows = [json.loads(line) for line in straight.read_text().splitlines()]
    unsolved = tmp_path / "straight.unsolved.jsonl"
    missing = [json.loads(line) for line in unsolved.read_text().splitlines()]
    assert sorted(r["problem_id"] for r in rows + missing) == sorted(f"generic/{i}" for i in range(1, 9))
    assert rows
    for r in rows:
        assert r["revised_length"] <= r["original_length"] or not r["original_correct"]
        assert r["answer"] in r["solution"]
    # Stopped after the first batch: the first 4 problems' rows, and a line cut short.
    resumed = tmp_path / "resumed.jsonl"
    lines = straight.read_text().splitlines(keepends=True)
    first_batch = [line for line in lines if json.loads(line)["problem_id"] in {f"generic/{i}" for i in range(1, 5)}]
    resumed.write_text("".join(first_batch) + lines[-1][:20])
    (tmp_path / "resumed.unsolved.jsonl").write_text("".join(
        line for line in unsolved.read_text().splitlines(keepends=True)
        if json.loads(line)["problem_id"] in {f"generic/{i}" for i in range(1, 5)}))
    capsys.readouterr()
    assert main(["data", "retro-search", "--data", str(data), "--out", str(resumed), *common]) == 0
    assert "8 problems; 4 already in resumed.jsonl or resumed.unsolved.jsonl" in capsys.readouterr().out
    assert resumed.read_text() == straight.read_text()


def _sft(folder, data, capsys):
    """`pillion sft` of the verbose model on `data`: (held-out pass@1, mean response length)."""
    assert main(["sft", "model=verbose", f"out={folder}", "steps=80", "lr=5e-4", "batch_size=32", "warmup_steps=5",
                 f"data.sources={{traces: '{data}'}}", "data.heldout_size=200", "eval.max_new_tokens=96"]) == 0
    capsys.readouterr()
    report = json.loads((folder / "report.json").read_text())
    return report["pass@1"], report["eval"]["mean_length"]


@pytest.mark.slow
def test_sft_on_revised_traces_is_shorter_at_equal_pass1(tmp_path, capsys):
    """The issue's must-show: Retro-Search over training problems with the shipped verbose model
    (its answers often end in a redundant `Let me check: N is right.`), then `pillion sft` on the
    revised traces against `pillion sft` on the same problems' unrevised traces. Asserted: the
    revised model answers the held-out set in fewer tokens (the direction), and its held-out
    pass@1 is not below the noise band (the figures are printed; docs/algorithms.md §18).
    Measured: 42.55 -> 27.67 tokens at 0.540 -> 0.540; with SFT seeds 1 and 2 pass@1 moves by
    -3.9 and -0.4 points at the same one-third cut, so the pass@1 guard is 5 points, not 0."""
    from pillion.data import synthetic

    data = problems_file(tmp_path / "train.jsonl", [
        {"id": p.id, "question": p.question, "answer": p.answer, "level": p.level}
        for p in synthetic.generate(256, levels=(1, 2), seed=11)])
    out = tmp_path / "revised.jsonl"
    assert main(["data", "retro-search", "--model", "verbose", "--data", str(data), "--out", str(out), "--k", "4",
                 "--temperature", "0.7", "--max-new-tokens", "96", "--device", "cpu"]) == 0
    summary = capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # the same problems both ways: those whose first trace was right
    same = [r for r in rows if r["original_correct"]]
    unrevised = problems_file(tmp_path / "unrevised.jsonl", [{**r, "solution": r["original_solution"]} for r in same])
    revised = problems_file(tmp_path / "revised_same.jsonl", same)
    pass_u, length_u = _sft(tmp_path / "sft-unrevised", unrevised, capsys)
    pass_r, length_r = _sft(tmp_path / "sft-revised", revised, capsys)
    traces = sum(r["original_length"] for r in same) / len(same), sum(r["revised_length"] for r in same) / len(same)
    with capsys.disabled():
        print(f"\nretro-search: {summary.strip()}\n  {len(same)} problems with a right first trace: trace length "
              f"{traces[0]:.2f} -> {traces[1]:.2f}\n  sft on unrevised: pass@1 {pass_u:.3f}, held-out length "
              f"{length_u:.2f}\n  sft on revised:   pass@1 {pass_r:.3f}, held-out length {length_r:.2f}")
    assert traces[1] < traces[0]
    assert length_r < length_u
    assert pass_r >= pass_u - 0.05
