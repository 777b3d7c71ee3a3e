"""Fault test: SIGKILL `pillion train` at random moments, resume each time, compare with a clean run.

    python benchmarks/faults.py                 # 20 kills, ~5-8 minutes on 2 CPU cores
    python benchmarks/faults.py --kills 5 --steps 12
    python benchmarks/faults.py --disk-full     # 10 full disks instead (root: mounts a small tmpfs)
    python benchmarks/faults.py --ranks 2       # 2-rank runs under torchrun (gloo): SIGKILL of one rank

A reference run goes straight through. The same run is then started, killed with SIGKILL (the
whole process group: trainer and grading workers) and resumed with `--resume`, `--kills` times:
half of the kills land at a random moment after start, half inside a checkpoint write (the
script polls the checkpoints folder for a `step-*.tmp` folder and kills a random few
milliseconds after it appears). A kill before the run folder holds its config.yaml is followed
by a fresh start, as a user would do. Every run that reaches its end (before the next kill
lands, and finally the last one, resumed to the end) has its metrics.jsonl and report.json
compared with the reference's on every field but wall-clock times and the evaluations'
`versions` records: those name the code that ran (the checkout's commit, "+dirty" once edited),
which a commit or an edit during the benchmark changes while the results stay equal. A mismatch
prints its first difference and keeps the folder; a finished run starts again from scratch for
the next kills. Prints kills survived / kills tried and how many finished runs matched; exits 1
unless all did. Not part of CI (it takes minutes and is timing-driven by design).

--ranks N: every run (the reference too) is `torchrun --standalone --nproc_per_node=N -m pillion
train ...` on CPU (gloo), and each kill is a SIGKILL of one rank, drawn (found among the agent's
children through /proc; the whole job while its workers are not started yet): torchrun's agent
then stops the other ranks and exits, as on a cluster where one node dies. Whatever the job
left (its grading workers) is then killed with the process group. Resumes run at N ranks too;
the comparison with the reference is exact, as at N=1.

--disk-full: the run folder lives on a tmpfs of --disk-mb MiB that the script mounts (root only;
without the right to mount it says so and exits 0). `--fills` times, a run is started, the
disk is filled at a random moment (a file written until ENOSPC; every other fill after the
run's first step is logged, so that fills also land in training and not only in its start-up),
and the run must end by itself
with exit status 2, one line "pillion train: no space left on device while writing ...", no
traceback and no temporary file or folder left; then the file is deleted (space freed), the run
is resumed with --resume to its end and compared with the reference as above. Prints fills
survived / fills tried.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pillion.train.update import TIMING_FIELDS

TIMING = TIMING_FIELDS


def config(steps: int) -> list[str]:
    return [f"steps={steps}", "save_every=3", "prompts_per_step=4", "group_size=4", "max_new_tokens=24",
            "micro_batch=16", "data.heldout_size=8", "eval.k=1", "eval.max_new_tokens=24", "data.synthetic_size=400",
            "reward.answer_style=auto"]  # auto: some answers go through the symbolic grading worker


def start(out: Path, args: list[str], log, ranks: int = 1) -> subprocess.Popen:
    """`pillion train` in a session of its own (one kill reaches its grading workers too); with
    ranks > 1 under torchrun, one thread per rank."""
    if ranks == 1:
        cmd, env = [sys.executable, "-m", "pillion"], None
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m",
               "pillion"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*cmd, "train", f"out={out}", *args], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env=env)


def rank_pids(parent: int) -> dict[int, int]:
    """RANK -> pid of torchrun's workers (children of the agent `parent`) that run now."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent:
            rank = next((int(v[5:]) for v in env if v.startswith(b"RANK=")), None)
            if rank is not None:
                found[rank] = int(entry.name)
    return found


def kill(proc: subprocess.Popen, ranks: int, rng: random.Random) -> str:
    """SIGKILL the run: one process, or one drawn rank of a torchrun job (then wait for the agent
    to stop the others); then whatever is left of its process group. Returns what was killed."""
    what = "the process"
    workers = rank_pids(proc.pid) if ranks > 1 else {}
    if workers:
        rank = rng.choice(sorted(workers))
        with contextlib.suppress(ProcessLookupError):
            os.kill(workers[rank], signal.SIGKILL)
        what = f"rank {rank}"
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            what += " (the agent did not stop the job in 300 s)"
    elif ranks > 1:
        what = "the whole job (workers not started yet)"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return what


def without_provenance(value):
    """A report without its evaluations' `versions` records (the code that ran them: a resume after
    an edit or a commit of the checkout says "+dirty" or another commit, the results being equal)."""
    if isinstance(value, dict):
        return {k: without_provenance(v) for k, v in value.items() if k != "versions"}
    return value


