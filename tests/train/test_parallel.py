"""Several ranks (train/parallel.py, train/sharded.py) on CPU with gloo: the same metrics as one
process on the same global batch, checkpoints that resume at another world size, a killed rank
that brings the job down, and the bad inputs of an N-rank run.

Ranks are started as torchrun starts them (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT in
the environment of `python -m pillion ...` processes); the kill test uses torchrun itself, whose
agent names the failed rank.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pillion import config as C
from pillion import ranks
from pillion.algorithms import advantages as A
from pillion.cli import main
from pillion.train import parallel, rl, state
from pillion.train.update import TIMING_FIELDS

# One pytest-xdist worker (`--dist loadgroup`) builds the module fixtures' 2-rank launches once.
pytestmark = pytest.mark.xdist_group("parallel")

ROOT = Path(__file__).resolve().parents[2]
TIMING = TIMING_FIELDS  # wall-clock fields
# 4 prompts x 4 samples = 16 rows: 8 per rank at N=2; micro_batch=4 divides both, so the
# micro-batches (and the per-micro-batch stats averaged into the log) are the same rows at N=1 and N=2.
SMALL = ["prompts_per_step=4", "group_size=4", "max_new_tokens=24", "micro_batch=4", "data.heldout_size=8",
         "eval.k=1", "eval.max_new_tokens=24", "eval.batch_prompts=3", "data.synthetic_size=400"]


def _env(rank: int, size: int, port: int) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WORLD_SIZE": str(size),
            "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(size),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], size: int = 2) -> None:
    """`python -m pillion ARGS` on `size` ranks; every rank must exit 0 (hang guard: 10 min)."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "pillion", *args], env=_env(r, size, port), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(size)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * size, "\n".join(outputs[::-1])[-4000:]


def rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same(a: list[dict], b: list[dict], rel: float = 1e-4) -> None:
    """Same steps, same keys, every number within `rel` relative."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert y[k] == pytest.approx(x[k], rel=rel, abs=1e-9), (x["step"], k, x[k], y[k])


def _copy_until(src: Path, dst: Path, step: int) -> None:
    """A run folder as it was after checkpoint `step`: later checkpoints removed (metrics are
    truncated by the resume itself)."""
    import shutil

    shutil.copytree(src, dst)
    for folder in (dst / "checkpoints").iterdir():
        if int(folder.name.split("-")[1]) > step:
            shutil.rmtree(folder)


@pytest.fixture(scope="module")
def grpo(tmp_path_factory):
    """3 GRPO steps in one process and on 2 ranks (checkpoints at steps 2 and 3), then the
    2-rank run resumed from step 2 at N=1 and at N=2, and the one-process run at N=2."""
    base = tmp_path_factory.mktemp("grpo")
    args = ["steps=3", "save_every=2", *SMALL]
    rl.train(C.resolve(C.TrainConfig, overrides=[f"out={base / 'one'}", *args]))
    launch(["train", f"out={base / 'two'}", *args])
    for n in (1, 2):
        _copy_until(base / "two", base / f"resume{n}", 2)
        if n == 1:
            assert main(["train", f"out={base / 'resume1'}", "--resume"]) == 0
        else:
            launch(["train", f"out={base / 'resume2'}", "--resume"])
    _copy_until(base / "one", base / "one_then_two", 2)  # and a one-process checkpoint at N=2
    launch(["train", f"out={base / 'one_then_two'}", "--resume"])
    return base


@pytest.mark.slow
def test_two_ranks_log_what_one_process_logs(grpo):
    """Reward, loss, grad_norm and every other logged number (wall-clock fields aside) of 3 GRPO
    steps agree to 1e-4: same global batch, sampling keyed by the global row, normalisers
    summed over ranks, gradients summed by FSDP2."""
    one, two = rows(grpo / "one"), rows(grpo / "two")
    assert_same(one, two)
    assert {"reward", "pg_loss", "grad_norm", "kl_initial"} <= one[0].keys()
    # A real comparison: rewards 0, 0.44, 0.75 and a step with a full-size (clipped) gradient.
    assert len({r["reward"] for r in one}) == 3 and max(r["grad_norm"] for r in one) > 0.5
    # Held-out evaluation: each rank sampled its share of every batch; the gathered result is one process's.
    report_one, report_two = (json.loads((grpo / name / "report.json").read_text()) for name in ("one", "two"))
    for key in ("pass@1", "mean_length", "truncated", "curve", "by_level"):
        assert report_two["eval_before"][key] == report_one["eval_before"][key], key
        assert report_two["eval_after"][key] == report_one["eval_after"][key], key
    # The sharded checkpoint: DCP shards of both ranks, and the consolidated policy folder.
    final = grpo / "two" / "checkpoints" / "step-000003"
    assert sorted(p.name for p in (final / "dcp").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert (final / "model.safetensors").is_file() and (grpo / "two" / "report.md").is_file()


@pytest.mark.slow
def test_the_consolidated_policy_is_the_one_process_policy(grpo):
    """Rank 0's Hugging Face folder, gathered from the shards, holds the weights one process
    saved after the same 3 steps (transformers and `pillion eval` read this folder)."""
    from pillion.model.checkpoint import load_model

    one = load_model(grpo / "one" / "checkpoints" / "step-000003").state_dict()
    two = load_model(grpo / "two" / "checkpoints" / "step-000003").state_dict()
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2])
def test_a_two_rank_checkpoint_resumes_at_one_and_two_ranks(grpo, n):
    """Saved at N=2 after step 2, resumed at N: step 3 is the uninterrupted run's (weights,
    optimizer moments and data state all came back, resharded)."""
    assert_same(rows(grpo / "two"), rows(grpo / f"resume{n}"))


@pytest.mark.slow
def test_a_one_process_checkpoint_resumes_at_two_ranks(grpo):
    """Saved by one process after step 2 (whole weights, position-keyed AdamW state), resumed at
    N=2: each rank keeps its shards of it, and step 3 is the uninterrupted run's."""
    assert not (grpo / "one_then_two" / "checkpoints" / "step-000002" / "dcp").exists()
    assert_same(rows(grpo / "one"), rows(grpo / "one_then_two"))


