"""The records one RL step passes along: a `Sample` per completion, one `TrainBatch` of tensors.

    Problem -> engine -> Completion -> grader -> RewardResult      = Sample (one per row)
    list[Sample] -> make_batch -> TrainBatch                        tensors [B, T], rows = samples
    TrainBatch -> schedule.py -> the micro-batches of each forward/backward: rows and their packed layout

Log-probabilities keep one meaning each (docs/algorithms.md §1):
    engine_logprobs  what the rollout engine sampled with (the behaviour policy), per sampled token
    old_logprobs     the trainer's forward of the same weights before this step's updates
                     (None when the step makes one on-policy update: its first forward is it)
    ref_logprobs     the frozen reference model (KL)
    logprobs         the trainer's forward under the current weights (inside `update`, with grad)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from pillion.model.sequences import SequenceBatch, pack
from pillion.problem import Problem
from pillion.rewards import RewardResult
from pillion.rollout.engine import Completion

if TYPE_CHECKING:
    from pillion.train.schedule import Schedule


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
    # [B] long: each row's place in the step's global batch (kept groups in rollout order, rows of
    # a group in order); -1 on a padding row (several ranks: a rank short of groups holds copies
    # whose response_mask is 0, so that every rank runs every collective; parallel.balance_groups).
    # None: rows 0..B-1 in order.
    global_rows: Tensor | None = None
    mini_batch_rows: list[int] | None = None  # rows of each mini-batch, in order (None: update.py's chunks)
    old_logprobs: Tensor | None = None  # [B, T]
    ref_logprobs: Tensor | None = None  # [B, T]
    values: Tensor | None = None  # [B, T] critic at rollout time
    advantages: Tensor | None = None  # [B, T]
    returns: Tensor | None = None  # [B, T] critic targets (GAE)
    loss_mask: Tensor | None = None  # [B, T] tokens the actor loss sees (RAFT positives, overlong filter)
    # The step's micro-batches and their layouts (schedule.py), made on first use and shared by
    # the no-grad pass and the update; a sub-batch (`rows`) starts without one.
    schedule: Schedule | None = field(default=None, repr=False)

    @property
    def num_rows(self) -> int:
        return self.response_mask.shape[0]

    @property
    def real(self) -> Tensor:
        """[B] bool: the rows that are samples, not padding."""
        if self.global_rows is None:
            return torch.ones(self.num_rows, dtype=torch.bool, device=self.response_mask.device)
        return self.global_rows >= 0

    def rows(self, index: Tensor) -> TrainBatch:
        """The micro-batch of rows `index`: every tensor sliced the same way."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name not in ("schedule", "mini_batch_rows")}
        return TrainBatch(**{k: v.rows(index) if isinstance(v, SequenceBatch) else v[index] if isinstance(v, Tensor)
                             else v for k, v in fields.items()})


def make_batch(samples: list[Sample], pad_id: int, device: torch.device, global_rows: list[int] | None = None,
               mini_batch_rows: list[int] | None = None) -> TrainBatch:
    """[left-padded prompt | right-padded response] rows, engine log-probs, rewards, flags.
    global_rows: each sample's row in the step's global batch, -1 for padding (default: in order)."""
    completions = [s.completion for s in samples]
    seqs = pack([c.prompt_ids for c in completions], [c.ids for c in completions], pad_id, device)
    T = seqs.response_mask.shape[1]
    # One padded copy of every row's log-probs (a write per row costs ~10 us: 3 ms at 256 rows).
    padded = pad_sequence([c.logprobs.float() for c in completions], batch_first=True)  # [B, longest]
    engine_logprobs = F.pad(padded, (0, T - padded.shape[1])).to(device)  # [B, T]
    response_mask = seqs.response_mask.float()  # [B, T]
    for i, c in enumerate(completions):
        if c.sampled is not None:  # tool output: in the context (seqs), out of loss, KL and log-prob check
            response_mask[i, : len(c.ids)] *= c.sampled.to(device)
    rows = torch.tensor(global_rows if global_rows is not None else range(len(samples)), dtype=torch.long,
                        device=device)  # [B]
    response_mask *= (rows >= 0).to(response_mask.dtype)[:, None]  # padding rows: no token counts
    return TrainBatch(
        seqs=seqs,
        response_mask=response_mask,
        scores=torch.tensor([s.reward.score for s in samples], dtype=torch.float32, device=device),
        correct=torch.tensor([bool(s.reward.correct) for s in samples], device=device),
        truncated=torch.tensor([c.finish_reason == "length" for c in completions], device=device),
        engine_logprobs=engine_logprobs,
        global_rows=rows,
        mini_batch_rows=mini_batch_rows,
    )
