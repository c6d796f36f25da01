"""Figures for the interpretability tables written by `arithlens.analysis`.

Each function takes one of the analysis DataFrames (columns as documented in
the analysis modules) and returns a `go.Figure`. Signed effects (loss and
accuracy deltas, logit attributions, patching recovery) share a diverging RdBu
colour axis centred on 0; position axes carry the task's position names
(`P14 (→A2)` where a position's logits predict an answer digit, `P2 (D2)` elsewhere: the
token name alone would call P14 "A3") instead of bare indices. Each answer digit
has one colour in every figure (`arithlens.plots.training.answer_digit_colour`).

Colour conventions: red means "this component matters for getting the digit
right" where that is the direction of harm (accuracy drops, loss rises), so
accuracy deltas use RdBu and loss deltas its reverse.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from arithlens.plots.training import answer_digit_colour
from arithlens.task import AdditionTask, ArithmeticTask

SUBPLOT_GAP = 0.03
# Every figure takes the model's layout as `n_digits`: a digit count (addition's layout) or the task
# itself (`task_for(config)` or one of its views), which a subtraction or mixed model needs.
Layout = int | ArithmeticTask
SUBTASK_CLASSES = ("all", "BA", "UC1", "US9", "BD", "UB", "UZ")  # addition's, then subtraction's


def layout_task(layout: Layout) -> ArithmeticTask:
    """The task of a layout: itself, or n-digit addition for a digit count."""
    return layout if isinstance(layout, ArithmeticTask) else AdditionTask(layout)


def digit_count(layout: Layout) -> int:
    return layout_task(layout).n_digits


def position_names(n_digits: Layout) -> list[str]:
    """The tokens at each position: D4 .. D0, +, D'4 .. D'0, =, A5 .. A0 for 5-digit addition."""
    return layout_task(n_digits).position_names()


def position_labels(n_digits: Layout) -> list[str]:
    """How every figure names positions: `P14 (→A2)` where a position predicts an answer digit, else `P2 (D2)`."""
    return layout_task(n_digits).position_labels()


def answer_order(n_digits: Layout) -> list[str]:
    """Answer token names in the order answers read: (sign,) An .. A0."""
    return layout_task(n_digits).answer_token_names()


def signed_axis(title: str, reverse: bool = False) -> dict[str, object]:
    """A shared colour axis for signed values: RdBu (or its reverse), centred on 0."""
    return dict(colorscale="RdBu_r" if reverse else "RdBu", cmid=0, colorbar=dict(title=title))


def component_label(layer: int, head: int) -> str:
    """L0H2 for a head, L0M for an MLP (head -1)."""
    return f"L{layer}M" if head < 0 else f"L{layer}H{head}"


def _components(frame: pd.DataFrame) -> list[str]:
    """The frame's heads and MLPs in order: L0H0, L0H1, ..., L0M, L1H0, ..."""
    pairs = {(int(layer), int(head)) for layer, head in zip(frame["layer"], frame["head"])}
    return [component_label(*pair) for pair in sorted(pairs, key=lambda p: (p[0], p[1] < 0, p[1]))]


def _component_labels(frame: pd.DataFrame) -> pd.Series:
    """L0H2 / L0M for every row, aligned with the frame."""
    labels = [component_label(int(layer), int(head)) for layer, head in zip(frame["layer"], frame["head"])]
    return pd.Series(labels, index=frame.index, dtype="object")


def _named(positions: pd.Series, names: list[str]) -> pd.Series:
    return positions.map(lambda p: names[int(p)])


def _grid(frame: pd.DataFrame, rows: list[str], row_key: pd.Series, columns: list[str], col_key: pd.Series,
          value: str) -> np.ndarray:
    """A [rows, columns] array of `value`, NaN where the frame has no entry."""
    grid = np.full((len(rows), len(columns)), np.nan)
    row_index = {name: i for i, name in enumerate(rows)}
    col_index = {name: i for i, name in enumerate(columns)}
    for r, c, v in zip(row_key, col_key, frame[value]):
        if r in row_index and c in col_index:
            grid[row_index[r], col_index[c]] = v
    return grid


