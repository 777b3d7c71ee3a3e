"""The packed forward (rows end to end, no padding) against the padded one: log-probs, entropy,
gradients; its compiled route (tensor-only attention mask) and that route's single graph."""

import pytest
import torch

from pillion.model.checkpoint import load_model
from pillion.model.sequences import compile_training, pack, response_logprobs
from pillion.model.transformer import PackedRows, packed_attention


def _rows(seed, n, vocab=256):
    """n rows of random prompts (2-8 tokens) and long-tailed responses (1-30 tokens)."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, vocab, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist()
               for _ in range(n)]
    responses = [torch.randint(0, vocab, (int(torch.randint(1, 31, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(n)]
    return pack(prompts, responses, pad_id=0)


@pytest.mark.parametrize("family,seed", [("qwen2", 0), ("qwen3", 1), ("llama", 2)])
def test_packed_forward_equals_the_padded_one_in_values_and_gradients(tiny_checkpoint, family, seed):
    model = load_model(tiny_checkpoint(family))
    batch = _rows(seed, 5)
    weights = torch.randn(batch.response_mask.shape, generator=torch.Generator().manual_seed(seed))  # [B, T]
    results = []
    for packed in (False, True):
        logp, entropy = response_logprobs(model, batch, 0.7, with_entropy=True, packed=packed)  # [B, T]
        grads = torch.autograd.grad((weights * logp).sum() + entropy.sum(), list(model.parameters()))
        results.append((logp.detach(), entropy.detach(), grads))
    (lp_a, ent_a, g_a), (lp_b, ent_b, g_b) = results
    torch.testing.assert_close(lp_b, lp_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent_b, ent_a, atol=1e-5, rtol=1e-5)
    assert lp_b[batch.response_mask == 0].abs().max() == 0  # nothing outside the responses
    for a, b in zip(g_a, g_b):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_packed_rows_and_the_compiled_routes_attention_mask():
    # Rows of 3 and 2 tokens: cu_seqlens [0, 3, 5], each token's row [0, 0, 0, 1, 1].
    rows = PackedRows.of([3, 2])
    assert rows.cu_seqlens.tolist() == [0, 3, 5] and rows.row_of.tolist() == [0, 0, 0, 1, 1]
    # One head, D = 1, q = k = 0 so every allowed key weighs the same: the output is the mean of
    # the values a token may see. Row 0: v = 1, 2, 3 -> 1, 1.5, 2; row 1: v = 10, 20 -> 10, 15.
    q = k = torch.zeros(5, 1, 1)
    v = torch.tensor([1.0, 2, 3, 10, 20]).view(5, 1, 1)
    expected = torch.tensor([1.0, 1.5, 2.0, 10.0, 15.0])
    torch.testing.assert_close(packed_attention(q, k, v, rows).view(-1), expected)  # eager: a call per row
    compiled = torch.compile(packed_attention, backend="eager", fullgraph=True)  # the mask route
    torch.testing.assert_close(compiled(q, k, v, rows).view(-1), expected)


def test_compiled_training_forward_is_one_graph_for_every_packed_shape(tiny_checkpoint):
    """`compile: true`: batches of other row counts and lengths (the next steps) reuse the first
    graph, and its values match the eager packed forward."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    eager, model = load_model(tiny_checkpoint()), load_model(tiny_checkpoint())
    counter = CompileCounter()
    compile_training(model, backend=counter)
    for seed, n in ((0, 4), (1, 6), (2, 3)):
        batch = _rows(seed, n)
        logp, _ = response_logprobs(model, batch)
        torch.testing.assert_close(logp, response_logprobs(eager, batch)[0], atol=1e-5, rtol=1e-5)
    assert counter.frame_count == 1


def test_length_buckets_group_similar_rows_and_bound_padding():
    from pillion.model.transformer import length_buckets

    # Rows of 2, 10, 3, 9 tokens start at 0, 2, 12, 15. Shortest first: 2, 3 (2 x 3 = 6 <= 1.25 x 5)
    # then 9 would pad to 3 x 9 = 27 > 1.25 x 14: a new bucket; 10 joins it (2 x 10 = 20 <= 1.25 x 19).
    (index_a, valid_a), (index_b, valid_b) = length_buckets([2, 10, 3, 9])
    assert index_a.tolist() == [[0, 1, 0], [12, 13, 14]] and valid_a.tolist() == [[True, True, False], [True] * 3]
    assert index_b[:, :2].tolist() == [[15, 16], [2, 3]] and valid_b.sum(-1).tolist() == [9, 10]
