"""`pillion export CHECKPOINT OUT [--merge] [--dtype D]`: write a plain Hugging Face folder.

    pillion export runs/grpo/checkpoints/step-000100 out/merged --merge    # LoRA -> full weights
    pillion export runs/grpo/checkpoints/step-000100 out/bf16 --dtype bfloat16

A LoRA checkpoint is a PEFT adapter folder (adapter_config.json + adapter_model.safetensors on a
base named inside); `--merge` folds each adapter into its base weight (W + alpha/r * B A, in
float32, rounded once to the output dtype) and writes full weights that `transformers` loads
without `peft`. A full checkpoint is rewritten as is, optionally in another dtype.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a model folder or a PEFT adapter folder (e.g. a run's checkpoint)")
    p.add_argument("out", help="the Hugging Face folder to write")
    p.add_argument("--merge", action="store_true", help="fold LoRA adapters into the base weights")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the written weights (default: as loaded)")


def run(args) -> int:
    from pillion.model import lora
    from pillion.model.checkpoint import load_model, resolve_model, save_model
    from pillion.model.hf_config import CheckpointError

    try:
        folder = resolve_model(args.checkpoint)
        model = load_model(folder, dtype=args.dtype)
    except CheckpointError as e:
        print(f"pillion export: {e}", file=sys.stderr)
        return 2
    if lora.has_adapters(model):
        if not args.merge:
            print(f"pillion export: {folder} holds LoRA adapters; pass --merge to write full weights",
                  file=sys.stderr)
            return 2
        lora.merge(model)
    save_model(model, Path(args.out), source=folder)
    print(f"wrote {args.out}")
    return 0
