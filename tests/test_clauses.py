"""Hypothesis clauses: the TOML format and its Python twin, every validation error, the verdict rules, and causal
tests on a trained 1-digit model, from Python and from `arithlens hypothesis`."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from analysis_fixtures import tiny_model, trained_one_digit_model
from arithlens.analysis.clauses import (
    CLAUSE_COLUMNS,
    absent_verdict,
    clause_counts,
    computed_verdict,
    evaluate_clauses,
)
from arithlens.analysis.hypotheses import (
    Clause,
    ClauseError,
    Hypotheses,
    default_clauses,
    parse_hypotheses,
    published_clauses,
    read_hypotheses,
    resolve_clauses,
)
from arithlens.config import ModelConfig, RunConfig, TrainConfig
from arithlens.runs import run_config_dict, save_model, write_json
from test_cli import arithlens, assert_user_error

FIVE = ModelConfig(n_digits=5, n_layers=1, n_heads=4, d_model=32, d_mlp=64)
EXAMPLE = """
title = "three example claims"

[[clause]]
name = "A3 BaseAdd"
claim = "A3's BaseAdd is computed at P13 by a head that attends to D3 and D'3"
answer_digit = "A3"
subtask = "BaseAdd"
position = 13
attends_to = ["D3", "D'3"]

[[clause]]
name = "A3 reads MakeCarry1"
answer_digit = 3
subtask = "MakeCarry1"
pair = 2
position = "P13"

