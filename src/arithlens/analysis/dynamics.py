"""Training dynamics: each answer digit's phase change, and what changes across it.

Phase detection works on log10 of a per-digit loss curve (`loss_A{d}`, or
`test_loss_A{d}` in finite mode), smoothed by a centred rolling median and
then a rolling mean (window ~2% of the steps), so per-batch noise and spikes
do not count. The steepest descent of the smoothed curve is a phase's centre;
the phase runs out to where the descent rate falls below `slope_fraction` of
that peak rate. The region counts as a phase change if the smoothed loss falls
by at least `min_drop` decades (default 0.3, a factor of 2) across it and it
does not start at the first step (that drop is the initial fit to the output
distribution, which every digit makes in the first few dozen steps). Regions
are taken steepest first and removed, so one curve can show several phases (up
to `max_phases`). On a sigmoid in log-loss the centre is the sigmoid's
midpoint and, with the default 0.25, the ends lie about 2.6 widths either side.
On a log scale a learned digit's loss often keeps falling steadily for a long
while after its phase change, so the end step can lie well after the loss
has left its plateau; `loss_before`/`loss_after` show how far it fell.

Across each phase, `subtask_changes` compares every sub-task loss column of the
metrics table just before and just after, and `compare_checkpoints` compares
the useful nodes (mean-ablation, helper A's `node_ablation`/`useful_nodes`) of
the checkpoints that bracket it. Step 0 is the untrained model, rebuilt from
the config (training starts from `build_model(config.model)`, which is
deterministic); the last step is the run's final model.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from transformer_lens.model_bridge import TransformerBridge

from arithlens.analysis.ablation import node_ablation
from arithlens.analysis.nodes import Node, useful_nodes
from arithlens.errors import ArithlensError
from arithlens.model import build_model
from arithlens.runs import Run
from arithlens.task import AdditionBatch

LOSS_FLOOR = 1e-12  # log10 of a zero loss would be -inf; nothing below this is measurable in float64 anyway
_DIGIT_COLUMN = re.compile(r"^(test_)?loss_A(\d+)$")
_SUBTASK_COLUMN = re.compile(r"^(base_add|use_carry1|use_sum9)_loss_d(\d+)$")
_AGGREGATE_COLUMNS = ("base_add_only_loss", "use_carry1_any_loss", "use_sum9_one_loss", "use_sum9_two_loss")


@dataclass(frozen=True)
class PhaseChange:
    """One steep drop of a loss curve; losses are the smoothed curve's values at the ends."""

    start_step: int
    steepest_step: int
    end_step: int
    loss_before: float
    loss_after: float
    log10_drop: float
    max_slope_per_1k: float  # decades of loss lost per 1000 steps at the steepest point


