"""The published claims, checked on the bundled `add_d5_l1` and `add_d5_l2` with CI-sized samples.

The README's "published / arithlens / command" table gives the full-size measurements (1M questions).
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from arithlens.analysis.ablation import position_ablation
from arithlens.analysis.accuracy import evaluate, random_accuracy
from arithlens.analysis.question_sets import make_question_set
from arithlens.runs import bundled_model_names, load_model, load_run
from arithlens.task import AdditionTask

# What the bundled add_d5_l1 (fast recipe, 4,000 steps) measured, as floors and ceilings with a margin:
# 99.56% on 1M random questions (claim 1 reproduced: > 99.5%), so a 20K sample must stay above 99.3%;
# 10,000-question cascade sets of depth 2/3/4 were answered 87.3%/70.5%/76.7% of the time, carry-free 99.9%.
ACCURACY_AT_LEAST = 0.993
CASCADE_ACCURACY_BELOW = {2: 0.92, 3: 0.78, 4: 0.84}
# add_d5_l2 (claim 3, fast recipe, 6,000 steps) made no error in 1M random questions and none in 10,000 of
# each cascade depth 1..4, so a 20K sample must come back clean and each 1000-question cascade set >= 99.9%.
L2_RANDOM_ERRORS_AT_MOST = 0


def _bundled(name: str):
    if name not in bundled_model_names():
        pytest.skip(f"{name} is not bundled")
    return load_model(name)


@pytest.fixture(scope="module")
def model():
    return _bundled("add_d5_l1")


@pytest.fixture(scope="module")
def model_l2():
    return _bundled("add_d5_l2")


def test_claim1_answers_most_random_questions(model) -> None:
    result = random_accuracy(model, 20_000, seed=7)
    assert result.accuracy > ACCURACY_AT_LEAST


def test_claim2_fails_most_cascades(model) -> None:
    task = AdditionTask(5)
    plain = evaluate(model, make_question_set(task, "base_add", 1000, seed=3).batch).accuracy
    for depth in (2, 3, 4):
        cascades = evaluate(model, make_question_set(task, f"cascade_depth_{depth}", 1000, seed=3).batch).accuracy
        assert cascades < CASCADE_ACCURACY_BELOW[depth], depth
        assert cascades < plain - 0.05, depth  # measured 13 / 29 / 23 points under carry-free at depth 2 / 3 / 4


def test_claim3_the_two_layer_model_gets_random_questions_and_cascades_right(model_l2) -> None:
    result = random_accuracy(model_l2, 20_000, seed=7)
    assert int((~result.correct).sum()) <= L2_RANDOM_ERRORS_AT_MOST
    task = AdditionTask(5)
    for depth in (1, 2, 3, 4):
        cascades = evaluate(model_l2, make_question_set(task, f"cascade_depth_{depth}", 1000, seed=3).batch).accuracy
        assert cascades >= 0.999, depth


def test_claim4_each_answer_digit_is_computed_at_the_token_before_it(model) -> None:
    """Where the computation happens, not where it is read: ablating a position's `resid_post` cannot fail
    in one layer (only that position's unembedding reads it), so the claim is measured on the attention and
    MLP outputs at each position and, separately, on each position's input."""
    batch = AdditionTask(5).generate(2000, torch.Generator().manual_seed(5))
    effects = position_ablation(model, batch)
    per_digit = effects[effects["answer_digit"] != "all"]

    def drops(site: str, position: int) -> pd.Series:
        rows = per_digit[(per_digit["site"] == site) & (per_digit["position"] == position)]
        return rows.set_index("answer_digit")["accuracy_delta"]

    for position in range(18):
        computed = drops("attention+mlp output", position)
        if 11 <= position <= 16:
            own = f"A{16 - position}"  # P16 computes A0, P15 A1, ..., P11 A5
            assert computed[own] < -0.3, (position, computed.to_dict())
            assert (computed.drop(own) > -0.02).all(), (position, computed.to_dict())
        else:  # positions 0-10 and 17 compute no answer digit
            assert (computed.abs() < 1e-9).all(), (position, computed.to_dict())
    for digit in range(5):  # the inputs: digit pair d feeds A_d, and A_{d+1} through the carry, and nothing below
        for position in (4 - digit, 10 - digit):  # D_d, D'_d
            read = drops("input", position)
            assert read[f"A{digit}"] < -0.5, (position, read.to_dict())
            assert read[f"A{digit + 1}"] < -0.1, (position, read.to_dict())
            assert all(read[f"A{lower}"] > -0.02 for lower in range(digit)), (position, read.to_dict())


def test_bundled_model_loads_by_name_on_every_command() -> None:
    from test_cli import arithlens

    listed = arithlens("models")
    assert listed.returncode == 0
    # Each operation's own questions: a plain one and a deep cascade (carry, or borrow through zeros).
    questions = {"add": ("12345+67890=", "44445+55555="), "sub": ("12345-67890=", "10000-00001="),
                 "mixed": ("12345+67890=", "10000-00001=")}
    expected = {"add": "12345+67890=080235", "sub": "12345-67890=-055545", "mixed": "12345+67890=+080235"}
    for name in bundled_model_names():
        assert name in listed.stdout
        op = load_run(name).config.model.op
        answered = arithlens("predict", "--model", name, *questions[op])
        assert answered.returncode == 0, answered.stderr
        plain, cascade = answered.stdout.split()
        assert plain == expected[op], name
        if name == "add_d5_l2":  # the depth-4 cascade the 1-layer model gets wrong (it answers 099000)
            assert cascade == "44445+55555=100000"
        if op != "add":  # the published hard subtraction: a borrow through every zero
            assert cascade == "10000-00001=+009999", name


@pytest.mark.slow
@pytest.mark.parametrize("name", ["add_d5_l1", "add_d5_l2", "sub_d5_l2", "mix_d5_l3"])
def test_report_of_a_bundled_model_is_written_where_the_user_is(name: str, tmp_path) -> None:
    from test_cli import arithlens

    if name not in bundled_model_names():
        pytest.skip(f"{name} is not bundled")
    shipped = load_run(name).path / "report.html"
    before = shipped.stat().st_mtime_ns
    done = arithlens("report", name, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / f"{name}-report.html").read_text()
    assert len(page) > 1_000_000 and page.count('<div class="figure"') > 20
    assert "This report is partial" not in page
    assert shipped.stat().st_mtime_ns == before  # the shipped report is left as it was
    nowhere = arithlens("report", name, "--out", str(tmp_path / "missing" / "r.html"))
    assert nowhere.returncode == 2 and nowhere.stderr.startswith("error: cannot write"), nowhere.stderr
