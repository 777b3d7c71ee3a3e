"""The records one RL step passes along: a `Sample` per completion, one `TrainBatch` of tensors.

    Problem -> engine -> Completion -> grader -> RewardResult      = Sample (one per row)
    list[Sample] -> make_batch -> TrainBatch                        tensors [B, T], rows = samples
    TrainBatch -> micro_batches -> row indices of each forward/backward (by rows or by tokens)

Log-probabilities keep one meaning each (docs/algorithms.md §1):
    engine_logprobs  what the rollout engine sampled with (the behaviour policy), per sampled token
    old_logprobs     the trainer's forward of the same weights before this step's updates
                     (None when the step makes one on-policy update: its first forward is it)
    ref_logprobs     the frozen reference model (KL)
    logprobs         the trainer's forward under the current weights (inside `update`, with grad)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from pillion.data.problem import Problem
from pillion.model.sequences import SequenceBatch, pack, prompt_group_ids
from pillion.rewards import RewardResult
from pillion.rollout.engine import Completion


@dataclass
class Sample:
    """One completion of one problem, as generated and graded."""

    problem: Problem
    completion: Completion
    reward: RewardResult


@dataclass
class TrainBatch:
    """The step's tensors; row i is the step's i-th sample, groups of `group_size` contiguous.
    B rows, P = longest prompt, T = longest response. Fields after `engine_logprobs` are filled
    by the loop as it computes them."""

    seqs: SequenceBatch  # input_ids, attention_mask [B, P + T]; response_mask [B, T]
    response_mask: Tensor  # [B, T] float, 1 on every sampled token (EOS included; tool output excluded)
    scores: Tensor  # [B] rewards
    correct: Tensor  # [B] bool
    truncated: Tensor  # [B] bool, stopped by max_new_tokens
    engine_logprobs: Tensor  # [B, T]
    old_logprobs: Tensor | None = None  # [B, T]
    ref_logprobs: Tensor | None = None  # [B, T]
    values: Tensor | None = None  # [B, T] critic at rollout time
    advantages: Tensor | None = None  # [B, T]
    returns: Tensor | None = None  # [B, T] critic targets (GAE)
    loss_mask: Tensor | None = None  # [B, T] tokens the actor loss sees (RAFT positives, overlong filter)

    @property
    def num_rows(self) -> int:
        return self.response_mask.shape[0]

    def rows(self, index: Tensor) -> TrainBatch:
        """The micro-batch of rows `index`: every tensor sliced the same way."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return TrainBatch(**{k: v.rows(index) if isinstance(v, SequenceBatch) else v[index] if isinstance(v, Tensor)
                             else v for k, v in fields.items()})


def make_batch(samples: list[Sample], pad_id: int, device: torch.device) -> TrainBatch:
    """[left-padded prompt | right-padded response] rows, engine log-probs, rewards, flags."""
    completions = [s.completion for s in samples]
    seqs = pack([c.prompt_ids for c in completions], [c.ids for c in completions], pad_id, device)
    engine_logprobs = torch.zeros(seqs.response_mask.shape, dtype=torch.float32, device=device)  # [B, T]
    response_mask = seqs.response_mask.float()  # [B, T]
    for i, c in enumerate(completions):
        engine_logprobs[i, : len(c.ids)] = c.logprobs.to(device)
        if c.sampled is not None:  # tool output: in the context (seqs), out of loss, KL and log-prob check
            response_mask[i, : len(c.ids)] *= c.sampled.to(device)
    return TrainBatch(
        seqs=seqs,
        response_mask=response_mask,
        scores=torch.tensor([s.reward.score for s in samples], dtype=torch.float32, device=device),
        correct=torch.tensor([bool(s.reward.correct) for s in samples], device=device),
        truncated=torch.tensor([c.finish_reason == "length" for c in completions], device=device),
        engine_logprobs=engine_logprobs,
    )


