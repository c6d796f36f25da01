"""Figures for "Does the map explain the model?": the faithfulness curve and the circuit diagram.

Both take the tables `arithlens.analysis.circuit.map_circuit` writes
(circuit, circuit_curve, circuit_minimality), the algorithm map and,
for the diagram, the mean attention table, and return a `go.Figure`. Each
answer digit keeps its colour from `answer_digit_colour`.
"""

from __future__ import annotations

import math
from collections import defaultdict

import pandas as pd
import plotly.graph_objects as go

from arithlens.plots.training import answer_digit_colour
from arithlens.plots.analysis import digit_count, layout_task

ROLE_SHORT = {"BaseAdd": "BA", "MakeCarry1": "MC1", "MakeSum9": "MS9", "UseSum9": "US9",
              "BaseDiff": "MD", "MakeBorrow": "MB", "MakeZero": "MZ", "UseZero": "UZ"}  # subtraction: the papers'
ROLE_KEYS = {"add": "BA BaseAdd, MC1 MakeCarry1, MS9 MakeSum9, US9 UseSum9",
             "sub": "MD BaseDiff, MB MakeBorrow, MZ MakeZero, UZ UseZero"}
MIN_ATTENTION = 0.1  # attention edges below this weight are left out, as the map's attends_to does
NODE_SPREAD = 0.14  # the y offset between the heads (and the MLP) of one position and layer


def _digit_colour(label: str, n_digits: int) -> str:
    if label == "all":
        return "#24292f"
    return answer_digit_colour(n_digits + 1 if label == "sign" else int(label[1:]), n_digits)


def faithfulness_curve(curve: pd.DataFrame, n_digits: int, circuit: pd.DataFrame | None = None) -> go.Figure:
    """f against the share of nodes kept (added in order of single-node ablation effect), one line per digit.

    `curve` is the circuit_curve table; with `circuit` the legend gives each
    line's CPR and CMD and a star marks the map's own f at its node count.
    """
    fig = go.Figure()
    scores = circuit.set_index("answer_digit") if circuit is not None and len(circuit) else None
    digits = [*layout_task(n_digits).answer_token_names(), "all"]
    n_digits = digit_count(n_digits)
    for label in [d for d in digits if d in set(curve["answer_digit"])]:
        part = curve[curve["answer_digit"] == label]
        name = "whole answer" if label == "all" else label
        if scores is not None and label in scores.index and "cpr" in scores.columns:
            name += f" (CPR {scores.loc[label, 'cpr']:.2f}, CMD {scores.loc[label, 'cmd']:.2f})"
        colour = _digit_colour(label, n_digits)
        fig.add_trace(go.Scatter(
            x=part["share_kept"], y=part["faithfulness"], mode="lines+markers", name=name,
            line=dict(color=colour, width=3 if label == "all" else 2), marker=dict(size=4),
            customdata=part[["nodes_kept", "node_added", "map_nodes_kept", "accuracy"]].to_numpy(),
            hovertemplate=("%{customdata[0]} nodes kept (%{x:.0%}): f %{y:.3f}, accuracy %{customdata[3]:.1%}"
                           "<br>added %{customdata[1]}<br>%{customdata[2]} of them in the map<extra>" + label
                           + "</extra>")))
        if scores is not None and label in scores.index:
            row = scores.loc[label]
            total = float(row["curve_nodes"]) if "curve_nodes" in scores.columns else math.nan
            if total and math.isfinite(total):
                fig.add_trace(go.Scatter(
                    x=[row["node_count"] / total], y=[row["faithfulness"]], mode="markers", showlegend=False,
                    marker=dict(symbol="star", size=13, color=colour, line=dict(color="white", width=1)),
                    hovertemplate=f"the map for {label}: {int(row['node_count'])} nodes, f %{{y:.3f}}<extra></extra>"))
    fig.add_hline(y=1.0, line=dict(color="#8c959f", dash="dot"))
    fig.update_xaxes(title_text="share of the nodes that can reach the digit, kept (most important first)",
                     tickformat=".0%", range=[0, 1])
    fig.update_yaxes(title_text="faithfulness f")
    fig.update_layout(title="Faithfulness as nodes are added by importance (stars: the algorithm map)<br><sup>"
                            "f = (m(kept) - m(none)) / (m(all) - m(none)), m the correct digit's logit minus the "
                            "largest other digit's; the rest mean-ablated</sup>", height=520)
    return fig


