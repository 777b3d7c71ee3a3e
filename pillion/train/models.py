"""The models of an RL run on one device: policy, reference and critic, built as configured.

    models = build_models(cfg, model_dir, device)
    optimizers = build_optimizers(models, cfg)     # masters, adapters or weights; bf16: masters -> model
    ref = reference_fn(models, device, temperature)    # per micro-batch: layout -> [b, T] (update.py)

The memory options, all applied from outside the model code:
- `dtype=bfloat16`: bf16 compute over float32 master weights (precision.py).
- `lora.rank > 0`: low-rank adapters on the projections (model/lora.py); the base is frozen in
  `dtype`, and the reference is the policy with its adapters off, so no reference is loaded.
- `ref.offload=true`: the reference lives in CPU memory (pinned when the device is CUDA) and
  is copied to the device for its one no-grad pass per step, between rollout and update. That
  pass holds 2 bytes per parameter (bf16) on the device, against the 16-18 the update holds
  for the policy, so the step's peak drops by the reference's whole size.
- `critic.device`: where the critic (PPO, VAPO) lives; its values come back to the policy's
  device, so the loop is unchanged. With several ranks the critic is sharded like the policy,
  or with `critic.replicate` (forced by a critic on another GPU) held whole by every rank, its
  gradients summed over ranks before each step (train/parallel.py).
- `activation_checkpointing`: `blocks` wraps every transformer block, `every_k` blocks
  0, k, 2k, ..., in torch's non-reentrant checkpoint wrapper (as torchtitan applies it): a
  wrapped block keeps only its input for backward and recomputes its forward there. The
  state-dict names and the engine's decode path are unchanged (it reads weights directly).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from pillion import ranks
from pillion.eval.behaviour import kl_sums, probe_rows
from pillion.fields import bounded, checked, free
from pillion.model import lora
from pillion.model.checkpoint import load_model
from pillion.model.critic import Critic
from pillion.model.sequences import PackedLayout, SequenceBatch, packed_logprobs
from pillion.model.transformer import Transformer
from pillion.train import parallel, precision
from pillion.train.common import check_device
from pillion.train.optim import make_optimizer

CHECKPOINTING = ("none", "blocks", "every_k")


@dataclass
class RefConfig:
    offload: bool = free(False)  # the reference on CPU, copied to the device for its one pass per step


@dataclass
class CriticConfig:
    device: str = checked("auto", check_device)  # auto: the policy's device; or cpu | cuda | cuda:1 ...
    # Several ranks: every rank holds the whole critic (no FSDP2), its gradients summed over ranks
    # per optimizer step; forced by device=cuda:K there (rank r's critic on cuda:K+r). One process: no effect.
    replicate: bool = False


@dataclass
class CheckpointingConfig:
    """Activation checkpointing of transformer blocks (recompute in backward, non-reentrant)."""

    name: Literal["none", "blocks", "every_k"] = "none"  # blocks: every block; every_k: blocks 0, k, 2k, ...
    k: int = bounded(2, low=1)


@dataclass
class Models:
    policy: Transformer  # every policy forward and the rollout engine (bf16 when dtype=bfloat16)
    policy_params: list[nn.Parameter]  # what the optimizer steps: float32 masters, adapters or weights
    ref: Transformer | None = None  # frozen reference (None: no KL, or LoRA's adapters-off base)
    ref_offloaded: bool = False  # ref lives on CPU and is copied to `device` for its pass
    lora_reference: bool = False  # the reference is the policy with adapters off
    critic: Critic | None = None
    critic_params: list[nn.Parameter] = field(default_factory=list)
    critic_replicated: parallel.Replicated | None = None  # several ranks, critic.replicate: gradients to sum
    policy_master: precision.MasterWeights | None = None
    critic_master: precision.MasterWeights | None = None
    # The KL probe's initial policy when there is no reference: read from this folder at each probe
    # and freed after it, so no second copy of the model is held between probes.
    initial_dir: Path | None = None
    initial_dtype: torch.dtype | None = None


def optimizer_target(module: nn.Module | None, params: list[nn.Parameter]):
    """What `optim.make_optimizer` gets: the module itself when its trainable parameters are exactly
    `params` (Muon and Dion need it to tell hidden matrices from embeddings, head and norms), else
    the list (float32 masters or LoRA adapters: AdamW only)."""
    own = [p for p in module.parameters() if p.requires_grad] if module is not None else []
    return module if [id(p) for p in own] == [id(p) for p in params] else params


def apply_activation_checkpointing(model: nn.Module, mode: str, k: int = 2) -> int:
    """Wrap the chosen blocks of a Transformer (or a critic's trunk) in place; return how many."""
    if mode not in CHECKPOINTING:
        raise ValueError(f"config key 'activation_checkpointing': {mode!r} (none, blocks, every_k)")
    if mode == "none":
        return 0
    if mode == "every_k" and k < 1:
        raise ValueError(f"config key 'activation_checkpointing.k': {k} (>= 1)")
    every = 1 if mode == "blocks" else k
    layers = getattr(model, "trunk", model).model.layers
    wrapped = 0
    for i in range(0, len(layers), every):
        # No dropout anywhere, so the recomputation needs no saved RNG state.
        layers[i] = checkpoint_wrapper(layers[i], preserve_rng_state=False)
        wrapped += 1
    return wrapped


def compute_dtype(name: str) -> torch.dtype:
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"config key 'dtype': {name!r} (float32 or bfloat16; float16 would need loss scaling)")
    return getattr(torch, name)


