r"""Whether a text is one mathematical expression: a recogniser for bare answers.

`is_expression(text)` parses `text` with a small grammar of the LaTeX and plain-text math
that answers are written in, and says whether all of it is one expression, with nothing
around it: `\dfrac43`, `\left( 3, \tfrac{\pi}{2} \right)`, `- q + p`, `1,\!248`, `\text{(C)}`,
`x = 5`, `3 \sqrt5`, `(3, 4]`, `3 < \lambda \le 4`, `\begin{pmatrix} 1 \\ 2 \end{pmatrix}`,
`18 \text{ dollars}`, `18 dollars`. Prose is not: a word that is neither a function name, a
unit, a short product of variables (`xy`), nor "and"/"or" between values ends the parse, as
do characters that math does not use (`?`, `"`, `#`, `@`, letters of other scripts).

Grammar (LL(1), one token of look-ahead, no backtracking):

    answer   := relation ((',' | ';' | 'and' | 'or') relation)*
    relation := sum (RELATION sum)*                    = < > \le \ge \ne \in \approx : ...
    sum      := [sign] product ((+ | - | \pm | \cup | \cap ...) [sign] product)*
    product  := power ((* | / | \times | \cdot | \div)? power)*     a number never starts an
                                                                    implicit factor ("2 3")
    power    := atom ('^' script | '_' script | '!' | "'" | '%' | '°')*
    atom     := number | letter | short word | constant command (\pi, \infty, \alpha)
              | ( answer ) | [ answer ] | ( answer ] | [ answer )   (tuples, intervals)
              | \{ answer \} | { answer } | | sum |
              | \frac arg arg | \sqrt [answer]? arg | \binom arg arg | \overline arg ...
              | \text{...} | function (\sin, \log_2) scripts power | \$ atom
              | \begin{env} cells separated by & and \\ \end{env}
    arg      := { answer } | one digit | one letter | a command

`\left`, `\right`, sizing and spacing commands are read as nothing. Every token is consumed
once and nesting deeper than MAX_DEPTH is refused, so a 100 kB text costs linear time and a
bounded stack. Nothing is evaluated: the result is a bool.
"""

from __future__ import annotations

import re

MAX_DEPTH = 50  # brackets, braces and arguments nested deeper than this: not an answer

_TOKEN = re.compile(
    r"(?P<skip>\s+|\\(?:left|right|bigg?|Bigg?)[lr]?(?![a-zA-Z])\.?|\\(?:displaystyle|limits|q?quad)(?![a-zA-Z])"
    r"|\\[,;:! ]|~)"
    r"|(?P<number>\d{1,3}(?:[ \u2009]\d{3})+(?![\d.])|\d+(?:\.\d+)?|\.\d+)"
    r"|(?P<word>[A-Za-z]+)"
    r"|(?P<rowbreak>\\\\)|(?P<comma>\{,\})"
    r"|(?P<command>\\[A-Za-z]+|\\[{}|%$#&_])"
    r"|(?P<symbol>[-+*/^_=<>!'|,;:&()\[\]{}.°≤≥≠π√∞×·÷−%])"
)

_RELATIONS = {"=", "<", ">", ":", "≤", "≥", "≠"} | {
    "\\" + c for c in "le leq ge geq ne neq lt gt leqslant geqslant approx equiv sim simeq cong in notin ni subset "
    "subseteq supset supseteq to rightarrow Rightarrow implies iff Leftrightarrow mapsto mid parallel perp "
    "propto".split()}
_ADDITIVE = {"+", "-", "−"} | {"\\" + c for c in "pm mp cup cap setminus vee wedge oplus".split()}
_MULTIPLICATIVE = {"*", "/", "×", "·", "÷"} | {"\\" + c for c in "times cdot div circ bmod mod ast".split()}
_FUNCTIONS = {"\\" + c for c in "sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh coth log ln lg exp max "
              "min gcd lcm det deg arg dim ker sup inf lim Pr sum prod int oint".split()}
_ONE_ARGUMENT = {"\\" + c for c in "sqrt overline underline bar hat vec tilde dot ddot widehat widetilde "
                 "overrightarrow boxed fbox mathbb mathbf mathrm mathcal mathit mathsf boldsymbol bm "
                 "operatorname pmod color".split()}
_TWO_ARGUMENTS = {"\\" + c for c in "frac dfrac tfrac cfrac binom dbinom tbinom".split()}
_TEXT = {"\\" + c for c in "text textbf textit textrm textsf texttt mbox hbox".split()}
_PAIRS = {"(": (")", "]"), "[": ("]", ")"), "\\{": ("\\}",), "{": ("}",), "\\lfloor": ("\\rfloor",),
          "\\lceil": ("\\rceil",), "\\langle": ("\\rangle",), "\\lvert": ("\\rvert",), "\\|": ("\\|",)}
