"""The LM-head log-prob / entropy function against a plain log-softmax: values and gradients."""

import gc
import warnings

import pytest
import torch

from pillion.model.logprobs import chunked_logprobs


def naive(hidden, weight, targets, temperature):
    logp_all = torch.log_softmax((hidden @ weight.t()).float() / temperature, -1)  # [N, V]
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    return logp, -(logp_all.exp() * logp_all).sum(-1)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("entropy_weight", [0.0, 0.3])
def test_values_and_gradients_match_a_full_log_softmax(chunk, temperature, entropy_weight):
    torch.manual_seed(chunk)
    hidden = torch.randn(7, 16, dtype=torch.float64, requires_grad=True)  # float64: exact comparison
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (7,))
    upstream = torch.randn(7, dtype=torch.float64)  # d loss / d logp, as a policy loss gives

    def grads(fn):
        logp, entropy = fn()
        loss = (upstream * logp).sum() + (entropy_weight * entropy.sum() if entropy_weight else 0)
        return logp, entropy, torch.autograd.grad(loss, (hidden, weight))

    ours = grads(lambda: chunked_logprobs(hidden, weight, targets, temperature, chunk, with_entropy=True))
    ref = grads(lambda: naive(hidden, weight, targets, temperature))
    for a, b in zip([ours[0], ours[1], *ours[2]], [ref[0], ref[1], *ref[2]]):
        torch.testing.assert_close(a.double(), b.double(), atol=1e-5, rtol=1e-5)


def test_logprob_by_hand():
    """h = [1], W = [[0], [ln 3]]: logits [0, ln 3], p = [1/4, 3/4]; target 1 -> log(3/4);
    entropy = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.5623."""
    import math

    logp, entropy = chunked_logprobs(torch.tensor([[1.0]]), torch.tensor([[0.0], [math.log(3)]]),
                                     torch.tensor([1]), with_entropy=True)
    assert logp.item() == pytest.approx(math.log(0.75), abs=1e-6)
    assert entropy.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-6)


def test_bf16_matches_autograd_through_the_same_casts():
    torch.manual_seed(0)
    hidden = torch.randn(9, 32).bfloat16().requires_grad_()
    weight = (0.1 * torch.randn(300, 32)).bfloat16().requires_grad_()
    targets = torch.randint(0, 300, (9,))
    logp, _ = chunked_logprobs(hidden, weight, targets, 1.0, 4)
    gh, gw = torch.autograd.grad(logp.sum(), (hidden, weight))
    ref, _ = naive(hidden, weight, targets, 1.0)
    rh, rw = torch.autograd.grad(ref.sum(), (hidden, weight))
    assert logp.dtype == torch.float32 and gw.dtype == torch.bfloat16
    torch.testing.assert_close(logp, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(gh, rh, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(gw, rw, atol=2e-2, rtol=2e-2)


def test_an_undifferentiated_entropy_keeps_nothing_of_vocabulary_size():
    """The policy loss uses log-probs; the entropy is only logged. After backward no [chunk, V]
    tensor may survive (torch.utils.checkpoint around a log-softmax kept every chunk's)."""
    hidden = torch.randn(40, 8, requires_grad=True)
    weight = torch.randn(5000, 8, requires_grad=True)
    logp, entropy = chunked_logprobs(hidden, weight, torch.randint(0, 5000, (40,)), 1.0, 10, with_entropy=True)
    logp.sum().backward()
    gc.collect()
    with warnings.catch_warnings():  # isinstance on torch's deprecated aliases warns
        warnings.simplefilter("ignore")
        alive = [t.shape for t in gc.get_objects() if isinstance(t, torch.Tensor) and t.numel() >= 10 * 5000
                 and t is not weight.grad and t is not weight]
    assert alive == [] and entropy.requires_grad
