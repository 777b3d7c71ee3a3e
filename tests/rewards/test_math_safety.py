"""Timeouts, pathological inputs, injection, threads and worker processes."""

import multiprocessing
import threading
import time

import pytest

from pillion.data.problem import Problem
from pillion.rewards import GradingPool, RewardConfig, grade_batch, math_equal, score
from pillion.rewards.math import _is_safe_for_sympy, prepare

TIMEOUT = 1.0


def timed(fn, *args, **kwargs):
    start = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - start


@pytest.mark.parametrize("pred", [
    "10^{10^{10^{10}}}",          # power tower: huge integer or a MemoryError under RLIMIT_AS
    "9999!",                      # sympy computes it, then compares
    "\\frac{(9999!)!}{3}",        # does not finish in time
    "1+" * 50_000 + "1",          # 100 kB: string comparison only, never parsed
    "\\sqrt{" * 2_000 + "2" + "}" * 2_000,
])
def test_pathological_input_returns_within_timeout(pred):
    verdict, elapsed = timed(math_equal, pred, "5", timeout=TIMEOUT)
    assert verdict is False
    assert elapsed < TIMEOUT + 1.0, elapsed


def test_grader_recovers_after_a_timeout():
    assert math_equal("\\frac{(9999!)!}{3}", "5", timeout=TIMEOUT) is False
    # The killed worker's spare takes over: the next symbolic call is quick and right.
    verdict, elapsed = timed(math_equal, "(x+1)^2", "x^2+2x+1", timeout=TIMEOUT)
    assert verdict is True
    assert elapsed < TIMEOUT + 1.0, elapsed


def test_fast_path_needs_no_worker():
    # Plain numbers, exact strings and choice letters are decided in-process.
    for pred, gold in [("025", "25"), ("1,000", "1000"), ("\\frac{1}{2}", "0.5"), ("(C)", "C"), ("x+y", "x+y")]:
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
    ]
    assert _is_safe_for_sympy(_exec_payload(marker))
    for payload in payloads:
        assert math_equal(payload, "3", timeout=TIMEOUT) is False
        assert math_equal("3", payload, timeout=TIMEOUT) is False
        problem = Problem(id="p", question="q", answer="3")
        result = score(problem, "\\boxed{" + payload + "}", 10, RewardConfig(timeout=TIMEOUT))
        assert result.correct is False
    assert grade_batch(payloads, ["3"] * len(payloads), timeout=TIMEOUT, workers=1) == [False] * len(payloads)
    assert not marker.exists()


def test_works_off_the_main_thread():
    results = {}

    def grade():
        results["symbolic"] = math_equal("2\\sqrt{3}", "\\sqrt{12}", timeout=TIMEOUT)
        results["slow"] = timed(math_equal, "\\frac{(9999!)!}{3}", "5", timeout=TIMEOUT)

    thread = threading.Thread(target=grade)
    thread.start()
    thread.join(timeout=10)
    assert results["symbolic"] is True
    verdict, elapsed = results["slow"]
    assert verdict is False and elapsed < TIMEOUT + 1.0


def _grade_in_daemon(_):
    symbolic = math_equal("(x+1)^2", "x^2+2x+1", timeout=30.0)  # boots this process's worker
    slow, elapsed = timed(math_equal, "\\frac{(9999!)!}{3}", "5", timeout=TIMEOUT)
    return symbolic, slow, elapsed


def test_works_inside_a_daemonic_worker_process():
    # multiprocessing.Pool workers are daemonic: they cannot start multiprocessing children
    # and math-verify's signal alarm is not ours to rely on; our Popen worker works there.
    with multiprocessing.get_context("spawn").Pool(1) as mp_pool:
        symbolic, slow, elapsed = mp_pool.map(_grade_in_daemon, [0])[0]
    assert symbolic is True and slow is False
    assert elapsed < TIMEOUT + 1.0, elapsed


def test_forked_child_gets_its_own_worker():
    # The parent's default worker exists; a fork child inherits its pipes but must not use them.
    assert math_equal("2(x+1)", "2x+2", timeout=TIMEOUT) is True
    with multiprocessing.get_context("fork").Pool(1) as mp_pool:
        symbolic, slow, elapsed = mp_pool.map(_grade_in_daemon, [0])[0]
    assert symbolic is True and slow is False and elapsed < TIMEOUT + 1.0
    assert math_equal("(x+1)(x-1)", "x^2-1", timeout=TIMEOUT) is True


def test_pool_times_out_one_item_and_grades_the_rest():
    preds = ["(x+1)^2", "\\frac{(9999!)!}{3}", "2\\sqrt{3}", "7", "x^2-1"]
    golds = ["x^2+2x+1", "5", "\\sqrt{12}", "007", "(x-1)(x+1)"]
    with GradingPool(workers=2, timeout=TIMEOUT) as pool:
        pool.grade(["x"], ["y"])  # boot the workers outside the timed call
        verdicts, elapsed = timed(pool.grade, preds, golds)
        assert verdicts == [True, False, True, True, True]
        assert pool.timeouts == 1
        assert elapsed < TIMEOUT + 1.0, elapsed
        # The replaced worker serves the next step.
        assert pool.grade(["a+b"], ["b+a"]) == [True]