def _node_xy(where: tuple[int, int, int], layer_y: dict[int, float], n_heads: int) -> tuple[float, float]:
    """Where a node (position, layer, head; -1 for the MLP) is drawn: its heads stacked top down, the MLP last."""
    position, layer, head = where
    slot = n_heads if head < 0 else head
    # a slight slant, so the edges from one position's nodes to its digit do not lie on top of each other
    return position + (slot - n_heads / 2) * NODE_SPREAD / 2, layer_y[layer] + (n_heads / 2 - slot) * NODE_SPREAD


def _edge_traces(edges: list[tuple[float, float, float, float, float, str]], colour: str,
                 name: str) -> list[go.Scatter]:
    """Edges (x0, y0, x1, y1, weight in [0, 1], hover) as a few line traces, one per width."""
    groups: dict[float, list] = defaultdict(list)
    for edge in edges:
        groups[round(0.5 + 6 * max(0.0, min(edge[4], 1.0)), 1)].append(edge)
    traces = []
    for width, members in sorted(groups.items()):
        xs, ys, text = [], [], []
        for x0, y0, x1, y1, _, hover in members:
            xs += [x0, (x0 + x1) / 2, x1, None]
            ys += [y0, (y0 + y1) / 2, y1, None]
            text += [hover, hover, hover, None]
        traces.append(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=colour, width=width), opacity=0.55,
                                 text=text, hoverinfo="text", name=name, legendgroup=name,
                                 showlegend=not traces))
    return traces


def _path_edges(edges: pd.DataFrame | None, places: dict[str, tuple[int, int, int]], layer_y: dict[int, float],
                n_heads: int) -> list[tuple[float, float, float, float, float, str]]:
    """The path-patched edges whose sender and receiver are both map nodes, strongest per pair of nodes."""
    if edges is None or not len(edges):
        return []
    inside = edges[edges["sender"].isin(places) & edges["receiver"].isin(places)]
    if not len(inside):
        return []
    strongest = inside.loc[inside.groupby(["sender", "receiver"])["effect_abs"].idxmax()]
    largest = float(strongest["effect_abs"].max()) or 1.0
    lines = []
    for row in strongest.itertuples(index=False):
        x0, y0 = _node_xy(places[row.sender], layer_y, n_heads)
        x1, y1 = _node_xy(places[row.receiver], layer_y, n_heads)
        lines.append((x0, y0, x1, y1, float(row.effect_abs) / largest,
                      f"{row.sender} → {row.receiver}: path patching moves {row.answer_digit}'s margin by "
                      f"{row.effect:.3f}"))
    return lines