def _round(values: np.ndarray, digits: int = 4) -> np.ndarray:
    return np.round(values.astype("float64"), digits)


def ablation_method(frame: pd.DataFrame) -> str:
    """How an ablation table was measured, for titles: "mean ablation against 1,000 uniformly random
    questions (seed 1)". Tables from before the reference was recorded took their means from the
    tested questions themselves, and say so."""
    if "reference" not in frame.columns or not len(frame):
        return "mean ablation against the tested questions themselves (a table from before references were recorded)"
    method = str(frame["method"].iloc[0])
    return f"{method} ablation" if method == "zero" else f"{method} ablation against {frame['reference'].iloc[0]}"


def _with_subtitle(title: str, subtitle: str) -> str:
    return f"{title}<br><sup>{subtitle}</sup>"


def node_effect_heatmaps(
    frame: pd.DataFrame, n_digits: int, *, value: str = "accuracy_delta", subtask_class: str = "all"
) -> go.Figure:
    """Mean-ablation effect of every node: for each answer digit a position x head/MLP heatmap.

    `frame` is `node_ablation` output; the first panel is the whole question
    (answer_digit "all") when present.
    """
    rows = frame[frame["subtask_class"] == subtask_class]
    digits = [d for d in ["all", *answer_order(n_digits)] if d in set(rows["answer_digit"])]
    names = position_labels(n_digits)
    columns = _components(rows)
    titles = ["whole question" if d == "all" else d for d in digits]
    fig = make_subplots(rows=1, cols=max(len(digits), 1), shared_yaxes=True, subplot_titles=titles,
                        horizontal_spacing=SUBPLOT_GAP)
    for i, digit in enumerate(digits):
        part = rows[rows["answer_digit"] == digit]
        z = _grid(part, names, _named(part["position"], names), columns, _component_labels(part), value)
        fig.add_trace(go.Heatmap(z=_round(z), x=columns, y=names, coloraxis="coloraxis",
                                 hovertemplate="%{y} %{x}<br>" + value + " %{z}<extra>" + str(digit) + "</extra>"),
                      row=1, col=i + 1)
    fig.update_yaxes(autorange="reversed", title_text="position", col=1)
    reverse = value.startswith("loss")
    fig.update_layout(
        coloraxis=signed_axis(value, reverse=reverse),
        title=_with_subtitle(f"Ablation {value} per node ({subtask_class} questions), per answer digit",
                             ablation_method(frame)),
        height=560,
    )
    return fig


