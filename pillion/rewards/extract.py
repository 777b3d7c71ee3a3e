"""Final-answer extraction from a model's text.

`extract_answer(text, style)` returns the one final answer a completion commits to, as a raw
string (normalisation is `math.py`'s job), or None when there is none. Styles:

- "boxed":     the LAST `\\boxed{...}` or `\\fbox{...}` (balanced braces, so `\\boxed{\\frac{1}{2}}`
               works), or the brace-less `\\boxed 5` form. An earlier, separate boxed answer is a
               draft and never counts.
- "gsm8k":     the text after the last `#### ` marker, up to the end of its line.
- "answer_is": the text after the last answer phrase ("the (final) answer is", "answer:",
               "the result is", "la réponse est", "答案是", ...), up to the end of the sentence,
               reduced to the answer itself ("The largest $n$ is 34" -> "34").
- "tags":      the content of the last `<answer>...</answer>`; a boxed answer inside it wins.
- "auto":      the first of boxed, tags, gsm8k, answer_is that finds anything (explicit
               markers only: what a prompt asks a model to write).
- "fallback":  the default here and of `pillion eval`, for models that were not told how to
               answer: the first that finds anything of boxed, tags, gsm8k, answer_is, the
               whole text when it is a bare answer, a bold span (`**73**`), the last LaTeX math
               span ($...$, \\(...\\), \\[...\\]), the last number of the prose. Training keeps
               a strict style (`reward.answer_style`, default "boxed"), so that a reward is
               never paid for a number that merely ends the text.

A bare answer is a text that is, all of it, one mathematical expression (`\\dfrac43`,
`- q + p`, `1,\\!248`, `x = 5`, `\\text{(C)}`; perhaps inside one pair of math delimiters, with a
closing period) or one word ("Evelyn"): `expression.is_expression` decides it by parsing.
Such a text is graded whole: its last number (`56` of `\\dfrac{3}{56}`, `366` of `\\sqrt{366}`)
is a part of the answer, not the answer. In prose, the last number is never one inside a
LaTeX command's argument, a fraction, a root, an exponent or a subscript.

Reasoning is not an answer: in every style, when the text has `</think>`, only what follows
the last `</think>` is searched, and a `<think>` that is never closed leaves no answer.

Several answers forming one (`final_group`): the last boxed answer (or math span) together
with the boxes just before it that are joined to it only by commas, "and", "or", `\\quad`,
`\\text{and}` or a variable prefix ("x_2 ="), as in "\\boxed{1}, \\boxed{2}" or "$x=1$ or
$x=-2$". `answer_for(text, gold)` uses the whole group when the gold has several elements
and the last member when the gold is one value; an earlier box separated by other text is a
draft either way.

Everything here is plain string scanning, regexes without nested quantifiers, and the
recogniser of `expression.py` (each token read once, nesting bounded, prose refused at its
first word), so a 100 kB completion is scanned in linear time.
"""

from __future__ import annotations

import bisect
import re
from itertools import accumulate

from pillion.rewards.expression import is_expression
from pillion.rewards.math import several_values

STYLES = ("fallback", "auto", "boxed", "gsm8k", "answer_is", "tags")
DEFAULT_STYLE = "fallback"

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_GSM8K = re.compile(r"####[ \t]*([^\n]*)")
# Answer phrases (case-free), with the bold or colon forms models write around them. The
# capture starts after the phrase; `_refine` trims it to the answer.
_ANSWER_IS = re.compile(
    r"(?:final\s+answers?|the\s+answers?|answers?|the\s+result|final\s+result|la\s+réponse(?:\s+finale)?|réponse"
    r"|la\s+respuesta(?:\s+final)?|respuesta|die\s+antwort|antwort|la\s+risposta|a\s+resposta|ответ"
    r"|(?:correct\s+)?(?:option|choice))"
    r"\s*(?:\*\*)?\s*(?:(?:is|are|est|es|ist|sera)\b|=|:|：|è|é)\s*(?:\*\*)?[:：]?\s*"
    r"|^[ \t]*(?:\*\*)?answer(?:\*\*)?[ \t]+(?=[$\\(\d\-])"
    r"|(?:最终答案|答案|答え|结果)\s*(?:是|为|為|は|：|:)\s*",
    re.IGNORECASE | re.MULTILINE,
)
# A sentence ends at a period/semicolon followed by whitespace (or the end), at 。 or at a
# newline; "3.5" keeps its period because no space follows it.
_SENTENCE_END = re.compile(r"[.;!?](?:\s|$)|[。！？\n]")
_BOLD = re.compile(r"\*\*([^*\n]{1,200})\*\*")
# A number: a decimal comma ("2,74", not in a list "1,2,3"), or thousands commas and a point.
_NUMBER = re.compile(r"(?:(?<![\w)])-)?(?:(?<![\d.,])\d+,(?:\d{1,2}|\d{4,})(?![,\d])"
                     r"|(?<![\d.])\d+(?:(?:,|\{,\}|,\\!\s?|\\,)\d{3})*(?:\.\d+)?(?:/\d+)?)")
