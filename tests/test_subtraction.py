"""Subtraction and mixed addition/subtraction: labels against Python integers, the signed format,
seeded generation, question sets, data records and the `arithlens data` command.

Every label is recomputed here from plain integers with a borrow loop of our own, never from the
library's tensors, so a shared mistake in `operations._sub_labels` cannot hide behind itself.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arithlens.analysis.question_sets import make_question_set, question_set_names
from arithlens.batch import ArithmeticBatch
from arithlens.datasets import batch_records, question_class
from arithlens.errors import ArithlensError
from arithlens.operations import EQUALS_TOKEN, MINUS_TOKEN, PLUS_TOKEN
from arithlens.task import AdditionTask, ArithmeticTask, MixedTask, SubtractionTask, make_task

ARITHLENS = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "arithlens"
SUB_KEYS = {"question", "answer", "op", "base_diff", "make_borrow", "make_zero", "use_borrow", "use_zero",
            "category", "borrow_cascade_depth", "class"}
ADD_KEYS = {"question", "answer", "op", "base_add", "make_carry1", "make_sum9", "use_carry1", "use_sum9",
            "category", "cascade_depth"}


# ----- plain-Python references -------------------------------------------------------------------

def digits_of(value: int, n: int) -> list[int]:
    """Units-first digits of a non-negative integer."""
    return [(value // 10**d) % 10 for d in range(n)]


def longest_run(flags: list[bool]) -> int:
    depth = run = 0
    for flag in flags:
        run = run + 1 if flag else 0
        depth = max(depth, run)
    return depth


def reference_sub(x: int, y: int, n: int) -> dict[str, Any]:
    """Subtraction labels from a schoolbook borrow loop on a = max(x, y) minus b = min(x, y)."""
    a, b = max(x, y), min(x, y)
    a_digits, b_digits = digits_of(a, n), digits_of(b, n)
    make_borrow, make_zero, use_borrow, base_diff, answer_digits = [], [], [], [], []
    borrow = 0
    for a_d, b_d in zip(a_digits, b_digits):
        use_borrow.append(borrow == 1)
        make_borrow.append(a_d < b_d)
        make_zero.append(a_d == b_d)
        base_diff.append((a_d - b_d) % 10)
        column = a_d - b_d - borrow
        borrow = 1 if column < 0 else 0
        answer_digits.append(column % 10)
    assert borrow == 0  # a >= b: nothing borrows out of the top column (a check on this reference itself)
    assert sum(digit * 10**d for d, digit in enumerate(answer_digits)) == a - b
    use_zero = [z and u for z, u in zip(make_zero, use_borrow)]
    category = 2 if any(use_zero) else 1 if any(use_borrow) else 0
    value = x - y
    return dict(make_borrow=make_borrow, make_zero=make_zero, use_borrow=use_borrow, use_zero=use_zero,
                base_diff=base_diff, depth=longest_run(use_zero), category=category, negative=x < y,
                answer=("-" if value < 0 else "+") + str(abs(value)).zfill(n + 1))


def reference_add(x: int, y: int, n: int) -> dict[str, Any]:
    """Addition labels from integer arithmetic: a carry into d is the lower d digits overflowing."""
    base_add = [a + b for a, b in zip(digits_of(x, n), digits_of(y, n))]
    use_carry1 = [x % 10**d + y % 10**d >= 10**d for d in range(n)]
    make_carry1 = [x % 10 ** (d + 1) + y % 10 ** (d + 1) >= 10 ** (d + 1) for d in range(n)]
    make_sum9 = [s == 9 for s in base_add]
    use_sum9 = [s and c for s, c in zip(make_sum9, use_carry1)]
    category = 2 if any(use_sum9) else 1 if any(use_carry1) else 0
    return dict(base_add=base_add, make_carry1=make_carry1, make_sum9=make_sum9, use_carry1=use_carry1,
                use_sum9=use_sum9, depth=longest_run(use_sum9), category=category, answer=str(x + y).zfill(n + 1))


def check_sub_row(task: ArithmeticTask, batch: ArithmeticBatch, i: int, x: int, y: int,
                  lists: dict[str, list] | None = None) -> None:
    """Row i of `batch` against the reference; `lists` are the batch's tensors as lists, precomputed for speed."""
    n = task.n_digits
    lists = lists or batch_lists(batch)
    ref = reference_sub(x, y, n)
    where = f"{x}-{y}"
    assert lists["tokens"][i][:task.question_len] == [*digits_of(x, n)[::-1], MINUS_TOKEN, *digits_of(y, n)[::-1],
                                                      EQUALS_TOKEN], where
    assert task.decode(batch.tokens[i])[0][task.question_len:] == ref["answer"], where
    assert lists["op"][i] == 1 and lists["negative"][i] == ref["negative"], where
    assert lists["make_borrow"][i] == ref["make_borrow"], where
    assert lists["make_zero"][i] == ref["make_zero"], where
    assert lists["use_borrow"][i] == ref["use_borrow"], where
    assert lists["use_zero"][i] == ref["use_zero"], where
    assert lists["base_diff"][i] == ref["base_diff"], where
    assert lists["borrow_cascade_depth"][i] == ref["depth"], where
    assert lists["category"][i] == ref["category"], where


