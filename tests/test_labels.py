"""Position labels (`P14 (→A2)`), answer-digit names and digit colours wherever plots and tables show them."""

from __future__ import annotations

import pandas as pd
import pytest

from arithlens.metrics import subtask_column_digit
from arithlens.plots import analysis as analysis_plots
from arithlens.plots import training as training_plots
from arithlens.task import AdditionTask
from test_plots import synthetic_metrics


def test_position_labels_say_what_a_position_predicts() -> None:
    task = AdditionTask(5)
    labels = task.position_labels()
    assert len(labels) == task.seq_len
    assert labels[:6] == ["P0 (D4)", "P1 (D3)", "P2 (D2)", "P3 (D1)", "P4 (D0)", "P5 (+)"]
    assert labels[6] == "P6 (D'4)" and labels[10] == "P10 (D'0)"
    # "=" and the answer tokens A5..A1 sit at the positions whose logits predict A5..A0
    assert labels[11:17] == ["P11 (→A5)", "P12 (→A4)", "P13 (→A3)", "P14 (→A2)", "P15 (→A1)", "P16 (→A0)"]
    assert labels[17] == "P17 (A0)"  # the last token predicts nothing, so it keeps its token name
    assert [task.position_label(p) for p in range(task.seq_len)] == labels
    for digit in range(6):
        assert task.position_label(task.logit_position_for_answer_digit(digit)).endswith(f"(→A{digit})")


@pytest.mark.parametrize("position", [-1, 18])
def test_position_label_out_of_range(position: int) -> None:
    from arithlens.errors import ArithlensError

    with pytest.raises(ArithlensError, match="position"):
        AdditionTask(5).position_label(position)


def _node_rows(n_digits: int) -> pd.DataFrame:
    rows = []
    for position in range(3 * n_digits + 3):
        for head in (-1, 0):
            for digit in ("all", "A1", "A0"):
                rows.append({"node": "", "kind": "head", "position": position, "layer": 0, "head": head,
                             "answer_digit": digit, "subtask_class": "all", "questions": 10, "loss": 1.0,
                             "loss_delta": 0.1, "accuracy": 0.5, "accuracy_delta": -0.01})
    return pd.DataFrame(rows)


def test_position_axes_use_the_labels() -> None:
    labels = AdditionTask(1).position_labels()
    nodes = _node_rows(1)
    assert list(analysis_plots.node_effect_heatmaps(nodes, 1).data[0].y) == labels
    positions = nodes[nodes["head"] == 0].assign(position_name="")
    assert list(analysis_plots.position_ablation_heatmap(positions, 1).data[0].y) == labels
    attention = pd.DataFrame([{"category": "BaseAdd", "questions": 5, "layer": 0, "head": 0, "query_pos": q,
                               "key_pos": k, "weight": 0.5} for q in (3, 4) for k in range(q + 1)])
    fig = analysis_plots.attention_heatmaps(attention, 1)
    assert list(fig.data[0].y) == ["P3 (→A1)", "P4 (→A0)"]
    assert list(fig.data[0].x) == labels[:5]


def test_logit_lens_panels_share_one_colour_per_answer_digit() -> None:
    rows = [{"answer_digit": digit, "position": 0, "subtask_class": "all", "stage_index": stage, "stage": f"s{stage}",
             "questions": 4, "correct_logit": 1.0, "logit_diff": 0.5, "accuracy": 0.5, "loss": 1.0}
            for digit in ("A2", "A1", "A0") for stage in range(3)]
    fig = analysis_plots.logit_lens_figure(pd.DataFrame(rows), 2)
    colours: dict[str, set[str]] = {}
    for trace in fig.data:
        colours.setdefault(trace.legendgroup, set()).add(trace.line.color)
    assert len(colours) == 3 and all(len(c) == 1 for c in colours.values())  # left and right panel agree
    assert len({next(iter(c)) for c in colours.values()}) == 3  # and the digits differ
    assert {group: next(iter(c)) for group, c in colours.items()} == {
        f"A{d}": training_plots.answer_digit_colour(d, 2) for d in range(3)}
    # the legend names the position each curve is read at
    assert sorted(trace.name for trace in fig.data if trace.showlegend) == ["P5 (→A2)", "P6 (→A1)", "P7 (→A0)"]


def test_training_curves_name_answer_digits_with_a() -> None:
    metrics = synthetic_metrics(n_digits=2, steps=30)
    names = [fig.layout.title.text for _, fig in training_plots.training_figures(metrics)]
    groups = [group for group, _ in training_plots.training_figures(metrics)]
    assert "Loss for BaseAdd & UseCarry1 Tasks for answer digit A0 (Infinite) (Training)" in names
    assert "Sub-tasks of A1" in groups and not any("digit 0" in name or "digit 1" in name for name in names + groups)
    per_token = training_plots.per_token_loss_curves(metrics)
    per_digit = training_plots.subtask_digit_curves(metrics, "base_add")
    # A1 has one colour in every curve that shows it
    colour = {trace.name: trace.line.color for trace in per_token.data}
    assert all(trace.line.color == colour[trace.name] for trace in per_digit.data)


@pytest.mark.parametrize(("column", "digit"), [("base_add_loss_d0", "A0"), ("use_sum9_count_d3", "A3"),
                                               ("use_carry1_loss_d12", "A12"), ("base_add_only_loss", "all"),
                                               ("use_sum9_two_loss", "all")])
def test_subtask_columns_name_the_answer_digit(column: str, digit: str) -> None:
    assert subtask_column_digit(column) == digit