# What puts a number in an argument when it comes right before it: a script, a command
# that takes arguments (`\frac43`, `\sqrt5`, `x^2`, `a_1`).
_ARGUMENT_BEFORE = re.compile(r"(?:[\^_]|\\[a-zA-Z]+)\s*$")
# A brace group that is an argument: after a command, a script, another argument or `]`.
_ARGUMENT_OPENS = re.compile(r"(?:\\[a-zA-Z]+|[\^_}\]])\s*$")
_LEADING_WORDS = re.compile(r"^(?:[a-z]+,?\s+){1,3}(?=[-\d$\\(])")  # up to 3 lowercase words before the value
_VERB = re.compile(r"\s(?:is|are|was|equals|est|es|ist|è|é|是|为)\s+", re.IGNORECASE)
_NUMBER_THEN_WORDS = re.compile(r"^(-?\d[\d,]*(?:\.\d+)?(?:/\d+)?%?)\s+(?!(?:and|or)\b)[a-zA-Z].*$", re.DOTALL)
# Between two members of one final answer: spacing, math delimiters, commas, and/or, \quad,
# \text{and}, and a variable prefix ("x_2 =") before the next member.
_JOINER = re.compile(
    r"(?:\s|\$|\\\(|\\\)|\\\[|\\\]|,|;|&|\band\b|\bor\b|\\q?quad|\\text\{\s*(?:and|or|,)?\s*\}"
    r"|[a-zA-Z](?:_\{?[a-zA-Z0-9]+\}?)?\s*=)*"
)


