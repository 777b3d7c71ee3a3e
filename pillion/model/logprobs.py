"""Log-probabilities and entropies of target tokens through the LM head, never [N, vocab] whole.

    logp, entropy = chunked_logprobs(hidden, lm_head_weight, targets, temperature, chunk, with_entropy)

For hidden states h [N, D], LM-head weight W [V, D] and targets t [N]:
z = (h W^T) / temperature (the matmul in h's dtype, then float32, as `Transformer.logits`),
logz = logsumexp(z), logp = z[t] - logz, entropy H = -sum_v p_v log p_v with p = softmax(z).

The forward works on `chunk` rows at a time and keeps only h, W, t, logz and H for backward;
the backward recomputes each chunk's logits once and writes their gradient in place:
    d logp / dz_v = 1[v = t] - p_v,        dH / dz_v = -p_v (log p_v + H),
so a chunk costs two [chunk, V] float32 buffers, and W's gradient is accumulated into one
float32 [V, D] buffer instead of one new [V, D] tensor per chunk. The generic alternative
(torch.utils.checkpoint around a log-softmax per chunk) keeps every recomputed chunk's saved
tensors alive when an output such as the entropy is not differentiated (measured: +3 GiB on a
151,936-token vocabulary) and spends a [V, D] gradient per chunk. `tests/model/
test_model_transformer.py` and `tests/train/test_train_models.py` check values and gradients
against a plain log-softmax over the whole vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    z = F.linear(h, weight).float()  # [c, V]: a float32 copy unless already float32
    return z.div_(temperature) if temperature != 1.0 else z


class ChunkedLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature: float, chunk: int, with_entropy: bool):
        n = hidden.shape[0]
        logp = hidden.new_empty(n, dtype=torch.float32)  # [N]
        logz = hidden.new_empty(n, dtype=torch.float32)
        entropy = hidden.new_zeros(n, dtype=torch.float32)
        for start in range(0, n, chunk):
            rows = slice(start, min(start + chunk, n))
            z = _chunk_logits(hidden[rows], weight, temperature)  # [c, V]
            logz[rows] = torch.logsumexp(z, -1)
            logp[rows] = z.gather(-1, targets[rows, None]).squeeze(-1) - logz[rows]
            if with_entropy:
                log_p = z.sub_(logz[rows, None])  # in place: [c, V] log p
                # -sum_v p_v log p_v as a batched dot product (no [c, V] product tensor).
                entropy[rows] = -(log_p.exp()[:, None, :] @ log_p[:, :, None]).view(-1)
        ctx.save_for_backward(hidden, weight, targets, logz, entropy)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.set_materialize_grads(False)  # an unused output (often the entropy) gets no gradient work
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets, logz, entropy = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        n = hidden.shape[0]
        for start in range(0, n, ctx.chunk):
            rows = slice(start, min(start + ctx.chunk, n))
            h = hidden[rows]
            log_p = _chunk_logits(h, weight, ctx.temperature).sub_(logz[rows, None])  # [c, V] log p
            p = log_p.exp()  # [c, V]
            # grad_z = g_lp * (onehot(t) - p) + g_H * (-p (log p + H)) = -p * coef + g_lp * onehot(t)
            if grad_entropy is not None:
                coef = log_p.add_(entropy[rows, None]).mul_(grad_entropy[rows, None])  # [c, V], reusing log_p
                if grad_logp is not None:
                    coef.add_(grad_logp[rows, None])
                grad_z = p.mul_(coef).neg_()
            else:
                grad_z = p.mul_(-grad_logp[rows, None])
            if grad_logp is not None:
                grad_z.scatter_add_(-1, targets[rows, None], grad_logp[rows, None])
            if ctx.temperature != 1.0:
                grad_z.div_(ctx.temperature)  # z = raw logits / temperature
            grad_z = grad_z.to(h.dtype)  # the backward of the float32 cast, as autograd would
            if need_hidden:
                grad_hidden[rows] = grad_z @ weight  # [c, D]
            if need_weight and h.dtype == torch.float32:
                grad_weight.addmm_(grad_z.t(), h)  # [V, D] in place, no per-chunk tensor
            elif need_weight:
                grad_weight.add_(grad_z.t() @ h)  # bf16 product, summed over chunks in float32
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def chunked_logprobs(hidden, weight, targets, temperature: float = 1.0, chunk: int = 256, with_entropy: bool = False):
    """(logp [N], entropy [N]) float32 of `targets` under softmax(hidden @ weight.T / temperature);
    the entropy is zeros (and carries no gradient) unless `with_entropy`."""
    return ChunkedLogProbs.apply(hidden, weight, targets, temperature, chunk, with_entropy)
