"""The packed forward (rows end to end, no padding) against the padded one: log-probs, entropy,
gradients; its compiled route (tensor-only attention mask) and that route's single graph."""

import pytest
import torch

from pillion.model import packed as packed_module
from pillion.model.checkpoint import load_model
from pillion.model.packed import PackedRows, packed_attention
from pillion.model.sequences import compile_training, pack, packed_layout, response_logprobs


def _rows(seed, n, vocab=256):
    """n rows of random prompts (2-8 tokens) and long-tailed responses (1-30 tokens)."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, vocab, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist()
               for _ in range(n)]
    responses = [torch.randint(0, vocab, (int(torch.randint(1, 31, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(n)]
    return pack(prompts, responses, pad_id=0)


# Both CPU attention routes: every bucket through `short_attention` (rows here are <= 38 tokens), or
# every bucket through the fused kernel (SHORT_ROWS 0), as rows longer than SHORT_ROWS take it.
ROUTES = pytest.mark.parametrize("short_rows", [64, 0], ids=["short", "fused"])


@ROUTES
@pytest.mark.parametrize("family,seed", [("qwen2", 0), ("qwen3", 1), ("llama", 2)])
def test_packed_forward_equals_the_padded_one_in_values_and_gradients(tiny_checkpoint, family, seed, short_rows,
                                                                       monkeypatch):
    monkeypatch.setattr(packed_module, "SHORT_ROWS", short_rows)
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


def _groups(seed, prompts, samples, vocab=256):
    """GRPO-shaped rows: `prompts` random prompts (2-8 tokens) with `samples` long-tailed
    responses (1-30 tokens) each, the rows shuffled so that a group's rows are not adjacent."""
    g = torch.Generator().manual_seed(seed)
    heads = [torch.randint(0, vocab, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist()
             for _ in range(prompts)]
    rows = [(head, torch.randint(0, vocab, (int(torch.randint(1, 31, (1,), generator=g)),), generator=g).tolist())
            for head in heads for _ in range(samples)]
    rows = [rows[i] for i in torch.randperm(len(rows), generator=g).tolist()]
    return pack([p for p, _ in rows], [r for _, r in rows], pad_id=0)


def test_shared_prompt_layout_holds_each_prompt_once():
    # Rows 0 and 2 share prompt [5, 6] (responses [7], [8, 9]); row 1 has [4] -> [3]. Packed:
    # [5, 6, 7, 8, 9] then [4, 3]; expanded rows [5 6 7], [5 6 8 9], [4 3]; positions restart per
    # row and continue after the shared prompt.
    batch = pack([[5, 6], [4], [5, 6]], [[7], [3], [8, 9]], pad_id=0)
    layout = packed_layout(batch)
    assert layout.ids.tolist() == [5, 6, 7, 8, 9, 4, 3] and layout.positions.tolist() == [0, 1, 2, 2, 3, 0, 1]
    assert layout.rows.lengths == [3, 4, 2] and layout.rows.gather.tolist() == [0, 1, 2, 0, 1, 3, 4, 5, 6]
    gather, owned = layout.rows.gather, layout.rows.owned  # [N'], and the index [N] of the owned slots
    assert gather[owned].tolist() == list(range(7))  # every packed token owned once, in order
    # Targets in [B, T] row-major order: row 0's 7 (from 6), row 1's 3 (from 4), row 2's 8, 9.
    assert layout.source.tolist() == [1, 5, 1, 3] and layout.targets.tolist() == [7, 3, 8, 9]
    assert not packed_layout(pack([[1], [2]], [[3], [4]], pad_id=0)).shared  # nothing shared


def _layout_by_rows(batch, share):
    """The packed layout built token by token over Python lists (the construction `packed_layout`
    replaces with tensor operations): rows grouped by prompt in the order each first appears,
    each prompt once, then its rows' responses; targets in row-major [B, T] order."""
    P, ids = batch.prompt_len, batch.input_ids.tolist()
    real, wanted = batch.attention_mask.bool().tolist(), batch.response_mask.bool().tolist()
    groups = {}
    for b, (row, keep) in enumerate(zip(ids, real)):
        key = tuple(t for t, k in zip(row[:P], keep[:P]) if k)
        groups.setdefault(key if share else b, []).append(b)
    tokens, positions, gather, owned, lengths, slots = [], [], [], [], [], [None] * len(ids)
    for rows in groups.values():
        prompt = [t for t, k in zip(ids[rows[0]][:P], real[rows[0]][:P]) if k]
        first = len(tokens)
        tokens += prompt
        positions += range(len(prompt))
        for i, b in enumerate(rows):
            response = [t for t, k in zip(ids[b][P:], real[b][P:]) if k]
            start = len(tokens)
            tokens += response
            positions += range(len(prompt), len(prompt) + len(response))
            slots[b] = [*range(first, first + len(prompt)), *range(start, start + len(response))]
            gather += slots[b]
            owned += [i == 0] * len(prompt) + [True] * len(response)
            lengths.append(len(slots[b]))
    source, targets, where = [], [], []
    for b, keep in enumerate(wanted):
        prompt_len = len(slots[b]) - sum(real[b][P:])
        where.append([want and real[b][P + j] and prompt_len + j > 0 for j, want in enumerate(keep)])
        for j, on in enumerate(where[-1]):
            if on:
                source.append(slots[b][prompt_len + j - 1])
                targets.append(ids[b][P + j])
    return tokens, positions, lengths, gather, owned, source, targets, where


@pytest.mark.parametrize("seed", range(4))
def test_packed_layout_equals_the_row_by_row_construction(seed):
    """The tensor-built layout against the token-by-token one, on GRPO-shaped batches (shuffled
    groups), on rows that share nothing, and with sharing off."""
    for batch, share in ((_groups(seed, 3, 4), True), (_groups(seed, 3, 4), False), (_rows(seed, 6), True)):
        layout = packed_layout(batch, share)
        tokens, positions, lengths, gather, owned, source, targets, where = _layout_by_rows(batch, share)
        assert layout.shared == (gather != list(range(len(gather))))  # some prompt held once for several rows
        assert layout.ids.tolist() == tokens and layout.positions.tolist() == positions
        assert layout.rows.lengths == lengths
        if layout.shared:
            assert layout.rows.gather.tolist() == gather
            assert layout.rows.owned.tolist() == [i for i, own in enumerate(owned) if own]
        else:
            assert gather == list(range(len(tokens)))  # nothing repeated: the rows end to end
        assert layout.source.tolist() == source and layout.targets.tolist() == targets
        assert layout.where.tolist() == where


@ROUTES
@pytest.mark.parametrize("family,seed", [("qwen2", 3), ("qwen3", 4), ("llama", 5)])
def test_shared_prompts_equal_the_padded_forward_in_values_and_gradients(tiny_checkpoint, family, seed, short_rows,
                                                                        monkeypatch):
    monkeypatch.setattr(packed_module, "SHORT_ROWS", short_rows)
    model = load_model(tiny_checkpoint(family))
    batch = _groups(seed, prompts=3, samples=4)
    weights = torch.randn(batch.response_mask.shape, generator=torch.Generator().manual_seed(seed))  # [B, T]
    results = []
    for packed, share in ((False, False), (True, False), (True, True)):
        logp, entropy = response_logprobs(model, batch, 0.7, with_entropy=True, packed=packed, share_prompts=share)
        grads = torch.autograd.grad((weights * logp).sum() + entropy.sum(), list(model.parameters()))
        results.append((logp.detach(), entropy.detach(), grads))
    (lp_a, ent_a, g_a), _, (lp_b, ent_b, g_b) = results
    torch.testing.assert_close(lp_b, lp_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent_b, ent_a, atol=1e-5, rtol=1e-5)
    assert lp_b[batch.response_mask == 0].abs().max() == 0
    for a, b in zip(g_a, g_b):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (4, 4), (6, 1)])
