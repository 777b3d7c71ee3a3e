"""Code reward: run a completion's Python against a problem's tests, in a sandbox.

`code_reward(text, tests)` takes the LAST ```python fenced block of the completion (or the last
bare ``` block) and returns the fraction of tests it passes (`mode="all_pass"`: 1.0 only when
every test passes, else 0.0). With `prefix` (HumanEval's prompt: imports, signature and
docstring; `Problem.meta["code_prefix"]`) both of HumanEval's answer styles are graded, see
`program_of`: a whole function in a fenced block, or a completion that continues the prompt.
`Problem.tests` holds either
assert-statement strings ("assert add(1, 2) == 3"), run after the solution in one process, or
{"input": str, "output": str} dicts, each run as a fresh process with that stdin and compared
with its stdout (trailing whitespace of each line and trailing blank lines ignored).

The sandbox, in layers (each test in `tests/rewards/test_code.py`):
- a fresh `python -I -S` process (no user site, no site-packages, no PYTHON* variables) with
  cwd and HOME set to a throw-away directory that is deleted afterwards;
- rlimits set inside the child before any model code runs: RLIMIT_CPU (CPU seconds),
  RLIMIT_AS (memory), RLIMIT_FSIZE (output and file size: stdout/stderr go to files in the
  directory, so a flood stops at the cap), RLIMIT_NPROC = 0 (no new processes) and
  RLIMIT_NOFILE; plus a wall-clock deadline in the parent (`wall_s`, not counting the time the
  process spent waiting for a core, `_deadline`), after which the whole process group (its
  own session) is SIGKILLed, as it is after every run to catch stragglers;
- no network: the child runs under `unshare -n` (or `unshare -rn` without root) when that works
  on this machine, in an empty network namespace; where it does not, only the audit hook below
  stands between the code and the network;
- a `sys.addaudithook` hook (hooks cannot be removed once added) that raises on: process
  creation (os.fork/exec/spawn/system, subprocess.Popen, os.posix_spawn), signals to other
  processes, every socket event, ctypes, imports of ctypes/_posixsubprocess, opening a file
  for writing (and remove/rename/mkdir/chmod/link/...) anywhere outside the directory, and
  every way to obtain a frame object or walk the heap (sys._getframe, sys._current_frames,
  tracebacks' tb_frame, generators' gi_frame/cr_frame/ag_frame, gc.get_objects/referrers,
  settrace/setprofile): CPython does not audit reading f_back or f_locals, so any frame would
  lead up to the harness's locals. sys._getframe is refused with an error that is also a
  ValueError, which stdlib callers that only want a module name (typing.TypeVar, NamedTuple,
  collections.namedtuple, enum's functional API) already catch: `import typing` works;
- the harness reports each passed test on an inherited pipe as "<nonce> <index>"; the nonce is
  read from a file that is deleted before model code runs, so printing "PASS" or exiting with
  status 0 earns nothing.

Limits, stated plainly: this is containment for accidents and crude reward hacking, not a
security boundary against a determined attacker. Code running in the same interpreter can
still, e.g., return objects whose __eq__ is always True (defeating `assert f(x) == y`),
exhaust its own limits, or use any C-level bug in CPython. As root, the kernel does not enforce
RLIMIT_NPROC, so the audit hook and the final process-group kill are what stop fork bombs.
Without `unshare`, a C extension could still open sockets; -S keeps third-party C extensions
off the import path. For adversarial settings run the grader in a container or gVisor.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str | None:
    """The last ```python (or ```py) fenced block; else the last bare ``` block; else None."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    python = [body for lang, body in blocks if lang in ("python", "py", "python3")]
    bare = [body for lang, body in blocks if lang == ""]
    chosen = python or bare
    return chosen[-1] if chosen else None


# The wall-clock deadline leaves out the time the process waited for a core (its run delay in
# /proc/PID/schedstat), so that a loaded machine cannot turn a passing program into a timeout: a
# reward must not depend on what else the machine runs. A program that sleeps still meets the
# deadline after `wall_s`; whatever the run delay, it is killed after STALLED_FACTOR x wall_s.
STALLED_FACTOR = 10.0


@dataclass
class SandboxLimits:
    """Per-process limits. `wall_s` is the parent's deadline (in seconds the process ran or slept,
    not those it waited for a core); `cpu_s` the kernel's."""

    wall_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 1024
    output_bytes: int = 1 << 20
    open_files: int = 64


@dataclass
class CodeResult:
    passed: int
    total: int
    timed_out: bool  # at least one process hit the wall-clock deadline (`_deadline`)

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


# The harness run as `python -I -S -c HARNESS <dir>`. It reads its job, sets limits, installs
# the audit hook, and only then compiles and runs model code. Kept as source text because it
# must run in a bare interpreter that cannot import pillion.
_HARNESS = r'''
def sandbox_main():
    # Everything lives in this function's locals: model code can reach module globals of
    # __main__, but not another function's frame (frame access is denied by the hook).
    import json, os, resource, sys
    root = os.path.realpath(sys.argv[1])
    job_path = os.path.join(root, "job.json")
    with open(job_path) as f:
        job = json.load(f)
    os.remove(job_path)
    nonce, report_fd, limits = job.pop("nonce").encode(), job.pop("report_fd"), job.pop("limits")
    for name, value in (("RLIMIT_CPU", limits["cpu_s"]), ("RLIMIT_AS", limits["memory_mb"] << 20),
                        ("RLIMIT_FSIZE", limits["output_bytes"]), ("RLIMIT_NOFILE", limits["open_files"]),
                        ("RLIMIT_NPROC", 0), ("RLIMIT_CORE", 0)):
        try:
            resource.setrlimit(getattr(resource, name), (value, value))
        except (ValueError, OSError):
            pass
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    deny = {"os.fork", "os.forkpty", "os.exec", "os.spawn", "os.posix_spawn", "os.system",
            "subprocess.Popen", "os.kill", "os.killpg", "signal.pthread_kill", "sys._current_frames",
            "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.settrace",
            "sys.setprofile", "os.startfile", "pty.spawn"}
    deny_prefix = ("socket.", "ctypes.", "_ctypes.")
    deny_import = {"ctypes", "_ctypes", "_posixsubprocess", "_socket", "socket", "_ssl", "mmap"}
    path_events = {"os.remove", "os.rename", "os.replace", "os.rmdir", "os.mkdir", "os.chmod",
                   "os.chown", "os.link", "os.symlink", "os.truncate", "os.utime", "shutil.rmtree",
                   "os.setxattr", "os.removexattr", "os.chflags", "os.lchmod", "os.mkfifo", "os.mknod"}
    # Of these reads CPython audits tb_frame, gi_frame, cr_frame and ag_frame; the f_ names are
    # not audited (the defence is that no frame object is ever handed out), kept for clarity.
    frame_attrs = {"tb_frame", "f_back", "f_locals", "f_globals", "gi_frame", "cr_frame", "ag_frame"}
    realpath, sep = os.path.realpath, os.sep

    def inside(path):
        if isinstance(path, int):
            return True
        if isinstance(path, bytes):
            path = path.decode(errors="replace")
        full = realpath(path)
        return full == root or full.startswith(root + sep)

    class FrameDenied(PermissionError, ValueError):
        # Also a ValueError: stdlib callers that only want the caller's module name (typing's
        # TypeVar and NamedTuple, collections.namedtuple, enum's functional API) catch the
        # ValueError that sys._getframe raises on "platforms without _getframe" and carry on,
        # so code that imports typing runs, and still no frame object reaches model code.
        pass

    def hook(event, args):
        if event == "sys._getframe":
            raise FrameDenied("sandbox: sys._getframe is not allowed")
        if event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in mode for c in "wax+")) or (flags or 0) & write_flags
            if writing and path is not None and not inside(path):
                raise PermissionError("sandbox: writing outside the working directory")
        elif event in deny or event.startswith(deny_prefix):
            raise PermissionError("sandbox: " + event + " is not allowed")
        elif event == "import" and args[0].split(".")[0] in deny_import:
            raise ImportError("sandbox: import of " + args[0] + " is not allowed")
        elif event == "object.__getattr__" and args[1] in frame_attrs:
            raise PermissionError("sandbox: frame introspection is not allowed")
        elif event in path_events:
            for arg in args:
                if isinstance(arg, (str, bytes)) and not inside(arg):
                    raise PermissionError("sandbox: " + event + " outside the working directory")

    def run(source, namespace, exit_ok):
        # True when `source` runs to the end; a solution may also exit with status 0, a test
        # may not (else a solution that calls sys.exit(0) would pass every assert).
        try:
            exec(compile(source, "<solution>", "exec"), namespace)
            return True
        except SystemExit as exit_:
            return exit_ok and exit_.code in (None, 0)
        except BaseException:
            return False

    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    code, tests, mode = job["code"], job["tests"], job["mode"]
    del job
    sys.addaudithook(hook)
    solved = run(code, namespace, True)
    del code
    write = os.write
    if mode == "stdio":
        try:
            sys.stdout.flush()
        except BaseException:
            solved = False
        if solved:
            write(report_fd, nonce + b" 0\n")
    elif solved:
        for index, test in enumerate(tests):
            if run(test, namespace, False):
                write(report_fd, nonce + b" " + str(index).encode() + b"\n")
    os._exit(0)


sandbox_main()
'''


def _unshare_prefix() -> list[str]:
    """`unshare -n` (root) or `unshare -rn` when it works here; [] otherwise. Probed once."""
    if _UNSHARE:
        return _UNSHARE[0]
    prefix: list[str] = []
    tool = shutil.which("unshare")
    if tool:
        for candidate in ([tool, "-n"], [tool, "-rn"]):
            try:
                ok = subprocess.run(candidate + ["true"], capture_output=True, timeout=5).returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
            if ok:
                prefix = candidate
                break
    _UNSHARE.append(prefix)
    return prefix


_UNSHARE: list[list[str]] = []  # probe result cache; the machine does not change under us


def _wait_exit(proc: subprocess.Popen, deadline: float) -> bool:
    """Wait until the child exits or the deadline passes, WITHOUT reaping it, so its process
    group id stays reserved for the kill that follows. True when it exited in time."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        while True:
            remaining = deadline - time.monotonic()
            if pidfd is not None:
                return bool(select.select([pidfd], [], [], max(0.0, remaining))[0])
            # No pidfd (old kernel): poll the exit status without collecting it.
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
            if remaining <= 0:
                return False
            select.select([], [], [], min(0.01, remaining))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _run_delay(pid: int) -> float:
    """Seconds process `pid` has spent runnable but waiting for a core (0.0 where the kernel
    does not say: then the deadline is plain wall-clock time)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _deadline(pid: int, started: float, wall_s: float) -> float:
    """When the process started at `started` meets its deadline, as known now: `wall_s` after
    it started plus the time it has waited for a core so far, at most STALLED_FACTOR x wall_s."""
    return started + min(wall_s + _run_delay(pid), STALLED_FACTOR * wall_s)


def _run_once(code: str, tests: list, mode: str, stdin: str, limits: SandboxLimits) -> tuple[set[int], bytes, bool]:
    """One sandboxed process. Returns (indices reported as passed, stdout, timed_out)."""
    workdir = tempfile.mkdtemp(prefix="pillion-sandbox-")
    read_end, write_end = os.pipe()
    nonce = secrets.token_hex(16)
    try:
        job = {"code": code, "tests": tests, "mode": mode, "nonce": nonce, "report_fd": write_end,
               "limits": {"cpu_s": limits.cpu_s, "memory_mb": limits.memory_mb,
                          "output_bytes": limits.output_bytes, "open_files": limits.open_files}}
        with open(os.path.join(workdir, "job.json"), "w") as f:
            json.dump(job, f)
        with open(os.path.join(workdir, "stdin.txt"), "w") as f:
            f.write(stdin)
        stdin_file = open(os.path.join(workdir, "stdin.txt"), "rb")
        stdout_file = open(os.path.join(workdir, "stdout.txt"), "wb")
        stderr_file = open(os.path.join(workdir, "stderr.txt"), "wb")
        env = {"HOME": workdir, "TMPDIR": workdir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        command = _unshare_prefix() + [sys.executable, "-I", "-S", "-c", _HARNESS, workdir]
        with stdin_file, stdout_file, stderr_file:
            proc = subprocess.Popen(command, stdin=stdin_file, stdout=stdout_file, stderr=stderr_file,
                                    cwd=workdir, env=env, pass_fds=(write_end,), start_new_session=True)
        os.close(write_end)
        write_end = -1
        reports = bytearray()
        started = time.monotonic()
        deadline = started + limits.wall_s  # at the earliest
        exited = False
        while not exited:
            # Drain the report pipe while waiting, so a chatty harness never blocks on it.
            exited = _wait_exit(proc, min(deadline, time.monotonic() + 0.05))
            if select.select([read_end], [], [], 0)[0]:
                chunk = os.read(read_end, 65536)
                if len(reports) < 1 << 20:
                    reports += chunk
            now = time.monotonic()
            if not exited and now >= deadline:
                deadline = _deadline(proc.pid, started, limits.wall_s)  # it may have waited for a core
                if now >= deadline:
                    break
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group: stragglers and a live child alike
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        while select.select([read_end], [], [], 0)[0]:
            chunk = os.read(read_end, 65536)
            if not chunk or len(reports) >= 1 << 20:
                break
            reports += chunk
        passed = set()
        for line in bytes(reports).split(b"\n"):
            parts = line.split(b" ")
            if len(parts) == 2 and parts[0] == nonce.encode() and parts[1].isdigit():
                passed.add(int(parts[1]))
        with open(os.path.join(workdir, "stdout.txt"), "rb") as f:
            stdout = f.read(limits.output_bytes + 1)
        return passed, stdout, not exited
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
        shutil.rmtree(workdir, ignore_errors=True)


def _same_output(got: bytes, expected: str) -> bool:
    def lines(s: str) -> list[str]:
        return [line.rstrip() for line in s.strip("\n").splitlines()]

    return lines(got.decode(errors="replace")) == lines(expected)


def run_tests(code: str, tests: list, limits: SandboxLimits | None = None) -> CodeResult:
    """Run `code` against `tests` (asserts, or stdin/stdout dicts) in the sandbox.

    Results are remembered per (code, tests, limits) for the life of the process, unless a run
    hit the wall clock (that may be the machine's load, not the code): a group of samples from
    a small model often repeats one completion, and a program is graded once.
    """
    limits = limits or SandboxLimits()
    key = (code, json.dumps(tests, sort_keys=True), repr(limits))
    if key in _RESULTS:
        return _RESULTS[key]
    asserts = [t for t in tests if isinstance(t, str)]
    stdio = [t for t in tests if isinstance(t, dict)]
    passed, timed_out = 0, False
    if asserts:
        reported, _, timed_out = _run_once(code, asserts, "asserts", "", limits)
        passed += len(reported & set(range(len(asserts))))
    for test in stdio:
        reported, stdout, hit_deadline = _run_once(code, [], "stdio", str(test.get("input", "")), limits)
        timed_out |= hit_deadline
        if 0 in reported and len(stdout) <= limits.output_bytes and _same_output(stdout, str(test.get("output", ""))):
            passed += 1
    result = CodeResult(passed=passed, total=len(asserts) + len(stdio), timed_out=timed_out)
    if not timed_out:
        if len(_RESULTS) >= _MAX_RESULTS:
            _RESULTS.pop(next(iter(_RESULTS)))  # the oldest entry (dicts keep insertion order)
        _RESULTS[key] = result
    return result


def run_program(code: str, stdin: str = "", limits: SandboxLimits | None = None) -> tuple[bytes, bool, bool]:
    """Run `code` once in the sandbox: (its stdout, whether it ran to the end, whether it hit the
    wall clock). Not remembered; for tool calls inside a rollout (pillion/rollout/tools.py)."""
    reported, stdout, timed_out = _run_once(code, [], "stdio", stdin, limits or SandboxLimits())
    return stdout, 0 in reported, timed_out


_RESULTS: dict[tuple[str, str, str], CodeResult] = {}  # see run_tests; bounded, oldest out first
_MAX_RESULTS = 20_000

# HumanEval's stop sequences (Chen et al. 2021, §2.3): where a completion leaves the function.
COMPLETION_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def program_of(text: str, prefix: str = "") -> str | None:
    """The program a completion stands for; None when there is none.

    Without `prefix`: the last ```python block of `text` (`extract_code`).
    With `prefix` (a HumanEval prompt), two answer styles are both graded:
      whole function: `text` has a fenced block -> prefix + block. A block that defines the
        function again replaces the prompt's stub (Python keeps the last definition) and keeps
        the prompt's imports and helper functions; an indented block continues the stub's body.
      completion: no fenced block -> prefix + text up to the first of `COMPLETION_STOPS`, the
        text being the continuation of the prompt (function body), as HumanEval samples it.
    """
    code = extract_code(text)
    if not prefix:
        return code
    if code is not None:
        return prefix + ("" if prefix.endswith("\n") else "\n") + code
    cut = min((i for i in (text.find(stop) for stop in COMPLETION_STOPS) if i >= 0), default=len(text))
    return prefix + text[:cut] + "\n"


REWARD_MODES = ("fraction", "all_pass")


def code_reward(text: str, tests: list, limits: SandboxLimits | None = None, prefix: str = "",
                mode: str = "fraction") -> float:
    """Reward of a completion: the fraction of `tests` its program passes (`mode="fraction"`),
    or 1.0 if it passes all of them and 0.0 otherwise (`mode="all_pass"`). 0.0 without a
    program (see `program_of` for `prefix`) or without tests."""
    if mode not in REWARD_MODES:
        raise ValueError(f"code reward mode must be one of {', '.join(REWARD_MODES)}, got {mode!r}")
    code = program_of(text, prefix)
    if code is None or not tests:
        return 0.0
    result = run_tests(code, tests, limits)
    return result.fraction if mode == "fraction" else float(result.passed == result.total)
