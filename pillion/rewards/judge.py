"""The pairwise judge's reward: verdicts on pairs of a group's responses -> one reward per response
(docs/algorithms.md §17). Pure: the judge model itself is read in pillion/rollout/judge.py.

A judge reads a principle, the question and two responses in the slots A and B, and its verdict
is p = P(A) / (P(A) + P(B)) from its next-token probabilities of the two labels. Each pair is
judged in both orders and the verdicts averaged, which cancels a judge's preference for a slot:

    W[i, j] = (p(A=i, B=j) + 1 - p(A=j, B=i)) / 2,     W[j, i] = 1 - W[i, j]

Response i's reward is its mean win probability over the opponents it met: every other response
of the group (round robin, `opponents=0`), or `opponents` random ones (each pair met is judged,
so a response may meet more than that). Rewards lie in [0, 1], and with round robin they
average to exactly 1/2 over a group (W[i, j] + W[j, i] = 1). The reward that trains is
`reward.judge.weight` x this, added to the verifiable reward (its weight 0: the judge alone).
Departure from Pairwise-RL (Xu et al. 2504.04950): the verdict is read from two label
probabilities rather than generated, so one forward per order and pair, no sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the grading workers import rewards/ and must not pay for torch
    import torch
    from torch import Tensor

from pillion.fields import bounded, checked, free, reject

SLOTS = ("principle", "question", "a", "b")
LABELS = ("A", "B")

DEFAULT_TEMPLATE = ("Principle: {principle}\nQuestion: {question}\nResponse A: {a}\nResponse B: {b}\n"
                    "Which response follows the principle better, A or B?\n")


def _template(template: str, judge: JudgeConfig) -> None:
    try:
        template.format(**{slot: "" for slot in SLOTS})
    except (KeyError, IndexError, ValueError) as e:
        raise reject(template, f"has a slot that is not one of {{{'}, {'.join(SLOTS)}}} ({e})",
                     "a template with {a} and {b}") from None
    missing = [slot for slot in ("a", "b") if "{" + slot + "}" not in template]
    if missing:
        raise reject(template, f"has no {' nor '.join('{' + s + '}' for s in missing)} slot",
                     "a template with both response slots {a} and {b}")


@dataclass
class JudgeConfig:
    """`reward.judge.*`: a causal LM that compares two responses (pillion/rollout/judge.py)."""

    model: str | None = free(None)  # a model folder, run folder or Hub id; null: no judge
    weight: float = bounded(1.0, low=0)  # the judge's reward x weight is added to the verifiable reward
    principle: str = free("The better response is correct, clear and short.")
    template: str = checked(DEFAULT_TEMPLATE, _template)  # slots {principle} {question} {a} {b}; the label follows
    opponents: int = bounded(0, low=0, note="0: round robin")  # random opponents per response


def judge_prompt(template: str, principle: str, question: str, a: str, b: str) -> str:
    return template.format(principle=principle, question=question, a=a, b=b)


def opponent_pairs(group_size: int, opponents: int, generator: torch.Generator | None = None
                   ) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of a group to judge: all of them (round robin: opponents 0 or at least
    group_size - 1), else `opponents` random others for each response, drawn from `generator`."""
    import torch

    if opponents == 0 or opponents >= group_size - 1:
        return [(i, j) for i in range(group_size) for j in range(i + 1, group_size)]
    pairs = set()
    for i in range(group_size):
        others = [j for j in range(group_size) if j != i]
        for k in torch.randperm(len(others), generator=generator)[:opponents].tolist():
            pairs.add((min(i, others[k]), max(i, others[k])))
    return sorted(pairs)


def win_matrix(pairs: list[tuple[int, int]], p_forward: Tensor, p_swapped: Tensor, group_size: int) -> Tensor:
    """W [G, G] from the verdicts on `pairs`: p_forward[k] = P(A wins) with A = pairs[k][0],
    p_swapped[k] = P(A wins) with A = pairs[k][1]; NaN where two responses did not meet."""
    import torch

    win = torch.full((group_size, group_size), float("nan"), dtype=torch.float64)
    for (i, j), forward, swapped in zip(pairs, p_forward.tolist(), p_swapped.tolist()):
        win[i, j] = (forward + 1.0 - swapped) / 2.0  # both orders: a bias towards slot A cancels
        win[j, i] = 1.0 - win[i, j]
    return win


def judge_rewards(win: Tensor) -> Tensor:
    """Each response's mean win probability [G] over the opponents it met (1/2 if none)."""
    import torch

    met = ~torch.isnan(win)  # [G, G]
    total = torch.where(met, win, torch.zeros_like(win)).sum(-1)  # [G]
    count = met.sum(-1)  # [G]
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, 0.5)).float()
