"""train/stats.py: logged statistics reduced by their weight, by hand and against the one-batch
computation; the 2-rank agreement is tests/train/test_parallel_presets.py."""

import pytest
import torch

from pillion.algorithms import losses as L
from pillion.train import stats


def test_token_means_are_weighted_by_tokens_and_extremes_are_extremes():
    tally = stats.Tally()
    # Micro-batch a: 3 tokens, entropy 1.0; b: 1 token, entropy 2.0. Token mean (3 x 1 + 1 x 2) / 4
    # = 1.25, where the mean of the two means would be 1.5.
    tally.add({"entropy": 1.0, "ratio_min": 0.9, "ratio_max": 1.1}, 3)
    tally.add({"entropy": 2.0, "ratio_min": 0.8, "ratio_max": 1.3}, 1)
    # A padding micro-batch (no valid token) reports 0.0 for everything: it must move nothing.
    tally.add({"entropy": 0.0, "ratio_min": 0.0, "ratio_max": 0.0}, 0)
    assert tally.result() == {"entropy": 1.25, "ratio_min": 0.8, "ratio_max": 1.3}
    empty = stats.Tally()
    empty.add({"clipfrac": 0.0, "ratio_min": 0.0}, 0)
    assert empty.result() == {"clipfrac": 0.0, "ratio_min": 0.0}  # no valid token anywhere: 0.0


def test_explained_variance_by_hand_and_against_the_loss_function():
    # R = [1, 2, 3], V = [1, 2, 4]: Var(R) = 2/3; R - V = [0, 0, -1], Var = 1/3 - 1/9 = 2/9;
    # 1 - (2/9) / (2/3) = 2/3. A fourth, masked token changes nothing.
    returns, values = torch.tensor([[1.0, 2.0, 3.0, 9.0]]), torch.tensor([[1.0, 2.0, 4.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert stats.explained_variance(values, returns, mask) == pytest.approx(2 / 3)
    assert stats.explained_variance(values, torch.ones(1, 4), mask) == 0.0  # Var(R) = 0
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        r, v = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
        m = (torch.rand(5, 7, generator=g) > 0.3).float()
        assert stats.explained_variance(v, r, m) == pytest.approx(float(L.explained_variance(v, r, m)), rel=1e-5)


def test_row_means_leave_padding_rows_out():
    # Rows of length 4, 2 and a padding row (length 0): mean length 3, not 2.
    out = stats.row_means({"response_length": torch.tensor([4.0, 2.0, 0.0])}, torch.tensor([True, True, False]))
    assert out == {"response_length": 3.0}