def load_trainable(model_dir: Path, dtype: torch.dtype, device, lora_cfg=None, checkpointing=None, world=None,
                   cpu_offload: bool = False):
    """(model, params to optimize, masters or None) for a policy or an SFT model.

    LoRA: the base in `dtype`, frozen, with float32 adapters. Full training in bf16: loaded in
    float32, then split into a bf16 model and its float32 masters. Otherwise the weights.
    Several ranks: float32 weights sharded by FSDP2, computing in `dtype` (train/parallel.py).
    LoRA there: the adapters are sharded with their block, beside its frozen base (one FSDP2
    unit per block, as without LoRA): one path for gathers, gradient reduce-scatters, the
    optimizer and DCP checkpoints, and the frozen base held 1/N per rank, which is what LoRA on
    several GPUs is for. Replicating the adapters instead would need their own gradient
    all-reduce and checkpoint path, for a saving of a few small all-gathers.
    """
    if world is not None and world.size > 1:
        model = load_model(model_dir, dtype=torch.float32, device=device)
        if lora_cfg is not None and lora_cfg.rank > 0:
            lora.apply_lora(model, lora_cfg.rank, lora_cfg.alpha, lora_cfg.targets)  # base frozen
        if checkpointing is not None:
            apply_activation_checkpointing(model, checkpointing.name, checkpointing.k)
        model = parallel.shard(model, world, dtype, cpu_offload)
        return model, [p for p in model.parameters() if p.requires_grad], None
    if lora_cfg is not None and lora_cfg.rank > 0:
        model = load_model(model_dir, dtype=dtype, device=device)
        params, master = lora.apply_lora(model, lora_cfg.rank, lora_cfg.alpha, lora_cfg.targets), None
    else:
        model = load_model(model_dir, dtype=torch.float32, device=device)
        master = precision.master_weights(model, dtype) if dtype != torch.float32 else None
        params = master.params if master else list(model.parameters())
    if checkpointing is not None:
        apply_activation_checkpointing(model, checkpointing.name, checkpointing.k)
    return model, params, master


