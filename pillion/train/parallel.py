"""torch.distributed and FSDP2 for `torchrun`, applied from outside the model (STYLE rule 11).

One process (the default) is world size 1 and every function here is the identity, so the
loop calls them unconditionally and never branches on parallelism. The design for several
ranks: each rank rolls out its slice of the step's prompts (whole groups, so advantages stay
local), the loss normalisers are summed over ranks, and FSDP2 (`fully_shard`) shards the
policy, the reference and the critic block by block and averages gradients.

Not yet supported: under FSDP2 every forward all-gathers parameters, so the rollout engine
(whose decode loop stops at a different step on each rank), rank-0-only evaluation and
checkpointing would deadlock. They need full weights gathered for rollout and collective
checkpoint/eval paths first; until then `init` refuses a world larger than one, with a clear
error instead of a hang.
"""

from __future__ import annotations

import os
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


def init() -> World:
    """Join the process group when started by torchrun; otherwise a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    raise NotImplementedError(
        f"pillion train runs in one process for now (WORLD_SIZE={size}): multi-GPU rollout and "
        "checkpointing under FSDP2 are not implemented yet (see pillion/train/parallel.py)"
    )


def shard(model: torch.nn.Module, world: World, param_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """FSDP2: shard each transformer block, then the root (torchtitan's order). No-op alone."""
    if world.size == 1:
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    trunk = getattr(model, "trunk", model)  # the critic wraps a transformer
    for block in trunk.model.layers:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def my_slice(items: list, world: World) -> list:
    """This rank's share of a list (contiguous, so groups of one prompt stay together)."""
    per = -(-len(items) // world.size)
    return items[world.rank * per : (world.rank + 1) * per]


def sum_int(value: int, world: World) -> int:
    """Sum of an integer over ranks (loss normalisers: global token and sequence counts)."""
    if world.size == 1:
        return value
    t = torch.tensor([value], dtype=torch.long, device="cuda" if torch.cuda.is_available() else "cpu")
    dist.all_reduce(t)
    return int(t.item())


def mean_float(value: float, world: World) -> float:
    """Mean of a metric over ranks, for logging."""
    if world.size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device="cuda" if torch.cuda.is_available() else "cpu")
    dist.all_reduce(t)
    return float(t.item()) / world.size
