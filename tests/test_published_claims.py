"""The published claims about the 1-layer model, checked on the bundled `add_d5_l1` with CI-sized samples.

The README's "published / arithlens / command" table gives the full-size measurements (1M questions).
"""

from __future__ import annotations

import pytest
import torch

from arithlens.analysis.ablation import position_ablation
from arithlens.analysis.accuracy import evaluate, random_accuracy
from arithlens.analysis.question_sets import make_question_set
from arithlens.runs import bundled_model_names, load_model
from arithlens.task import AdditionTask

# What the bundled model (13,299 steps, loss 0.017) measured, as floors and ceilings with a margin:
# 96.1% on 100k random questions -- the published model's >99.5% is NOT reached (see the README table);
# the built cascade sets of depth 2/3/4 were answered 69%/47%/39% of the time, carry-free questions 91%.
ACCURACY_AT_LEAST = 0.95
CASCADE_ACCURACY_BELOW = 0.80

pytestmark = pytest.mark.skipif("add_d5_l1" not in bundled_model_names(), reason="add_d5_l1 is not bundled")


@pytest.fixture(scope="module")
def model():
    return load_model("add_d5_l1")


def test_claim1_answers_most_random_questions(model) -> None:
    result = random_accuracy(model, 20_000, seed=7)
    assert result.accuracy > ACCURACY_AT_LEAST


def test_claim2_fails_most_cascades(model) -> None:
    task = AdditionTask(5)
    plain = evaluate(model, make_question_set(task, "base_add", 1000, seed=3).batch).accuracy
    for depth in (2, 3, 4):
        cascades = evaluate(model, make_question_set(task, f"cascade_depth_{depth}", 1000, seed=3).batch).accuracy
        assert cascades < CASCADE_ACCURACY_BELOW, depth
        assert cascades < plain - 0.15, depth


def test_claim4_each_answer_digit_is_computed_at_the_token_before_it(model) -> None:
    batch = AdditionTask(5).generate(2000, torch.Generator().manual_seed(5))
    effects = position_ablation(model, batch)
    per_digit = effects[effects["answer_digit"] != "all"]
    for position in range(18):
        drops = per_digit[per_digit["position"] == position].set_index("answer_digit")["accuracy_delta"]
        if 11 <= position <= 16:
            own = f"A{16 - position}"  # P16 computes A0, P15 A1, ..., P11 A5
            assert drops[own] < -0.3, (position, drops.to_dict())
            assert (drops.drop(own) > -0.02).all(), (position, drops.to_dict())
        else:  # positions 0-10 and 17 change nothing
            assert (drops.abs() < 1e-9).all(), (position, drops.to_dict())


def test_bundled_model_loads_by_name_on_every_command() -> None:
    from test_cli import arithlens

    listed = arithlens("models")
    assert listed.returncode == 0 and "add_d5_l1" in listed.stdout
    answered = arithlens("predict", "--model", "add_d5_l1", "12345+67890=")
    assert answered.returncode == 0 and answered.stdout.strip() == "12345+67890=080235"
