"""Symbolic grading in worker processes: `math_equal`, `GradingPool`, `grade_batch`.

`math_equal(pred, gold)` is the grader: `math.prepare` decides most answers in-process; the
ones it leaves undecided go to a worker process that runs `symbolic.symbolic_equal`
(math-verify's LaTeX parser and sympy). `math_equal` lives here, beside the pool it may need,
so that `math.py` stays a pure module the workers import and nothing imports back (the import
graph is math <- symbolic <- pool). The worker is a persistent `subprocess.Popen` child
speaking JSON lines; the caller waits on its pipe with `select` and a deadline, and kills it
once the job has used its timeout in CPU seconds (`math_equal`'s default pool keeps a booted
spare to take over at once). CPU seconds, not wall seconds, so that a loaded machine, where the
worker waits for a core, cannot turn a right answer into a timeout: a run grades alike however
busy the machine is, and a resumed run as the uninterrupted one. Without /proc (macOS) the
timeout is wall-clock time. No signals
are used, so this works from any thread and inside daemonic worker processes where
`signal.alarm` (math-verify's own timeout) and `multiprocessing` children do not. The worker
caps its own address space (RLIMIT_AS), so `10^{10^{10^{10}}}` ends in a MemoryError or a
timeout, never in the host swapping. Only answers that pass `math._is_safe_for_sympy` ever
reach a worker (`prepare` enforces it).

Liveness: before any decision about a worker (its job timed out, it failed to start), the
pool reads everything the worker has already written, so a worker that answered, or said
"ready", while the parent was busy elsewhere (an idle minute between training steps, a loaded
machine) is never mistaken for a slow or dead one. Only a worker that has not said "ready"
in all it wrote, and is older than WORKER_STARTUP_S, counts as failed to start.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time

from pillion.rewards.math import prepare
from pillion.rewards.symbolic import symbolic_equal

WORKER_MEMORY_BYTES = 2 << 30  # RLIMIT_AS of each symbolic worker
WORKER_STARTUP_S = 60.0  # importing sympy on a loaded machine; not part of a call's timeout
# A job's timeout counts the worker's CPU seconds, so that a loaded machine (the worker waiting
# for a core) cannot turn a right answer into a timeout: the same run grades alike on an idle
# and a busy machine. A worker that uses no CPU and never answers is still given up after this
# many times the timeout of wall-clock time (at least STALLED_MIN_S).
STALLED_FACTOR, STALLED_MIN_S = 10.0, 60.0
_WORKER_CODE = "from pillion.rewards.pool import _worker_main; _worker_main()"  # run by `python -c`


# ---------------------------------------------------------------------------------------------
# Worker process (child side)
# ---------------------------------------------------------------------------------------------

def _worker_main() -> None:
    """Loop of the symbolic worker process: one JSON request per line on stdin."""
    import logging
    import resource
    import signal

    # Ctrl-C reaches the whole process group: the parent decides (and kills this worker at
    # close), so the worker must not die with a KeyboardInterrupt traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    out = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout = sys.stderr  # nothing but protocol lines may reach the parent's pipe
    logging.disable(logging.CRITICAL)  # math-verify warns on every failed parse
    # Pay the imports and the parser's first-use set-up (about 0.5 s: the grammar, sympy's
    # caches) before announcing readiness, so that no job's deadline pays for them.
    symbolic_equal("(x+1)^2", "x^2+2x+1")
    try:
        out.write("ready\n")
        for line in sys.stdin:
            request = json.loads(line)
            try:
                equal = bool(symbolic_equal(request["pred"], request["gold"], request.get("imaginary", True)))
            except (Exception, MemoryError, RecursionError):
                equal = False
            out.write(json.dumps({"id": request["id"], "equal": equal}) + "\n")
    except BrokenPipeError:
        os._exit(0)  # the parent is gone (its process ended without closing the pool): end quietly


# ---------------------------------------------------------------------------------------------
# Worker processes (parent side)
# ---------------------------------------------------------------------------------------------

class _Worker:
    """One symbolic worker subprocess, with a line reader over its stdout."""

    def __init__(self):
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=root,
        )
        self.fd = self.proc.stdout.fileno()
        self.started = time.monotonic()
        self.buffer = b""
        self.ready = False
        self.job = -1  # index of the item in flight, -1 when idle
        self.deadline = 0.0  # when the job's CPU time is looked at next (monotonic clock)
        self.sent, self.cpu_at_send, self.timeout = 0.0, None, 0.0

    def pump(self) -> list[str] | None:
        """Read what the worker wrote (call when select says readable): its complete result
        lines, [] if none is complete yet, None once it has died."""
        chunk = os.read(self.fd, 65536)
        if not chunk:
            return None
        *lines, self.buffer = (self.buffer + chunk).split(b"\n")
        out = []
        for line in lines:
            if not self.ready:
                self.ready = line == b"ready"
            else:
                out.append(line.decode())
        return out

    def send(self, job: int, pred: str, gold: str, imaginary: bool, timeout: float) -> None:
        request = {"id": job, "pred": pred, "gold": gold, "imaginary": imaginary}
        self.cpu_at_send = self.cpu_seconds()
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        self.job, self.sent, self.timeout = job, time.monotonic(), timeout
        self.deadline = self.sent + timeout  # the job cannot have used `timeout` CPU seconds before

    def cpu_seconds(self) -> float | None:
        """CPU seconds (user + system) the worker has used, or None where /proc cannot tell."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None

    def out_of_time(self, now: float) -> bool:
        """Past the deadline: whether the job has used its timeout in CPU seconds (or, without
        /proc, in wall seconds), or stalled (STALLED_FACTOR); else the deadline moves to when it
        could have."""
        cpu = self.cpu_seconds()
        stalled = now - self.sent >= max(STALLED_FACTOR * self.timeout, STALLED_MIN_S)
        if cpu is None or self.cpu_at_send is None or stalled:
            return True
        left = self.timeout - (cpu - self.cpu_at_send)
        if left <= 0:
            return True
        self.deadline = now + left  # it waited for a core: the rest of its CPU budget, at the earliest
        return False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


