"""Sweeps: train, analyse and report a grid of runs, then compare their circuits.

    plan_sweep   the grid of training flags -> one validated RunConfig per cell (`grid`)
    run_sweep    run every cell (on Ray when it is installed, else one after another) (`runner`)
    comparison, universality, ...   the cross-cell tables (`compare`)
    build_sweep_report   SWEEP_DIR/sweep_report.html (`page`)

Imports stay light here (no torch, no Ray), so `arithlens --help` stays fast;
the names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

DEFAULT_COUNT = 2000  # questions per cell's analysis: fewer than `arithlens run`'s 10,000, as a sweep has many cells

_LAZY = {
    "plan_sweep": "arithlens.sweep.grid",
    "SweepPlan": "arithlens.sweep.grid",
    "Cell": "arithlens.sweep.grid",
    "run_sweep": "arithlens.sweep.runner",
    "SweepResult": "arithlens.sweep.runner",
    "comparison": "arithlens.sweep.compare",
    "universality": "arithlens.sweep.compare",
    "build_sweep_report": "arithlens.sweep.page",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'arithlens.sweep' has no attribute {name!r}")


__all__ = list(_LAZY)
