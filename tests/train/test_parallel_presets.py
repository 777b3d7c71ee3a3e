"""Every preset, and the memory options, at N=2 ranks on CPU (gloo) log what one process logs:
3 steps each, every non-timing field of metrics.jsonl within 1e-4 relative (docs/algorithms.md
§1.4 says how each field is reduced over micro-batches and ranks).

One launch of two ranks runs every case in turn (a driver that calls `rl.train` per case in the
same process group), and one process runs them all for the reference, so the checks share their
start-up cost. `micro_batch=3` splits a rank's 8 rows 3 + 3 + 2 and one process's 16 rows
3 x 5 + 1, so a statistic averaged per micro-batch (rather than weighted by tokens) would
differ. The sizes are chosen so that the filters drop groups: DAPO keeps 0 and then 2 groups of
4, Reinforce-Rej 0 and 1 (one rank holds none and pads), and SRPO's pool (8 problems, 4 a step)
ends an epoch in the run, so history resampling rebuilds it. PPO and VAPO run a third time on
two ranks with the critic replicated (`critic.replicate`); their checkpoints, and PPO's with a
sharded critic or from one process, resume with the other layout (one more launch of two ranks,
which also resumes a one-process VAPO checkpoint from before the policy's first step).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pillion.train.update import TIMING_FIELDS

# Under pytest-xdist (the README's `-n auto --dist loadgroup`) every test here runs in one worker:
# the module's launches (`runs`, ~5 min on 2 cores; `switched`) are module fixtures, which each
# worker that ran one of these tests would otherwise build again (measured: twice, 300 s and 270 s).
pytestmark = pytest.mark.xdist_group("parallel_presets")

ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted(p.stem for p in (ROOT / "pillion" / "configs").glob("*.yaml"))
COMMON = ["steps=3", "save_every=10", "prompts_per_step=4", "group_size=4", "max_new_tokens=24", "micro_batch=3",
          "data.heldout_size=2", "eval.k=1", "eval.max_new_tokens=8", "eval.batch_prompts=2",
          "data.synthetic_size=400", "behaviour.kl_probe_every=1", "behaviour.kl_probe_rows=5",
          "filter.max_gen_batches=3"]
CASES = {name: [f"algo={name}"] for name in PRESETS}
CASES["concise"] += ["data.select.size=4", "data.select.k=4", "data.select.max_candidates=32"]
CASES["srpo"] += ["data.synthetic_size=8"]
CASES["pairwise"] += [f"reward.judge.model={ROOT / 'pillion' / 'assets' / 'tiny-arith'}"]  # the shipped model judges
# The critic alone in step 1, then the policy too; a checkpoint each step, the first before the
# policy's optimizer has stepped (its state saved at step 0, not stepped once at lr 0: sharded.py).
CASES["vapo"] += ["ppo.value_pretrain_steps=1", "save_every=1"]
CASES["ref_offload"] = ["algo=grpo", "ref.offload=true"]
# An untied LM head (the shipped model untied, `_untied_model`): its critic's head is frozen, so the sharded
# critic's checkpoint resumes (FSDP2 asked for optimizer state of a head no step had touched).
CASES["critic_cpu"] = ["algo=ppo", "critic.device=cpu", "save_every=2", "model={untied}"]
CASES["cpu_offload"] = ["algo=grpo", "fsdp.cpu_offload=true"]  # ignored on CPU at any N (a warning at N=2)
CASES["ppo"] += ["save_every=2"]  # a sharded critic's checkpoint, resumed replicated below
# Checkpoints at steps 2 and 3: the LoRA one a PEFT folder, Muon's and Dion's with their optimizer state.
# Learning rates that move the policy in step 2, so that step 3's KLs and gradient are not ~0
# (where float32 noise, not the reduction, would decide a relative comparison).
CASES["lora"] = ["algo=grpo", "lora.rank=4", "lora.alpha=8", "lr=1e-2", "save_every=2"]
CASES["muon"] = ["algo=grpo", "optim=muon", "lr=1e-3", "save_every=2"]
# Dion at a rank below the gradient's: at rank_fraction 0.5 some of Q's columns sit at the
# rank tolerance of a low-rank GRPO gradient (optim.py, departure 1), and float32 noise decides
# whether they update, at N=1 as at N=2 (kl_initial then differs by 1e-3 relative).
CASES["dion"] = ["algo=grpo", "optim=dion", "optim.rank_fraction=0.125", "lr=1e-3", "save_every=2"]

# Two ranks only: the critic replicated (critic.replicate), against one process's run of the
# preset (the key changes nothing in one process); checkpoints as the preset's case.
REPLICATED = {"ppo_replicated": "ppo", "vapo_replicated": "vapo"}

DRIVER = """
import json, sys
import torch.distributed as dist
from pillion import config as C
from pillion.train import parallel, rl

