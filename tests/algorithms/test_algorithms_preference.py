"""Online DPO's pure functions: pair selection, the DPO / IPO losses by hand, and the per-row
advantages against autograd of the loss (the reference implementation)."""

import math

import pytest
import torch

from pillion.algorithms import losses as L
from pillion.algorithms import preference as P


def test_select_pairs_by_hand():
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0,  # best: row 0 (first of the two 1s), worst: row 3 (last 0)
                           0.5, 0.5, 0.5, 0.5,  # all equal: tied, its first and last row
                           0.0, 0.0, 1.0, 2.0])  # best: row 11, worst: row 9 (last of the two 0s)
    chosen, rejected, tied = P.select_pairs(scores, 4)
    assert chosen.tolist() == [0, 4, 11] and rejected.tolist() == [3, 7, 9] and tied.tolist() == [False, True, False]
    pair_scores = scores[torch.stack([chosen, rejected], -1).reshape(-1)]  # the batch's rows: [1, 0, .5, .5, 2, 0]
    assert P.tied_pairs(pair_scores).tolist() == [False, True, False]


def test_select_pairs_refuses_group_of_one():
    with pytest.raises(ValueError, match="groups of 1"):
        P.select_pairs(torch.zeros(4), 1)


def test_dpo_loss_by_hand():
    # Rows in pairs: chosen S - S_ref = 3 - 1 = 2, rejected -2 - (-1) = -1, so h = 2 - (-1) = 3.
    h = P.margins(torch.tensor([3.0, -2.0]), torch.tensor([1.0, -1.0]))
    assert h.tolist() == [3.0]
    # sigmoid, beta 0.1: -log sigmoid(0.3) = log(1 + e^-0.3) = log(1.740818) = 0.554355
    assert P.dpo_loss(h, 0.1).item() == pytest.approx(math.log(1 + math.exp(-0.3)), abs=1e-6)
    assert P.dpo_loss(torch.zeros(1), 0.1).item() == pytest.approx(math.log(2), abs=1e-6)  # h = 0: log 2
    # ipo, beta 0.5: 1 / (2 beta) = 1, (3 - 1)^2 = 4; at h = 1 the loss is 0
    assert P.dpo_loss(h, 0.5, "ipo").item() == pytest.approx(4.0)
    assert P.dpo_loss(torch.ones(1), 0.5, "ipo").item() == 0.0


def test_dpo_advantages_by_hand():
    # h = 0 (policy == reference), beta 0.1: l'(0) = -0.1 * sigmoid(0) = -0.05; A_c = -2 l' = 0.1, A_r = -0.1
    adv = P.dpo_advantages(torch.tensor([-4.0, -6.0]), torch.tensor([-4.0, -6.0]), 0.1)
    assert adv.tolist() == pytest.approx([0.1, -0.1])
    # ipo, beta 0.5, h = 3: l' = 2 (3 - 1) = 4; A_c = -8, A_r = 8 (the margin overshoots 1/(2 beta): pulled back)
    adv = P.dpo_advantages(torch.tensor([3.0, -2.0]), torch.tensor([1.0, -1.0]), 0.5, "ipo")
    assert adv.tolist() == pytest.approx([-8.0, 8.0])


@pytest.mark.parametrize("kind", P.KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surrogate_has_the_dpo_gradient(kind, seed):
    """The trainer's loss -(1/S) sum_i A_i sum_t logp (seq_mean_token_sum over S = 2P rows) has the
    gradient of the mean DPO loss at the same log-probs, token by token (autograd as the reference)."""
    g = torch.Generator().manual_seed(seed)
    pairs, T, beta = 5, 7, 0.3
    logp = -torch.rand(2 * pairs, T, generator=g, dtype=torch.float64) * 3  # [B, T]
    ref = -torch.rand(2 * pairs, T, generator=g, dtype=torch.float64) * 3
    mask = (torch.rand(2 * pairs, T, generator=g) < 0.8).double()
    mask[:, 0] = 1

    want = logp.clone().requires_grad_(True)  # reference: autograd of the mean DPO loss
    P.dpo_loss(P.margins((want * mask).sum(-1), (ref * mask).sum(-1)), beta, kind).mean().backward()

    got = logp.clone().requires_grad_(True)  # the surrogate, as objective.py builds it
    adv = P.dpo_advantages((logp * mask).sum(-1), (ref * mask).sum(-1), beta, kind)[:, None] * mask  # [B, T]
    L.aggregate(-adv * got, mask, "seq_mean_token_sum", num_seqs=2 * pairs).backward()
    torch.testing.assert_close(got.grad, want.grad)