def comparable(run_dir: Path) -> tuple[list[dict], dict]:
    rows = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    report = without_provenance(json.loads((run_dir / "report.json").read_text()))
    report.pop("run_dir", None)
    report.pop("wall_seconds", None)
    return rows, report


def wait_for_checkpoint_write(out: Path, proc: subprocess.Popen, deadline: float) -> bool:
    """Poll for a step-*.tmp folder (a checkpoint being written) that this run made, not one a
    previous kill left (the run removes those at its start); False if the run ends first."""
    folder = out / "checkpoints"
    stale = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    while time.monotonic() < deadline and proc.poll() is None:
        if folder.is_dir() and any(p.name.endswith(".tmp") and p.name not in stale for p in folder.iterdir()):
            return True
        time.sleep(0.002)
    return False


def first_difference(run_dir: Path, reference: Path) -> str:
    """Where a run's comparable records first differ from the reference's (for the printout)."""
    (rows, report), (ref_rows, ref_report) = comparable(run_dir), comparable(reference)
    if [r.get("step") for r in rows] != [r.get("step") for r in ref_rows]:
        return f"logged steps {[r.get('step') for r in rows]} vs {[r.get('step') for r in ref_rows]}"
    for row, ref in zip(rows, ref_rows):
        for key in sorted(set(row) | set(ref)):
            if row.get(key) != ref.get(key):
                return f"step {row.get('step')} {key}: {row.get(key)!r} vs {ref.get(key)!r}"
    for key in sorted(set(report) | set(ref_report)):
        if report.get(key) != ref_report.get(key):
            return f"report.json {key}: {str(report.get(key))[:200]} vs {str(ref_report.get(key))[:200]}"
    return "none"


def fill(path: Path) -> int:
    """Write zeros into `path` until the file system has no space left; return the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for block in (1 << 20, 4096):  # MiB blocks, then pages for the last partial MiB
            try:
                while True:
                    written += os.write(fd, bytes(block))
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return written


def leftovers(out: Path) -> list[str]:
    """Temporary files or folders a failed write would have left (*.tmp) in a run folder."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.tmp")) if out.is_dir() else []


