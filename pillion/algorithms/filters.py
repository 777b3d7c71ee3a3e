"""Sample filters as pure tensor functions, plus the DAPO dynamic-sampling buffer
(docs/algorithms.md §6.2, §6.4, §9).

Rows of one prompt are contiguous (group(i) = i // G). Filters return a keep mask [B] (bool,
constant within a group) or a new response mask; they never touch models or rollouts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from pillion.algorithms.advantages import check_scores


def reject_all_equal(scores: Tensor, group_size: int) -> Tensor:
    """Reinforce-Rej filter (2504.11343 §5.1): drop every group whose scores are all equal
    (all correct or all wrong). A group of one sample is all-equal, so G = 1 drops every row.
    [B] -> keep [B] bool."""
    scores = check_scores(scores, group_size)
    grouped = scores.view(-1, group_size)  # [P, G]
    mixed = (grouped != grouped[:, :1]).any(dim=1, keepdim=True)  # [P, 1]
    return mixed.expand(-1, group_size).reshape(-1)  # [B]


def mixed_groups(correct: Tensor, group_size: int) -> Tensor:
    """DAPO dynamic-sampling test (2503.14476 §3.2 eq. 11): keep groups with
    0 < #correct < G, judged on accuracy, not on the shaped reward. G < 2 is a config error
    (no group can be mixed). correct: [B] bool or 0/1 -> keep [B] bool."""
    if group_size < 2:
        raise ValueError(f"dynamic sampling needs group_size >= 2, got {group_size}")
    correct = check_scores(correct, group_size) > 0  # [B]
    num_correct = correct.view(-1, group_size).sum(dim=1, keepdim=True)  # [P, 1]
    mixed = (num_correct > 0) & (num_correct < group_size)  # [P, 1]
    return mixed.expand(-1, group_size).reshape(-1)  # [B]


def overlong_mask(mask: Tensor, truncated: Tensor) -> Tensor:
    """Overlong filtering (DAPO §3.4): zero the response-mask rows of truncated responses
    (finish_reason "length"). Their scores stay in the group statistics. [B, T], [B] -> [B, T]."""
    truncated = torch.as_tensor(truncated, device=mask.device).bool()  # [B]
    return torch.where(truncated[:, None], torch.zeros((), dtype=mask.dtype, device=mask.device), mask)


@dataclass
class GroupBuffer:
    """Accumulates kept groups across generation batches (DAPO 2503.14476 §3.2, Algorithm 1).

    The loop drives it; the buffer only stores rows it is handed, in arrival order:

        buffer = GroupBuffer(target_groups=P_train, group_size=G)
        for _ in range(max_gen_batches):
            rows, correct = generate_and_score(...)          # B rows, contiguous groups
            buffer.add(mixed_groups(correct, G), rows)
            if buffer.full:
                break
        else:
            log(buffer.give_up_message(max_gen_batches))     # continue with what there is
        if not buffer.rows:
            skip this step

    Groups arriving after the buffer is full are discarded (surplus truncated). `rows` can
    be any per-row records (completions, indices, ...); a group is stored as G of them.
    """

    target_groups: int
    group_size: int
    rows: list[Any] = field(default_factory=list)
    num_batches: int = 0

    def __post_init__(self) -> None:
        if self.target_groups < 1 or self.group_size < 1:
            raise ValueError(f"target_groups and group_size must be >= 1, got {self.target_groups}, {self.group_size}")

    @property
    def num_groups(self) -> int:
        return len(self.rows) // self.group_size

    @property
    def full(self) -> bool:
        return self.num_groups >= self.target_groups

    def add(self, keep: Tensor, rows: Sequence[Any]) -> None:
        """Append the kept groups of one generation batch. keep: [B] bool, constant per group;
        rows: the batch's B per-row records."""
        keep = torch.as_tensor(keep).bool()
        if keep.dim() != 1 or keep.numel() != len(rows) or keep.numel() % self.group_size:
            raise ValueError(
                f"keep of shape {tuple(keep.shape)} does not match {len(rows)} rows in groups of {self.group_size}"
            )
        keep_group = keep.view(-1, self.group_size)  # [P, G]
        if not (keep_group == keep_group[:, :1]).all():
            raise ValueError("keep mask differs within a group")
        self.num_batches += 1
        for group in torch.nonzero(keep_group[:, 0]).flatten().tolist():
            if self.full:
                break
            self.rows.extend(rows[group * self.group_size : (group + 1) * self.group_size])

    def give_up_message(self, max_gen_batches: int | None = None) -> str:
        """The log line of docs/algorithms.md §6.2 when the batch bound is reached before the target."""
        batches = self.num_batches if max_gen_batches is None else max_gen_batches
        return f"dynamic sampling: {self.num_groups}/{self.target_groups} groups after {batches} batches"
