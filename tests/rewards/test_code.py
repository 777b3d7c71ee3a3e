"""The code sandbox: correct results, and containment of what model code can do."""

import os
import socket
import tempfile
import time
import types

import pytest

from pillion.rewards import code as code_module
from pillion.rewards.code import SandboxLimits, code_reward, extract_code, program_of, run_tests

LIMITS = SandboxLimits(wall_s=2.0, cpu_s=1, memory_mb=512, output_bytes=64 << 10)


def run(code, tests, limits=LIMITS):
    # No bound on the elapsed time here (a loaded machine stretches it): that no run outlives its
    # deadline is shown by the deadline logic below, on a fake clock.
    return run_tests(code, tests, limits)


def test_extract_code_takes_the_last_python_block():
    text = "```python\na = 1\n```\nbetter:\n```python\na = 2\n```\n```text\nout\n```"
    assert extract_code(text) == "a = 2\n"
    assert extract_code("```\nb = 3\n```") == "b = 3\n"
    assert extract_code("```py\nc = 4\n```") == "c = 4\n"
    assert extract_code("no code here") is None


def test_assert_tests_give_the_pass_fraction():
    result = run(
        "def add(a, b):\n    return a + b", ["assert add(1, 2) == 3", "assert add(2, 2) == 5", "assert add(0, 0) == 0"]
    )
    assert (result.passed, result.total, result.fraction) == (2, 3, 2 / 3)
    assert code_reward("```python\ndef add(a, b):\n    return a + b\n```", ["assert add(1, 1) == 2"]) == 1.0
    assert code_reward("```python\ndef add(a, b) return\n```", ["assert add(1, 1) == 2"]) == 0.0  # syntax error


def test_stdio_tests_compare_output():
    code = "import sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)\nsys.exit(0)"
    tests = [
        {"input": "1 2\n", "output": "3\n"},
        {"input": "2 2", "output": "5"},
        {"input": "5 5", "output": "10  \n\n"},
    ]
    result = run(code, tests)
    assert (result.passed, result.total) == (2, 3)


def test_writes_stay_in_the_throwaway_directory(tmp_path):
    outside = tmp_path / "outside.txt"
    code = f"""
import os
open('inside.txt', 'w').write('ok')
assert open(os.path.join(os.environ['HOME'], 'inside.txt')).read() == 'ok'
blocked = 0
for attempt in (lambda: open({str(outside)!r}, 'w'), lambda: os.open({str(outside)!r}, os.O_CREAT | os.O_WRONLY),
                lambda: os.symlink({str(outside)!r}, 'link') or open('link', 'w'), lambda: os.remove({str(tmp_path)!r}),
                lambda: os.mkdir({str(tmp_path / 'made')!r})):
    try:
        attempt()
    except PermissionError:
        blocked += 1
"""
    result = run(code, ["assert blocked == 5"])
    assert result.passed == 1
    assert not outside.exists() and not (tmp_path / "made").exists() and tmp_path.exists()


def test_infinite_loop_is_stopped_by_the_cpu_limit():
    result = run("while True:\n    pass", ["assert True"])
    assert result.passed == 0


def test_sleeping_forever_hits_the_wall_clock():
    result = run("import time\ntime.sleep(60)", ["assert True"])
    assert result.passed == 0 and result.timed_out


class JumpingClock:
    """`code.time` for one test: the real clock, plus `jump` seconds from the second reading on
    (the first is the process's start): every deadline has passed at the first look."""

    def __init__(self, monkeypatch, jump):
        self.readings, self.jump = 0, jump
        monkeypatch.setattr(code_module, "time", types.SimpleNamespace(monotonic=self.monotonic))

    def monotonic(self):
        self.readings += 1
        return time.monotonic() + (self.jump if self.readings > 1 else 0.0)


def test_a_program_that_waited_for_a_core_is_not_timed_out(monkeypatch):
    # Its clock passed the deadline while it waited for a core (the run delay covers the jump):
    # it still passes (it timed out before: a reward that depended on the machine's load).
    clock = JumpingClock(monkeypatch, jump=3 * LIMITS.wall_s)
    monkeypatch.setattr(code_module, "_run_delay", lambda pid: clock.jump)
    result = run_tests("def f():\n    return 1", ["assert f() == 1"], LIMITS)
    assert (result.passed, result.timed_out) == (1, False)


