"""Ranks of a torchrun job: who this process is, its share of a list, and the collectives on
plain numbers and Python objects that training and evaluation both use.

    world = World(rank, size)           train/parallel.init builds it from torchrun's variables
    start, end = my_range(n, world)     this rank's contiguous share of n items
    total = sum_int(tokens, world)      a global count (loss normalisers)
    rows = gather_list(mine, world)     every rank's items, in rank order, on every rank

One process is a world of one and every function here is the identity (no process group is
needed), so callers use them unconditionally. FSDP2, the process group's life and the training
records' own gathers stay in `pillion/train/parallel.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def my_range(n: int, world: World) -> tuple[int, int]:
    """[start, end) of this rank's contiguous share of n items: ceil(n / size) each in rank
    order (n divisible by the world size for training batches; evaluation sets may leave the
    last ranks a smaller or empty share)."""
    per = -(-n // world.size)
    return min(world.rank * per, n), min((world.rank + 1) * per, n)


def my_slice(items: list, world: World) -> list:
    """This rank's share of a list (contiguous, so groups of one prompt stay together)."""
    start, end = my_range(len(items), world)
    return items[start:end]


def _device() -> str:
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def sum_int(value: int, world: World) -> int:
    """Sum of an integer over ranks (loss normalisers: global token and sequence counts)."""
    if world.size == 1:
        return value
    t = torch.tensor([value], dtype=torch.long, device=_device())
    dist.all_reduce(t)
    return int(t.item())


def max_int(value: int, world: World) -> int:
    """The largest of an integer over ranks (micro-batch counts, which FSDP2 needs equal)."""
    if world.size == 1:
        return value
    t = torch.tensor([value], dtype=torch.long, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def sum_floats(values: dict[str, float], world: World) -> dict[str, float]:
    """Sums over ranks of named floats, in one all-reduce (float64)."""
    if world.size == 1 or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return dict(zip(values, t.tolist()))


def tensor_sum(world: World | None):
    """A function that sums a tensor over ranks (float64 on the wire, the input's dtype back), for
    the algorithms' `sum_over` arguments; None in one process (nothing to sum)."""
    if world is None or world.size == 1:
        return None

    def summed(t: torch.Tensor) -> torch.Tensor:
        wide = t.detach().to(device=_device(), dtype=torch.float64)
        dist.all_reduce(wide)
        return wide.to(device=t.device, dtype=t.dtype)

    return summed


def reduce_record(record: dict, world: World, sums: tuple[str, ...] = ()) -> dict:
    """A step's log record over ranks: keys in `sums` summed, other numbers averaged (they are
    per-rank means over equally many rows, or global values already), the rest kept. All ranks
    must hold the same keys (they run the same code on the same config)."""
    if world.size == 1:
        return record
    numbers = {k: float(v) for k, v in record.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
    total = sum_floats(numbers, world)
    out = dict(record)
    for k, v in total.items():
        value = v if k in sums else v / world.size
        out[k] = int(round(value)) if isinstance(record[k], int) else value
    return out


def gather_list(items: list, world: World) -> list:
    """Every rank's list, concatenated in rank order (rank 0's first), on every rank."""
    if world.size == 1:
        return items
    parts: list = [None] * world.size
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()
