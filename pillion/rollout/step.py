"""One step of the rollout engine on the device: the slots' state (`Slots`), the step itself
(`decode_step`: decode one token per slot, sample, record, advance, with no host sync) and its
compiled form (`compiled_decode_step`). The engine (rollout/engine.py) drives it: admission,
host checks and compaction live there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pillion.model.decode import DecodeWeights, KVCache
from pillion.model.transformer import Transformer
from pillion.rollout.sampling import Sampler, sample_cdf, sample_race


@dataclass
class Slots:
    """Per-slot decoding state on the device, read and updated in place by `decode_step`
    (fixed shapes and addresses across steps and calls: what a CUDA graph replays)."""

    tokens: torch.Tensor  # [S] long: each slot's next input token
    positions: torch.Tensor  # [S] long: its cache column = RoPE position
    steps: torch.Tensor  # [S] long: tokens sampled so far = where the next one is written
    keys: torch.Tensor  # [S] long: randomness key of the slot's row
    key_bias: torch.Tensor  # [S, KV, 1, max_len] float32: 0 on the slot's written columns, -inf after
    uniforms: torch.Tensor  # [S, W] float64: the CDF sampler's draw for each step
    out_tokens: torch.Tensor  # [S, W] long: sampled tokens (W = max_new_tokens + check_every)
    out_logprobs: torch.Tensor  # [S, W] float32


def decode_step(model: Transformer, weights: DecodeWeights, cache: KVCache, slots: Slots, rope: torch.Tensor,
                active: int, span: int, sampler: Sampler, far: torch.Tensor | None = None, far_span: int = 0) -> None:
    """One token for each of slots 0..active-1, in place: decode, sample, record, advance.

    Attends over cache columns [0, span), or [0, far_span) for the slots `far` (CPU: the few
    long rows, so that the others do not pay for their span). Every slot advances, also one
    whose row ended earlier in the window (EOS or the token limit are found at the host check)
    or an empty one: what they write lies past their rows' ends, inside the spare columns.
    A plain function of tensors, so that it can be compiled and captured as a CUDA graph.
    """
    A = active
    positions, steps = slots.positions[:A], slots.steps[:A]
    rows = torch.arange(A, device=positions.device)
    # Buffers are written by index_put on the whole tensor, which a compiled step does in place
    # (a write through a slice would be copied back whole). First unmask each slot's new column
    # (with a device scalar: a Python one would be a CPU tensor in the graph, which CUDA-graph
    # capture refuses).
    slots.key_bias[rows, :, :, positions] = slots.key_bias.new_zeros(())
    if far is not None:
        far = (far, slots.key_bias[far, ..., :far_span].reshape(-1, 1, far_span))
    bias = slots.key_bias[:A, ..., :span].reshape(-1, 1, span)  # [A * KV, 1, span]
    logits = model.decode(slots.tokens[:A], positions, bias, cache, weights, rope, far)
    if sampler.method == "race":
        tokens, logprobs = sample_race(logits, sampler, slots.keys[:A], steps)
    else:
        tokens, logprobs = sample_cdf(logits, sampler, slots.uniforms[rows, steps][:, None])
    slots.out_tokens[rows, steps] = tokens
    slots.out_logprobs[rows, steps] = logprobs
    slots.tokens[:A] = tokens
    steps += 1
    positions += 1


def compiled_decode_step(mode: str | None = None, backend="inductor"):
    """`decode_step` compiled once for all slot counts and spans (dynamic shapes).

    On CPU this fuses the step's elementwise work into a few kernels (the matmuls stay library
    calls), after a compile of ~20-50 s on 2 busy cores. The generated wrapper's per-call size and alignment
    asserts are off: at rollout batch sizes they cost ~8% of a step, and Dynamo's guards
    already check the same inputs. mode="reduce-overhead" adds CUDA graphs on CUDA: one graph
    recorded per slot-count bucket and replayed; the engine marks the cache and slot tensors as
    static inputs so that replays read them in place. Pass the result as
    `Engine(..., decode_fn=compiled_decode_step())`.
    """
    options = {"size_asserts": False, "alignment_asserts": False, "scalar_asserts": False}
    if mode == "reduce-overhead":
        options["triton.cudagraphs"] = True
    elif mode is not None:
        raise ValueError(f"compiled_decode_step: mode {mode!r} is not supported (None or 'reduce-overhead')")
    if backend != "inductor":  # tests count the frames with torch._dynamo.testing.CompileCounter
        options = None
    step = torch.compile(decode_step, dynamic=True, backend=backend, options=options)
    # Marked for the engine, which then keeps to one graph per sampler: Dynamo specialises a size
    # of 1 and `far=None`, so a window with one active slot (a rollout's last row, or a call of one
    # row) or with far rows would compile another graph mid-run (12.98 s for one README-sized step
    # on 2 cores, measured). The engine decodes at least 2 slots (a spare one decodes garbage, as
    # every free slot does) and attends over one span for all rows (no far rows).
    step.compiled = True
    return step
