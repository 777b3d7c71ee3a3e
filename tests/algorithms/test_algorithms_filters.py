"""Filters (docs/algorithms.md §6.2, §6.4 filtering, §9, §10) and the dynamic-sampling buffer."""

import pytest
import torch

from pillion.algorithms import advantages as adv
from pillion.algorithms import filters


def test_reject_all_equal_worked_examples():
    # §9: [+1,-1,-1,+1] is kept, [1,1,1,1] and [-1,-1,-1,-1] are dropped
    scores = torch.tensor([1.0, -1, -1, 1, 1, 1, 1, 1, -1, -1, -1, -1])
    keep = filters.reject_all_equal(scores, 4)
    assert keep.dtype == torch.bool
    assert keep.tolist() == [True] * 4 + [False] * 8
    # Reinforce-Rej then trains on A = s of the kept rows
    assert adv.raw(scores[keep], 4).tolist() == [1.0, -1.0, -1.0, 1.0]


def test_reject_all_equal_group_of_one_drops_everything():
    assert not filters.reject_all_equal(torch.tensor([1.0, 0.0]), 1).any()


def test_reject_all_equal_validates():
    with pytest.raises(ValueError, match="multiple"):
        filters.reject_all_equal(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="NaN"):
        filters.reject_all_equal(torch.tensor([float("nan"), 1.0]), 2)


def test_mixed_groups_srpo_dapo_example():
    # §10 (G=4): p1 [1,1,1,1] all correct, p2 [1,0,1,0] mixed, p3 [0,0,0,0] all wrong:
    # DAPO keeps only p2 (0 < #correct < G)
    correct = torch.tensor([1, 1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0], dtype=torch.bool)
    keep = filters.mixed_groups(correct, 4)
    assert keep.tolist() == [False] * 4 + [True] * 4 + [False] * 4


def test_mixed_groups_uses_accuracy_not_shaped_score():
    # correctness as 0/1 floats; a shaped score (e.g. -0.5 overlong) is not what is tested
    keep = filters.mixed_groups(torch.tensor([1.0, 0.0, 0.0, 0.0]), 2)
    assert keep.tolist() == [True, True, False, False]


def test_mixed_groups_group_size_one_is_config_error():
    with pytest.raises(ValueError, match="group_size >= 2"):
        filters.mixed_groups(torch.tensor([True, False]), 1)


def test_overlong_mask_zeroes_truncated_rows():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.long)
    out = filters.overlong_mask(mask, torch.tensor([True, False, False]))
    assert out.dtype == mask.dtype
    assert out.tolist() == [[0, 0, 0], [1, 1, 0], [1, 1, 1]]
    # the truncated row's score stays in the group statistics: GRPO uses all scores
    scores = torch.tensor([-1.0, 1.0, -1.0])
    assert adv.grpo(scores, 3)[0] != 0


def test_group_buffer_fills_in_arrival_order_and_truncates_surplus():
    # G=2, target 3 groups. Batch 1: groups a (mixed), b (all correct), c (mixed) -> 2 kept.
    # Batch 2: d (mixed), e (mixed) -> d fills the buffer, e is surplus and discarded.
    buffer = filters.GroupBuffer(target_groups=3, group_size=2)
    buffer.add(filters.mixed_groups(torch.tensor([1, 0, 1, 1, 0, 1]), 2), ["a0", "a1", "b0", "b1", "c0", "c1"])
    assert buffer.num_groups == 2 and not buffer.full
    buffer.add(filters.mixed_groups(torch.tensor([0, 1, 1, 0]), 2), ["d0", "d1", "e0", "e1"])
    assert buffer.full and buffer.num_batches == 2
    assert buffer.rows == ["a0", "a1", "c0", "c1", "d0", "d1"]


def test_group_buffer_gives_up_with_the_spec_log_line():
    # every batch has 1 mixed group of 2; the bound of 3 batches is reached with 3/4 groups
    buffer = filters.GroupBuffer(target_groups=4, group_size=2)
    max_gen_batches = 3
    for n in range(max_gen_batches):
        buffer.add(torch.tensor([True, True, False, False]), [f"{n}a", f"{n}b", f"{n}c", f"{n}d"])
        if buffer.full:
            break
    assert not buffer.full
    assert buffer.give_up_message(max_gen_batches) == "dynamic sampling: 3/4 groups after 3 batches"
    assert buffer.give_up_message() == "dynamic sampling: 3/4 groups after 3 batches"
    assert len(buffer.rows) == 6


def test_group_buffer_empty_means_skip_step():
    buffer = filters.GroupBuffer(target_groups=2, group_size=2)
    buffer.add(torch.zeros(4, dtype=torch.bool), list(range(4)))
    assert buffer.rows == [] and buffer.give_up_message(1) == "dynamic sampling: 0/2 groups after 1 batches"


def test_group_buffer_rejects_bad_keep_masks():
    buffer = filters.GroupBuffer(target_groups=2, group_size=2)
    with pytest.raises(ValueError, match="within a group"):
        buffer.add(torch.tensor([True, False]), [0, 1])
    with pytest.raises(ValueError, match="does not match"):
        buffer.add(torch.tensor([True, True]), [0, 1, 2])
    with pytest.raises(ValueError):
        filters.GroupBuffer(target_groups=0, group_size=2)