@pytest.mark.slow
def test_a_ppo_step_with_a_sharded_critic_matches_one_process(tmp_path):
    """PPO: critic sharded too, values through its `values` method, whitened advantages over
    the global batch, two epochs (old log-probs from a no-grad pass)."""
    args = ["algo=ppo", "steps=1", "save_every=5", "max_new_tokens=40", *SMALL[:2], *SMALL[3:]]
    rl.train(C.resolve(C.TrainConfig, overrides=[f"out={tmp_path / 'one'}", *args]))
    launch(["train", f"out={tmp_path / 'two'}", *args])
    one = rows(tmp_path / "one")
    assert one[0]["value_loss"] > 0 and one[0]["reward"] > 0 and one[0]["grad_norm"] > 0
    assert_same(one, rows(tmp_path / "two"))


SFT = ["init=tiny", "steps=16", "save_every=1", "batch_size=8", "data.heldout_size=6", "eval.k=1",
       "eval.max_new_tokens=8", "data.synthetic_size=200", "tiny.hidden_size=64", "tiny.num_layers=2",
       "tiny.intermediate_size=128"]


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
    """16 SFT steps in one process and on 2 ranks; the same 2-rank run under torchrun with one
    rank (0 or 1, drawn) SIGKILLed once checkpoint k (drawn in 2..5) is in place: the kill lands
    wherever the job then is (a step, a checkpoint write), a moment set by the run's progress,
    not by the wall clock. The killed folder is then resumed at N=2 and, copied, at N=1."""
    import random
    import shutil

    base = tmp_path_factory.mktemp("sft")
    # uninterrupted (save_every changes no logged number): the one-process run's step-8 checkpoint
    # is resumed at N=2 too
    assert main(["sft", f"out={base / 'one'}", *SFT, "save_every=8"]) == 0
    launch(["sft", f"out={base / 'two'}", *SFT, "save_every=16"])
    _copy_until(base / "one", base / "one_then_two", 8)
    launch(["sft", f"out={base / 'one_then_two'}", "--resume"])
    rng = random.Random()
    victim, k = rng.choice([0, 1]), rng.randint(2, 5)
    out = base / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pillion",
           "sft", f"out={out}", *SFT]
    job = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600  # a hang guard, not a timing assertion
        while job.poll() is None and time.monotonic() < deadline:
            last = state.latest(out)
            if last is not None and int(last.name.split("-")[1]) >= k:
                break
            time.sleep(0.01)
        pid = _rank_pid(job.pid, victim)
        assert pid is not None and job.poll() is None, f"the job ended before checkpoint {k}"
        os.kill(pid, signal.SIGKILL)
        output = job.communicate(timeout=120)[0]  # the other rank and the agent stop
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0 and "SIGKILL" in output, output[-3000:]
    killed_at = int(state.latest(out).name.split("-")[1])
    shutil.copytree(out, base / "killed1")
    launch(["sft", f"out={out}", "--resume"])
    assert main(["sft", f"out={base / 'killed1'}", "--resume"]) == 0
    return base, (victim, k, killed_at)


