"""Data: dataset readers, the synthetic curriculum, mixtures, history resampling, templates.

    read(path, format="auto", on_error="raise") -> list[Problem]      formats.py (parsers: math_formats.py,
                                                                       code_formats.py; rows.py)
    generate(n, levels=(1, 2, 3), seed=0, split="train")               synthetic.py
    synthetic_code.generate(n, levels=(1, 2), seed=0, split="train")   synthetic_code.py
    Mixture(pools, weights, level_weights, seed).sample(n)             mixture.py
    HistoryResampler, Stage, parse_stages, stage_at                    history.py
    render_prompt(problem, template="plain", tokenizer=None)           templates.py

The `Problem` record every reader produces is `pillion.problem.Problem`.
"""

from pillion.data.formats import FORMATS, DataError, ReadReport, SkippedRow, read, read_with_report
from pillion.data.history import HistoryResampler, Stage, parse_stages, stage_at
from pillion.data.mixture import Mixture
from pillion.data.synthetic import generate
from pillion.data.templates import TEMPLATES, render_prompt, resolve_template

__all__ = [
    "FORMATS", "DataError", "HistoryResampler", "Mixture", "ReadReport", "SkippedRow",
    "Stage", "TEMPLATES", "generate", "parse_stages", "read", "read_with_report", "render_prompt",
    "resolve_template", "stage_at",
]