def micro_batches(lengths: list[int], rows: int, tokens: int = 0,
                  groups: list[tuple[list[int], int]] | None = None) -> list[Tensor]:
    """Row indices [b] of each micro-batch of rows with `lengths` (real tokens each).

    tokens = 0: consecutive chunks of `rows` rows. tokens > 0 (`micro_batch_tokens`, for the
    packed forward, whose cost follows tokens, not rows): as few micro-batches as hold at most
    `tokens` tokens and `rows` rows each, balanced by tokens (longest first into the lightest
    micro-batch), so no micro-batch is a long tail of its own; a row longer than the budget gets
    a micro-batch alone. Indices are sorted within a micro-batch. The loss normalisers are
    counted over the whole mini-batch, so the split changes no gradient.

    groups (with tokens > 0; `share_prompts`): (rows, shared) for rows that share their first
    `shared` tokens (a GRPO group's prompt), which the shared-prompt forward holds once. A group
    is placed whole and costs its prompt once; one over the budget (or the row cap) is cut into
    pieces that fit, each costing the prompt once. Without groups a token-balanced split spreads
    a group's rows over the micro-batches and little is shared.
    """
    n = len(lengths)
    if tokens <= 0:
        return [torch.arange(i, min(i + rows, n)) for i in range(0, n, rows)]
    units = [([i], lengths[i]) for i in range(n)] if groups is None else [
        piece for members, shared in groups for piece in _pieces(members, shared, lengths, rows, tokens)]
    units.sort(key=lambda unit: -unit[1])
    k = max(-(-sum(min(cost, tokens) for _, cost in units) // tokens), -(-n // rows), 1)  # a lower bound
    while True:  # k grows until longest-first placement fits (at most one micro-batch per unit)
        bins: list[list[int]] = [[] for _ in range(k)]
        load = [0] * k
        for members, cost in units:
            j = min(range(k), key=lambda b: (load[b], len(bins[b])))
            if bins[j] and (load[j] + cost > tokens or len(bins[j]) + len(members) > rows):
                break
            bins[j] += members
            load[j] += cost
        else:
            return [torch.tensor(sorted(b)) for b in bins if b]
        k += 1


def even_out(parts: list[Tensor], lengths: list[int], count: int) -> list[Tensor]:
    """`parts` (micro-batches of rows with `lengths`) made `count` in number by halving the
    heaviest micro-batch of two or more rows, its rows longest first into the lighter half: with
    several ranks every rank must run as many forwards as the others (FSDP2 gathers the weights
    in each), and token budgets give ranks different counts."""
    parts = list(parts)
    while len(parts) < count:
        splittable = [j for j, part in enumerate(parts) if len(part) > 1]
        if not splittable:
            raise ValueError(f"{sum(len(p) for p in parts)} rows cannot make {count} micro-batches")
        j = max(splittable, key=lambda j: sum(lengths[i] for i in parts[j].tolist()))
        halves, load = ([], []), [0, 0]
        for i in sorted(parts[j].tolist(), key=lambda i: -lengths[i]):
            h = 0 if load[0] <= load[1] else 1
            halves[h].append(i)
            load[h] += lengths[i]
        parts[j : j + 1] = [torch.tensor(sorted(half)) for half in halves]
    return parts


def _pieces(members: list[int], shared: int, lengths: list[int], rows: int, tokens: int):
    """A group's rows as (rows, tokens) pieces within the budget, longest rows first; a piece
    costs the shared prompt once and each row's own tokens."""
    pieces, piece, cost = [], [], shared
    for i in sorted(members, key=lambda i: -lengths[i]):
        own = lengths[i] - shared
        if piece and (cost + own > tokens or len(piece) >= rows):
            pieces.append((piece, cost))
            piece, cost = [], shared
        piece.append(i)
        cost += own
    return pieces + [(piece, cost)]


def prompt_groups(seqs: SequenceBatch, index: Tensor) -> list[tuple[list[int], int]]:
    """`micro_batches`' groups for the rows `index` of `seqs` (positions into `index`): rows with
    the same prompt tokens, and the prompt's length."""
    sub = seqs.rows(index)
    prompt_lengths = sub.attention_mask[:, : sub.prompt_len].sum(-1).tolist()
    groups: dict[int, list[int]] = {}  # in the order of each group's first row
    for i, group in enumerate(prompt_group_ids(sub).tolist()):
        groups.setdefault(group, []).append(i)
    return [(members, prompt_lengths[members[0]]) for members in groups.values()]