def build_models(cfg, model_dir: Path, device: torch.device, world=None) -> Models:
    """Policy, reference (a KL term, or DPO) and critic (GAE advantages), as configured."""
    dtype = compute_dtype(cfg.dtype)
    world = world or ranks.World()
    policy, params, master = load_trainable(model_dir, dtype, device, cfg.lora, cfg.activation_checkpointing, world,
                                            parallel.offloads(cfg))
    models = Models(policy, params, policy_master=master)
    if cfg.loss.kl_coef > 0 or cfg.adv.name == "dpo":
        if cfg.lora.rank > 0:
            models.lora_reference = True
        else:
            offload = cfg.ref.offload and torch.device(device).type != "cpu"
            ref = load_model(model_dir, dtype=dtype, device="cpu" if offload else device)
            if offload and torch.cuda.is_available() and world.size == 1:
                for p in ref.parameters():  # pinned: the per-step copy runs at full bus speed
                    p.data = p.data.pin_memory()
            ref = ref.eval().requires_grad_(False)
            # Several ranks: an offloaded reference is FSDP2's CPU offload of its shards (each block
            # copied to the device for its forward, freed after), not a whole-model copy per step.
            models.ref = parallel.shard(ref, world, cpu_offload=parallel.offloads(cfg) or offload)  # in `dtype`
            models.ref_offloaded = cfg.ref.offload and world.size == 1
    if cfg.adv.name == "gae":
        critic_device = parallel.critic_device(cfg.critic.device, device, world, parallel.local_world_size(world),
                                               torch.cuda.device_count())  # several ranks: cuda:K is cuda:K+r
        critic = Critic(load_model(model_dir, dtype=torch.float32, device=critic_device))
        replicated = parallel.replicated_critic(cfg.critic.replicate, critic_device, device, world)
        sharded = world.size > 1 and not replicated  # FSDP2's float32 shards are the masters there
        bf16_masters = dtype != torch.float32 and not sharded  # one process's masters, also when replicated
        models.critic_master = precision.master_weights(critic, dtype) if bf16_masters else None
        apply_activation_checkpointing(critic, cfg.activation_checkpointing.name, cfg.activation_checkpointing.k)
        if sharded:
            critic = parallel.shard(critic, world, dtype, parallel.offloads(cfg))
        if replicated:  # the same weights on every rank (the same folder, the head at zero), summed gradients
            models.critic_replicated = parallel.Replicated(world, device)
        models.critic_params = (models.critic_master.params if models.critic_master
                                else [p for p in critic.parameters() if p.requires_grad])
        models.critic = critic
    # The probe's initial policy is read from the folder without a reference, and when online DPO
    # refreshes the reference (after a refresh it is no longer the initial policy).
    refreshed = cfg.adv.name == "dpo" and cfg.dpo.ref_update_every > 0
    if (models.ref is None or refreshed) and cfg.lora.rank == 0 and cfg.behaviour.kl_probe_every > 0:
        models.initial_dir, models.initial_dtype = Path(model_dir), dtype
    return models


def kl_probe(models: Models, batch: SequenceBatch, temperature: float, rows: int, global_rows=None,
             world=None) -> dict[str, float]:
    """`behaviour.kl_probe_*`: KL(policy || initial policy) on `rows` rows of the step's batch,
    against the reference when it is the starting model, else the starting model read again from its folder
    (loaded one tensor at a time to the batch's device, freed when the probe ends: a 0.5B model
    would otherwise hold 2 GB more for the whole run); {} with LoRA (its initial policy is the
    adapters-off policy, which the probe does not switch to).

    With several ranks the probe's rows are those one process would take from the global batch
    (`global_rows`: each local row's place in it, -1 for padding), each scored on the rank that
    holds it, and the token sums added over ranks: one number for any N. A rank holding none of
    them still runs the forwards (FSDP2 gathers weights in each, on every rank) on a row it
    then weighs 0."""
    device = batch.input_ids.device
    if models.initial_dir is not None:
        initial = load_model(models.initial_dir, dtype=models.initial_dtype, device=device)
        initial.eval().requires_grad_(False)
    elif models.ref is not None:
        initial = models.ref
        if next(initial.parameters()).device != device and not hasattr(initial, "unshard"):  # FSDP2 gathers its own
            initial = device_copy(initial, device)  # freed when the probe ends
    else:
        return {}
    world = world or ranks.World()
    device_rows = torch.arange(batch.input_ids.shape[0], device=device) if global_rows is None else global_rows
    chosen = probe_rows(ranks.sum_int(int((device_rows >= 0).sum()), world), rows).to(device)
    local = torch.nonzero(torch.isin(device_rows, chosen)).flatten()  # [r] this rank's probe rows
    weight = 1.0 if len(local) else 0.0
    sums = kl_sums(models.policy, initial, batch.rows(local if len(local) else local.new_zeros(1)), temperature)
    sums = ranks.sum_floats({k: weight * v for k, v in sums.items()}, world)
    return {k: sums[k] / sums["tokens"] if sums["tokens"] else 0.0 for k in ("kl_initial", "kl_initial_k1")}


