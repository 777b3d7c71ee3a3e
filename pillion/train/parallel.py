"""torch.distributed and FSDP2 for `torchrun`, applied from outside the model, in one place: the
model code is unchanged and the loop never branches on the number of ranks.

    torchrun --nproc_per_node=2 -m pillion train steps=20            # one node, two ranks (CPU: gloo)
    torchrun --nproc_per_node=8 -m pillion train model=DIR device=cuda dtype=bfloat16   # nccl

One process (the default) is world size 1 and every function here is the identity, so the
loop calls them unconditionally. The rank primitives that evaluation shares (`World`, a rank's
share `my_range`, `sum_int`, `gather_list`, `reduce_record`, ...) are in `pillion/ranks.py`;
this module joins the process group, shards models and gathers the training records. With N
ranks (docs/algorithms.md §1.1 for the normalisers):

- data: every rank draws the same global list of `prompts_per_step` prompts (same seed) and
  rolls out its contiguous share of whole groups (`my_range`); sampling randomness is keyed by
  the GLOBAL row (`SamplingParams.row_offset`), so the same rows get the same samples at any N;
  the group filters (Reinforce-Rej, DAPO's dynamic sampling) judge the gathered global batch,
  so the kept groups and DAPO's refills are one process's; before the update whole groups move
  between ranks so that each holds as many groups of each mini-batch (padding copies with no
  valid token where the filters left too few) and about as many tokens (`balance_groups`, point
  to point), and with `micro_batch_tokens` ranks run as many micro-batches each;
- models: policy, reference and critic (unless replicated, below) are sharded with
  `fully_shard`, block by block and then the root, float32 parameters with a
  `MixedPrecisionPolicy` (compute in `dtype`, gradients reduced in float32): FSDP2's float32
  shards are the master weights, so `precision.py`'s separate masters are not used. Loss
  normalisers are global sums (`sum_int`), each rank's loss is its partial sum over the global
  count, and gradients are SUMMED over ranks (gradient divide factor 1), so the update equals
  one process's on the same global batch;
- rollout and evaluation: the engine reads weights directly (`Transformer.decode`), not
  through `forward`, so `full_weights` all-gathers them once (`unshard`) around a whole
  rollout or evaluation and frees them after; no collective runs inside the decode loop, which
  stops at a different step on each rank. Peak: the shards plus one full copy of the weights in
  `dtype` (2 bytes/parameter in bf16), the same as a forward of every block at once. The
  alternative, a full-state-dict copy into a second, unsharded engine model, holds that copy
  for the whole run (or re-allocates it every step) and copies it once more per step;
- records: the step's generated samples are gathered (`gather_list`) so reward, accuracy and
  behaviour metrics are global; the update's statistics are reduced by their weight over
  micro-batches and ranks (`train/stats.py`, docs/algorithms.md §1.4); rank 0 alone writes
  files and prints (the others print only errors).

A rank that dies brings the job down: torchrun's agent stops the others and names the failed
rank; collectives time out after `fsdp.timeout_s`. `ref.offload` with N > 1 is FSDP2's CPU offload
of the reference's shards; `critic.device=cpu` keeps the critic's shards in CPU memory (a gloo
group beside nccl); LoRA adapters are sharded with their block beside the frozen base; Muon and
Dion gather each matrix's update (train/optim.py).

The critic may instead be replicated (`critic.replicate=true`): every rank holds all of it (with
`precision.py`'s masters in bf16, as one process; `fsdp.cpu_offload` does not apply), runs its
forwards without a collective, and before each critic optimizer step its gradients are summed
over ranks (`sum_gradients`: flat buffers, one all-reduce each), the sum FSDP2 does, so every
rank steps the same update from the same weights and the gradient norm needs no collective.
Worth it for a small critic: no all-gather per forward and no reduce-scatter per micro-batch,
for N whole copies. A critic on another GPU (`critic.device=cuda:K`) is replicated by force:
rank r's critic lives on cuda:(K + local rank r), and its gradients travel to the rank's own
device for the all-reduce and back (NCCL binds one device per rank: no collective may run on
the critic's GPU). `init` refuses in one line when the node has fewer than K + ranks-per-node
GPUs. `critic.device=cpu` with `critic.replicate`: the all-reduce runs on the rank's device too.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import os
import sys
import warnings
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from pillion.errors import UserError
from pillion.fields import bounded, leaves
from pillion.ranks import World, gather_list

RENDEZVOUS = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # what torchrun sets with WORLD_SIZE


class ParallelError(UserError):
    """A run that cannot start on this many ranks; the message says what to change."""


@dataclass
class FsdpConfig:
    """Several ranks under torchrun (this module); ignored in one process."""

    # FSDP2 CPUOffloadPolicy: shards, gradients, optimizer state in CPU memory (CUDA; ignored on CPU)
    cpu_offload: bool = False
    timeout_s: int = bounded(1800, low=1)  # a collective waiting longer (a rank stuck or gone) fails the job


def check(cfg, size: int) -> None:
    """The config errors of an N-rank run (one line each); nothing here needs a process group.

    Each key declares beside its field how it meets several ranks (`ranks=`, pillion/fields.py),
    so this holds for any config (train, sft) and for keys added later: a global batch
    ("split": prompts_per_step, batch_size) is divided among the ranks; every other key means
    the same at any number of ranks."""
    if size == 1:
        return
    for leaf in leaves(cfg):
        if leaf.spec is not None and leaf.spec.ranks == "split" and leaf.value % size:
            raise ParallelError(f"config key '{leaf.key}': {leaf.value} is not divisible by the {size} ranks (it is "
                                f"the global batch; each rank takes {leaf.key}/{size})")


def init(cfg) -> World:
    """Join the process group when started by torchrun (gloo on CPU, nccl on CUDA); else a world of
    one. Checks the config first, so a bad run writes nothing."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    missing = [k for k in RENDEZVOUS if k not in os.environ]
    if missing:
        raise ParallelError(f"WORLD_SIZE={size} is set but {', '.join(missing)} are not: start several ranks with "
                            f"`torchrun --nproc_per_node={size} -m pillion ...`, or unset WORLD_SIZE")
    check(cfg, size)
    world = World(int(os.environ["RANK"]), size, int(os.environ["LOCAL_RANK"]))
    cuda = on_cuda(cfg)
    if cfg.fsdp.cpu_offload and not cuda and world.main:  # ignored (`offloads`), as one process ignores it
        logging.getLogger("pillion").warning("fsdp.cpu_offload=true is ignored on CPU: the shards are in CPU memory "
                                             "already")
    critic = getattr(getattr(cfg, "critic", None), "device", "auto")
    if critic.startswith("cuda"):  # one GPU per rank's critic: refused before joining when too few
        critic_device(critic, torch.device("cpu"), world, local_world_size(world), torch.cuda.device_count())
    if cuda:
        place(torch.device("cuda"), world)  # fewer GPUs than local ranks: one line, before joining
    if not dist.is_initialized():
        # A critic in CPU memory next to CUDA policies: its collectives run on gloo, the rest on nccl.
        backend = ("cpu:gloo,cuda:nccl" if critic == "cpu" else "nccl") if cuda else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=cfg.fsdp.timeout_s))
    if not world.main:  # one voice: rank 0 prints and logs; the others keep stderr for errors only
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
        os.environ["TQDM_DISABLE"] = "1"
        logging.getLogger("pillion").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore")
    return world