def batch_lists(batch: ArithmeticBatch) -> dict[str, list]:
    names = ("tokens", "op", "negative", "make_borrow", "make_zero", "use_borrow", "use_zero", "base_diff",
             "borrow_cascade_depth", "category")
    return {name: getattr(batch, name).tolist() for name in names}


def operands(task: ArithmeticTask, batch: ArithmeticBatch) -> tuple[list[int], list[int]]:
    """x and y of every row, read back from the question text."""
    n = task.n_digits
    texts = task.questions(batch)
    return [int(t[:n]) for t in texts], [int(t[n + 1 : 2 * n + 1]) for t in texts]


def assert_same_batch(first: ArithmeticBatch, second: ArithmeticBatch) -> None:
    for f in fields(ArithmeticBatch):
        assert torch.equal(getattr(first, f.name), getattr(second, f.name)), f.name


# ----- 1. exhaustive two-digit labels ------------------------------------------------------------

def test_subtraction_labels_exhaustive_two_digits() -> None:
    task = SubtractionTask(2)
    batch = task.every_question()
    assert len(batch) == 10**4 and task.seq_len == 3 * 2 + 4
    lists = batch_lists(batch)
    for i in range(10**4):
        x, y = divmod(i, 100)  # every_question's documented order
        check_sub_row(task, batch, i, x, y, lists)
    # every category and the only cascade depths two digits allow (the top column never passes a borrow on)
    assert set(lists["category"]) == {0, 1}
    assert set(lists["borrow_cascade_depth"]) == {0}
    assert sum(lists["negative"]) == 100 * 99 // 2


def test_three_digit_cascade_and_category_two() -> None:
    # Two digits cannot hold a cascade, so the exhaustive check above never sees category 2; three can.
    task = SubtractionTask(3)
    batch = task.batch_from_ints([100, 1, 210, 500], [1, 100, 201, 500])
    assert task.decode(batch.tokens) == ["100-001=+0099", "001-100=-0099", "210-201=+0009", "500-500=+0000"]
    assert batch.borrow_cascade_depth.tolist() == [1, 1, 0, 0]
    assert batch.category.tolist() == [2, 2, 1, 0]
    assert batch.use_zero.tolist()[0] == [False, True, False]
    for i, (x, y) in enumerate([(100, 1), (1, 100), (210, 201), (500, 500)]):
        check_sub_row(task, batch, i, x, y)


# ----- 2. property tests up to 12 digits ---------------------------------------------------------

@st.composite
def operand_rows(draw: st.DrawFn, with_ops: bool) -> tuple[int, list[tuple[int, int, str]]]:
    """n digits and 1..6 rows of (x, y, op); equal operands are drawn on purpose, as uniform draws rarely are."""
    n = draw(st.integers(1, 12))
    value = st.integers(0, 10**n - 1)
    op = st.sampled_from(["add", "sub"]) if with_ops else st.just("sub")
    rows = draw(st.lists(st.one_of(st.tuples(value, value, op), value.flatmap(lambda v: st.tuples(st.just(v),
                                                                                           st.just(v), op))),
                         min_size=1, max_size=6))
    return n, rows