[[clause]]
answer_digit = "A0"
subtask = "UseSum9"
expect = "absent"
"""


# ----- the format ------------------------------------------------------------------------------


def test_toml_and_dataclasses_say_the_same() -> None:
    parsed = parse_hypotheses(EXAMPLE, "example.toml")
    assert parsed.title == "three example claims" and parsed.source == "example.toml"
    assert parsed.clauses == (
        Clause(name="A3 BaseAdd", claim="A3's BaseAdd is computed at P13 by a head that attends to D3 and D'3",
               answer_digit="A3", subtask="BaseAdd", position=13, attends_to=["D3", "D'3"]),
        Clause(name="A3 reads MakeCarry1", answer_digit=3, subtask="MakeCarry1", pair=2, position="P13"),
        Clause(answer_digit="A0", subtask="UseSum9", expect="absent"),
    )
    base_add, carry, absent = resolve_clauses(parsed, FIVE)
    assert (base_add.digit, base_add.pair, base_add.test, base_add.keys) == (3, 3, "patch", (1, 7))
    assert carry.sites == tuple((13, 0, head) for head in (0, 1, 2, 3, None)) and carry.pair == 2
    # A0 has no UseSum9 of its own: a carry out of pair 0 cascading through pair 1 (A2's UseSum9) must not move it
    assert (absent.label, absent.test, absent.pair, absent.pair_digit, absent.sites) == ("#3", "invariance", 0, 2, None)


def test_the_shipped_file_is_the_published_algorithm() -> None:
    shipped = read_hypotheses("published_1layer")
    assert shipped.n_digits == 5 and shipped.clauses == tuple(published_clauses(5))
    assert default_clauses(5) == shipped
    resolved = resolve_clauses(shipped, FIVE)
    assert len(resolved) == 22
    roles = {(c.digit, c.kind): c for c in resolved}
    assert roles[(3, "UseSum9")].keys == (3, 9) and roles[(3, "UseSum9")].target == 13  # D1, D'1 read at P13
    assert {key for key, c in roles.items() if c.clause.expect == "absent"} == {
        (5, "BaseAdd"), (0, "MakeCarry1"), (0, "UseSum9"), (1, "UseSum9")}
    three = resolve_clauses(default_clauses(3), ModelConfig(n_digits=3, d_model=32, d_mlp=64))
    assert len(three) == 14  # the same algorithm for 3 digits (A1's UseSum9 needs a third digit above it)


# ----- validation: every bad input names the file and the clause -------------------------------


def _error(text: str, config: ModelConfig = FIVE) -> str:
    with pytest.raises(ClauseError) as caught:
        resolve_clauses(parse_hypotheses(text, "bad.toml"), config)
    return str(caught.value)


def _clause(**fields: object) -> str:
    lines = [f"{key} = {json.dumps(value)}" for key, value in {"name": "c", **fields}.items()]
    return "[[clause]]\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize("fields, fragment", [
    ({"answer_digit": "A7", "subtask": "BaseAdd"}, "A7 does not exist: a 5-digit model's answer digits are A5 .. A0"),
    ({"answer_digit": "B3", "subtask": "BaseAdd"}, "not an answer digit"),
    ({"answer_digit": "A3", "subtask": "BaseAd"}, "unknown subtask 'BaseAd'; use one of BaseAdd, MakeCarry1, "
                                                   "MakeSum9, UseSum9 (did you mean 'BaseAdd'?)"),
    ({"answer_digit": "A3", "subtask": "UseCarry1"}, "the carry into A_d is MakeCarry1 of pair d-1"),
    ({"answer_digit": "A3", "subtask": "BaseAdd", "node": "P13L1H0"}, "layer 1 does not exist"),
    ({"answer_digit": "A3", "subtask": "BaseAdd", "node": "P13L0H4"}, "head 4 does not exist"),
    ({"answer_digit": "A3", "subtask": "BaseAdd", "node": "P13X"}, "bad node name 'P13X'"),
    ({"answer_digit": "A3", "subtask": "BaseAdd", "nodes": ["P13L0H0", "P14L0M"]},
     "node P14L0M comes after P13, the position predicting A3"),
    ({"answer_digit": "A3", "subtask": "BaseAdd", "position": 40}, "position 40 does not exist"),
    ({"answer_digit": "A3", "subtask": "BaseAdd", "position": 13, "attends_to": ["D9"]}, "'D9' is not a position"),
    ({"answer_digit": "A3", "subtask": "BaseAdd", "position": 5, "attends_to": ["D3", "D'3"]},
     "is P7, after P5: a head can only attend to earlier positions"),
    ({"answer_digit": "A3", "subtask": "BaseAdd", "attends_to": ["D3"]}, "give position = N with it"),
    ({"answer_digit": "A3", "subtask": "BaseAdd", "position": 13, "node": "P13L0H0"}, "one of position, node"),
    ({"answer_digit": "A5", "subtask": "BaseAdd"}, "A5 has no BaseAdd (it would be about pair 5); claim it absent"),
    ({"answer_digit": "A4", "subtask": "MakeCarry1", "pair": 2}, "for A4 it is UseSum9 of pair 2"),
    ({"answer_digit": "A3", "subtask": "UseSum9", "pair": 4}, "pair 4 has no UseSum9 in a 5-digit model"),
    ({"answer_digit": "A3", "subtask": "BaseAdd", "expect": "maybe"}, "expect must be"),
    ({"answer_digit": "A3", "subtask": "BaseAdd", "margin": 2.0}, "margin must lie in (0, 1)"),
    ({"answer_digit": "A3", "subtask": "BaseAdd", "positon": 13}, "unknown field 'positon' (did you mean 'position'?)"),
    ({"answer_digit": "A3", "subtask": "BaseAdd", "pair": "3"}, "pair must be a whole number, got '3'"),
    ({"subtask": "BaseAdd"}, "answer_digit is missing"),
])
def test_each_bad_field_names_the_clause(fields: dict, fragment: str) -> None:
    message = _error(_clause(**fields))
    assert message.startswith('bad.toml clause "c": ') and fragment in message, message


def test_file_level_errors() -> None:
    broken = EXAMPLE.replace('subtask = "MakeCarry1"', 'subtask = MakeCarry1')
    assert _error(broken).startswith('bad.toml clause "A3 reads MakeCarry1": invalid TOML')
    assert _error("title = 'x'\n[[clause]]\nanswer_digit = 'A1'\nsubtask 'BaseAdd'\n").startswith(
        "bad.toml clause #1: invalid TOML")
    assert "written for 5-digit models" in _error("n_digits = 5\n" + _clause(answer_digit="A1", subtask="BaseAdd"),
                                                  ModelConfig(n_digits=2, d_model=32, d_mlp=64))
    assert "unknown top-level key 'answer_digit'" in _error("answer_digit = 'A1'\n")
    assert "no clauses" in _error("title = 'empty'\n")
    twice = _clause(answer_digit="A1", subtask="BaseAdd") * 2
    assert "the name is also clause #1's" in _error(twice)
    with pytest.raises(ClauseError, match="no hypothesis file nowhere.toml"):
        read_hypotheses("nowhere.toml")


def test_clauses_from_python_are_checked_the_same_way() -> None:
    with pytest.raises(ClauseError, match=r'^<clauses> clause #2: node P30L0M: position 30 does not exist'):
        resolve_clauses([Clause(answer_digit="A0", subtask="BaseAdd"),
                         Clause(answer_digit="A0", subtask="BaseAdd", node="P30L0M")], FIVE)
    with pytest.raises(ClauseError, match=r"clause #1: min_attention must be a number or a whole number, got 'high'"):
        resolve_clauses([Clause(answer_digit="A0", subtask="BaseAdd", min_attention="high")], FIVE)
    with pytest.raises(ClauseError, match=r"attends_to must be a list of strings, got \(3, 9\)"):
        resolve_clauses([Clause(answer_digit="A0", subtask="BaseAdd", position=16, attends_to=[3, 9])], FIVE)


# ----- verdicts --------------------------------------------------------------------------------


@pytest.mark.parametrize("low, verdict", [(0.93, "strong"), (0.51, "strong"), (0.5, "weak"), (0.02, "weak"),
                                          (0.0, "fail"), (-0.3, "fail")])
def test_computed_verdict(low: float, verdict: str) -> None:
    assert computed_verdict(low) == verdict


@pytest.mark.parametrize("low, high, verdict", [(-0.02, 0.03, "strong"), (0.0, 0.1, "strong"), (0.05, 0.2, "weak"),
                                                (-0.3, 0.3, "weak"), (0.15, 0.4, "fail"), (-0.6, -0.2, "fail")])
def test_absent_verdict_is_an_equivalence_test(low: float, high: float, verdict: str) -> None:
    assert absent_verdict(low, high, margin=0.1) == verdict


def test_counts_say_x_of_y() -> None:
    frame = pd.DataFrame({"clause": list("abcd"), "verdict": ["strong", "weak", "fail", "strong"]})
    counts = clause_counts(frame)
    assert counts["text"] == "3 of 4 clauses passed (2 strong, 1 weak)" and counts["failed"] == ["c"]


# ----- causal tests on a 1-digit model that answers all 100 questions ----------------------------

# One digit: P3 ("=") predicts A1 (the carry), P4 predicts A0.
ONE_DIGIT = """
[[clause]]
name = "A0 at its position"
answer_digit = "A0"
subtask = "BaseAdd"
position = 4