# One single-worker pool per process for `math_equal` without a pool: created on first
# symbolic use, shared by threads (the pool serialises calls), killed at exit. Keyed by pid:
# a forked child must not talk to its parent's worker over inherited pipes. This is the
# module's only state; pass `pool=` to avoid it.
_DEFAULT_POOL: dict[int, GradingPool] = {}
_DEFAULT_LOCK = threading.Lock()


def _default_pool() -> GradingPool:
    with _DEFAULT_LOCK:
        pid = os.getpid()
        if pid not in _DEFAULT_POOL:
            _DEFAULT_POOL.clear()  # a parent's pool, inherited through fork: not ours to use
            _DEFAULT_POOL[pid] = GradingPool(workers=1, spares=1)
            atexit.register(_DEFAULT_POOL[pid].close)
        return _DEFAULT_POOL[pid]


class GradingPool:
    """Worker processes that grade answers in parallel, kept alive across training steps.

        with GradingPool(workers=4, timeout=5.0) as pool:
            verdicts = pool.grade(preds, golds)        # list[bool], same order

    Each item runs under its own timeout, in the worker's CPU seconds from when it takes the
    item (module docstring); a worker past it is killed and replaced and the item counts as not
    equal (`timeouts` counts these).
    Fast-path items never leave this process, and repeated (pred, gold) pairs (common within
    a GRPO group) are graded once. Safe to call from any thread (calls are serialised).
    `spares` workers are kept booted to replace killed ones at once, so the call after a
    timeout does not wait for sympy's import (about 0.5 s). Create the pool in the process
    that uses it: its pipes are not shared across fork.
    """

    def __init__(self, workers: int | None = None, timeout: float = 5.0, spares: int = 0):
        self.timeout = timeout
        self.workers = [_Worker() for _ in range(max(1, workers or os.cpu_count() or 1))]
        self.spares = [_Worker() for _ in range(spares)]
        self.timeouts = 0
        self.lock = threading.Lock()

    def __enter__(self) -> GradingPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for worker in self.workers + self.spares:
            worker.kill()
        self.workers, self.spares = [], []

    def grade(self, preds, golds, timeout: float | None = None, imaginary: list[bool] | None = None,
              questions: list[str | None] | None = None) -> list[bool]:
        """Verdicts of `math_equal(pred, gold)` for each pair, in order. `imaginary[i]`: whether
        `i` is the imaginary unit in pair i (default yes; see `math.imaginary_unit`);
        `questions[i]`: the question of pair i, when known (see `math.prepare`)."""
        for name, flags in (("imaginary flags", imaginary), ("questions", questions)):
            if len(preds) != len(golds) or (flags is not None and len(flags) != len(preds)):
                raise ValueError(f"{len(preds)} predictions but {len(golds)} golds"
                                 + ("" if flags is None else f" and {len(flags)} {name}"))
        timeout = self.timeout if timeout is None else timeout
        results: list[bool | None] = [None] * len(preds)
        todo: dict[tuple[str, str, bool], list[int]] = {}
        for i, (pred, gold) in enumerate(zip(preds, golds)):
            verdict, p, g = prepare(pred, gold, None if questions is None else questions[i])
            if verdict is None:
                todo.setdefault((p, g, True if imaginary is None else bool(imaginary[i])), []).append(i)
            else:
                results[i] = verdict
        if todo:
            with self.lock:
                for key, equal in zip(todo, self._run(list(todo), timeout)):
                    for i in todo[key]:
                        results[i] = equal
        return [bool(r) for r in results]

    def _replace(self, k: int) -> None:
        self.workers[k].kill()
        if self.spares:
            self.workers[k] = self.spares.pop(0)
            self.spares.append(_Worker())
        else:
            self.workers[k] = _Worker()

    def _read(self, k: int, verdicts: list[bool]) -> None:
        """Take in what worker k wrote: its "ready" line, results; replace it if it died."""
        worker = self.workers[k]
        lines = worker.pump()
        if lines is None:  # died (memory cap, or killed from outside): its job stays False
            if not worker.ready:
                raise RuntimeError(f"a symbolic grading worker (pid {worker.proc.pid}) died while starting")
            self._replace(k)
            return
        for line in lines:
            message = json.loads(line)
            if message["id"] == worker.job:
                verdicts[worker.job] = bool(message["equal"])
                worker.job = -1

    def _drain(self, verdicts: list[bool], wait: float = 0.0) -> None:
        """Read every worker that has written something, waiting up to `wait` seconds for one.
        With wait=0 it only collects what is already in the pipes."""
        fds = {w.fd: k for k, w in enumerate(self.workers) if w.job >= 0 or not w.ready}
        if not fds:
            return
        for fd in select.select(list(fds), [], [], max(0.0, wait))[0]:
            self._read(fds[fd], verdicts)

    def _run(self, jobs: list[tuple[str, str, bool]], timeout: float) -> list[bool]:
        """Grade (pred, gold, imaginary) jobs on the workers, one job in flight per worker."""
        verdicts = [False] * len(jobs)
        pending = list(range(len(jobs) - 1, -1, -1))  # a stack: pop() hands out job 0 first
        while pending or any(w.job >= 0 for w in self.workers):
            # What the workers already said comes first: a result or a "ready" line that sits
            # in the pipe is never overruled by the clock.
            self._drain(verdicts)
            now = time.monotonic()
            for k, worker in enumerate(self.workers):
                if worker.job >= 0 and now >= worker.deadline and worker.out_of_time(now):
                    self.timeouts += 1
                    self._replace(k)  # its job stays False
                elif not worker.ready and now - worker.started > WORKER_STARTUP_S:
                    raise RuntimeError(f"a symbolic grading worker (pid {worker.proc.pid}) did not start "
                                       f"within {WORKER_STARTUP_S:.0f} s")
                elif worker.ready and worker.job < 0 and pending:
                    job = pending.pop()
                    try:
                        worker.send(job, *jobs[job], timeout)
                    except OSError:
                        pending.append(job)
                        self._replace(k)
            deadlines = [w.deadline - now for w in self.workers if w.job >= 0]
            self._drain(verdicts, wait=min([0.5] + deadlines))
        return verdicts


