"""Low-rank adapters (LoRA) on pillion's projections, laid out as PEFT lays them out.

A targeted projection y = W x + b becomes y = W x + b + (alpha / r) * B (A x), with W and b
frozen and only A [r, in] and B [out, r] trained (Hu et al. 2021). pillion fuses q|k|v and
gate|up into one matmul each; a fused projection here carries one adapter pair per Hugging
Face projection (q_proj, k_proj, v_proj; gate_proj, up_proj), each adding to its own slice of
the fused output. The adapters are therefore exactly PEFT's adapters on the unfused
`transformers` model, key for key (`peft_key`), and adapters.py saves and loads them in
PEFT's layout (adapter_config.json + adapter_model.safetensors).

Where this departs from PEFT's defaults: no dropout on the adapter input (dropout would make
the trainer's log-probs differ from the engine's and the on-policy ratio differ from 1).
Initialisation is PEFT's: A Kaiming-uniform (a = sqrt(5)), B zero, so training starts from
the base model exactly.

Precision: adapters are float32 parameters whatever the base dtype; in a bf16 model they are
cast to bf16 inside the forward, so the matmuls run in bf16 while gradients reach the float32
adapters through the cast (the adapters are their own master weights; see
pillion/train/precision.py for the full-model case).

The reference model of a LoRA run is the base with adapters off (`adapters_disabled`), so no
second copy is loaded. The rollout engine's decode path reads each projection's weight
through `Transformer.decode_weights`, which asks `merged_weight()`: W + (alpha / r) B A,
formed once per rollout in float32 and rounded once to the base dtype.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pillion.fields import bounded, checked, reject

# pillion linear (under a block) -> the Hugging Face projections it holds, in output-row order.
PARTS = {
    "self_attn.qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "self_attn.o_proj": ("o_proj",),
    "mlp.gate_up_proj": ("gate_proj", "up_proj"),
    "mlp.down_proj": ("down_proj",),
}
TARGETS = tuple(name for names in PARTS.values() for name in names)


def _targets(targets: list[str], lora: LoraConfig) -> None:
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise reject(unknown or targets, "not among the projections", ", ".join(TARGETS))


@dataclass
class LoraConfig:
    """`lora.*` of the trainer config: adapters on the projections; rank 0 trains every weight."""

    rank: int = bounded(0, low=0, note="0: no adapters")
    alpha: float = bounded(32.0, low=0, open="low")  # adapter output scaled by alpha / rank, as PEFT
    # Hugging Face projection names; pillion's fused q|k|v and gate|up take one adapter per name.
    targets: list[str] = checked(list(TARGETS), _targets)


def part_rows(cfg, path: str) -> list[int]:
    """Output rows of each Hugging Face projection inside pillion linear `path`."""
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return {
        "self_attn.qkv_proj": [q, kv, kv],
        "self_attn.o_proj": [cfg.hidden_size],
        "mlp.gate_up_proj": [cfg.intermediate_size, cfg.intermediate_size],
        "mlp.down_proj": [cfg.hidden_size],
    }[path]


class LoRALinear(nn.Module):
    """A frozen linear (the same `weight` / `bias` parameters, so state-dict names do not
    change) plus adapters `lora_A[name]` [r, in] and `lora_B[name]` [rows, r] on the output
    slices of the targeted projections."""

    def __init__(self, base: nn.Linear, parts: dict[str, int], targets: list[str], rank: int, alpha: float):
        super().__init__()
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.scale, self.enabled = rank, alpha / rank, True
        self.parts = dict(parts)  # every projection's output rows, in order (adapted or not)
        self.slices: dict[str, tuple[int, int]] = {}  # output rows of the adapted ones
        start = 0
        for name, rows in parts.items():
            if name in targets:
                self.slices[name] = (start, start + rows)
            start += rows
        in_features = self.weight.shape[1]
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for name, (lo, hi) in self.slices.items():
            a = torch.empty(rank, in_features, dtype=torch.float32)  # made on CPU: the same draw on any device
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.lora_A[name] = nn.Parameter(a.to(self.weight.device))
            self.lora_B[name] = nn.Parameter(torch.zeros(hi - lo, rank, device=self.weight.device))

    def _stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [n r, in], B [out, n r]) for the n adapters: A's stacked, and each scaled B in its
        output rows and its own r columns (zero elsewhere), so that the whole update is
        B @ (A x), two matmuls for all projections; made in the graph, so gradients reach
        every A and B."""
        n, r = len(self.slices), self.rank
        names = list(self.slices)
        blocks = []
        for name, rows in self.parts.items():
            if name in self.slices:
                j = names.index(name)
                blocks.append(F.pad(self.lora_B[name] * self.scale, (j * r, (n - j - 1) * r)))  # [rows, n r]
            else:
                blocks.append(self.lora_B[names[0]].new_zeros(rows, n * r))
        return torch.cat([self.lora_A[name] for name in names]), torch.cat(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)  # [..., out]
        if not self.enabled:
            return out
        # Out of place (an in-place add on output slices costs a copy per slice in backward,
        # ~2x slower measured); the casts are in the graph, so float32 adapters get float32
        # gradients from a bf16 forward.
        a, b = self._stacked()
        return out + F.linear(F.linear(x, a.to(x.dtype)), b.to(x.dtype))  # + B (A x): [..., out]

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """W + scale * B A for every adapted slice (float32 sum, one rounding to W's dtype)."""
        if not self.enabled:
            return self.weight
        a, b = self._stacked()
        return torch.addmm(self.weight.float(), b.float(), a.float()).to(self.weight.dtype)  # [out, in]


