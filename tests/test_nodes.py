"""Node names, useful positions and useful nodes of a model with known structure."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis_fixtures import all_questions, tiny_model, trained_one_digit_model
from arithlens.analysis.ablation import node_ablation
from arithlens.analysis.nodes import Node, _breaks, node_name, nodes_table, parse_node_name, useful_nodes, useful_positions
from arithlens.errors import ArithlensError


def test_names_round_trip() -> None:
    assert node_name(14, 0, 2) == "P14L0H2"
    assert node_name(14, 0, None) == "P14L0M"
    assert parse_node_name("P14L0H2") == (14, 0, 2)
    assert parse_node_name("P9L1M") == (9, 1, None)
    for bad in ("P14L0", "L0H2", "P14L0H", "p14l0h2", "P14L0MH2", ""):
        with pytest.raises(ArithlensError, match="node name"):
            parse_node_name(bad)


def effects(digit_rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"answer_digit": d, "subtask_class": c, "accuracy_delta": a} for d, c, a in digit_rows])


def test_breaks_reads_digits_and_classes() -> None:
    frame = effects([("A2", "all", 0.0), ("A1", "all", -0.02), ("A1", "BA", 0.0), ("A1", "UC1", -0.005),
                     ("A1", "US9", -0.5), ("A0", "all", -0.3), ("A0", "BA", -0.3), ("A0", "UC1", float("nan")),
                     ("all", "all", -0.6)])
    assert _breaks(frame, 0.01) == (("A1", "A0"), ("A1.US9", "A0.BA"), 0.3)
    assert _breaks(frame, 0.4) == (("A1",), ("A1.US9",), 0.3)  # a class can fail while its digit overall holds
    assert _breaks(effects([("A1", "all", 0.01), ("all", "all", 0.0)]), 0.01) == ((), (), 0.0)


def test_useful_positions_and_nodes_of_a_trained_adder() -> None:
    model = trained_one_digit_model()
    batch = all_questions(1)
    positions = useful_positions(model, batch)
    # the published structure in miniature: the token before each answer digit computes it, nothing else matters
    assert list(positions.position) == [3, 4]
    assert list(positions.position_name) == ["=", "A1"]
    assert list(positions.impacts) == ["A1", "A0"]
    assert (positions.failure_rate > 0.3).all()

    ablation = node_ablation(model, batch)
    nodes = useful_nodes(model, batch, ablation=ablation)
    assert nodes and all(isinstance(node, Node) for node in nodes)
    assert nodes == useful_nodes(model, batch)
    for node in nodes:
        assert parse_node_name(node.name) == (node.position, node.layer, node.head)
        assert node.impacts == ({3: ("A1",), 4: ("A0",)}[node.position])
        assert all(tag.split(".")[0] in node.impacts for tag in node.failing_subtasks)
        rows = ablation[(ablation.node == node.name) & (ablation.subtask_class == "all")
                        & (ablation.answer_digit != "all")]
        assert node.failure_rate == pytest.approx(-rows.accuracy_delta.min())
        if node.kind == "head":
            assert 1 <= len(node.attends_to) <= 3
            assert set(node.attends_to) <= {"D0", "+", "D'0", "=", "A1"}  # causal: never a later position
        else:
            assert node.attends_to == ()
    assert any(node.kind == "mlp" for node in nodes)

    table = nodes_table(nodes)
    assert list(table.columns) == ["node", "kind", "position", "layer", "head", "impacts", "failing_subtasks",
                                   "failure_rate", "attends_to"]
    assert list(table.node) == [node.name for node in nodes]
    assert nodes_table([]).empty


def test_untrained_model_and_bad_threshold() -> None:
    model = tiny_model(n_digits=1)
    batch = all_questions(1)
    assert useful_nodes(model, batch, threshold=0.99) == []
    with pytest.raises(ArithlensError, match="threshold"):
        useful_positions(model, batch, threshold=1.5)
    with pytest.raises(ArithlensError, match="threshold"):
        useful_nodes(model, batch, threshold=-0.1)