def useful_nodes_map(nodes: pd.DataFrame, n_digits: int, n_layers: int, n_heads: int) -> go.Figure:
    """The useful nodes on a position x head/MLP grid: colour = failure rate, text = digits it breaks."""
    names = position_labels(n_digits)
    columns = [component_label(l, h) for l in range(n_layers) for h in [*range(n_heads), -1]]
    labels = _component_labels(nodes)
    rows = _named(nodes["position"], names)
    z = _grid(nodes, names, rows, columns, labels, "failure_rate")
    text = np.full(z.shape, "", dtype=object)
    for r, c, impacts in zip(rows, labels, nodes["impacts"]):
        text[names.index(r), columns.index(c)] = str(impacts)
    fig = go.Figure(go.Heatmap(z=_round(z), x=columns, y=names, text=text, texttemplate="%{text}",
                               colorscale="Reds", zmin=0, zmax=1, colorbar=dict(title="failure rate"),
                               hovertemplate="%{y} %{x}<br>failure rate %{z}<br>breaks %{text}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title_text="position")
    fig.update_layout(title=_with_subtitle("Useful nodes: failure rate when ablated, labelled with the answer digits "
                                           "they break", ablation_method(nodes)), height=560)
    return fig


POSITION_SITE_TITLES = {
    "attention+mlp output": "what it computes (every head's z and the MLP output)",
    "input": "what it is given (its embedding, layer 0 resid_pre)",
    "resid_post": "resid_post (in 1 layer only its own unembedding reads it: cannot fail)",
}


def position_ablation_heatmap(frame: pd.DataFrame, n_digits: int, *, value: str = "accuracy_delta") -> go.Figure:
    """Ablating each position's sites: effect on each answer digit, one positions x digits panel per site.

    `frame` is `position_ablation` output; a table from before it had sites
    (no `site` column) ablated resid_post and is drawn as such.
    """
    if "site" not in frame.columns:
        frame = frame.assign(site="resid_post")
    names = position_labels(n_digits)
    sites = list(dict.fromkeys(frame["site"]))
    digits = [d for d in [*answer_order(n_digits), "all"] if d in set(frame["answer_digit"])]
    x = ["whole question" if d == "all" else d for d in digits]
    fig = make_subplots(rows=1, cols=max(len(sites), 1), shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=[POSITION_SITE_TITLES.get(site, site) for site in sites])
    for i, site in enumerate(sites):
        part = frame[frame["site"] == site]
        z = _grid(part, names, _named(part["position"], names), digits, part["answer_digit"], value)
        fig.add_trace(go.Heatmap(z=_round(z), x=x, y=names, coloraxis="coloraxis",
                                 hovertemplate="ablate %{y}: %{x} " + value + " %{z}<extra>" + site + "</extra>"),
                      row=1, col=i + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_yaxes(title_text="ablated position", col=1)
    fig.update_xaxes(title_text="answer digit")
    fig.update_annotations(font_size=11)
    fig.update_layout(coloraxis=signed_axis(value, reverse=value.startswith("loss")), height=560,
                      title=_with_subtitle(f"Useful positions: {value} when a position's output or input is ablated",
                                           ablation_method(frame)))
    return fig


def attention_heatmaps(frame: pd.DataFrame, n_digits: int, *, layer: int = 0, answer_rows_only: bool = True,
                       row_key: str = "category") -> go.Figure:
    """Mean attention of every head of one layer, one row of panels per `row_key` value (category or example).

    With `answer_rows_only`, only the query positions that predict answer
    digits are drawn (where the staircase is); their labels say which digit.
    """
    task = layout_task(n_digits)
    labels = task.position_labels()
    part = frame[frame["layer"] == layer]
    groups = list(dict.fromkeys(part[row_key]))
    heads = sorted(set(int(h) for h in part["head"]))
    queries = task.answer_logit_positions if answer_rows_only else list(range(task.seq_len))
    query_labels = [labels[q] for q in queries]
    keys = list(range(max(queries) + 1))
    key_labels = [labels[k] for k in keys]
    row_titles = []
    for group in groups:
        sample = part[part[row_key] == group].iloc[0]
        if "questions" in part.columns:
            row_titles.append(f"{group} ({int(sample['questions'])} questions)")
        elif "question" in part.columns:
            row_titles.append(f"{sample['question']} ({sample['category']})")
        else:
            row_titles.append(str(group))
    titles = [f"{row_title}: L{layer}H{h}" for row_title in row_titles for h in heads]
    fig = make_subplots(rows=max(len(groups), 1), cols=max(len(heads), 1), shared_xaxes=True, shared_yaxes=True,
                        subplot_titles=titles, horizontal_spacing=SUBPLOT_GAP,
                        vertical_spacing=0.25 / max(len(groups), 1))
    for r, group in enumerate(groups):
        for c, head in enumerate(heads):
            cell = part[(part[row_key] == group) & (part["head"] == head)]
            z = _grid(cell, queries, cell["query_pos"], keys, cell["key_pos"], "weight")
            fig.add_trace(go.Heatmap(z=_round(z, 3), x=key_labels, y=query_labels, coloraxis="coloraxis",
                                     hovertemplate="query %{y}<br>key %{x}<br>weight %{z}<extra></extra>"),
                          row=r + 1, col=c + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=-90, tickfont_size=9)
    fig.update_annotations(font_size=11)
    fig.update_layout(coloraxis=dict(colorscale="Blues", cmin=0, cmax=1, colorbar=dict(title="attention")),
                      title=f"Attention of layer {layer} (query rows predict the answer digit shown)",
                      height=max(260 * len(groups), 320))
    return fig


def logit_lens_figure(frame: pd.DataFrame, n_digits: int, *, subtask_class: str = "all") -> go.Figure:
    """How well each residual stage predicts each answer digit: logit lead and accuracy per stage."""
    rows = frame[frame["subtask_class"] == subtask_class]
    task = layout_task(n_digits)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["correct digit's lead over the best wrong digit",
                                                          "accuracy when decoded at this stage"])
    for digit in answer_order(n_digits):
        part = rows[rows["answer_digit"] == digit].sort_values("stage_index")
        if part.empty:
            continue
        index = int(digit[1:]) if digit != "sign" else task.n_digits + 1
        label = task.position_label(task.answer_logit_positions[task.answer_token_names().index(digit)])
        # One explicit colour per digit: left to plotly, the right panel's traces took the next colours along.
        line = dict(color=answer_digit_colour(index, digit_count(n_digits)))
        for col, value in ((1, "logit_diff"), (2, "accuracy")):
            fig.add_trace(go.Scatter(x=part["stage"], y=_round(part[value].to_numpy()), mode="lines+markers",
                                     name=label, legendgroup=digit, showlegend=col == 1, line=line),
                          row=1, col=col)
    fig.update_xaxes(title_text="residual stream stage")
    fig.update_yaxes(title_text="logit difference", col=1)
    fig.update_yaxes(title_text="accuracy", range=[0, 1.05], col=2)
    fig.update_layout(title=f"Logit lens per answer digit ({subtask_class} questions)", height=430)
    return fig


def dla_heatmap(frame: pd.DataFrame, n_digits: int, *, value: str = "logit_diff_attr") -> go.Figure:
    """Direct logit attribution of each component to each answer digit, one panel per sub-task class."""
    classes = [c for c in SUBTASK_CLASSES if c in set(frame["subtask_class"])]
    components = list(dict.fromkeys(frame["component"]))
    digits = [d for d in answer_order(n_digits) if d in set(frame["answer_digit"])]
    fig = make_subplots(rows=1, cols=max(len(classes), 1), shared_yaxes=True, subplot_titles=classes,
                        horizontal_spacing=SUBPLOT_GAP)
    for i, cls in enumerate(classes):
        part = frame[frame["subtask_class"] == cls]
        z = _grid(part, components, part["component"], digits, part["answer_digit"], value)
        fig.add_trace(go.Heatmap(z=_round(z), x=digits, y=components, coloraxis="coloraxis",
                                 hovertemplate="%{y} → %{x}: %{z}<extra>" + cls + "</extra>"), row=1, col=i + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title_text="answer digit")
    fig.update_layout(coloraxis=signed_axis(value), height=max(360, 22 * len(components) + 160),
                      title=f"Direct logit attribution ({value}) per component, answer digit and sub-task class")
    return fig


def head_source_heatmaps(frame: pd.DataFrame, n_digits: int, *, value: str = "logit_diff_attr",
                         subtask_class: str = "all") -> go.Figure:
    """Each head's direct logit attribution split by the source position it reads, per answer digit."""
    rows = frame[frame["subtask_class"] == subtask_class]
    names = position_labels(n_digits)
    digits = [d for d in answer_order(n_digits) if d in set(rows["answer_digit"])]
    heads = _components(rows.assign(head=rows["head"].astype(int)))
    fig = make_subplots(rows=1, cols=max(len(digits), 1), shared_yaxes=True, subplot_titles=digits,
                        horizontal_spacing=SUBPLOT_GAP)
    for i, digit in enumerate(digits):
        part = rows[rows["answer_digit"] == digit]
        z = _grid(part, names, _named(part["source_pos"], names), heads, _component_labels(part), value)
        fig.add_trace(go.Heatmap(z=_round(z), x=heads, y=names, coloraxis="coloraxis",
                                 hovertemplate="reads %{y} via %{x}: %{z}<extra>" + digit + "</extra>"),
                      row=1, col=i + 1)
    fig.update_yaxes(autorange="reversed", title_text="source position", col=1)
    fig.update_layout(coloraxis=signed_axis(value), height=560,
                      title=f"Head attribution by source position ({value}, {subtask_class} questions)")
    return fig


def patching_heatmaps(frame: pd.DataFrame, n_digits: int, *, value: str = "recovery") -> go.Figure:
    """Activation patching: rows of panels per pair kind, columns per answer digit; position x head/MLP.

    `value` is recovery or net_flips (signed, colours clipped to +-1; net_flips
    shows its 95% interval on hover), flips (0..1, raw: it counts pairs that
    give the clean digit unpatched too) or another signed column.
    """
    if value == "net_flips" and "net_flips" not in frame.columns:  # a table from before flips were netted
        frame = frame.assign(net_flips=frame["flips"] - frame["baseline_flips"])
    names = position_labels(n_digits)
    kinds = list(dict.fromkeys(frame["kind"]))
    digits = [d for d in answer_order(n_digits) if d in set(frame["answer_digit"])]
    columns = _components(frame)
    present = set(zip(frame["kind"], frame["answer_digit"]))
    titles = [f"{kind} → {digit}" if (kind, digit) in present else "" for kind in kinds for digit in digits]
    fig = make_subplots(rows=max(len(kinds), 1), cols=max(len(digits), 1), subplot_titles=titles,
                        horizontal_spacing=SUBPLOT_GAP, vertical_spacing=0.3 / max(len(kinds), 1))
    signed = value != "flips"
    bounds = [f"{value}_ci_low", f"{value}_ci_high"]
    with_interval = set(bounds) <= set(frame.columns)
    hover = "%{y} %{x}: %{z}" + (" (95% CI %{customdata[0]} to %{customdata[1]})" if with_interval else "")
    for r, kind in enumerate(kinds):
        for c, digit in enumerate(digits):
            part = frame[(frame["kind"] == kind) & (frame["answer_digit"] == digit)]
            if part.empty:
                continue
            positions = sorted(set(int(p) for p in part["position"]))
            rows = [names[p] for p in positions]
            row_key, col_key = _named(part["position"], names), _component_labels(part)
            z = _grid(part, rows, row_key, columns, col_key, value)
            interval = (np.dstack([_round(_grid(part, rows, row_key, columns, col_key, b), 3) for b in bounds])
                        if with_interval else None)  # [row, column, low | high]
            fig.add_trace(go.Heatmap(z=_round(z), x=columns, y=rows, coloraxis="coloraxis", customdata=interval,
                                     hovertemplate=hover + "<extra>" + f"{kind} {digit}</extra>"),
                          row=r + 1, col=c + 1)
    fig.update_annotations(font_size=10)
    if not signed:
        axis = dict(colorscale="Blues", cmin=0, cmax=1, colorbar=dict(title=value))
    else:
        # Recovery is a share of the clean-vs-corrupted gap: tiny gaps give huge ratios, so the colours stop at
        # +-1 (full recovery either way) and the hover text keeps the real value. Net flips lie in [-1, 1].
        clipped = value in ("recovery", "net_flips")
        axis = {**signed_axis(value), "cmin": -1, "cmax": 1} if clipped else signed_axis(value)
    pairs = sorted({int(p) for p in frame["pairs"]}) if "pairs" in frame.columns else []
    what = {"net_flips": "net flips: share of pairs giving the clean digit when patched, minus unpatched"}.get(
        value, value)
    title = f"Activation patching ({what}) from clean into corrupted questions"
    fig.update_layout(coloraxis=axis, height=max(220 * len(kinds), 320),
                      title=_with_subtitle(title, f"{', '.join(map(str, pairs))} pairs per kind") if pairs else title)
    return fig


TRI_STATE_COLOURS = {"MakeCarry1": "#d62728", "MakeSum9": "#1f77b4", "neither": "#7f7f7f", "n/a": "#bcbd22",
                     "MakeBorrow": "#d62728", "MakeZero": "#1f77b4"}


def pca_scatter(points: pd.DataFrame, n_digits: int, *, colour_by: str = "tri_state_below",
                max_points: int = 400, summary: pd.DataFrame | None = None) -> go.Figure:
    """Head outputs on their top two principal components: rows of panels per answer digit, one per head.

    Points are coloured by the tri-state of the digit pair below (MakeCarry1 /
    MakeSum9 / neither); at most `max_points` per panel (the first ones, which
    are random questions), rounded to 3 decimals, keep the page small. With a
    `summary` (head_output_pca's first table) panel titles show the separation.
    """
    digits = [d for d in answer_order(n_digits) if d in set(points["answer_digit"])]
    heads = sorted({(int(l), int(h)) for l, h in zip(points["layer"], points["head"])})
    offset = 2 if colour_by.endswith("below2") else 1
    separation: dict[tuple[str, str], float] = {}
    if summary is not None and len(summary):
        for row in summary[summary["pair_offset"] == offset].itertuples(index=False):
            separation[(row.answer_digit, row.node)] = float(row.separation)
    titles = []
    for digit in digits:
        for layer, head in heads:
            node = points[(points["answer_digit"] == digit) & (points["layer"] == layer) & (points["head"] == head)]
            name = str(node["node"].iloc[0]) if len(node) else f"L{layer}H{head}"
            sep = separation.get((digit, name))
            titles.append(f"{digit} {name}" + (f" (sep {sep:.2f})" if sep is not None and np.isfinite(sep) else ""))
    fig = make_subplots(rows=max(len(digits), 1), cols=max(len(heads), 1), subplot_titles=titles,
                        horizontal_spacing=0.04, vertical_spacing=0.3 / max(len(digits), 1))
    shown_legend: set[str] = set()
    traces, rows, cols = [], [], []
    for r, digit in enumerate(digits):
        for c, (layer, head) in enumerate(heads):
            panel = points[(points["answer_digit"] == digit) & (points["layer"] == layer) & (points["head"] == head)]
            panel = panel.head(max_points)
            for state, group in panel.groupby(colour_by, sort=True):
                traces.append(go.Scatter(
                    x=np.round(group["pc1"].to_numpy(dtype="float64"), 3),
                    y=np.round(group["pc2"].to_numpy(dtype="float64"), 3),
                    mode="markers", opacity=0.7,
                    marker=dict(size=4, color=TRI_STATE_COLOURS.get(str(state), "#000000")),
                    name=str(state), legendgroup=str(state), showlegend=state not in shown_legend,
                    hovertemplate=f"{state}<extra>{digit} L{layer}H{head}</extra>"))
                rows.append(r + 1)
                cols.append(c + 1)
                shown_legend.add(str(state))
    if traces:
        fig.add_traces(traces, rows=rows, cols=cols)
    fig.update_annotations(font_size=10)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    pair = "d-2" if offset == 2 else "d-1"
    fig.update_layout(title=f"PCA of head outputs at the position predicting A_d, by the tri-state of pair {pair}",
                      height=max(250 * len(digits), 320), legend_title_text=f"pair {pair}")
    return fig
