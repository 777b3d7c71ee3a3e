"""Timeouts, pathological inputs, injection, threads and worker processes (pool.py).

No test here sleeps or checks elapsed time: deadlines are driven by a fake clock that moves only
when the test says so (and a job's CPU seconds, where a test needs them, by a fake reading), and
the bound "no call slower than its timeout + 1 s" is shown by the deadline logic (what `select`
is asked to wait, the `timeouts` counter, the killed worker); benchmarks/grading.py measures it
in seconds. Answers that must come out right get a timeout no machine reaches; an answer that
must time out never finishes at all.
"""

import json
import multiprocessing
import select
import threading
import time
import types

import pytest

from pillion.problem import Problem
from pillion.rewards import GradingPool, RewardConfig, grade_batch, math_equal, score
from pillion.rewards import pool as pool_module
from pillion.rewards.math import _is_safe_for_sympy, prepare

GENEROUS = 120.0  # for answers that must be graded right, even on a loaded machine
TIMEOUT = 1.0  # for answers that never finish: (9999!)! has ~10^37 digits
NEVER = "\\frac{(9999!)!}{3}"


class FakeClock:
    """`pool.time` and `pool.select` for one test: the clock stands still until `advance`;
    `select` really waits (a short while) but records what it was asked to wait."""

    def __init__(self, monkeypatch, when_stuck=None):
        # From the real clock's reading: workers record their start on it.
        self.now, self.waits, self.when_stuck = time.monotonic(), [], when_stuck
        monkeypatch.setattr(pool_module, "time", types.SimpleNamespace(monotonic=lambda: self.now))
        monkeypatch.setattr(pool_module, "select", types.SimpleNamespace(select=self.select))

    def select(self, read, write, error, wait):
        self.waits.append(wait)
        if self.when_stuck is not None and wait > 0 and self.when_stuck():
            self.now += 10**6  # every deadline passes
        return select.select(read, write, error, min(wait, 0.5))


class FakeCPU:
    """`_Worker.cpu_seconds` for one test: every worker has used `used` CPU seconds."""

    def __init__(self, monkeypatch):
        self.used = 0.0
        monkeypatch.setattr(pool_module._Worker, "cpu_seconds", lambda worker: self.used)


# A worker that speaks the protocol and answers "equal" to every job once the file GATE exists,
# using (almost) no CPU until then: a worker that waits for a core, or one that hangs.
GATED = """import json, os, sys, time
print("ready", flush=True)
for line in sys.stdin:
    while not os.path.exists({gate!r}):
        time.sleep(0.01)
    print(json.dumps({{"id": json.loads(line)["id"], "equal": True}}), flush=True)
"""


def test_a_worker_waiting_for_a_core_is_not_timed_out(monkeypatch, tmp_path):
    # The timeout counts the worker's CPU seconds: on a loaded machine the clock passes the
    # deadline while the worker waits for a core, and its right answer must still count (it was
    # False, a reward that depended on the machine's load). Wall time passes 3 timeouts per
    # look at the pipe; the worker has used no CPU; it answers after the third look. (The worker
    # never answers by itself: its answer is handed to the pool at the third look, so that no
    # real process's timing enters the test; twice, once in CI, a gated worker's real answer
    # was not seen after its gate opened, not understood.)
    monkeypatch.setattr(pool_module, "_WORKER_CODE", GATED.format(gate=str(tmp_path / "never")))
    with GradingPool(workers=1, timeout=TIMEOUT) as pool:
        assert select.select([pool.workers[0].fd], [], [], GENEROUS)[0], "the worker never started"
        worker = pool.workers[0]
        clock, looks = FakeClock(monkeypatch), []
        FakeCPU(monkeypatch)
        caller = threading.current_thread()

        def loaded(read, write, error, wait):
            # Only this test's own waits for its job: a select from any other thread or on other
            # pipes passes through untouched (it must not move this test's clock).
            if threading.current_thread() is not caller or worker.fd not in read or worker.job < 0:
                return select.select(read, write, error, min(wait, 0.5))
            if wait > 0:
                looks.append(wait)
                clock.now += 3 * TIMEOUT
                if len(looks) == 3:  # its answer is in the pipe (read as the worker would write it)
                    worker.pump = lambda: [json.dumps({"id": worker.job, "equal": True})]
                    return [worker.fd], [], []
                return [], [], []
            return select.select(read, write, error, 0)

        monkeypatch.setattr(pool_module, "select", types.SimpleNamespace(select=loaded))
        verdict = pool.grade(["(x+1)^2"], ["x^2+2x+1"])
        state = f"looks {looks}, timeouts {pool.timeouts}, same worker {pool.workers[0] is worker}"
        assert verdict == [True], state
        assert pool.timeouts == 0 and len(looks) == 3, state
        assert all(w <= TIMEOUT for w in looks)  # each wait: the rest of the CPU budget at most


