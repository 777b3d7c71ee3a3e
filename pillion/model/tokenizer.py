"""A model folder's tokenizer, its stop ids, and the files that travel with the weights."""

from __future__ import annotations

import shutil
from pathlib import Path

from pillion.model.hf_config import CheckpointError, read_json

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
)


def load_tokenizer(path: str | Path):
    """The folder's tokenizer (tokenizer.json + tokenizer_config.json, with its chat template)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        raise CheckpointError(f"{path}: no tokenizer.json or tokenizer_config.json")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # a malformed tokenizer file surfaces as many exception types
        raise CheckpointError(f"{path}: cannot load the tokenizer ({type(e).__name__}: {e})") from None


def eos_token_ids(path: str | Path, tokenizer) -> list[int]:
    """Stop ids: generation_config.json's eos_token_id (int or list) plus the tokenizer's EOS."""
    ids: list[int] = []
    gen = Path(path) / "generation_config.json"
    if gen.exists():
        eos = read_json(gen).get("eos_token_id")
        ids += eos if isinstance(eos, list) else ([eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def copy_tokenizer_files(source: str | Path | None, path: Path) -> None:
    """Copy the tokenizer and generation files of folder `source` (if given) into `path`."""
    if source is not None and Path(source).resolve() != path.resolve():
        for name in TOKENIZER_FILES:
            if (Path(source) / name).exists():
                shutil.copy(Path(source) / name, path / name)