def on_cuda(cfg) -> bool:
    """Whether the run's device is CUDA (`device=cuda...`, or auto on a machine with CUDA)."""
    return cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())


def offloads(cfg) -> bool:
    """`fsdp.cpu_offload` as it applies: FSDP2 offloads from an accelerator (pinned CPU memory), so
    on CPU, where the shards are in CPU memory already, it is ignored (with a warning from `init`)
    rather than refused: one process ignores every fsdp key, and N ranks accept what one does."""
    return cfg.fsdp.cpu_offload and on_cuda(cfg)


def record(fn):
    """torchelastic's `@record` under torchrun (which sets TORCHELASTIC_ERROR_FILE): a rank's
    uncaught exception is written where the agent reads it, so the job's failure summary shows
    it; the function itself otherwise. A UserError passes unrecorded: it is one line, printed
    by the command line (pillion/cli.py), not a traceback for the summary."""
    if "TORCHELASTIC_ERROR_FILE" not in os.environ:
        return fn
    from torch.distributed.elastic.multiprocessing.errors import record as elastic_record

    @functools.wraps(fn)
    def returning_user_errors(*args, **kwargs):
        try:
            return fn(*args, **kwargs), None
        except UserError as e:
            return None, e

    recorded = elastic_record(returning_user_errors)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        result, error = recorded(*args, **kwargs)
        if error is not None:
            raise error
        return result

    return wrapper