@settings(max_examples=150, deadline=None)
@given(operand_rows(with_ops=False))
def test_subtraction_labels_property(case: tuple[int, list[tuple[int, int, str]]]) -> None:
    n, rows = case
    task = SubtractionTask(n)
    xs, ys = [r[0] for r in rows], [r[1] for r in rows]
    batch = task.batch_from_ints(xs, ys)
    lists = batch_lists(batch)
    for i, (x, y) in enumerate(zip(xs, ys)):
        check_sub_row(task, batch, i, x, y, lists)


@settings(max_examples=150, deadline=None)
@given(operand_rows(with_ops=True))
def test_mixed_labels_property(case: tuple[int, list[tuple[int, int, str]]]) -> None:
    n, rows = case
    task = MixedTask(n)
    xs, ys, ops = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
    batch = task.batch_from_ints(xs, ys, ops)
    lists = batch_lists(batch)
    # Each row must carry exactly the labels its own operation's task gives the same operands.
    alone_add = AdditionTask(n).batch_from_ints(xs, ys)
    alone_sub = SubtractionTask(n).batch_from_ints(xs, ys)
    texts = task.decode(batch.tokens)
    for i, (x, y, op) in enumerate(rows):
        alone = alone_add if op == "add" else alone_sub
        for role in ("base", "base_carry", "make_carry", "make_pass", "use_carry", "use_pass", "category",
                     "cascade_depth", "negative"):
            assert torch.equal(getattr(batch, role)[i], getattr(alone, role)[i]), (role, x, op, y)
        if op == "sub":
            check_sub_row(task, batch, i, x, y, lists)
            continue
        ref = reference_add(x, y, n)
        assert texts[i] == f"{x:0{n}d}+{y:0{n}d}=+{ref['answer']}"  # signed: '+' then n+1 digits of x+y
        assert lists["op"][i] == 0 and not lists["negative"][i]
        assert batch.base_add[i].tolist() == ref["base_add"]
        assert batch.make_carry1[i].tolist() == ref["make_carry1"]
        assert batch.make_sum9[i].tolist() == ref["make_sum9"]
        assert batch.use_carry1[i].tolist() == ref["use_carry1"]
        assert batch.use_sum9[i].tolist() == ref["use_sum9"]
        assert int(batch.cascade_depth[i]) == ref["depth"] and int(batch.category[i]) == ref["category"]
        # the unsigned addition task writes the same digits without the sign
        assert AdditionTask(n).answers(alone_add)[i] == ref["answer"]


# ----- 3. the signed text format -----------------------------------------------------------------

def test_subtraction_encode_fills_in_the_signed_answer() -> None:
    task = SubtractionTask(5)
    assert task.decode(task.encode("12345-67890=")) == ["12345-67890=-055545"]
    assert task.decode(task.encode("67890-12345=")) == ["67890-12345=+055545"]
    assert task.decode(task.encode("12345-12345=")) == ["12345-12345=+000000"]  # zero takes the + sign
    tokens = SubtractionTask(2).encode("12-34=")
    assert tokens.tolist() == [[1, 2, MINUS_TOKEN, 3, 4, EQUALS_TOKEN, MINUS_TOKEN, 0, 2, 2]]
    # the filled-in answer is the one the labels compute
    assert torch.equal(task.encode(["12345-67890=", "00000-99999="]),
                       task.batch_from_ints([12345, 0], [67890, 99999]).tokens)


def test_round_trips_keep_full_sequences_as_written() -> None:
    sub = SubtractionTask(5)
    written = ["12345-67890=-055545", "67890-12345=+055545", "00000-00000=+000000", "99999-00000=+099999"]
    assert sub.decode(sub.encode(written)) == written
    # a full sequence is kept as written, even a wrong answer: only questions get theirs filled in
    assert sub.decode(sub.encode("12345-67890=+000001")) == ["12345-67890=+000001"]
    mixed = MixedTask(5)
    both = ["12345+67890=+080235", "12345-67890=-055545", "99999+99999=+199998", "00000-00001=-000001"]
    assert mixed.decode(mixed.encode(both)) == both
    assert mixed.decode(mixed.encode(["12345+67890=", "12345-67890="])) == both[:2]
    assert mixed.decode(mixed.encode(" 12345 + 67890 = ")) == both[:1]  # whitespace is ignored
    # the unsigned addition format is unchanged
    assert AdditionTask(5).decode(AdditionTask(5).encode("12345+67890=")) == ["12345+67890=080235"]


