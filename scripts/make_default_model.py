"""Regenerate pillion/assets/tiny-arith: the tiny SFT-warmed model behind `pillion train`.

    python scripts/make_default_model.py [--steps 800]     # about 3-6 minutes on 2 CPU cores

A fresh random qwen2-shaped model (hidden 128, 4 layers, byte tokenizer; pillion/model/tiny.py)
is fine-tuned with `pillion sft` on the synthetic arithmetic curriculum (levels 1-2) and copied
into the package. Deterministic for a given seed on the same hardware.

The warm-up data mixes two answer styles, as SFT corpora collected from several sources do:
half the worked solutions end in `\\boxed{N}`, half in `The answer is N.` (chosen by a hash
of the question). The default RL run then grades with the boxed style only (the prompt
format's contract, `reward.answer_style=boxed`), so RL has two things to learn: to answer in
the verifiable format, and to be right more often (sharpening the sampled distribution).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from pillion import config as C
from pillion.data import synthetic
from pillion.train.sft import sft

ASSET = Path(__file__).resolve().parent.parent / "pillion" / "assets" / "tiny-arith"


def mixed_style(problem) -> dict:
    """The problem as a generic row, its solution's final line in one of two styles."""
    solution = problem.solution
    if hashlib.sha256(problem.question.encode()).digest()[0] % 2:
        solution = solution.replace(f". \\boxed{{{problem.answer}}}", f". The answer is {problem.answer}.")
    return {"id": problem.id, "question": problem.question, "answer": problem.answer, "solution": solution,
            "level": problem.level, "source": "synthetic"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ASSET)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "sft.jsonl"
        problems = synthetic.generate(20000, levels=(1, 2), seed=args.seed)
        data.write_text("".join(json.dumps(mixed_style(p)) + "\n" for p in problems))
        cfg = C.resolve(C.SFTConfig, overrides=[
            "init=tiny", f"steps={args.steps}", f"seed={args.seed}", "lr=3e-3", "batch_size=64", f"out={tmp}/run",
            f"data.sources={{arith: '{data}'}}", "data.heldout=synthetic:1,2", "data.heldout_size=200",
        ], preset_key=None)
        report = sft(cfg)
        shutil.rmtree(args.out, ignore_errors=True)
        shutil.copytree(Path(tmp) / "run" / "final", args.out)
    print(f"wrote {args.out} (held-out pass@1 after SFT, any answer style: {report['pass@1']:.3f})")


if __name__ == "__main__":
    main()
