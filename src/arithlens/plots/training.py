"""Training curves from a run's metrics table: every loss graph of the seed notebook.

Reads the per-step columns written by training (see the run-folder contract in
notes/analysis_api.md): `loss`, `loss_A{d}`, the per-digit sub-task columns
`{base_add,use_carry1,use_sum9}_{loss,count}_d{d}` (the loss of answer digit A_d, so
the curves and titles call it A{d}: D{d} names an input digit), the question-level
`base_add_only`, `use_carry1_any`, `use_sum9_one`, `use_sum9_two` columns and,
in finite mode, `test_loss` and `test_loss_A{d}`.

Titles follow the seed: "(Training) Loss Curves for 5 digit addition (Infinite)",
"Per-digit BaseAdd Loss (Infinite) (Training) (N cases, P%)", ... where the case
counts are summed over all steps and digits and the share is truncated to an
integer, as the seed computes it. A step where a sub-task had no case carries the
previous value forward for display, as the seed does. Each answer digit has one
colour in every figure (`answer_digit_colour`).

Long runs are shown as means over equal step bins (at most `max_points` points per
curve) so that a report stays small; the default 3000-step run is drawn exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

DEFAULT_COLOURS = ("#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A", "#19d3f3", "#FF6692", "#B6E880",
                   "#FF97FF", "#FECB52")  # plotly's default colourway
SUBTASKS: dict[str, str] = {"base_add": "BaseAdd", "use_carry1": "UseCarry1", "use_sum9": "UseSum9"}
MAX_POINTS = 3000


def answer_digit_colour(digit: int, n_digits: int) -> str:
    """The one colour answer digit A`digit` has in every figure (An takes the first colour of the colourway).

    Set explicitly on each trace: left to plotly, a figure's traces take colours in drawing order,
    so the same digit changed colour between figures and between the panels of one figure.
    """
    return DEFAULT_COLOURS[(n_digits - digit) % len(DEFAULT_COLOURS)]


def infer_n_digits(metrics: pd.DataFrame) -> int:
    """The digit count from the `loss_A{d}` columns (A0..An means n digits)."""
    digits = [int(c[len("loss_A") :]) for c in metrics.columns if c.startswith("loss_A") and c[6:].isdigit()]
    if not digits:
        raise ValueError("metrics has no loss_A{d} columns")
    return max(digits)


def is_finite_mode(metrics: pd.DataFrame) -> bool:
    """Finite (fixed training set) runs also log a test loss."""
    return "test_loss" in metrics.columns and bool(metrics["test_loss"].notna().any())


def display_series(metrics: pd.DataFrame, column: str, count_column: str | None = None) -> pd.Series:
    """A loss column for display: steps with no case (count 0 or NaN loss) repeat the previous value."""
    values = metrics[column].astype("float64")
    if count_column is not None and count_column in metrics.columns:
        values = values.where(metrics[count_column].fillna(0) > 0)
    return values.ffill()


def case_totals(metrics: pd.DataFrame, n_digits: int) -> dict[str, int]:
    """Per-digit cases of each sub-task, summed over steps and digits (the seed's *_total_cases)."""
    totals = {}
    for key, label in SUBTASKS.items():
        columns = [f"{key}_count_d{d}" for d in range(n_digits) if f"{key}_count_d{d}" in metrics.columns]
        totals[label] = int(metrics[columns].fillna(0).to_numpy().sum()) if columns else 0
    return totals


def cases_suffix(label: str, totals: dict[str, int]) -> str:
    """'(N cases, P%)' with the seed's truncated integer share."""
    total = sum(totals.values())
    share = int(100 * totals[label] / total) if total else 0
    return f"({totals[label]} cases, {share}%)"


def data_labels(finite: bool, testing: bool) -> tuple[str, str]:
    """The seed's data_size and data_type strings, e.g. ('(Infinite)', '(Training)')."""
    return ("(Finite)" if finite else "(Infinite)", "(Testing)" if testing else "(Training)")


def _binned(steps: np.ndarray, values: list[np.ndarray], max_points: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Means over equal bins of consecutive steps when there are more than `max_points` steps."""
    if len(steps) <= max_points:
        return steps, values
    edges = np.linspace(0, len(steps), max_points + 1).astype(int)
    starts = edges[:-1]
    counts = np.diff(edges)
    centre = np.add.reduceat(steps.astype("float64"), starts) / counts
    out = []
    for v in values:
        finite = np.isfinite(v)
        sums = np.add.reduceat(np.where(finite, v, 0.0), starts)
        seen = np.add.reduceat(finite.astype("float64"), starts)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where(seen > 0, sums / np.maximum(seen, 1), np.nan))
    return np.round(centre).astype("int64"), out


def lines_figure(
    metrics: pd.DataFrame,
    series: Sequence[tuple[str, pd.Series]],
    title: str,
    *,
    log_y: bool = False,
    yaxis: str | None = None,
    scale_buttons: bool = False,
    max_points: int = MAX_POINTS,
    colours: Sequence[str | None] | None = None,
) -> go.Figure:
    """One line per (name, values) against `metrics.step`, like the seed's `lines` helper.

    `colours` (one per series, None for plotly's choice) pins line colours, e.g. per answer digit.
    """
    steps = metrics["step"].to_numpy()
    x, ys = _binned(steps, [s.to_numpy(dtype="float64") for _, s in series], max_points)
    x = x.astype("int32") if x.max(initial=0) < 2**31 else x
    fig = go.Figure()
    for index, ((name, _), y) in enumerate(zip(series, ys)):
        if log_y:
            y = np.where(y > 0, y, np.nan)  # log axes cannot show 0; a gap is honest
        colour = colours[index] if colours is not None else None
        fig.add_trace(go.Scatter(x=x, y=y.astype("float32"), mode="lines", name=name, line=dict(color=colour)))
    fig.update_layout(
        title=title,
        xaxis_title="Step",
        yaxis_title=yaxis or ("Log Loss" if log_y else "Loss"),
        yaxis_type="log" if log_y else "linear",
        hovermode="x unified",
        showlegend=True,  # also for one curve: its name carries the question count
        legend_title_text="",
    )
    if scale_buttons:
        fig.update_layout(
            updatemenus=[
                dict(
                    type="buttons",
                    direction="right",
                    x=1.0,
                    y=1.12,
                    xanchor="right",
                    buttons=[
                        dict(label="linear", method="relayout", args=[{"yaxis.type": "linear"}]),
                        dict(label="log", method="relayout", args=[{"yaxis.type": "log"}]),
                    ],
                )
            ]
        )
    return fig


def loss_curves(metrics: pd.DataFrame, *, testing: bool = False, log_y: bool = False) -> go.Figure:
    """Total loss per step: the seed's `line(all_losses_list, title=...)`."""
    n = infer_n_digits(metrics)
    size, kind = data_labels(is_finite_mode(metrics), testing)
    column = "test_loss" if testing else "loss"
    title = f"{kind} Loss Curves for {n} digit addition {size}"
    if log_y:
        title = "(Log scale) " + title
    return lines_figure(metrics, [(f"{'test' if testing else 'train'}_loss", metrics[column])], title, log_y=log_y)


def per_token_loss_curves(metrics: pd.DataFrame, *, testing: bool = False, log_y: bool = False) -> go.Figure:
    """Loss of each answer token An..A0 plus the total: the seed's per-digit `plot_losses` graphs."""
    n = infer_n_digits(metrics)
    size, kind = data_labels(is_finite_mode(metrics), testing)
    prefix = "test_loss" if testing else "loss"
    series = [(f"A{d}", metrics[f"{prefix}_A{d}"]) for d in range(n, -1, -1)]
    series.append((f"{'test' if testing else 'train'}_loss", metrics[prefix]))
    colours = [*(answer_digit_colour(d, n) for d in range(n, -1, -1)), "black"]
    scale = "Per-digit (Log scale) " if log_y else "Per-digit "
    return lines_figure(metrics, series, f"{scale}{kind} Loss Curves for {n} digit addition {size}", log_y=log_y,
                        colours=colours)


def _subtask_suffix(metrics: pd.DataFrame, label: str) -> str:
    n = infer_n_digits(metrics)
    size, kind = data_labels(is_finite_mode(metrics), is_finite_mode(metrics))
    return f"{label} Loss {size} {kind} {cases_suffix(label, case_totals(metrics, n))}"


def subtask_digit_curves(metrics: pd.DataFrame, subtask: str) -> go.Figure:
    """Per-digit loss of one sub-task (base_add, use_carry1 or use_sum9): the seed's `graph_perdigit`.

    Column `{subtask}_loss_d{d}` is the loss of answer digit A_d, so the lines are named A0 .. A(n-1).
    """
    if subtask not in SUBTASKS:
        raise ValueError(f"subtask must be one of {', '.join(SUBTASKS)}, got {subtask!r}")
    n = infer_n_digits(metrics)
    series = [
        (f"A{d}", display_series(metrics, f"{subtask}_loss_d{d}", f"{subtask}_count_d{d}")) for d in range(n)
    ]
    title = "Per-digit " + _subtask_suffix(metrics, SUBTASKS[subtask])
    return lines_figure(metrics, series, title, scale_buttons=True,
                        colours=[answer_digit_colour(d, n) for d in range(n)])


def _count_label(metrics: pd.DataFrame, name: str, column: str) -> str:
    count = int(metrics[column].fillna(0).sum()) if column in metrics.columns else 0
    return f"{name} ({count} questions)"


def base_add_only_curve(metrics: pd.DataFrame) -> go.Figure:
    """Loss on questions that need no carry at all: the seed's 'AllDigits BaseAdd' graph."""
    series = [
        (
            _count_label(metrics, "all digits BaseAdd", "base_add_only_count"),
            display_series(metrics, "base_add_only_loss", "base_add_only_count"),
        )
    ]
    return lines_figure(metrics, series, "AllDigits " + _subtask_suffix(metrics, "BaseAdd"), scale_buttons=True)


def use_carry1_any_curve(metrics: pd.DataFrame) -> go.Figure:
    """Loss on questions using UseCarry1 at least once and UseSum9 never."""
    series = [
        (
            _count_label(metrics, "at least 1 digit", "use_carry1_any_count"),
            display_series(metrics, "use_carry1_any_loss", "use_carry1_any_count"),
        )
    ]
    return lines_figure(metrics, series, _subtask_suffix(metrics, "UseCarry1"), scale_buttons=True)


def use_sum9_cascade_curves(metrics: pd.DataFrame) -> go.Figure:
    """Loss on questions using UseSum9 in exactly one and exactly two digits."""
    series = [
        (
            _count_label(metrics, name, f"use_sum9_{k}_count"),
            display_series(metrics, f"use_sum9_{k}_loss", f"use_sum9_{k}_count"),
        )
        for k, name in (("one", "1 digit"), ("two", "2 digits"))
    ]
    return lines_figure(metrics, series, _subtask_suffix(metrics, "UseSum9"), scale_buttons=True)


def digit_comparison_curves(
    metrics: pd.DataFrame, digit: int, *, log_y: bool = False, include_use_sum9: bool = True
) -> go.Figure:
    """For answer digit A`digit`, the sub-task losses side by side: the seed's per-digit comparison graphs."""
    finite = is_finite_mode(metrics)
    size, kind = data_labels(finite, finite)
    keys = ["base_add", "use_carry1"] + (["use_sum9"] if include_use_sum9 else [])
    series = [
        (SUBTASKS[k], display_series(metrics, f"{k}_loss_d{digit}", f"{k}_count_d{digit}")) for k in keys
    ]
    tasks = "BaseAdd, UseCarry1 & UseSum9" if include_use_sum9 else "BaseAdd & UseCarry1"
    title = f"Loss for {tasks} Tasks for answer digit A{digit} {size} {kind}"
    return lines_figure(metrics, series, ("Log " if log_y else "") + title, log_y=log_y)


def add_phase_bands(fig: go.Figure, phases: pd.DataFrame | None, n_digits: int | None = None) -> go.Figure:
    """Shade each phase change (columns answer_digit, start_step, end_step) as a labelled vertical band.

    A band takes its answer digit's colour (`answer_digit_colour`). Without `n_digits` the
    highest digit with a phase stands in for n, which shifts the colours when An has no phase.
    """
    if phases is None or len(phases) == 0:
        return fig
    digits = [int(str(d).lstrip("A")) for d in phases["answer_digit"] if str(d).lstrip("A").isdigit()]
    top = max(digits, default=0) if n_digits is None else n_digits
    shapes, notes = list(fig.layout.shapes), list(fig.layout.annotations)
    for row in phases.itertuples(index=False):
        start, end = float(row.start_step), float(row.end_step)
        if not (np.isfinite(start) and np.isfinite(end)):
            continue
        name = str(row.answer_digit)
        digit = int(name.lstrip("A")) if name.lstrip("A").isdigit() else top
        colour = answer_digit_colour(digit, top)
        # One layout update for all bands: plotly's add_vrect re-validates the whole layout per call.
        shapes.append(dict(type="rect", xref="x", yref="paper", x0=start, x1=max(end, start + 1), y0=0, y1=1,
                           fillcolor=colour, opacity=0.15, line_width=0, layer="below"))
        notes.append(dict(x=start, y=1, xref="x", yref="paper", text=name, showarrow=False, xanchor="left",
                          yanchor="bottom", font=dict(size=10, color=colour)))
    fig.update_layout(shapes=shapes, annotations=notes)
    return fig


def has_heldout(metrics: pd.DataFrame) -> bool:
    """Runs trained with --eval-every carry held-out accuracy columns."""
    return "heldout_accuracy" in metrics.columns and bool(metrics["heldout_accuracy"].notna().any())


def heldout_accuracy_curves(metrics: pd.DataFrame) -> go.Figure:
    """Held-out accuracy at each evaluation: overall, per answer digit and per cascade depth.

    The y axis is the error rate (1 - accuracy) on a log scale, where 99% and 99.99%
    are as far apart as 90% and 99%; hover shows the accuracy itself.
    """
    n = infer_n_digits(metrics)
    evaluated = metrics[metrics["heldout_accuracy"].notna()]
    fig = go.Figure()
    series = [("all questions", "heldout_accuracy", dict(width=3, color="black"))]
    series += [(f"A{d}", f"heldout_acc_A{d}", dict(color=answer_digit_colour(d, n)))
               for d in range(n, -1, -1)]
    series += [(f"cascade depth {k}", f"heldout_acc_depth{k}", dict(dash="dot")) for k in range(n)
               if evaluated[f"heldout_acc_depth{k}"].notna().any()]
    for name, column, line in series:
        accuracy = evaluated[column].to_numpy(dtype="float64")
        error = np.where(accuracy < 1, 1 - accuracy, np.nan)  # no error: nothing to draw on a log axis
        fig.add_trace(go.Scatter(
            x=(evaluated["step"] + 1).to_numpy(), y=error, name=name, mode="lines+markers", line=line,
            customdata=100 * accuracy, hovertemplate="step %{x}: %{customdata:.3f}%<extra>" + name + "</extra>",
            visible=True if column == "heldout_accuracy" or "_A" in column else "legendonly",
        ))
    fig.update_layout(title=f"Held-out accuracy during training ({n} digit addition; error rate, log scale)",
                      xaxis_title="Step", yaxis_title="Error rate (1 - accuracy)", yaxis_type="log",
                      hovermode="x unified", legend_title_text="")
    return fig


def training_figures(metrics: pd.DataFrame, phases: pd.DataFrame | None = None) -> list[tuple[str, go.Figure]]:
    """Every seed loss graph for a metrics table, as (group heading, figure) pairs in seed order,
    after the held-out accuracy curve when the run measured one."""
    n = infer_n_digits(metrics)
    finite = is_finite_mode(metrics)
    out: list[tuple[str, go.Figure]] = []
    if has_heldout(metrics):
        out.append(("Held-out accuracy", add_phase_bands(heldout_accuracy_curves(metrics), phases, n)))
    for testing in ([False, True] if finite else [False]):
        group = "Loss curves (testing)" if testing else "Loss curves (training)"
        for log_y in (False, True):
            out.append((group, add_phase_bands(loss_curves(metrics, testing=testing, log_y=log_y), phases, n)))
        for log_y in (False, True):
            out.append((group, add_phase_bands(per_token_loss_curves(metrics, testing=testing, log_y=log_y),
                                               phases, n)))
    out.append(("BaseAdd", base_add_only_curve(metrics)))
    out.append(("BaseAdd", subtask_digit_curves(metrics, "base_add")))
    out.append(("UseCarry1", use_carry1_any_curve(metrics)))
    out.append(("UseCarry1", subtask_digit_curves(metrics, "use_carry1")))
    out.append(("UseSum9", use_sum9_cascade_curves(metrics)))
    out.append(("UseSum9", subtask_digit_curves(metrics, "use_sum9")))
    for digit in range(n):
        group = f"Sub-tasks of A{digit}"
        for include_use_sum9 in (False, True):
            for log_y in (False, True):
                out.append(
                    (group, digit_comparison_curves(metrics, digit, log_y=log_y, include_use_sum9=include_use_sum9))
                )
    return out
