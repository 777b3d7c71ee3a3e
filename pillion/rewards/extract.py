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
_TAGS = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
# A sentence ends at a period/semicolon followed by whitespace (or the end), or at a newline;
# "3.5" keeps its period because no space follows it.
_SENTENCE_END = re.compile(r"[.;!?](?:\s|$)|\n")


def _brace_group(text: str, start: int) -> tuple[str, int] | None:
    """Content of the balanced {...} opening at text[start], and the index after it."""
    if start >= len(text) or text[start] != "{":
        return None
    depth = 0
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "\\":  # an escaped brace (\{ in a set) does not open or close a group
            continue
        if ch == "{" and text[i - 1] != "\\":
            depth += 1
        elif ch == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
    return None  # unbalanced: the model stopped mid-answer


def boxed_answers(text: str) -> list[str]:
    """Every `\\boxed{...}` / `\\fbox{...}` / `\\boxed 5` answer, in order of appearance."""
    found: list[tuple[int, str]] = []
    for command in _BOX_COMMANDS:
        pos = text.find(command)
        while pos != -1:
            after = pos + len(command)
            if text.startswith("{", after):
                group = _brace_group(text, after)
                if group is not None:
                    found.append((pos, group[0]))
            elif after < len(text) and text[after] == " ":
                # `\boxed 5`: the token after the space, up to whitespace or a math delimiter.
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
    answers = []
    for m in _TAGS.finditer(text):
        inner = m.group(1)
        boxed = boxed_answers(inner)
        answer = boxed[-1] if boxed else inner.strip()
        if answer:
            answers.append(answer)
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
