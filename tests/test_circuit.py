"""Circuit scores: the fast path equals brute-force hooks, the normalisation holds, bad nodes are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from analysis_fixtures import random_questions, tiny_model, trained_one_digit_model
from arithlens.analysis.circuit import (
    ALL,
    CIRCUIT_COLUMNS,
    CURVE_COLUMNS,
    MINIMALITY_COLUMNS,
    _curve_counts,
    check_circuit_nodes,
    circuit_nodes,
    circuit_summary,
    completeness,
    faithfulness,
    map_circuit,
    map_node_sets,
    minimality,
    score_circuit,
)
from arithlens.errors import ArithlensError
from arithlens.plots.circuit import circuit_diagram, faithfulness_curve

TEXT = ["answer_digit", "nodes", "node_added", "node", "redundant_nodes", "redundant", "reference"]


def assert_same(fast: pd.DataFrame, brute: pd.DataFrame) -> None:
    labels = [c for c in fast.columns if c in TEXT]
    pd.testing.assert_frame_equal(fast[labels], brute[labels])
    numbers = [c for c in fast.columns if c not in TEXT]
    # float64 models: both paths agree to rounding
    pd.testing.assert_frame_equal(fast[numbers], brute[numbers], rtol=0, atol=1e-8)


def made_up_map(model, seed: int) -> pd.DataFrame:
    """A map naming a few random nodes that reach each answer digit (the scores do not care where nodes come from)."""
    generator = np.random.default_rng(seed)
    names = circuit_nodes(model)
    config = model.arithlens_config
    first = 2 * config.n_digits + 1
    rows = []
    for digit in range(config.n_digits, -1, -1):
        position = first + config.n_digits - digit
        reaching = [name for name in names if int(name[1:name.index("L")]) <= position
                    and (int(name[name.index("L") + 1]) < config.n_layers - 1 or name.startswith(f"P{position}L"))]
        for node in generator.choice(reaching, size=3, replace=False):
            rows.append({"answer_digit": f"A{digit}", "role": "BaseAdd", "node": str(node)})
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("n_digits", "n_layers", "normalization"),
                         [(2, 1, None), (2, 1, "LN"), (1, 2, None), (1, 2, "LN")])
def test_fast_equals_brute_force(n_digits: int, n_layers: int, normalization: str | None) -> None:
    model = tiny_model(n_digits=n_digits, n_layers=n_layers, normalization=normalization, dtype=torch.float64)
    batch = random_questions(n_digits, 40, seed=1)
    the_map = made_up_map(model, seed=n_layers)
    fast = map_circuit(model, batch, the_map, chunk_size=16)  # several chunks
    brute = map_circuit(model, batch, the_map, fast=False)
    for name in ("circuit", "circuit_curve", "circuit_minimality"):
        assert_same(fast[name], brute[name])
    assert (fast["circuit"]["faithfulness"].between(0.01, 0.99)).any()  # not a comparison of 0s and 1s
    user = the_map["node"].iloc[:4].tolist()
    assert_same(score_circuit(model, batch, user, curve=True),
                score_circuit(model, batch, user, curve=True, fast=False))


def test_normalisation_holds_at_both_ends() -> None:
    model = tiny_model(n_digits=2, n_layers=2, normalization="LN")
    batch = random_questions(2, 60, seed=2)
    every = circuit_nodes(model)
    assert len(every) == 9 * 2 * 5  # positions x layers x (4 heads + MLP)
    full = faithfulness(model, batch, every)
    assert np.allclose(full["faithfulness"], 1.0) and np.allclose(full["completeness"], 0.0)
    assert (full["accuracy_kept"] == full["accuracy_full"]).all()
    empty = faithfulness(model, batch, [])
    assert np.allclose(empty["faithfulness"], 0.0) and np.allclose(empty["completeness"], 1.0)
    assert list(full["answer_digit"]) == ["A2", "A1", "A0", ALL]
    assert np.allclose(completeness(model, batch, every)["completeness"], 0.0)


def test_curve_runs_from_empty_to_full_and_its_areas() -> None:
    model = trained_one_digit_model()
    batch = random_questions(1, 100, seed=3)
    the_map = pd.DataFrame({"answer_digit": ["A1", "A0", "A0"], "node": ["P3L0H0", "P4L0H1", "P4L0M"]})
    tables = map_circuit(model, batch, the_map)
    circuit, curve = tables["circuit"], tables["circuit_curve"]
    assert list(circuit.columns) == CIRCUIT_COLUMNS and list(curve.columns) == CURVE_COLUMNS
    assert list(tables["circuit_minimality"].columns) == MINIMALITY_COLUMNS
    for digit, part in curve.groupby("answer_digit"):
        assert part["faithfulness"].iloc[0] == pytest.approx(0.0, abs=1e-9)
        assert part["faithfulness"].iloc[-1] == pytest.approx(1.0, abs=1e-6)
        row = circuit.set_index("answer_digit").loc[digit]
        assert row["curve_nodes"] == part["nodes_kept"].iloc[-1] == (5 if digit != ALL else 10)
        shares, values = part["share_kept"].to_numpy(), part["faithfulness"].to_numpy()
        assert row["cpr"] == pytest.approx(float(np.sum(np.diff(shares) * (values[1:] + values[:-1]) / 2)))
        gaps = np.abs(1 - values)
        assert row["cmd"] == pytest.approx(float(np.sum(np.diff(shares) * (gaps[1:] + gaps[:-1]) / 2)))
    # in one layer, a digit's curve holds only the nodes at the position that predicts it
    assert set(curve.loc[curve.answer_digit == "A0", "node_added"]) - {""} == {
        "P4L0H0", "P4L0H1", "P4L0H2", "P4L0H3", "P4L0M"}
    summary = circuit_summary(circuit)
    assert summary["questions"] == 100 and summary["reference"].startswith("1,000 uniformly random")
    assert set(summary["answer_digits"]) == {"A1", "A0", ALL} and summary["answer_digits"]["A0"]["nodes"] == 2


def test_one_layer_digit_scores_ignore_other_positions() -> None:
    model = tiny_model(n_digits=2, dtype=torch.float64)
    batch = random_questions(2, 50, seed=4)
    # 2 digits: P5 predicts A2, P6 A1 and P7 A0
    alone = score_circuit(model, batch, ["P7L0H1", "P7L0M"]).set_index("answer_digit")
    more = score_circuit(model, batch, "P7L0H1,P7L0M,P5L0H2,P6L0M").set_index("answer_digit")
    assert more.loc["A0", "faithfulness"] == pytest.approx(alone.loc["A0", "faithfulness"], abs=1e-12)
    assert alone.loc["A2", "faithfulness"] == pytest.approx(0.0, abs=1e-12)  # nothing kept at P5
    assert 0 < abs(alone.loc["A0", "faithfulness"])
    # redundancy is judged only on the digits a node reaches
    frame = minimality(model, batch, ["P7L0H1", "P5L0H2"])
    assert set(zip(frame.answer_digit, frame.node)) == {("A0", "P7L0H1"), ("A2", "P5L0H2"), (ALL, "P7L0H1"),
                                                        (ALL, "P5L0H2")}


def test_curve_counts_are_dense_then_spaced() -> None:
    assert _curve_counts(5) == [0, 1, 2, 3, 4, 5]
    assert _curve_counts(32) == list(range(33))
    counts = _curve_counts(115)
    assert counts[:5] == list(range(5)) and counts[-1] == 115 and len(counts) == 13


def test_map_node_sets_and_bad_nodes() -> None:
    model = tiny_model(n_digits=2)
    the_map = pd.DataFrame({"answer_digit": ["A2", "A0", "A0"], "node": ["P6L0H1", "P8L0M", "P8L0H0"]})
    assert map_node_sets(the_map, 2) == {"A2": ["P6L0H1"], "A1": [], "A0": ["P8L0H0", "P8L0M"],
                                         ALL: ["P6L0H1", "P8L0H0", "P8L0M"]}
    assert check_circuit_nodes(model, ["P8L0M", " P6L0H1 "]) == ["P6L0H1", "P8L0M"]
    batch = random_questions(2, 10)
    for nodes, message in ((["P8L0X"], "bad node name"), (["P9L0H0"], "not in this model: it has positions 0..8"),
                           (["P8L1H0"], "layers 0..0"), (["P8L0H4"], "heads 0..3")):
        with pytest.raises(ArithlensError, match=message):
            score_circuit(model, batch, nodes)
    with pytest.raises(ArithlensError, match="threshold"):
        minimality(model, batch, ["P8L0M"], threshold=2)
    with pytest.raises(ArithlensError, match="algorithm_map"):
        map_circuit(model, batch, pd.DataFrame({"node": ["P8L0M"]}))


# ----- the command line, the figures and the report ---------------------------------------------
def test_cli_scores_a_node_set_and_refuses_bad_nodes() -> None:
    from test_cli import arithlens, assert_user_error

    done = arithlens("circuit", "add_d5_l1", "P14L0H2", "P14L0M,P14L0H3", "--count", "40", "--json")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["nodes"] == ["P14L0H2", "P14L0H3", "P14L0M"] and payload["questions"] == 40
    assert [row["answer_digit"] for row in payload["scores"]] == ["A5", "A4", "A3", "A2", "A1", "A0", "all"]
    a2 = payload["scores"][3]  # P14 predicts A2: its nodes carry it, the other digits lose everything
    assert a2["faithfulness"] > 0 and payload["scores"][0]["faithfulness"] == pytest.approx(0.0, abs=1e-9)
    table = arithlens("circuit", "add_d5_l1", "P16L0H2", "--count", "20")
    assert table.returncode == 0 and "completeness" in table.stdout and "A0" in table.stdout
    # one error line and exit 2 (every kind of bad node is checked in-process in test_map_node_sets_and_bad_nodes)
    assert_user_error(arithlens("circuit", "add_d5_l1", "P14L0M", "P18L0H0"), "not in this model", "positions 0..17")


@pytest.fixture(scope="module")
def bundled_tables(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, pd.DataFrame]]:
    """The bundled add_d5_l1 analysis with circuit tables from 60 questions (a 1-layer model: seconds)."""
    from arithlens.analysis.question_sets import make_question_set
    from arithlens.runs import load_run
    from arithlens.task import AdditionTask

    run = load_run("add_d5_l1")
    folder = tmp_path_factory.mktemp("analysis") / "analysis"
    shutil.copytree(run.path / "analysis", folder)
    batch = make_question_set(AdditionTask(5), "random", 60, 0).batch
    tables = map_circuit(run.model(), batch, pd.read_parquet(folder / "algorithm_map.parquet"))
    for name, frame in tables.items():
        frame.to_parquet(folder / f"{name}.parquet", index=False)
    return folder, tables


def test_figures_draw_the_curve_and_the_map(bundled_tables) -> None:
    folder, tables = bundled_tables
    curve = faithfulness_curve(tables["circuit_curve"], 5, tables["circuit"])
    assert isinstance(curve, go.Figure)
    names = [trace.name for trace in curve.data if trace.name]
    assert names[0].startswith("A5 (CPR ") and names[-1].startswith("whole answer (CPR ")
    the_map = pd.read_parquet(folder / "algorithm_map.parquet")
    attention = pd.read_parquet(folder / "attention.parquet")
    diagram = circuit_diagram(the_map, tables["circuit_minimality"], 5, 1, 4, attention)
    nodes = next(trace for trace in diagram.data if trace.name == "map node")
    assert len(nodes.x) == the_map["node"].nunique()
    assert any(str(text).startswith("H2 BA") for text in nodes.text)  # labelled with its role
    assert {trace.name for trace in diagram.data} >= {"attends to (width: attention weight)",
                                                      "serves (width: drop in f without it)"}


@pytest.mark.slow  # builds two reports and renders one in headless Chromium
def test_report_section_renders_and_an_old_folder_says_what_is_missing(bundled_tables, tmp_path: Path) -> None:
    from chromium import find_chromium, load_page
    from arithlens.report import build_report
    from test_report import declared_figures, notices

    folder, _ = bundled_tables
    page = build_report("add_d5_l1", tmp_path / "new.html", analysis=folder).read_text()
    assert '<section id="circuit">' in page and "<h3>Circuit diagram</h3>" in page
    assert "circuit" not in notices(page)
    if find_chromium() is not None:
        result = load_page(tmp_path / "new.html", budget_ms=90000)
        assert result.errors == [] and result.drawn_figures == declared_figures(page)
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    for name in ("circuit", "circuit_curve", "circuit_minimality"):
        (old / f"{name}.parquet").unlink()
    told = notices(build_report("add_d5_l1", tmp_path / "old.html", analysis=old).read_text())
    assert "Does the map explain the model?: Faithfulness and completeness per answer digit is left out " \
           "(no analysis table <code>circuit</code>" in told
