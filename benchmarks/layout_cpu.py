"""The trainer's forwards of one README step, this tree beside an earlier commit's, on CPU.

    python benchmarks/layout_cpu.py                      # against c47a756, 15 repeats
    python benchmarks/layout_cpu.py --previous HEAD~3 --repeats 30 --threads 1

The workload is the README job's first step (`pillion train` defaults: the shipped tiny model,
32 prompts x 8 samples, two micro-batches of 128 rows), rolled out once here, and the trainer's
work on it: per micro-batch the reference's no-grad forward and the policy's forward and
backward (log-probs and entropy, with the shared-prompt packed forward). This tree builds one
packed layout per micro-batch and both forwards read it (model/sequences.py `packed_layout`);
the previous commit, loaded from git history beside this one (its `pillion` package as
`previous_pillion`), builds its layout inside every forward. Each repeat runs both, in
alternating order, so that a slow moment of a shared machine hits both; printed: the median
wall seconds of each, the median of the per-repeat differences, and the layout's host time
alone for one micro-batch (this tree). Values are checked equal first. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def load_previous(ref: str):
    """The `pillion` package at git commit `ref`, importable as `previous_pillion`; None without git."""
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "pillion"], capture_output=True,
                                 check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    out = Path(tempfile.mkdtemp())
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(out, filter="data")
    (out / "pillion").rename(out / "previous_pillion")
    for f in (out / "previous_pillion").rglob("*.py"):
        f.write_text(re.sub(r"\b(from|import) pillion\b", r"\1 previous_pillion", f.read_text()))
    sys.path.insert(0, str(out))
    return importlib.import_module("previous_pillion")


def readme_batch():
    """The README job's first-step rows (`pillion train` defaults), rolled out with the shipped model."""
    from pillion import config as C
    from pillion import ranks
    from pillion.model.checkpoint import load_model, resolve_model
    from pillion.model.tokenizer import eos_token_ids, load_tokenizer
    from pillion.rewards import GradingPool
    from pillion.rollout.engine import Engine
    from pillion.train import rl
    from pillion.train.batch import make_batch
    from pillion.train.collect import prompt_batches, rollout

    cfg = C.resolve(C.TrainConfig, overrides=[])
    folder = resolve_model(cfg.model)
    model, tokenizer = load_model(folder), load_tokenizer(folder)
    engine = Engine(model, tokenizer, eos_token_ids(folder, tokenizer))
    _, mixture, *_ = rl.build_data(cfg, tokenizer, model.cfg.max_position_embeddings)
    grader = GradingPool(workers=cfg.grading_workers, timeout=cfg.reward.timeout)
    try:
        ro = rollout(engine, prompt_batches(mixture, cfg.prompts_per_step), cfg, 0, grader, ranks.World())
    finally:
        grader.close()
    return cfg, folder, make_batch(ro.samples, engine.pad_id, "cpu").seqs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--previous", default="c47a756", help="the git commit to compare with")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the README job's default: 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    previous = load_previous(args.previous)
    if previous is None:
        raise SystemExit(f"cannot load commit {args.previous} from git history")
    from previous_pillion.model import checkpoint as old_checkpoint
    from previous_pillion.model import sequences as old_sequences

    from pillion.model.checkpoint import load_model
    from pillion.model.sequences import packed_layout, packed_logprobs

    cfg, folder, seqs = readme_batch()
    B = seqs.input_ids.shape[0]
    rows = [torch.arange(i, min(i + cfg.micro_batch, B)) for i in range(0, B, cfg.micro_batch)]
    print(f"README step: {B} rows, {int(seqs.attention_mask.sum())} real tokens, micro-batches of "
          f"{[len(r) for r in rows]} rows; {args.threads} thread(s); previous = {args.previous}")
    new_policy, new_ref = load_model(folder), load_model(folder).eval().requires_grad_(False)
    old_policy, old_ref = (old_checkpoint.load_model(folder) for _ in range(2))
    old_ref.eval().requires_grad_(False)
    parts = [seqs.rows(r) for r in rows]
    old_parts = [old_sequences.SequenceBatch(s.input_ids, s.attention_mask, s.response_mask, s.prompt_len)
                 for s in parts]
    T = cfg.temperature

    def new_step():
        out = []
        for s in parts:
            layout = packed_layout(s, cfg.share_prompts)  # once, for both forwards
            with torch.no_grad():
                ref = packed_logprobs(new_ref, layout, T)[0]
            logp, entropy = packed_logprobs(new_policy, layout, T, with_entropy=True)
            (logp.sum() + entropy.sum()).backward()
            out.append((ref, logp.detach(), entropy.detach()))
        return out

    def old_step():
        out = []
        for s in old_parts:
            with torch.no_grad():
                ref = old_sequences.response_logprobs(old_ref, s, T, share_prompts=cfg.share_prompts)[0]
            logp, entropy = old_sequences.response_logprobs(old_policy, s, T, with_entropy=True,
                                                            share_prompts=cfg.share_prompts)
            (logp.sum() + entropy.sum()).backward()
            out.append((ref, logp.detach(), entropy.detach()))
        return out

    same = all(torch.equal(a, b) for x, y in zip(new_step(), old_step()) for a, b in zip(x, y))
    grads = all(torch.equal(a.grad, b.grad) for a, b in zip(new_policy.parameters(), old_policy.parameters()))
    print(f"values {'bitwise equal' if same else 'DIFFERENT'}, gradients {'bitwise equal' if grads else 'DIFFERENT'}")
    times: dict[str, list[float]] = {"previous": [], "this tree": []}
    for k in range(args.repeats):
        order = [("previous", old_step), ("this tree", new_step)]
        for name, fn in order if k % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    layout_ms = []
    for _ in range(50):
        start = time.perf_counter()
        packed_layout(parts[0], cfg.share_prompts)
        layout_ms.append(1e3 * (time.perf_counter() - start))
    old_s, new_s = (statistics.median(times[n]) for n in ("previous", "this tree"))
    saved = statistics.median(a - b for a, b in zip(times["previous"], times["this tree"]))
    print(f"median seconds per step's trainer forwards: previous {old_s:.4f}, this tree {new_s:.4f} "
          f"(ratio {old_s / new_s:.3f}); median per-repeat saving {1e3 * saved:.1f} ms")
    print(f"one micro-batch's layout ({len(parts[0].input_ids)} rows), host time: median "
          f"{statistics.median(layout_ms):.2f} ms")


if __name__ == "__main__":
    main()