@dataclass
class Optimizers:
    policy: torch.optim.Optimizer
    critic: torch.optim.Optimizer | None = None  # with a critic (PPO, VAPO)


def build_optimizers(models: Models, cfg) -> Optimizers:
    """The policy's optimizer (`optim`, `lr`, `weight_decay`) and the critic's (`ppo.critic_lr`, no
    weight decay), over what each trains, attached to the models (`attach_optimizers`)."""
    policy = make_optimizer(optimizer_target(models.policy, models.policy_params), cfg.optim, cfg.lr,
                            cfg.weight_decay)
    critic = None
    if models.critic is not None:
        critic = make_optimizer(optimizer_target(models.critic, models.critic_params), cfg.optim, cfg.ppo.critic_lr,
                                0.0)
    optimizers = Optimizers(policy, critic)
    attach_optimizers(models, optimizers)
    return optimizers


def attach_optimizers(models: Models, optimizers: Optimizers) -> None:
    """bf16 with masters: after each optimizer step, round the masters into the model."""
    precision.sync_after_step(optimizers.policy, models.policy_master)
    if optimizers.critic is not None:
        precision.sync_after_step(optimizers.critic, models.critic_master)


def optimizer_params(optimizer) -> list[nn.Parameter]:
    """The parameters an optimizer steps (the ones to clip: masters, adapters or weights)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def device_copy(model: Transformer, device) -> Transformer:
    """A frozen Transformer's copy on `device` (tensors shared where they already are there)."""
    with torch.device("meta"):
        twin = Transformer(model.cfg)
    moved: dict[int, torch.Tensor] = {}  # parameter id -> its copy: a tied matrix is copied once
    for v in model.state_dict(keep_vars=True).values():
        if id(v) not in moved:
            moved[id(v)] = v.detach().to(device, non_blocking=True)
    twin.load_state_dict({k: moved[id(v)] for k, v in model.state_dict(keep_vars=True).items()}, assign=True)
    if model.cfg.tie_word_embeddings:
        twin.lm_head.weight = twin.model.embed_tokens.weight
    twin.reset_rope(device)
    return twin.eval().requires_grad_(False)


def reference_fn(models: Models, device, temperature: float):
    """A no-grad function layout -> log pi_ref [b, T] of a micro-batch's responses (its
    `PackedLayout`, shared with the micro-batch's other forwards), or None without a reference:
    the policy with adapters off (LoRA), a device copy made once here (offloaded, freed with the
    function), or the reference itself."""
    if models.lora_reference:
        def adapters_off(layout: PackedLayout) -> torch.Tensor:
            with torch.no_grad(), lora.adapters_disabled(models.policy):
                return packed_logprobs(models.policy, layout, temperature)[0]
        return adapters_off
    if models.ref is None:
        return None
    ref = device_copy(models.ref, device) if models.ref_offloaded else models.ref
    return torch.no_grad()(lambda layout: packed_logprobs(ref, layout, temperature)[0])


@torch.no_grad()
def refresh_reference(models: Models) -> None:
    """The reference takes the policy's current weights (online DPO's `dpo.ref_update_every`):
    tensor by tensor in place, so an offloaded reference stays on the CPU and FSDP2 shards copy
    shard to shard."""
    if models.ref is None:
        return
    target = models.ref.state_dict()
    for name, value in models.policy.state_dict().items():
        target[name].copy_(value)


def master_state(models: Models) -> dict:
    """float32 masters for a checkpoint (the saved model folder holds their bf16 rounding)."""
    return {"policy": precision.state_dict(models.policy_master), "critic": precision.state_dict(models.critic_master)}


def load_master_state(models: Models, state: dict | None) -> None:
    """After loading a checkpoint's weights: restore the masters (or take them from the weights)."""
    state = state or {}
    precision.load_state_dict(models.policy_master, state.get("policy"))
    precision.load_state_dict(models.critic_master, state.get("critic"))
