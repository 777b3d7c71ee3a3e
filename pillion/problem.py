"""The Problem record: one prompt with its gold answer, as every reader produces it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class Problem:
    """One task. `answer` is the gold final answer as a string (math) or "" (code).

    `tests` holds code-problem tests (e.g. assert statements or stdin/stdout pairs);
    `meta` keeps whatever else the source had (subject, unique_id, year, ...).
    """

    id: str
    question: str
    answer: str
    solution: str | None = None
    source: str = "unknown"
    level: int | None = None
    kind: Literal["math", "code"] = "math"
    tests: list[Any] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