@pytest.mark.slow
def test_dpo_steps_on_two_ranks_match_one_process(tmp_path):
    """Online DPO: each rank pairs its own groups, the DPO loss's normalisers count every rank's
    pairs, and the reference refresh copies shard to shard (dpo.ref_update_every=1)."""
    args = ["algo=dpo", "steps=2", "save_every=5", "dpo.ref_update_every=1", "lr=1e-3", *SMALL]
    rl.train(C.resolve(C.TrainConfig, overrides=[f"out={tmp_path / 'one'}", *args]))
    launch(["train", f"out={tmp_path / 'two'}", *args])
    one = rows(tmp_path / "one")
    assert any("dpo_loss" in r for r in one)
    assert_same(one, rows(tmp_path / "two"))


@pytest.mark.slow
def test_sixteen_sft_steps_on_two_ranks_match_one_process(sft_runs):
    base, _ = sft_runs
    one = rows(base / "one")
    assert len(one) == 16 and len({r["loss"] for r in one}) == 16
    assert_same(one, rows(base / "two"))
    assert (base / "two" / "final" / "model.safetensors").is_file()
    assert sorted(p.name for p in (base / "two" / "checkpoints" / "step-000016" / "dcp").glob("*.distcp")) == [
        "__0_0.distcp", "__1_0.distcp"]


@pytest.mark.slow
def test_a_one_process_sft_checkpoint_resumes_at_two_ranks(sft_runs):
    """Saved by one process after step 8 (plain optimizer state, whole weights), resumed under
    torchrun at N=2: each rank keeps its shards of the whole state; steps 9-16 are one process's."""
    base, _ = sft_runs
    assert not (base / "one_then_two" / "checkpoints" / "step-000008" / "dcp").exists()
    assert (base / "one_then_two" / "checkpoints" / "step-000016" / "dcp").is_dir()  # written at N=2
    assert_same(rows(base / "one"), rows(base / "one_then_two"))


@pytest.mark.slow
@pytest.mark.parametrize("resumed", ["killed", "killed1"])
def test_a_two_rank_sft_killed_by_sigkill_resumes_at_two_and_one_ranks_as_if_uninterrupted(sft_runs, resumed):
    """SIGKILL of one rank after a drawn checkpoint; `pillion sft --resume` at N=2 (killed) and at
    N=1 (killed1) logs every step of the uninterrupted 2-rank run (loss, grad_norm, lr) and
    evaluates the same final model."""
    base, drawn = sft_runs
    assert_same(rows(base / "two"), rows(base / resumed))
    report, reference = (json.loads((base / name / "report.json").read_text()) for name in (resumed, "two"))
    assert report["pass@1"] == reference["pass@1"], drawn
    assert report["final_loss"] == pytest.approx(reference["final_loss"], rel=1e-4), drawn
    assert not list((base / resumed / "checkpoints").glob("*.tmp")), drawn


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker with RANK=rank (a child of `parent`), if it runs yet: the
    lookup benchmarks/faults.py kills by."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("faults", ROOT / "benchmarks" / "faults.py")
    faults = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(faults)
    return faults.rank_pids(parent).get(rank)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds torchrun's workers through /proc")
