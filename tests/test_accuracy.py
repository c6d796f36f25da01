"""Accuracy, nines and failure tables, against the bridge itself and greedy generation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from analysis_fixtures import all_questions, random_questions, tiny_model, trained_one_digit_model
from arithlens.analysis import accuracy
from arithlens.analysis.accuracy import accuracy_table, evaluate, failure_table, nines, random_accuracy
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
                                      "cascade_depth", "use_carry1", "use_sum9"]
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
