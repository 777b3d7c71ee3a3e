"""Optimizers: the AdamW path as before, the parameter split, Dion against a dense reference
(polar factor at full rank, Algorithm 1 step by step at low rank), Muon's float32 Newton-Schulz
against the scalar iteration on singular values, and both training tiny problems."""

import math

import pytest
import torch
from torch import nn

from pillion.train.optim import (
    Chained,
    Dion,
    Muon,
    OptimConfig,
    dion_scale,
    dion_update,
    make_optimizer,
    muon_scale,
    newton_schulz,
    split_params,
)


def tiny_model(tied=False):
    from pillion.model.transformer import ModelConfig, Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(family="qwen2", vocab_size=32, hidden_size=16, intermediate_size=24, num_layers=2, num_heads=2,
                      num_kv_heads=1, head_dim=8, tie_word_embeddings=tied, attention_bias=True)
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def lm_loss(model, ids):
    from pillion.model.transformer import causal_padding_mask, padding_positions

    attn = torch.ones_like(ids)
    logits = model.logits(model(ids, padding_positions(attn), causal_padding_mask(attn)))  # [B, L, V]
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def polar(b):
    u, _, vh = torch.linalg.svd(b, full_matrices=False)
    return u @ vh


@pytest.mark.parametrize("tied", [False, True])
def test_split_puts_only_block_matrices_on_the_orthonormal_optimizer(tied):
    model = tiny_model(tied)
    matrices, rest = split_params(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)].split(".", 3)[-1] for p in matrices) == sorted(
        ["self_attn.qkv_proj.weight", "self_attn.o_proj.weight", "mlp.gate_up_proj.weight",
         "mlp.down_proj.weight"] * 2)
    rest_names = {names[id(p)] for p in rest}
    assert "model.embed_tokens.weight" in rest_names and "model.norm.weight" in rest_names
    assert ("lm_head.weight" in rest_names) != tied  # tied: one tensor, listed once (as the embedding)
    assert any(n.endswith("qkv_proj.bias") for n in rest_names)
    assert len(matrices) + len(rest) == len(list(model.parameters()))
    model.model.layers[0].mlp.down_proj.weight.requires_grad_(False)  # frozen: left out
    assert len(split_params(model)[0]) == 7


def test_adamw_path_is_the_loops_optimizer():
    a, b = tiny_model(), tiny_model()
    ids = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(1))
    # the loop's AdamW: betas (0.9, 0.999), eps 1e-8, fused (one kernel per parameter)
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-2, weight_decay=0.1, betas=(0.9, 0.999), eps=1e-8, fused=True)
    opt_b = make_optimizer(b.parameters(), OptimConfig(name="adamw"), lr=1e-2, weight_decay=0.1)
    assert isinstance(opt_b, torch.optim.AdamW)
    for _ in range(3):
        for model, opt in ((a, opt_a), (b, opt_b)):
            lm_loss(model, ids).backward()
            opt.step()
            opt.zero_grad()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_dion_full_rank_update_is_the_polar_factor_when_q_holds_the_singular_vectors():
    # B = G (no momentum yet); Q0 = V from B's SVD: P = orth(B V) = U (up to signs), R = B^T U = V S,
    # column-normalised Q = V, so P Q^T = U V^T, B's polar factor; error feedback leaves mu * B.
    torch.manual_seed(0)
    g = torch.randn(6, 4, dtype=torch.float64)
    _, _, vh = torch.linalg.svd(g, full_matrices=False)
    x = torch.zeros(6, 4, dtype=torch.float64)
    momentum, q = torch.zeros_like(g), vh.t().clone()  # [4, 4]
    dion_update(x, g, momentum, q, lr=0.1, mu=0.9, weight_decay=0.0, scale=2.0)
    torch.testing.assert_close(x, -0.1 * 2.0 * polar(g), rtol=0, atol=1e-12)
    torch.testing.assert_close(momentum, 0.9 * g, rtol=0, atol=1e-12)  # M = B - (1 - mu) B
    torch.testing.assert_close(q.abs(), vh.t().abs(), rtol=0, atol=1e-12)


