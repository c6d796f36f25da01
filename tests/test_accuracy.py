"""Accuracy, nines and failure tables, against the bridge itself and greedy generation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from analysis_fixtures import all_questions, random_questions, tiny_model, trained_one_digit_model
from arithlens.analysis import accuracy
from arithlens.analysis.accuracy import (
    PAIR_STATES,
    EvalResult,
    accuracy_table,
    evaluate,
    failure_pattern_summary,
    failure_patterns,
    failure_table,
    nines,
    random_accuracy,
)
from arithlens.errors import ArithlensError
from arithlens.model import predicted_digits
from arithlens.task import AdditionTask


@pytest.mark.parametrize(
    ("failures", "total", "expected"),
    [(0, 10**6, 6), (1, 10**6, 6), (2, 10**6, 5), (10, 10**6, 5), (11, 10**6, 4), (100, 10**6, 4),
     (101, 10**6, 3), (0, 1000, 3), (1, 1000, 3), (2, 1000, 2), (999, 1000, 0), (1000, 1000, 0), (0, 5000, 3)],
)
def test_nines_published_convention(failures: int, total: int, expected: int) -> None:
    assert nines(failures, total) == expected


@pytest.mark.parametrize(("failures", "total"), [(0, 0), (-1, 10), (11, 10), (1.5, 10)])
def test_nines_bad_input(failures, total) -> None:
    with pytest.raises(ArithlensError):
        nines(failures, total)


def greedy_answers(model, task: AdditionTask, batch) -> torch.Tensor:
    """Generate the answer one digit at a time from the question alone, [batch, n+1]."""
    tokens = batch.tokens.clone()
    start = task.question_len
    tokens[:, start:] = 0
    with torch.no_grad():
        for position in range(start, task.seq_len):
            tokens[:, position] = predicted_digits(model(tokens)[:, position - 1])
    return tokens[:, start:]


def test_evaluate_matches_bridge_and_generation() -> None:
    model = tiny_model(n_digits=2, dtype=torch.float64)
    task = AdditionTask(2)
    batch = random_questions(2, 300)
    result = evaluate(model, batch, chunk_size=64)
    with torch.no_grad():
        logits = model(batch.tokens)[:, 5:8]  # positions 2n+1 .. 3n+1
    assert torch.equal(result.predicted, predicted_digits(logits))
    expected_loss = F.cross_entropy(logits.flatten(0, 1), batch.tokens[:, 6:].flatten(), reduction="none")
    torch.testing.assert_close(result.loss_per_digit, expected_loss.view(300, 3))
    assert result.loss_per_digit.dtype == torch.float64
    generated = greedy_answers(model, task, batch)
    assert torch.equal(result.correct, (generated == batch.tokens[:, 6:]).all(dim=1))
    assert torch.equal(result.expected, batch.tokens[:, 6:])
    # chunking changes nothing
    whole = evaluate(model, batch)
    assert torch.equal(whole.predicted, result.predicted)


def test_trained_model_tables() -> None:
    model = trained_one_digit_model()
    result = evaluate(model, all_questions(1), progress=True)
    assert result.accuracy == 1.0 and result.failures == 0
    table = accuracy_table(result)
    assert list(table.columns) == ["group_kind", "group", "questions", "correct", "accuracy", "failures", "nines"]
    overall = table[table.group_kind == "overall"].iloc[0]
    assert (overall.questions, overall.correct, overall.nines) == (100, 100, 2.0)
    assert failure_table(result, AdditionTask(1)).empty


def test_accuracy_table_and_failures_of_untrained_model() -> None:
    model = tiny_model(n_digits=3)
    task = AdditionTask(3)
    batch = random_questions(3, 400, seed=5)
    result = evaluate(model, batch)
    table = accuracy_table(result)
    for kind in ("category", "cascade_depth"):
        rows = table[table.group_kind == kind]
        assert rows.questions.sum() == 400 and rows.correct.sum() == result.correct.sum()
    digits = table[table.group_kind == "answer_digit"]
    assert list(digits.group) == ["A3", "A2", "A1", "A0"]
    assert list(digits.correct) == result.correct_digits.sum(0).tolist()
    depth2 = table[(table.group_kind == "cascade_depth") & (table.group == "2")].iloc[0]
    assert depth2.questions == int((batch.cascade_depth == 2).sum())

    failures = failure_table(result, task)
    assert len(failures) == result.failures > 0
    assert list(failures.columns) == ["question", "expected", "predicted", "wrong_digits", "category",
                                      "cascade_depth", "use_carry1", "use_sum9", "make_sum9", "make_carry1",
                                      "pairs_below"]
    for row in failures.itertuples():
        x, y = int(row.question[:3]), int(row.question[4:7])
        assert int(row.expected) == x + y
        wrong = [f"A{3 - i}" for i, (a, b) in enumerate(zip(row.expected, row.predicted)) if a != b]
        assert row.wrong_digits == ",".join(wrong)
        carries = [f"D{d}" for d in (2, 1) if (x % 10**d + y % 10**d) >= 10**d]
        assert row.use_carry1 == ",".join(carries)
    assert len(failure_table(result, task, limit=3)) == 3


def test_random_accuracy_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model(n_digits=2)
    monkeypatch.setattr(accuracy, "GENERATE_BLOCK", 50)
    result = random_accuracy(model, 120, seed=4, chunk_size=32)
    assert len(result) == 120 and result.predicted.shape == (120, 3)
    generator = torch.Generator().manual_seed(4)
    task = AdditionTask(2)
    blocks = [task.generate(k, generator) for k in (50, 50, 20)]
    assert torch.equal(result.batch.tokens, torch.cat([b.tokens for b in blocks]))
    assert torch.equal(result.correct, evaluate(model, result.batch).correct)
    assert torch.equal(random_accuracy(model, 120, seed=4).batch.tokens, result.batch.tokens)


def test_bad_input_raises() -> None:
    model = tiny_model(n_digits=2)
    batch = random_questions(2, 10)
    with pytest.raises(ArithlensError, match="empty"):
        evaluate(model, batch.select(slice(0, 0)))
    with pytest.raises(ArithlensError, match="2-digit"):
        evaluate(model, random_questions(3, 10))
    with pytest.raises(ArithlensError, match="chunk_size"):
        evaluate(model, batch, chunk_size=0)
    with pytest.raises(ArithlensError, match="count"):
        random_accuracy(model, 0)
    with pytest.raises(ArithlensError, match="digits"):
        failure_table(evaluate(model, batch), AdditionTask(3))


def hand_result(task: AdditionTask, xs: list[int], ys: list[int], wrong: dict[int, list[int]]) -> EvalResult:
    """An EvalResult whose question i gets answer digits A_d, d in `wrong[i]`, off by one, the rest right."""
    batch = task.batch_from_ints(xs, ys)
    expected = batch.tokens[:, task.question_len :]
    predicted = expected.clone()
    for row, digits in wrong.items():
        for digit in digits:
            column = task.n_digits - digit
            predicted[row, column] = (predicted[row, column] + 1) % 10
    correct_digits = predicted == expected
    return EvalResult(batch=batch, predicted=predicted, correct_digits=correct_digits,
                      correct=correct_digits.all(dim=1), loss_per_digit=torch.zeros(len(xs), task.n_digits + 1,
                                                                                    dtype=torch.float64))


def operands(batch) -> tuple[list[int], list[int]]:
    """The integers x and y of every question of a 3-digit batch."""
    powers = torch.tensor([1, 10, 100])
    return ((batch.tokens[:, :3].flip(1) * powers).sum(1).tolist(),
            (batch.tokens[:, 4:7].flip(1) * powers).sum(1).tolist())


def test_failure_table_names_the_pairs_below_each_wrong_digit() -> None:
    task = AdditionTask(3)
    # 172 + 828 = 1000: D0 2+8 makes a carry, D1 7+2 and D2 1+8 sum to 9 and pass it on
    result = hand_result(task, [172, 111], [828, 111], {0: [2, 0]})
    row = failure_table(result, task).iloc[0]
    assert row.wrong_digits == "A2,A0"
    assert row.make_sum9 == "D2,D1"
    assert row.make_carry1 == "D2,D1,D0"  # the carry out of each digit, cascades included
    assert row.use_sum9 == "D2,D1"
    assert row.pairs_below == "A2: D1 MakeSum9, D0 MakeCarry1; A0: none"


def _reference_patterns(result: EvalResult) -> dict[tuple[str, str, str], tuple[int, float, float]]:
    """failure_patterns recomputed with plain loops: (digit, below, state) -> (wrong digits, share, base rate)."""
    n = result.batch.n_digits
    sums = result.batch.base_add.tolist()

    def state(row: int, pair: int) -> str:
        if pair < 0:
            return "none"
        total = sums[row][pair]
        return "MakeCarry1" if total >= 10 else "MakeSum9" if total == 9 else "neither"

    def states(row: int, digit: int) -> dict[str, str]:
        return {"pair d-1": state(row, digit - 1),
                "pairs d-1, d-2": f"{state(row, digit - 1)}, {state(row, digit - 2)}"}

    rows = range(len(result))
    wrong = [(i, d) for i in rows for d in range(n + 1) if not result.correct_digits[i, n - d]]
    out: dict[tuple[str, str, str], tuple[int, float, float]] = {}
    keys = {(below, s) for i in rows for d in range(n + 1) for below, s in states(i, d).items()}
    for below, s in keys:
        base = {d: sum(states(i, d)[below] == s for i in rows) / len(result) for d in range(n + 1)}
        hits = [(i, d) for i, d in wrong if states(i, d)[below] == s]
        weight = {d: sum(1 for _, e in wrong if e == d) / len(wrong) for d in range(n + 1)}
        out[("all", below, s)] = (len(hits), len(hits) / len(wrong), sum(weight[d] * base[d] for d in base))
        for d in range(n + 1):
            at_d = [i for i, e in wrong if e == d]
            if at_d:
                count = sum(1 for i in at_d if states(i, d)[below] == s)
                out[(f"A{d}", below, s)] = (count, count / len(at_d), base[d])
    return out


def test_failure_patterns_against_a_direct_count() -> None:
    task = AdditionTask(3)
    batch = task.generate(400, torch.Generator().manual_seed(2))
    rng = torch.Generator().manual_seed(3)
    # wrong digits mostly sit above a pair summing to 9, as in a real 1-layer model
    x, y = operands(batch)
    wrong: dict[int, list[int]] = {}
    for i in range(400):
        for d in range(4):
            above_sum9 = d >= 1 and bool(batch.make_sum9[i, d - 1])
            if float(torch.rand(1, generator=rng)) < (0.5 if above_sum9 else 0.03):
                wrong.setdefault(i, []).append(d)
    result = hand_result(task, x, y, wrong)
    table = failure_patterns(result, task)
    assert list(table.columns) == ["answer_digit", "below", "state", "wrong_digits", "wrong_share", "base_rate",
                                   "ratio"]
    reference = _reference_patterns(result)
    got = {(r.answer_digit, r.below, r.state): (r.wrong_digits, r.wrong_share, r.base_rate)
           for r in table.itertuples()}
    expected = {key: value for key, value in reference.items() if value[0] > 0 or value[2] > 0}
    assert got.keys() == expected.keys()
    for key, (count, share, base) in expected.items():
        assert got[key][0] == count, key
        assert got[key][1] == pytest.approx(share) and got[key][2] == pytest.approx(base), key
    assert (table.ratio == table.wrong_share / table.base_rate).all()
    for (digit, below), part in table.groupby(["answer_digit", "below"]):
        assert part.wrong_share.sum() == pytest.approx(1.0) and part.base_rate.sum() == pytest.approx(1.0)
    assert table.answer_digit.iloc[0] == "all"
    sum9 = table[(table.answer_digit == "all") & (table.below == "pair d-1") & (table.state == "MakeSum9")].iloc[0]
    sentence = failure_pattern_summary(table)
    assert sentence.startswith(f"{round(100 * sum9.wrong_share)}% of wrong digits")
    assert "summing to 9" in sentence and f"base rate {round(100 * sum9.base_rate)}%" in sentence


def test_failures_independent_of_the_pairs_below_make_no_headline() -> None:
    task = AdditionTask(3)
    batch = task.generate(600, torch.Generator().manual_seed(4))
    rng = torch.Generator().manual_seed(5)
    wrong = {i: [d for d in range(4) if float(torch.rand(1, generator=rng)) < 0.3] for i in range(600)}
    xs, ys = operands(batch)
    sentence = failure_pattern_summary(failure_patterns(hand_result(task, xs, ys, wrong), task))
    assert sentence.startswith("Wrong digits sit above each kind of digit pair about as often as that pair occurs")


def test_failure_patterns_of_a_perfect_model_are_empty() -> None:
    task = AdditionTask(2)
    result = hand_result(task, [12, 55], [34, 45], {})
    table = failure_patterns(result, task)
    assert table.empty and "ratio" in table.columns
    assert failure_pattern_summary(table) == "No wrong digits."


def test_pair_states_match_the_pca_tri_state() -> None:
    from arithlens.analysis.pca import TRI_STATES

    assert tuple(PAIR_STATES) == TRI_STATES


def test_eval_result_repr_is_short() -> None:
    task = AdditionTask(3)
    result = hand_result(task, list(range(500)), list(range(500)), {0: [1], 7: [0, 2]})
    text = repr(result)
    assert len(text) < 200 and "tensor" not in text
    assert "500 questions" in text and "99.6" in text and "2 wrong" in text
