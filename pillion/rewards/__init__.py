"""Verifiable rewards: answer extraction, equivalence grading, shaping, code execution.

    from pillion.rewards import RewardConfig, score
    result = score(problem, completion_text, num_tokens, RewardConfig())
    result.score, result.correct, result.parts   # parts: correct, format, overlong, length

`extract.py` finds the final answer (`expression.py` recognises a bare one), `normalize.py`
rewrites answers canonically, `math.py` (with `exact.py`) decides most pairs in-process,
`symbolic.py` decides the rest with sympy inside the worker processes of `pool.py` (which
holds `math_equal`, timeouts and `GradingPool`), `code.py` runs code completions in a
sandbox, `shaping.py` composes the reward.
"""

from pillion.rewards.extract import extract_answer
from pillion.rewards.pool import GradingPool, grade_batch, math_equal
from pillion.rewards.shaping import OverlongConfig, RewardConfig, RewardResult, score, score_batch

__all__ = [
    "GradingPool",
    "OverlongConfig",
    "RewardConfig",
    "RewardResult",
    "extract_answer",
    "grade_batch",
    "math_equal",
    "score",
    "score_batch",
]
