"""KV-cache generation engine: batched prompts, n samples each, per-token log-probabilities.

    engine = Engine(model, tokenizer, eos_ids)
    completions = engine.generate(prompts, SamplingParams(n=4, temperature=1.0, max_new_tokens=256))

Shape of the work (shared/STYLE.md rule 12):
- prompts of different lengths are left-padded to one length P, so every row writes its next
  key at the same cache index and a decode step has one static shape;
- each prompt is prefilled once; its cache rows are then copied to its n sample rows;
- the KV cache is preallocated and reused across calls (`KVCache`);
- sampling inverts the CDF with one uniform draw per row (`searchsorted`), so choosing a token
  needs no host synchronisation (and on CPU it is ~10x cheaper than torch.multinomial or an
  exponential race); finished rows keep decoding in place until the host checks (every
  `check_every` steps) whether all rows are done or a stop string has appeared;
- per-call constants (RoPE table, additive key mask) are built once, not per step or layer;
- at each host check, rows that finished are dropped from the batch (their cache rows
  compacted away), so RL rollouts of mixed lengths stop paying for finished samples;
- the decode step is `Transformer.decode`, the model's one-token path, written for few calls
  per step (at rollout batch sizes on CPU a step costs mostly per-call overhead); it is wrapped
  as a plain function of tensors (`decode_step`) that callers may replace by a compiled version
  (`Engine(..., decode_fn=compiled_decode_step())`); nothing is swapped in through globals.

`python benchmarks/rollout_cpu.py` times this engine against `transformers` `generate` on CPU.

Log-probabilities are those of the sampled tokens under the policy as shared/ALGORITHMS.md §1
defines it: log_softmax(logits / temperature), before top-k / top-p truncation, in float32
(temperature 0 means greedy decoding and reports log_softmax(logits)). Train with top_p=1 and
top_k=0 so that the behaviour policy is the policy being scored (§13.1).

A completion's `ids` end with the EOS token when it stopped on EOS, or with the token that
completed a stop string; `text` is the decoding of `ids` without special tokens, so for a stop
string it includes the stop string itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pillion.model.transformer import KVCache, Transformer, causal_padding_mask, padding_positions, rope_tables


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k truncation
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Completion:
    prompt_ids: list[int]
    ids: list[int]
    text: str
    logprobs: torch.Tensor  # [len(ids)] float32, log-probs of the sampled tokens
    finish_reason: str  # "stop" (EOS or a stop string) | "length"
    prompt_index: int = 0  # which prompt of the call this sample answers


def sample_tokens(logits: torch.Tensor, params: SamplingParams, uniform: torch.Tensor):
    """Pick one token per row of float32 logits [R, V]; return (tokens [R], logprobs [R]).

    uniform: float64 [R, 1] in [0, 1), one draw per row (the caller draws them, so that a row's
    randomness does not depend on which other rows are still in the batch).

    No host synchronisation: top-k/top-p are masks, and the draw inverts the CDF: with
    u ~ U(0, 1) scaled to the row's total mass, the token is the first index whose cumulative
    probability exceeds u, i.e. index i with probability p_i (zero-probability tokens never
    qualify because the CDF does not rise at them). float64 keeps the CDF exact enough.
    """
    if params.temperature == 0:
        tokens = logits.argmax(-1)
        return tokens, F.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
    scaled = logits / params.temperature if params.temperature != 1.0 else logits
    logprobs = F.log_softmax(scaled, -1)  # [R, V] the policy distribution
    filtered = scaled
    if params.top_k > 0:
        kth = torch.topk(filtered, min(params.top_k, filtered.shape[-1]), dim=-1).values[:, -1:]
        filtered = filtered.masked_fill(filtered < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(filtered, descending=True, dim=-1)
        sorted_probs = sorted_logits.softmax(-1)
        # Drop a token when the mass strictly before it already reaches top_p (keeps >= 1 token).
        drop = (sorted_probs.cumsum(-1) - sorted_probs) >= params.top_p
        filtered = filtered.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logprobs.exp() if filtered is scaled else filtered.softmax(-1)  # [R, V]
    cdf = probs.cumsum(-1, dtype=torch.float64)
    tokens = torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True).clamp_(max=cdf.shape[-1] - 1)  # [R, 1]
    return tokens.view(-1), logprobs.gather(-1, tokens).view(-1)


def decode_step(model: Transformer, tokens, cos, sin, key_bias, cache: KVCache, pos: int, weights=None):
    """One incremental forward (`Transformer.decode`): tokens [A] at cache index `pos` ->
    float32 logits [A, V]. A plain function of tensors, so that it can be compiled."""
    return model.decode(tokens, cos, sin, key_bias, cache, pos, weights)


def compiled_decode_step(mode: str | None = None):
    """`decode_step` compiled once for all batch sizes and cache lengths (dynamic shapes).

    On CPU this fuses the step's elementwise work into a few kernels (the matmuls stay library
    calls), after a compile of ~15 s. The generated wrapper's per-call size and alignment
    asserts are off: at rollout batch sizes they cost ~8% of a step, and Dynamo's guards
    already check the same inputs. mode="reduce-overhead" adds CUDA graphs on CUDA. Pass the
    result as `Engine(..., decode_fn=compiled_decode_step())`.
    """
    options = {"size_asserts": False, "alignment_asserts": False, "scalar_asserts": False}
    if mode == "reduce-overhead":
        options["triton.cudagraphs"] = True
    elif mode is not None:
        raise ValueError(f"compiled_decode_step: mode {mode!r} is not supported (None or 'reduce-overhead')")
    return torch.compile(decode_step, dynamic=True, options=options)


class Engine:
    """Holds a model, its tokenizer and a reusable KV cache; `generate` is the whole API."""

    def __init__(self, model: Transformer, tokenizer, eos_ids: list[int], decode_fn=decode_step, check_every: int = 8):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = list(eos_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.decode_fn = decode_fn
        self.check_every = check_every
        self.cache: KVCache | None = None

    def _cache_for(self, rows: int, length: int) -> KVCache:
        c = self.cache
        if c is None or c.batch < rows or c.max_len < length:
            p = self.model.lm_head.weight
            rows = max(rows, c.batch if c else 0)
            length = max(length, c.max_len if c else 0)
            self.cache = KVCache(self.model.cfg, rows, length, p.device, p.dtype)
        return self.cache

    def encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=False)
        return list(prompt)

    @torch.inference_mode()
    def generate(self, prompts: list[str | list[int]], params: SamplingParams) -> list[Completion]:
        """n completions per prompt, returned prompt-major (rows i*n .. i*n+n-1 answer prompt i)."""
        if params.n < 1 or params.max_new_tokens < 1:
            raise ValueError("SamplingParams.n and max_new_tokens must be >= 1")
        texts = [p for p in prompts if isinstance(p, str)]
        encoded = iter(self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
        prompt_ids = [next(encoded) if isinstance(p, str) else list(p) for p in prompts]  # one tokenizer call
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("empty prompt: every prompt needs at least one token")
        device = self.model.lm_head.weight.device
        B, n, T = len(prompt_ids), params.n, params.max_new_tokens
        P, R = max(len(p) for p in prompt_ids), B * params.n
        if P + T > self.model.cfg.max_position_embeddings:
            raise ValueError(f"prompt ({P}) + max_new_tokens ({T}) exceeds max_position_embeddings")
        seed = params.seed if params.seed is not None else random.randrange(2**63)
        generator = torch.Generator(device=device).manual_seed(seed)
        cache = self._cache_for(R, P + T)

        # Prefill the B distinct prompts once, left-padded to P.
        ids = torch.full((B, P), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, P), dtype=torch.long)
        for i, p in enumerate(prompt_ids):
            ids[i, P - len(p) :] = torch.tensor(p)
            attn[i, P - len(p) :] = 1
        ids, attn = ids.to(device), attn.to(device)
        hidden = self.model(ids, padding_positions(attn), causal_padding_mask(attn), cache, 0)
        logits = self.model.logits(hidden[:, -1])  # [B, V]

        # Share each prompt's cache rows with its n samples.
        rows = torch.arange(B, device=device).repeat_interleave(n)  # [R]
        cache.expand_rows(rows, P)
        logits = logits[rows]  # [R, V]
        # Additive float32 key bias, one row per (row, KV head) as `Transformer.decode` takes it:
        # -inf on prompt padding. Built once, with the RoPE table.
        kv = self.model.cfg.num_kv_heads
        key_bias = torch.zeros((R, kv, 1, P + T), dtype=torch.float32, device=device)
        key_bias[:, :, 0, :P].masked_fill_((attn[rows] == 0)[:, None], float("-inf"))
        key_bias = key_bias.view(R * kv, 1, P + T)
        dtype = self.model.lm_head.weight.dtype
        cos_table, sin_table = rope_tables(self.model.inv_freq, torch.arange(P + T, device=device), dtype)
        next_pos = attn[rows].sum(-1)  # [R] RoPE position of the first generated token

        eos = torch.tensor(self.eos_ids, device=device)
        weights = self.model.decode_weights()  # gathered once per call, not per step
        # Rows still decoding ("active") are packed at the front of the cache; `active` maps
        # them to result rows. A step only samples and decodes: the samples of a check window
        # are written back, searched for EOS and stop strings, and finished rows dropped from
        # the batch, once per window (one host sync per `check_every` steps).
        active = torch.arange(R, device=device)  # [A] result row of each active row
        out_tokens = torch.full((R, T), self.pad_id, dtype=torch.long, device=device)
        out_logprobs = torch.zeros((R, T), dtype=torch.float32, device=device)
        lengths = torch.full((R,), T, dtype=torch.long, device=device)  # T until a row stops
        finished = torch.zeros(R, dtype=torch.bool, device=device)
        # Each row's RoPE rows for all T steps, gathered once: [R, T, 1, D].
        ahead = next_pos[:, None] + torch.arange(T, device=device)  # [R, T]
        cos_rows, sin_rows = cos_table[ahead][:, :, None], sin_table[ahead][:, :, None]
        stop_texts = [s for s in params.stop if s]
        checked = [0] * R  # tokens of each row already searched for stop strings
        window_tokens, window_logprobs, window_start = [], [], 0
        for t in range(T):
            if t == window_start:
                # One uniform per result row and step, whatever rows are still active, drawn
                # for the whole window at once (the same numbers as one draw per step).
                draws = torch.rand((min(self.check_every, T - t), R), generator=generator, device=device,
                                   dtype=torch.float64).t()  # [R, w]
                window_uniform = draws if len(active) == R else draws[active]
            tokens, logprobs = sample_tokens(logits, params, window_uniform[:, t - window_start, None])  # [A]
            window_tokens.append(tokens)
            window_logprobs.append(logprobs)
            steps = t + 1
            if steps % self.check_every == 0 or steps == T:
                block = torch.stack(window_tokens, 1)  # [A, w]
                out_tokens[active, window_start:steps] = block
                out_logprobs[active, window_start:steps] = torch.stack(window_logprobs, 1)
                # The first EOS in the window ends a row that was still running.
                hit = torch.isin(block, eos) & ~finished[active][:, None]  # [A, w]
                stopped = hit.any(1)
                first = window_start + 1 + hit.to(torch.int8).argmax(1)  # [A] length if stopped
                lengths[active] = torch.where(stopped, first, lengths[active])
                finished[active] = finished[active] | stopped
                window_tokens, window_logprobs, window_start = [], [], steps
                if stop_texts:
                    finished, lengths = self._find_stops(out_tokens, finished, lengths, steps, stop_texts, checked)
                keep = (~finished[active]).nonzero().squeeze(1)  # [A'] host sync, once per window
                if len(keep) == 0 or steps == T:
                    break
                if len(keep) <= len(active) * 7 // 8:  # drop finished rows from the batch
                    cache.keep_rows(keep, P + steps)
                    active, tokens = active[keep], tokens[keep]
                    key_bias = key_bias.view(-1, kv, 1, P + T)[keep].view(-1, 1, P + T)
                    cos_rows, sin_rows = cos_rows[keep], sin_rows[keep]
            logits = self.decode_fn(self.model, tokens, cos_rows[:, t], sin_rows[:, t], key_bias[..., : P + steps],
                                    cache, P + t, weights)

        out_tokens, out_logprobs = out_tokens.cpu(), out_logprobs.cpu()
        lengths, finished = lengths.cpu().tolist(), finished.cpu().tolist()
        completions = []
        for r in range(R):
            L = lengths[r]
            row_ids = out_tokens[r, :L].tolist()
            completions.append(
                Completion(
                    prompt_ids=prompt_ids[r // n],
                    ids=row_ids,
                    text=self.tokenizer.decode(row_ids, skip_special_tokens=True),
                    logprobs=out_logprobs[r, :L].clone(),
                    finish_reason="stop" if finished[r] else "length",
                    prompt_index=r // n,
                )
            )
        return completions

    def _find_stops(self, out_tokens, finished, lengths, steps, stop_texts, checked):
        """Host-side stop-string search over the tokens generated since the last check."""
        tokens = out_tokens[:, :steps].cpu()
        done = finished.cpu().tolist()
        new_lengths = lengths.cpu()
        # Look back far enough to catch a stop string split across the previous check.
        lookback = max(len(s.encode()) for s in stop_texts)
        for r in range(len(done)):
            # A row that stopped on EOS since the last check may still hold an earlier stop string.
            upto = min(steps, int(new_lengths[r])) if done[r] else steps
            if upto <= checked[r]:
                continue
            start = max(0, checked[r] - lookback)
            row = tokens[r].tolist()
            if any(s in self.tokenizer.decode(row[start:upto]) for s in stop_texts):
                # The shortest prefix whose text contains a stop string ends the completion.
                for end in range(checked[r] + 1, upto + 1):
                    if any(s in self.tokenizer.decode(row[start:end]) for s in stop_texts):
                        new_lengths[r] = end
                        done[r] = True
                        break
            checked[r] = upto
        device = finished.device
        return torch.tensor(done, device=device), new_lengths.to(device)
