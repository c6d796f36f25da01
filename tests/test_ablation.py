"""Ablation: the fast engine equals brute force, unread nodes change nothing, bad input is refused."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from analysis_fixtures import all_questions, random_questions, tiny_model, trained_one_digit_model
from arithlens.analysis.ablation import ablate, node_ablation, position_ablation
from arithlens.analysis.question_sets import make_question_set
from arithlens.analysis.reference import NarrowReferenceWarning, is_uniformly_random
from arithlens.errors import ArithlensError
from arithlens.plots.analysis import position_ablation_heatmap
from arithlens.task import AdditionTask

NUMBERS = ["loss", "loss_delta", "accuracy", "accuracy_delta"]
EFFECTS = ["answer_digit", "subtask_class", "questions", *NUMBERS]
RECORD = ["method", "reference"]
POSITION_COLUMNS = ["site", "position", "position_name", *[c for c in EFFECTS if c != "subtask_class"], *RECORD]


def assert_same(fast: pd.DataFrame, brute: pd.DataFrame) -> None:
    labels = [c for c in fast.columns if c not in NUMBERS]
    pd.testing.assert_frame_equal(fast[labels], brute[labels])
    # float64 models: both engines agree to rounding, so not one prediction may flip
    pd.testing.assert_frame_equal(fast[NUMBERS], brute[NUMBERS], rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("n_digits", "n_layers", "normalization", "method"),
    [(2, 1, None, "mean"), (2, 1, "LN", "mean"), (2, 1, None, "zero"), (2, 1, "LN", "resample"),
     (1, 2, None, "mean"), (1, 2, "LN", "resample"), (1, 3, "LN", "zero")],
)
def test_fast_equals_brute_force(n_digits: int, n_layers: int, normalization: str | None, method: str) -> None:
    model = tiny_model(n_digits=n_digits, n_layers=n_layers, normalization=normalization, dtype=torch.float64)
    batch = random_questions(n_digits, 48, seed=1)
    fast = node_ablation(model, batch, method=method, seed=3)
    assert_same(fast, node_ablation(model, batch, method=method, seed=3, fast=False))
    assert (fast["loss_delta"].abs() > 1e-6).any()  # the comparison is not between two no-ops
    sites = ("attention+mlp output", "input", "resid_post")
    positions = position_ablation(model, batch, method=method, seed=3, sites=sites)
    assert_same(positions, position_ablation(model, batch, method=method, seed=3, sites=sites, fast=False))
    for site in sites:  # every site changes something, so each one's comparison means something
        assert (positions.loc[positions.site == site, "loss_delta"].abs() > 1e-6).any(), site


def test_chunked_fast_path_equals_one_chunk() -> None:
    model = tiny_model(n_digits=1, n_layers=2, dtype=torch.float64)
    batch = random_questions(1, 30, seed=2)
    for method in ("mean", "resample"):
        assert_same(node_ablation(model, batch, method=method, chunk_size=8),
                    node_ablation(model, batch, method=method))


def test_frames_have_the_contract_columns() -> None:
    model = tiny_model(n_digits=2)
    batch = random_questions(2, 30)
    nodes = node_ablation(model, batch)
    assert list(nodes.columns) == ["node", "kind", "position", "layer", "head", *EFFECTS, *RECORD]
    assert nodes["node"].nunique() == 9 * 5  # 9 positions x (4 heads + 1 MLP)
    assert {"P5L0H2", "P5L0M", "P8L0H0"} <= set(nodes["node"])
    mlp = nodes[nodes.node == "P5L0M"]
    assert set(mlp["kind"]) == {"mlp"} and set(mlp["head"]) == {-1}
    rows = nodes[nodes.node == "P5L0H2"]
    assert list(rows.answer_digit) == ["A2", "A1", "A1", "A1", "A1", "A0", "A0", "A0", "A0", "all"]
    assert list(rows.subtask_class) == ["all", "all", "BA", "UC1", "US9", "all", "BA", "UC1", "US9", "all"]
    a1 = rows[rows.answer_digit == "A1"].set_index("subtask_class").questions
    assert a1["all"] == 30 == a1["BA"] + a1["UC1"] + a1["US9"]
    assert a1["UC1"] == int((batch.use_carry1[:, 1] & ~batch.make_sum9[:, 1]).sum())
    positions = position_ablation(model, batch)
    assert list(positions.columns) == POSITION_COLUMNS
    for site in ("attention+mlp output", "input"):
        rows = positions[(positions.answer_digit == "A0") & (positions.site == site)]
        assert list(rows.position_name) == ["D1", "D0", "+", "D'1", "D'0", "=", "A2", "A1", "A0"]


@pytest.mark.parametrize("fast", [True, False])
def test_unread_nodes_change_nothing(fast: bool) -> None:
    model = tiny_model(n_digits=2, dtype=torch.float64)
    batch = random_questions(2, 40, seed=4)
    frame = node_ablation(model, batch, method="zero", fast=fast)
    # 1 layer: only positions 5, 6, 7 (predicting A2, A1, A0) reach an answer logit
    frame = frame[frame.questions > 0]  # classes with no questions have NaN effects
    unread = frame[~frame.position.isin([5, 6, 7])]
    assert len(unread) > 0 and (unread.loss_delta.abs().max() < 1e-12) and (unread.accuracy_delta == 0).all()
    # and each answer position changes only its own digit
    for position, digit in ((5, "A2"), (6, "A1"), (7, "A0")):
        rows = frame[(frame.position == position) & (frame.answer_digit != "all")]
        others = rows[rows.answer_digit != digit]
        assert others.loss_delta.abs().max() < 1e-12
        assert rows[rows.answer_digit == digit].loss_delta.abs().max() > 1e-6


def test_ablate_any_hook_head_and_position() -> None:
    model = tiny_model(n_digits=2, dtype=torch.float64)
    batch = random_questions(2, 40, seed=5)
    unread = ablate(model, batch, "blocks.0.attn.hook_z", head=1, position=2)
    assert list(unread.columns) == [*EFFECTS, *RECORD]
    assert (unread.loss_delta.abs().max() < 1e-12)
    read = ablate(model, batch, "blocks.0.attn.hook_z", head=1, position=7, method="zero")
    digits = read.set_index(["answer_digit", "subtask_class"]).loss_delta
    assert abs(digits["A0", "all"]) > 1e-6 and digits["A2", "all"] == 0 and digits["A1", "all"] == 0
    # hook_pattern: `position` is the query position
    assert ablate(model, batch, "blocks.0.attn.hook_pattern", head=0, position=3).loss_delta.abs().max() < 1e-12
    assert ablate(model, batch, "blocks.0.attn.hook_pattern", head=0, position=6,
                  method="zero").loss_delta.abs().max() > 1e-6
    # the node path and the general path agree on one node
    node = node_ablation(model, batch, method="zero")
    node = node[node.node == "P7L0H1"].reset_index(drop=True)[EFFECTS]
    pd.testing.assert_frame_equal(node, read[EFFECTS], rtol=0, atol=1e-9)
    # resample draws from the reference set, reproducibly for a seed
    reference = random_questions(2, 25, seed=9)
    first = ablate(model, batch, "blocks.0.hook_mlp_out", position=6, method="resample", reference=reference, seed=1)
    assert first.equals(ablate(model, batch, "blocks.0.hook_mlp_out", position=6, method="resample",
                               reference=reference, seed=1))
    assert not first.equals(ablate(model, batch, "blocks.0.hook_mlp_out", position=6, method="resample",
                                   reference=reference, seed=2))


def test_zero_ablating_everything_destroys_accuracy() -> None:
    model = trained_one_digit_model()
    batch = all_questions(1)
    for hook in ("blocks.0.hook_resid_post", "blocks.0.attn.hook_z"):
        frame = ablate(model, batch, hook, method="zero").set_index(["answer_digit", "subtask_class"])
        whole = frame.loc[("all", "all")]
        assert whole.accuracy_delta == whole.accuracy - 1.0  # baseline: every question right
        assert whole.accuracy <= 0.2 and whole.loss_delta > 1.0


def test_bad_input_raises() -> None:
    model = tiny_model(n_digits=2)
    batch = random_questions(2, 10)
    with pytest.raises(ArithlensError, match="blocks.0.attn.hook_z"):
        ablate(model, batch, "blocks.0.attn.hook_zz")
    with pytest.raises(ArithlensError, match="unknown hook"):
        ablate(model, batch, "no_such_hook_anywhere")
    with pytest.raises(ArithlensError, match="does not fire"):
        ablate(model, batch, "blocks.0.attn.hook_result")
    with pytest.raises(ArithlensError, match="no head dimension"):
        ablate(model, batch, "blocks.0.hook_mlp_out", head=0)
    with pytest.raises(ArithlensError, match="head must be"):
        ablate(model, batch, "blocks.0.attn.hook_z", head=4)
    with pytest.raises(ArithlensError, match="position must be"):
        ablate(model, batch, "blocks.0.attn.hook_z", position=9)
    with pytest.raises(ArithlensError, match="method"):
        ablate(model, batch, "blocks.0.attn.hook_z", method="median")
    with pytest.raises(ArithlensError, match="method"):
        node_ablation(model, batch, method="median")
    with pytest.raises(ArithlensError, match="empty"):
        node_ablation(model, batch.select(slice(0, 0)))
    with pytest.raises(ArithlensError, match="empty"):
        ablate(model, batch.select(slice(0, 0)), "blocks.0.attn.hook_z")
    other = random_questions(3, 10)
    with pytest.raises(ArithlensError, match="2-digit"):
        position_ablation(model, other)
    with pytest.raises(ArithlensError, match="2-digit"):
        ablate(model, batch, "blocks.0.attn.hook_z", reference=other)


# ----- the reference a mean or resample ablation takes its values from ------------------------------
def test_default_reference_is_random_questions_not_the_tested_set() -> None:
    """A narrow set's own mean already encodes its answer; the default must not be the set itself."""
    model = tiny_model(n_digits=2, dtype=torch.float64)
    task = AdditionTask(2)
    narrow = make_question_set(task, "sum9_at_D0", 60, seed=0).batch
    uniform = make_question_set(task, "random", 1000, seed=1)  # the documented default reference
    for method in ("mean", "resample"):
        default = ablate(model, narrow, "blocks.0.attn.hook_z", head=1, position=7, method=method)
        explicit = ablate(model, narrow, "blocks.0.attn.hook_z", head=1, position=7, method=method,
                          reference=uniform)
        pd.testing.assert_frame_equal(default.drop(columns="reference"), explicit.drop(columns="reference"))
        assert set(explicit["reference"]) == {"1,000 uniformly random questions (question set 'random')"}
        assert set(default["method"]) == {method}
        assert set(default["reference"]) == {"1,000 uniformly random questions (seed 1)"}
        with pytest.warns(NarrowReferenceWarning, match="not uniformly random"):
            own = ablate(model, narrow, "blocks.0.attn.hook_z", head=1, position=7, method=method, reference=narrow)
        assert not np.allclose(own["loss_delta"], default["loss_delta"])
        assert set(own["reference"]) == {"the 60 tested questions themselves (not uniformly random)"}
    assert set(ablate(model, narrow, "blocks.0.attn.hook_z", method="zero")["reference"]) == {"none: zeros"}
    # the node and position tables take the same default
    pd.testing.assert_frame_equal(node_ablation(model, narrow)[NUMBERS],
                                  node_ablation(model, narrow, reference=uniform)[NUMBERS])
    pd.testing.assert_frame_equal(position_ablation(model, narrow, method="resample")[NUMBERS],
                                  position_ablation(model, narrow, method="resample", reference=uniform)[NUMBERS])
    with pytest.warns(NarrowReferenceWarning):
        narrow_nodes = node_ablation(model, narrow, reference=narrow)
    assert not np.allclose(narrow_nodes["loss_delta"], node_ablation(model, narrow)["loss_delta"], equal_nan=True)


