"""Figures comparing the cells of a sweep (tables from `arithlens.sweep.compare`).

Cells run along one axis in the order of the sweep's grid; every figure takes a
long or wide table from `compare` and returns a `go.Figure`. Accuracy is shown
in nines as well as per cent, because the interesting differences sit at
99.x%.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from arithlens.plots.analysis import answer_order
from arithlens.plots.training import answer_digit_colour
from arithlens.sweep.compare import component_label


def accuracy_figure(comparison: pd.DataFrame) -> go.Figure:
    """Accuracy (per cent) and nines of every cell, side by side."""
    cells = comparison["cell"].tolist()
    fig = make_subplots(rows=1, cols=2, subplot_titles=["accuracy", "nines"], horizontal_spacing=0.12)
    accuracy = comparison["accuracy"].astype("float64") * 100
    fig.add_trace(go.Bar(x=cells, y=accuracy, text=[f"{a:.3f}%" for a in accuracy], name="accuracy",
                         hovertemplate="%{x}: %{y:.4f}%<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=cells, y=comparison["nines"], text=[f"{n:.2f}" for n in comparison["nines"]],
                         name="nines", hovertemplate="%{x}: %{y:.2f} nines<extra></extra>"), row=1, col=2)
    low = float(np.nanmin(accuracy)) if len(accuracy) else 0.0
    fig.update_yaxes(title_text="% of random questions right", range=[max(0.0, low - 1), 100], row=1, col=1)
    fig.update_yaxes(title_text="nines", rangemode="tozero", row=1, col=2)
    fig.update_layout(title="Accuracy of each cell", showlegend=False, height=460)
    return fig


def cascade_figure(cascade: pd.DataFrame, cells: list[str]) -> go.Figure:
    """Accuracy by cascade depth: a cell x depth heatmap, each square labelled with its accuracy and count."""
    depths = sorted(cascade["cascade_depth"].unique())
    z = np.full((len(cells), len(depths)), np.nan)
    text = np.full(z.shape, "", dtype=object)
    for row in cascade.itertuples():
        if row.cell in cells and row.accuracy is not None and not pd.isna(row.accuracy):
            i, j = cells.index(row.cell), depths.index(row.cascade_depth)
            z[i, j] = 100 * row.accuracy
            text[i, j] = f"{100 * row.accuracy:.1f}% of {row.questions}"
    fig = go.Figure(go.Heatmap(z=np.round(z, 3), x=[f"depth {d}" for d in depths], y=cells, text=text,
                               texttemplate="%{text}", colorscale="Viridis", zmin=0, zmax=100,
                               colorbar=dict(title="% right"),
                               hovertemplate="%{y}, %{x}: %{text}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title_text="cell")
    fig.update_xaxes(title_text="cascade depth (longest run of UseSum9 columns)")
    fig.update_layout(title="Accuracy by cascade depth", height=max(320, 60 + 40 * len(cells)))
    return fig


def phase_figure(phases: pd.DataFrame, cells: list[str], n_digits: int) -> go.Figure:
    """Each answer digit's phase changes in each cell: the steepest step, with a bar from start to end."""
    fig = go.Figure()
    digits = [d for d in answer_order(n_digits) if d in set(phases["answer_digit"])]
    for digit in digits:
        part = phases[phases["answer_digit"] == digit]
        fig.add_trace(go.Scatter(
            x=part["steepest_step"], y=part["cell"], mode="markers", name=digit,
            marker=dict(size=11, color=answer_digit_colour(int(digit[1:]), n_digits)),
            error_x=dict(type="data", symmetric=False, array=part["end_step"] - part["steepest_step"],
                         arrayminus=part["steepest_step"] - part["start_step"], thickness=1.5),
            customdata=np.stack([part["start_step"], part["end_step"], part["log10_drop"]], axis=-1),
            hovertemplate=(f"{digit} in %{{y}}: steepest at step %{{x}} (from %{{customdata[0]}} to "
                           "%{customdata[1]}; loss fell %{customdata[2]:.2f} decades)<extra></extra>")))
    fig.update_yaxes(categoryorder="array", categoryarray=cells[::-1], title_text="cell")
    fig.update_xaxes(title_text="training step")
    fig.update_layout(title="Phase changes of each answer digit (marker: steepest step; bar: start to end)",
                      height=max(340, 80 + 45 * len(cells)), legend_title_text="answer digit")
    return fig


def circuit_figure(scores: pd.DataFrame, cells: list[str], max_labelled: int = 24) -> go.Figure:
    """The circuit scores of summary.json, cell x score; colour ranks each score across the cells.

    The scores live on different scales (node counts, shares, logit differences), so each
    column is coloured from its own lowest (light) to highest (dark) value; hover, or the
    written values when there are at most `max_labelled` scores, give the numbers.
    """
    names = list(dict.fromkeys(scores["score"]))
    values = np.full((len(cells), len(names)), np.nan)
    for row in scores.itertuples():
        if row.cell in cells:
            values[cells.index(row.cell), names.index(row.score)] = row.value
    frame = pd.DataFrame(values)
    low, high = frame.min().to_numpy(), frame.max().to_numpy()  # NaN for a score no cell has, without a warning
    span = np.where(high > low, high - low, 1.0)
    shade = np.where(high > low, (values - low) / span, 0.5)
    shade = np.where(np.isnan(values), np.nan, shade)
    text = np.vectorize(lambda v: "" if np.isnan(v) else f"{v:.3g}", otypes=[object])(values)
    fig = go.Figure(go.Heatmap(z=np.round(shade, 4), x=names, y=cells, text=text, colorscale="Blues", zmin=0, zmax=1,
                               texttemplate="%{text}" if len(names) <= max_labelled else None, showscale=False,
                               hovertemplate="%{y}: %{x} = %{text}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title_text="cell")
    fig.update_xaxes(tickangle=-45)
    fig.update_layout(title="Circuit scores per cell (colour: lowest to highest of each score across the cells)",
                      height=max(360, 140 + 40 * len(cells)))
    return fig


def agreement_figure(components: pd.DataFrame, universality: pd.DataFrame, cells: list[str]) -> go.Figure:
    """Which cell has which algorithm-map component (rows, widest-shared first), labelled with its nodes there."""
    table = universality[universality["group"] == universality["group"].iloc[0]] if len(universality) else universality
    labels = [f"{component_label(r)} ({r.cells_with_it}/{r.cells})" for r in table.itertuples()]
    keys = [tuple(getattr(r, c) for c in ("answer_digit", "role", "kind", "position", "attends_to"))
            for r in table.itertuples()]
    z = np.zeros((len(keys), len(cells)))
    text = np.full(z.shape, "", dtype=object)
    index = {key: i for i, key in enumerate(keys)}
    for row in components.itertuples():
        key = (row.answer_digit, row.role, row.kind, row.position, row.attends_to)
        if key in index and row.cell in cells:
            z[index[key], cells.index(row.cell)] = 1
            text[index[key], cells.index(row.cell)] = row.nodes
    fig = go.Figure(go.Heatmap(z=z, x=cells, y=labels, text=text, texttemplate="%{text}", showscale=False,
                               colorscale=[[0, "#f6f8fa"], [1, "#54aeff"]], zmin=0, zmax=1, xgap=1, ygap=1,
                               hovertemplate="%{y}<br>%{x}: %{text}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", automargin=True)
    fig.update_xaxes(side="top", title_text="cell (filled: the cell has the component; text: its nodes)")
    fig.update_layout(title="Algorithm-map agreement: each component by role, position and what it reads",
                      height=max(360, 120 + 22 * len(keys)), margin=dict(l=20))
    return fig