def test_a_worker_reports_its_cpu_seconds():
    with GradingPool(workers=1, timeout=GENEROUS) as pool:
        boot(pool)  # importing sympy and a first parse: well over one clock tick of CPU
        used = pool.workers[0].cpu_seconds()
        assert used is None or used > 0  # None only without /proc (macOS): wall-clock deadlines


def test_a_worker_that_neither_computes_nor_answers_is_given_up(monkeypatch, tmp_path):
    # No CPU used and no answer for STALLED_FACTOR timeouts (at least STALLED_MIN_S) of wall time.
    monkeypatch.setattr(pool_module, "_WORKER_CODE", GATED.format(gate=str(tmp_path / "never")))
    with GradingPool(workers=1, timeout=TIMEOUT) as pool:
        assert select.select([pool.workers[0].fd], [], [], GENEROUS)[0], "the worker never started"
        first = pool.workers[0].proc
        clock = FakeClock(monkeypatch, when_stuck=lambda: only_job_left(pool, 0))
        FakeCPU(monkeypatch)
        start = clock.now
        assert pool.grade(["(x+1)^2"], ["x^2+2x+1"]) == [False]
        assert pool.timeouts == 1 and first.returncode is not None
        assert clock.now - start >= pool_module.STALLED_MIN_S


def only_job_left(pool, job):
    """True while the pool is busy with `job` only: every other worker idle and started."""
    return (any(w.job == job for w in pool.workers)
            and all(w.job == job or (w.job == -1 and w.ready) for w in pool.workers))


def boot(pool):
    # Through the real clock, before a FakeClock is installed.
    assert pool.grade(["x+1"], ["1+x"], timeout=GENEROUS) == [True]


@pytest.mark.parametrize("pred", [
    "10^{10^{10^{10}}}",          # power tower: huge integer or a MemoryError under RLIMIT_AS
    "9999!",                      # sympy may compute it, then compares
    NEVER,                        # does not finish
    "\\sqrt{" * 150 + "2" + "}" * 150,
])
def test_pathological_input_is_not_equal_and_the_pool_recovers(pred, monkeypatch):
    with GradingPool(workers=1, timeout=TIMEOUT) as pool:
        boot(pool)
        first = pool.workers[0].proc
        clock = FakeClock(monkeypatch, when_stuck=lambda: only_job_left(pool, 0))
        assert pool.grade([pred], ["5"]) == [False]
        # Either the worker answered (False), or the deadline passed: one timeout counted,
        # the worker killed and replaced. `select` never waits past the deadline.
        assert all(w <= TIMEOUT for w in clock.waits)
        if pool.timeouts:
            assert pool.timeouts == 1 and first.returncode is not None and pool.workers[0].proc is not first
        clock.when_stuck = None
        assert pool.grade(["(x+1)^2"], ["x^2+2x+1"], timeout=GENEROUS) == [True]


def test_huge_answers_never_reach_a_worker():
    for pred in ["1+" * 50_000 + "1", "x" * 500, "\\sqrt{" * 2_000 + "2" + "}" * 2_000]:
        assert prepare(pred, "5")[0] is False


