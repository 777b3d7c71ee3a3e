"""A full disk (pillion/files.py): recognised in every shape the write layers raise it, the
temporary copy removed, the last complete checkpoint untouched, one line, and a resume after
space is freed that continues the run. Tested on a real small file system (a tmpfs the test
mounts, where it may: root) and with write wrappers that raise ENOSPC (everywhere)."""

import errno
import json
import subprocess

import pytest
import torch
from safetensors import SafetensorError

from pillion import files
from pillion.cli import main
from pillion.model.checkpoint import DEFAULT_MODEL, load_model
from pillion.train import state
from pillion.train.update import TIMING_FIELDS

NO_SPACE = OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(mib) -> a folder on a tmpfs of that size (skipped where mounting is not allowed)."""
    mounted = []

    def make(mib: float):
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(mib * 1024)}k", "tmpfs", str(folder)],
                              capture_output=True)
        if done.returncode != 0:
            pytest.skip("mounting a tmpfs needs root")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


def test_disk_full_is_recognised_in_every_shape_it_comes():
    assert files.disk_full(NO_SPACE) and files.disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert files.disk_full(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"))
    wrapped = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    wrapped.__context__ = NO_SPACE  # what torch.save through a Python file raises
    assert files.disk_full(wrapped)

    class CheckpointException(RuntimeError):  # torch.distributed.checkpoint's: the failures of each rank
        def __init__(self, failures):
            super().__init__("CheckpointException ranks: dict_keys([1])")
            self.failures = failures

    assert files.disk_full(CheckpointException({1: (NO_SPACE, "traceback")}))
    assert not files.disk_full(CheckpointException({1: (ValueError("bad"), "traceback")}))
    assert not files.disk_full(OSError(errno.EACCES, "Permission denied")) and not files.disk_full(ValueError("x"))


def test_writing_removes_the_partial_copy_and_says_what_was_written(tmp_path):
    tmp = tmp_path / "step-000004.tmp"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"half")
    with pytest.raises(files.DiskFullError, match=r"^no space left on device while writing .*step-000004 \(its "
                                                  r"partial copy .*step-000004.tmp was removed\); hint$"):
        with files.writing(tmp_path / "step-000004", cleanup=tmp, hint="; hint"):
            raise NO_SPACE
    assert not tmp.exists()
    tmp.mkdir()
    with pytest.raises(KeyError):  # not a full disk: the error itself, the partial copy removed all the same
        with files.writing(tmp_path / "x", cleanup=tmp):
            raise KeyError("bug")
    assert not tmp.exists()


def test_write_text_atomic_on_a_full_disk_keeps_the_old_file(small_disk):
    disk = small_disk(0.1)  # 100 KiB
    path = disk / "report.json"
    files.write_text_atomic(path, "old\n")
    with pytest.raises(files.DiskFullError, match=r"no space left on device while writing .*report.json"):
        files.write_text_atomic(path, "x" * 200_000)
    assert path.read_text() == "old\n" and sorted(p.name for p in disk.iterdir()) == ["report.json"]


def _checkpoint(run_dir, step, model):
    return state.save(run_dir, step, model, DEFAULT_MODEL, {"optimizer": {}}, recipe={"template": "qa"})


def test_a_checkpoint_on_a_full_disk_leaves_the_last_one_intact(small_disk):
    model = load_model(DEFAULT_MODEL)
    run = small_disk(5)  # room for one checkpoint of the tiny model (3.3 MB), not for a second beside it
    first = _checkpoint(run, 1, model)
    with pytest.raises(files.DiskFullError, match=r"no space left on device while writing .*step-000002 \(its "
                                                  r"partial copy .*step-000002.tmp was removed\); the last "
                                                  r"complete checkpoint, step-000001, is intact"):
        _checkpoint(run, 2, model)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000001"] and state.latest(run) == first
    again = load_model(first)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("layer", ["torch.save", "safetensors save_file"])
def test_a_checkpoint_whose_write_layer_raises_enospc(tmp_path, monkeypatch, layer):
    """Where no file system can be mounted: each write layer made to fail as a full disk fails it."""
    import pillion.model.checkpoint as checkpoint

    model = load_model(DEFAULT_MODEL)
    first = _checkpoint(tmp_path, 1, model)
    if layer == "torch.save":
        def half_then_full(obj, f, *args, **kwargs):  # writes part of the file, then finds no space
            f.write(b"PK\x03\x04 half a zip")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 32") from NO_SPACE

        monkeypatch.setattr(torch, "save", half_then_full)
    else:
        def full(tensors, filename, metadata=None):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

        monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(files.DiskFullError, match="step-000002.*the last complete checkpoint, step-000001, is intact"):
        _checkpoint(tmp_path, 2, model)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000001"] and state.latest(tmp_path) == first


def _rows(run_dir):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_run_stopped_by_a_full_disk_resumes_as_if_uninterrupted(tmp_path, monkeypatch, capsys):
    """The second checkpoint's trainer state meets a full disk: exit 2, one line, step-000002 intact,
    no step-000004.tmp; once space is back, --resume ends with the metrics of a run never stopped."""
    args = ["steps=4", "save_every=2", "prompts_per_step=4", "group_size=4", "max_new_tokens=16", "micro_batch=16",
            "data.heldout_size=4", "eval.k=1", "eval.max_new_tokens=16", "data.synthetic_size=200"]
    assert main(["train", f"out={tmp_path / 'straight'}", *args]) == 0
    real, calls = torch.save, {"n": 0}

    def full_on_the_second_checkpoint(obj, f, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            f.write(b"PK\x03\x04 part of a trainer state")
            raise RuntimeError("[enforce fail at inline_container.cc:672]") from NO_SPACE
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_on_the_second_checkpoint)
    run = tmp_path / "stopped"
    capsys.readouterr()
    assert main(["train", f"out={run}", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"pillion train: no space left on device while writing {run / 'checkpoints' / 'step-000004'}"
                          f" (its partial copy {run / 'checkpoints' / 'step-000004.tmp'} was removed); the last "
                          f"complete checkpoint, step-000002, is intact; free some space, then continue with: "
                          f"pillion train out={run} --resume"), err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002"]
    monkeypatch.setattr(torch, "save", real)  # space freed
    assert main(["train", f"out={run}", "--resume"]) == 0
    assert _rows(run) == _rows(tmp_path / "straight")
    straight, resumed = (json.loads((p / "report.json").read_text()) for p in (tmp_path / "straight", run))
    assert resumed["pass1_after"] == straight["pass1_after"] and resumed["eval_after"] == straight["eval_after"]


def test_ctrl_c_inside_torch_save_stays_a_ctrl_c(tmp_path, monkeypatch):
    """torch.save wraps an exception raised by the file's write in a RuntimeError ("enforce fail at
    inline_container.cc"); a Ctrl-C there must reach the trainer's interrupt handling as one."""
    real_open = open
    writes = []

    class Interrupted:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            writes.append(len(b))
            if len(writes) == 3:
                raise KeyboardInterrupt
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr("builtins.open", lambda *a, **k: Interrupted(real_open(*a, **k)))
    with pytest.raises(KeyboardInterrupt):
        files.save_torch({"x": torch.zeros(10_000)}, tmp_path / "state.pt")
    assert len(writes) == 3