def math_equal(pred: str | None, gold: str | None, timeout: float = 5.0, pool: GradingPool | None = None,
               imaginary: bool = True, question: str | None = None) -> bool:
    """True when the final answer `pred` equals `gold` (rules in `math.py`'s docstring).

    Plain numbers and exact matches are decided in-process; symbolic answers go to a worker
    process (the pool's, or a per-process default one) and count as NOT equal when they take
    longer than `timeout` CPU seconds. None on either side is not equal. Never raises on model text.
    `question`, when given, is the problem's (an inequality must be in one of its variables).
    """
    verdict, _, _ = prepare(pred, gold, question)
    if verdict is not None:
        return verdict
    return (pool or _default_pool()).grade([pred], [gold], timeout=timeout, imaginary=[imaginary],
                                           questions=[question])[0]


def grade_batch(preds, golds, timeout: float = 5.0, workers: int | None = None,
                pool: GradingPool | None = None) -> list[bool]:
    """`math_equal` over many answers in parallel; a temporary pool unless `pool` is given."""
    if pool is not None:
        return pool.grade(preds, golds, timeout=timeout)
    verdicts = [prepare(p, g)[0] for p, g in zip(preds, golds)]
    if all(v is not None for v in verdicts):
        return [bool(v) for v in verdicts]  # nothing symbolic: no processes at all
    with GradingPool(workers=workers, timeout=timeout) as temporary:
        return temporary.grade(preds, golds, timeout=timeout)