def test_bad_input_names_the_models_operation() -> None:
    with pytest.raises(ArithlensError, match="addition") as raised:
        AdditionTask(5).encode("12345-67890=")
    assert "'-' is not an operation" in str(raised.value)
    with pytest.raises(ArithlensError, match="subtraction"):
        SubtractionTask(5).encode("12345+67890=")
    with pytest.raises(ArithlensError, match="sign") as raised:
        MixedTask(5).encode("12345+67890=080235")
    assert "mixed" in str(raised.value)
    with pytest.raises(ArithlensError, match="no sign"):
        AdditionTask(5).encode("12345+67890=+080235")
    with pytest.raises(ArithlensError, match="mul") as raised:
        make_task("mul", 5)
    assert "add, sub, mixed" in str(raised.value)
    with pytest.raises(ArithlensError, match="ops="):
        MixedTask(3).batch_from_ints([1], [2])  # a mixed task cannot guess each row's operation
    with pytest.raises(ArithlensError, match="'add' or 'sub'"):
        MixedTask(3).batch_from_ints([1], [2], ["mul"])
    with pytest.raises(ArithlensError, match="operation ids"):
        SubtractionTask(3).batch_from_ints([1], [2], ["add"])  # not an operation of a subtraction model


def test_signed_layout() -> None:
    sub, mixed, add = SubtractionTask(5), MixedTask(5), AdditionTask(5)
    assert (sub.seq_len, mixed.seq_len, add.seq_len) == (19, 19, 18)
    assert (sub.d_vocab, mixed.d_vocab, add.d_vocab) == (13, 13, 12)
    assert sub.answer_token_names() == ["sign", "A5", "A4", "A3", "A2", "A1", "A0"]
    assert sub.digit_logit_positions == list(range(12, 18))  # the sign is predicted at '=' (11)
    allowed = sub.answer_allowed()
    assert allowed[0].nonzero().flatten().tolist() == [PLUS_TOKEN, MINUS_TOKEN]
    assert allowed[1:, :10].all() and not allowed[1:, 10:].any()


# ----- 4. generation -----------------------------------------------------------------------------

@pytest.mark.parametrize("task", [AdditionTask(4), SubtractionTask(4), MixedTask(4)], ids=repr)
@pytest.mark.parametrize("enrich", [0.0, 0.5])
def test_generate_is_seeded(task: ArithmeticTask, enrich: float) -> None:
    def draw(seed: int) -> ArithmeticBatch:
        return task.generate(300, torch.Generator().manual_seed(seed), enrich_fraction=enrich)

    assert_same_batch(draw(7), draw(7))
    assert not torch.equal(draw(7).tokens, draw(8).tokens)


@pytest.mark.parametrize("enrich", [0.0, 0.3, 1.0])
def test_addition_generate_draws_what_it_always_drew(enrich: float) -> None:
    count, n, prob = 400, 5, 0.4
    task = AdditionTask(n)
    mine, theirs = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    batch = task.generate(count, theirs, enrich_fraction=enrich, enrich_sum9_prob=prob)
    # The pre-subtraction draw order: both operands' digits, then (with enrichment) question and column picks.
    digits = torch.randint(0, 10, (2, count, n), generator=mine)
    x, y = digits[0], digits[1]
    if enrich > 0.0:
        pick_question = torch.rand(count, 1, generator=mine) < enrich
        pick_column = torch.rand(count, n, generator=mine) < prob
        y = torch.where(pick_question & pick_column, 9 - x, y)
    assert_same_batch(batch, task.batch_from_digits(x, y))
    # nothing more was drawn either, so the training stream after this batch is unchanged too
    assert torch.equal(torch.rand(5, generator=mine), torch.rand(5, generator=theirs))
    assert AdditionTask(n).decode(batch.tokens[:1])[0][n] == "+" and not batch.negative.any()


