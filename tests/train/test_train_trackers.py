"""Trackers: off by default, opt-in TensorBoard (event files read back) and W&B offline (the run
file read back), clear errors when an extra is missing."""

import json
import sys
from pathlib import Path

import pytest

from pillion.train.common import MetricsLog
from pillion.train.trackers import LogConfig, WandbConfig, open_trackers, scalars

RECORDS = [
    {"step": 1, "reward": 0.25, "accuracy": 0.5, "phase": "rollout", "done": True, "kl": float("nan")},
    {"step": 2, "reward": 0.75, "accuracy": 1, "kl": 0.01},
    {"step": 2, "eval/pass@1": 0.125},  # an eval record at the same step as a training record
]


def test_scalars_keep_finite_numbers_only():
    assert scalars(RECORDS[0]) == {"reward": 0.25, "accuracy": 0.5}  # no step, string, bool or NaN
    assert scalars(RECORDS[1]) == {"reward": 0.75, "accuracy": 1.0, "kl": 0.01}


def test_default_is_metrics_jsonl_only(tmp_path):
    log = MetricsLog(tmp_path)
    for record in RECORDS[:2]:
        log.write(record)
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no tb/, no wandb/
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_missing_extras_and_bad_mode_are_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r"log.tensorboard needs .* pip install 'pillion\[tensorboard\]'"):
        open_trackers(tmp_path, LogConfig(tensorboard=True))
    with pytest.raises(ImportError, match=r"log.wandb needs .* pip install 'pillion\[wandb\]'"):
        open_trackers(tmp_path, LogConfig(wandb=WandbConfig(project="p")))
    with pytest.raises(ValueError, match="log.wandb.mode"):
        open_trackers(tmp_path, LogConfig(wandb=WandbConfig(project="p", mode="cloud")))


def test_tensorboard_event_files_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLog(tmp_path, LogConfig(tensorboard=True))
    for record in RECORDS:
        log.write(record)
    log.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    read = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert read == {"reward": [(1, 0.25), (2, 0.75)], "accuracy": [(1, 0.5), (2, 1.0)],
                    "kl": [(2, pytest.approx(0.01))], "eval/pass@1": [(2, 0.125)]}


def _wandb_records(path: Path) -> list[bytes]:
    """Records of a .wandb file: a 7-byte ":W&B" header, then LevelDB-log framing (32 KiB blocks;
    each chunk: crc32 (4), length (2, little-endian), type (1: full, 2: first, 3: middle, 4: last))."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, out, pending = 7, [], b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7 or data[pos + 6] == 0:  # block trailer or zero padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            out.append(pending)
            pending = b""
    return out


def test_wandb_offline_run_has_the_metrics(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from wandb.proto import wandb_internal_pb2

    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log = MetricsLog(run_dir, LogConfig(wandb=WandbConfig(project="pillion-test", mode="offline")),
                     config={"algo": "grpo", "lr": 1e-4})
    for record in RECORDS:
        log.write(record)
    log.close()

    run_id = (run_dir / "wandb_run_id").read_text().strip()
    (run_file,) = (run_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    history, config = [], {}
    for raw in _wandb_records(run_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            items = {k: v for k, v in items.items() if not k.startswith("_")}  # _step, _runtime, ...
            history.append((record.history.step.num, items))
        elif record.WhichOneof("record_type") == "run":
            config = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.run.config.update}
    # the two records of step 2 are merged into one history row
    assert history == [(1, {"reward": 0.25, "accuracy": 0.5}),
                       (2, {"reward": 0.75, "accuracy": 1.0, "kl": 0.01, "eval/pass@1": 0.125})]
    assert config["algo"] == "grpo" and config["lr"] == 1e-4