def test_dion_converges_to_the_orthonormalised_momentum_at_full_rank():
    # Fixed gradient with singular values 5..1, mu = 0 (M stays 0 at full rank): each step is one
    # power-iteration step on B = G from the last Q, so the update tends to U V^T at rate (4/5)^2.
    torch.manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(8, 5, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    g = u @ torch.diag(torch.tensor([5.0, 4, 3, 2, 1], dtype=torch.float64)) @ v.t()
    x = nn.Parameter(torch.zeros(8, 5, dtype=torch.float64))
    opt = Dion([x], lr=1.0, momentum=0.0, rank_fraction=1.0, lr_scale="paper")
    for _ in range(60):
        before = x.detach().clone()
        x.grad = g.clone()
        opt.step()
    update = (before - x.detach()) / math.sqrt(8 / 5)  # paper scale sqrt(m / n)
    torch.testing.assert_close(update, u @ v.t(), rtol=0, atol=1e-6)
    assert opt.state[x]["momentum"].abs().max() < 1e-12  # nothing left behind at full rank


def dense_reference(x, grads, mu, lr, wd, r, q0):
    """Algorithm 1 of the Dion paper, written out with plain tensors (float64)."""
    x, m, q = x.clone(), torch.zeros_like(x), q0.clone()
    for g in grads:
        b = m + g
        p, _ = torch.linalg.qr(b @ q)
        rr = b.t() @ p
        m = b - (1 - mu) * p @ rr.t()
        q = rr / rr.norm(dim=0, keepdim=True)  # ColumnNormalize
        x = x * (1 - lr * wd) - lr * 0.2 * math.sqrt(x.shape[0] * x.shape[1] / r) * p @ q.t()
    return x, m


@pytest.mark.parametrize("shape,fraction", [((12, 7), 0.5), ((5, 9), 0.25), ((6, 6), 1.0)])
def test_dion_matches_the_dense_reference_step_by_step(shape, fraction):
    gen = torch.Generator().manual_seed(2)
    x = nn.Parameter(torch.randn(shape, dtype=torch.float64, generator=gen))
    grads = [torch.randn(shape, dtype=torch.float64, generator=gen) for _ in range(5)]
    opt = Dion([x], lr=0.05, momentum=0.9, rank_fraction=fraction, weight_decay=0.1)
    r = Dion.rank(x.shape, fraction)
    assert r == math.ceil(fraction * min(shape))
    torch.manual_seed(3)
    x.grad = grads[0]
    start = x.detach().clone()
    opt.step()  # first step creates Q from the global RNG; replay it for the reference
    torch.manual_seed(3)
    q0 = torch.randn(shape[1], r, dtype=torch.float64)
    q0 = q0 / q0.norm(dim=0, keepdim=True)
    for g in grads[1:]:
        x.grad = g
        opt.step()
    want_x, want_m = dense_reference(start, grads, 0.9, 0.05, 0.1, r, q0)
    torch.testing.assert_close(x.detach(), want_x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(opt.state[x]["momentum"], want_m, rtol=1e-10, atol=1e-10)


def test_dion_rank_deficient_gradient_moves_only_along_its_directions():
    # G = a b^T has rank 1; at full rank Dion's update is the polar factor of G restricted to
    # its range: a b^T / (|a| |b|), and nothing along the 3 directions G lacks.
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(6, 1, generator=gen, dtype=torch.float64), torch.randn(4, 1, generator=gen, dtype=torch.float64)
    x = nn.Parameter(torch.zeros(6, 4, dtype=torch.float64))
    opt = Dion([x], lr=1.0, momentum=0.0, lr_scale="paper")
    x.grad = 1e-9 * a @ b.t()  # tiny but exact: the scale-free tolerance keeps it
    opt.step()
    want = -math.sqrt(6 / 4) * (a @ b.t()) / (a.norm() * b.norm())
    torch.testing.assert_close(x.detach(), want, rtol=0, atol=1e-12)


def test_dion_survives_a_zero_gradient():
    x = nn.Parameter(torch.randn(6, 4, dtype=torch.float64))
    opt = Dion([x], lr=0.1, momentum=0.9)
    x.grad = torch.zeros_like(x)
    before = x.detach().clone()
    opt.step()  # B = 0: no update, and Q keeps its (non-zero) start
    assert torch.equal(x.detach(), before)
    assert torch.all(opt.state[x]["q"].norm(dim=0) > 0.99)
    x.grad = torch.randn(6, 4, dtype=torch.float64)
    opt.step()
    assert (x.detach() - before).abs().max() > 1e-3


NS = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's (a, b, c)


def test_newton_schulz_by_hand_on_a_1x1_matrix():
    # [[2]] normalised: 1. p(s) = a s + b s^3 + c s^5: p(1) = 3.4445 - 4.7750 + 2.0315 = 0.7010;
    # p(0.7010) = 3.4445 * 0.7010 - 4.7750 * 0.344472 + 2.0315 * 0.169274
    #           = 2.414595 - 1.644855 + 0.343880 = 1.113620
    one = newton_schulz(torch.tensor([[2.0]]), NS, 1, 1e-7)
    two = newton_schulz(torch.tensor([[2.0]]), NS, 2, 1e-7)
    assert one.dtype == torch.float32 and float(one) == pytest.approx(0.7010, abs=1e-6)
    assert float(two) == pytest.approx(1.113620, abs=1e-5)


@pytest.mark.parametrize("shape", [(9, 5), (5, 9), (6, 6)])
def test_newton_schulz_applies_the_quintic_to_each_singular_value(shape):
    # X = U diag(s) V^T: each step maps s -> a s + b s^3 + c s^5 after X / ||X||_F and keeps U, V.
    gen = torch.Generator().manual_seed(7)
    u, _ = torch.linalg.qr(torch.randn(shape[0], min(shape), generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(shape[1], min(shape), generator=gen, dtype=torch.float64))
    s = torch.rand(min(shape), generator=gen, dtype=torch.float64) * 3 + 0.1
    x = u @ torch.diag(s) @ v.t()
    t = s / s.norm()
    for _ in range(5):
        t = NS[0] * t + NS[1] * t**3 + NS[2] * t**5
    torch.testing.assert_close(newton_schulz(x, NS, 5, 1e-7), u @ torch.diag(t) @ v.t(), rtol=0, atol=1e-12)
    assert newton_schulz(x.float(), NS, 5, 1e-7).dtype == torch.float32


def test_muon_step_does_not_amplify_float32_rounding_of_the_gradient():
    # Gradients that differ by float32 rounding (the same batch summed in another order, as with
    # another number of ranks) must give the same update to well under the 1e-4 the N-rank tests
    # hold metrics to. Here one entry sits halfway between two bfloat16 numbers (1 + 2^-8: rounds
    # to even, 1) and moves up one float32 ulp (rounds to 1 + 2^-7): 2e-9 relative to the matrix.
    # torch.optim.Muon's bfloat16 Newton-Schulz changes 77% of the update's entries, by 1e-2
    # relative in norm; float32 by 9e-7.
    gen = torch.Generator().manual_seed(8)
    grad = torch.randn(48, 64, generator=gen)
    grad[3, 5] = 1 + 2**-8
    nudged = grad.clone()
    nudged[3, 5] = torch.nextafter(grad[3, 5], torch.tensor(2.0))
    updates = []
    for g in (grad, nudged):
        w = nn.Parameter(torch.zeros(48, 64))
        # momentum 0: the Newton-Schulz input is the gradient itself
        opt = Muon([w], lr=1.0, momentum=0.0, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")
        w.grad = g
        opt.step()
        updates.append(w.detach().clone())
    assert float((updates[0] - updates[1]).norm() / updates[0].norm()) < 1e-5
    # the step itself: lr 1 x 0.2 sqrt(max(48, 64)) = 1.6 times the orthogonalised gradient
    torch.testing.assert_close(updates[0], -1.6 * newton_schulz(grad, NS, 5, 1e-7), rtol=1e-5, atol=1e-6)


def test_muon_nesterov_momentum_by_hand():
    # Two steps on the same gradient g, momentum 0.95: buf = 0.05 g, then 0.05 g + 0.95 * 0.05 g
    # = 0.0975 g; Nesterov's update = lerp(g, buf, 0.95) = 0.05 g + 0.95 * 0.0975 g = 0.142625 g.
    # Newton-Schulz is scale-free, so only the momentum buffer shows the arithmetic.
    g = torch.randn(6, 4, generator=torch.Generator().manual_seed(9))
    w = nn.Parameter(torch.zeros(6, 4))
    opt = Muon([w], lr=0.1, weight_decay=0.5)
    for _ in range(2):
        w.grad = g.clone()
        opt.step()
    torch.testing.assert_close(opt.state[w]["momentum_buffer"], 0.0975 * g)
    # each step: w (1 - 0.1 * 0.5) - 0.1 * sqrt(max(1, 6 / 4)) NS(.); w was 0 before the first
    step_one = -0.1 * math.sqrt(1.5) * newton_schulz(0.0975 * g, NS, 5, 1e-7)
    step_two = step_one * 0.95 - 0.1 * math.sqrt(1.5) * newton_schulz(0.142625 * g, NS, 5, 1e-7)
    torch.testing.assert_close(w.detach(), step_two, rtol=1e-5, atol=1e-6)


def test_muon_loads_a_torch_muon_state():
    # Checkpoints written with torch.optim.Muon's state (momentum_buffer, its param group keys) resume.
    w = nn.Parameter(torch.randn(6, 4))
    theirs = torch.optim.Muon([w], lr=0.1, adjust_lr_fn="original")
    w.grad = torch.randn(6, 4)
    theirs.step()
    ours = Muon([w], lr=0.1)
    ours.load_state_dict(theirs.state_dict())
    assert torch.equal(ours.state[w]["momentum_buffer"], theirs.state[w]["momentum_buffer"])
    ours.step()


def test_scales_and_bad_settings():
    assert dion_scale(16, 4, 4, "match_rms_adamw") == pytest.approx(0.2 * 4)  # = Muon's 0.2 sqrt(max(m, n))
    assert dion_scale(16, 4, 1, "match_rms_adamw") == pytest.approx(0.2 * 8)  # sqrt(64 / 1)
    assert dion_scale(16, 4, 2, "paper") == pytest.approx(2.0)  # sqrt(16 / 4)
    assert muon_scale(16, 4, "match_rms_adamw") == pytest.approx(0.8)  # 0.2 sqrt(16)
    assert muon_scale(16, 4, "paper") == pytest.approx(2.0) and muon_scale(4, 16, "paper") == 1.0  # sqrt(max(1, m/n))
    with pytest.raises(ValueError, match="optim.lr_scale"):
        muon_scale(2, 2, "big")
    with pytest.raises(ValueError, match="optim.lr_scale"):
        dion_scale(2, 2, 1, "big")
    with pytest.raises(ValueError, match="optim.rank_fraction"):
        Dion([nn.Parameter(torch.zeros(2, 2))], rank_fraction=0.0)
    with pytest.raises(ValueError, match="2-D"):
        Dion([nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="optim.name"):
        make_optimizer(tiny_model(), OptimConfig(name="sgd"))
    with pytest.raises(ValueError, match="needs the model"):
        make_optimizer(tiny_model().parameters(), OptimConfig(name="muon"))


@pytest.mark.parametrize("name", ["muon", "dion"])
def test_hybrid_optimizers_step_every_parameter(name):
    model = tiny_model()
    opt = make_optimizer(model, OptimConfig(name=name), lr=1e-2, weight_decay=0.0)
    assert isinstance(opt, Chained)
    kinds = [type(o).__name__ for o in opt.optimizers]
    assert kinds == ["Muon" if name == "muon" else "Dion", "AdamW"]
    assert len(opt.param_groups) == 2
    for group in opt.param_groups:  # the loop's lr schedule reaches both members
        group["lr"] = 5e-3
    assert [o.param_groups[0]["lr"] for o in opt.optimizers] == [5e-3, 5e-3]
    before = [p.detach().clone() for p in model.parameters()]
    # 8 x 12 tokens: the 16 x 24 gradient of down_proj has full rank 16 (fewer tokens than 16
    # would leave it rank-deficient, and Dion moves only along the gradient's directions).
    lm_loss(model, torch.randint(0, 32, (8, 12), generator=torch.Generator().manual_seed(1))).backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    # match_rms_adamw: a hidden matrix moves by about 0.2 * lr RMS (Muon's Newton-Schulz output
    # has singular values in ~[0.5, 1.5]; Dion's first update P Q^T has ||.||_F^2 = r exactly).
    w = model.model.layers[0].mlp.down_proj.weight
    b = before[[i for i, p in enumerate(model.parameters()) if p is w][0]]
    rms = float((w.detach() - b).pow(2).mean().sqrt()) / 5e-3
    assert 0.1 < rms < 0.3 if name == "muon" else rms == pytest.approx(0.2, rel=1e-4)


@pytest.mark.parametrize("name", ["muon", "dion"])
def test_state_dict_resumes_the_same_trajectory(name):
    ids = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(1))

    def steps(model, opt, n):
        for _ in range(n):
            lm_loss(model, ids).backward()
            opt.step()
            opt.zero_grad()

    a = tiny_model()
    torch.manual_seed(5)
    opt_a = make_optimizer(a, OptimConfig(name=name, rank_fraction=0.5), lr=1e-2)
    steps(a, opt_a, 4)
    b = tiny_model()
    torch.manual_seed(5)
    opt_b = make_optimizer(b, OptimConfig(name=name, rank_fraction=0.5), lr=1e-2)
    steps(b, opt_b, 2)
    saved = opt_b.state_dict()
    c = tiny_model()
    c.load_state_dict(b.state_dict())
    opt_c = make_optimizer(c, OptimConfig(name=name, rank_fraction=0.5), lr=1e-2)
    opt_c.load_state_dict(saved)
    steps(c, opt_c, 2)
    for pa, pc in zip(a.parameters(), c.parameters()):
        torch.testing.assert_close(pa, pc, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="another optim.name"):
        make_optimizer(tiny_model(), OptimConfig(name="dion" if name == "muon" else "muon")).load_state_dict(saved)


@pytest.mark.parametrize("name,fraction,lr", [("dion", 1.0, 0.02), ("dion", 0.5, 0.05), ("muon", 1.0, 0.02)])
def test_orthonormal_optimizers_fit_a_linear_map(name, fraction, lr):
    # min_W ||W X - Y||^2 with Y = A X, W 12 x 16 (the whole model is one hidden matrix). Rank 6
    # of 12 moves half the directions per step, so it gets a larger lr.
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(12, 16, generator=gen) / 4
    x = torch.randn(16, 256, generator=gen)
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Linear(16, 12, bias=False)])
    nn.init.zeros_(model.blocks[0].weight)
    torch.manual_seed(0)
    opt = make_optimizer(model, OptimConfig(name=name, rank_fraction=fraction, lr_scale="paper"), lr=lr)
    first = None
    for step in range(150):
        for group in opt.param_groups:  # linear decay: a fixed-size orthonormal step cannot settle
            group["lr"] = lr * (1 - step / 150)
        loss = (model.blocks[0](x.t()) - (a @ x).t()).pow(2).mean()
        first = first if first is not None else float(loss.detach())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert float(loss.detach()) < 0.01 * first


@pytest.mark.parametrize("name", ["adamw", "muon", "dion"])
def test_every_optimizer_trains_the_tiny_transformer(name):
    model = tiny_model()
    ids = torch.randint(0, 32, (4, 10), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    opt = make_optimizer(model, OptimConfig(name=name), lr=3e-2)
    first = float(lm_loss(model, ids).detach())
    for _ in range(30):
        lm_loss(model, ids).backward()
        opt.step()
        opt.zero_grad()
    assert float(lm_loss(model, ids).detach()) < 0.5 * first


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_newton_schulz_runs_in_bf16_on_cuda_as_torchs():
    """On CUDA the iteration keeps torch.optim.Muon's bfloat16 (tensor cores); off CUDA float32."""
    x = torch.randn(8, 12)
    assert newton_schulz(x.cuda(), NS, 5, 1e-7).dtype == torch.bfloat16
    assert newton_schulz(x, NS, 5, 1e-7).dtype == torch.float32