def disk_full(args, cfg: list[str], reference: Path, clean_seconds: float, root: Path, rng: random.Random) -> int:
    """--disk-full (module docstring): `args.fills` runs on a small tmpfs, each filled at a random
    moment, then freed, resumed and compared with the reference."""
    disk = root / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.disk_mb}m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        print(f"--disk-full: cannot mount a tmpfs here ({mounted.stderr.strip() or 'not permitted'}); skipped")
        return 0
    survived = tried = 0
    try:
        while tried < args.fills:
            out, filler, log_path = disk / "run", disk / "filler", root / f"fill-{tried + 1}.txt"
            shutil.rmtree(out, ignore_errors=True)
            with open(log_path, "w") as log:
                proc = start(out, cfg, log)
                t_start = time.monotonic()
                if tried % 2 == 1:  # half the fills once training has started (its first step logged)
                    while proc.poll() is None and not (out / "metrics.jsonl").is_file():
                        time.sleep(0.01)
                time.sleep(rng.uniform(0.0, max(0.1, clean_seconds * 0.9 - (time.monotonic() - t_start))))
                if proc.poll() is not None:  # it ended before the disk filled: place the fill again
                    proc.wait()
                    continue
                tried += 1
                filled = fill(filler)
                try:
                    code = proc.wait(timeout=10 * clean_seconds)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    code = proc.wait()
            text = log_path.read_text()
            lines = [line for line in text.splitlines() if "no space left on device while writing" in line]
            stopped = (code == 2 and len(lines) == 1 and lines[0].startswith("pillion train: ")
                       and "Traceback" not in text and not leftovers(out))
            done = sorted(p.name for p in (out / "checkpoints").glob("step-*")) if (out / "checkpoints").is_dir() \
                else []
            filler.unlink()  # space freed
            with open(log_path, "a") as log:
                resume = (out / "config.yaml").is_file()  # else the fill came before the run folder was made
                if not resume:
                    shutil.rmtree(out, ignore_errors=True)
                final = start(out, ["--resume"] if resume else cfg, log).wait()
            matched = final == 0 and comparable(out) == comparable(reference)
            survived += stopped and matched
            print(f"fill {tried}: {filled >> 10} KiB written; run exit {code}, "
                  f"{'one line' if len(lines) == 1 else f'{len(lines)} lines'}: "
                  f"{lines[0].split(': ', 1)[-1][:140] if lines else '-'}; checkpoints {done}; leftovers "
                  f"{leftovers(out) or 'none'}; resumed ({'--resume' if resume else 'fresh'}) exit {final}, "
                  f"equal to the reference: {matched}", flush=True)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    print(f"fills survived / fills tried: {survived}/{tried} (one line, exit 2, no traceback, no leftovers; "
          "resumed run equal to the uninterrupted one on every non-timing field)")
    return 0 if survived == tried else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    parser.add_argument("--keep", action="store_true", help="keep the run folders (printed at the end)")
    parser.add_argument("--disk-full", action="store_true", help="fill the disk instead of killing (root: tmpfs)")
    parser.add_argument("--fills", type=int, default=10, help="--disk-full: runs to fill, free and resume")
    parser.add_argument("--disk-mb", type=int, default=64, help="--disk-full: size of the tmpfs in MiB")
    parser.add_argument("--ranks", type=int, default=1, help="ranks per run (torchrun, gloo); kills hit one rank")
    args = parser.parse_args()
    if args.ranks > 1 and args.disk_full:
        parser.error("--disk-full runs one process; leave out --ranks")
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="pillion-faults-"))
    log = open(root / "log.txt", "w")
    cfg = config(args.steps)

    t0 = time.monotonic()
    reference = root / "reference"
    if start(reference, cfg, log, args.ranks).wait() != 0:
        print(f"the reference run failed; see {root / 'log.txt'}")
        return 1
    clean_seconds = time.monotonic() - t0
    print(f"reference run: {clean_seconds:.1f} s")
    if args.disk_full:
        code = disk_full(args, cfg, reference, clean_seconds, root, rng)
        print(f"total {time.monotonic() - t0:.0f} s")
        if args.keep:
            print(f"run folders and logs: {root}")
        else:
            log.close()
            shutil.rmtree(root, ignore_errors=True)
        return code

    out = root / "killed"
    tried = 0
    inside = 0
    runs: list[tuple[int, bool]] = []  # (kills it took, equal to the reference) of every run that finished
    since = 0  # kills since the run in `out` started from scratch

    def finished(code: int) -> bool:
        """Compare a run that ended (exit `code`) with the reference; a mismatch says where and
        keeps the folder. Returns whether it matched."""
        equal = code == 0 and comparable(out) == comparable(reference)
        runs.append((since, equal))
        if code == 0 and not equal:
            kept = root / f"mismatch-{len(runs)}"
            shutil.copytree(out, kept)
            print(f"run {len(runs)} ({since} kills): first difference (resumed vs uninterrupted): "
                  f"{first_difference(out, reference)}; folder kept: {kept}", flush=True)
        return equal

    while tried < args.kills:
        resume = (out / "config.yaml").is_file()
        proc = start(out, ["--resume"] if resume else cfg, log, args.ranks)
        inside_write = tried % 2 == 1
        if inside_write:
            hit = wait_for_checkpoint_write(out, proc, time.monotonic() + clean_seconds)
            time.sleep(rng.uniform(0.0, 0.03))  # land at different points of the write
        else:
            time.sleep(rng.uniform(0.5, max(1.0, clean_seconds * 0.6)))
            hit = False
        if proc.poll() is not None:  # ended before the kill landed
            if proc.returncode != 0:  # the previous kill left a folder that does not resume
                print(f"kills survived / kills tried: {tried - 1}/{tried}: a resume failed with exit code "
                      f"{proc.returncode}; see {root / 'log.txt'}")
                return 1
            finished(0)  # every run that finishes is compared, not only the last one
            shutil.rmtree(out)  # then the whole run starts again to place more kills
            since = 0
            continue
        what = kill(proc, args.ranks, rng)
        tried += 1
        since += 1
        inside += hit
        done = sorted(p.name for p in (out / "checkpoints").glob("step-*")) if (out / "checkpoints").is_dir() else []
        print(f"kill {tried} ({what}): {'inside a checkpoint write' if hit else 'at a random moment'}; checkpoints "
              f"folder: {done}", flush=True)

    final = start(out, ["--resume"] if (out / "config.yaml").is_file() else cfg, log, args.ranks).wait()
    survived = tried if final == 0 else tried - 1
    finished(final)
    matched = all(equal for _, equal in runs)
    print(f"kills survived / kills tried: {survived}/{tried} ({inside} inside checkpoint writes, "
          f"{tried - inside} at random moments)")
    print(f"runs that finished: {len(runs)} (kills in each: {[k for k, _ in runs]}); metrics.jsonl and report.json "
          f"equal to the uninterrupted run on every non-timing field: {sum(e for _, e in runs)}/{len(runs)}")
    print(f"total {time.monotonic() - t0:.0f} s")
    if args.keep:
        print(f"run folders: {root}")
    else:
        log.close()
        shutil.rmtree(root, ignore_errors=True)
    return 0 if matched else 1


if __name__ == "__main__":
    sys.exit(main())