def test_short_attention_equals_the_fused_kernel_in_values_and_gradients(heads, kv_heads):
    """`short_attention` (three batched matmuls) against scaled_dot_product_attention (causal,
    grouped-query), on right-padded buckets of 1 to 64 tokens: outputs and the gradients of q,
    k and v, float64 so that only the formula could differ."""
    from pillion.model.packed import short_attention

    g = torch.Generator().manual_seed(heads * 10 + kv_heads)
    for b, width in [(3, 1), (5, 7), (2, 64)]:
        q, k, v = (torch.randn(b, width, n, 8, generator=g, dtype=torch.float64, requires_grad=True)
                   for n in (heads, kv_heads, kv_heads))
        weight = torch.randn(b * width, heads, 8, generator=g, dtype=torch.float64)
        ours = short_attention(q, k, v)  # [b * width, H, D]
        theirs = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
            enable_gqa=heads != kv_heads).transpose(1, 2).reshape(b * width, heads, 8)
        torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=1e-12)
        grads = [torch.autograd.grad((weight * out).sum(), (q, k, v)) for out in (ours, theirs)]
        for a, c in zip(*grads):
            torch.testing.assert_close(a, c, atol=1e-12, rtol=1e-12)


def test_packed_attention_by_hand_eager_and_compiled():
    # Rows of 3 and 2 tokens: cu_seqlens [0, 3, 5].
    rows = PackedRows.of([3, 2])
    assert rows.cu_seqlens.tolist() == [0, 3, 5]
    # One head, D = 1, q = k = 0 so every allowed key weighs the same: the output is the mean of
    # the values a token may see. Row 0: v = 1, 2, 3 -> 1, 1.5, 2; row 1: v = 10, 20 -> 10, 15.
    q = k = torch.zeros(5, 1, 1)
    v = torch.tensor([1.0, 2, 3, 10, 20]).view(5, 1, 1)
    expected = torch.tensor([1.0, 1.5, 2.0, 10.0, 15.0])
    torch.testing.assert_close(packed_attention(q, k, v, rows).view(-1), expected)
    compiled = torch.compile(packed_attention, backend="eager")  # the buckets run eagerly: a graph break
    torch.testing.assert_close(compiled(q, k, v, rows).view(-1), expected)
    # Shared prompt: tokens [p, a, b], rows [p, a] and [p, b]: a sees p and a, b sees p and b.
    shared = PackedRows.of([2, 2], gather=[0, 1, 0, 2], owned=[True, True, False, True])
    v = torch.tensor([1.0, 3, 7]).view(3, 1, 1)
    torch.testing.assert_close(packed_attention(torch.zeros(3, 1, 1), torch.zeros(3, 1, 1), v, shared).view(-1),
                               torch.tensor([1.0, 2.0, 4.0]))


