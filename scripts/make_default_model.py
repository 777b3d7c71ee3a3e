"""Regenerate pillion/assets/tiny-arith: the tiny SFT-warmed model behind `pillion train`.

    python scripts/make_default_model.py [--steps 1000]     # about 5-8 minutes on 2 CPU cores
    python scripts/make_default_model.py --boxed-share 0.4 --check-share 0.6 \
        --out pillion/assets/tiny-arith-verbose              # the verbose sibling (`model=verbose`)

A fresh random qwen2-shaped model (hidden 128, 4 layers, byte tokenizer; pillion/model/tiny.py)
is fine-tuned with `pillion sft` on the synthetic arithmetic curriculum (levels 1-2) and the
synthetic code curriculum (levels 1-2: one-line functions, pillion/data/synthetic_code.py),
in the ratio --code-share, and copied into the package. Deterministic for a given seed on the
same hardware. The default run (`pillion train`) trains on arithmetic; `algo=srpo` on
arithmetic, then arithmetic and code.

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

import torch

from pillion import config as C
from pillion.data import synthetic, synthetic_code
from pillion.eval.evaluate import evaluate
from pillion.eval.samples import EvalConfig
from pillion.model.checkpoint import load_model
from pillion.model.tokenizer import eos_token_ids, load_tokenizer
from pillion.rollout.engine import Engine
from pillion.train.sft import sft

ASSET = Path(__file__).resolve().parent.parent / "pillion" / "assets" / "tiny-arith"


def mixed_style(problem, boxed_share: float | None = None, check_share: float = 0.0) -> dict:
    """The problem as a generic row, its solution's final line in one of two styles: `\\boxed{N}`
    or `The answer is N.` (by the parity of a hash byte, as shipped; or `\\boxed{N}` in
    `boxed_share` of rows), and in `check_share` of rows (another byte) a redundant self-check
    after the answer, `... \\boxed{29} Let me check: 29 is right.` (0 in the shipped model)."""
    digest = hashlib.sha256(problem.question.encode()).digest()
    solution = problem.solution
    if digest[0] % 2 if boxed_share is None else digest[0] >= boxed_share * 256:
        solution = solution.replace(f". \\boxed{{{problem.answer}}}", f". The answer is {problem.answer}.")
    if digest[1] < check_share * 256:
        solution += f" Let me check: {problem.answer} is right."
    return {"id": problem.id, "question": problem.question, "answer": problem.answer, "solution": solution,
            "level": problem.level, "source": "synthetic"}


def mixed_code_style(problem) -> dict:
    """A code problem as a generic row, its solution fenced or bare by a hash of the question."""
    solution = problem.solution
    if hashlib.sha256(problem.question.encode()).digest()[0] % 2:
        solution = solution.removeprefix("```python\n").removesuffix("\n```")
    return {"id": problem.id, "question": problem.question, "answer": "", "solution": solution,
            "level": problem.level, "source": "synthetic_code", "kind": "code", "tests": problem.tests}


def code_pass1(model_dir: Path, n: int = 200) -> float:
    """Held-out pass@1 of the model on `n` synthetic code problems (levels 1-2)."""
    tokenizer = load_tokenizer(model_dir)
    engine = Engine(load_model(model_dir, dtype=torch.float32).eval(), tokenizer, eos_token_ids(model_dir, tokenizer))
    problems = synthetic_code.generate(n, levels=(1, 2), split="test")
    return evaluate(engine, problems, EvalConfig(max_new_tokens=64), template="qa", progress=False)["pass@1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--code-share", type=float, default=0.3, help="share of code problems in the SFT batches")
    ap.add_argument("--boxed-share", type=float, default=None,
                    help="share of arithmetic solutions ending in \\boxed{} (default: half, by hash parity)")
    ap.add_argument("--check-share", type=float, default=0.0,
                    help="share ending in a redundant self-check (docs/algorithms.md §11: 0.6 with --boxed-share 0.4 "
                         "gives a model whose concise phase cuts length by 30%%)")
    ap.add_argument("--out", type=Path, default=ASSET)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        arith, code = Path(tmp) / "arith.jsonl", Path(tmp) / "code.jsonl"
        problems = synthetic.generate(20000, levels=(1, 2), seed=args.seed)
        arith.write_text("".join(json.dumps(mixed_style(p, args.boxed_share, args.check_share)) + "\n"
                                 for p in problems))
        code_problems = synthetic_code.generate(10000, levels=(1, 2), seed=args.seed)
        code.write_text("".join(json.dumps(mixed_code_style(p)) + "\n" for p in code_problems))
        weights = {"arith": 1 - args.code_share, "code": args.code_share}
        cfg = C.resolve(C.SFTConfig, overrides=[
            "init=tiny", f"steps={args.steps}", f"seed={args.seed}", "lr=3e-3", "batch_size=64", f"out={tmp}/run",
            f"data.sources={{arith: '{arith}', code: '{code}'}}", f"data.weights={json.dumps(weights)}",
            "data.heldout=synthetic:1,2", "data.heldout_size=200",
        ], preset_key=None)
        report = sft(cfg)
        code_score = code_pass1(Path(tmp) / "run" / "final")
        shutil.rmtree(args.out, ignore_errors=True)
        shutil.copytree(Path(tmp) / "run" / "final", args.out)
    print(f"wrote {args.out} (held-out pass@1 after SFT, any answer style: arithmetic {report['pass@1']:.3f}, "
          f"code {code_score:.3f})")


if __name__ == "__main__":
    main()