def test_a_killed_rank_stops_the_job_and_the_last_checkpoint_resumes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pillion",
           "train", f"out={out}", "steps=40", "save_every=1", *SMALL]
    job = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Wait (a hang guard, not a timing assertion) for the first checkpoint, then SIGKILL rank 1.
        deadline = time.monotonic() + 600
        while state.latest(out) is None and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        victim = _rank_pid(job.pid, 1)
        assert victim is not None and job.poll() is None, "the job ended before a checkpoint"
        os.kill(victim, signal.SIGKILL)
        output = job.communicate(timeout=60)[0]  # the other rank and the agent stop within 60 s
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0
    # torchrun's summary names the killed rank (unless its agent failed to read rank 0's error file: seen once)
    assert (re.search(r"rank\s*:\s*1 \(local_rank: 1\)", output) and "SIGKILL" in output
            or "JSONDecodeError" in output), output[-3000:]
    last = state.latest(out)
    assert last is not None and (last / "dcp").is_dir() and int(last.name.split("-")[1]) < 40
    done = int(last.name.split("-")[1])
    assert main(["train", f"out={out}", "--resume", f"steps={done + 1}"]) == 0  # one process takes over
    assert [r["step"] for r in rows(out)] == list(range(1, done + 2))


# ---- one process: the pieces, and the bad inputs -----------------------------------------------

def test_row_offset_gives_a_share_of_a_call_the_samples_of_the_whole_call(tiny_checkpoint):
    """What makes N ranks sample what one process samples: rows keyed by their global index."""
    from pillion.model.checkpoint import load_model
    from pillion.model.tokenizer import load_tokenizer
    from pillion.rollout.engine import Engine, SamplingParams

    folder = tiny_checkpoint("qwen2")
    engine = Engine(load_model(folder), load_tokenizer(folder), [0])
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]
    whole = engine.generate(prompts, SamplingParams(n=3, max_new_tokens=6, seed=11))
    shares = [engine.generate(prompts[a:b], SamplingParams(n=3, max_new_tokens=6, seed=11, row_offset=a * 3))
              for a, b in ((0, 1), (1, 4))]
    parts = [c for share in shares for c in share]
    assert [c.ids for c in parts] == [c.ids for c in whole]
    assert len({tuple(c.ids) for c in whole}) > 1  # the samples differ between rows
    without = engine.generate(prompts[1:4], SamplingParams(n=3, max_new_tokens=6, seed=11))
    assert [c.ids for c in without] != [c.ids for c in whole[3:]]  # the offset is what makes them equal