def _after_reasoning(text: str) -> str:
    """The text after the last `</think>`; "" when a `<think>` is left open."""
    close = text.rfind("</think>")
    if close != -1:
        return text[close + len("</think>") :]
    return "" if "<think>" in text else text


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


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every boxed answer, in order of appearance.

    Braces are matched once for the whole text, so a degenerate completion that repeats
    "\\boxed{" thousands of times without closing it still costs linear time."""
    if "\\boxed" not in text and "\\fbox" not in text:
        return []
    match = _matching_braces(text)
    found: list[tuple[int, int, str]] = []
    for command in _BOX_COMMANDS:
        pos = text.find(command)
        while pos != -1:
            after = pos + len(command)
            if text.startswith("{", after):
                if after in match:  # unbalanced: the model stopped mid-answer
                    found.append((pos, match[after] + 1, text[after + 1 : match[after]]))
            elif text.startswith(" ", after):
                # `\\boxed 5`: the token after the space, up to whitespace or a math delimiter.
                token = re.match(r" +([^\s$]+)", text[after : after + 200])
                if token:
                    found.append((pos, after + token.end(), token.group(1)))
            pos = text.find(command, after)
    return sorted(found)


def boxed_answers(text: str) -> list[str]:
    """Every `\\boxed{...}` / `\\fbox{...}` / `\\boxed 5` answer, in order of appearance."""
    return [content for _, _, content in _boxes(text)]


def last_boxed(text: str) -> str | None:
    """Content of the last boxed answer of `text` (braces matched), or None. Also reads gold
    answers out of reference solutions (`pillion.data.formats`)."""
    boxes = _boxes(text)
    return boxes[-1][2] if boxes else None


def _iter_spans(text: str):
    """(start, end, content) of the $...$, $$...$$, \\(...\\) and \\[...\\] spans, in order.
    An escaped dollar (`\\$5`) is not a delimiter, nor a "$" before a digit (a price: "$5 and
    $10" has no closing "$"); the scan stops at an unclosed span."""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n:
            close = {"(": "\\)", "[": "\\]"}.get(text[i + 1])
            if not close:
                i += 2  # an escaped character, `\\$` included
                continue
            end = text.find(close, i + 2)
            if end == -1:
                return
            if text[i + 2 : end].strip():
                yield i, end + 2, text[i + 2 : end]
            i = end + 2
        elif ch == "$":
            delim = "$$" if text.startswith("$$", i) else "$"
            j = i + len(delim)
            while True:
                end = text.find(delim, j)
                if end == -1 or (text[end - 1] != "\\" and not text[end + len(delim) : end + len(delim) + 1].isdigit()):
                    break
                j = end + 1
            if end == -1:
                return
            if text[i + len(delim) : end].strip():
                yield i, end + len(delim), text[i + len(delim) : end]
            i = end + len(delim)
        else:
            i += 1


def _math_spans(text: str) -> list[tuple[int, int, str]]:
    return list(_iter_spans(text))


def _first_span(text: str) -> tuple[int, int, str] | None:
    return next(_iter_spans(text), None)


def _gsm8k_answers(text: str) -> list[str]:
    return [m.group(1).strip() for m in _GSM8K.finditer(text) if m.group(1).strip()]


def _refine(capture: str) -> str:
    """The answer inside what follows an answer phrase: "$5$ because ..." -> "5",
    "The largest $n$ is 34" -> "34", "**73**" -> "73", "34 apples" -> "34"."""
    s = capture.strip().lstrip(":：—–,").strip()  # not "-": "-3" is an answer
    if s.startswith("**") and s.find("**", 2) > 2:
        s = s[2 : s.find("**", 2)].strip()
    boxes = _boxes(s)
    if boxes:
        return boxes[-1][2]
    span = _first_span(s)
    if span and span[0] == 0:
        return span[2].strip()  # the answer follows the phrase directly
    verbs = list(_VERB.finditer(s))
    if verbs and re.search(r"[A-Za-z\u4e00-\u9fff]", s[: verbs[-1].start()]):
        s = s[verbs[-1].end() :]
        span = _first_span(s)
        if span and span[0] == 0:
            return span[2].strip()
    if (lead := _LEADING_WORDS.match(s)) and not re.search(r"\b(?:not|no|never)\b", lead.group(0)):
        return _refine(s[lead.end() :])  # "therefore 0.5", "exactly $5$", "about 5 apples"
    if number := _NUMBER_THEN_WORDS.match(s):
        return number.group(1)
    return s.strip().strip("*").strip()


def _answer_is_answers(text: str) -> list[str]:
    # Raw sentences (at most 1000 characters); `_stage` refines only the one that is used
    # (refining every one of thousands of repeated phrases would cost a scan of each).
    answers = []
    ends: list[int] | None = None  # every sentence end, found once: one pass over the text
    for m in _ANSWER_IS.finditer(text):
        if ends is None:
            ends = [e.start() for e in _SENTENCE_END.finditer(text)]
        k = bisect.bisect_left(ends, m.end())
        rest = text[m.end() : m.end() + 1000]
        answer = rest[: (ends[k] if k < len(ends) else len(text)) - m.end()].strip()
        span = _first_span(rest) if rest.lstrip()[:1] in ("$", "\\") else None
        if span and not rest[: span[0]].strip():
            answer = rest[: span[1]].strip()  # display math runs over lines: keep it whole
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


def _bold_answers(text: str) -> list[str]:
    # A bold span ending in ":" is a heading ("**Step 2:**"), not an answer.
    return [m.group(1) for m in _BOLD.finditer(text) if m.group(1).strip() and not m.group(1).rstrip().endswith(":")]


def _math_answers(text: str) -> list[str]:
    return [content.strip() for _, _, content in _math_spans(text)]


def _in_arguments(text: str) -> list[int] | None:
    """For each position, how many argument brace groups (`\\frac{..}{..}`, `^{..}`,
    `\\sqrt{..}`, `\\text{..}`) hold it; None when the text has no braces. One pass."""
    if "{" not in text:
        return None
    delta = [0] * (len(text) + 1)
    for start, end in _matching_braces(text).items():
        if _ARGUMENT_OPENS.search(text[max(0, start - 24) : start]):
            delta[start] += 1
            delta[end] -= 1
    return list(accumulate(delta))


def _number_answers(text: str) -> list[str]:
    """The numbers of the prose, none of them inside an argument (module docstring)."""
    inside = _in_arguments(text)
    return [m.group(0) for m in _NUMBER.finditer(text) if not (inside and inside[m.start()])
            and not _ARGUMENT_BEFORE.search(text[max(0, m.start() - 24) : m.start()])]


def _whole_answers(text: str) -> list[str]:
    """The whole text when it is a bare answer: one expression or one word (module docstring)."""
    s = text.strip()
    if s.endswith(".") and not s.endswith("\\."):
        s = s[:-1].rstrip()
    for opener, closer in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        inner = s[len(opener) : -len(closer)]
        if len(s) > len(opener) + len(closer) and s.startswith(opener) and s.endswith(closer) and "$" not in inner:
            s = inner.strip()
            break
    if re.fullmatch(r"[A-Za-z][A-Za-z'\-]{0,39}", s) or is_expression(s):
        return [s]
    return []


_FINDERS = {
    "boxed": boxed_answers,
    "tags": _tag_answers,
    "gsm8k": _gsm8k_answers,
    "answer_is": _answer_is_answers,
    "whole": _whole_answers,
    "bold": _bold_answers,
    "math": _math_answers,
    "number": _number_answers,
}
_ORDER = {
    "auto": ("boxed", "tags", "gsm8k", "answer_is"),
    "fallback": ("boxed", "tags", "gsm8k", "answer_is", "whole", "bold", "math", "number"),
}


def _stage(text: str, style: str) -> tuple[str, list[str]]:
    """(finder name, its candidates) of the first finder of `style` that finds anything."""
    if style not in STYLES:
        raise ValueError(f"unknown answer style {style!r}; expected one of {STYLES}")
    text = _after_reasoning(text)
    for name in _ORDER.get(style, (style,)):
        answers = _FINDERS[name](text)
        if answers and name in ("answer_is", "bold"):
            # Reduce the last sentence to its answer; one that reduces to nothing gives way
            # to the one before it (at most 3 tries, to stay linear on repetitive text).
            for k in range(len(answers) - 1, max(-1, len(answers) - 4), -1):
                refined = _refine(answers[k])
                if refined:
                    answers = answers[:k] + [refined]
                    break
            else:
                answers = []
        if answers:
            return name, answers
    return "", []


def all_answers(text: str, style: str = DEFAULT_STYLE) -> list[str]:
    """Every final-answer candidate of the chosen style (for "auto" and "fallback": those of
    the first finder that finds anything)."""
    return _stage(text, style)[1]


def _clean(answer: str) -> str | None:
    # "the answer is $5$." -> "5": drop the math delimiters and the closing period.
    answer = answer.strip().rstrip(".").strip()
    if len(answer) >= 2 and answer[0] == "$" and answer[-1] == "$":
        answer = answer.strip("$").strip()
    return answer or None


def extract_answer(text: str, style: str = DEFAULT_STYLE) -> str | None:
    """The final answer of `text` in `style` (see the module docstring), or None."""
    answers = all_answers(text, style)
    return _clean(answers[-1]) if answers else None


def final_group(text: str, style: str = DEFAULT_STYLE) -> list[str]:
    """The members of the final answer: several when the last boxes (or, in the fallback
    style, the last math spans) are joined only by commas, and/or, \\quad (module docstring);
    one otherwise; [] when there is no answer."""
    name, answers = _stage(text, style)
    if not answers:
        return []
    if name not in ("boxed", "math"):
        return [a for a in [_clean(answers[-1])] if a]
    body = _after_reasoning(text)
    items = _boxes(body) if name == "boxed" else _math_spans(body)
    group = [items[-1]]
    for item in reversed(items[:-1]):
        between = body[item[1] : group[0][0]]
        if len(between) > 200 or _JOINER.fullmatch(between) is None:
            break
        group.insert(0, item)
    return [a for a in (_clean(content) for _, _, content in group) if a]


def answer_for(text: str, gold: str | None, style: str = DEFAULT_STYLE) -> str | None:
    """The answer of `text` to grade against `gold`: the whole final group joined by commas
    when the gold has several elements (or is a tuple whose coordinates the members assign:
    "$x=1$, $y=-2$" against "(1,-2)"), else the last member (module docstring)."""
    group = final_group(text, style)
    if len(group) > 1 and gold is not None and several_values(gold, group):
        return ", ".join(group)
    return group[-1] if group else None
