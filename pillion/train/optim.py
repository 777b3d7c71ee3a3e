"""Optimizers behind one factory: AdamW, Muon (torch.optim.Muon's; Newton-Schulz in float32 off CUDA) and Dion.

    optimizer = make_optimizer(policy, cfg.optim, cfg.lr, cfg.weight_decay)   # optim=adamw|muon|dion
    optimizer.param_groups, optimizer.step(), optimizer.zero_grad(), optimizer.state_dict()

`adamw` is exactly the optimizer the loops always used (betas 0.9/0.999, eps 1e-8, decoupled
weight decay), over any iterable of parameters or a model.

`muon` and `dion` orthonormalise the update of the hidden matrices only; every other parameter
goes to AdamW with the same lr and weight decay. The rule (`split_params`): a hidden matrix is
the 2-D weight of an `nn.Linear` inside an `nn.ModuleList` (the repeated blocks: attention and
MLP projections), unless it is also an `nn.Embedding`'s weight (tied embeddings). So these go to
AdamW: the token embedding (a lookup table whose rows are updated independently; an orthonormal
update of the whole table mixes unrelated tokens), the LM head and the critic's value head
(outside the blocks; output layers need per-coordinate scaling, Jordan et al. 2024 and the Dion
paper §5 keep them on AdamW), norm gains and biases (vectors; torch.optim.Muon refuses any
parameter that is not 2-D). Frozen parameters (requires_grad False) are left out. The fused
qkv_proj and gate_up_proj are orthonormalised as one matrix each.

One learning rate for all groups: the loop writes `group["lr"] = cfg.lr * factor` into every
param group, so the orthonormal updates are scaled to the RMS AdamW updates have (Liu et al.
2502.16982, "Muon is Scalable", §2.2: 0.2 * sqrt(max(m, n)) for an m x n matrix, so AdamW's lr
and weight decay carry over) when lr_scale = "match_rms_adamw" (the default). lr_scale =
"paper" uses each paper's own scale (Muon: sqrt(max(1, m / n)); Dion: sqrt(m / n)), which
wants a much larger lr (~0.01) than AdamW fine-tuning does.

Dion (Ahn et al. 2504.05295, Algorithm 1), per m x n matrix X with momentum M (m x n) and a
right factor Q (n x r), r = ceil(rank_fraction * min(m, n)), all state in float32 (float64 for
float64 parameters):

    B = M + G                          # momentum with the new gradient
    P = orthonormalise(B Q)            # one power-iteration step, warm-started from Q  [m, r]
    R = B^T P                          # [n, r]; P R^T is B's rank-r approximation
    M = B - (1 - mu) P R^T             # error feedback: what the update did not use stays
    Q = column_normalise(R)            # next warm start and the update's right factor
    X = X (1 - lr wd) - lr s P Q^T     # s: lr_scale (match_rms_adamw: 0.2 sqrt(m n / r))

At full rank (r = min(m, n)) nothing is left behind (P R^T = B, so M = mu B), and when Q
already spans B's right singular vectors the update P Q^T is B's polar factor U V^T, the exact
orthonormalised momentum that Muon approximates with Newton-Schulz; repeated steps converge
to it as power iteration does. RMS of P Q^T is sqrt(r / (m n)), hence match_rms_adamw's
0.2 sqrt(m n / r), equal to Muon's 0.2 sqrt(max(m, n)) at full rank. Orthonormalisation is a
float32 QR (the paper uses randomized Cholesky QR for speed at scale; same result).

Departures from the paper: (1) ColumnNormalize treats a column of R whose norm is below the
matrix-rank tolerance (max column norm * max(m, n) * machine eps, numpy's `matrix_rank` rule) as
zero: it contributes no update (B has no such direction; normalising rounding noise would add a
random one) and keeps its previous warm-start vector, where the paper's R / (||R|| + 1e-8) would
make it zero for good and stall the power iteration (a zero gradient, e.g. a GRPO batch where
every group is all right or all wrong, would do that to every column); (2) with several ranks
(FSDP2 shards each matrix by rows) the momentum plus gradient B is gathered whole once per
step and the step runs on it on every rank, which keeps only its rows of M and of the update:
one all-gather of each hidden matrix per step and one
whole matrix held at a time, not the paper's distributed form (all-reduces of the [m, r] and
[n, r] factors only), which moves less. Muon with several ranks does the same for its
Newton-Schulz step.

Muon departs from torch.optim.Muon in one place: off CUDA, Newton-Schulz runs in float32, not
bfloat16 (`newton_schulz` says why: the logged metrics then do not depend on the number of
ranks), and on CPUs without bf16 matmul units float32 is also the faster one: 1.3 s against 58 s
for one 896 x 4864 matrix (1 thread, measured). On CUDA it stays in bfloat16, as torch's: the
iteration costs 5 x (4 k^2 l + 2 k^3) flops for a k x l matrix (k <= l), run on every rank, 520
TFLOP per step for Qwen2.5-7B's hidden matrices, about 0.5 s in bf16 on an H100 against 8 s at
its float32 peak (computed, not measured), and a bf16 run's metrics differ across N at bf16's
rounding anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from pillion.fields import bounded, checked, free, reject

ADAMW_BETAS = (0.9, 0.999)
ADAMW_EPS = 1e-8
OPTIMIZERS = ("adamw", "muon", "dion")
LR_SCALES = ("match_rms_adamw", "paper")


def _only_with(default: Any, *names: str):
    """The check of a key that only optim=<names> read: any value but its default is refused
    with another optimizer, where it would do nothing."""
    def check(value: Any, optim: OptimConfig) -> None:
        if value != default and optim.name not in names:
            readers = f"{' and '.join(names)} read{'s' if len(names) == 1 else ''} it"
            raise reject(value, f"does nothing with optim={optim.name} (only {readers})",
                         f"optim={' or optim='.join(names)}, or leave the key out")
    return check


@dataclass
class OptimConfig:
    """`optim.*` in the trainer and SFT configs; `optim=muon` sets the name."""

    name: Literal["adamw", "muon", "dion"] = free("adamw")
    # muon / dion momentum (Dion's mu)
    momentum: float = bounded(0.95, low=0, high=1, open="high", check=_only_with(0.95, "muon", "dion"))
    # dion: r = ceil(rank_fraction * min(m, n)); the paper also runs 1/4, 1/16
    rank_fraction: float = bounded(1.0, low=0, high=1, open="low", check=_only_with(1.0, "dion"))
    # muon / dion update scale
    lr_scale: Literal["match_rms_adamw", "paper"] = checked("match_rms_adamw",
                                                            _only_with("match_rms_adamw", "muon", "dion"))


def split_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(hidden matrices, everything else) of the trainable parameters; rule in the module docstring."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    matrices: set[int] = set()
    for blocks in model.modules():
        if isinstance(blocks, nn.ModuleList):
            for module in blocks.modules():
                if isinstance(module, nn.Linear) and module.weight.ndim == 2 and id(module.weight) not in embeddings:
                    matrices.add(id(module.weight))
    trainable = [p for p in model.parameters() if p.requires_grad]  # parameters() lists a tied tensor once
    return [p for p in trainable if id(p) in matrices], [p for p in trainable if id(p) not in matrices]


def dion_scale(m: int, n: int, r: int, lr_scale: str) -> float:
    """Multiplier on lr for the update P Q^T of an m x n matrix at rank r."""
    if lr_scale == "match_rms_adamw":
        return 0.2 * math.sqrt(m * n / r)  # RMS(P Q^T) = sqrt(r / (m n)) -> RMS 0.2
    if lr_scale == "paper":
        return math.sqrt(m / n)
    raise ValueError(f"config key 'optim.lr_scale': unknown {lr_scale!r} ({', '.join(LR_SCALES)})")


@torch.no_grad()
def dion_update(param: torch.Tensor, grad: torch.Tensor, momentum: torch.Tensor, q: torch.Tensor, lr: float,
                mu: float, weight_decay: float, scale: float) -> None:
    """One Dion step on `param` [m, n] in place (Algorithm 1 above); momentum [m, n] and q [n, r]
    are updated in place too. scale multiplies lr for the orthonormal update.

    FSDP2's sharded matrices (DTensor rows): B = M + G is gathered whole (one all-gather of the
    matrix per step), the power-iteration step runs on it on every rank alike (q is the same
    full [n, r] on every rank), and each rank keeps its rows of M and of the update."""
    if isinstance(param, DTensor):
        whole = (momentum + grad.to(momentum.dtype)).full_tensor()  # B [m, n], gathered
        delta = torch.zeros_like(whole)  # [m, n]: the update P Q^T, applied below
        dion_update(delta, torch.zeros_like(whole), whole, q, 1.0, mu, 0.0, -1.0)  # delta = P Q^T; whole = new M
        momentum.copy_(rows_of(whole, momentum))
        if weight_decay:
            param.mul_(1.0 - lr * weight_decay)
        param.add_(rows_of(delta, param).to(param.dtype), alpha=-lr * scale)
        return
    b = momentum.add_(grad.to(momentum.dtype))  # B = M + G, [m, n]
    p, _ = torch.linalg.qr(b @ q)  # [m, r] orthonormal columns
    r = b.t() @ p  # [n, r]
    momentum.addmm_(p, r.t(), alpha=-(1.0 - mu))  # M = B - (1 - mu) P R^T
    norms = r.norm(dim=0, keepdim=True)  # [1, r]
    # Columns below numpy's matrix_rank tolerance (max norm * max(m, n) * machine eps) are
    # directions B does not have (a rank-deficient gradient): no update along them, and they
    # keep their warm start (departure 1). Scale-free, unlike an absolute eps, so a tiny but
    # well-conditioned gradient still gets the full orthonormal update.
    live = norms > norms.max() * max(b.shape) * torch.finfo(b.dtype).eps  # [1, r]
    right = torch.where(live, r / norms.clamp_min(torch.finfo(b.dtype).tiny), torch.zeros_like(r))  # [n, r]
    q.copy_(torch.where(live, right, q))
    if weight_decay:
        param.mul_(1.0 - lr * weight_decay)
    param.add_((p @ right.t()).to(param.dtype), alpha=-lr * scale)  # X -= lr s P Q^T


def rows_of(whole: torch.Tensor, like: DTensor) -> DTensor:
    """`whole` (the same full tensor on every rank) as a DTensor sharded as `like`: each rank's
    own rows, cut locally (no communication)."""
    return distribute_tensor(whole, like.device_mesh, like.placements, src_data_rank=None)


def newton_schulz(update: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                  eps: float) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration (Jordan et al. 2024; torch.optim.Muon's
    coefficients and steps) on an [m, n] matrix, in float32 (float64 for float64 input;
    bfloat16 on CUDA, as torch's, where tensor cores make it ~16x cheaper): each
    step maps every singular value s of the Frobenius-normalised matrix to a s + b s^3 + c s^5
    and keeps the singular vectors, so the result approximates the polar factor U V^T.

    float32, not torch.optim.Muon's bfloat16: bf16 rounds each entry to 1 part in 256, so
    gradients that differ by float32 rounding (2e-7 relative: the same batch summed in another
    order, as with another number of ranks or micro-batches) cross rounding boundaries and give
    updates that differ by 0.5-2% relative in 60-88% of their entries (measured on the tiny-arith
    model, 2 ranks vs 1). In float32 the same input difference gives 1e-5, as float64 does: what
    is left is the iteration's own amplification of its input, not rounding."""
    a, b, c = coefficients
    work = torch.bfloat16 if update.is_cuda else torch.promote_types(update.dtype, torch.float32)
    x = update.to(work)  # [m, n]
    tall = x.shape[0] > x.shape[1]
    x = x.t() if tall else x  # [k, l], k <= l: the Gram matrix below is the smaller one
    x = x / x.norm().clamp_min(eps)  # Frobenius norm >= spectral norm: singular values in [0, 1]
    for _ in range(steps):
        gram = x @ x.t()  # [k, k]
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)  # (a + b G + c G^2) X
    return x.t() if tall else x  # [m, n] in `work`: the caller casts to the parameter's dtype


