"""The python of an environment with TRL, for the benchmarks that run TRL beside pillion.

TRL runs in its own interpreter (`--trl-python`, or $PILLION_TRL_PYTHON), so its dependency pins
never meet pillion's; a benchmark skips its TRL side when that python cannot import what it needs.
"""

from __future__ import annotations

import os
import subprocess


def trl_python(args, modules: tuple[str, ...] = ("trl", "datasets")) -> str | None:
    """`args.trl_python` or $PILLION_TRL_PYTHON when it imports `modules`, else None."""
    python = args.trl_python or os.environ.get("PILLION_TRL_PYTHON")
    if not python:
        return None
    try:
        ok = subprocess.run([python, "-c", "import " + ", ".join(modules)], capture_output=True).returncode == 0
    except OSError:  # no such interpreter: skipped like one without trl
        ok = False
    return python if ok else None