def local_world_size(world: World) -> int:
    """Ranks on this node (torchrun's LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world.size))


def place(device: torch.device, world: World) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK on CUDA (one GPU per rank), else `device`."""
    if world.size == 1 or device.type != "cuda":
        return device
    local = local_world_size(world)
    count = torch.cuda.device_count()
    if count < local:
        raise ParallelError(f"config key 'device': cuda with {local} ranks on this node but it has {count} CUDA "
                            f"device(s); start at most {count} ranks per node (torchrun --nproc_per_node)")
    torch.cuda.set_device(world.local_rank)
    return torch.device("cuda", world.local_rank)


def critic_device(name: str, device: torch.device, world: World, local_size: int, count: int) -> torch.device:
    """Where this rank's critic lives (`critic.device` = `name`; `device` is the rank's own, the
    node has `local_size` ranks and `count` GPUs). auto: `device`; cpu: CPU memory; one process:
    the GPU named. Several ranks: cuda:K is cuda:(K + local rank), a GPU per rank's critic (cuda
    and cuda:0: the rank's own GPU); K >= local_size gives each critic a GPU no rank computes on."""
    if name == "auto":
        return device
    if world.size == 1 or not name.startswith("cuda"):
        return torch.device(name)
    k = torch.device(name).index or 0
    if k + local_size > count:
        raise ParallelError(f"config key 'critic.device': {name} with {local_size} ranks on this node puts rank r's "
                            f"critic on cuda:{k}+r, up to cuda:{k + local_size - 1}, but the node has {count} CUDA "
                            f"device(s); use cuda:K with K + {local_size} <= {count}, auto or cpu")
    return torch.device("cuda", k + world.local_rank)


def replicated_critic(replicate: bool, critic: torch.device, device: torch.device, world: World) -> bool:
    """Whether every rank holds the whole critic (`sum_gradients`) rather than its FSDP2 shards:
    asked (`critic.replicate`), or forced by a critic on a GPU that is not the rank's own
    (FSDP2's collectives would run there, on a device NCCL does not bind to this rank). Never
    in one process, which holds the whole critic anyway."""
    return world.size > 1 and (replicate or (critic.type == "cuda" and critic != device))


@dataclass
class Replicated:
    """A model every rank holds whole: its gradients are summed over ranks before each optimizer step."""

    world: World
    device: torch.device  # where the all-reduce runs: the rank's own device, the one its backend binds