def test_deadline_counts_from_the_send_and_select_never_waits_past_it(monkeypatch):
    with GradingPool(workers=1, timeout=TIMEOUT) as pool:
        boot(pool)
        first = pool.workers[0].proc
        clock = FakeClock(monkeypatch)
        cpu = FakeCPU(monkeypatch)
        real_send = pool_module._Worker.send

        def send_then_pass_time(worker, *args):
            real_send(worker, *args)
            assert worker.deadline == clock.now + TIMEOUT
            clock.now += TIMEOUT  # the deadline is reached on the next look at the clock,
            cpu.used += TIMEOUT  # with the job on a core all that time

        monkeypatch.setattr(pool_module._Worker, "send", send_then_pass_time)
        assert pool.grade([NEVER], ["5"]) == [False]
        assert pool.timeouts == 1
        assert first.returncode is not None  # killed
        assert pool.workers[0].proc.poll() is None  # and replaced by a live one
        assert all(w <= 0.5 for w in clock.waits)


def test_a_result_in_the_pipe_wins_over_a_passed_deadline(monkeypatch):
    # The worker answers, the parent is descheduled past the deadline before reading it: the
    # answer counts (read what the worker said before deciding on the clock).
    with GradingPool(workers=1, timeout=TIMEOUT) as pool:
        boot(pool)
        clock = FakeClock(monkeypatch)

        def late_reader(read, write, error, wait):
            if wait > 0:  # the wait for the answer: let it arrive, then be "late"
                assert select.select(read, [], [], GENEROUS)[0], "the worker never answered"
                clock.now += 10 * TIMEOUT
                return [], [], []
            return select.select(read, write, error, 0)

        monkeypatch.setattr(pool_module, "select", types.SimpleNamespace(select=late_reader))
        assert pool.grade(["2(x+1)"], ["2x+2"]) == [True]
        assert pool.timeouts == 0


def test_an_idle_worker_past_the_startup_limit_still_serves(monkeypatch):
    # Issue: a worker that said "ready" long ago, but was never read, was declared "failed to
    # start" once older than WORKER_STARTUP_S. Wait for its ready line, then make every
    # worker "old" by patching the limit to 0.
    with GradingPool(workers=1, timeout=GENEROUS) as pool:
        assert select.select([pool.workers[0].fd], [], [], GENEROUS)[0], "the worker never started"
        monkeypatch.setattr(pool_module, "WORKER_STARTUP_S", 0.0)
        assert pool.grade(["x+1"], ["1+x"]) == [True]


def test_a_worker_that_never_says_ready_fails_to_start(monkeypatch):
    monkeypatch.setattr(pool_module, "_WORKER_CODE", "import sys; sys.stdin.read()")  # silent, alive
    with GradingPool(workers=1) as pool:
        clock = FakeClock(monkeypatch)
        clock.now += 2 * pool_module.WORKER_STARTUP_S
        with pytest.raises(RuntimeError, match="did not start"):
            pool.grade(["x+1"], ["1+x"])


def test_a_worker_that_dies_while_starting_is_reported(monkeypatch):
    monkeypatch.setattr(pool_module, "_WORKER_CODE", "raise SystemExit(1)")
    with GradingPool(workers=1) as pool, pytest.raises(RuntimeError, match="died while starting"):
        pool.grade(["x+1"], ["1+x"])


def test_pool_times_out_one_item_and_grades_the_rest(monkeypatch):
    preds = ["(x+1)^2", NEVER, "2\\sqrt{3}", "7", "x^2-1"]
    golds = ["x^2+2x+1", "5", "\\sqrt{12}", "007", "(x-1)(x+1)"]
    with GradingPool(workers=2, timeout=TIMEOUT) as pool:
        boot(pool)
        # NEVER is the second symbolic pair (job 1): the clock moves only once the other
        # jobs are done, so no right answer can lose its race against the deadline.
        FakeClock(monkeypatch, when_stuck=lambda: only_job_left(pool, 1))
        assert pool.grade(preds, golds) == [True, False, True, True, True]
        assert pool.timeouts == 1
        # The replaced worker serves the next step.
        assert pool.grade(["a+b"], ["b+a"]) == [True]