def test_compiled_training_forward_does_not_recompile_for_new_shapes(tiny_checkpoint):
    """`compile: true`: after the first batch of each kind (rows alone, rows sharing prompts),
    batches of other row counts and lengths (the next steps) compile nothing new, and the values
    match the eager packed forward."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    eager, model = load_model(tiny_checkpoint()), load_model(tiny_checkpoint())
    counter = CompileCounter()
    compile_training(model, backend=counter)
    batches = [_rows(0, 4), _groups(1, 2, 3), _rows(2, 3), _groups(3, 3, 2), _rows(4, 7), _groups(5, 4, 4)]
    frames = []
    for batch in batches:
        logp, _ = response_logprobs(model, batch)
        torch.testing.assert_close(logp, response_logprobs(eager, batch)[0], atol=1e-5, rtol=1e-5)
        frames.append(counter.frame_count)
    assert frames[0] > 0 and frames[2:] == [frames[1]] * 4, frames


def test_length_buckets_group_similar_rows_and_bound_padding():
    from pillion.model.packed import length_buckets

    # Rows of 2, 10, 3, 9 tokens start at 0, 2, 12, 15. Shortest first: 2, 3 (2 x 3 = 6 <= 1.25 x 5)
    # then 9 would pad to 3 x 9 = 27 > 1.25 x 14: a new bucket; 10 joins it (2 x 10 = 20 <= 1.25 x 19).
    (index_a, valid_a), (index_b, valid_b) = length_buckets([2, 10, 3, 9])
    assert index_a.tolist() == [[0, 1, 0], [12, 13, 14]] and valid_a.tolist() == [[True, True, False], [True] * 3]
    assert index_b[:, :2].tolist() == [[15, 16], [2, 3]] and valid_b.sum(-1).tolist() == [9, 10]


def test_take_rows_is_indexing_with_repeated_rows_summed_in_the_backward():
    from pillion.model.packed import take_rows

    # x = [1, 2, 3] (one column), index [2, 0, 2] -> [3, 1, 3]; loss 1 * 3 + 10 * 1 + 100 * 3: the
    # gradient of x is [10, 0, 1 + 100].
    x = torch.tensor([[1.0], [2.0], [3.0]], requires_grad=True)
    out = take_rows(x, torch.tensor([2, 0, 2]))
    assert out.view(-1).tolist() == [3.0, 1.0, 3.0]
    (out.view(-1) * torch.tensor([1.0, 10.0, 100.0])).sum().backward()
    assert x.grad.view(-1).tolist() == [10.0, 0.0, 101.0]
    # Against autograd's own indexing, rows of [heads, D] and many repeats.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, 4, generator=g, requires_grad=True)
    index, weight = torch.randint(0, 50, (200,), generator=g), torch.randn(200, 3, 4, generator=g)
    ours = torch.autograd.grad((take_rows(x, index) * weight).sum(), x)[0]
    torch.testing.assert_close(ours, torch.autograd.grad((x[index] * weight).sum(), x)[0])


def test_bucket_slots_hold_every_token_once_and_read_each_output_from_its_own_slot():
    from pillion.model.packed import BucketSlots

    # Rows of 2, 10, 3, 9 tokens (see the length_buckets test): buckets of 2 x 3 and 2 x 10 slots;
    # the slot each token's output is read from holds that token.
    rows = PackedRows.of([2, 10, 3, 9])
    slots = BucketSlots.of(rows)
    assert slots.shapes == [(2, 3), (2, 10)] and len(slots.source) == 26
    assert slots.source[slots.slot].tolist() == list(range(24))
    assert slots.source[:6].tolist() == [0, 1, 0, 12, 13, 14]  # row 0 padded by one slot, then row 2
    assert BucketSlots.of(rows) is slots  # built once per PackedRows, reused by every layer
    # Shared prompt: tokens [p, a, b], expanded rows [p, a], [p, b]: p sits in both rows' slots,
    # and its output is read from its owned slot (row 0's).
    shared = PackedRows.of([2, 2], gather=[0, 1, 0, 2], owned=[True, True, False, True])
    slots = BucketSlots.of(shared)
    assert slots.shapes == [(2, 2)] and slots.source.tolist() == [0, 1, 0, 2] and slots.slot.tolist() == [0, 1, 3]


def test_shared_prompt_gradients_are_bitwise_repeatable_on_two_threads(tiny_checkpoint):
    """The shared prompts' gradients sum over the rows that hold them. Autograd's backward of
    indexing does that with an accumulating index_put_, which on CPU with two or more threads
    adds in a different order from run to run (a resumed run then differed from a straight one in
    the last bits); `take_rows` adds with index_add_, in one order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = load_model(tiny_checkpoint())
        batch = _groups(3, 8, 8)
        grads = []
        for _ in range(4):
            logp, entropy = response_logprobs(model, batch, with_entropy=True, share_prompts=True)
            grads.append(torch.autograd.grad(logp.sum() + entropy.sum(), list(model.parameters())))
        for other in grads[1:]:
            assert all(torch.equal(a, b) for a, b in zip(grads[0], other))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("share", [True, False])
