"""Rollout engine: continuous batching over the slots of a preallocated KV cache, n samples per
prompt, per-token log-probabilities.

    engine = Engine(model, tokenizer, eos_ids, max_rows=64)
    completions = engine.generate(prompts, SamplingParams(n=8, temperature=1.0, max_new_tokens=256))
    for completion in engine.stream(prompts, params): ...  # the same completions, as each finishes

Shape of the work:
- a call's work is its rows, one per (prompt, sample), queued prompt-major; the cache has S
  slots (`max_rows`, or as many as `cache_bytes` holds, or one per row) and a slot holds one
  row's context from column 0: the prompt, then the samples. Column = RoPE position; nothing is
  padded, every slot has its own position;
- at each host check (every `check_every` steps) finished rows leave and free slots are
  refilled from the queue: the prompts admitted are prefilled once each (`Transformer.extend`,
  in chunks of at most `prefill_tokens` tokens, no logits), into the slot of their first sample
  admitted, and copied to the slots of the others; the last prompt token is a slot's first
  decode input, so its logits come from the decode step like every other token's;
- a step (`decode_step`, rollout/step.py) has one shape per slot count: every slot decodes one token against the
  whole span of the cache, with unwritten columns masked by a per-slot key bias, samples,
  writes its token and log-prob into per-slot buffers and advances, in place and without a host
  sync; on CUDA it compiles (`compiled_decode_step("reduce-overhead")`) to one CUDA graph per
  slot-count bucket. On CPU the span is cut to the columns the window can reach, and the few
  longest rows of a long tail attend over their longer span separately (`_split_spans`, eager
  only: a compiled step keeps one graph), so that the rest do not pay for it (measured faster
  there; the step is the same function);
- the host check reads the window's tokens (one sync): a row ends at its first EOS, at
  max_new_tokens, or at a stop string (searched in the tokens sampled since the last check);
  what a row sampled past its end in the window is dropped;
- when the queue is empty, live rows are packed into fewer slots (on CPU exactly as many as are
  live, once a window ends with <= 7/8 of them live; on CUDA the next power-of-two bucket, >= 16,
  so that a captured graph is replayed), so the long tail stops paying for finished rows;
- randomness is keyed by (seed, row, step) (`sampling.py`), so the same seed gives the same
  completions whatever `max_rows`, `check_every` or the admission order; sampling is CDF
  inversion on CPU and the exponential race on CUDA (`Engine(..., sampler=...)` overrides).

Decoding uses `Transformer.decode`, the model's one-token fast path over the tensors that
`Transformer.decode_weights()` gathers once per call (adapter-aware weights plug in there).

Log-probabilities are those of the sampled tokens under the policy as docs/algorithms.md §1
defines it: log_softmax(logits / temperature), before top-k / top-p truncation, in float32
(temperature 0 means greedy decoding and reports log_softmax(logits)). Train with top_p=1 and
top_k=0 so that the behaviour policy is the policy being scored (§13.1).

A completion's `ids` end with the EOS token when it stopped on EOS, or with the token that
completed a stop string; `text` is the decoding of `ids` without special tokens, so for a stop
string it includes the stop string itself.

Tools (`Engine(..., tools=Tools(...))`, rollout/tools.py): at a host check, a row that closed
a tool call before it ended is cut back to the call (what it sampled past it in the window is
dropped), the calls found run in the sandbox, and each output's tokens are written into the
row's buffers after the call (log-prob 0) and into its cache with `Transformer.extend` from
the row's column on (`_prefill` with a start column: the chunked prefill a prompt gets); the
row resumes with the last of them as its next input, at the step after them, so its
randomness stays keyed by (seed, row, step) and the completions do not depend on when the
host looked. `Completion.sampled` marks the tool tokens. Without tools none of this runs.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from pillion.model.decode import DecodeWeights, KVCache, rope_table
from pillion.model.transformer import Transformer
from pillion.rollout import tools as tool_calls
from pillion.rollout.sampling import Sampler, row_keys, step_uniforms
from pillion.rollout.step import Slots, decode_step


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k truncation
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    # Global index of this call's first row: rows are keyed (seed, row_offset + row, step), so a
    # rank generating its share of a batch samples what one process generating it all would.
    row_offset: int = 0


@dataclass
class Completion:
    prompt_ids: list[int]
    ids: list[int]
    text: str
    logprobs: torch.Tensor  # [len(ids)] float32, log-probs of the sampled tokens
    finish_reason: str  # "stop" (EOS or a stop string) | "length"
    prompt_index: int = 0  # which prompt of the call this sample answers
    sample_index: int = 0  # which of its n samples (the row's randomness is keyed by both)
    sampled: torch.Tensor | None = None  # [len(ids)] bool, False on tool-output tokens; None: all sampled
    tool_calls: int = 0  # tool calls run for this sample (rollout/tools.py)
    tool_errors: int = 0  # ... of which failed


def find_stop(tokenizer, tokens: list[int], checked: int, upto: int, stops: list[str]) -> int | None:
    """Length of the shortest prefix of `tokens[:upto]` whose text holds a stop string, searching
    only prefixes longer than `checked` (those were searched before); None if there is none."""
    # Look back far enough to catch a stop string split across the previous check.
    start = max(0, checked - max(len(s.encode()) for s in stops))
    if upto <= checked or not any(s in tokenizer.decode(tokens[start:upto]) for s in stops):
        return None
    for end in range(checked + 1, upto + 1):
        if any(s in tokenizer.decode(tokens[start:end]) for s in stops):
            return end
    return None


def _split_spans(needs: list[int], slots: list[int], active: int) -> tuple[int, list[int], int]:
    """(span, far slots, far span) for live `slots` that each need `needs` cache columns.

    When a few rows need many more columns than the rest (a long prompt among short ones, an
    old row in a young batch), attending for all `active` slots over the longest span costs
    active x max(needs) score columns. Letting the k longest rows attend again over their span,
    gathered, costs active x (k+1)-th need + k x max(needs). The k (at most a quarter of the
    slots) that costs least is taken when it saves a quarter of the attention or more: the
    gathers cost more than smaller savings. Measured on CPU: one ~720-token prompt among 31
    short ones, 1.7x faster; geometric sample lengths alone rarely qualify (and do not slow).
    """
    order = sorted(range(len(needs)), key=lambda i: -needs[i])
    longest = needs[order[0]]
    best, best_k = active * longest, 0
    for k in range(1, min(len(order), active // 4 + 1)):
        cost = active * needs[order[k]] + k * longest
        if cost < best:
            best, best_k = cost, k
    if best_k == 0 or best > 0.75 * active * longest:
        return longest, [], 0
    return needs[order[best_k]], sorted(slots[i] for i in order[:best_k]), longest


@dataclass
class _Row:
    """A row in a slot, on the host: which (prompt, sample) it answers."""

    prompt_index: int
    sample_index: int
    checked: int = 0  # sampled tokens already searched for stop strings
    tools: tool_calls.RowTools | None = None  # with tools: calls made, where their outputs lie


@dataclass
class _Run:
    """One call's state on the host."""

    prompt_ids: list[list[int]]
    params: SamplingParams
    sampler: Sampler
    seed: int
    length: int  # cache columns the call may write: longest prompt + max_new_tokens + check_every
    queue: deque  # (prompt_index, sample_index) not yet admitted
    rows: list  # [active] _Row or None (free), one per slot in use
    positions: list[int]  # [active] each slot's position (mirrors Slots.positions)
    steps: list[int]  # [active] each slot's sampled tokens (mirrors Slots.steps)
    weights: DecodeWeights