def test_subtraction_enrichment_makes_zero_columns_common() -> None:
    task = SubtractionTask(5)
    uniform = task.generate(4000, torch.Generator().manual_seed(1))
    enriched = task.generate(4000, torch.Generator().manual_seed(1), enrich_fraction=1.0, enrich_sum9_prob=0.4)
    # uniform: a_d == b_d one time in ten; enriched: 0.4 + 0.6 * 0.1 = 0.46
    assert 0.08 < uniform.make_zero.float().mean() < 0.12
    assert 0.42 < enriched.make_zero.float().mean() < 0.50
    assert enriched.borrow_cascade_depth.float().mean() > 2 * uniform.borrow_cascade_depth.float().mean()
    assert (enriched.op == 1).all() and (enriched.tokens[:, 5] == MINUS_TOKEN).all()
    # labels of generated rows still agree with the integers
    xs, ys = operands(task, enriched)
    lists = batch_lists(enriched)
    for i in range(0, 4000, 40):
        check_sub_row(task, enriched, i, xs[i], ys[i], lists)


def test_subtraction_enrichment_sets_equal_operands() -> None:
    # With no column forced, enrichment only makes y = x, for 1% of the enriched questions.
    task = SubtractionTask(5)
    plain = task.generate(20000, torch.Generator().manual_seed(4))
    equal = task.generate(20000, torch.Generator().manual_seed(4), enrich_fraction=1.0, enrich_sum9_prob=0.0)
    share = (equal.tokens[:, :5] == equal.tokens[:, 6:11]).all(dim=1).float().mean().item()
    assert 0.006 < share < 0.015
    assert (plain.tokens[:, :5] == plain.tokens[:, 6:11]).all(dim=1).sum() < 5  # about 10^-5 by chance
    assert (equal.tokens[:, task.question_len:] == torch.tensor([PLUS_TOKEN, 0, 0, 0, 0, 0, 0])).all(dim=1).float(
    ).mean().item() == pytest.approx(share)  # each is a +000000 answer
    # addition has no equal-operands rule: with no column forced, its enriched questions are the plain ones
    add = AdditionTask(5)
    assert torch.equal(add.generate(5000, torch.Generator().manual_seed(4), enrich_fraction=1.0,
                                    enrich_sum9_prob=0.0).tokens,
                       add.generate(5000, torch.Generator().manual_seed(4)).tokens)


def test_mixed_generate_holds_both_operations() -> None:
    task = MixedTask(4)
    batch = task.generate(4000, torch.Generator().manual_seed(3), enrich_fraction=1.0)
    share_sub = batch.op.float().mean().item()
    assert 0.46 < share_sub < 0.54
    # the operator token and the sign follow each row's operation
    assert torch.equal(batch.tokens[:, 4] == MINUS_TOKEN, batch.op == 1)
    assert (batch.tokens[batch.op == 0, task.question_len] == PLUS_TOKEN).all()
    assert torch.equal(batch.tokens[:, task.question_len] == MINUS_TOKEN, batch.negative)
    assert not batch.negative[batch.op == 0].any() and batch.negative[batch.op == 1].any()
    # enrichment forces each operation's own passing pair: sums of 9 for addition, equal digits for subtraction
    add, sub = batch.select(batch.op == 0), batch.select(batch.op == 1)
    assert add.make_sum9.float().mean() > 0.4 and sub.make_zero.float().mean() > 0.4
    xs, ys = operands(task, batch)
    for i in range(0, 4000, 50):
        value = xs[i] - ys[i] if int(batch.op[i]) == 1 else xs[i] + ys[i]
        assert int(task.answers(batch.select(slice(i, i + 1)))[0]) == value


# ----- 5. question sets --------------------------------------------------------------------------

