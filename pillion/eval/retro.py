"""Retro-Search: a model's own reasoning traces, revised to stay on their current line of thought.

For each problem one trace is sampled. Every point where the trace switches to a new line of
thought (a phrase of `phrases`, such as "Wait", "Alternatively", "Let me check", at a word
boundary) is a place to go back to: the trace is cut just before the phrase (before the
whitespace that leads into it), and `k` continuations are sampled from there with the token
the trace wrote at the cut (the phrase's first token, as the tokenizer split it in context)
forbidden for the first `suppress` positions, so that the model continues its current thought
instead of switching. Every revision that reaches the gold answer is a candidate; the shortest
correct one among them and the original (when the original is right) is kept, and written as an
SFT row: question, revised solution, original length, revised length (tokens, EOS included).

Departures from the paper (Lu et al., "Retro-Search: Exploring Untaken Paths for Deeper and
Efficient Reasoning", 2504.04383): the paper's search is a tree: after a revision at the first
switch it searches the revision's own switches in turn (with a revision model distinct from the
policy in one variant). Here the search is one level deep (every switch of the original trace,
`k` continuations each), which is enough to remove redundant self-checks; the forbidden token
is sampled around with the model's plain forward for the few suppressed positions, then the
engine continues (the engine has no logit processors, by design: it is the fast path).

    pillion data retro-search --model verbose --data train.jsonl --out revised.jsonl
    pillion sft model=verbose data.sources='{revised: revised.jsonl}'

Output rows are in the `generic` format (read back as the same problem ids); problems with no
correct trace, original or revised, go to `<out stem>.unsolved.jsonl` beside it. Both files are
appended after each batch of problems: a run that stops resumes by skipping the problem ids
already in either of them.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from pillion.data.templates import render_prompt
from pillion.problem import Problem
from pillion.rewards.shaping import RewardConfig, score_batch
from pillion.rollout.engine import SamplingParams
from pillion.rollout.sampling import Sampler, sample_cdf

# Phrases with which English reasoning models (R1-style) open a new line of thought.
DEFAULT_SWITCHES = ("Alternatively", "Wait", "But wait", "Let me check", "Let me verify", "Let me double-check",
                    "Let me re-check", "Hmm", "On second thought", "Another approach", "Actually")


@dataclass
class RetroConfig:
    phrases: tuple[str, ...] = DEFAULT_SWITCHES
    k: int = 4  # continuations per switch point
    suppress: int = 4  # positions after the cut at which the switch's first token is forbidden
    max_switches: int = 8  # switch points tried per trace (the first ones)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48  # the whole response's budget, the revision's too
    seed: int = 0


def switch_points(text: str, phrases: Sequence[str]) -> list[int]:
    """Character offsets where `text` switches to a new line of thought, ascending: for each
    phrase that starts a word (at the text's start or after a non-letter), the offset of the
    whitespace run before it (the cut keeps the previous thought's text, without the space that
    leads into the switch). A switch at offset 0 has nothing before it to continue: left out.

    "x=2. Wait, x=3" with ("Wait",) -> [4]: text[:4] == "x=2."
    """
    cuts = set()
    for phrase in phrases:
        for m in re.finditer(r"(?<![A-Za-z])" + re.escape(phrase) + r"(?![a-z])", text):
            cut = m.start()
            while cut > 0 and text[cut - 1].isspace():
                cut -= 1
            if cut > 0:
                cuts.add(cut)
    return sorted(cuts)


def token_cut(tokenizer, ids: list[int], cut: int) -> int:
    """The number of tokens of `ids` whose text ends at or before character `cut`: the largest j
    with len(decode(ids[:j])) <= cut (decoded lengths grow with j; a binary search)."""
    lengths = _DecodedLengths(tokenizer, ids)
    return bisect.bisect_right(lengths, cut) - 1


class _DecodedLengths:
    """len(decode(ids[:j])) for j = 0..len(ids), computed on demand (a sequence for bisect)."""

    def __init__(self, tokenizer, ids: list[int]):
        self.tokenizer, self.ids = tokenizer, ids

    def __len__(self) -> int:
        return len(self.ids) + 1

    def __getitem__(self, j: int) -> int:
        return len(self.tokenizer.decode(self.ids[:j], skip_special_tokens=True))


@torch.inference_mode()
def sample_avoiding(model, context: list[int], banned: list[int], n: int, steps: int, sampler: Sampler,
                    generator: torch.Generator, eos_ids: Sequence[int]) -> list[list[int]]:
    """`n` continuations of `context`, `steps` tokens each (fewer when a row samples EOS, which
    it keeps), with the `banned` tokens given probability 0. The model's plain causal forward
    over the whole row at each position: for the few suppressed positions only."""
    device = model.lm_head.weight.device
    rows = torch.tensor([context] * n, device=device)  # [n, L]
    done = [False] * n
    out: list[list[int]] = [[] for _ in range(n)]
    for _ in range(steps):
        positions = torch.arange(rows.shape[1], device=device).expand(n, -1)  # [n, L]
        logits = model.lm_head(model(rows, positions, None)[:, -1]).float()  # [n, V]
        logits[:, banned] = float("-inf")
        uniform = torch.rand(n, 1, generator=generator, dtype=torch.float64).to(device)  # [n, 1]
        tokens, _ = sample_cdf(logits, sampler, uniform)  # [n]
        for i, token in enumerate(tokens.tolist()):
            if not done[i]:
                out[i].append(token)
                done[i] = token in eos_ids
        if all(done):
            break
        rows = torch.cat([rows, tokens[:, None]], dim=1)
    return out


@dataclass
class Revision:
    """One problem's outcome: the kept solution (None: no correct trace) and both lengths."""

    problem: Problem
    original: str
    original_length: int  # response tokens, EOS included
    original_correct: bool
    switches: int  # switch points found in the original trace
    solution: str | None  # the shortest correct of the original and its revisions
    length: int | None
    revised: bool  # the kept solution is a revision (not the original)


def revise(engine, problems: list[Problem], cfg: RetroConfig, template: str, reward_cfg: RewardConfig,
           pool=None) -> list[Revision]:
    """Retro-Search over a batch of problems (see the module docstring): one trace each, every
    switch point revised `cfg.k` times, the shortest correct version kept."""
    tokenizer, model = engine.tokenizer, engine.model
    prompts = [engine.encode(render_prompt(p, template, tokenizer)) for p in problems]
    params = SamplingParams(n=1, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                            seed=cfg.seed)
    traces = engine.generate(prompts, params)
    graded = score_batch(problems, traces, reward_cfg, pool)
    sampler = Sampler(cfg.temperature, cfg.top_p, 0, "cdf")
    generator = torch.Generator().manual_seed(cfg.seed)
    # Every (problem, switch): the trace's first j tokens, then k continuations avoiding ids[j].
    jobs, heads = [], []
    switches = []
    for i, trace in enumerate(traces):
        cuts = switch_points(trace.text, cfg.phrases)
        switches.append(len(cuts))
        for cut in cuts[:cfg.max_switches]:
            j = token_cut(tokenizer, trace.ids, cut)
            if j >= len(trace.ids) or j + cfg.suppress >= cfg.max_new_tokens:
                continue
            for head in sample_avoiding(model, prompts[i] + trace.ids[:j], [trace.ids[j]], cfg.k, cfg.suppress,
                                        sampler, generator, engine.eos_ids):
                jobs.append((i, trace.ids[:j] + head))
                heads.append(head)
    # The engine continues the rows that did not end inside the suppressed positions.
    open_rows = [r for r, head in enumerate(heads) if head[-1] not in engine.eos_ids]
    tails = {r: [] for r in range(len(jobs))}
    if open_rows:
        budget = cfg.max_new_tokens - min(len(jobs[r][1]) for r in open_rows)
        # One budget for the call: the shortest head's, within the context of the longest row
        # (a row whose own budget is cut by that ends as "length", and is not kept).
        longest = max(len(prompts[jobs[r][0]]) + len(jobs[r][1]) for r in open_rows)
        budget = min(budget, model.cfg.max_position_embeddings - longest)
        rest = engine.generate([prompts[jobs[r][0]] + jobs[r][1] for r in open_rows],
                               SamplingParams(n=1, temperature=cfg.temperature, top_p=cfg.top_p,
                                              max_new_tokens=budget, seed=cfg.seed + 1))
        for r, c in zip(open_rows, rest):
            tails[r] = c.ids[:cfg.max_new_tokens - len(jobs[r][1])]  # every row within the response budget
    revisions = [ids + tails[r] for r, (_, ids) in enumerate(jobs)]
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in revisions]
    finished = ["stop" if ids[-1] in engine.eos_ids else "length" for ids in revisions]
    rescored = score_batch([problems[i] for i, _ in jobs],
                           [_Text(*t) for t in zip(texts, revisions, finished)], reward_cfg, pool)
    out = []
    for i, (problem, trace, result) in enumerate(zip(problems, traces, graded)):
        best = (len(trace.ids), trace.text, False) if result.correct else None
        for r, (owner, _) in enumerate(jobs):
            if owner == i and rescored[r].correct and (best is None or len(revisions[r]) < best[0]):
                best = (len(revisions[r]), texts[r], True)
        out.append(Revision(problem, trace.text, len(trace.ids), bool(result.correct), switches[i],
                            best[1] if best else None, best[0] if best else None, bool(best and best[2])))
    return out