class Engine:
    """A model, its tokenizer and a reusable KV cache; `generate` and `stream` are the API.

    max_rows: slots in the cache (rows decoding at once); or cache_bytes: as many slots as that
    many bytes of KV cache hold for the call's length; neither: one slot per row of the call.
    sampler: "cdf" or "race" (default: "race" on CUDA, "cdf" otherwise). static: decode with
    the shapes CUDA graphs need (the whole span, power-of-two slot buckets) rather than the
    CPU-tuned ones (default: on CUDA); results are the same either way. prefill_tokens bounds
    the tokens (rows x width) of one prefill chunk. One call at a time: `stream` holds the cache
    until it is exhausted.
    """

    def __init__(self, model: Transformer, tokenizer, eos_ids: list[int], decode_fn=decode_step, check_every: int = 8,
                 max_rows: int | None = None, cache_bytes: int | None = None, sampler: str | None = None,
                 static: bool | None = None, prefill_tokens: int = 1024, tools: tool_calls.Tools | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.eos_ids = list(eos_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.decode_fn, self.check_every = decode_fn, check_every
        # compiled_decode_step: at least 2 slots and no far rows, so that no window compiles a new graph
        self.compiled = getattr(decode_fn, "compiled", False)
        self.min_slots = 2 if self.compiled else 1
        self.max_rows, self.cache_bytes = max_rows, cache_bytes
        self.device = model.lm_head.weight.device
        self.sampler = sampler or ("race" if self.device.type == "cuda" else "cdf")
        if self.sampler not in ("cdf", "race"):
            raise ValueError(f"Engine: sampler {sampler!r} is not one of 'cdf', 'race'")
        self.static = self.device.type == "cuda" if static is None else static
        self.prefill_tokens, self.tools = prefill_tokens, tools
        self.cache, self.slots, self.rope = None, None, None  # KVCache, Slots, RoPE table

    def encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=False)
        return list(prompt)

    @torch.inference_mode()
    def generate(self, prompts: list[str | list[int]], params: SamplingParams) -> list[Completion]:
        """n completions per prompt, returned prompt-major (rows i*n .. i*n+n-1 answer prompt i)."""
        return sorted(self.stream(prompts, params), key=lambda c: (c.prompt_index, c.sample_index))

    @torch.inference_mode()
    def stream(self, prompts: list[str | list[int]], params: SamplingParams) -> Iterator[Completion]:
        """The completions of `generate(prompts, params)`, yielded as they finish (finishing order),
        so that a caller can grade finished groups while the rest decode."""
        run = self._start(prompts, params)
        while run.queue or any(row is not None for row in run.rows):
            self._admit(run)
            window = self._decode_window(run)
            yield from self._finish(run, window)
            if not run.queue:
                self._compact(run)

    # The steps of a call, in order.

    def _start(self, prompts, params: SamplingParams) -> _Run:
        """Validate and tokenize, size the slots and their buffers."""
        if params.n < 1 or params.max_new_tokens < 1:
            raise ValueError("SamplingParams.n and max_new_tokens must be >= 1")
        texts = [p for p in prompts if isinstance(p, str)]
        encoded = iter(self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
        prompt_ids = [next(encoded) if isinstance(p, str) else list(p) for p in prompts]  # one tokenizer call
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("empty prompt: every prompt needs at least one token")
        # Gathered once per call, not per step; on CPU as [in, out] copies (faster decode matmuls).
        weights = self.model.decode_weights(contiguous=self.device.type == "cpu")
        # Parameters are static inputs of a captured graph already; their transposed views (and
        # adapters' effective weights) are not, and would be copied in at every replay.
        self._pin(*(t for layer in weights.layers for t in vars(layer).values() if t is not None), weights.lm_head_t)
        if not prompt_ids:
            return _Run([], params, Sampler(), 0, 0, deque(), [], [], [], weights)
        P, T, R = max(len(p) for p in prompt_ids), params.max_new_tokens, len(prompt_ids) * params.n
        if P + T > self.model.cfg.max_position_embeddings:
            raise ValueError(f"prompt ({P}) + max_new_tokens ({T}) exceeds max_position_embeddings")
        # A row may run up to check_every - 1 steps past its end before the host sees it.
        length = P + T + self.check_every
        if self.static:
            length = -(-length // 64) * 64  # a few spans, so a few graphs
        slots = R if self.max_rows is None else min(R, self.max_rows)
        if self.cache_bytes is not None:
            cfg, elem = self.model.cfg, self.model.lm_head.weight.element_size()
            per_row = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * length * elem
            slots = max(1, min(slots, self.cache_bytes // per_row))
        slots = max(slots, self.min_slots)  # a compiled step: 2 at least, even past cache_bytes
        # One spare column: a span then never equals the cache length (Dynamo would specialise
        # a compiled step on that equality and compile again when they differ).
        self._ensure_capacity(slots, length + 1, T + self.check_every)
        seed = params.seed if params.seed is not None else random.randrange(2**63)
        sampler = Sampler(params.temperature, params.top_p, params.top_k, self.sampler)
        active = self._bucket(min(slots, R), slots)
        self.slots.positions[:active] = 0  # empty slots decode garbage from column 0 on
        self.slots.steps[:active] = 0
        queue = deque((i, j) for i in range(len(prompt_ids)) for j in range(params.n))
        return _Run(prompt_ids, params, sampler, seed, length, queue, [None] * active, [0] * active, [0] * active,
                    weights)

    def _admit(self, run: _Run) -> None:
        """Fill free slots from the queue: prefill each admitted prompt once, share it with its
        samples admitted with it, and set the slots' state."""
        free = [i for i, row in enumerate(run.rows) if row is None]
        take = [run.queue.popleft() for _ in range(min(len(free), len(run.queue)))]
        if not take:
            return
        free = free[: len(take)]
        first: dict[int, int] = {}  # prompt -> the slot that is prefilled
        for slot, (p, j) in zip(free, take):
            first.setdefault(p, slot)
            run.rows[slot] = _Row(p, j, tools=tool_calls.RowTools() if self.tools is not None else None)
        # Every prompt token but the last goes into the cache; the last is the first decode input.
        self._prefill([first[p] for p in first], [run.prompt_ids[p][:-1] for p in first], [0] * len(first),
                      run.weights)
        shared = [(slot, first[p]) for slot, (p, _) in zip(free, take) if slot != first[p]]
        if shared:
            longest = max(len(run.prompt_ids[p]) for p in first)
            dst, src = (torch.tensor(x, device=self.device) for x in zip(*shared))
            self.cache.copy_rows(dst, src, longest)
        prompts = [run.prompt_ids[p] for p, _ in take]
        index = self._seat(run, free, [p[-1] for p in prompts], [len(p) - 1 for p in prompts], [0] * len(take))
        keys = row_keys(run.seed, torch.tensor([run.params.row_offset + p * run.params.n + j for p, j in take]))
        s = self.slots
        s.keys[index] = keys.to(self.device)
        if run.sampler.method == "cdf" and run.sampler.temperature != 0:
            width = s.uniforms.shape[1]
            s.uniforms[index] = step_uniforms(keys[:, None], torch.arange(width)[None]).to(self.device)

    def _seat(self, run: _Run, slots: list[int], tokens: list[int], positions: list[int], steps: list[int]):
        """Seat rows in `slots` (admitted, or resuming after tool output): next input token, position
        (= cache column), tokens sampled so far, a key bias unmasking the columns before the position;
        on the device and in `run`'s host mirrors. Returns the slots' index on the device."""
        s = self.slots
        index = torch.tensor(slots, device=self.device)
        at = torch.tensor(positions)  # [k]
        s.tokens[index] = torch.tensor(tokens, device=self.device)
        s.positions[index] = at.to(self.device)
        s.steps[index] = torch.tensor(steps, device=self.device)
        columns = torch.arange(s.key_bias.shape[-1])
        bias = torch.zeros(len(slots), len(columns)).masked_fill_(columns >= at[:, None], float("-inf"))
        s.key_bias[index] = bias[:, None, None].to(self.device)  # [k, 1, 1, max_len] over KV heads
        for i, position, step in zip(slots, positions, steps):
            run.positions[i], run.steps[i] = position, step
        return index

    def _prefill(self, slots: list[int], contexts: list[list[int]], starts: list[int], weights: DecodeWeights) -> None:
        """Write contexts[i] into slot slots[i] from column starts[i] on, in chunks: pieces of at
        most `prefill_tokens` tokens per row, rows of similar length batched while rows x width
        stays within `prefill_tokens` (no [B, P, vocab] or [B, heads, P, P] tensor at once)."""
        budget, cap = self.prefill_tokens, self.cache.max_len - 1
        order = sorted(range(len(slots)), key=lambda i: len(contexts[i]))
        longest = max((len(c) for c in contexts), default=0)
        for offset in range(0, longest, budget):  # piece k of a row runs after its piece k - 1
            items = [(slots[i], contexts[i][offset : offset + budget], starts[i] + offset)
                     for i in order if len(contexts[i]) > offset]
            batch: list = []
            for item in items + [None]:
                if batch and (item is None or (len(batch) + 1) * len(item[1]) > budget):
                    width = len(batch[-1][1])  # sorted by length: the last is the widest
                    tokens = torch.tensor([piece + [self.pad_id] * (width - len(piece)) for _, piece, _ in batch])
                    starts_t = torch.tensor([start for _, _, start in batch])
                    positions = (starts_t[:, None] + torch.arange(width)).clamp_(max=cap)  # [k, width]
                    span = max(start + len(piece) for _, piece, start in batch)
                    rows = torch.tensor([slot for slot, _, _ in batch])
                    self.model.extend(tokens.to(self.device), positions.to(self.device), rows.to(self.device), span,
                                      self.cache, weights, self.rope)
                    batch = []
                if item is not None:
                    batch.append(item)

    def _decode_window(self, run: _Run) -> int:
        """Up to `check_every` steps with no host sync, over the active slots; returns how many."""
        live = [i for i, row in enumerate(run.rows) if row is not None]
        if not live:
            return 0
        # No more steps than the live row furthest from max_new_tokens still needs.
        window = min(self.check_every, run.params.max_new_tokens - min(run.steps[i] for i in live))
        # Static: the whole span, one shape per bucket (a captured graph is replayed); otherwise
        # the columns this window can reach, faster on CPU (a compiled step has dynamic shapes).
        span, far, far_span = run.length, None, 0
        if not self.static:
            needs = [run.positions[i] + window + 1 for i in live]
            if self.compiled:  # one span for all rows: far rows would compile another graph
                span = max(needs)
            else:
                span, far_rows, far_span = _split_spans(needs, live, len(run.rows))
                if far_rows:
                    far = torch.tensor(far_rows, device=self.device)
        for _ in range(window):
            self.decode_fn(self.model, run.weights, self.cache, self.slots, self.rope, len(run.rows), span,
                           run.sampler, far, far_span)
        run.positions = [p + window for p in run.positions]
        run.steps = [t + window for t in run.steps]
        return window

    def _finish(self, run: _Run, window: int) -> list[Completion]:
        """The host check, after a window: rows that sampled EOS, reached max_new_tokens or
        completed a stop string leave their slots as Completions; free slots are parked."""
        lengths, stopped = self._find_ends(run, window)
        if self.tools is not None:
            self._call_tools(run, lengths, stopped)
        completions = []
        if lengths:
            finished = sorted(lengths)
            index, width = torch.tensor(finished, device=self.device), max(lengths.values())
            out_tokens = self.slots.out_tokens[index, :width].cpu()
            out_logprobs = self.slots.out_logprobs[index, :width].cpu()
            for k, i in enumerate(finished):
                row, n = run.rows[i], lengths[i]
                ids = out_tokens[k, :n].tolist()
                completions.append(Completion(
                    prompt_ids=run.prompt_ids[row.prompt_index],
                    ids=ids,
                    text=self.tokenizer.decode(ids, skip_special_tokens=True),
                    logprobs=out_logprobs[k, :n].clone(),
                    finish_reason="stop" if i in stopped else "length",
                    prompt_index=row.prompt_index,
                    sample_index=row.sample_index,
                ))
                if row.tools is not None:  # which tokens were tool output, how many calls (failed)
                    c = completions[-1]
                    c.sampled = tool_calls.sampled_mask(n, row.tools.spans)
                    c.tool_calls, c.tool_errors = row.tools.calls, row.tools.errors
                run.rows[i] = None
        # A free slot keeps decoding garbage until it is refilled: from column 0 again at each
        # check, so that it stays inside the span and the spare columns.
        free = [i for i, row in enumerate(run.rows) if row is None]
        if free:
            index = torch.tensor(free, device=self.device)
            self.slots.positions[index] = 0
            self.slots.steps[index] = 0
            for i in free:
                run.positions[i], run.steps[i] = 0, 0
        return completions

    def _find_ends(self, run: _Run, window: int) -> tuple[dict[int, int], set[int]]:
        """({slot: length} of the rows that end in this window, the slots among them that
        stopped on EOS or a stop string); one sync, for the window's tokens."""
        A, s, T = len(run.rows), self.slots, run.params.max_new_tokens
        live = [i for i, row in enumerate(run.rows) if row is not None]
        lengths, stopped = {}, set()
        if not live or window == 0:
            return lengths, stopped
        stops = [x for x in run.params.stop if x]
        if stops:  # every row's tokens so far (for the search), and the window's among them
            tokens = s.out_tokens[:A, : min(max(run.steps[i] for i in live), T)].cpu()
        else:
            first = torch.tensor([run.steps[i] - window for i in range(A)])[:, None] + torch.arange(window)
            block = s.out_tokens[:A].gather(1, first.clamp(min=0).to(self.device)).cpu()  # [A, window]
        eos = set(self.eos_ids)
        for i in live:
            start, end = run.steps[i] - window, min(run.steps[i], T)  # this window sampled [start, end)
            window_tokens = tokens[i, start:end].tolist() if stops else block[i, : end - start].tolist()
            hit = next((k for k, t in enumerate(window_tokens) if t in eos), None)
            if hit is not None:
                lengths[i] = end = start + hit + 1
                stopped.add(i)
            elif end == T:
                lengths[i] = T
            if stops:
                row = run.rows[i]
                cut = find_stop(self.tokenizer, tokens[i].tolist(), row.checked, end, stops)
                row.checked = end
                if cut is not None:
                    lengths[i] = cut
                    stopped.add(i)
        return lengths, stopped

    def _call_tools(self, run: _Run, lengths: dict[int, int], stopped: set[int]) -> None:
        """Rows that closed a tool call before they ended (`lengths`, `stopped`: `_find_ends`):
        run the calls, write each output after its call, resume the row after it (or end it
        there when the output fills max_new_tokens). See the module docstring."""
        T, s = run.params.max_new_tokens, self.slots
        live = [i for i, row in enumerate(run.rows) if row is not None]
        upto = {i: min(run.steps[i], T) for i in live}
        tokens = s.out_tokens[: len(run.rows), : max(upto.values(), default=0)].cpu()  # one sync
        calls = {}
        for i in live:
            found = tool_calls.next_call(self.tokenizer, self.tools, run.rows[i].tools, tokens[i].tolist(), upto[i])
            # Run it unless the row ended first (EOS or a stop string) or no token is left after it.
            if found is not None and found[0] < T and not (i in stopped and lengths[i] <= found[0]):
                calls[i] = found
        if not calls:
            return
        results = tool_calls.run_calls(self.tools, [code for _, code in calls.values()])
        resume = []  # (slot, cut, output ids)
        for (i, (cut, _)), result in zip(calls.items(), results):
            ids = tool_calls.output_ids(self.tokenizer, self.tools, result, T - cut)
            tool_calls.splice(run.rows[i].tools, cut, len(ids), result)
            s.out_tokens[i, cut : cut + len(ids)] = torch.tensor(ids, dtype=torch.long, device=self.device)
            s.out_logprobs[i, cut : cut + len(ids)] = 0.0
            lengths.pop(i, None)
            stopped.discard(i)
            if cut + len(ids) >= T:
                lengths[i] = T  # no room left to sample: the row ends on its tool output
            else:
                resume.append((i, cut, ids))
        if not resume:
            return
        # From the call's last token (in the cache only if the window went past it) on: all but
        # the last token go into the cache; the last is the next decode input.
        starts = [len(run.prompt_ids[run.rows[i].prompt_index]) + cut - 1 for i, cut, _ in resume]
        pieces = [[int(tokens[i, cut - 1])] + ids for i, cut, ids in resume]
        self._prefill([i for i, _, _ in resume], [p[:-1] for p in pieces], starts, run.weights)
        self._seat(run, [i for i, _, _ in resume], [p[-1] for p in pieces],
                   [start + len(p) - 1 for start, p in zip(starts, pieces)], [cut + len(ids) for _, cut, ids in resume])
        for i, cut, ids in resume:
            run.rows[i].checked = cut + len(ids)  # stop strings: the output is not searched

    def _compact(self, run: _Run) -> None:
        """With the queue empty, pack live rows into fewer slots (moving rows from the end into
        free slots at the front), so that finished rows stop costing steps."""
        live = [i for i, row in enumerate(run.rows) if row is not None]
        A = len(run.rows)
        if not live or (not self.static and len(live) > A * 7 // 8):
            return
        target = self._bucket(len(live), A)
        if target >= A:
            return
        movers = [i for i in live if i >= target]
        holes = [i for i in range(target) if run.rows[i] is None][: len(movers)]
        if movers:
            dst, src = torch.tensor(holes, device=self.device), torch.tensor(movers, device=self.device)
            self.cache.copy_rows(dst, src, max(run.positions[i] for i in movers) + 1)
            s = self.slots
            for t in (s.tokens, s.positions, s.steps, s.keys, s.key_bias, s.uniforms, s.out_tokens, s.out_logprobs):
                t[dst] = t[src]
            for h, m in zip(holes, movers):
                run.rows[h], run.positions[h], run.steps[h] = run.rows[m], run.positions[m], run.steps[m]
        del run.rows[target:], run.positions[target:], run.steps[target:]

    # Memory.

    def _bucket(self, rows: int, capacity: int) -> int:
        """Slots to decode `rows` rows with: exactly `rows` (at least `min_slots`, within capacity);
        static, the next power of two from 16 up, within capacity, so that only a few slot counts
        (CUDA graphs) ever occur."""
        if not self.static:
            return min(max(rows, self.min_slots), capacity)
        bucket = 16
        while bucket < rows:
            bucket *= 2
        return min(bucket, capacity)

    def _ensure_capacity(self, rows: int, length: int, width: int) -> None:
        """(Re)allocate the cache and slot state when a call needs more rows, columns or sampled
        tokens per row; kept across calls otherwise (fixed addresses)."""
        c, s, cfg = self.cache, self.slots, self.model.cfg
        device, dtype = self.device, self.model.lm_head.weight.dtype
        if c is None or c.rows < rows or c.max_len < length:
            rows, length = max(rows, c.rows if c else 0), max(length, c.max_len if c else 0)
            self.cache = c = KVCache(cfg, rows, length, device, dtype)
            self.rope = rope_table(self.model.inv_freq, length, dtype)
            s = None
            self._pin(*c.k, *c.v, self.rope)
        if s is None or s.out_tokens.shape[1] < width:
            width = max(width, s.out_tokens.shape[1] if s else 0)
            S, L = c.rows, c.max_len

            def zeros(*shape, dtype=torch.long):
                return torch.zeros(shape, dtype=dtype, device=device)

            self.slots = s = Slots(
                tokens=zeros(S), positions=zeros(S), steps=zeros(S), keys=zeros(S),
                key_bias=zeros(S, cfg.num_kv_heads, 1, L, dtype=torch.float32),
                uniforms=zeros(S, width, dtype=torch.float64), out_tokens=zeros(S, width),
                out_logprobs=zeros(S, width, dtype=torch.float32),
            )
            self._pin(*vars(s).values())

    def release(self) -> None:
        """Drop the cache and slots (remade by the next call; kept with static shapes: graphs hold them)."""
        if not self.static:
            self.cache = self.slots = self.rope = None

    def _pin(self, *tensors: torch.Tensor) -> None:
        """On CUDA, mark tensors that a captured graph reads or writes in place as static inputs,
        so that replays use them where they are instead of copying them in (and mutating them
        is allowed). Parameters are static already."""
        if self.device.type == "cuda":
            import torch._dynamo

            for t in tensors:
                torch._dynamo.mark_static_address(t)