[[clause]]
name = "A0 at P1"
answer_digit = "A0"
subtask = "BaseAdd"
position = 1

[[clause]]
name = "P1 holds no A0"
answer_digit = "A0"
subtask = "BaseAdd"
position = "P1"
expect = "absent"

[[clause]]
name = "A1 MLP"
answer_digit = "A1"
subtask = "MakeCarry1"
node = "P3L0M"

[[clause]]
name = "A0 no carry in"
answer_digit = "A0"
subtask = "MakeCarry1"
expect = "absent"
"""


def test_clauses_on_a_model_that_adds() -> None:
    frame = evaluate_clauses(trained_one_digit_model(), parse_hypotheses(ONE_DIGIT, "one.toml"), pairs=60)
    assert list(frame.columns) == CLAUSE_COLUMNS
    rows = frame.set_index("clause")
    # every node at the position predicting A0, patched from the clean question, gives the clean A0
    assert rows.loc["A0 at its position", "verdict"] == "strong"
    own = rows.loc["A0 at its position"]
    assert own["net_flips_ci_low"] > 0.5 and own["clean_correct"] == 1
    # a 1-layer model's outputs at P1 never reach P4: patching there does nothing
    assert rows.loc["A0 at P1", "verdict"] == "fail" and rows.loc["A0 at P1", "net_flips"] == 0
    assert rows.loc["P1 holds no A0", "verdict"] == "strong"
    # A0 does not move when pair 0's carry changes but its units digit does not
    no_carry = rows.loc["A0 no carry in"]
    assert (no_carry["test"], no_carry["nodes"], no_carry["verdict"]) == ("invariance", "whole question", "strong")
    assert no_carry["changed"] == 0 and 0 < no_carry["pairs"] <= 60
    assert set(frame["verdict"]) <= {"strong", "weak", "fail"} and frame["reason"].str.len().min() > 20


def test_an_absence_no_question_pair_can_show_is_an_error() -> None:
    # A carry out of pair 0 through a sum-9 pair 1 always changes A1 (9 becomes 0): no pair keeps A1 the same
    clause = Clause(name="A1 ignores it", answer_digit="A1", subtask="UseSum9", pair=0, expect="absent")
    with pytest.raises(ClauseError, match='^<clauses> clause "A1 ignores it": no question pair varies UseSum9 of pair '
                                          "0 without changing A1's true value"):
        evaluate_clauses(tiny_model(n_digits=2), [clause], pairs=10)


def test_a_clause_whose_heads_attend_nowhere_fails() -> None:
    clause = Clause(name="no such head", answer_digit="A0", subtask="BaseAdd", position=4, attends_to=["+"],
                    min_attention=1.0)
    (row,) = evaluate_clauses(trained_one_digit_model(), [clause], pairs=20).itertuples()
    assert row.verdict == "fail" and row.reason.startswith("no head at P4 puts 100% of its attention on +")


# ----- the command -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_digit_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clauses") / "run"
    folder.mkdir()
    model = trained_one_digit_model()
    save_model(model, folder / "model.safetensors")
    config = RunConfig(model.arithlens_config, TrainConfig(steps=1))
    write_json(folder / "config.json", run_config_dict(config, {"status": "complete", "steps_done": 1}))
    return folder


def test_hypothesis_command(one_digit_run: Path, tmp_path: Path) -> None:
    path = tmp_path / "one.toml"
    path.write_text(ONE_DIGIT)
    done = arithlens("hypothesis", str(one_digit_run), str(path), "--pairs", "40")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "A0 at its position" in text and "strong" in text
    assert done.stdout.strip().splitlines()[-1] == "4 of 5 clauses passed (4 strong, 0 weak)"
    as_json = json.loads(arithlens("hypothesis", str(one_digit_run), str(path), "--pairs", "40", "--json").stdout)
    assert as_json["counts"]["text"] == "4 of 5 clauses passed (4 strong, 0 weak)"
    assert [row["clause"] for row in as_json["clauses"]][:2] == ["A0 at its position", "A0 at P1"]


@pytest.mark.parametrize("text, fragment", [
    (ONE_DIGIT.replace('position = "P1"', 'position = "P1'), 'clause "P1 holds no A0": invalid TOML'),
    (ONE_DIGIT.replace('node = "P3L0M"', 'node = "P3L2M"'), 'clause "A1 MLP": node P3L2M: layer 2 does not exist'),
    (ONE_DIGIT.replace('subtask = "MakeCarry1"\nnode', 'subtask = "MakeCary1"\nnode'),
     "clause \"A1 MLP\": unknown subtask 'MakeCary1'"),
    (ONE_DIGIT.replace("position = 1", "position = 5"), 'clause "A0 at P1": position P5 comes after P4'),
    (ONE_DIGIT.replace('answer_digit = "A1"', 'answer_digit = "A2"'),
     'clause "A1 MLP": answer_digit A2 does not exist'),
])
def test_hypothesis_command_bad_input(one_digit_run: Path, tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    done = arithlens("hypothesis", str(one_digit_run), str(path))
    assert_user_error(done, f"error: {path} clause", fragment)


def test_reading_the_file_back_from_a_dataclass_list() -> None:
    hypotheses = Hypotheses(tuple(published_clauses(2)), "python")
    assert [c.name for c in hypotheses.clauses] == ["A2 no BaseAdd", "A2 MakeCarry1", "A2 MakeSum9", "A2 UseSum9",
                                                     "A1 BaseAdd", "A1 MakeCarry1", "A0 BaseAdd", "A0 no MakeCarry1",
                                                     "A0 no UseSum9"]


# ----- the report ------------------------------------------------------------------------------


def test_report_shows_the_clauses_and_says_when_an_older_analysis_has_none(tmp_path: Path) -> None:
    from arithlens.report import build_report
    from arithlens.runs import load_run
    from test_report import make_run, notices

    run = make_run(tmp_path / "run")
    (run / "analysis").mkdir()
    pd.DataFrame(columns=["answer_digit", "start_step", "end_step"]).to_parquet(run / "analysis" / "phases.parquet")
    page = build_report(run).read_text()  # an analysis from before hypothesis tests: no clauses.parquet
    assert ("Does the map explain the model?: Hypothesis tests: the published algorithm, clause by clause is left out "
            "(no analysis table <code>clauses</code>") in notices(page)
    frame = evaluate_clauses(load_run(run).model(), default_clauses(3), pairs=8)
    frame.loc[0, "clause"] = "<b>not markup</b>"
    frame.to_parquet(run / "analysis" / "clauses.parquet")
    page = build_report(run).read_text()
    assert "<h3>Hypothesis tests: the published algorithm, clause by clause</h3>" in page
    assert "<code>clauses</code>" not in notices(page)
    assert clause_counts(frame)["text"] in page and "&lt;b&gt;not markup&lt;/b&gt;" in page
    assert page.count("<span class='verdict-") == len(frame)