def check_sub_set_claim(name: str, n: int, xs: list[int], ys: list[int]) -> None:
    """A subtraction set's claim, checked from the operands alone."""
    refs = [reference_sub(x, y, n) for x, y in zip(xs, ys)]
    pairs = list(zip(xs, ys))
    if name == "positive":
        assert all(x > y for x, y in pairs)
    elif name == "negative":
        assert all(x < y for x, y in pairs)
    elif name == "zero":
        assert all(x == y for x, y in pairs)
    elif name in ("no_borrow", "use_borrow", "borrow_cascade"):
        category = ("no_borrow", "use_borrow", "borrow_cascade").index(name)
        assert all(r["category"] == category for r in refs)
    elif name.startswith("borrow_into_D"):
        digit = int(name.removeprefix("borrow_into_D"))
        # a borrow into D_d is the lower d digits of a being smaller than b's
        assert all(max(x, y) % 10**digit < min(x, y) % 10**digit for x, y in pairs)
    elif name.startswith("zero_at_D"):
        digit = int(name.removeprefix("zero_at_D"))
        assert all(digits_of(x, n)[digit] == digits_of(y, n)[digit] for x, y in pairs)
    elif name.startswith("borrow_cascade_depth_"):
        depth = int(name.removeprefix("borrow_cascade_depth_"))
        assert all(r["depth"] == depth for r in refs)
    elif name == "published_hard":
        assert pairs[0] == (10 ** (n - 1), 1) and pairs[1] == (1, 10 ** (n - 1))
        assert all(r["depth"] >= min(2, n - 2) for r in refs[4:])
    else:
        assert name == "random", name


@pytest.mark.parametrize("n_digits", [2, 3, 5])
def test_subtraction_sets_hold_their_claims(n_digits: int) -> None:
    task = SubtractionTask(n_digits)
    names = question_set_names(task)
    assert names[:4] == ["random", "positive", "negative", "zero"] and names[-1] == "published_hard"
    assert [f"borrow_cascade_depth_{k}" for k in range(1, n_digits - 1)] == [
        name for name in names if name.startswith("borrow_cascade_depth_")]
    for name in names:
        batch = make_question_set(task, name, count=60, seed=2).batch
        assert len(batch) == 60 and batch.n_digits == n_digits, name
        assert (batch.op == 1).all(), name
        xs, ys = operands(task, batch)
        check_sub_set_claim(name, n_digits, xs, ys)
        lists = batch_lists(batch)
        for i, (x, y) in enumerate(zip(xs, ys)):  # and the labels and answer of every row are right
            check_sub_row(task, batch, i, x, y, lists)
        if name in ("positive", "negative", "zero", "random"):
            continue
        if name.startswith("zero_at_D") or name.startswith("borrow_into_D") or name.startswith("borrow_cascade"):
            # sets that alternate the sign hold both signs
            assert 0 < int(batch.negative.sum()) < 60, name


def test_subtraction_published_hard_comes_first() -> None:
    task = SubtractionTask(5)
    questions = task.questions(make_question_set(task, "published_hard", count=50).batch)
    assert questions[:4] == ["10000-00001=", "00001-10000=", "99999-99999=", "10000-09999="]
    batch = make_question_set(task, "published_hard", count=50).batch
    assert task.answers(batch)[:3] == ["+009999", "-009999", "+000000"]
    assert batch.borrow_cascade_depth.tolist()[:2] == [3, 3]


def test_subtraction_sets_are_seeded() -> None:
    task = SubtractionTask(4)
    first = make_question_set(task, "borrow_cascade_depth_1", count=40, seed=5).batch
    assert_same_batch(first, make_question_set(task, "borrow_cascade_depth_1", count=40, seed=5).batch)
    other = make_question_set(task, "borrow_cascade_depth_1", count=40, seed=6).batch
    assert not torch.equal(first.tokens, other.tokens)
    with pytest.raises(ArithlensError, match="valid names"):
        make_question_set(task, "borrow_cascade_depth_3", count=10)  # 4 digits hold cascades up to 2 deep


