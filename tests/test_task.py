"""The addition task: labels against Python integers, encoding, generation and enrichment."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arithlens.errors import ArithlensError
from arithlens.task import AdditionTask, QuestionCategory


def reference_labels(x: int, y: int, n: int) -> dict:
    """Sub-task labels straight from Python integer arithmetic, digit by digit."""
    xd = [(x // 10**d) % 10 for d in range(n)]
    yd = [(y // 10**d) % 10 for d in range(n)]
    base_add = [a + b for a, b in zip(xd, yd)]
    # carry into digit d is whether the lower d digits overflow
    use_carry1 = [(x % 10**d) + (y % 10**d) >= 10**d for d in range(n)]
    make_carry1 = [(x % 10 ** (d + 1)) + (y % 10 ** (d + 1)) >= 10 ** (d + 1) for d in range(n)]
    make_sum9 = [b == 9 for b in base_add]
    use_sum9 = [s and c for s, c in zip(make_sum9, use_carry1)]
    depth = run = 0
    for flag in use_sum9:
        run = run + 1 if flag else 0
        depth = max(depth, run)
    category = 2 if any(use_sum9) else 1 if any(use_carry1) else 0
    return dict(base_add=base_add, use_carry1=use_carry1, make_carry1=make_carry1, make_sum9=make_sum9,
                use_sum9=use_sum9, depth=depth, category=category, answer=str(x + y).zfill(n + 1))


def check_against_reference(task: AdditionTask, xs: list[int], ys: list[int]) -> None:
    batch = task.batch_from_ints(xs, ys)
    n = task.n_digits
    answers = task.answers(batch)
    for i, (x, y) in enumerate(zip(xs, ys)):
        ref = reference_labels(x, y, n)
        assert answers[i] == ref["answer"]
        assert batch.base_add[i].tolist() == ref["base_add"]
        assert batch.use_carry1[i].tolist() == ref["use_carry1"]
        assert batch.make_carry1[i].tolist() == ref["make_carry1"]
        assert batch.make_sum9[i].tolist() == ref["make_sum9"]
        assert batch.use_sum9[i].tolist() == ref["use_sum9"]
        assert int(batch.cascade_depth[i]) == ref["depth"]
        assert int(batch.category[i]) == ref["category"]


def test_labels_exhaustive_two_digits() -> None:
    task = AdditionTask(2)
    pairs = [(x, y) for x in range(100) for y in range(100)]
    check_against_reference(task, [p[0] for p in pairs], [p[1] for p in pairs])


@pytest.mark.parametrize("n_digits", [5, 7])
def test_labels_random_questions(n_digits: int) -> None:
    rng = random.Random(n_digits)
    xs = [rng.randrange(10**n_digits) for _ in range(3000)]
    ys = [rng.randrange(10**n_digits) for _ in range(3000)]
    check_against_reference(AdditionTask(n_digits), xs, ys)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, 10**n - 1), st.integers(0, 10**n - 1))))
def test_labels_property(case: tuple[int, int, int]) -> None:
    n, x, y = case
    check_against_reference(AdditionTask(n), [x], [y])


def test_published_cascade_examples() -> None:
    task = AdditionTask(3)
    batch = task.batch_from_ints([445], [555])
    assert int(batch.cascade_depth[0]) == 2
    assert int(batch.category[0]) == QuestionCategory.USE_SUM9
    task5 = AdditionTask(5)
    batch5 = task5.batch_from_ints([6665], [3335])
    assert task5.decode(batch5.tokens) == ["06665+03335=010000"]
    assert int(batch5.cascade_depth[0]) == 3


def test_generated_tokens_layout_and_answers() -> None:
    task = AdditionTask(5)
    batch = task.generate(500, torch.Generator().manual_seed(0))
    assert batch.tokens.shape == (500, 18)
    assert (batch.tokens[:, 5] == 10).all() and (batch.tokens[:, 11] == 11).all()
    for text in task.decode(batch.tokens):
        x, rest = text.split("+")
        y, answer = rest.split("=")
        assert int(x) + int(y) == int(answer) and len(answer) == 6


def test_generation_is_seeded() -> None:
    task = AdditionTask(5)
    a = task.generate(64, torch.Generator().manual_seed(7))
    b = task.generate(64, torch.Generator().manual_seed(7))
    c = task.generate(64, torch.Generator().manual_seed(8))
    assert torch.equal(a.tokens, b.tokens)
    assert not torch.equal(a.tokens, c.tokens)


def test_cascade_rarity_and_enrichment() -> None:
    task = AdditionTask(5)
    uniform = task.generate(200_000, torch.Generator().manual_seed(1))
    share_deep = (uniform.cascade_depth >= 2).float().mean().item()
    assert 0.010 < share_deep < 0.018  # "about 1.4% of 5-digit questions"
    enriched = task.generate(200_000, torch.Generator().manual_seed(1), enrich_fraction=0.4, enrich_sum9_prob=0.4)
    assert (enriched.cascade_depth >= 2).float().mean().item() > 2 * share_deep
    assert enriched.make_sum9.float().mean().item() > uniform.make_sum9.float().mean().item() + 0.1


def test_encode_decode_round_trip() -> None:
    task = AdditionTask(5)
    tokens = task.encode(["12345+67890=", "12345+67890=080235", " 00001 + 99999 = "])
    assert task.decode(tokens) == ["12345+67890=080235", "12345+67890=080235", "00001+99999=100000"]
    assert tokens.dtype == torch.long and tokens.shape == (3, 18)
    assert task.decode(tokens[0]) == ["12345+67890=080235"]


@pytest.mark.parametrize("bad", ["1234+67890=", "12345-67890=", "12345+67890", "abcde+12345=", "12345+67890=12", ""])
def test_encode_rejects_malformed(bad: str) -> None:
    with pytest.raises(ArithlensError, match="malformed question"):
        AdditionTask(5).encode([bad])


def test_position_names() -> None:
    task = AdditionTask(5)
    names = task.position_names()
    assert names[:6] == ["D4", "D3", "D2", "D1", "D0", "+"]
    assert names[11] == "=" and names[12] == "A5" and names[-1] == "A0"
    assert task.answer_logit_positions == [11, 12, 13, 14, 15, 16]
    assert task.logit_position_for_answer_digit(0) == 16


@pytest.mark.parametrize("bad", [0, -1, 31, 2.5])
def test_bad_digit_count(bad) -> None:
    with pytest.raises(ArithlensError):
        AdditionTask(bad)