_CLOSERS = {c for closers in _PAIRS.values() for c in closers}
_JOINERS = {",", ";", "{,}", "and", "or"}
# Words that end a parse: English words of one to three letters (longer words always do,
# unless a function name or a unit). Other short letter runs are products ("xy", "abc").
_PLAIN_FUNCTIONS = set("sqrt sin cos tan cot sec csc log exp abs arcsin arccos arctan sinh cosh tanh inf oo "
                       "infinity".split())
_PROSE = set("a an am as at be by do go he if in is it me my no of on or so to up us we the and for but not are "
             "was can has had its our you all any get got let see use may one two six ten yes now how why who "
             "out set try".split())
# Words of four letters or more that may stand in an answer (shorter ones, "cm", "kg", are
# accepted as products of letters unless they are English words).
_UNITS = set("cent cents dollar dollars euro euros unit units degree degrees meter meters metre metres inch inches "
             "foot feet yard yards mile miles gram grams kilogram kilograms pound pounds ounce ounces second "
             "seconds minute minutes hour hours days week weeks month months year years liter liters litre litres "
             "gallon gallons cups square cubic percent radians radian".split())


class _NotExpression(Exception):
    pass


def _tokens(text: str):
    """(kind, text) tokens, the skipped ones left out, produced as the parser asks for them;
    ("bad", ...) at a character math does not use."""
    pos = 0
    for m in _TOKEN.finditer(text):
        if m.start() != pos:
            break
        pos = m.end()
        if m.lastgroup != "skip":
            yield m.lastgroup, m.group(0)
    if pos != len(text):
        yield "bad", text[pos]


