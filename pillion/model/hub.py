"""Hugging Face Hub model ids where a model folder is expected: `model=Qwen/Qwen2.5-0.5B-Instruct`.

    folder = fetch("Qwen/Qwen2.5-0.5B-Instruct")          # the snapshot in the Hub cache
    folder = fetch("Qwen/Qwen2.5-0.5B-Instruct@a09a3545")  # a branch, tag or commit
    pinned("Qwen/Qwen2.5-0.5B-Instruct", folder)           # "Qwen/Qwen2.5-0.5B-Instruct@<commit>"

A name that is not an existing folder and has the form `org/name` (optionally `@revision`) is
fetched with `huggingface_hub.snapshot_download` into its standard cache (HF_HUB_CACHE, else
HF_HOME/hub, else ~/.cache/huggingface/hub), only the files pillion reads: config.json,
generation_config.json, the safetensors weights and their index, the tokenizer files, and a
PEFT adapter's or pillion's own records. `HF_HUB_OFFLINE=1` reads the cache only and
`HF_TOKEN` opens private and gated repositories (huggingface_hub reads both; the environment is
read at each call, so a test can point it at a cache it builds). A download shows
huggingface_hub's progress bars. The snapshot folder is named by the commit it holds, so
`pinned` records exactly which weights a run used: a run's config.yaml keeps that pin, and a
resumed run reloads the same commit. What cannot be fetched (offline and not cached, an
unknown or private repository, an unknown revision, no network) is a CheckpointError naming the
id and what to do.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pillion.model.hf_config import CheckpointError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")
COMMIT = re.compile(r"[0-9a-f]{40}")
ALLOW_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                  "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                  "vocab.json", "merges.txt", "added_tokens.json", "tokenizer.model", "adapter_config.json",
                  "pillion.json"]


def is_hub_id(name: str) -> bool:
    """`org/name` or `org/name@revision` that is not an existing path."""
    return HUB_ID.fullmatch(name) is not None and not os.path.exists(name) and ".." not in name


def cache_dir() -> Path:
    """The Hub cache huggingface_hub uses, read from the environment now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


def fetch(name: str) -> Path:
    """The local snapshot folder of Hub model `name` (`org/name[@revision]`), downloaded if needed."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (  # where 0.24 and later all export them
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, _, revision = name.partition("@")
    cache = cache_dir()
    try:
        folder = snapshot_download(repo_id, revision=revision or None, cache_dir=str(cache),
                                   local_files_only=offline(), allow_patterns=ALLOW_PATTERNS,
                                   token=os.environ.get("HF_TOKEN") or None)
    except GatedRepoError:
        raise CheckpointError(f"model {name}: a gated repository on the Hugging Face Hub; accept its terms on "
                              "huggingface.co and set HF_TOKEN (or run `hf auth login`)") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"model {name}: no such folder here, and no such repository on the Hugging Face Hub "
                              "(or a private one: set HF_TOKEN, or run `hf auth login`)") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"model {name}: the Hub repository {repo_id} has no revision {revision!r}") from None
    except LocalEntryNotFoundError:
        if offline():
            raise CheckpointError(f"model {name}: no such folder here, and not in the Hugging Face cache {cache} "
                                  "while HF_HUB_OFFLINE=1: download it once with network access (unset "
                                  "HF_HUB_OFFLINE), or give a local model folder") from None
        raise CheckpointError(f"model {name}: no such folder here, and the Hugging Face Hub cannot be reached "
                              f"(nor is it in the cache {cache}): check the network, or give a local model "
                              "folder") from None
    except HFValidationError as e:
        raise CheckpointError(f"model {name}: not a folder, nor a Hub id ({e})") from None
    return Path(folder)


def pinned(name: str, folder: Path) -> str | None:
    """`org/name@<commit>` for a Hub id fetched into `folder` (a snapshot named by its commit);
    None for a local folder."""
    if not is_hub_id(name):
        return None
    commit = Path(folder).name
    return f"{name.partition('@')[0]}@{commit}" if COMMIT.fullmatch(commit) else None


def snapshot_id(folder: Path) -> tuple[str, str] | None:
    """(org/name, commit) of a Hub cache snapshot folder (models--org--name/snapshots/<commit>),
    else None: what a PEFT adapter_config.json names as its base (with `revision`)."""
    folder = Path(folder)
    repo = folder.parent.parent.name
    if folder.parent.name != "snapshots" or not repo.startswith("models--") or not COMMIT.fullmatch(folder.name):
        return None
    return repo[len("models--"):].replace("--", "/"), folder.name
