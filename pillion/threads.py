"""How many intra-op threads torch uses on the CPU: the `threads` key of every command.

On a CPU every op that torch splits over threads waits at its end for the slowest thread. When
another process holds a core (a browser, an editor, a second run), the thread on that core runs
at a fraction of its speed and every op waits for it: measured on 2 cores with one busy process
beside it, the README job took 3-5x longer with two threads than with one (table in
benchmarks/threads_cpu.py). So `threads=auto` (the default) counts the cores that other
processes leave free when the command starts and uses that many (even the shipped 0.8M-parameter
model gains from a second idle core: the README job 72 s at two threads, 94 s at one). A number
sets it outright;
`OMP_NUM_THREADS` in the environment is honoured as such a number. With CUDA the CPU only feeds
the GPU, and torch's own default stays.

The choice is printed in the run's first lines and recorded in its report; a resumed run keeps
the count it started with, since a different count may sum floats in a different order.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

# A core counts as busy when other processes use at least this share of it.
BUSY_SHARE = 0.5


@dataclass
class ThreadChoice:
    threads: int
    reason: str

    def line(self) -> str:
        return f"threads: {self.threads} ({self.reason})"


def cores() -> int:
    """CPUs this process may run on (taskset / cgroup affinity), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, own): CPU ticks all processes spent busy, and those this process spent, so far."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rpartition(")")[2].split()  # the command name may hold spaces
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy, int(own[11]) + int(own[12])  # utime + stime of this process


def busy_cores(window: float = 0.3) -> float:
    """Cores other processes keep busy, measured over `window` seconds (this process left out).
    Where /proc is missing, the one-minute load average stands in for it."""
    start = _cpu_jiffies()
    if start is None:
        try:
            return float(os.getloadavg()[0])
        except OSError:
            return 0.0
    time.sleep(window)
    end = _cpu_jiffies()
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    others = (end[0] - start[0]) - (end[1] - start[1])
    return max(0.0, others / (ticks * window))


def choose(setting: int | str, device: torch.device, busy: float | None = None) -> ThreadChoice:
    """The intra-op thread count for `setting` (a number, or "auto"). `busy`: cores busy with
    other work (None: measured now).
    Under torchrun the LOCAL_WORLD_SIZE ranks on this machine share its cores."""
    if setting != "auto":
        return ThreadChoice(int(setting), "threads key")
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return ThreadChoice(int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS")
    if device.type != "cpu":
        return ThreadChoice(torch.get_num_threads(), f"torch's default beside {device.type}")
    total = cores()
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    share = max(1, total // max(1, ranks_here))  # each of this job's processes on this machine
    if ranks_here > 1:  # the other ranks are busy loading too: measuring would count them
        return ThreadChoice(share, f"auto: {total} cores shared by {ranks_here} ranks")
    busy = busy_cores() if busy is None else busy
    taken = int(busy + (1 - BUSY_SHARE))  # a core counts as taken from half of it busy
    free = max(1, min(share, total - taken))
    return ThreadChoice(free, f"auto: {total} cores, {busy:.1f} busy with other work")


def apply(choice: ThreadChoice) -> ThreadChoice:
    torch.set_num_threads(choice.threads)
    return choice
