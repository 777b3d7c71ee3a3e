"""The pairwise judge's arithmetic: verdicts in both orders -> win matrix -> rewards, by hand."""

import pytest
import torch

from pillion.rewards import judge as J


def test_win_matrix_averages_both_orders_by_hand():
    # A=0 vs B=1: P(A) = 0.8; swapped, A=1 vs B=0: P(A) = 0.4, so 0 wins 0.6 there.
    # W[0, 1] = (0.8 + 0.6) / 2 = 0.7, W[1, 0] = 0.3
    win = J.win_matrix([(0, 1)], torch.tensor([0.8]), torch.tensor([0.4]), 2)
    assert win[0, 1].item() == pytest.approx(0.7) and win[1, 0].item() == pytest.approx(0.3)
    assert torch.isnan(win[0, 0])


def test_slot_bias_cancels():
    """A judge that answers A with 0.9 whatever it reads: every response wins half its pairs."""
    pairs = J.opponent_pairs(4, 0)
    win = J.win_matrix(pairs, torch.full((6,), 0.9), torch.full((6,), 0.9), 4)
    assert J.judge_rewards(win).tolist() == pytest.approx([0.5] * 4)


def test_rewards_by_hand():
    # 3 responses, round robin: W[0,1] = 0.9, W[0,2] = 0.7, W[1,2] = 0.4
    # r0 = (0.9 + 0.7) / 2 = 0.8; r1 = (0.1 + 0.4) / 2 = 0.25; r2 = (0.3 + 0.6) / 2 = 0.45; mean 0.5
    pairs = J.opponent_pairs(3, 0)
    assert pairs == [(0, 1), (0, 2), (1, 2)]
    forward = torch.tensor([0.9, 0.7, 0.4])
    win = J.win_matrix(pairs, forward, 1 - forward, 3)  # a position-consistent judge: swapped = 1 - forward
    rewards = J.judge_rewards(win)
    assert rewards.tolist() == pytest.approx([0.8, 0.25, 0.45])
    assert rewards.mean().item() == pytest.approx(0.5)


def test_random_opponents():
    g = torch.Generator().manual_seed(0)
    pairs = J.opponent_pairs(8, 2, g)
    assert all(i < j for i, j in pairs) and len(set(pairs)) == len(pairs) < 28
    met = torch.zeros(8)
    for i, j in pairs:
        met[i] += 1
        met[j] += 1
    assert bool((met >= 2).all())  # each drew 2 others; it may be drawn by more
    assert J.opponent_pairs(8, 2, torch.Generator().manual_seed(0)) == pairs  # the generator decides
    win = J.win_matrix(pairs, torch.full((len(pairs),), 0.75), torch.full((len(pairs),), 0.25), 8)
    assert torch.isnan(win).sum() == 8 + 2 * (28 - len(pairs))  # the diagonal and the pairs that did not meet


def test_template_needs_both_slots():
    from pillion import config as C
    from pillion.fields import ConfigError

    with pytest.raises(ConfigError, match=r"reward.judge.template.*no \{b\} slot"):
        C.resolve(C.TrainConfig, overrides=["reward.judge.template=Only {a} here"])
    with pytest.raises(ConfigError, match=r"reward.judge.template.*not one of"):
        C.resolve(C.TrainConfig, overrides=["reward.judge.template='{a} {b} {c}'"])


def test_the_grading_workers_import_of_rewards_leaves_torch_out():
    """The grading pool's workers import pillion.rewards; torch there would cost each worker
    hundreds of MB and seconds of start-up (and a Ctrl-C during that import printed a traceback)."""
    import subprocess
    import sys

    code = "import sys, pillion.rewards, pillion.rewards.pool; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