def test_narrow_references_warn_and_random_ones_do_not() -> None:
    model = tiny_model(n_digits=2)
    task = AdditionTask(2)
    batch = random_questions(2, 20)
    with pytest.warns(NarrowReferenceWarning, match="cascade_depth_1"):
        frame = ablate(model, batch, "blocks.0.hook_mlp_out", reference=make_question_set(task, "cascade_depth_1", 50))
    assert frame["reference"].iloc[0].startswith("50 questions of set 'cascade_depth_1'")
    with pytest.warns(NarrowReferenceWarning):  # a plain batch is judged by its digit-pair sums
        ablate(model, batch, "blocks.0.hook_mlp_out", reference=make_question_set(task, "base_add", 200).batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ablate(model, batch, "blocks.0.hook_mlp_out")
        ablate(model, batch, "blocks.0.hook_mlp_out", reference=random_questions(2, 500, seed=3))
        ablate(model, batch, "blocks.0.hook_mlp_out", reference=make_question_set(task, "random", 300, seed=4))
        ablate(model, batch, "blocks.0.hook_mlp_out", method="zero", reference=make_question_set(task, "base_add", 50))
    assert not is_uniformly_random(make_question_set(task, "sum9_at_D1", 30).batch)
    assert all(is_uniformly_random(random_questions(2, 1000, seed=s)) for s in range(5))


# ----- where a position's computation happens -----------------------------------------------------
def test_position_ablation_measures_outputs_and_inputs_not_resid_post() -> None:
    """In 1 layer a position's resid_post is read only by its own unembedding; its input is read by attention."""
    model = trained_one_digit_model()
    batch = all_questions(1)  # positions: D0 + D'0 = A1 A0; 3 ("=") predicts A1, 4 (A1) predicts A0
    frame = position_ablation(model, batch)
    assert list(frame.columns) == POSITION_COLUMNS
    assert list(dict.fromkeys(frame["site"])) == ["attention+mlp output", "input"]
    digits = frame[frame.answer_digit != "all"].set_index(["site", "position", "answer_digit"])["accuracy_delta"]
    for position in (0, 2):  # the operand digits: their inputs feed both answer digits, their outputs nothing
        assert digits["input", position, "A0"] < -0.5 and digits["input", position, "A1"] < -0.1
        assert (digits["attention+mlp output", position].abs() < 1e-12).all()
    assert digits["attention+mlp output", 3, "A1"] < -0.3 and digits["attention+mlp output", 4, "A0"] < -0.3
    assert (digits["input", 1].abs() < 1e-12).all()  # "+" is the same token everywhere: its mean is itself
    post = position_ablation(model, batch, sites=("resid_post",))
    assert set(post["site"]) == {"resid_post"}
    post_digits = post[post.answer_digit != "all"].set_index(["position", "answer_digit"])["accuracy_delta"]
    assert (post_digits[0].abs() < 1e-12).all()  # what the old table showed: the inputs "change nothing"
    with pytest.raises(ArithlensError, match="site"):
        position_ablation(model, batch, sites=("embed",))
    figure = position_ablation_heatmap(frame, 1)  # the report draws both sites side by side
    assert len(figure.data) == 2 and "computes" in figure.layout.annotations[0].text
    assert "1,000 uniformly random questions (seed 1)" in figure.layout.title.text
