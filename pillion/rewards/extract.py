"""Final-answer extraction from a model's text.

`extract_answer(text, style)` returns the one final answer a completion commits to, as a raw
string (normalisation is `math.py`'s job), or None when there is none. Styles:

- "boxed":     the LAST `\\boxed{...}` or `\\fbox{...}` (balanced braces, so `\\boxed{\\frac{1}{2}}`
               works), or the brace-less `\\boxed 5` form. Earlier boxed answers are drafts and are
               never merged with the last one (math-verify's `boxed="all"` merges them).
- "gsm8k":     the text after the last `#### ` marker, up to the end of its line.
- "answer_is": the text after the last "the (final) answer is", up to the end of the sentence.
- "tags":      the content of the last `<answer>...</answer>`; a boxed answer inside it wins.
- "auto":      the first style in the order boxed, tags, gsm8k, answer_is that finds anything.
               Boxed goes first because it is the most explicit commitment a model makes.

Everything here is plain string scanning: no regex with nested quantifiers over the whole
text, so a 100 kB completion is scanned in linear time.
"""

from __future__ import annotations

import re

STYLES = ("auto", "boxed", "gsm8k", "answer_is", "tags")

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_GSM8K = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"(?:final\s+)?answer\s*(?:is|:)\s*", re.IGNORECASE)
# A sentence ends at a period/semicolon followed by whitespace (or the end), or at a newline;
# "3.5" keeps its period because no space follows it.
_SENTENCE_END = re.compile(r"[.;!?](?:\s|$)|\n")


def _matching_braces(text: str) -> dict[int, int]:
    """Position of the closing brace for every opening brace that has one, in one pass.
    Escaped braces (`\\{` in a set) neither open nor close a group."""
    stack: list[int] = []
    match: dict[int, int] = {}
    for i, ch in enumerate(text):
        if ch in "{}" and i > 0 and text[i - 1] == "\\":
            continue
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            match[stack.pop()] = i
    return match


def boxed_answers(text: str) -> list[str]:
    """Every `\\boxed{...}` / `\\fbox{...}` / `\\boxed 5` answer, in order of appearance.

    Braces are matched once for the whole text, so a degenerate completion that repeats
    "\\boxed{" thousands of times without closing it still costs linear time."""
    if "\\boxed" not in text and "\\fbox" not in text:
        return []
    match = _matching_braces(text)
    found: list[tuple[int, str]] = []
    for command in _BOX_COMMANDS:
        pos = text.find(command)
        while pos != -1:
            after = pos + len(command)
            if text.startswith("{", after):
                if after in match:  # unbalanced: the model stopped mid-answer
                    found.append((pos, text[after + 1 : match[after]]))
            elif text.startswith(" ", after):
                # `\\boxed 5`: the token after the space, up to whitespace or a math delimiter.
                token = re.match(r" +([^\s$]+)", text[after : after + 200])
                if token:
                    found.append((pos, token.group(1)))
            pos = text.find(command, after)
    return [answer for _, answer in sorted(found)]


def _gsm8k_answers(text: str) -> list[str]:
    return [m.group(1).strip() for m in _GSM8K.finditer(text) if m.group(1).strip()]


def _answer_is_answers(text: str) -> list[str]:
    answers = []
    for m in _ANSWER_IS.finditer(text):
        rest = text[m.end() : m.end() + 1000]
        end = _SENTENCE_END.search(rest)
        answer = (rest[: end.start()] if end else rest).strip()
        if answer:
            answers.append(answer)
    return answers


def _tag_answers(text: str) -> list[str]:
    # str.find, not a lazy regex: "<answer>" repeated without a closing tag stays linear.
    answers = []
    lower = text.lower()
    pos = lower.find("<answer>")
    while pos != -1:
        close = lower.find("</answer>", pos)
        if close == -1:
            break
        inner = text[pos + len("<answer>") : close]
        inner = inner[inner.lower().rfind("<answer>") + len("<answer>"):] if "<answer>" in inner.lower() else inner
        boxed = boxed_answers(inner)
        answer = boxed[-1] if boxed else inner.strip()
        if answer:
            answers.append(answer)
        pos = lower.find("<answer>", close)
    return answers


_FINDERS = {
    "boxed": boxed_answers,
    "tags": _tag_answers,
    "gsm8k": _gsm8k_answers,
    "answer_is": _answer_is_answers,
}


def all_answers(text: str, style: str = "auto") -> list[str]:
    """Every final-answer candidate of the chosen style (for "auto": of the first style found)."""
    if style not in STYLES:
        raise ValueError(f"unknown answer style {style!r}; expected one of {STYLES}")
    names = ("boxed", "tags", "gsm8k", "answer_is") if style == "auto" else (style,)
    for name in names:
        answers = _FINDERS[name](text)
        if answers:
            return answers
    return []


def extract_answer(text: str, style: str = "auto") -> str | None:
    """The final answer of `text` in `style` (see the module docstring), or None."""
    answers = all_answers(text, style)
    if not answers:
        return None
    answer = answers[-1].strip()
    # "the answer is $5$." -> "5": drop the math delimiters and the closing period.
    answer = answer.rstrip(".").strip()
    if len(answer) >= 2 and answer[0] == "$" and answer[-1] == "$":
        answer = answer.strip("$").strip()
    return answer or None
