"""Subtraction and mixed models end to end: `arithlens run --op sub|mixed`, their analyses, reports and errors.

The analyses must speak each operation's language (BaseDiff, MakeBorrow, MakeZero, UseZero; classes
BD, UB, UZ) and a mixed model's analysis must hold one folder per operation plus a summary that says
which useful nodes serve both.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from chromium import find_chromium, load_page
from test_cli import TINY_FLAGS, arithlens, assert_user_error
from test_report import notices

from arithlens.task import AdditionTask, MixedTask, SubtractionTask
from arithlens.vocabulary import canonical, canonical_name, localise, localised_name

ADDITION_WORDS = ("BaseAdd", "MakeCarry1", "MakeSum9", "UseSum9", "UseCarry1")


def _run(tmp_path_factory: pytest.TempPathFactory, op: str) -> Path:
    out = tmp_path_factory.mktemp(f"{op}_job") / "run"
    done = arithlens("run", "--op", op, *TINY_FLAGS, "--layers", "2", "--recipe", "fast", "--steps", "200",
                     "--checkpoint-every", "100", "--eval-every", "100", "--eval-count", "300", "--count", "200",
                     "--out", str(out), timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "report" in done.stdout and "accuracy" in done.stdout
    return out


@pytest.fixture(scope="module")
def sub_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory, "sub")


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory, "mixed")


def _no_addition_words(frame: pd.DataFrame, columns: list[str]) -> None:
    for column in columns:
        text = " ".join(map(str, frame[column].tolist()))
        assert not any(word in text for word in ADDITION_WORDS), (column, text[:300])


@pytest.mark.slow
def test_sub_run_writes_subtraction_tables(sub_run: Path) -> None:
    analysis = sub_run / "analysis"
    summary = json.loads((analysis / "summary.json").read_text())
    assert summary["op"] == "sub" and summary["subtask_names"]["make_pass"] == "MakeZero"
    assert summary["model"]["op"] == "sub"
    nodes = pd.read_parquet(analysis / "node_ablation.parquet")
    assert set(nodes["subtask_class"]) <= {"all", "BD", "UB", "UZ"} and "sign" in set(nodes["answer_digit"])
    patching = pd.read_parquet(analysis / "patching.parquet")
    assert set(patching["kind"]) <= {"BaseDiff", "MakeBorrow", "MakeZero", "UseZero"} and len(patching)
    assert "A2" not in set(patching["answer_digit"])  # A_n of a subtraction is always 0: no pairs
    attention = pd.read_parquet(analysis / "attention.parquet")
    assert set(attention["category"]) <= {"all", "BaseDiff", "UseBorrow", "BorrowCascade"}
    pca = pd.read_parquet(analysis / "pca.parquet")
    assert {"n_make_borrow", "n_make_zero", "n_neither"} <= set(pca.columns)
    failures = pd.read_parquet(analysis / "failures.parquet")
    assert {"borrow_cascade_depth", "use_borrow", "make_zero"} <= set(failures.columns)
    accuracy = pd.read_parquet(analysis / "accuracy.parquet")
    assert "negative" in set(accuracy["source"]) and "sign" in set(accuracy["group"])
    for name, columns in (("algorithm_map", ["role"]), ("accuracy", ["group"]), ("attention", ["category"])):
        _no_addition_words(pd.read_parquet(analysis / f"{name}.parquet"), columns)
    assert summary["clauses"]["file"].startswith("none:")  # the published clauses describe addition


@pytest.mark.slow
def test_sub_report_draws_every_figure_in_chromium(sub_run: Path, tmp_path: Path) -> None:
    page_text = (sub_run / "report.html").read_text()
    assert notices(page_text) == ""
    assert "UseZero" in page_text and "digit subtraction" in page_text
    if find_chromium() is None:
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh installs it)")
    page = load_page(sub_run / "report.html", screenshot=tmp_path / "shot.png")
    assert page.drawn_figures == page.plotly_divs > 20
    assert page.errors == []


@pytest.mark.slow
def test_mixed_run_analyses_each_operation(mixed_run: Path) -> None:
    analysis = mixed_run / "analysis"
    summary = json.loads((analysis / "summary.json").read_text())
    assert summary["op"] == "mixed" and set(summary["operations"]) == {"add", "sub"}
    shared = summary["shared_nodes"]
    assert set(shared) == {"both", "only_add", "only_sub"}
    for key in ("add", "sub"):
        own = json.loads((analysis / key / "summary.json").read_text())
        assert own["op"] == key
        useful = set(pd.read_parquet(analysis / key / "useful_nodes.parquet")["node"])
        assert useful == set(shared["both"]) | set(shared[f"only_{key}"])
    add_nodes = pd.read_parquet(analysis / "add" / "node_ablation.parquet")
    sub_nodes = pd.read_parquet(analysis / "sub" / "node_ablation.parquet")
    assert set(add_nodes["subtask_class"]) <= {"all", "BA", "UC1", "US9"}
    assert set(sub_nodes["subtask_class"]) <= {"all", "BD", "UB", "UZ"}


@pytest.mark.slow
def test_mixed_report_compares_the_operations(mixed_run: Path, tmp_path: Path) -> None:
    page_text = (mixed_run / "report.html").read_text()
    assert notices(page_text) == ""
    assert '<section id="operations">' in page_text and "serve both operations" in page_text
    assert '<section id="algorithm-add">' in page_text and '<section id="algorithm-sub">' in page_text
    if find_chromium() is None:
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh installs it)")
    page = load_page(mixed_run / "report.html")
    assert page.drawn_figures == page.plotly_divs > 40
    assert page.errors == []


@pytest.mark.slow
def test_mixed_model_commands(mixed_run: Path) -> None:
    predicted = arithlens("predict", "--model", str(mixed_run), "12+34=", "50-75=")
    assert predicted.returncode == 0, predicted.stderr
    lines = predicted.stdout.split()
    assert lines[0].startswith("12+34=") and lines[0][6] in "+-" and len(lines[0]) == 10
    assert lines[1].startswith("50-75=")
    evaluated = arithlens("eval", "--model", str(mixed_run), "--set", "sub:negative", "--count", "200", "--json",
                          "--no-progress")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["questions"] == 200
    assert_user_error(arithlens("predict", "--model", str(mixed_run), "12+34=0046"), "sign")
    assert_user_error(arithlens("eval", "--model", str(mixed_run), "--set", "cascade_depth_1"), "add:")


@pytest.mark.slow
def test_operation_errors_on_models(sub_run: Path) -> None:
    assert_user_error(arithlens("predict", "--model", "add_d5_l1", "12345-67890="), "addition")
    assert_user_error(arithlens("predict", "--model", str(sub_run), "12+34="), "subtraction")
    assert_user_error(arithlens("hypothesis", str(sub_run), "published_1layer"), "sub model")


def test_unknown_op_is_one_error_line(tmp_path: Path) -> None:
    assert_user_error(arithlens("train", "--op", "mul", *TINY_FLAGS, "--out", str(tmp_path / "r")), "--op add")
    assert not (tmp_path / "r").exists()


def test_localise_and_canonical_round_trip() -> None:
    frame = pd.DataFrame({"role": ["BaseAdd", "MakeCarry1", "MakeSum9", "UseSum9"],
                          "subtask_class": ["BA", "UC1", "US9", "all"],
                          "category": ["BaseAdd", "UseCarry1", "UseSum9", "all"],
                          "failing_subtasks": ["A3.US9,A2.UC1", "", "A1.BA", "x"],
                          "n_make_sum9": [1, 2, 3, 4]})
    sub = localise(frame, SubtractionTask(3))
    assert sub["role"].tolist() == ["BaseDiff", "MakeBorrow", "MakeZero", "UseZero"]
    assert sub["subtask_class"].tolist() == ["BD", "UB", "UZ", "all"]
    assert sub["category"].tolist() == ["BaseDiff", "UseBorrow", "BorrowCascade", "all"]
    assert sub["failing_subtasks"].tolist() == ["A3.UZ,A2.UB", "", "A1.BD", "x"]
    assert "n_make_zero" in sub.columns
    back = canonical(sub)
    assert back.drop(columns="category").equals(frame.drop(columns="category"))
    assert back["category"].tolist() == ["BaseAdd", "UseCarry1", "UseSum9", "all"]
    assert localise(frame, AdditionTask(3)) is frame  # addition is left alone
    assert canonical_name("MakeBorrow") == "MakeCarry1" and localised_name("UseSum9", SubtractionTask(2)) == "UseZero"
    assert localised_name("UseSum9", MixedTask(2)) == "UseSum9"  # a mixed model's tables are per operation view
