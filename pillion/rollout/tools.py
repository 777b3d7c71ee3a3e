"""Tool calls inside a rollout: find a call the model closed, run it in the sandbox, splice its output.

A sample may call a Python tool in the middle of its solution (ToRL, SWiRL; veRL and SGLang
multi-turn rollouts). With the defaults the model writes

    ```python
    print(17 * 23)
    ```
    ```output

and on that last marker (`Tools.end`) the engine pauses the row, runs the code since the
nearest `Tools.start` ("```python") in the sandbox of `pillion/rewards/code.py` (a fresh
isolated interpreter: CPU, memory and wall-clock limits, no network, no processes, no file
writes outside a throw-away directory), and appends `Tools.output` with the program's stdout
(and the error line, if it failed) as tokens, here "\\n391\\n```\\n", then resumes sampling
after it. A tag pair works the same way (start="<code>", end="</code>",
output="<output>{output}</output>").

Each row makes at most `max_calls` calls; a call past the limit is not run and the row goes on
sampling as if the marker were plain text. The output is cut to `max_output_tokens` tokens
(and to the room left under max_new_tokens; a row whose output fills it ends there, "length").

Tool-output tokens stay in the row's context (the cache and the trainer's forward see them)
but were not sampled: the completion marks them (`Completion.sampled`, False there), their
engine log-prob is 0, and the trainer leaves them out of the loss, the KL and the
engine/trainer log-prob comparison (`train/batch.py` response_mask; docs/algorithms.md §1).
Special-token text in an output is split into plain tokens, so a program cannot print an EOS.

Departures: the calls found at one host check run together (threads, one sandbox process
each) while the other rows wait, rather than asynchronously; identical programs are run once
per engine (results that hit the wall clock are not remembered: that may be the machine's
load). How the engine writes the tokens into a paused row is in `rollout/engine.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from pillion.fields import bounded, checked, free, reject
from pillion.rewards.code import SandboxLimits, run_program

# Run as the sandboxed program: the model's code in a fresh namespace; an exception becomes the
# line a user would see at the end of a traceback, printed after the program's own output.
_WRAPPER = '''
try:
    exec(compile({source!r}, "<tool>", "exec"), {{"__name__": "__main__"}})
except SystemExit:
    raise
except BaseException as error:
    print(type(error).__name__ + ":", error)
    raise
'''


def _end_marker(end: str, tool: ToolConfig) -> None:
    if not end:
        raise reject(end, "is empty", "a marker the model writes to run its code")


def _output_frame(output: str, tool: ToolConfig) -> None:
    if output.count("{output}") != 1:
        raise reject(output, "is not a frame for the output", "text with {output} once")


@dataclass
class ToolConfig:
    """`tool.*` of the trainer config: Python tool calls inside rollouts; max_calls 0: no tools."""

    max_calls: int = bounded(0, low=0, note="0: no tools")  # per sample
    start: str = free("```python")  # a call's code follows the last start marker ...
    end: str = checked("```output", _end_marker)  # ... and is run when the model writes the end marker
    output: str = checked("\n{output}\n```\n", _output_frame)  # appended after the end marker (context only)
    max_output_tokens: int = bounded(64, low=1)
    timeout: float = bounded(5.0, low=0, open="low")  # seconds per call (wall clock; CPU seconds likewise, rounded up)


@dataclass
class ToolResult:
    output: str  # what the model reads back: stdout, then an error line if the program failed
    error: bool  # raised, was killed at a limit, or timed out
    timed_out: bool = False  # hit the wall clock (not remembered: that may be the machine's load)


@dataclass
class Tools:
    """What a tool call looks like and how it is run; pass as `Engine(..., tools=Tools(...))`."""

    start: str = "```python"  # the code of a call starts after the last of these
    end: str = "```output"  # ... and ends where the model writes this: the call is run here
    output: str = "\n{output}\n```\n"  # appended after `end`; {output} is the program's output
    max_calls: int = 2  # per sample
    max_output_tokens: int = 64  # of {output}; the frame around it is always kept
    limits: SandboxLimits = field(default_factory=lambda: SandboxLimits(wall_s=5.0, cpu_s=5, output_bytes=1 << 16))
    workers: int = 4  # sandbox processes at once
    # code -> ToolResult; None: `run_python` in the sandbox with `limits` (tests pass a stand-in)
    run: Callable[[str], ToolResult] | None = None
    cache: dict = field(default_factory=dict, repr=False)  # code -> ToolResult, see the docstring
    end_ids: dict = field(default_factory=dict, repr=False)  # id(tokenizer) -> `closing_ids`


@dataclass
class RowTools:
    """One row's tool state, on the host (kept by the engine beside the row)."""

    floor: int = 0  # response tokens before this belong to earlier turns: not searched again
    checked: int = 0  # response tokens searched for the end marker
    calls: int = 0
    errors: int = 0
    spans: list[tuple[int, int]] = field(default_factory=list)  # [start, end) of each output in the response


