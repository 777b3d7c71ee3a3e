"""Micro-batch scheduling: which rows of the step's batch run in each forward and backward.

    plan = schedule.of(batch, cfg, world)        # the step's Schedule: made once, kept on the TrainBatch
    for micro in plan.micro_batches(rows): ...   # MicroBatch: row indices [b] and their PackedLayout

By rows (`micro_batch` each) or, for the packed forward whose cost follows tokens, by a token
budget (`micro_batch_tokens`): balanced by tokens, a prompt group placed whole when prompts are
shared, and with several ranks as many micro-batches on every rank as the one that needs most
(`even_out`: FSDP2 gathers the weights in every forward, on all ranks at once). The loss
normalisers are counted over the whole mini-batch, so the split changes no gradient.

A step's rows are measured once (real tokens, prompt groups), and each set of rows is split
once, with one `PackedLayout` per micro-batch: the no-grad pass (all rows) and the update (each
mini-batch) share the split and the layouts when they are the same rows (one mini-batch per
step), and later epochs reuse the first epoch's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pillion import ranks
from pillion.model.sequences import PackedLayout, SequenceBatch, packed_layout, prompt_group_ids


@dataclass
class MicroBatch:
    rows: Tensor  # [b] long: row indices into the step's batch, sorted
    layout: PackedLayout  # the rows' packed layout, read by every forward of them


class Schedule:
    """The micro-batches of one step's rows `seqs`, as `cfg` (`micro_batch`, `micro_batch_tokens`,
    `share_prompts`) and the ranks (`world`) ask; each set of rows is split and laid out once."""

    def __init__(self, seqs: SequenceBatch, cfg, world=None):
        self.seqs, self.world = seqs, world
        self.rows, self.tokens, self.share = cfg.micro_batch, cfg.micro_batch_tokens, cfg.share_prompts
        self.lengths = seqs.attention_mask.sum(-1).tolist()  # [B] real tokens of each row
        # Prompt groups matter to a token budget with shared prompts only: (group, prompt length) per row.
        self.groups = None
        if self.share and self.tokens > 0:
            prompt_lengths = seqs.attention_mask[:, : seqs.prompt_len].sum(-1).tolist()
            self.groups = list(zip(prompt_group_ids(seqs).tolist(), prompt_lengths))
        self.done: dict[tuple[int, ...], list[MicroBatch]] = {}

    def split(self, index: Tensor) -> list[Tensor]:
        """Micro-batches (row indices into the batch) of the rows `index`, by rows or by token
        budget; with several ranks as many on every rank (the most any rank needs: `even_out`)."""
        rows = index.tolist()
        lengths = [self.lengths[i] for i in rows]
        groups = None
        if self.groups is not None:  # rows of one prompt (positions into `index`), in order of first row
            members: dict[int, list[int]] = {}
            for i, row in enumerate(rows):
                members.setdefault(self.groups[row][0], []).append(i)
            groups = [(m, self.groups[rows[m[0]]][1]) for m in members.values()]
        parts = micro_batches(lengths, self.rows, self.tokens, groups)
        if self.world is not None and self.world.size > 1 and self.tokens > 0:
            parts = even_out(parts, lengths, ranks.max_int(len(parts), self.world))
        return [index[m] for m in parts]

    def micro_batches(self, index: Tensor) -> list[MicroBatch]:
        """`split(index)` with each micro-batch's layout; computed once per set of rows."""
        key = tuple(index.tolist())
        if key not in self.done:
            self.done[key] = [MicroBatch(rows, packed_layout(self.seqs.rows(rows), self.share))
                              for rows in self.split(index)]
        return self.done[key]

    def layout(self, rows: Tensor) -> PackedLayout:
        """The packed layout of the rows `rows` in one forward (no split)."""
        return packed_layout(self.seqs.rows(rows), self.share)


def of(batch, cfg, world=None) -> Schedule:
    """The schedule of a TrainBatch: made on first use and kept on it (`batch.schedule`), so that
    the no-grad pass and the update of a step share it."""
    if batch.schedule is None:
        batch.schedule = Schedule(batch.seqs, cfg, world)
    return batch.schedule


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
