"""A run's checkpoints at any number of ranks: torch.distributed.checkpoint (DCP) for N > 1.

    save(run_dir, step, models, optimizer, critic_opt, source, world, extra, recipe)   # every rank calls it
    saved = resume(checkpoint, models, optimizer, critic_opt, world)                    # every rank calls it

One process writes the format of `state.py` (a Hugging Face folder plus trainer_state.pt with
the optimizer state). N ranks write, into the same `step-N.tmp` folder:

    dcp/                      policy, optimizer (and critic, critic optimizer): each rank its
                              shards, keyed by parameter name (FQN), fsynced by DCP's writer
    config.json, model.safetensors, ...   the policy, consolidated by rank 0 from a full state
                              dict (so `transformers` and `pillion eval` load it)
    trainer_state.pt          rank 0: step, RNG, data state, report (no tensors of the models)

and rank 0 renames the folder after every rank has finished its shards (a barrier), so a rank
killed at any point leaves a `.tmp` folder that `latest` never returns (state.py). DCP saves
tensors by name and reshards them at load, so a checkpoint saved at N ranks resumes at M: at
M > 1 through FSDP2's state-dict API, at M = 1 by loading the named tensors straight into the
model's parameters (or its float32 masters with dtype=bfloat16) and the optimizer's state
(DCP reads without a process group in one process). A one-process checkpoint resumes at N > 1
too: every rank reads the whole state (the weights, or the float32 masters a bf16 run saved, and
the optimizer state, keyed by position, renamed by parameter name) and keeps its shards of it
(FSDP2's full-state-dict API); this costs one whole copy per rank while loading.

A replicated critic (`critic.replicate`: the same plain tensors on every rank) is saved by name
as FSDP2's API names a sharded one's (its float32 masters with dtype=bfloat16, its optimizer
state keyed by parameter name, with the groups), once (DCP writes a tensor that every rank holds
from one rank), and loaded by name in place as one process loads: so a replicated checkpoint
resumes at one process or sharded, and a sharded or one-process one resumes replicated.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pillion import ranks
from pillion.files import save_torch, writing
from pillion.model import lora
from pillion.model.checkpoint import load_model, save_model, write_recipe
from pillion.model.hf_config import CheckpointError
from pillion.model.transformer import Transformer
from pillion.train import precision, state
from pillion.train.models import Models, load_master_state, master_state

WRAPPER_PREFIX = "_checkpoint_wrapped_module."  # activation checkpointing's wrapper, not in names


def save(run_dir: Path, step: int, models: Models, optimizer, critic_opt, source: Path, world: ranks.World,
         extra: dict[str, Any], recipe: dict[str, Any] | None = None) -> Path | None:
    """Checkpoint `step` (every rank calls this); returns its folder on rank 0."""
    if world.size == 1:
        return state.save(run_dir, step, models.policy, source, {
            **extra, "optimizer": optimizer.state_dict(),
            "critic": models.critic.state_dict() if models.critic else None,
            "critic_optimizer": critic_opt.state_dict() if critic_opt else None,
            "master": master_state(models),
        }, recipe=recipe)
    import torch.distributed.checkpoint as dcp

    final = state.checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if world.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    ranks.barrier(world)
    for member in torch_optimizers(optimizer) + (torch_optimizers(critic_opt) if critic_opt else []):
        if not member.state:  # not stepped yet (VAPO's policy while the critic pretrains): its state at
            _create_optimizer_state(member)  # step 0 here, else FSDP2's API would step it once at lr 0
    # A full disk: DCP's writer fails on every rank (its results are gathered), rank 0 removes tmp.
    with writing(final, cleanup=tmp if world.main else None, hint=state.intact(run_dir)):
        dcp.save(_distributed_state(models, optimizer, critic_opt), checkpoint_id=tmp / "dcp")
        full = full_model(models.policy, world)  # collective; the model on rank 0, None elsewhere
        if world.main:
            save_model(full, tmp, source=source)
            if recipe:
                write_recipe(tmp, recipe)
            save_torch({**extra, "step": step, "world_size": world.size, "rng": state.rng_state()},
                       tmp / "trainer_state.pt")
            state.fsync_path(tmp / "dcp")
            state.commit(run_dir, tmp, final)
    ranks.barrier(world)  # no rank runs ahead of a checkpoint that is not in place yet
    return final if world.main else None


def resume(checkpoint: Path, models: Models, optimizer, critic_opt, world: ranks.World) -> dict[str, Any]:
    """Load a checkpoint into the models and optimizers (every rank); returns its trainer state
    (step, data state, report) with the RNG restored."""
    saved = state.load_trainer_state(checkpoint)
    if (checkpoint / "dcp").is_dir():
        _load_distributed(checkpoint / "dcp", models, optimizer, critic_opt, world)
        return saved
    if world.size > 1:
        if lora.has_adapters(models.policy):  # its PEFT folder holds adapters only, not the shards' layout
            raise CheckpointError(f"{checkpoint} is a one-process LoRA checkpoint: resume it in one process "
                                  "(without torchrun); its next checkpoint then resumes at any number of ranks")
        _load_one_process(checkpoint, saved, models, optimizer, critic_opt)
        return saved
    weight = models.policy.model.embed_tokens.weight  # in the compute dtype (also under LoRA)
    models.policy.load_state_dict(load_model(checkpoint, dtype=weight.dtype, device=weight.device).state_dict())
    optimizer.load_state_dict(saved["optimizer"])
    if models.critic is not None:
        models.critic.load_state_dict(saved["critic"])
        _load_critic_optimizer(checkpoint, critic_opt, saved["critic_optimizer"])
    load_master_state(models, saved.get("master"))
    return saved


def _load_critic_optimizer(checkpoint: Path, critic_opt, saved: dict[str, Any]) -> None:
    """A whole critic's optimizer state (one process, or replicated), with one line when it holds
    another set of tensors than this run's critic trains."""
    try:
        critic_opt.load_state_dict(saved)
    except ValueError as e:  # a parameter group of another size
        raise CheckpointError(f"{checkpoint}: its critic optimizer does not match this run's ({e}); the critic of "
                              "a model with an untied LM head no longer keeps that head in its optimizer (it plays "
                              "no part in the values), so a checkpoint saved before holds one tensor more and "
                              "cannot be resumed") from None