def test_critic_values_packed_equal_the_padded_ones_in_values_and_gradients(tiny_checkpoint, share):
    """The critic reads the state before each response token; packed (and with shared prompts)
    it reads the same states as from the padded batch, and its gradients are the same."""
    from pillion.model.critic import Critic

    critic = Critic(load_model(tiny_checkpoint()))
    torch.nn.init.normal_(critic.value_head.weight, generator=torch.Generator().manual_seed(0))  # not the zero init
    batch = _groups(4, 3, 3)
    weights = torch.randn(batch.response_mask.shape, generator=torch.Generator().manual_seed(1))  # [B, T]
    results = []
    for packed in (False, True):
        values = critic.values(batch, packed=packed, share_prompts=share)  # [B, T]
        trained = [p for p in critic.parameters() if p.requires_grad]  # an untied LM head is frozen
        grads = torch.autograd.grad((weights * values).sum(), trained)
        results.append((values.detach(), grads))
    (v_pad, g_pad), (v_packed, g_packed) = results
    assert v_pad.abs().max() > 0.1 and v_pad[batch.response_mask == 0].abs().max() == 0
    torch.testing.assert_close(v_packed, v_pad, atol=1e-5, rtol=1e-5)
    assert len(g_pad) > 10
    for a, b in zip(g_pad, g_packed):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_the_cuda_route_stays_out_of_compiled_graphs(monkeypatch):
    """`varlen_route` (CUDA) reads the longest row as a Python int for `varlen_attn`; inside a
    compiled graph that would specialise the graph on it. Here the varlen kernel is stood in for
    by the CPU route, and rows of new lengths and counts compile nothing new."""
    from torch._dynamo.testing import CompileCounter

    from pillion.model import packed

    def stand_in(q, k, v, rows):
        assert isinstance(max(rows.lengths), int)  # what varlen_attn gets
        return packed.bucketed_attention(q, k, v, rows)

    monkeypatch.setattr(packed, "varlen_attention", stand_in)
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(lambda q, k, v, rows: packed.varlen_route(q * 2, k, v, rows) + 1, backend=counter,
                             dynamic=True)
    frames = []
    for lengths in ([3, 2], [5, 1, 4], [7, 7], [2, 9, 1, 3]):
        n = sum(lengths)
        q, k, v = torch.randn(n, 2, 4), torch.randn(n, 1, 4), torch.randn(n, 1, 4)
        rows = PackedRows.of(lengths)
        expected = packed_attention(q * 2, k, v, PackedRows.of(lengths)) + 1
        torch.testing.assert_close(compiled(q, k, v, rows), expected)
        frames.append(counter.frame_count)
    assert frames[0] > 0 and frames[1:] == [frames[0]] * 3, frames