def default_window(points: int) -> int:
    """An odd smoothing window of about 2% of the curve, at least 5 points."""
    window = max(5, points // 50)
    return window if window % 2 else window + 1


def smooth_log_loss(loss: np.ndarray | pd.Series, window: int) -> np.ndarray:
    """log10 of a loss curve, gaps interpolated, then rolling median and rolling mean (centred)."""
    if not isinstance(window, int) or window < 1:
        raise ArithlensError(f"window must be an integer >= 1, got {window!r}")
    series = pd.Series(np.log10(np.clip(np.asarray(loss, dtype=np.float64), LOSS_FLOOR, None)))
    series = series.interpolate(limit_direction="both")
    median = series.rolling(window, center=True, min_periods=1).median()
    return median.rolling(window, center=True, min_periods=1).mean().to_numpy()


def detect_phase_changes(steps: np.ndarray | pd.Series, loss: np.ndarray | pd.Series, *, window: int | None = None,
                         slope_fraction: float = 0.25, min_drop: float = 0.3, max_phases: int = 3
                         ) -> list[PhaseChange]:
    """The phase changes of one loss curve, in step order (see the module docstring)."""
    steps = np.asarray(steps, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    if steps.shape != loss.shape or steps.ndim != 1:
        raise ArithlensError(f"steps and loss must be 1-D and the same length, got {steps.shape} and {loss.shape}")
    if not 0 < slope_fraction < 1:
        raise ArithlensError(f"slope_fraction must lie in (0, 1), got {slope_fraction!r}")
    if len(steps) < 3 or np.isnan(loss).all():
        return []
    order = np.argsort(steps, kind="stable")
    steps, loss = steps[order], loss[order]
    smoothed = smooth_log_loss(loss, default_window(len(steps)) if window is None else window)
    descent = -np.gradient(smoothed, steps)  # decades per step, positive while the loss falls
    free = np.ones(len(steps), dtype=bool)
    phases: list[PhaseChange] = []
    for _ in range(100):  # each pass claims at least one point; noise regions rarely need more than a few
        if len(phases) >= max_phases:
            break
        candidates = np.where(free, descent, -np.inf)
        peak = int(np.argmax(candidates))
        if not candidates[peak] > 0:
            break
        level = slope_fraction * descent[peak]
        low = peak
        while low > 0 and free[low - 1] and descent[low - 1] >= level:
            low -= 1
        high = peak
        while high < len(steps) - 1 and free[high + 1] and descent[high + 1] >= level:
            high += 1
        free[low : high + 1] = False
        drop = float(smoothed[low] - smoothed[high])
        if drop >= min_drop and low > 0:  # a drop from the very first step is the initial fit, not a phase change
            phases.append(PhaseChange(
                start_step=int(steps[low]), steepest_step=int(steps[peak]), end_step=int(steps[high]),
                loss_before=float(10 ** smoothed[low]), loss_after=float(10 ** smoothed[high]), log10_drop=drop,
                max_slope_per_1k=float(descent[peak] * 1000)))
    return sorted(phases, key=lambda p: p.start_step)


def _digit_columns(metrics: pd.DataFrame, source: str) -> dict[int, str]:
    if source not in ("auto", "train", "test"):
        raise ArithlensError(f"source must be auto, train or test, got {source!r}")
    found: dict[str, dict[int, str]] = {"train": {}, "test": {}}
    for column in metrics.columns:
        match = _DIGIT_COLUMN.match(str(column))
        if match:
            found["test" if match.group(1) else "train"][int(match.group(2))] = str(column)
    if source == "auto":
        source = "test" if found["test"] else "train"
    if not found[source]:
        raise ArithlensError(f"the metrics table has no {'test_' if source == 'test' else ''}loss_A<digit> columns; "
                             "pass the metrics.parquet of a training run")
    return found[source]


def phase_changes(metrics: pd.DataFrame, *, source: str = "auto", window: int | None = None,
                  slope_fraction: float = 0.25, min_drop: float = 0.3, max_phases: int = 3) -> pd.DataFrame:
    """Phase changes of every answer digit's loss curve.

    `source` "train" reads loss_A{d}, "test" reads test_loss_A{d} (finite-set
    runs), "auto" prefers test. Columns [answer_digit, loss_column, phase,
    start_step, steepest_step, end_step, loss_before, loss_after, log10_drop,
    max_slope_per_1k]; phase counts from 0 in step order per digit; a digit
    without a phase change has no rows.
    """
    if "step" not in metrics.columns:
        raise ArithlensError("the metrics table has no 'step' column; pass the metrics.parquet of a training run")
    columns = _digit_columns(metrics, source)
    rows = []
    for digit in sorted(columns, reverse=True):
        found = detect_phase_changes(metrics["step"], metrics[columns[digit]], window=window,
                                     slope_fraction=slope_fraction, min_drop=min_drop, max_phases=max_phases)
        for index, phase in enumerate(found):
            rows.append({"answer_digit": f"A{digit}", "loss_column": columns[digit], "phase": index, **vars(phase)})
    return pd.DataFrame(rows, columns=["answer_digit", "loss_column", "phase", "start_step", "steepest_step",
                                       "end_step", "loss_before", "loss_after", "log10_drop", "max_slope_per_1k"])


def _subtask_of(column: str) -> tuple[str, str]:
    match = _SUBTASK_COLUMN.match(column)
    if match:
        return match.group(1), f"A{match.group(2)}"  # the answer digit whose sub-task loss this is
    return column.removesuffix("_loss"), "all"


def subtask_changes(metrics: pd.DataFrame, phases: pd.DataFrame, *, window: int | None = None) -> pd.DataFrame:
    """Every sub-task loss just before vs just after each phase change.

    Before is the median over the `window` steps up to the phase's start, after
    the median over the `window` steps from its end. Columns [answer_digit,
    phase, column, subtask, digit, loss_before, loss_after, log10_change]
    (negative log10_change = the loss fell; NaN where the case never occurred).
    """
    columns = [c for c in metrics.columns if _SUBTASK_COLUMN.match(str(c)) or c in _AGGREGATE_COLUMNS]
    rows = []
    if phases.empty or not columns:
        return pd.DataFrame(rows, columns=["answer_digit", "phase", "column", "subtask", "digit", "loss_before",
                                           "loss_after", "log10_change"])
    ordered = metrics.sort_values("step")
    steps = ordered["step"].to_numpy()
    width = default_window(len(steps)) if window is None else window
    for phase in phases.itertuples():
        start = int(np.searchsorted(steps, phase.start_step))
        end = int(np.searchsorted(steps, phase.end_step))
        before = ordered.iloc[max(0, start - width) : start + 1]
        after = ordered.iloc[end : end + width]
        for column in columns:
            loss_before = float(before[column].median())
            loss_after = float(after[column].median())
            subtask, digit = _subtask_of(str(column))
            change = np.log10(max(loss_after, LOSS_FLOOR)) - np.log10(max(loss_before, LOSS_FLOOR))
            rows.append({"answer_digit": phase.answer_digit, "phase": phase.phase, "column": column,
                         "subtask": subtask, "digit": digit, "loss_before": loss_before, "loss_after": loss_after,
                         "log10_change": float(change) if np.isfinite(loss_before + loss_after) else float("nan")})
    return pd.DataFrame(rows)


def bracketing_steps(phases: pd.DataFrame, checkpoint_steps: list[int], final_step: int) -> dict[int, tuple[int, int]]:
    """Per phase row index: (last saved step at or before its start, first at or after its end).

    Step 0 (the untrained model) and `final_step` (the final model) always count as saved.
    """
    saved = sorted({0, *checkpoint_steps, final_step})
    result = {}
    for index, phase in phases.iterrows():
        before = max((s for s in saved if s <= phase["start_step"]), default=0)
        after = min((s for s in saved if s >= phase["end_step"]), default=saved[-1])
        result[index] = (before, after)
    return result


def compare_checkpoints(run: Run, phases: pd.DataFrame, batch: AdditionBatch, *, threshold: float = 0.01,
                        progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    """Which nodes become useful across each phase change, from the checkpoints that bracket it.

    Columns [answer_digit, phase, step_before, step_after, node, useful_before,
    useful_after, became_useful, failure_rate_before, failure_rate_after,
    impacts_after, failing_subtasks_after]: one row per node that impacts the
    phase's answer digit before or after; failure rates are the node's largest
    accuracy drop on any answer digit (0 when it is not useful). `progress(1)` is called per model evaluated.
    """
    columns = ["answer_digit", "phase", "step_before", "step_after", "node", "useful_before", "useful_after",
               "became_useful", "failure_rate_before", "failure_rate_after", "impacts_after", "failing_subtasks_after"]
    if phases.empty:
        return pd.DataFrame([], columns=columns)
    final_step = int(run.info.get("steps_done") or run.metrics["step"].max())
    brackets = bracketing_steps(phases, run.checkpoint_steps(), final_step)
    nodes_at: dict[int, dict[str, Node]] = {}

    def model_at(step: int) -> TransformerBridge:
        if step == 0:
            return build_model(run.config.model)
        if step == final_step:
            return run.model()
        return run.checkpoint_model(step)

    for step in sorted({s for pair in brackets.values() for s in pair}):
        model = model_at(step)
        ablation = node_ablation(model, batch, method="mean")
        nodes_at[step] = {node.name: node for node in useful_nodes(model, batch, threshold=threshold, ablation=ablation)}
        if progress is not None:
            progress(1)
    rows = []
    for index, phase in phases.iterrows():
        before_step, after_step = brackets[index]
        before, after = nodes_at[before_step], nodes_at[after_step]
        digit = phase["answer_digit"]
        names = sorted(n for n in set(before) | set(after)
                       if (n in before and digit in before[n].impacts) or (n in after and digit in after[n].impacts))
        for name in names:
            was, now = before.get(name), after.get(name)
            was_useful = was is not None and digit in was.impacts
            now_useful = now is not None and digit in now.impacts
            rows.append({
                "answer_digit": digit, "phase": int(phase["phase"]), "step_before": before_step,
                "step_after": after_step, "node": name, "useful_before": was_useful, "useful_after": now_useful,
                "became_useful": now_useful and not was_useful,
                "failure_rate_before": was.failure_rate if was else 0.0,
                "failure_rate_after": now.failure_rate if now else 0.0,
                "impacts_after": ",".join(now.impacts) if now else "",
                "failing_subtasks_after": ",".join(now.failing_subtasks) if now else "",
            })
    return pd.DataFrame(rows, columns=columns)