class _Parser:
    """Reads tokens one at a time from the generator, so that a text fails at its first word
    of prose instead of after all of it has been cut into tokens."""

    def __init__(self, text: str):
        self.source, self.tokens, self.pos, self.depth, self.bars = _tokens(text), [], 0, 0, 0

    def peek(self) -> tuple[str, str]:
        while self.pos >= len(self.tokens):
            token = next(self.source, ("end", ""))
            if token[0] == "end":
                return token
            if token[0] == "bad":
                raise _NotExpression
            self.tokens.append(token)
        return self.tokens[self.pos]

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token[0] == "end":
            raise _NotExpression
        self.pos += 1
        return token

    def expect(self, text: str) -> None:
        if self.take()[1] != text:
            raise _NotExpression

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _NotExpression

    # answer := relation (joiner relation)*
    def answer(self, closers: tuple[str, ...] = ()) -> None:
        self.enter()
        self.relation()
        while self.peek()[1] in _JOINERS or (self.peek()[1] == "&" and "&" in closers):
            self.take()
            if self.peek()[1] in closers or self.peek()[0] == "end":
                break  # a trailing comma before a closing bracket
            self.relation()
        self.depth -= 1

    def relation(self) -> None:
        self.sum()
        while self.peek()[1] in _RELATIONS:
            self.take()
            self.sum()

    def sum(self) -> None:
        while self.peek()[1] in ("+", "-", "−", "\\pm", "\\mp"):
            self.take()
        self.product()
        while self.peek()[1] in _ADDITIVE:
            self.take()
            while self.peek()[1] in ("+", "-", "−"):
                self.take()
            self.product()

    def product(self) -> None:
        self.power()
        while True:
            kind, text = self.peek()
            if text in _MULTIPLICATIVE:
                self.take()
                while self.peek()[1] in ("+", "-", "−"):  # 3 \times -2
                    self.take()
                self.power()
            elif kind != "number" and self.starts_atom():
                self.power()
            else:
                return

    def starts_atom(self) -> bool:
        kind, text = self.peek()
        if kind in ("number", "word"):
            return kind == "number" or text.lower() not in _JOINERS
        if kind == "command":
            return text not in _RELATIONS and text not in _ADDITIVE and text not in _MULTIPLICATIVE \
                and text not in _CLOSERS and text not in ("\\end", "\\%")
        return text in ("(", "[", "{", "\\{", "π", "√", "∞") or (text == "|" and self.bars == 0)

    def power(self) -> None:
        self.atom()
        while True:
            text = self.peek()[1]
            if text in ("^", "_"):
                self.take()
                self.script()
            elif text in ("!", "'", "%", "\\%", "°"):
                self.take()
            else:
                return

    def script(self) -> None:
        kind, text = self.peek()
        if text in ("-", "+", "−"):
            self.take()
            kind, text = self.peek()
        if kind == "number" and len(text) > 1 and text.isdigit():
            self.split_number()
        self.argument()

    def split_number(self) -> None:
        """`\\frac43`, `x^23` (TeX reads x^2 3): the argument is the first digit only."""
        kind, text = self.peek()
        self.tokens[self.pos : self.pos + 1] = [(kind, text[0]), (kind, text[1:])]

    def argument(self) -> None:
        kind, text = self.peek()
        self.enter()
        if text == "{":
            self.group("{", ("}",))
        elif kind == "number":
            if len(text) > 1 and text.isdigit():
                self.split_number()
            self.take()
        elif kind == "word":
            self.take()
            if len(text) > 1:  # \sqrt x: the letter is the argument, the rest a product
                self.tokens.insert(self.pos, ("word", text[1:]))
        elif text in ("\\circ", "\\prime", "\\ast", "\\star", "\\dagger"):
            self.take()  # 90^\circ, f^\prime
        elif kind == "command" and text not in _CLOSERS:
            self.atom()
        else:
            raise _NotExpression
        self.depth -= 1

    def group(self, opener: str, closers: tuple[str, ...]) -> None:
        self.expect(opener)
        self.enter()
        bars, self.bars = self.bars, 0
        if self.peek()[1] not in closers:  # "()" and "{}" are empty groups
            self.answer(closers)
        self.bars = bars
        self.depth -= 1
        if self.take()[1] not in closers:
            raise _NotExpression

    def atom(self) -> None:
        kind, text = self.peek()
        if kind == "number":
            self.take()
        elif kind == "word":
            self.take()
            word = text.lower()
            if len(text) > 1 and (word in _PROSE or (len(text) > 3 and word not in _UNITS
                                                      and word not in _PLAIN_FUNCTIONS)):
                raise _NotExpression
        elif text in _PAIRS:
            self.group(text, _PAIRS[text])
        elif text == "|" and self.bars == 0:
            self.take()
            self.bars += 1
            self.sum()
            self.bars -= 1
            self.expect("|")
        elif text in ("π", "∞", "\\circ"):
            self.take()
        elif text == "√":
            self.take()
            self.argument()
        elif kind == "command":
            self.command(text)
        else:
            raise _NotExpression

    def command(self, text: str) -> None:
        self.take()
        if text in _TEXT:
            self.raw_braces()
        elif text in _TWO_ARGUMENTS:
            self.argument()
            self.argument()
        elif text in _ONE_ARGUMENT:
            if text == "\\sqrt" and self.peek()[1] == "[":
                self.group("[", ("]",))
            self.argument()
        elif text in _FUNCTIONS:
            while self.peek()[1] in ("^", "_"):
                self.take()
                self.script()
            if self.starts_atom():
                self.power()
        elif text == "\\begin":
            self.environment()
        elif text == "\\$":
            while self.peek()[1] in ("-", "−"):
                self.take()
            self.atom()
        elif text in _RELATIONS or text in _ADDITIVE or text in _MULTIPLICATIVE or text in _CLOSERS \
                or text in ("\\end", "\\\\", "\\therefore", "\\because", "\\quad"):
            raise _NotExpression
        # any other command is a constant: \pi, \infty, \alpha, \emptyset, \circ, \ldots

    def raw_braces(self) -> None:
        """The argument of \\text: any tokens, braces balanced."""
        self.expect("{")
        depth = 1
        while depth:
            text = self.take()[1]
            depth += (text == "{") - (text == "}")

    def environment(self) -> None:
        self.expect("{")
        name = self.take()[1]
        if self.peek()[1] == "*":
            self.take()
        self.expect("}")
        if self.peek()[1] == "{" and name == "array":
            self.raw_braces()  # the column specification
        self.enter()
        while True:
            if self.peek()[1] not in ("&", "\\\\", "\\end"):
                self.answer(("&", "\\\\", "\\end"))
            text = self.take()[1]
            if text == "\\end":
                break
            if text not in ("&", "\\\\"):
                raise _NotExpression
        self.depth -= 1
        self.expect("{")
        if self.take()[1] != name:
            raise _NotExpression
        if self.peek()[1] == "*":
            self.take()
        self.expect("}")


def is_expression(text: str) -> bool:
    """Whether all of `text` is one mathematical expression (module docstring)."""
    parser = _Parser(text)
    try:
        if parser.peek()[0] == "end":
            return False
        parser.answer()
        return parser.peek()[0] == "end"
    except (_NotExpression, RecursionError):
        return False
