"""A tiny judge whose preference is known by construction: a random tiny model taught, in a few
steps, to answer "A" when response A is the shorter. Its pairwise rewards must rank a group's
responses as it judges them (shortest first), from both orders averaged; and `algo=pairwise`
trains the shipped model with it as its judge."""

import json

import pytest
import torch
import torch.nn.functional as F

from pillion.cli import main
from pillion.model.checkpoint import load_model, save_model
from pillion.model.tiny import make_tiny_checkpoint
from pillion.rewards.judge import JudgeConfig, judge_prompt, judge_rewards, opponent_pairs, win_matrix
from pillion.rollout.judge import group_rewards, load_judge, verdicts

TEMPLATE = "{a}|{b}="  # short prompts: the lesson takes seconds


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    """A judge folder: answers A (the next token after the prompt) when A is shorter, else B."""
    root = tmp_path_factory.mktemp("judge")
    random_dir = make_tiny_checkpoint(root / "random", hidden_size=64, num_layers=2, intermediate_size=128)
    cfg = JudgeConfig(model=str(random_dir), template=TEMPLATE)
    judge = load_judge(cfg, "cpu")
    model = load_model(random_dir).train()
    prompts, labels = [], []
    for a in range(1, 6):
        for b in range(1, 6):
            if a != b:
                prompts.append(judge_prompt(TEMPLATE, "", "", "x" * a, "x" * b))
                labels.append(0 if a < b else 1)
    ids = [judge.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    lengths = torch.tensor([len(x) for x in ids])
    tokens = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
    for i, x in enumerate(ids):
        tokens[i, : len(x)] = torch.tensor(x)
    positions = torch.arange(tokens.shape[1]).expand(len(ids), -1)
    target = torch.tensor(labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    torch.manual_seed(0)
    for _ in range(300):
        hidden = model(tokens, positions, None)[torch.arange(len(ids)), lengths - 1]  # [N, H]
        logits = model.logits(hidden)[:, list(judge.labels)]  # [N, 2]: A, B
        loss = F.cross_entropy(logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.02 and bool((logits.argmax(-1) == target).all()):
            break
    assert loss.item() < 0.05, f"the judge did not learn its preference (loss {loss.item():.3f})"
    save_model(model.eval(), root / "judge", source=random_dir)
    return root / "judge"


def test_pairwise_rewards_rank_as_the_judge_does(judge_dir):
    judge = load_judge(JudgeConfig(model=str(judge_dir), template=TEMPLATE), "cpu")
    responses = ["x" * n for n in (3, 1, 5, 2)]
    rewards = group_rewards(judge, "", responses)
    # shortest first: lengths 1, 2, 3, 5 are responses 1, 3, 0, 2
    assert torch.argsort(rewards, descending=True).tolist() == [1, 3, 0, 2]
    assert rewards.mean().item() == pytest.approx(0.5, abs=1e-6)  # round robin: W[i, j] + W[j, i] = 1
    # both orders: the rewards are the mean of each pair's two verdicts, computed here by hand
    pairs = opponent_pairs(4, 0)
    forward = verdicts(judge, [judge_prompt(TEMPLATE, "", "", responses[i], responses[j]) for i, j in pairs])
    swapped = verdicts(judge, [judge_prompt(TEMPLATE, "", "", responses[j], responses[i]) for i, j in pairs])
    want = [sum((forward[k] + 1 - swapped[k]) / 2 if i == r else (swapped[k] + 1 - forward[k]) / 2
                for k, (i, j) in enumerate(pairs) if r in (i, j)) / 3 for r in range(4)]
    assert rewards.tolist() == pytest.approx([float(w) for w in want], abs=1e-6)
    assert judge_rewards(win_matrix(pairs, forward, swapped, 4)).tolist() == pytest.approx(rewards.tolist())
    for k, (i, j) in enumerate(pairs):  # each verdict alone already prefers the shorter response
        assert (forward[k] > 0.5) == (len(responses[i]) < len(responses[j]))


def test_pairwise_preset_runs_with_the_judge(tmp_path, judge_dir):
    out = tmp_path / "run"
    assert main(["train", "algo=pairwise", f"reward.judge.model={judge_dir}", f"reward.judge.template='{TEMPLATE}'",
                 "reward.correct=0", f"out={out}", "steps=2", "prompts_per_step=4", "group_size=4",
                 "max_new_tokens=16", "data.heldout_size=4", "eval.k=1", "eval.max_new_tokens=16"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the judge's term alone (reward.correct=0): round robin rewards average 1/2 per group
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["judge"] == pytest.approx(0.5, abs=1e-5) and r["reward"] == pytest.approx(0.5, abs=1e-5)
               for r in rows)
    assert all(r["skipped_updates"] == 0 for r in rows)
