"""bf16 compute over float32 master weights: what `dtype=bfloat16` means for a trained model.

Why not AdamW on bf16 parameters: bf16 keeps 8 significant bits, so a weight near 1e-2
(in [2^-7, 2^-6)) sits on a grid of spacing 2^-14 = 6.1e-5, and any update smaller than half
that (3.05e-5) rounds back to the same weight. Adam moves each weight by about lr per step,
so at lr 1e-6 pure-bf16 training does not move such a weight at all (tests/train/
test_train_models.py shows it: 100 steps, no change), while float32 masters accumulate the
steps and the bf16 weight moves by one grid step after 31 of them (31e-6 > 3.05e-5).

How: the model keeps bf16 parameters and computes in bf16 exactly as the rollout engine and a
bf16 `transformers` model do (so `logprob_error` and `pillion logprob-check` stay tight).
Its float32 masters are separate tensors, the only ones the optimizer sees. Each bf16
parameter has a post-accumulate-grad hook that adds its bf16 gradient into the master's
float32 gradient and frees the bf16 one at once (micro-batch gradients accumulate in float32,
and no bf16 gradient buffer outlives its backward). After each optimizer step, a step hook
copies the masters into the bf16 parameters (one rounding per step). Memory per parameter:
2 (bf16) + 4 (master) + 4 (master gradient) + 8 (AdamW moments) = 18 bytes, against 16 for
float32 training; the saving is in activations, which are bf16.

Why not autocast: autocast keeps float32 parameters and casts each weight to bf16 in every
forward, and keeps the residual stream and norms in float32, so the trainer's numerics are
neither the engine's bf16 decode nor a bf16 `transformers` forward (a larger, systematic
log-prob mismatch), the engine still needs a bf16 copy of the weights for rollout, and the
float32 activations cost memory. `python benchmarks/update_memory.py --precision` measures
both on the same update.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn


@dataclass
class MasterWeights:
    model_params: list[nn.Parameter]  # the module's parameters, in the compute dtype
    params: list[nn.Parameter]  # their float32 masters: what the optimizer steps


def _grad_to_master(master: nn.Parameter, param: nn.Parameter) -> None:
    g = param.grad.float()
    master.grad = g if master.grad is None else master.grad.add_(g)
    param.grad = None  # never stepped; freed now rather than at zero_grad


def master_weights(model: nn.Module, dtype: torch.dtype) -> MasterWeights:
    """Cast `model`'s trainable float32 parameters to `dtype` in place; return float32 masters.

    The masters take over the float32 storage, so this costs only the new bf16 tensors. Tied
    parameters are one parameter and get one master. Buffers (RoPE frequencies) are kept.
    """
    model_params, params = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if p.dtype != torch.float32:
            raise ValueError(f"master weights are made from float32 parameters, got {p.dtype}")
        master = nn.Parameter(p.detach())  # shares the float32 storage
        p.data = p.data.to(dtype)
        p.register_post_accumulate_grad_hook(partial(_grad_to_master, master))
        model_params.append(p)
        params.append(master)
    return MasterWeights(model_params, params)


@torch.no_grad()
def copy_to_model(master: MasterWeights) -> None:
    """Round the masters into the model's compute-dtype parameters."""
    for p, m in zip(master.model_params, master.params):
        p.copy_(m)


def sync_after_step(optimizer: torch.optim.Optimizer, master: MasterWeights | None):
    """After every `optimizer.step()` on the masters, refresh the model (a step that was
    skipped, e.g. for a non-finite gradient, leaves both unchanged)."""
    if master is None:
        return None
    return optimizer.register_step_post_hook(lambda *_: copy_to_model(master))


def state_dict(master: MasterWeights | None) -> list[torch.Tensor] | None:
    """The masters for a checkpoint (the saved model folder holds only their bf16 rounding)."""
    return None if master is None else [m.detach().cpu() for m in master.params]


@torch.no_grad()
def load_state_dict(master: MasterWeights | None, state: list[torch.Tensor] | None) -> None:
    """Restore saved masters; without them (an older checkpoint), start from the model's weights."""
    if master is None:
        return
    if state is None:
        for m, p in zip(master.params, master.model_params):
            m.copy_(p)
        return
    if len(state) != len(master.params):
        raise ValueError(f"checkpoint holds {len(state)} master tensors, the model has {len(master.params)}")
    for m, saved in zip(master.params, state):
        m.copy_(saved)
    copy_to_model(master)