def sum_gradients(params: list, replicated: Replicated | None, bucket_bytes: int = 1 << 28) -> None:
    """Sum the gradients of a replicated model's `params` over ranks, in place (nothing without
    `replicated`): they are cut into flat buffers of one dtype and at most `bucket_bytes` on the
    rank's device, each all-reduced once and copied back to where its gradients live. A small
    critic takes one all-reduce; a critic on another GPU costs the rank's GPU one bucket at a
    time, not a copy of all its gradients. Every rank holds the same parameters with a gradient
    (the ranks run the same forwards), so the buffers match."""
    if replicated is None or replicated.world.size == 1:
        return
    pieces = [piece for p in params if p.grad is not None  # views of each gradient, a bucket at most each
              for piece in p.grad.view(-1).split(max(bucket_bytes // p.grad.element_size(), 1))]
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for piece in pieces:
        nbytes = piece.numel() * piece.element_size()
        if not buckets or size + nbytes > bucket_bytes or piece.dtype != buckets[-1][-1].dtype:
            buckets.append([])
            size = 0
        buckets[-1].append(piece)
        size += nbytes
    for bucket in buckets:
        flat = torch.empty(sum(x.numel() for x in bucket), dtype=bucket[0].dtype, device=replicated.device)  # [n]
        parts = flat.split([x.numel() for x in bucket])
        for x, part in zip(bucket, parts):
            part.copy_(x)
        dist.all_reduce(flat)  # SUM, on the rank's own device
        for x, part in zip(bucket, parts):
            x.copy_(part)


def shard(model: torch.nn.Module, world: World, param_dtype: torch.dtype | None = None,
          cpu_offload: bool = False) -> torch.nn.Module:
    """FSDP2: shard each transformer block, then the root (torchtitan's order). No-op alone.

    `model` holds float32 parameters; param_dtype (bf16) is the compute dtype, gradients are
    reduced in float32 and summed over ranks (each rank's loss is already divided by the global
    count). cpu_offload keeps shards, gradients and optimizer state in CPU memory (FSDP2's
    CPUOffloadPolicy; the optimizer step then runs on CPU). A critic's `packed_values` is registered
    as a forward method so that the root's weights are gathered around it as around `forward`.
    """
    if world.size == 1:
        return model
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        FSDPModule,
        MixedPrecisionPolicy,
        OffloadPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    mesh = None  # the default: the ranks' accelerator (or CPU without one)
    if next(model.parameters()).device.type == "cpu" and torch.cuda.is_available() and not cpu_offload:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (world.size,))  # critic.device=cpu beside CUDA policies: stays in CPU memory
    trunk = getattr(model, "trunk", model)  # the critic wraps a transformer
    for block in trunk.model.layers:  # activation checkpointing wrappers first, then FSDP (torchtitan)
        fully_shard(block, mesh=mesh, mp_policy=policy, offload_policy=offload)
    fully_shard(model, mesh=mesh, mp_policy=policy, offload_policy=offload)
    if hasattr(model, "packed_values"):
        register_fsdp_forward_method(model, "packed_values")
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # sum: the losses are divided by global counts
            module.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM)
    return model


@contextlib.contextmanager
def full_weights(model: torch.nn.Module, world: World):
    """All-gather every shard of `model` (in its compute dtype) for the block, then free them:
    the rollout engine and evaluation read the weights directly. The identity alone."""
    if world.size == 1:
        yield model
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:  # unshard is not recursive; one all-gather per block and one for the root
        unit.unshard()
    try:
        yield model
    finally:
        for unit in units:
            unit.reshard()


def gather_samples(samples: list, world: World) -> list:
    """Every rank's samples (train.batch.Sample) in rank order, without their per-token log-probs
    (the step's metrics need rewards, texts and lengths only)."""
    if world.size == 1:
        return samples
    light = [replace(s, completion=replace(s.completion, logprobs=torch.empty(0))) for s in samples]
    return gather_list(light, world)


def balanced_groups(costs: list[int], size: int) -> list[list[int]]:
    """Which groups each of `size` ranks holds: ceil(len(costs) / size) at most each, their costs
    balanced (heaviest group first, to the lightest rank with room; ties to the lower group and
    rank), each rank's groups in their original order."""
    per = -(-len(costs) // size)
    ranks: list[list[int]] = [[] for _ in range(size)]
    load = [0] * size
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min((r for r in range(size) if len(ranks[r]) < per), key=lambda r: (load[r], r))
        ranks[r].append(i)
        load[r] += costs[i]
    return [sorted(r) for r in ranks]


@dataclass
class Share:
    """This rank's rows of the step after `balance_groups`."""

    samples: list  # whole groups, mini-batch by mini-batch; a mini-batch's padding groups last
    global_rows: list[int]  # each sample's row in the step's global batch; -1 for a padding copy
    mini_batch_rows: list[int]  # rows of each mini-batch (the same on every rank)


def balance_groups(samples: list, positions: list[int], kept: int, group_size: int, mini_batches: int,
                   world: World) -> Share:
    """This rank's groups for the update. The step's `kept` groups (in the order `positions`
    counts: one process's batch order) form `mini_batches` global mini-batches of
    ceil(kept / mini_batches) whole groups; every rank holds ceil(n / N) groups of a mini-batch of
    n, so that ranks run as many forwards and optimizer steps (every FSDP2 forward is
    collective), whatever the group filters left where. A rank short of groups holds padding
    copies of a group, with no valid token (`TrainBatch.real`): they change no loss, count or
    statistic. Within a mini-batch, groups move between ranks when that lowers the heaviest
    rank's tokens (a long tail on one rank would hold every other rank at each collective) or
    when a rank holds more than its share (filters); only the moved groups travel, point to
    point. The update is the same wherever a group lies: loss normalisers are global sums and
    gradients are summed."""
    G = group_size
    chunk = max(-(-kept // mini_batches), 1)
    chunks = [list(range(i, min(i + chunk, kept))) for i in range(0, kept, chunk)]
    groups = {p: samples[i * G : (i + 1) * G] for i, p in enumerate(positions)}
    if world.size == 1:
        return Share([s for c in chunks for p in c for s in groups[p]], [p * G + j for c in chunks for p in c
                                                                          for j in range(G)],
                     [len(c) * G for c in chunks])
    held = gather_list([(world.rank, p, sum(len(s.completion.prompt_ids) + len(s.completion.ids)
                                            for s in groups[p])) for p in positions], world)
    holder = {p: r for r, p, _ in held}
    cost = {p: c for _, p, c in held}
    owner: dict[int, int] = {}  # position -> the rank that updates on it
    for c in chunks:
        per = -(-len(c) // world.size)
        current = [[p for p in c if holder[p] == r] for r in range(world.size)]
        balanced = [[c[i] for i in part] for part in balanced_groups([cost[p] for p in c], world.size)]
        heaviest = lambda parts: max(sum(cost[p] for p in part) for part in parts)  # noqa: E731
        keep = all(len(part) <= per for part in current) and heaviest(current) <= heaviest(balanced)
        for r, part in enumerate(current if keep else balanced):
            owner.update({p: r for p in part})
    # A rank left without a real group pads with a copy of the step's first group.
    idle = [r for r in range(world.size) if r not in owner.values()]
    moves = sorted({(holder[p], owner[p], p) for p in owner if holder[p] != owner[p]}
                   | {(holder[0], r, 0) for r in idle if holder[0] != r})
    received = exchange(groups, moves, world)
    mine = {p: received.get(p) or groups[p] for p in owner if owner[p] == world.rank}
    template = next(iter(mine.values()), None) or received.get(0) or groups.get(0)
    out, rows, sizes = [], [], []
    for c in chunks:
        per = -(-len(c) // world.size)
        real = [p for p in c if owner[p] == world.rank]
        for p in real:
            out += mine[p]
            rows += [p * G + j for j in range(G)]
        out += template * (per - len(real))
        rows += [-1] * (G * (per - len(real)))
        sizes.append(per * G)
    return Share(out, rows, sizes)


def exchange(groups: dict[int, list], moves: list[tuple[int, int, int]], world: World) -> dict[int, list]:
    """Send each moved group (src, dst, position) from its holder to its new rank, point to point:
    one message per (src, dst) pair, pairs in the same order on every rank (so a blocking send
    always meets its receive). Returns the groups this rank received, by position."""
    pairs: dict[tuple[int, int], list[int]] = {}
    for src, dst, p in moves:
        pairs.setdefault((src, dst), []).append(p)
    received: dict[int, list] = {}
    for (src, dst), moved in sorted(pairs.items()):
        if world.rank == src:
            dist.send_object_list([[groups[p] for p in moved]], dst=dst)
        elif world.rank == dst:
            box: list = [None]
            dist.recv_object_list(box, src=src)
            received.update(zip(moved, box[0]))
    return received


def clip_grad_norm(params: list, max_norm: float) -> torch.Tensor:
    """`clip_grad_norm_` that also takes FSDP2's sharded (DTensor) gradients: the norm is
    reduced over ranks into a plain tensor, the same number on every rank."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


class NoLog:
    """What ranks other than 0 get instead of `common.MetricsLog`: writes nothing."""

    def truncate_after(self, step: int) -> None:
        pass

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def close(world: World) -> None:
    """Leave the process group at the end of a run (after the last collective)."""
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