def test_a_program_that_sleeps_meets_the_deadline_however_busy_the_machine(monkeypatch):
    # No run delay: the deadline is wall_s after the start, and the clock is past it.
    JumpingClock(monkeypatch, jump=LIMITS.wall_s)
    monkeypatch.setattr(code_module, "_run_delay", lambda pid: 0.0)
    result = run_tests("import time\ntime.sleep(600)", ["assert True"], LIMITS)
    assert (result.passed, result.timed_out) == (0, True)
    # Whatever it waited for a core, a process is given up after STALLED_FACTOR x wall_s.
    clock = JumpingClock(monkeypatch, jump=code_module.STALLED_FACTOR * LIMITS.wall_s)
    monkeypatch.setattr(code_module, "_run_delay", lambda pid: 10 * clock.jump)
    result = run_tests("import time\ntime.sleep(600)", ["assert True"], LIMITS)
    assert (result.passed, result.timed_out) == (0, True)


def test_the_run_delay_is_read_from_the_kernel():
    waited = code_module._run_delay(os.getpid())
    assert waited >= 0.0  # 0.0 where /proc/PID/schedstat is missing
    assert code_module._run_delay(2**22 + 12345) == 0.0  # no such process: plain wall-clock time


def test_fork_bomb_and_subprocesses_are_blocked():
    for code in ["import os\nwhile True:\n    os.fork()",
                 "import subprocess\nsubprocess.run(['true'])",
                 "import os\nos.system('true')",
                 "import multiprocessing\nmultiprocessing.Process(target=print).start()",
                 "import os\nos.execv('/bin/true', ['true'])"]:
        assert run(code, ["assert True"]).passed == 0, code


def test_network_is_blocked():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)"
    assert run(code, ["assert True"]).passed == 0
    # A connection, had one been made, would now wait in the backlog.
    server.setblocking(False)
    with pytest.raises(BlockingIOError):
        server.accept()
    server.close()


def test_output_flood_is_capped():
    result = run("while True:\n    print('x' * 10000)", ["assert True"])
    assert result.passed == 0
    flood = run("print('y' * (10 << 20))", [{"input": "", "output": "y" * (10 << 20)}])
    assert flood.passed == 0


def test_memory_limit():
    assert run("x = bytearray(2 << 30)", ["assert True"]).passed == 0
    assert run("x = bytearray(1 << 20)", ["assert len(x) == 1 << 20"]).passed == 1


@pytest.mark.parametrize(
    "code",
    [
        # forged reports on the result pipe (fd 3 or any other), without the nonce
        "import os\nfor fd in range(3, 20):\n    try:\n"
        "        os.write(fd, b'0\\n1 0\\nPASS 0\\n')\n    except OSError:\n        pass",
        # a solution whose function exits with status 0 inside the assert
        "import sys\ndef f():\n    sys.exit(0)",
        # reaching the harness's frame through a traceback
        "try:\n    1 / 0\nexcept Exception as e:\n    frame = e.__traceback__.tb_frame.f_back\n"
        "def f():\n    return frame.f_locals['nonce']",
        # the harness's module
        "import __main__\ndef f():\n    return __main__.nonce",
    ],
)
def test_reward_hacks_earn_nothing(code):
    assert run(code, ["assert f() == 1"]).passed == 0


def test_nothing_is_left_behind(tmp_path, monkeypatch):
    """The sandbox's work folder (the solution wrote a file in it) is gone after the run. In a
    temporary folder of this test's own: under pytest-xdist another worker's sandbox may exist in
    the shared one at any moment (a clean clone's CI once failed on one)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made = []
    mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append(mkdtemp(*a, **k)) or made[-1])
    run("open('junk', 'w').write('x')", ["assert True"])
    assert len(made) == 1 and os.path.dirname(made[0]) == str(tmp_path)  # the run's folder was made here
    assert [name for name in os.listdir(tmp_path) if name.startswith("pillion-sandbox-")] == []


TYPING_SOLUTIONS = [
    # HumanEval's most common header, and the stdlib helpers that ask for their caller's module
    # name through sys._getframe (typing.TypeVar / NamedTuple, collections.namedtuple, Enum(...)).
    "from typing import List\ndef f() -> int:\n    return 1",
    "import typing\nT = typing.TypeVar('T')\ndef f(x: typing.Optional[T] = None) -> int:\n    return 1",
    "from typing import NamedTuple\nclass P(NamedTuple):\n    a: int\ndef f():\n    return P(1).a",
    "import collections\nP = collections.namedtuple('P', 'a b')\ndef f():\n    return P(1, 2).a",
    "import enum\nColor = enum.Enum('Color', 'RED GREEN')\ndef f():\n    return Color.RED.value",
    "import dataclasses\n@dataclasses.dataclass\nclass D:\n    a: int = 1\ndef f():\n    return D().a",
]


@pytest.mark.parametrize("code", TYPING_SOLUTIONS)
def test_correct_code_that_imports_typing_passes(code):
    assert run(code, ["assert f() == 1"]).passed == 1
    assert code_reward(f"```python\n{code}\n```", ["assert f() == 1"]) == 1.0


# Had model code any frame, this would walk up to the harness and forge a report for test 0.
FORGE = """
import os
def forge(frame):
    while frame is not None:
        names = frame.f_locals
        if 'nonce' in names and 'report_fd' in names:
            os.write(names['report_fd'], names['nonce'] + b' 0\\n')
        frame = frame.f_back
