"""Node names, useful positions and useful nodes of a model with known structure."""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd
import pytest

from analysis_fixtures import all_questions, tiny_model, trained_one_digit_model
from arithlens.analysis.ablation import node_ablation, position_ablation
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
    assert list(positions.columns) == ["site", "position", "position_name", "impacts", "failure_rate",
                                       "max_loss_delta"]
    # the published structure in miniature: the token before each answer digit computes it ...
    outputs = positions[positions.site == "attention+mlp output"]
    assert list(outputs.position) == [3, 4]
    assert list(outputs.position_name) == ["=", "A1"]
    assert list(outputs.impacts) == ["A1", "A0"]
    # ... from the operand digits, whose inputs both answer digits read (their resid_post nothing does)
    inputs = positions[positions.site == "input"].set_index("position_name")
    assert {"D0", "D'0"} <= set(inputs.index) and "+" not in inputs.index
    assert inputs.loc["D0", "impacts"] == inputs.loc["D'0", "impacts"] == "A1,A0"
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
    recorded = nodes_table(nodes, ablation=ablation)
    assert list(recorded.columns) == [*table.columns, "method", "reference"]
    assert set(recorded.reference) == {"1,000 uniformly random questions (seed 1)"}
    assert useful_positions(model, batch, ablation=position_ablation(model, batch)).equals(positions)
    with pytest.raises(ArithlensError, match="site"):
        useful_positions(model, batch, ablation=position_ablation(model, batch).drop(columns="site"))


def test_untrained_model_and_bad_threshold() -> None:
    model = tiny_model(n_digits=1)
    batch = all_questions(1)
    assert useful_nodes(model, batch, threshold=0.99) == []
    with pytest.raises(ArithlensError, match="threshold"):
        useful_positions(model, batch, threshold=1.5)
    with pytest.raises(ArithlensError, match="threshold"):
        useful_nodes(model, batch, threshold=-0.1)


ANALYSIS = Path(__file__).resolve().parents[1] / "src" / "arithlens" / "analysis"


def _analysis_imports(tree: ast.Module) -> list[tuple[str, bool]]:
    """(imported arithlens.analysis module, whether the import sits inside a function) for a parsed module."""
    found = []
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside |= {id(child) for child in ast.walk(node) if child is not node}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("arithlens.analysis"):
            names = [node.module] if node.module != "arithlens.analysis" else [
                f"arithlens.analysis.{alias.name}" for alias in node.names]
            found += [(name, id(node) in inside) for name in names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, id(node) in inside) for alias in node.names
                      if alias.name.startswith("arithlens.analysis")]
    return found


def test_analysis_imports_sit_at_the_top_and_form_no_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for path in sorted(ANALYSIS.glob("*.py")):
        module = "arithlens.analysis" + ("" if path.stem == "__init__" else f".{path.stem}")
        imports = _analysis_imports(ast.parse(path.read_text(), filename=str(path)))
        hidden = [name for name, in_function in imports if in_function]
        assert not hidden, f"{path.name} imports {hidden} inside a function (a sign of an import cycle)"
        graph[module] = {name for name, _ in imports if name != module}
    assert "arithlens.analysis.nodes" in graph and len(graph) > 5
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", "import cycle: " + " -> ".join([*trail, module])
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            visit(imported, [*trail, module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])