def muon_scale(m: int, n: int, lr_scale: str) -> float:
    """Multiplier on lr for Muon's update of an m x n matrix (torch.optim.Muon's adjust_lr_fn)."""
    if lr_scale == "match_rms_adamw":
        return 0.2 * math.sqrt(max(m, n))  # Liu et al. 2502.16982 §2.2
    if lr_scale == "paper":
        return math.sqrt(max(1.0, m / n))  # Jordan et al. 2024
    raise ValueError(f"config key 'optim.lr_scale': unknown {lr_scale!r} ({', '.join(LR_SCALES)})")


class Muon(torch.optim.Muon):
    """torch.optim.Muon's algorithm, settings and state (a checkpoint of either loads into the
    other) with Newton-Schulz in float32 off CUDA (`newton_schulz`), over plain matrices (one
    process) or FSDP2's row-sharded ones (several ranks). The momentum is elementwise and stays sharded;
    Newton-Schulz needs the whole matrix, so each update is gathered (one all-gather of the
    matrix per step), orthogonalised on every rank alike, and each rank applies its own rows."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr_scale = "match_rms_adamw" if group["adjust_lr_fn"] == "match_rms_adamw" else "paper"  # torch's names
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]  # [m, n], sharded as p
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                sharded = isinstance(update, DTensor)
                whole = newton_schulz(update.full_tensor() if sharded else update, group["ns_coefficients"],
                                      group["ns_steps"], group["eps"])  # [m, n], gathered with several ranks
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_((rows_of(whole, p) if sharded else whole).to(p.dtype),
                       alpha=-group["lr"] * muon_scale(p.shape[0], p.shape[1], lr_scale))
        return loss


class Dion(torch.optim.Optimizer):
    """Dion for 2-D parameters (see the module docstring); other shapes are refused."""

    def __init__(self, params, lr: float = 1e-4, momentum: float = 0.95, rank_fraction: float = 1.0,
                 weight_decay: float = 0.0, lr_scale: str = "match_rms_adamw"):
        if not 0.0 < rank_fraction <= 1.0:
            raise ValueError(f"config key 'optim.rank_fraction': expected 0 < rank_fraction <= 1, got {rank_fraction}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"config key 'optim.momentum': expected 0 <= momentum < 1, got {momentum}")
        dion_scale(1, 1, 1, lr_scale)  # validates the name
        defaults = dict(lr=lr, momentum=momentum, rank_fraction=rank_fraction, weight_decay=weight_decay,
                        lr_scale=lr_scale)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Dion only takes 2-D parameters, got shape {tuple(p.shape)}")

    @staticmethod
    def rank(shape: torch.Size, rank_fraction: float) -> int:
        return max(1, min(min(shape), math.ceil(rank_fraction * min(shape))))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    dtype = torch.promote_types(p.dtype, torch.float32)
                    m, n = p.shape
                    state["momentum"] = torch.zeros_like(p, dtype=dtype)  # sharded as p with several ranks
                    # A random start: power iteration needs Q not orthogonal to B's top subspace.
                    q = torch.randn((n, self.rank(p.shape, group["rank_fraction"])), dtype=dtype, device=p.device)
                    state["q"] = q / q.norm(dim=0, keepdim=True)
                m, n = p.shape
                r = state["q"].shape[1]
                dion_update(p, p.grad, state["momentum"], state["q"], group["lr"], group["momentum"],
                            group["weight_decay"], dion_scale(m, n, r, group["lr_scale"]))
        return loss


class Chained:
    """Several optimizers stepped as one: param_groups, step, zero_grad, state_dict, load_state_dict.

    param_groups is the concatenation of the members' groups (the same dicts), so a loop that
    writes group["lr"] reaches every member.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for opt in self.optimizers for group in opt.param_groups]

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers],
                "kinds": [type(opt).__name__ for opt in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        kinds = [type(opt).__name__ for opt in self.optimizers]
        if state.get("kinds") != kinds:
            raise ValueError(f"optimizer state is for {state.get('kinds')}, this optimizer is {kinds} "
                             "(was the run started with another optim.name?)")
        for opt, saved in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(saved)


def make_optimizer(params_or_model, cfg: OptimConfig | None = None, lr: float = 1e-4, weight_decay: float = 0.0):
    """The optimizer `cfg.name` names, over a model (muon, dion: needed to find the hidden
    matrices) or an iterable of parameters (adamw only)."""
    cfg = cfg or OptimConfig()
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"config key 'optim.name': unknown optimizer {cfg.name!r} ({', '.join(OPTIMIZERS)})")
    is_model = isinstance(params_or_model, nn.Module)

    def adamw(params):
        # fused: one kernel per parameter with no temporaries. The default per-tensor loop holds two
        # parameter-sized temporaries: +1.07 GB at the step of a Qwen2.5-0.5B model (its 151,936 x 896
        # embedding), and a 6x slower step on CPU (benchmarks/update_memory.py).
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=ADAMW_BETAS, eps=ADAMW_EPS,
                                 fused=True)

    if cfg.name == "adamw":
        return adamw([p for p in params_or_model.parameters() if p.requires_grad] if is_model else params_or_model)
    if not is_model:
        raise ValueError(f"optim={cfg.name} needs the model (nn.Module), not a parameter list, to tell hidden "
                         "matrices from embeddings, heads and norms")
    matrices, rest = split_params(params_or_model)
    if not matrices:
        raise ValueError(f"optim={cfg.name}: the model has no hidden matrices (nn.Linear inside an nn.ModuleList)")
    if cfg.name == "muon":
        if cfg.lr_scale not in LR_SCALES:
            dion_scale(1, 1, 1, cfg.lr_scale)  # raises with the key name
        adjust = "match_rms_adamw" if cfg.lr_scale == "match_rms_adamw" else "original"
        main = Muon(matrices, lr=lr, weight_decay=weight_decay, momentum=cfg.momentum, nesterov=True,
                    adjust_lr_fn=adjust)
    else:
        main = Dion(matrices, lr=lr, momentum=cfg.momentum, rank_fraction=cfg.rank_fraction,
                    weight_decay=weight_decay, lr_scale=cfg.lr_scale)
    return Chained([main, adamw(rest)] if rest else [main])