def test_one_process_is_the_identity():
    world = ranks.World()
    assert ranks.my_range(8, world) == (0, 8) and ranks.sum_int(5, world) == 5
    assert ranks.reduce_record({"step": 1, "reward": 0.5}, world) == {"step": 1, "reward": 0.5}
    x, m = torch.tensor([[1.0, 2.0, 4.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    # mean 1.5, unbiased var ((-.5)^2 + .5^2) / 1 = 0.5: (1 - 1.5) / sqrt(0.5) = -0.7071
    assert ranks.tensor_sum(world) is None  # nothing to sum: the algorithms' own batch statistics
    torch.testing.assert_close(A.whiten(x, m, sum_over=ranks.tensor_sum(world)),
                               torch.tensor([[-0.70711, 0.70711, 0.0]]), rtol=0, atol=1e-4)


def test_whiten_over_ranks_is_whiten_of_the_whole_batch():
    """Two ranks holding the same rows: `sum_over` doubles every sum, which must give the
    statistics of the two rows stacked (mean the same, unbiased variance over 2n - 1)."""
    x = torch.tensor([[1.0, 2.0, 4.0], [3.0, -1.0, 0.0]])
    m = torch.tensor([[1, 1, 0], [1, 1, 1]])
    doubled = A.whiten(x, m, sum_over=lambda t: 2 * t)
    whole = A.whiten(torch.cat([x, x]), torch.cat([m, m]))
    torch.testing.assert_close(doubled, whole[:2], rtol=0, atol=1e-6)
    stacked = A.reinforce_pp(x, m, 0.9, sum_over=lambda t: 2 * t)
    torch.testing.assert_close(stacked, A.reinforce_pp(torch.cat([x, x]), torch.cat([m, m]), 0.9)[:2],
                               rtol=0, atol=1e-6)


def test_shares_of_a_batch_are_contiguous_and_cover_it():
    shares = [ranks.my_range(10, ranks.World(r, 4)) for r in range(4)]
    assert shares == [(0, 3), (3, 6), (6, 9), (9, 10)]  # ceil(10 / 4) = 3 each, the last one short
    assert [ranks.my_range(2, ranks.World(r, 4)) for r in range(4)] == [(0, 1), (1, 2), (2, 2), (2, 2)]


def _torchrun_env(monkeypatch, size=2):
    for key, value in {"WORLD_SIZE": size, "RANK": 0, "LOCAL_RANK": 0, "LOCAL_WORLD_SIZE": size,
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": 1}.items():
        monkeypatch.setenv(key, str(value))


@pytest.mark.parametrize("case,message", [
    ("no_group", r"WORLD_SIZE=2 is set but RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not: start several "
                 r"ranks with `torchrun --nproc_per_node=2"),
    ("indivisible", r"config key 'prompts_per_step': 3 is not divisible by the 2 ranks"),
    ("few_gpus", r"config key 'device': cuda with 2 ranks on this node but it has 1 CUDA device\(s\)"),
    ("critic_gpus", r"config key 'critic.device': cuda:1 with 2 ranks on this node puts rank r's critic on cuda:1\+r, "
                    r"up to cuda:2, but the node has 2 CUDA device\(s\); use cuda:K with K \+ 2 <= 2, auto or cpu$"),
])
def test_bad_inputs_of_a_multi_rank_run_are_one_line(tmp_path, monkeypatch, capsys, case, message):
    """Each refused before any process group or file: exit 2, one line naming what to change."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in parallel.RENDEZVOUS:
        monkeypatch.delenv(key, raising=False)
    args = ["train", f"out={tmp_path / 'run'}", *SMALL]
    if case != "no_group":
        _torchrun_env(monkeypatch)
    if case == "indivisible":
        args.append("prompts_per_step=3")
    if case == "few_gpus":
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        args.append("device=cuda")
    if case == "critic_gpus":  # two GPUs: one per rank's policy, none left for rank 1's critic (cuda:1+1)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
        args += ["algo=ppo", "device=cuda", "critic.device=cuda:1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"pillion train: " + message + r".*", err) and "\n" not in err, err
    assert not (tmp_path / "run").exists()


def test_sft_batch_size_must_divide_too(tmp_path, monkeypatch, capsys):
    _torchrun_env(monkeypatch)
    assert main(["sft", f"out={tmp_path / 'run'}", "init=tiny", "batch_size=5"]) == 2
    assert "config key 'batch_size': 5 is not divisible by the 2 ranks" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_token_budget_micro_batches_on_two_ranks_match_one_process(tmp_path):
    """micro_batch_tokens with two ranks: each rank splits its rows by the budget, the ranks even
    out their micro-batch counts (FSDP2 gathers the weights in every forward, on every rank at
    once), and the steps' losses, gradient norms and weights are one process's."""
    args = ["steps=2", "save_every=2", "micro_batch_tokens=70", *SMALL]
    rl.train(C.resolve(C.TrainConfig, overrides=[f"out={tmp_path / 'one'}", *args]))
    launch(["train", f"out={tmp_path / 'two'}", *args])
    keys = ("reward", "pg_loss", "kl_loss", "grad_norm", "kl", "response_length")
    one, two = ([{k: r[k] for k in keys} for r in rows(tmp_path / name)] for name in ("one", "two"))
    assert one[1]["grad_norm"] > 0 and one[1]["reward"] != one[0]["reward"]
    for a, b in zip(one, two):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-9)
    from pillion.model.checkpoint import load_model

    w1, w2 = (load_model(tmp_path / name / "checkpoints" / "step-000002").state_dict() for name in ("one", "two"))
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)


def ranks_say(script: str) -> list:
    """Run `script` (python -c) as two gloo ranks; what each printed to stderr on a line `SAYS
    <json>` (stderr: a non-zero rank's stdout is closed by parallel.init)."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-c", script], env=_env(r, 2, port), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    return [json.loads(next(line[5:] for line in err.splitlines() if line.startswith("SAYS "))) for _, err in outs]


_SPLIT = """
import json, sys, torch
from pillion import config as C
from pillion.model.sequences import pack
from pillion.train import parallel
from pillion.train.schedule import Schedule

cfg = C.resolve(C.TrainConfig, overrides=["micro_batch_tokens=60", "share_prompts=false"])
world = parallel.init(cfg)
# 6 rows of a 2-token prompt and a response of 12 tokens (rank 0: four rows fit in 60) or 40 (rank 1: one)
n = 12 if world.rank == 0 else 40
seqs = pack([[1, 2]] * 6, [[3] * n] * 6, pad_id=0)
parts = [m.tolist() for m in Schedule(seqs, cfg, world).split(torch.arange(6))]
print("SAYS", json.dumps(parts), file=sys.stderr)
parallel.close(world)
"""


def test_ranks_run_as_many_token_budget_micro_batches_as_the_rank_that_needs_most():
    """Rank 0's budget gives 2 micro-batches, rank 1's 6; FSDP2 needs a forward on every rank at
    once, so rank 0 halves its heaviest micro-batch until it has 6 too."""
    parts = ranks_say(_SPLIT)
    assert sorted(parts[1]) == [[i] for i in range(6)]  # 42 tokens a row: one per micro-batch
    assert len(parts[0]) == 6 and sorted(i for part in parts[0] for i in part) == list(range(6))


def test_a_critic_on_another_gpu_takes_one_per_rank_and_is_replicated():
    """`critic.device` at N ranks (no GPU needed: devices are names here). The second rank of a
    node of two (local rank 1) on a node of four GPUs computes on cuda:1; cuda:K puts its critic
    on cuda:K+1, replicated whenever that is not cuda:1 (FSDP2 would run collectives there)."""
    own, cpu = torch.device("cuda", 1), torch.device("cpu")
    world = ranks.World(rank=3, size=4, local_rank=1)  # node 2 of 2, its second rank

    def place(name, device=own, replicate=False):
        critic = parallel.critic_device(name, device, world, 2, 4)
        return str(critic), parallel.replicated_critic(replicate, critic, device, world)

    assert place("auto") == ("cuda:1", False) and place("auto", replicate=True) == ("cuda:1", True)
    assert place("cpu") == ("cpu", False) and place("cpu", replicate=True) == ("cpu", True)  # sharded on gloo, or not
    assert place("cuda:2") == ("cuda:3", True)  # cuda:2 and cuda:3 hold the node's two critics, forced whole
    assert place("cuda") == place("cuda:0") == ("cuda:1", False)  # the rank's own GPU, like auto
    assert place("cuda:0", device=cpu) == ("cuda:1", True)  # CPU policies (gloo): a GPU critic is whole
    with pytest.raises(parallel.ParallelError, match=r"cuda:3 with 2 ranks on this node puts rank r's critic on "
                                                     r"cuda:3\+r, up to cuda:4, but the node has 4 CUDA device"):
        place("cuda:3")  # 3 + 2 > 4
    one = ranks.World()  # one process: the GPU named, checked against the machine elsewhere; never replicated
    critic = parallel.critic_device("cuda:5", own, one, 1, 0)
    assert str(critic) == "cuda:5" and not parallel.replicated_critic(True, critic, own, one)


_REPLICATED = """
import json, sys, torch
from pathlib import Path
from pillion import config as C
from pillion.train import common, parallel, sharded, state
from pillion.train.models import build_models, build_optimizers, optimizer_params
from pillion.train.update import optimizer_step

cfg = C.resolve(C.TrainConfig, overrides=["algo=ppo", "dtype=bfloat16", "critic.replicate=true", "prompts_per_step=4"])
world = parallel.init(cfg)
said = {}
# a: 5 floats, cut into 4 + 1 by 16-byte buckets; b: 4 floats, a bucket of its own; c: no gradient
a, b, c = (torch.nn.Parameter(torch.zeros(*shape)) for shape in ((5,), (2, 2), (3,)))
a.grad = torch.arange(5.0) * (world.rank + 1)  # rank 0: 0, 1, 2, 3, 4; rank 1: 0, 2, 4, 6, 8
b.grad = torch.full((2, 2), 10.0 ** world.rank)  # 1 and 10
held = (a.grad, b.grad)
parallel.sum_gradients([a, b, c], parallel.Replicated(world, torch.device("cpu")), bucket_bytes=16)
said["sums"] = [a.grad.tolist(), b.grad.tolist(), c.grad is None, a.grad is held[0] and b.grad is held[1]]
# bf16, replicated: the whole critic on every rank over float32 masters; the policy sharded
models = build_models(cfg, common.model_folder(cfg), torch.device("cpu"), world)
optimizers = build_optimizers(models, cfg)
said["layout"] = [sharded.is_sharded(models.policy), sharded.is_sharded(models.critic),
                  models.critic_master is not None and models.critic_params == models.critic_master.params,
                  next(models.critic.parameters()).dtype == torch.bfloat16]
for p in models.critic_params:
    p.grad = torch.full_like(p, world.rank + 1.0)
parallel.sum_gradients(models.critic_params, models.critic_replicated)
said["summed"] = all(bool((p.grad == 3).all()) for p in models.critic_params)
optimizer_step(optimizer_params(optimizers.critic), optimizers.critic, cfg.grad_clip)
masters = [m.detach().clone() for m in models.critic_master.params]
said["master_sum"] = sum(float(m.double().sum()) for m in masters)
run = Path(sys.argv[1])
sharded.save(run, 1, models, optimizers.policy, optimizers.critic, common.model_folder(cfg), world, {"report": {}})
with torch.no_grad():  # forget the critic, then resume it
    for m in models.critic_master.params + models.critic_master.model_params:
        m.zero_()
sharded.resume(state.checkpoint_dir(run, 1), models, optimizers.policy, optimizers.critic, world)
said["restored"] = [all(torch.equal(m, x) for m, x in zip(models.critic_master.params, masters)),
                    all(torch.equal(p, m.bfloat16()) for p, m in zip(models.critic_master.model_params, masters))]
print("SAYS", json.dumps(said), file=sys.stderr)
parallel.close(world)
"""


def test_a_replicated_critic_sums_its_gradients_and_checkpoints_its_masters(tmp_path):
    """`sum_gradients` on two gloo ranks: the sums in the gradients' own tensors (16-byte buckets
    cut a 5-float gradient in two), a parameter without a gradient left without one. A bf16
    critic with `critic.replicate`: whole on each rank over float32 masters (the policy beside it
    sharded), gradients of 1 and 2 summed to 3, one step, saved by DCP and resumed at N=2 and in one
    process: the same masters, the bf16 weights their rounding, the optimizer's step count."""
    says = ranks_say(_REPLICATED.replace("sys.argv[1]", repr(str(tmp_path / "run"))))
    assert says[0] == says[1]  # the replicas agree, bit for bit
    said = says[0]
    assert said["sums"] == [[0.0, 3.0, 6.0, 9.0, 12.0], [[11.0, 11.0], [11.0, 11.0]], True, True]
    assert said["layout"] == [True, False, True, True] and said["summed"] and said["restored"] == [True, True]
    from pillion.train import common, sharded, state
    from pillion.train.models import build_models, build_optimizers

    cfg = C.resolve(C.TrainConfig, overrides=["algo=ppo", "dtype=bfloat16", "critic.replicate=true"])
    models = build_models(cfg, common.model_folder(cfg), torch.device("cpu"), ranks.World())
    optimizers = build_optimizers(models, cfg)
    sharded.resume(state.checkpoint_dir(tmp_path / "run", 1), models, optimizers.policy, optimizers.critic,
                   ranks.World())
    assert sum(float(m.detach().double().sum()) for m in models.critic_master.params) == said["master_sum"]
    steps = {float(s["step"]) for s in optimizers.critic.state.values()}
    assert steps == {1.0} and len(optimizers.critic.state) == len(models.critic_master.params)


def test_balanced_groups_by_hand():
    # Costs 10, 9, 1, 1 on two ranks, two groups each: 10 -> rank 0, 9 -> rank 1, 1 -> rank 1 (9 < 10),
    # the last 1 -> rank 0 (rank 1 is full): loads 11 and 10, where the contiguous shares are 19 and 2.
    assert parallel.balanced_groups([10, 9, 1, 1], 2) == [[0, 3], [1, 2]]
    assert parallel.balanced_groups([4, 3, 2, 1, 1, 1], 3) == [[0, 5], [1, 4], [2, 3]]  # loads 5, 4, 3
    assert parallel.balanced_groups([3, 1, 2], 1) == [[0, 1, 2]]


_BALANCE = """
import json, sys, types
from pillion import config as C
from pillion.train import parallel

world = parallel.init(C.resolve(C.TrainConfig, overrides=[]))


def groups(sizes):
    # Groups of two samples, a sample n tokens (1 prompt + n - 1 response): a group costs 2n.
    return [types.SimpleNamespace(completion=types.SimpleNamespace(prompt_ids=[1], ids=[2] * (n - 1)),
                                  tag=f"{world.rank}.{g}.{j}") for g, n in enumerate(sizes) for j in range(2)]


said = []
# (this rank's group sizes, their places among the kept groups, kept groups, mini-batches) per case
for sizes, positions, kept, mini in [
        ([[5, 4], [1, 1]], [[0, 1], [2, 3]], 4, 1),  # A: costs 10, 8 | 2, 2; no filter
        ([[5, 4, 1], []], [[0, 1, 2], []], 3, 1),  # B: the filters left rank 1 nothing, rank 0 three
        ([[], [3]], [[], [0]], 1, 1),  # C: one group kept, on rank 1
        ([[5, 4], [1, 1]], [[0, 1], [2, 3]], 4, 2)]:  # D: two mini-batches of two groups
    share = parallel.balance_groups(groups(sizes[world.rank]), positions[world.rank], kept, 2, mini, world)
    said.append([[s.tag for s in share.samples], share.global_rows, share.mini_batch_rows])
print("SAYS", json.dumps(said), file=sys.stderr)
parallel.close(world)
"""


def test_whole_groups_move_between_ranks_to_even_their_groups_and_tokens():
    """A: contiguous shares hold 18 and 4 tokens; after `balance_groups` rank 0 holds groups 0
    and 3 (12), rank 1 groups 1 and 2 (10), each whole and in the step's order. B: three kept
    groups on rank 0, none on rank 1: two each (ceil(3 / 2)), costs 10 | 8 + 2, and rank 0's
    second is a padding copy (global rows -1). C: one group, on rank 1, stays there; rank 0
    gets a copy of it to pad with (sent, since it holds none). D: each of two mini-batches
    spread over both ranks, one group each."""
    a, b, c, d = zip(*ranks_say(_BALANCE))
    assert a[0] == [["0.0.0", "0.0.1", "1.1.0", "1.1.1"], [0, 1, 6, 7], [4]]
    assert a[1] == [["0.1.0", "0.1.1", "1.0.0", "1.0.1"], [2, 3, 4, 5], [4]]
    assert b[0] == [["0.0.0", "0.0.1", "0.0.0", "0.0.1"], [0, 1, -1, -1], [4]]
    assert b[1] == [["0.1.0", "0.1.1", "0.2.0", "0.2.1"], [2, 3, 4, 5], [4]]
    assert c[0] == [["1.0.0", "1.0.1"], [-1, -1], [2]] and c[1] == [["1.0.0", "1.0.1"], [0, 1], [2]]
    assert d[0] == [["0.0.0", "0.0.1", "1.0.0", "1.0.1"], [0, 1, 4, 5], [2, 2]]
    assert d[1] == [["0.1.0", "0.1.1", "1.1.0", "1.1.1"], [2, 3, 6, 7], [2, 2]]
