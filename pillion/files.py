"""Files that commands leave behind: atomic writes, and a full disk reported as one line.

    write_text_atomic(path, text)             # readers see the old file or the new one, never half
    save_torch(obj, path)                     # torch.save through a Python file: its OSError is kept
    with writing(folder, cleanup=tmp): ...    # a full disk: `tmp` removed, DiskFullError naming `folder`

A write that fails for lack of space surfaces in many shapes: an `OSError` with errno ENOSPC
(Python's own writes), a `SafetensorError` whose text ends in "(os error 28)", a `RuntimeError`
of torch.save ("enforce fail at inline_container.cc") whose context is the OSError of the file
it wrote through, or a `CheckpointException` of torch.distributed.checkpoint that carries each
rank's failure. `disk_full` recognises them all; `writing` turns them into `DiskFullError`, a
`UserError`, so every command ends with one line ("no space left on device while writing ...")
and not a traceback, after removing the partial copy it names.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pillion.errors import UserError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122")


class DiskFullError(UserError):
    """A write that failed for lack of space; the message names what was being written.
    `run_dir`: the run it stopped, when a loop knows it (the command adds how to resume)."""

    def __init__(self, message: str, run_dir: Path | None = None):
        super().__init__(message)
        self.run_dir = run_dir


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error, its cause and context chain, and the failures a distributed checkpoint carries."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += [e.__cause__, e.__context__]
        failures = getattr(e, "failures", None)  # torch.distributed.checkpoint's CheckpointException
        if isinstance(failures, dict):
            for failure in failures.values():
                found = failure[0] if isinstance(failure, tuple) else failure
                if isinstance(found, BaseException):
                    stack.append(found)


def disk_full(error: BaseException) -> bool:
    """Whether `error` (or anything in its chain) is a write that found no space left."""
    for e in _causes(error):
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            return True
        if any(text in str(e) for text in NO_SPACE_TEXT):
            return True
    return False


def failed_file(error: BaseException) -> str | None:
    """The file an OSError in the chain names, if any."""
    return next((str(e.filename) for e in _causes(error) if isinstance(e, OSError) and e.filename), None)


def remove(path: Path) -> None:
    """Remove a file or a folder tree; what is gone already is no error."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def writing(target: str | Path, cleanup: Path | None = None, hint: str = "") -> Iterator[None]:
    """Around a write of `target`: when it fails, `cleanup` (a temporary file or folder) is
    removed, and a full disk becomes a DiskFullError naming `target` (then `hint`)."""
    try:
        yield
    except Exception as e:
        if cleanup is not None:
            remove(cleanup)
        if isinstance(e, DiskFullError) or not disk_full(e):
            raise
        removed = f" (its partial copy {cleanup} was removed)" if cleanup is not None else ""
        raise DiskFullError(f"no space left on device while writing {target}{removed}{hint}") from None


def check_writable(path: str | Path, what: str, folder: bool = True) -> Path:
    """`path` (a folder, or with folder=False a file, to create or replace) can be written: the
    nearest existing folder on its way is writable. Checked before a command's work starts;
    else a UserError naming `what` and the path."""
    path = Path(path)
    existing = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if existing == path and not path.is_dir():
        if folder:
            raise UserError(f"cannot write {what} {path}: it is a file")
        existing = path.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} {path}: {existing} is not a writable folder")
    return path


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entry list, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `path` through a temporary file, fsync and rename: readers see old or new, never half.
    On a full disk the temporary file is removed and the old file is left as it was."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with writing(path, cleanup=tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def save_torch(obj: Any, path: Path) -> None:
    """torch.save into `path` through a Python file, so that a failed write keeps its OSError
    (torch.save given a path reports only "enforce fail at inline_container.cc"), and a Ctrl-C
    during the write is a KeyboardInterrupt (torch.save wraps it in that RuntimeError too)."""
    import torch

    with open(path, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as e:  # Ctrl-C inside the writer comes back wrapped: it stays a Ctrl-C
            if isinstance(e.__context__, KeyboardInterrupt):
                raise KeyboardInterrupt from None
            raise
