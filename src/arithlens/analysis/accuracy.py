"""Accuracy, loss and failures of a model on a question set, up to millions of questions.

Evaluation is teacher-forced through `AnswerForward` (answer positions only,
batched, no grad). On a CPU it runs cache-sized chunks on one single-threaded
worker per core (see `arithlens.scoring.Scorer`); a 5-digit bundled model then runs near the
CPU's matmul limit (benchmarks/eval_speed.py measures it). `exhaustive_accuracy`
checks every question of a small model. A question is correct when every answer digit's argmax over
the digit tokens 0-9 is right; that equals greedy generation's verdict, since
generation sees the same prefix up to its first wrong digit. Losses are the
training loss: float64 log-softmax over all 12 logits.

"Nines" follow the published convention: on 1M questions 0-1 failures is six
nines and 2-10 is five, i.e. the largest k with max(failures, 1) * 10^k <= total.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformer_lens.model_bridge import TransformerBridge

from arithlens.errors import ArithlensError
from arithlens.model import model_config_of
from arithlens.scoring import Scorer
from arithlens.task import AdditionBatch, AdditionTask, QuestionCategory

GENERATE_BLOCK = 65536  # random_accuracy draws questions in blocks this size, so a seed means one set
EXHAUSTIVE_MAX_DIGITS = 3  # every 3-digit question is 10^6 of them; 4 digits would be 10^8


@dataclass
class EvalResult:
    """Per-question, per-answer-digit outcome; digit columns run An .. A0."""

    batch: AdditionBatch
    predicted: torch.Tensor  # [batch, n+1] long
    correct_digits: torch.Tensor  # [batch, n+1] bool
    correct: torch.Tensor  # [batch] bool
    loss_per_digit: torch.Tensor  # [batch, n+1] float64

    def __len__(self) -> int:
        return len(self.batch)

    @property
    def expected(self) -> torch.Tensor:
        """The true answer digits [batch, n+1], An .. A0."""
        return self.batch.tokens[:, 2 * self.batch.n_digits + 2 :]

    @property
    def accuracy(self) -> float:
        return float(self.correct.double().mean())

    @property
    def failures(self) -> int:
        return int((~self.correct).sum())

    @property
    def loss(self) -> float:
        """Mean loss over questions and answer digits."""
        return float(self.loss_per_digit.mean())


def check_batch(model: TransformerBridge, batch: AdditionBatch) -> int:
    """The model's digit count, after checking the batch suits it."""
    n = model_config_of(model).n_digits
    if len(batch) == 0:
        raise ArithlensError("the question set is empty; pass at least one question")
    if batch.n_digits != n:
        raise ArithlensError(
            f"the model adds {n}-digit numbers but the questions have {batch.n_digits} digits; "
            f"build them with AdditionTask({n})"
        )
    return n