def circuit_diagram(algorithm_map: pd.DataFrame, minimality: pd.DataFrame, n_digits: int, n_layers: int,
                    n_heads: int, attention: pd.DataFrame | None = None,
                    edges: pd.DataFrame | None = None) -> go.Figure:
    """The map as a circuit: nodes by position (x) and layer (y), labelled with their roles.

    `algorithm_map` is the algorithm_map table (its node, position, layer and
    head columns place each node), `minimality` the circuit_minimality table.

    Edge widths: from a position a head attends to (the input row for layer 0,
    the layer below for later layers) into the head, its mean attention weight
    over all questions (`attention`, weights of at least 0.1); from a node to
    each answer digit it serves, the node's drop in `minimality` (the fall in
    that digit's faithfulness when the node alone is removed from the digit's
    map), clipped to [0, 1]; between map nodes of different layers (`edges`, the edges table of
    path patching), |effect| as a share of the largest, in purple.
    """
    task = layout_task(n_digits)
    n_digits = task.n_digits
    labels = task.position_labels()
    layer_y = {layer: layer + 1.0 for layer in range(n_layers)}
    answer_y = n_layers + 1.0
    fig = go.Figure()
    questions = list(range(2 * n_digits + 1))
    fig.add_trace(go.Scatter(x=questions, y=[0.0] * len(questions), mode="markers+text", name="question token",
                             text=[task.position_names()[p] for p in questions], textposition="bottom center",
                             marker=dict(size=9, color="#8c959f"), hoverinfo="text",
                             hovertext=[labels[p] for p in questions]))
    digit_x = {f"A{d}": float(task.logit_position_for_answer_digit(d)) for d in range(n_digits, -1, -1)}
    fig.add_trace(go.Scatter(x=list(digit_x.values()), y=[answer_y] * len(digit_x), mode="markers+text",
                             name="answer digit", text=list(digit_x), textposition="top center",
                             marker=dict(size=16, symbol="square", color=[_digit_colour(d, n_digits) for d in digit_x]),
                             hoverinfo="text",
                             hovertext=[f"{d}, predicted at {labels[int(x)]}" for d, x in digit_x.items()]))
    roles: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    places: dict[str, tuple[int, int, int]] = {}
    for row in algorithm_map.itertuples(index=False):
        roles[row.node][row.answer_digit].append(row.role)
        places[row.node] = (int(row.position), int(row.layer), int(row.head))
    drops = {(row.answer_digit, row.node): float(row.drop) for row in minimality.itertuples(index=False)}
    nodes = sorted(roles, key=lambda name: places[name])
    mean_attention = None
    if attention is not None and len(attention):
        mean_attention = attention[(attention["category"] == "all") & (attention["weight"] >= MIN_ATTENTION)]
    attend_edges, serve_edges = [], []
    for node in nodes:
        x, y = _node_xy(places[node], layer_y, n_heads)
        position, layer, head = places[node]
        if head >= 0 and mean_attention is not None:
            rows = mean_attention[(mean_attention["layer"] == layer) & (mean_attention["head"] == head)
                                  & (mean_attention["query_pos"] == position)]
            for key in rows.itertuples(index=False):
                attend_edges.append((float(key.key_pos), y - 1.0, x, y, float(key.weight),
                                     f"{node} attends to {labels[int(key.key_pos)]}: {key.weight:.2f}"))
        for digit in roles[node]:
            drop = drops.get((digit, node), math.nan)
            serve_edges.append((x, y, digit_x[digit], answer_y, 0.0 if math.isnan(drop) else drop,
                                f"{node} serves {digit} ({', '.join(roles[node][digit])}): removing it from "
                                f"{digit}'s map drops f by {drop:.3f}"))
    for trace in _edge_traces(attend_edges, "#0969da", "attends to (width: attention weight)"):
        fig.add_trace(trace)
    for trace in _edge_traces(_path_edges(edges, places, layer_y, n_heads), "#8250df",
                              "path-patched edge (width: |effect| / largest)"):
        fig.add_trace(trace)
    for trace in _edge_traces(serve_edges, "#cf222e", "serves (width: drop in f without it)"):
        fig.add_trace(trace)
    xs, ys, text, hover, colours, sides = [], [], [], [], [], []
    for node in nodes:
        x, y = _node_xy(places[node], layer_y, n_heads)
        head = places[node][2]
        names = task.answer_token_names()
        row = places[node][0] - (2 * n_digits + 1)
        own = names[row] if 0 <= row < len(names) else ""  # the answer token its own position predicts
        served = " ".join((f"{d}:" if (d, ) != (own, ) or len(roles[node]) > 1 else "")
                          + ",".join(ROLE_SHORT.get(r, r) for r in rs) for d, rs in roles[node].items())
        xs.append(x)
        ys.append(y)
        text.append(f"{'M' if head < 0 else f'H{head}'} {served}")
        hover.append(f"{node}<br>" + "<br>".join(f"{d}: {', '.join(rs)}" for d, rs in roles[node].items()))
        colours.append(_digit_colour(next(iter(roles[node])), n_digits))
        sides.append("middle left" if head % 2 else "middle right")  # odd heads left: neighbours' labels apart
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers+text", name="map node", text=text, textposition=sides,
                             textfont=dict(size=8), hovertext=hover, hoverinfo="text",
                             marker=dict(size=10, color=colours, line=dict(color="white", width=1))))
    fig.update_xaxes(tickvals=list(range(task.seq_len - 1)), ticktext=labels[: task.seq_len - 1], tickangle=-45,
                     title_text="position")
    fig.update_yaxes(tickvals=[0.0, *layer_y.values(), answer_y],
                     ticktext=["input", *(f"layer {layer}" for layer in layer_y), "answer"],
                     range=[-0.7, answer_y + 0.7])
    key = ROLE_KEYS["sub" if task.operations[0].key == "sub" else "add"]
    fig.update_layout(title="Circuit diagram of the algorithm map<br><sup>heads (H) and MLPs (M) with their roles ("
                            f"{key}; 'A4:' for a digit other than the one "
                            "their position predicts)<br>edge widths: attention weight (blue); the fall in the digit's "
                            "f when the node alone is removed from its map (red)</sup>",
                      height=300 + 190 * (n_layers + 1), legend=dict(orientation="h", y=-0.25))
    return fig