def tools_from_config(cfg: ToolConfig) -> Tools | None:
    """`Tools` from the `tool.*` config keys; None when tool.max_calls is 0 (no tools)."""
    if cfg.max_calls == 0:
        return None
    limits = SandboxLimits(wall_s=cfg.timeout, cpu_s=max(1, math.ceil(cfg.timeout)), output_bytes=1 << 16)
    return Tools(cfg.start, cfg.end, cfg.output, cfg.max_calls, cfg.max_output_tokens, limits)


def run_python(code: str, limits: SandboxLimits) -> ToolResult:
    """Run `code` in the sandbox (`pillion.rewards.code`) and return what it printed."""
    stdout, finished, timed_out = run_program(_WRAPPER.format(source=code), limits=limits)
    text = stdout.decode(errors="replace").rstrip()
    if timed_out:
        text += f"\nTimeoutError: the program ran past {limits.wall_s:g} s"
    elif not finished and not text:
        text = "Error: the program did not finish (an exit status, the CPU or memory limit)"
    return ToolResult(text.strip("\n"), error=timed_out or not finished, timed_out=timed_out)


def next_call(tokenizer, tools: Tools, state: RowTools, tokens: list[int], upto: int) -> tuple[int, str] | None:
    """The first call to run that a row closed in its response tokens[:upto] since
    `state.checked`: (cut, code), cut = the response length up to the end marker, code = the
    text since the last start marker. An end marker without a start marker before it (back to
    the previous turn), or past `max_calls`, is passed over as plain text. Advances `state`."""
    closing = closing_ids(tokenizer, tools)
    while upto > state.checked:
        if closing is not None and closing.isdisjoint(tokens[state.checked : upto]):
            state.checked = upto  # no token that can end the marker: nothing to decode
            return None
        # From the floor on only: an earlier turn's output is never taken for a marker.
        lookback = max(state.floor, state.checked - len(tools.end.encode()))
        if tools.end not in tokenizer.decode(tokens[lookback:upto]):
            state.checked = upto
            return None
        cut = next(end for end in range(state.checked + 1, upto + 1)
                   if tools.end in tokenizer.decode(tokens[lookback:end]))
        text = tokenizer.decode(tokens[state.floor : cut])
        body = text[: text.rfind(tools.end)]
        begin = body.rfind(tools.start) if tools.start else 0
        state.floor = state.checked = cut
        if begin >= 0 and state.calls < tools.max_calls:
            code = body[begin + len(tools.start) :].strip("\n")
            if code.endswith("```"):  # the block's closing fence, before the end marker
                code = code[:-3].rstrip()
            return cut, code
    return None


def closing_ids(tokenizer, tools: Tools) -> set[int] | None:
    """The token ids whose text holds the end marker's last character (a window without one
    cannot close a call: most windows are skipped without decoding), computed once per
    tokenizer; None when that character is not ASCII (a byte-level token may hold part of it)."""
    last = tools.end[-1]
    if not last.isascii():
        return None
    if id(tokenizer) not in tools.end_ids:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        tools.end_ids[id(tokenizer)] = {i for i, text in enumerate(texts) if last in text}
    return tools.end_ids[id(tokenizer)]


def run_calls(tools: Tools, codes: list[str]) -> list[ToolResult]:
    """Run each program (in parallel, each in its own sandbox); results in order."""
    todo = sorted({c for c in codes if c not in tools.cache})
    results: dict[str, ToolResult] = {}
    if todo:
        run = tools.run or (lambda code: run_python(code, tools.limits))
        with ThreadPoolExecutor(max_workers=max(1, min(tools.workers, len(todo)))) as pool:
            results = dict(zip(todo, pool.map(run, todo)))
        tools.cache.update({code: r for code, r in results.items() if not r.timed_out})
    return [results[c] if c in results else tools.cache[c] for c in codes]


def splice(state: RowTools, cut: int, length: int, result: ToolResult) -> None:
    """Record a call whose output of `length` tokens was written after response token `cut`."""
    state.calls += 1
    state.errors += result.error
    state.spans.append((cut, cut + length))
    state.floor = state.checked = cut + length


def output_ids(tokenizer, tools: Tools, result: ToolResult, room: int) -> list[int]:
    """The tokens appended after a call: `tools.output` around the output cut to
    max_output_tokens, all cut to `room` (what is left of max_new_tokens)."""
    before, after = tools.output.split("{output}", 1)

    def encode(text: str) -> list[int]:  # special-token text becomes plain tokens
        return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] if text else []

    ids = encode(before) + encode(result.output)[: tools.max_output_tokens] + encode(after)
    return ids[:room]


def sampled_mask(length: int, spans: list[tuple[int, int]]) -> torch.Tensor:
    """[length] bool: True on tokens the engine sampled, False on tool-output tokens."""
    mask = torch.ones(length, dtype=torch.bool)
    for start, end in spans:
        mask[start:end] = False
    return mask


def tool_metrics(tools: Tools | None, completions: list) -> dict[str, float]:
    """Per sample: tool calls, tool calls that failed; {} without tools."""
    if tools is None or not completions:
        return {}
    n = len(completions)
    return {"tool_calls": sum(c.tool_calls for c in completions) / n,
            "tool_errors": sum(c.tool_errors for c in completions) / n}