def check_lora(checkpoint: Path, lora_run: bool) -> None:
    """A LoRA run's checkpoint (a PEFT adapter folder) resumed without LoRA, or the reverse: one
    line naming the checkpoint and the key."""
    saved = (checkpoint / "adapter_config.json").is_file()
    if saved != lora_run:
        held, asked = ("LoRA adapters", "lora.rank=0 (every weight trained)") if saved else (
            "full weights", "LoRA (lora.rank > 0)")
        raise CheckpointError(f"{checkpoint} holds {held} but this run asks for {asked}; resume with the run's own "
                              "config key 'lora.rank'")


def _load_one_process(checkpoint: Path, saved: dict[str, Any], models: Models, optimizer, critic_opt) -> None:
    """A one-process checkpoint (state.py's format) into sharded models and optimizers."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    masters = saved.get("master") or {}
    pairs = [(models.policy, optimizer, load_model(checkpoint, dtype=torch.float32, device="cpu").state_dict(),
              saved["optimizer"], masters.get("policy"))]
    if models.critic is not None and not is_sharded(models.critic):  # replicated: as one process loads it
        models.critic.load_state_dict(saved["critic"])
        _load_critic_optimizer(checkpoint, critic_opt, saved["critic_optimizer"])
        precision.load_state_dict(models.critic_master, masters.get("critic"))
    elif models.critic is not None:
        pairs.append((models.critic, critic_opt, saved["critic"], saved["critic_optimizer"], masters.get("critic")))
    whole = StateDictOptions(full_state_dict=True)
    for model, opt, weights, opt_state, master in pairs:
        named = {id(p): name.replace(WRAPPER_PREFIX, "") for name, p in model.named_parameters()}
        if master is not None:  # dtype=bfloat16: the float32 masters, one per trainable parameter, in order
            trainable = [named[id(p)] for p in model.parameters() if p.requires_grad]
            weights = {**weights, **dict(zip(trainable, master))}
        groups = opt_state.get("param_groups") if isinstance(opt_state, dict) else None
        if not groups or len(groups) != len(opt.param_groups) or any(
                len(g["params"]) != len(h["params"]) for g, h in zip(groups, opt.param_groups)):
            raise CheckpointError(f"{checkpoint}: its optimizer state does not match this run's optimizer; resume "
                                  "it in one process (without torchrun)")
        # position in the saved groups -> the parameter's name (every rank builds the same optimizer)
        by_position = {i: named[id(p)] for g, h in zip(groups, opt.param_groups) for i, p in zip(g["params"],
                                                                                              h["params"])}
        renamed = {"state": {by_position[i]: value for i, value in opt_state["state"].items()},
                   "param_groups": [{**g, "params": [by_position[i] for i in g["params"]]} for g in groups]}
        set_model_state_dict(model, {k: v.float() for k, v in weights.items()}, options=whole)
        for member in torch_optimizers(opt):  # at step 0: FSDP2's API would step an empty state once at lr 0
            _create_optimizer_state(member)
        set_optimizer_state_dict(model, opt, renamed, options=whole)


def full_model(policy: nn.Module, world: ranks.World) -> Transformer | None:
    """The whole policy as a plain CPU Transformer on rank 0 (None on the others), gathered from
    its shards (a collective: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not world.main:
        return None
    with torch.device("meta"):
        model = Transformer(policy.cfg)
    if lora.has_adapters(policy):  # LoRA: the same adapters, saved as a PEFT folder by save_model
        lora.apply_lora(model, *lora.settings(policy))
    model.load_state_dict({k.replace(WRAPPER_PREFIX, ""): v for k, v in full.items()}, strict=False, assign=True)
    if policy.cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    missing = [k for k, v in model.state_dict().items() if v.is_meta]
    if missing:
        raise CheckpointError(f"the gathered policy lacks {len(missing)} tensors (first: {missing[0]})")
    model.reset_rope("cpu")
    return model


def _distributed_state(models: Models, optimizer, critic_opt) -> dict[str, Any]:
    """Name-keyed state of the models and optimizers to save: FSDP2's sharded state (its
    state-dict API), or a replicated critic's whole tensors under the same names."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    out = {"policy": get_model_state_dict(models.policy),
           "optimizer": get_optimizer_state_dict(models.policy, members(optimizer))}
    if models.critic is not None and is_sharded(models.critic):
        out["critic"] = get_model_state_dict(models.critic)
        out["critic_optimizer"] = get_optimizer_state_dict(models.critic, members(critic_opt))
    elif models.critic is not None:
        out["critic"] = _whole_state(models.critic, models.critic_master)
        out["critic_optimizer"] = _named_optimizer_state(_trainable_by_name(models.critic, models.critic_master),
                                                         critic_opt)
    return out


def _whole_state(model: nn.Module, master) -> dict[str, torch.Tensor]:
    """A whole model's tensors under every name FSDP2's state dict gives (a tied matrix under both
    of its names), each parameter's float32 master in its place (dtype=bfloat16)."""
    masters = {id(p): m for p, m in zip(master.model_params, master.params)} if master is not None else {}
    return {name.replace(WRAPPER_PREFIX, ""): masters.get(id(t), t) for name, t in
            model.state_dict(keep_vars=True).items()}


def _named_optimizer_state(tensors: dict[str, torch.Tensor], opt) -> dict[str, Any]:
    """An optimizer's state as FSDP2's state-dict API gives it (state and param_groups, each
    parameter named), for an optimizer over `tensors` (name -> what it steps)."""
    names = {id(t): name for name, t in tensors.items()}
    out: dict[str, Any] = {"state": {}, "param_groups": []}
    for member in torch_optimizers(opt):
        saved = member.state_dict()  # keyed by position over the groups' parameters
        order = [names[id(p)] for group in member.param_groups for p in group["params"]]
        out["state"].update({order[i]: value for i, value in saved["state"].items()})
        out["param_groups"] += [{**g, "params": [order[i] for i in g["params"]]} for g in saved["param_groups"]]
    return out


def members(optimizer):
    """The torch optimizers behind one (optim.Chained: Muon or Dion beside AdamW), as FSDP2's
    state-dict API takes them."""
    return getattr(optimizer, "optimizers", optimizer)


def torch_optimizers(optimizer) -> list[torch.optim.Optimizer]:
    """`members` as a list, also for a single optimizer."""
    return [optimizer] if isinstance(optimizer, torch.optim.Optimizer) else list(members(optimizer))


def is_sharded(model: nn.Module) -> bool:
    """FSDP2's (several ranks), against a whole model (one process, a replicated critic)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _load_distributed(folder: Path, models: Models, optimizer, critic_opt, world: ranks.World) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    pairs = [("policy", "optimizer", models.policy, optimizer, models.policy_master)]
    if models.critic is not None:
        pairs.append(("critic", "critic_optimizer", models.critic, critic_opt, models.critic_master))
    try:
        # FSDP2's models through its state-dict API (loaded, then set). A whole model (one process,
        # a replicated critic): the named tensors in place into its parameters (or float32 masters)
        # and its optimizer's state, which a zero step creates first. DCP reshards either way.
        target: dict[str, Any] = {}
        for model_key, opt_key, model, opt, master in pairs:
            if is_sharded(model):
                target[model_key] = get_model_state_dict(model)
                target[opt_key] = get_optimizer_state_dict(model, members(opt))
                continue
            target[model_key] = _trainable_by_name(model, master)
            names = {id(t): name for name, t in target[model_key].items()}
            target[opt_key] = {"state": {}}
            for member in torch_optimizers(opt):
                _create_optimizer_state(member)
                target[opt_key]["state"].update({names[id(p)]: member.state[p] for group in member.param_groups
                                                 for p in group["params"]})
        with warnings.catch_warnings():
            if world.size == 1:  # "assuming the intent is to load in a single process": it is
                warnings.simplefilter("ignore")
            dcp.load(target, checkpoint_id=folder, no_dist=world.size == 1)
        for model_key, opt_key, model, opt, _ in pairs:
            if is_sharded(model):
                set_model_state_dict(model, target[model_key])
                set_optimizer_state_dict(model, members(opt), target[opt_key])
    except (RuntimeError, ValueError, KeyError, CheckpointException) as e:  # a foreign or damaged folder: name it
        if isinstance(e, CheckpointException) and e.failures:  # several ranks: the first rank's error
            e = next(iter(e.failures.values()))[0]  # (exception, traceback)
        raise CheckpointError(f"{folder}: cannot load the sharded checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    for *_, master in pairs:
        if master is not None:
            precision.copy_to_model(master)


def _trainable_by_name(model: nn.Module, master) -> dict[str, torch.Tensor]:
    """name -> the tensor the optimizer steps: the parameter, or its float32 master (bf16)."""
    named = {id(p): name.replace(WRAPPER_PREFIX, "") for name, p in model.named_parameters()}
    if master is not None:
        return {named[id(p)]: m for p, m in zip(master.model_params, master.params)}
    return {name.replace(WRAPPER_PREFIX, ""): p for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def _create_optimizer_state(optimizer) -> None:
    """An optimizer's state tensors (moments, step), created by one step at lr 0 on zero
    gradients, so that DCP has tensors to load into; the parameters do not move. The step
    counters go back to 0: zero moments at step 0 are what AdamW starts from, so an optimizer
    that has not stepped yet stays one that has not (its first step counts 1)."""
    if all(p in optimizer.state for group in optimizer.param_groups for p in group["params"]):
        return
    lrs = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    for value in optimizer.state.values():
        if torch.is_tensor(value.get("step")):
            value["step"].zero_()