def _blocks(model):
    return model.model.layers


def _get(block, path: str) -> nn.Module:
    parent, name = path.split(".")
    return getattr(getattr(block, parent), name)


def check_targets(targets: list[str]) -> None:
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise ValueError(f"config key 'lora.targets': {unknown or targets!r} not among {', '.join(TARGETS)}")


def apply_lora(model, rank: int, alpha: float, targets: list[str]) -> list[nn.Parameter]:
    """Freeze `model` and put adapters on the targeted projections; return the adapters."""
    if rank < 1:
        raise ValueError(f"config key 'lora.rank': {rank} (a LoRA rank is >= 1; 0 trains every weight)")
    check_targets(targets)
    model.requires_grad_(False)
    for block in _blocks(model):
        for path, names in PARTS.items():
            chosen = [n for n in names if n in targets]
            if not chosen:
                continue
            parent, name = path.split(".")
            parts = dict(zip(names, part_rows(model.cfg, path)))
            setattr(getattr(block, parent), name, LoRALinear(_get(block, path), parts, chosen, rank, alpha))
    return adapter_params(model)


def lora_linears(model) -> list[tuple[str, LoRALinear]]:
    """(pillion name, module) of every adapted linear, e.g. ("model.layers.0.self_attn.qkv_proj", m)."""
    out = []
    for i, block in enumerate(_blocks(model)):
        for path in PARTS:
            module = _get(block, path)
            if isinstance(module, LoRALinear):
                out.append((f"model.layers.{i}.{path}", module))
    return out


def adapter_params(model) -> list[nn.Parameter]:
    return [p for _, m in lora_linears(model) for p in (*m.lora_A.values(), *m.lora_B.values())]


def has_adapters(model) -> bool:
    return bool(lora_linears(model))


def settings(model) -> tuple[int, float, list[str]]:
    """(rank, alpha, targets in PARTS order) of an adapted model."""
    modules = [m for _, m in lora_linears(model)]
    names = {n for m in modules for n in m.slices}
    return modules[0].rank, modules[0].scale * modules[0].rank, [t for t in TARGETS if t in names]


def peft_key(name: str, part: str, matrix: str) -> str:
    """pillion linear + HF projection -> PEFT's saved key.

    ("model.layers.0.self_attn.qkv_proj", "k_proj", "A")
        -> "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"
    """
    prefix = name.rsplit(".", 1)[0]
    return f"base_model.model.{prefix}.{part}.lora_{matrix}.weight"


def peft_state(model) -> dict[str, torch.Tensor]:
    """The adapters under PEFT's key names (what adapter_model.safetensors holds)."""
    out = {}
    for name, m in lora_linears(model):
        for part in m.slices:
            out[peft_key(name, part, "A")] = m.lora_A[part]
            out[peft_key(name, part, "B")] = m.lora_B[part]
    return out


@contextmanager
def adapters_disabled(model):
    """The base model inside the block (the reference of a LoRA run); adapters back on after."""
    modules = [m for _, m in lora_linears(model)]
    before = [m.enabled for m in modules]
    for m in modules:
        m.enabled = False
    try:
        yield model
    finally:
        for m, was in zip(modules, before):
            m.enabled = was


@torch.no_grad()
def merge(model):
    """Fold every adapter into its base weight and drop the adapters (for export); in place."""
    for block in _blocks(model):
        for path in PARTS:
            module = _get(block, path)
            if isinstance(module, LoRALinear):
                linear = nn.Linear(module.weight.shape[1], module.weight.shape[0], bias=module.bias is not None,
                                   device="meta")
                linear.weight = nn.Parameter(module.merged_weight(), requires_grad=False)
                if module.bias is not None:
                    linear.bias = module.bias
                parent, name = path.split(".")
                setattr(getattr(block, parent), name, linear)
    return model
