"""`pillion export CHECKPOINT OUT [--merge] [--dtype D] [--overwrite]`: write a plain Hugging Face folder.

    pillion export runs/grpo/checkpoints/step-000100 out/merged --merge    # LoRA -> full weights
    pillion export runs/grpo/checkpoints/step-000100 out/bf16 --dtype bfloat16
    pillion export runs/grpo out/final --merge                             # a run's newest checkpoint

A LoRA checkpoint is a PEFT adapter folder (adapter_config.json + adapter_model.safetensors on a
base named inside); `--merge` folds each adapter into its base weight (W + alpha/r * B A, in
float32, rounded once to the output dtype) and writes full weights that `transformers` loads
without `peft`. A full checkpoint is rewritten as is, optionally in another dtype. CHECKPOINT
may be anything `pillion train model=` takes (a run folder, a Hub id too).

OUT is never the checkpoint itself, a folder inside it or holding it, nor the base model of a
LoRA checkpoint; an existing OUT is replaced only with --overwrite. The folder is written as a
checkpoint is: into `OUT.tmp`, then renamed, so a failed export (a full disk) leaves OUT as it
was. The run's template record (pillion.json: prompt template and answer style) goes with the
weights, so that `pillion eval --model OUT` evaluates the model as its run did.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from pillion.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__
    p.add_argument("checkpoint", help="a model folder, a PEFT adapter folder (a run's checkpoint), a run folder or "
                                      "a Hub id")
    p.add_argument("out", help="the Hugging Face folder to write (a new folder, unless --overwrite)")
    p.add_argument("--merge", action="store_true", help="fold LoRA adapters into the base weights")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the written weights (default: as loaded)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it exists")


def _overlaps(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def check_target(out: Path, folder: Path, overwrite: bool) -> None:
    """Refuse an OUT that would destroy the model it is made from, or another folder unasked."""
    from pillion.files import check_writable
    from pillion.model import adapters

    sources = [folder]
    if adapters.is_adapter_folder(folder):
        sources.append(adapters.base_folder(adapters.read_adapter_config(folder)))
    for source in sources:
        if not _overlaps(out, source):
            continue
        what = "the checkpoint" if source == folder else f"the base model of {folder}"
        if out.resolve() == source.resolve():
            raise UserError(f"{out} is {what}, which an export never overwrites; export into another folder")
        where = "lies inside" if source.resolve() in out.resolve().parents else "holds"
        raise UserError(f"{out} {where} {what} ({source}), which an export never overwrites; export into another "
                        "folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(f"{out} already exists; choose another folder, or pass --overwrite to replace it")
    check_writable(out, "the output folder")


def run(args) -> int:
    from pillion.files import writing
    from pillion.model import lora
    from pillion.model.checkpoint import load_model, read_recipe, resolve_model, save_model, write_recipe

    folder = resolve_model(args.checkpoint)
    out = Path(args.out)
    check_target(out, folder, args.overwrite)
    model = load_model(folder, dtype=args.dtype)
    if lora.has_adapters(model):
        if not args.merge:
            raise UserError(f"{folder} holds LoRA adapters; pass --merge to write full weights")
        lora.merge(model)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with writing(out, cleanup=tmp):  # a full disk: the partial copy removed, OUT as it was
        save_model(model, tmp, source=folder)
        if recipe := read_recipe(folder):  # the template and answer style the model was trained with
            write_recipe(tmp, recipe)
        if out.exists():  # --overwrite: the old folder goes only once the new one is complete
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    print(f"wrote {args.out}")
    return 0