@dataclass
class _Text:
    """What `score_batch` reads of a completion (rewards.shaping.Generated)."""

    text: str
    ids: list[int]
    finish_reason: str


def row(revision: Revision) -> dict:
    """The SFT row of a revision with a correct solution (generic format, same problem id)."""
    p = revision.problem
    prefix = f"{p.source}/"
    return {"id": p.id[len(prefix):] if p.id.startswith(prefix) else p.id, "source": p.source,
            "question": p.question, "answer": p.answer, "solution": revision.solution,
            "original_solution": revision.original, "original_length": revision.original_length,
            "revised_length": revision.length, "original_correct": revision.original_correct,
            "revised": revision.revised, "switches": revision.switches, "problem_id": p.id,
            **({"level": p.level} if p.level is not None else {})}


def sidecar(out: Path, name: str) -> Path:
    """`<out stem>.<name>.jsonl` beside `out`: the problems a run processed but wrote no row for."""
    return out.with_name(f"{out.stem}.{name}.jsonl")


def done_ids(paths: list[Path]) -> set[str]:
    """The `problem_id` of every whole row in `paths` (JSON lines; a missing file has none); a
    line cut short by a stopped run is dropped from its file here, so that appending goes on
    from whole rows."""
    seen = set()
    for path in paths:
        if not path.exists():
            continue
        whole = []
        for line in path.read_text().splitlines():
            try:
                seen.add(json.loads(line)["problem_id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
            whole.append(line)
        path.write_text("".join(f"{line}\n" for line in whole))
    return seen