def check_chunk_size(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ArithlensError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")


@contextmanager
def progress_bar(total: int, description: str, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr over `total` items; yields `advance(k)`. A no-op when disabled.

    Stderr keeps stdout for results, e.g. `arithlens eval --json`.
    """
    if not enabled:
        yield lambda k: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task_id = bar.add_task(description, total=total)
        yield lambda k: bar.advance(task_id, k)


def _result(batch: AdditionBatch, loss: torch.Tensor, predicted: torch.Tensor) -> EvalResult:
    batch = batch.to("cpu")
    correct_digits = predicted == batch.tokens[:, 2 * batch.n_digits + 2 :]  # [batch, n+1]
    return EvalResult(batch=batch, predicted=predicted, correct_digits=correct_digits,
                      correct=correct_digits.all(dim=1), loss_per_digit=loss)


def _score_blocks(model: TransformerBridge, blocks: Iterable[AdditionBatch], total: int, description: str,
                  chunk_size: int | None, progress: bool) -> EvalResult:
    """One EvalResult for all `blocks`; a generator of blocks is drawn lazily, one block at a time."""
    batches, losses, predictions = [], [], []
    with Scorer(model, chunk_size) as scorer, progress_bar(total, description, progress) as advance:
        for batch in blocks:
            loss, predicted = scorer.score(batch.tokens, advance)
            batches.append(batch.to("cpu"))
            losses.append(loss)
            predictions.append(predicted)
    if len(batches) == 1:
        return _result(batches[0], losses[0], predictions[0])
    return _result(AdditionBatch.concat(batches), torch.cat(losses), torch.cat(predictions))


def evaluate(model: TransformerBridge, batch: AdditionBatch, *, chunk_size: int | None = None,
             progress: bool = False) -> EvalResult:
    """Teacher-forced predictions, correctness and losses for every question in `batch`.

    `chunk_size` questions go through the model at a time; None picks a cache-sized
    chunk on a CPU (see `arithlens.scoring.default_chunk_size`). It changes speed, never results.
    """
    check_batch(model, batch)
    if chunk_size is not None:  # None: pick a cache-sized chunk
        check_chunk_size(chunk_size)
    return _score_blocks(model, [batch], len(batch), "evaluating", chunk_size, progress)


def random_accuracy(model: TransformerBridge, count: int, seed: int = 0, *, chunk_size: int | None = None,
                    progress: bool = False) -> EvalResult:
    """Evaluate `count` uniformly random questions (fine up to millions), drawn from `seed`."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ArithlensError(f"count must be an integer >= 1, got {count!r}")
    if chunk_size is not None:  # None: pick a cache-sized chunk
        check_chunk_size(chunk_size)
    task = AdditionTask(model_config_of(model).n_digits)
    generator = torch.Generator().manual_seed(seed)
    block = GENERATE_BLOCK  # read once: tests shrink it
    blocks = (task.generate(min(block, count - start), generator) for start in range(0, count, block))
    return _score_blocks(model, blocks, count, f"{count:,} random questions", chunk_size, progress)


def exhaustive_question_count(n_digits: int) -> int:
    """How many questions an `n_digits` model has: every pair x, y, i.e. 10^(2n)."""
    return 10 ** (2 * n_digits)


def exhaustive_accuracy(model: TransformerBridge, *, chunk_size: int | None = None,
                        progress: bool = False) -> EvalResult:
    """Evaluate every question of the model (all 10^(2n) pairs, x-major): a proof, not a sample.

    Only for models of at most `EXHAUSTIVE_MAX_DIGITS` digits (10^6 questions at 3).
    """
    if chunk_size is not None:  # None: pick a cache-sized chunk
        check_chunk_size(chunk_size)
    n = model_config_of(model).n_digits
    total = exhaustive_question_count(n)
    if n > EXHAUSTIVE_MAX_DIGITS:
        raise ArithlensError(
            f"checking every question of a {n}-digit model means {total:,} questions; that is for models of "
            f"at most {EXHAUSTIVE_MAX_DIGITS} digits: use random_accuracy for a sample"
        )
    task = AdditionTask(n)
    block = GENERATE_BLOCK
    blocks = (task.every_question(start, min(start + block, total)) for start in range(0, total, block))
    return _score_blocks(model, blocks, total, f"all {total:,} questions", chunk_size, progress)


def nines(failures: int, total: int) -> float:
    """How many nines of accuracy `failures` out of `total` earns (1 in 1M or fewer = 6)."""
    if not isinstance(total, int) or total < 1:
        raise ArithlensError(f"total must be a positive number of questions, got {total!r}")
    if not isinstance(failures, int) or not 0 <= failures <= total:
        raise ArithlensError(f"failures must be an integer from 0 to total ({total}), got {failures!r}")
    # Integer arithmetic: log10 of exact powers of ten is not exact in floating point.
    counted = max(failures, 1)
    k = 0
    while counted * 10 ** (k + 1) <= total:
        k += 1
    return float(k)


def accuracy_table(result: EvalResult) -> pd.DataFrame:
    """Accuracy overall, by category, by cascade depth and by answer digit.

    Columns [group_kind, group, questions, correct, accuracy, failures, nines];
    groups that hold no questions show NaN accuracy and nines.
    """
    batch = result.batch
    n = batch.n_digits
    groups: list[tuple[str, str, torch.Tensor]] = [("overall", "all", result.correct)]
    for category in QuestionCategory:
        groups.append(("category", category.label, result.correct[batch.category == int(category)]))
    for depth in range(n):
        groups.append(("cascade_depth", str(depth), result.correct[batch.cascade_depth == depth]))
    for column, digit in enumerate(range(n, -1, -1)):
        groups.append(("answer_digit", f"A{digit}", result.correct_digits[:, column]))
    rows = []
    for kind, group, outcome in groups:
        questions = int(outcome.numel())
        correct = int(outcome.sum())
        rows.append({
            "group_kind": kind, "group": group, "questions": questions, "correct": correct,
            "accuracy": correct / questions if questions else float("nan"),
            "failures": questions - correct,
            "nines": nines(questions - correct, questions) if questions else float("nan"),
        })
    return pd.DataFrame(rows)


def accuracy_records(table: pd.DataFrame) -> list[dict[str, str | int | float | None]]:
    """`accuracy_table` rows as plain JSON-ready dicts: Python ints and floats, NaN as None."""
    records: list[dict[str, str | int | float | None]] = []
    for row in table.to_dict("records"):
        record: dict[str, str | int | float | None] = {}
        for key, value in row.items():
            if isinstance(value, str):
                record[key] = value
            elif key in ("questions", "correct", "failures"):
                record[key] = int(value)
            else:
                number = float(value)
                record[key] = None if math.isnan(number) else number  # JSON has no NaN
        records.append(record)
    return records


def _digit_list(flags: torch.Tensor) -> list[str]:
    """Per-digit flags [batch, n] (units first) as strings like "D3,D1"."""
    n = flags.shape[1]
    return [",".join(f"D{d}" for d in range(n - 1, -1, -1) if row[d]) for row in flags.tolist()]


def failure_table(result: EvalResult, task: AdditionTask, limit: int | None = None) -> pd.DataFrame:
    """One row per wrongly answered question (the first `limit` of them).

    Columns [question, expected, predicted, wrong_digits, category, cascade_depth,
    use_carry1, use_sum9]; the label columns list digits like "D3,D1" ("" for none).
    """
    if task.n_digits != result.batch.n_digits:
        raise ArithlensError(f"the task has {task.n_digits} digits but the result has {result.batch.n_digits}")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ArithlensError(f"limit must be None or an integer >= 0, got {limit!r}")
    index = torch.nonzero(~result.correct).squeeze(1)[:limit]
    failed = result.batch.select(index)
    names = task.answer_digit_names()
    wrong = result.correct_digits[index]
    return pd.DataFrame({
        "question": task.questions(failed),
        "expected": task.answers(failed),
        "predicted": ["".join(str(d) for d in row) for row in result.predicted[index].tolist()],
        "wrong_digits": [",".join(name for name, ok in zip(names, row) if not ok) for row in wrong.tolist()],
        "category": [QuestionCategory(c).label for c in failed.category.tolist()],
        "cascade_depth": failed.cascade_depth.tolist(),
        "use_carry1": _digit_list(failed.use_carry1),
        "use_sum9": _digit_list(failed.use_sum9),
    })
