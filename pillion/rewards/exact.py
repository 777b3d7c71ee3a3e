"""Exact values of answers built from numbers, square roots and pi, without sympy.

`exact_value(s)` evaluates a normalised answer made of number literals, + - * / \\times
\\cdot \\div, \\frac, integer powers, brackets, \\sqrt{} of a non-negative rational, and \\pi
("2\\sqrt{3}", "\\frac{1+\\sqrt{5}}{2}", "\\frac{5\\pi}{6}", "0.1+0.2", "2^{10}") to a canonical
form: a sum of terms c * sqrt(m) * pi^k, c rational, m a square-free integer, held as
{(m, k): c}. Square roots of distinct square-free integers are linearly independent over the
rationals and pi is transcendental, so two such values are equal exactly when their forms are
equal: an in-process verdict that sympy (the reference, `symbolic.py`) agrees with, in
microseconds instead of a round trip to a worker. `decimal_value` gives 50 digits for the
precision rule of `math.py`.

Anything else (a variable, e, a division by a sum such as 1/(1+\\sqrt{2}), a root of a
radicand beyond MAX_RADICAND, a fractional power, a mixed number next to \\frac) returns None
and is left to sympy. A recursive-descent parser over tokens: never `eval`.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, localcontext
from fractions import Fraction

MAX_EXPONENT = 400  # larger integer powers are left to sympy
MAX_BITS = 20_000  # as are values whose numerators or denominators would be larger
MAX_RADICAND = 10**12  # square-free parts are found by trial division up to 10^4 (complete below this)
PI_50 = Decimal("3.14159265358979323846264338327950288419716939937510582097494459")

Value = dict[tuple[int, int], Fraction]  # (square-free m, power of pi k) -> coefficient

_TOKEN = re.compile(r"\d+\.?\d*|\.\d+|\\frac|\\sqrt|\\pi|\\times|\\cdot|\\div|[-+*/^(){}]")
_MULTIPLY = ("*", "\\times", "\\cdot")
_DIVIDE = ("/", "\\div")
_IMPLICIT = ("\\pi", "\\sqrt", "(", "{", "\\frac")  # factors that may follow one without a sign


def _clean(value: Value) -> Value:
    return {key: c for key, c in value.items() if c}


def _add(a: Value, b: Value, sign: int = 1) -> Value:
    out = dict(a)
    for key, c in b.items():
        out[key] = out.get(key, Fraction(0)) + sign * c
    return _clean(out)


def _mul(a: Value, b: Value) -> Value:
    out: Value = {}
    for (m1, k1), c1 in a.items():
        for (m2, k2), c2 in b.items():
            g = math.gcd(m1, m2)  # sqrt(m1 m2) = g sqrt(m1/g * m2/g), square-free again
            key = ((m1 // g) * (m2 // g), k1 + k2)
            out[key] = out.get(key, Fraction(0)) + c1 * c2 * g
    return _clean(out)


def _inverse(a: Value) -> Value:
    """1 / (c sqrt(m) pi^k) = sqrt(m) / (c m) pi^-k; a sum has no inverse here."""
    if len(a) != 1:
        raise ValueError("division by a sum or by zero")
    ((m, k), c), = a.items()
    return {(m, -k): 1 / (c * m)}


def _rational(a: Value) -> Fraction | None:
    if not a:
        return Fraction(0)
    return a.get((1, 0)) if len(a) == 1 and (1, 0) in a else None


def _square_free(n: int) -> tuple[int, int]:
    """(s, r) with n = s^2 r and r square-free, for 0 < n <= MAX_RADICAND."""
    s, r, p = 1, 1, 2
    while p * p <= n and p <= 10_000:
        while n % (p * p) == 0:
            n //= p * p
            s *= p
        if n % p == 0:
            n //= p
            r *= p
        p += 1
    root = math.isqrt(n)  # what is left has no prime factor <= 10^4: 1, p, p^2 or p q
    if root * root == n:
        return s * root, r
    return s, r * n


def _sqrt(a: Value) -> Value:
    q = _rational(a)
    if q is None or q < 0:
        raise ValueError("a square root of an irrational or a negative number")
    if q == 0:
        return {}
    n = q.numerator * q.denominator  # sqrt(p/q) = sqrt(p q) / q
    if n > MAX_RADICAND:
        raise ValueError("radicand too large")
    s, r = _square_free(n)
    return {(r, 0): Fraction(s, q.denominator)}


def _power(base: Value, exponent: Value) -> Value:
    e = _rational(exponent)
    if e is None or e.denominator != 1 or abs(e) > MAX_EXPONENT:
        raise ValueError("not a small integer power")
    bits = max([c.numerator.bit_length() + c.denominator.bit_length() + m.bit_length()
                for (m, _), c in base.items()] + [1])
    if bits * abs(e) > MAX_BITS or (len(base) > 1 and abs(e) > 16):
        raise ValueError("too large")
    result: Value = {(1, 0): Fraction(1)}
    for _ in range(abs(int(e))):
        result = _mul(result, base)
    return _inverse(result) if e < 0 else result


def exact_value(s: str) -> Value | None:
    """The canonical form of `s` (module docstring), or None when it is not such a value."""
    if len(s) > 200 or not re.search(r"\d|\\pi", s):
        return None
    tokens = _TOKEN.findall(s)
    if "".join(tokens) != s:
        return None  # letters, other commands, spaces
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take(expected: str | None = None) -> str:
        nonlocal pos
        token = peek()
        if token is None or (expected is not None and token != expected):
            raise ValueError(token)
        pos += 1
        return token

    def expr() -> Value:
        value = term()
        while peek() in ("+", "-"):
            sign = 1 if take() == "+" else -1
            value = _add(value, term(), sign)
        return value

    def term() -> Value:
        value, last = unary()
        while True:
            token = peek()
            if token in _MULTIPLY or token in _DIVIDE:
                take()
                right, last = unary()
                value = _mul(value, _inverse(right) if token in _DIVIDE else right)
            elif token in _IMPLICIT and not (token == "\\frac" and last == "number"):
                right, last = power()  # "2\\sqrt{3}", "3\\pi"; "3\\frac{1}{2}" is a mixed number: not here
                value = _mul(value, right)
            else:
                return value

    def unary() -> tuple[Value, str]:
        if peek() in ("-", "+"):
            sign = take()
            value, last = unary()
            return (_add({}, value, -1) if sign == "-" else value), last
        return power()

    def power() -> tuple[Value, str]:
        base, kind = atom()
        if peek() != "^":
            return base, kind
        take("^")
        if peek() in ("-", "+"):
            exponent, _ = unary()
        else:
            exponent, _ = atom()
        return _power(base, exponent), "power"

    def atom() -> tuple[Value, str]:
        token = take()
        if token in ("(", "{"):
            value = expr()
            take(")" if token == "(" else "}")
            return value, "group"
        if token == "\\frac":
            take("{")
            num = expr()
            take("}")
            take("{")
            den = expr()
            take("}")
            return _mul(num, _inverse(den)), "frac"
        if token == "\\sqrt":
            take("{")
            inner = expr()
            take("}")
            return _sqrt(inner), "sqrt"
        if token == "\\pi":
            return {(1, 1): Fraction(1)}, "pi"
        if token[0].isdigit() or token[0] == ".":
            return _clean({(1, 0): Fraction(token)}), "number"
        raise ValueError(token)

    try:
        value = expr()
    except (ValueError, ZeroDivisionError, RecursionError):
        return None
    if pos != len(tokens):
        return None
    return value


def rational(value: Value) -> Fraction | None:
    """The value as a Fraction when it is rational, else None."""
    return _rational(value)


def decimal_value(value: Value) -> Decimal:
    """The value to 50 significant digits (enough for the 1e-6 and k-place rules)."""
    with localcontext() as ctx:
        ctx.prec = 60
        total = Decimal(0)
        for (m, k), c in value.items():
            total += Decimal(c.numerator) / Decimal(c.denominator) * Decimal(m).sqrt() * PI_50**k
        return +total