"""

FRAME_GRABS = [
    "import sys\ntry:\n    forge(sys._getframe(0))\nexcept ValueError:\n    pass",  # a ValueError may be caught
    "import inspect\nforge(inspect.currentframe())",
    "import sys\nfor frame in sys._current_frames().values():\n    forge(frame)",
    "def g():\n    yield\nit = g()\nnext(it)\nforge(it.gi_frame)",
    "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    forge(e.__traceback__.tb_frame)",
    "import gc\nfor o in gc.get_objects():\n    forge(o if type(o).__name__ == 'frame' else None)",
    "import traceback\nforge(traceback.walk_stack(None).__next__()[0])",
]


@pytest.mark.parametrize("grab", FRAME_GRABS)
def test_frame_access_stays_closed_with_typing_open(grab):
    assert run(FORGE + grab, ["assert False"]).passed == 0


def test_the_forgery_works_where_frames_are_open(monkeypatch):
    """The attacks above would succeed without the hook: prove it on a harness copy whose hook
    lets sys._getframe through."""
    from pillion.rewards import code as code_module

    opened = code_module._HARNESS.replace('if event == "sys._getframe":', 'if event == "never":')
    assert opened != code_module._HARNESS
    monkeypatch.setattr(code_module, "_HARNESS", opened)
    monkeypatch.setattr(code_module, "_RESULTS", {})  # results of the closed harness are remembered
    assert run(FORGE + FRAME_GRABS[0], ["assert False"]).passed == 1


# A HumanEval-shaped problem: the prompt (imports, a helper, the stub) is the prefix.
PROMPT = ('from typing import List\n\n\ndef double(x):\n    return 2 * x\n\n\n'
          'def total(xs: List[int]) -> int:\n    """Sum of doubles."""\n')
CHECK = ["def check(candidate):\n    assert candidate([1, 2]) == 6\n    assert candidate([]) == 0\n\ncheck(total)"]


@pytest.mark.parametrize("text, passes", [
    # completion style: the body continues the prompt; what follows a stop sequence is cut
    ("    return sum(double(x) for x in xs)\n", True),
    ("    return sum(double(x) for x in xs)\n\n\ndef total(xs):\n    return -1\n", True),
    ("    return sum(xs)\n", False),
    # whole function in a fenced block: it replaces the stub, the prompt's imports and helper stay
    ("Here:\n```python\ndef total(xs: List[int]) -> int:\n    return sum(double(x) for x in xs)\n```", True),
    ("```python\ndef total(xs):\n    return sum(xs)\n```", False),
    # a fenced body continues the stub
    ("```python\n    return sum(map(double, xs))\n```", True),
])
def test_completion_and_whole_function_styles_are_both_graded(text, passes):
    assert code_reward(text, CHECK, LIMITS, prefix=PROMPT) == float(passes)


def test_program_of():
    assert program_of("```python\nx = 1\n```") == "x = 1\n"
    assert program_of("x = 1") is None  # no prefix: a fenced block is required
    assert program_of("    return 1\nprint(2)", prefix="def f():\n") == "def f():\n    return 1\n"
    stub = 'def f():\n    """One."""'  # no final newline: one is added before a fenced block
    assert program_of("```python\ndef f():\n    return 2\n```", prefix=stub) == stub + "\ndef f():\n    return 2\n"


def test_reward_modes():
    text = "```python\ndef add(a, b):\n    return a + b\n```"
    tests = ["assert add(1, 2) == 3", "assert add(1, 1) == 3", "assert add(0, 0) == 0", "assert add(2, 2) == 4"]
    assert code_reward(text, tests, LIMITS) == 0.75  # 3 of 4
    assert code_reward(text, tests, LIMITS, mode="all_pass") == 0.0
    assert code_reward(text, [tests[0]], LIMITS, mode="all_pass") == 1.0
    with pytest.raises(ValueError, match="all_pass"):
        code_reward(text, tests, LIMITS, mode="majority")


def test_results_are_remembered_except_after_a_timeout(monkeypatch):
    from pillion.rewards import code as code_module

    monkeypatch.setattr(code_module, "_RESULTS", {})
    calls = []
    real = code_module._run_once
    monkeypatch.setattr(code_module, "_run_once", lambda *a: calls.append(a[0]) or real(*a))
    for _ in range(2):
        assert run("x = 1", ["assert x == 1"]).passed == 1
    assert calls == ["x = 1"]  # the second run was a cache hit
    for _ in range(2):
        assert run("import time\ntime.sleep(60)", ["assert True"]).timed_out
    assert len(calls) == 3  # a timed-out result is run again
