"""Question sets: every row holds its set's claim, checked from the labels and from the operands."""

from __future__ import annotations

import pytest
import torch

from arithlens.analysis.question_sets import make_question_set, question_set_names
from arithlens.errors import ArithlensError
from arithlens.task import AdditionTask, QuestionCategory


def operands(task: AdditionTask, batch) -> tuple[list[int], list[int]]:
    n = task.n_digits
    texts = task.questions(batch)
    return [int(t[:n]) for t in texts], [int(t[n + 1 : 2 * n + 1]) for t in texts]


def carries_into(x: int, y: int, digit: int) -> bool:
    """Arithmetic, not labels: does adding the digits below `digit` carry into it?"""
    modulus = 10**digit
    return x % modulus + y % modulus >= modulus


def test_names_per_digit_count() -> None:
    assert question_set_names(1) == ["random", "base_add", "sum9_at_D0"]
    names = question_set_names(5)
    assert names[:4] == ["random", "base_add", "use_carry1", "use_sum9"]
    assert [f"carry_into_D{d}" for d in range(1, 5)] == [n for n in names if n.startswith("carry_into")]
    assert [f"sum9_at_D{d}" for d in range(5)] == [n for n in names if n.startswith("sum9_at")]
    assert [f"cascade_depth_{k}" for k in range(1, 5)] == [n for n in names if n.startswith("cascade")]
    assert names[-1] == "published_hard"


@pytest.mark.parametrize("n_digits", [2, 3, 5])
def test_every_row_holds_its_claim(n_digits: int) -> None:
    task = AdditionTask(n_digits)
    for name in question_set_names(n_digits):
        batch = make_question_set(task, name, count=120, seed=3).batch
        assert len(batch) == 120 and batch.n_digits == n_digits, name
        xs, ys = operands(task, batch)
        if name == "base_add":
            assert (batch.category == int(QuestionCategory.BASE_ADD)).all()
            assert not batch.use_carry1.any()
        elif name == "use_carry1":
            assert (batch.category == int(QuestionCategory.USE_CARRY1)).all()
            assert batch.use_carry1.any(dim=1).all() and not batch.use_sum9.any()
        elif name == "use_sum9":
            assert (batch.category == int(QuestionCategory.USE_SUM9)).all()
            assert batch.use_sum9.any(dim=1).all()
            assert batch.use_sum9[:, 1:].any(dim=0).all()  # every digit that can be a UseSum9 is one somewhere
        elif name.startswith("carry_into_D"):
            digit = int(name.removeprefix("carry_into_D"))
            assert batch.use_carry1[:, digit].all()
            assert all(carries_into(x, y, digit) for x, y in zip(xs, ys))
        elif name.startswith("sum9_at_D"):
            digit = int(name.removeprefix("sum9_at_D"))
            assert batch.make_sum9[:, digit].all()
            assert all((x // 10**digit) % 10 + (y // 10**digit) % 10 == 9 for x, y in zip(xs, ys))
        elif name.startswith("cascade_depth_"):
            depth = int(name.removeprefix("cascade_depth_"))
            assert (batch.cascade_depth == depth).all()
            # every place a run of that depth fits is used: its top digit ranges over depth .. n-1
            run_tops = {max(d for d in range(n_digits) if row[d]) for row in batch.use_sum9.tolist()}
            assert set(range(depth, n_digits)) <= run_tops
        elif name == "published_hard":
            assert (batch.cascade_depth >= min(2, n_digits - 1)).all()
            assert batch.cascade_depth.max() == n_digits - 1
        # the labels agree with the answer digits the tokens carry
        assert all(int(a) == x + y for a, x, y in zip(task.answers(batch), xs, ys))


def test_published_hard_cases_come_first() -> None:
    task = AdditionTask(5)
    questions = task.questions(make_question_set(task, "published_hard", count=50).batch)
    assert questions[:4] == ["06665+03335=", "00445+00555=", "44445+55555=", "99999+00001="]
    three = AdditionTask(3)
    assert three.questions(make_question_set(three, "published_hard", count=1).batch) == ["445+555="]


def test_seeded_and_independent_per_name() -> None:
    task = AdditionTask(4)
    first = make_question_set(task, "use_sum9", count=64, seed=1).batch.tokens
    assert torch.equal(first, make_question_set(task, "use_sum9", count=64, seed=1).batch.tokens)
    assert not torch.equal(first, make_question_set(task, "use_sum9", count=64, seed=2).batch.tokens)
    other = make_question_set(task, "cascade_depth_1", count=64, seed=1).batch.tokens
    assert (first[:, :4] != other[:, :4]).any(dim=1).float().mean() > 0.5


def test_description_and_len() -> None:
    qs = make_question_set(AdditionTask(3), "carry_into_D2", count=7)
    assert len(qs) == 7 and qs.name == "carry_into_D2" and "D2" in qs.description


def test_bad_requests_raise() -> None:
    task = AdditionTask(3)
    with pytest.raises(ArithlensError, match="valid names: random"):
        make_question_set(task, "cascade_depth_3", count=10)  # a 3-deep cascade needs 4 digits
    with pytest.raises(ArithlensError, match="count"):
        make_question_set(task, "random", count=0)
    with pytest.raises(ArithlensError, match="count"):
        make_question_set(task, "random", count=True)
    with pytest.raises(ArithlensError):
        question_set_names(0)