def test_grader_recovers_after_a_timeout():
    before = pool_module._default_pool().timeouts
    assert math_equal(NEVER, "5", timeout=TIMEOUT) is False
    assert pool_module._default_pool().timeouts == before + 1
    # The killed worker's spare takes over.
    assert math_equal("(x+1)^2", "x^2+2x+1", timeout=GENEROUS) is True


def test_fast_path_needs_no_worker():
    # Plain numbers, arithmetic, exact strings and choice letters are decided in-process.
    for pred, gold in [("025", "25"), ("1,000", "1000"), ("\\frac{1}{2}", "0.5"), ("(C)", "C"), ("x+y", "x+y"),
                       ("0.1+0.2", "0.3"), ("\\{1,2,2\\}", "\\{2,1\\}"), ("x<3", "(-\\infty,3)")]:
        verdict, _, _ = prepare(pred, gold)
        assert verdict is True


def _exec_payload(path) -> str:
    # exec(bytes([...]).decode()) creates `path` if anything evaluates it. It has no quotes and
    # no dunder, so it passes the character gate and really reaches the LaTeX parser.
    code = f"open({str(path)!r}, 'w').close()"
    return "exec(bytes([" + ",".join(str(b) for b in code.encode()) + "]).decode())"


def test_injection_strings_are_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    payloads = [
        f"__import__('os').system('touch {marker}')",
        f"\\text{{__import__('os').system('touch {marker}')}}",
        _exec_payload(marker),
        f"eval(\"open('{marker}', 'w')\")",
        f"lambda: __import__('os').system('touch {marker}')",
        f"exp(__import__('os').system('touch {marker}'))",  # a plain-text call rewritten to LaTeX
        "sqrt(" + _exec_payload(marker) + ")",
    ]
    assert _is_safe_for_sympy(_exec_payload(marker))
    for payload in payloads:
        assert math_equal(payload, "3", timeout=TIMEOUT) is False
        assert math_equal("3", payload, timeout=TIMEOUT) is False
        problem = Problem(id="p", question="q", answer="3")
        for style in ("boxed", "fallback"):
            result = score(problem, "\\boxed{" + payload + "}", 10, RewardConfig(timeout=TIMEOUT, answer_style=style))
            assert result.correct is False
        result = score(problem, "The answer is " + payload, 10, RewardConfig(timeout=TIMEOUT, answer_style="fallback"))
        assert result.correct is False
    assert grade_batch(payloads, ["3"] * len(payloads), timeout=TIMEOUT, workers=1) == [False] * len(payloads)
    assert not marker.exists()


def test_works_off_the_main_thread():
    results = {}

    def grade():
        results["symbolic"] = math_equal("2\\sqrt{3}", "\\sqrt{12}", timeout=GENEROUS)
        results["slow"] = math_equal(NEVER, "5", timeout=TIMEOUT)

    thread = threading.Thread(target=grade)
    thread.start()
    thread.join()
    assert results == {"symbolic": True, "slow": False}


def _grade_in_daemon(_):
    symbolic = math_equal("(x+1)^2", "x^2+2x+1", timeout=GENEROUS)  # boots this process's worker
    slow = math_equal(NEVER, "5", timeout=TIMEOUT)
    return symbolic, slow, pool_module._default_pool().timeouts


def test_works_inside_a_daemonic_worker_process():
    # multiprocessing.Pool workers are daemonic: they cannot start multiprocessing children
    # and math-verify's signal alarm is not ours to rely on; our Popen worker works there.
    with multiprocessing.get_context("spawn").Pool(1) as mp_pool:
        assert mp_pool.map(_grade_in_daemon, [0])[0] == (True, False, 1)


def test_forked_child_gets_its_own_worker():
    # The parent's default worker exists; a fork child inherits its pipes but must not use them.
    assert math_equal("2(x+1)", "2x+2", timeout=GENEROUS) is True
    with multiprocessing.get_context("fork").Pool(1) as mp_pool:
        assert mp_pool.map(_grade_in_daemon, [0])[0] == (True, False, 1)
    assert math_equal("(x+1)(x-1)", "x^2-1", timeout=GENEROUS) is True