def test_mixed_set_names_are_prefixed() -> None:
    task = MixedTask(3)
    names = question_set_names(task)
    assert names == ["random", *(f"add:{name}" for name in question_set_names(AdditionTask(3))),
                     *(f"sub:{name}" for name in question_set_names(SubtractionTask(3)))]
    assert all(name == "random" or name.startswith(("add:", "sub:")) for name in names)
    negative = make_question_set(task, "sub:negative", count=60).batch
    assert (negative.op == 1).all() and negative.negative.all()
    xs, ys = operands(task, negative)
    assert all(x < y for x, y in zip(xs, ys))
    assert all(text[task.question_len] == "-" for text in task.decode(negative.tokens))
    cascades = make_question_set(task, "add:cascade_depth_2", count=60).batch
    assert (cascades.op == 0).all() and (cascades.cascade_depth == 2).all()
    xs, ys = operands(task, cascades)
    assert task.answers(cascades) == [f"+{x + y:04d}" for x, y in zip(xs, ys)]
    both = make_question_set(task, "random", count=200).batch
    assert 0 < int(both.op.sum()) < 200
    with pytest.raises(ArithlensError, match="valid names"):
        make_question_set(task, "negative", count=10)  # unprefixed names belong to one operation


# ----- 6. data records and `arithlens data` ------------------------------------------------------

def test_subtraction_records() -> None:
    task = SubtractionTask(5)
    batch = task.batch_from_ints([10000, 1, 5, 12, 99999], [1, 10000, 3, 9, 99999])
    records = batch_records(task, batch)
    assert all(set(record) == SUB_KEYS for record in records)
    first = records[0]
    assert first["question"] == "10000-00001=" and first["answer"] == "+009999" and first["op"] == "sub"
    assert first["base_diff"] == [9, 0, 0, 0, 1]
    assert first["make_borrow"] == [True, False, False, False, False]
    assert first["make_zero"] == [False, True, True, True, False]
    assert first["use_borrow"] == [False, True, True, True, True]
    assert first["use_zero"] == [False, True, True, True, False]
    assert first["category"] == "BorrowCascade" and first["borrow_cascade_depth"] == 3
    # M (or N for negative answers), then 0 no borrow, 1 a borrow, k+1 a cascade of depth k
    assert [r["class"] for r in records] == ["M4", "N4", "M0", "M1", "M0"]
    assert [r["category"] for r in records] == ["BorrowCascade", "BorrowCascade", "BaseDiff", "UseBorrow", "BaseDiff"]
    assert records[1]["answer"] == "-009999"
    assert json.loads(json.dumps(records)) == records  # JSON-ready as promised
    assert question_class(2, 1, True) == "N2" and question_class(0, 0, False) == "M0"


def test_mixed_records_use_each_operations_names() -> None:
    task = MixedTask(3)
    batch = task.batch_from_ints([445, 100], [555, 1], ["add", "sub"])
    add, sub = batch_records(task, batch)
    assert set(add) == ADD_KEYS and set(sub) == SUB_KEYS
    assert add["question"] == "445+555=" and add["answer"] == "+1000" and add["op"] == "add"
    assert add["category"] == "UseSum9" and add["cascade_depth"] == 2 and add["base_add"] == [10, 9, 9]
    assert sub["class"] == "M2" and sub["answer"] == "+0099"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ARITHLENS), *args], capture_output=True, text=True, timeout=120)


def test_cli_data_sub() -> None:
    done = run_cli("data", "--op", "sub", "--count", "5", "--digits", "3")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 5
    task = SubtractionTask(3)
    for record in records:
        assert set(record) == SUB_KEYS and record["op"] == "sub"
        match = re.fullmatch(r"(\d{3})-(\d{3})=", record["question"])
        assert match is not None, record["question"]
        x, y = int(match.group(1)), int(match.group(2))
        ref = reference_sub(x, y, 3)
        assert record["answer"] == ref["answer"]
        assert record["base_diff"] == ref["base_diff"] and record["use_zero"] == ref["use_zero"]
        assert record["make_borrow"] == ref["make_borrow"] and record["use_borrow"] == ref["use_borrow"]
        assert record["category"] == task.names.categories[ref["category"]]
        assert record["class"] == question_class(ref["category"], ref["depth"], x < y)


def test_cli_data_unknown_op_is_one_line() -> None:
    done = run_cli("data", "--op", "mul")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert "mul" in lines[0]
