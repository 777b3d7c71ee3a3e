r"""Rewrites of gold answers, labelled EQUAL or NOT EQUAL by construction, for testing graders.

`rewrites(gold, question, rng)` reads one gold answer (MATH-500 and GSM8K shapes: integers,
decimals, fractions, radicals, polynomials, complex numbers, tuples, intervals, lists,
matrices, equations, choice letters, words, numbers with units or degrees) and writes it
again in the ways a model writes the same answer (`\dfrac`, a/b, the decimal of a terminating
fraction, thousands separators, `\left(`, spaces, an `x =` prefix, units, a sympy rendering,
reordered terms or set members, `\sqrt2`, an inequality for an interval, a matrix as
`bmatrix` or `array`, a `;` list, a decimal comma, a chain of equalities ending in the value),
and perturbs it into near misses (a digit, the sign, off by one, a swapped fraction, an open
end for a closed one, a dropped member, a reordered tuple, a part of the gold: a
denominator, a radicand, an exponent, an equation's side, one member of a tuple; a value
that contains the gold: its root, its reciprocal). `styled(answer, style, rng, question)`
writes an answer as a whole completion: bare, at the end of a `\boxed{}` solution, or in a
"Therefore, the answer is $...$." sentence.

The labels never come from a grader under test. They come from the construction, and every
rewrite whose value the generator can compute is checked: numbers with `Fraction`, anything
else by parsing both strings to sympy and comparing them numerically at random points (an
EQUAL rewrite must agree at every point, a NOT EQUAL one must differ); a rewrite that fails
its check is dropped. A sympy re-rendering is only made from a gold that two independent
parsers (latex2sympy and the plain-text reading below) read to the same value. The
strings here are ours (gold answers of public datasets), never a model's.

Deterministic: the same gold, question and seed give the same rewrites, in the same order.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from tests.rewards.rewrite_shapes import Rewrite, rewrites
from tests.rewards.rewrite_values import checked, trusted_expression

__all__ = ["STYLES", "Item", "Rewrite", "agreement_table", "checked", "items", "math_verify_verdicts",
           "pillion_verdicts", "rewrites", "shared_golds", "shipped_golds", "styled", "trusted_expression"]

STYLES = ("bare", "boxed", "sentence")


@dataclass(frozen=True)
class Item:
    """One graded case: a completion `text` in `style` against `gold`."""

    source: str
    gold: str
    question: str
    rewrite: Rewrite
    style: str
    text: str


# ---------------------------------------------------------------------------------------------
# Golds: the shipped sample and, where present, the shared datasets
# ---------------------------------------------------------------------------------------------

HERE = Path(__file__).resolve().parent
SHIPPED = HERE / "golds.jsonl"
SHARED = HERE.parents[1] / ".." / "shared" / "data"


def shipped_golds() -> list[dict]:
    """The ~100 golds that ship with the tests (rows with a "gold"; the first row says where
    they come from)."""
    rows = [json.loads(line) for line in SHIPPED.read_text().splitlines() if line.strip()]
    return [r for r in rows if "gold" in r]


def shared_golds(gsm8k_sample: int = 300, seed: int = 0) -> list[dict] | None:
    """Every MATH-500 gold and a seeded sample of GSM8K golds from ../shared/data, or None when
    that folder is absent (a user's clone)."""
    math500, gsm8k = SHARED / "math500_test.jsonl", SHARED / "gsm8k_test.jsonl"
    if not (math500.exists() and gsm8k.exists()):
        return None
    golds = [{"gold": r["answer"], "question": r["problem"], "source": f"math500:{r['unique_id']}"}
             for r in map(json.loads, math500.read_text().splitlines())]
    rows = [json.loads(line) for line in gsm8k.read_text().splitlines()]
    for i in sorted(random.Random(seed).sample(range(len(rows)), min(gsm8k_sample, len(rows)))):
        golds.append({"gold": rows[i]["answer"].split("####")[-1].strip(), "question": rows[i]["question"],
                      "source": f"gsm8k:{i}"})
    return golds


# ---------------------------------------------------------------------------------------------
# Completions in three styles
# ---------------------------------------------------------------------------------------------

_LEADS = [
    "Let me work through this step by step.",
    "We start from the given conditions and simplify.",
    "First, we set up the problem carefully.",
    "Using the information in the problem, we compute the result.",
]


def styled(answer: str, style: str, rng: random.Random, question: str = "") -> str:
    """`answer` written as a whole completion in `style` (bare, boxed, sentence). The two
    solution styles mention numbers of the question before the answer, as solutions do."""
    if style == "bare":
        return answer
    numbers = re.findall(r"(?<![\d.])\d+(?![\d.])", question)[:3]
    lead = rng.choice(_LEADS)
    if numbers:
        lead += f" The values {', '.join(numbers)} give the quantities we need, and we combine them."
    if style == "boxed":
        return f"{lead}\n\nAfter simplifying, the final answer is $\\boxed{{{answer}}}$."
    if style == "sentence":
        return f"{lead}\n\nTherefore, the answer is ${answer}$."
    raise ValueError(style)


def items(golds: list[dict], seed: int = 0) -> list[Item]:
    """Every rewrite of every gold in every style; deterministic for a seed."""
    out = []
    for row in golds:
        rng = random.Random(f"{seed}:{row['source']}:{row['gold']}")
        for rewrite in rewrites(row["gold"], row.get("question", ""), rng):
            for style in STYLES:
                text = styled(rewrite.answer, style, rng, row.get("question", ""))
                out.append(Item(row["source"], row["gold"], row.get("question", ""), rewrite, style, text))
    return out


# ---------------------------------------------------------------------------------------------
# The two graders on the items, and the agreement table
# ---------------------------------------------------------------------------------------------

def pillion_verdicts(cases: list[Item], pool=None) -> list[bool]:
    """pillion's verdicts: `score_batch` in the fallback style (the default of `pillion eval`),
    the question passed as the problem's."""
    from types import SimpleNamespace

    from pillion.problem import Problem
    from pillion.rewards import RewardConfig, score_batch

    problems = [Problem(id=f"{c.source}/{i}", question=c.question, answer=c.gold) for i, c in enumerate(cases)]
    completions = [SimpleNamespace(text=c.text, ids=[0], finish_reason="stop") for c in cases]
    results = score_batch(problems, completions, RewardConfig(answer_style="fallback", timeout=30.0), pool=pool)
    return [r.correct is True for r in results]


def math_verify_verdicts(cases: list[Item]) -> list[bool]:
    """math-verify as its README uses it: `verify(parse(gold), parse(completion))`, the gold
    read as LaTeX, the completion with its default extraction (LaTeX and plain expressions;
    its `parse_expr` is acceptable here only because these strings are ours)."""
    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    verdicts = []
    golds: dict[str, list] = {}
    for c in cases:
        if c.gold not in golds:
            golds[c.gold] = parse(f"${c.gold}$") or parse(c.gold)
        try:
            verdicts.append(bool(verify(golds[c.gold], parse(c.text))))
        except Exception:
            verdicts.append(False)
    return verdicts


def agreement_table(cases: list[Item], verdicts: dict[str, list[bool]], by: str) -> dict[str, dict]:
    """{group: {"n", "not_equal", grader: (agreeing, false_positives)}} with groups by "style"
    or "kind" (NOT EQUAL rewrites are counted under "kind" as "kind (not equal)")."""
    table: dict[str, dict] = {}
    for i, c in enumerate(cases):
        key = c.style if by == "style" else (c.rewrite.kind + ("" if c.rewrite.equal else " (not equal)"))
        row = table.setdefault(key, {"n": 0, "not_equal": 0, **{g: [0, 0] for g in verdicts}})
        row["n"] += 1
        row["not_equal"] += not c.rewrite.equal
        for grader, v in verdicts.items():
            row[grader][0] += v[i] == c.rewrite.equal
            row[grader][1] += v[i] and not c.rewrite.equal
    return dict(sorted(table.items()))