out, cases = sys.argv[1], json.loads(sys.argv[2])
parallel.close = lambda world: None  # one process group for every case: closed once, at the end
for name, overrides in cases.items():
    rl.train(C.resolve(C.TrainConfig, overrides=[f"out={out}/{name}", *overrides]))
if dist.is_initialized():
    dist.destroy_process_group()
"""


def _run(out: Path, size: int, untied: Path) -> None:
    cases = {name: [*COMMON, *(o.format(untied=untied) for o in overrides)] for name, overrides in CASES.items()}
    if size > 1:
        cases.update({name: [*COMMON, *CASES[preset], "critic.replicate=true"]
                      for name, preset in REPLICATED.items()})
    _launch([DRIVER, str(out), json.dumps(cases)], size)


def _launch(args: list[str], size: int) -> list[str]:
    """`python -c ARGS` as `size` ranks (one: no process group at all); every rank must exit 0.
    Returns what each rank printed."""
    from tests.train.test_parallel import _env, _free_port

    port = _free_port()
    envs = [_env(r, size, port) for r in range(size)]
    if size == 1:
        envs = [{k: v for k, v in envs[0].items() if k not in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")}]
    procs = [subprocess.Popen([sys.executable, "-c", *args], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for env in envs]
    outputs = [p.communicate(timeout=1200)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * size, "\n".join(outputs[::-1])[-4000:]
    return outputs


def _untied_model(folder: Path) -> Path:
    """The shipped model with an untied LM head: the same logits (the head a copy of the embedding),
    two matrices that train apart."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(ROOT / "pillion" / "assets" / "tiny-arith", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    tensors = load_file(folder / "model.safetensors")
    save_file({**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"].clone()}, folder / "model.safetensors")
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("presets")
    untied = _untied_model(base / "untied")
    _run(base / "one", 1, untied)
    _run(base / "two", 2, untied)
    return base


# Absolute floors of the comparisons below (every other field: 1e-9), for sums and means that cancel
# to about 0 or 1e-4, where float32 rounding, not the reduction over ranks, sets the last digits.
FLOORS = {"pg_loss": 1e-6, "kl_initial_k1": 1e-6, "approx_kl": 1e-7}


def rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("case", [*CASES, *REPLICATED])
def test_two_ranks_log_what_one_process_logs(runs, case):
    """Same steps, same fields, every number within 1e-4 relative (1e-9 absolute). Three fields
    get an absolute floor (FLOORS): pg_loss, a float32 sum whose exact value is about 0 with
    centred advantages (1e-8 in one process, 4e-8 on two ranks), and kl_initial_k1 and
    approx_kl, means of signed per-token log-ratios of about 1e-4 that cancel (float32 forwards
    of the same rows packed with other rows differ by 1e-7 per token: GSPO's step-3 approx_kl,
    -9.3595e-5 against -9.3572e-5, once CPU attention of short rows took batched matmuls whose
    sums depend on the bucket's padded width)."""
    one, two = rows(runs / "one" / REPLICATED.get(case, case)), rows(runs / "two" / case)
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3]
    for x, y in zip(one, two):
        assert x.keys() == y.keys(), (x["step"], set(x) ^ set(y))
        for k in x:
            assert y[k] == pytest.approx(x[k], rel=1e-4, abs=FLOORS.get(k, 1e-9)), (x["step"], k, x[k], y[k])
    updated = [r for r in one if "entropy" in r]
    assert updated and all({"entropy", "grad_norm", "response_length"} <= r.keys() for r in updated)
    if case not in ("raft", "rloo", "dpo"):  # an NLL and REINFORCE losses: no ratio, no clipping
        assert all({"clipfrac", "ratio_min", "ratio_max"} <= r.keys() for r in updated)


@pytest.mark.slow
def test_the_filters_drop_groups_in_the_comparison(runs):
    """The comparison covers what the filters do at N ranks: steps with no group left (skipped
    on every rank), fewer groups than ranks (one rank holds only padding), DAPO's refills."""
    dapo, rej = rows(runs / "one" / "dapo"), rows(runs / "one" / "reinforce_rej")
    assert [r["kept_groups"] for r in dapo] == [0, 2, 2] and all(r["gen_batches"] == 3 for r in dapo)
    assert [r["kept_groups"] for r in rej] == [0, 1, 0]
    assert sum(r.get("skipped_updates", 0) for r in rej) == 2


@pytest.mark.slow
@pytest.mark.parametrize("case", ["lora", "muon", "dion", "ppo_replicated", "critic_cpu"])
def test_a_two_rank_checkpoint_resumes_in_one_process(runs, tmp_path, case):
    """Saved at N=2 after step 2 (DCP shards of the adapters, or of Muon's or Dion's state beside
    AdamW's, or a replicated critic's whole tensors, or a sharded critic from an untied model),
    resumed in one process: step 3 is the uninterrupted 2-rank run's. A LoRA checkpoint is a
    PEFT folder written once, by rank 0."""
    from pillion.cli import main
    from tests.train.test_parallel import _copy_until

    _copy_until(runs / "two" / case, tmp_path / "run", 2)
    assert main(["train", f"out={tmp_path / 'run'}", "--resume"]) == 0
    one, two = rows(tmp_path / "run"), rows(runs / "two" / case)
    assert [r["step"] for r in one] == [1, 2, 3]
    for k in two[2]:
        assert one[2][k] == pytest.approx(two[2][k], rel=1e-4, abs=FLOORS.get(k, 1e-9)), k
    if case == "lora":
        final = runs / "two" / "lora" / "checkpoints" / "step-000003"
        assert (final / "adapter_config.json").is_file() and (final / "adapter_model.safetensors").is_file()
        assert not (final / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize("saved,asked", [("lora", "lora.rank=0"), ("grpo", "lora.rank=4")])
def test_resuming_across_lora_and_full_weights_is_one_line(runs, tmp_path, capsys, saved, asked):
    """A LoRA run's checkpoint resumed without LoRA (or the reverse): exit 2, one line naming
    the checkpoint and the key, and nothing in the run folder changed."""
    import shutil

    from pillion.cli import main

    shutil.copytree(runs / "one" / saved, tmp_path / "run")
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert main(["train", f"out={tmp_path / 'run'}", "--resume", asked, "--allow-change", "lora.rank"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "step-000003" in err and "lora.rank" in err, err
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


RESUME_DRIVER = """
import json, sys
import torch.distributed as dist
from pillion.cli import main
from pillion.train import parallel

parallel.close = lambda world: None  # one process group for every resume
for argv, code in json.loads(sys.argv[1]):
    assert main(argv) == code, argv
if dist.is_initialized():
    dist.destroy_process_group()
"""
# name: (the run resumed from its step-2 checkpoint, critic.replicate on resume)
SWITCHED = {"one_then_replicated": ("one/ppo", True), "sharded_then_replicated": ("two/ppo", True),
            "replicated_then_sharded": ("two/ppo_replicated", False)}


@pytest.fixture(scope="module")
def switched(runs):
    """The step-2 checkpoints of a one-process PPO run, a 2-rank run with a sharded critic and one
    with a replicated critic, each resumed on 2 ranks with the other critic layout; a one-process
    VAPO checkpoint from before the policy's first step; a damaged checkpoint (one launch)."""
    from pillion import config as C
    from pillion.train import rl
    from tests.train.test_parallel import _copy_until

    argvs = []
    for name, (source, replicate) in SWITCHED.items():
        _copy_until(runs / source, runs / "switched" / name, 2)
        argvs.append((["train", f"out={runs / 'switched' / name}", "--resume", f"critic.replicate={replicate}",
                       "--allow-change", "critic.replicate"], 0))
    # VAPO's one-process checkpoint after step 1, before the policy's first step, resumed for steps 2-3
    vapo = runs / "switched" / "vapo_one_step"
    rl.train(C.resolve(C.TrainConfig, overrides=[f"out={vapo}", *COMMON, *CASES["vapo"], "steps=1"]))
    argvs.append((["train", f"out={vapo}", "--resume", "steps=3"], 0))
    # Last, a 2-rank checkpoint missing rank 1's shards: every rank exits 2 with one line
    damaged = runs / "switched" / "damaged"
    _copy_until(runs / "two" / "ppo_replicated", damaged, 2)
    (damaged / "checkpoints" / "step-000002" / "dcp" / "__1_0.distcp").unlink()
    argvs.append((["train", f"out={damaged}", "--resume"], 2))
    outputs = _launch([RESUME_DRIVER, json.dumps(argvs)], 2)
    return runs / "switched", outputs


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SWITCHED))
def test_a_critic_checkpoint_resumes_sharded_or_replicated(runs, switched, name):
    """DCP keys a replicated critic's tensors and optimizer state by name as FSDP2 keys a sharded
    one's, and a one-process checkpoint's critic loads whole: step 3 after the switch is the
    uninterrupted run's, within 1e-4 relative."""
    resumed, uninterrupted = rows(switched[0] / name), rows(runs / SWITCHED[name][0])
    assert [r["step"] for r in resumed] == [1, 2, 3] and resumed[2]["value_loss"] > 0
    for k in uninterrupted[2]:
        assert resumed[2][k] == pytest.approx(uninterrupted[2][k], rel=1e-4, abs=FLOORS.get(k, 1e-9)), k


@pytest.mark.slow
def test_a_one_process_checkpoint_before_the_policy_steps_resumes_at_two_ranks(runs, switched):
    """VAPO saved by one process while the critic pretrains (the policy's AdamW has no state yet),
    resumed on 2 ranks: its AdamW starts at step 0 as one process's does (FSDP2's state-dict API
    would step an empty state once at lr 0, and the policy's first update would then take
    AdamW's second bias correction), so steps 2 and 3 are the uninterrupted run's."""
    resumed, uninterrupted = rows(switched[0] / "vapo_one_step"), rows(runs / "one" / "vapo")
    assert [r["step"] for r in resumed] == [1, 2, 3] and "grad_norm" in resumed[1] and "grad_norm" not in resumed[0]
    for x, y in zip(uninterrupted, resumed):
        for k in x:
            assert y[k] == pytest.approx(x[k], rel=1e-4, abs=FLOORS.get(k, 1e-9)), (x["step"], k)


@pytest.mark.slow
def test_a_two_rank_checkpoint_missing_shards_is_one_line(switched):
    """DCP's error at N ranks (a CheckpointException holding each rank's) becomes the one line a
    damaged checkpoint gives in one process, naming its folder and the first rank's error: every
    rank exits 2 (the driver checks), the line is printed once per node, no traceback."""
    folder = switched[0] / "damaged" / "checkpoints" / "step-000002" / "dcp"
    lines = [line for output in switched[1] for line in output.splitlines() if line.startswith("pillion train: ")]
    assert len(lines) == 1 and not any("Traceback" in output for output in switched[1]), switched[1][0][-3000:]
    assert lines[0].startswith(f"pillion train: {folder}: cannot load the sharded checkpoint (FileNotFoundError")
    assert "__1_0.distcp" in lines[0], lines[0]
