"""Accuracy, loss and failures of a model on a question set, up to millions of questions.

Evaluation is teacher-forced through `AnswerForward` (answer positions only,
batched, no grad). On a CPU it runs cache-sized chunks on one single-threaded
worker per core (see `arithlens.scoring.Scorer`); a 5-digit bundled model then runs near the
CPU's matmul limit (benchmarks/eval_speed.py measures it). `exhaustive_accuracy`
checks every question of a small model. A question is correct when every answer digit's argmax over
the digit tokens 0-9 (and the sign's over + and -) is right; that equals greedy generation's verdict, since
generation sees the same prefix up to its first wrong digit. Losses are the
training loss: float64 log-softmax over all 12 logits.

`failure_table` lists wrong answers with the sub-task labels of their digits;
`failure_patterns` groups the wrong digits by the state of the digit pairs below
them (MakeCarry1 / MakeSum9 / neither) against how often each state occurs, which
is where a 1-layer model's failures show their cause (most sit above a MakeSum9 pair).

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
from arithlens.operations import OPERATIONS
from arithlens.task import OPERATION_IDS, AdditionBatch, ArithmeticTask, task_for

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

    def __repr__(self) -> str:
        # The generated dataclass repr printed every tensor: kilobytes for one look at a result.
        return (f"EvalResult({len(self):,} questions, {self.batch.n_digits} digits: "
                f"accuracy {100 * self.accuracy:.4f}%, {self.failures:,} wrong, loss {self.loss:.4g})")


def check_batch(model: TransformerBridge, batch: AdditionBatch) -> int:
    """The model's digit count, after checking the batch suits it."""
    config = model_config_of(model)
    n = config.n_digits
    if len(batch) == 0:
        raise ArithlensError("the question set is empty; pass at least one question")
    task = task_for(config)
    if batch.n_digits != n or batch.tokens.shape[1] != task.seq_len:
        raise ArithlensError(
            f"the questions ({batch.n_digits} digits, {batch.tokens.shape[1]} tokens) do not suit the model: "
            f"{task.describe_format()}; build them with arithlens.task_for(model.arithlens_config)"
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
    task = task_for(model_config_of(model))
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
    views = task_for(model_config_of(model)).views()  # a mixed model: every question of each operation
    block = GENERATE_BLOCK
    blocks = (view.every_question(start, min(start + block, total)) for view in views
              for start in range(0, total, block))
    return _score_blocks(model, blocks, total * len(views), f"all {total * len(views):,} questions", chunk_size,
                         progress)


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
    present = [key for key, index in OPERATION_IDS.items() if bool((batch.op == index).any())] or ["add"]
    for key in present:  # a mixed model's groups are per operation, named "add: UseSum9"
        rows = batch.op == OPERATION_IDS[key]
        prefix = f"{key}: " if len(present) > 1 else ""
        if len(present) > 1:
            groups.append(("op", key, result.correct[rows]))
        for category, label in enumerate(OPERATIONS[key].names.categories):
            groups.append(("category", prefix + label, result.correct[rows & (batch.category == category)]))
        for depth in range(n):
            groups.append(("cascade_depth", prefix + str(depth), result.correct[rows & (batch.cascade_depth == depth)]))
    names = ["sign"] * (result.correct_digits.shape[1] - n - 1) + [f"A{d}" for d in range(n, -1, -1)]
    for column, name in enumerate(names):
        groups.append(("answer_digit", name, result.correct_digits[:, column]))
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


PAIR_STATES = ("MakeCarry1", "MakeSum9", "neither")  # addition's tri-state of a digit pair (as analysis.pca names it)
NO_PAIR = "none"  # below A0 (and below A1, two pairs down) there is no digit pair
# Each operation's state names are its own (MakeBorrow, MakeZero for subtraction), so one map phrases them all.
_STATE_PHRASES = {state: phrase for op in OPERATIONS.values()
                  for state, phrase in zip(op.names.pair_states, op.names.pair_phrases)}
PATTERN_GROUPS = ("pair d-1", "pairs d-1, d-2")
PATTERN_MIN_RATIO = 1.5  # below this, a state's excess among the wrong digits is not worth a headline
FAILURE_PATTERN_COLUMNS = ["answer_digit", "below", "state", "wrong_digits", "wrong_share", "base_rate", "ratio"]


def pair_states(batch: AdditionBatch) -> torch.Tensor:
    """The tri-state of every digit pair, [batch, n] units first, as indices into the operation's
    `SubtaskNames.pair_states`.

    By the pair alone, as the published work and `analysis.pca` define it: in addition x_d + y_d >= 10
    makes a carry by itself (MakeCarry1), 9 passes one on (MakeSum9), <= 8 neither; in subtraction
    a_d < b_d borrows (MakeBorrow), a_d == b_d passes a borrow on (MakeZero). A carry coming in does not count.
    """
    return torch.where(batch.base_carry, 0, torch.where(batch.make_pass, 1, 2))


def _state_below(states: torch.Tensor, digit: int, offset: int) -> torch.Tensor:
    """[batch] state index of pair digit-offset under answer digit A`digit`; 3 (NO_PAIR) where there is none."""
    pair = digit - offset
    if pair < 0:
        return torch.full((states.shape[0],), len(PAIR_STATES), dtype=torch.long)
    return states[:, pair]


def _pairs_below(states: torch.Tensor, wrong: torch.Tensor, state_names: tuple[str, ...]) -> list[str]:
    """For every row, each wrong answer digit with the two pairs below it: "A3: D2 MakeSum9, D1 MakeCarry1"."""
    n = states.shape[1]
    wrong = wrong[:, -(n + 1):]  # a sign's column has no pair below it
    texts = []
    for pair_row, wrong_row in zip(states.tolist(), wrong.tolist()):
        parts = []
        for column, is_wrong in enumerate(wrong_row):
            if not is_wrong:
                continue
            digit = n - column
            below = [f"D{p} {state_names[pair_row[p]]}" for p in (digit - 1, digit - 2) if p >= 0]
            parts.append(f"A{digit}: " + (", ".join(below) if below else NO_PAIR))
        texts.append("; ".join(parts))
    return texts


def failure_table(result: EvalResult, task: ArithmeticTask, limit: int | None = None) -> pd.DataFrame:
    """One row per wrongly answered question (the first `limit` of them).

    Columns [question, expected, predicted, wrong_digits, category, cascade_depth,
    use_carry1, use_sum9, make_sum9, make_carry1, pairs_below], under the names of the task's
    operation (borrow_cascade_depth, use_borrow, use_zero, make_zero, make_borrow). The label columns list
    digits like "D3,D1" ("" for none); make_carry1 is the carry out of a digit, cascades
    included. pairs_below gives each wrong digit with the tri-state of the two pairs
    below it, e.g. "A3: D2 MakeSum9, D1 MakeCarry1; A0: none".
    """
    if task.n_digits != result.batch.n_digits:
        raise ArithlensError(f"the task has {task.n_digits} digits but the result has {result.batch.n_digits}")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ArithlensError(f"limit must be None or an integer >= 0, got {limit!r}")
    index = torch.nonzero(~result.correct).squeeze(1)[:limit]
    failed = result.batch.select(index)
    names = task.answer_token_names()
    labels = task.names
    wrong = ~result.correct_digits[index]
    return pd.DataFrame({
        "question": task.questions(failed),
        "expected": task.answers(failed),
        "predicted": task.decode(result.predicted[index]) if len(index) else [],
        "wrong_digits": [",".join(name for name, bad in zip(names, row) if bad) for row in wrong.tolist()],
        "category": [labels.categories[c] for c in failed.category.tolist()],
        labels.depth_key: failed.cascade_depth.tolist(),
        labels.use_carry_key: _digit_list(failed.use_carry),
        labels.use_pass_key: _digit_list(failed.use_pass),
        labels.make_pass_key: _digit_list(failed.make_pass),
        labels.make_carry_key: _digit_list(failed.make_carry),
        "pairs_below": _pairs_below(pair_states(failed), wrong, labels.pair_states),
    })


def failure_patterns(result: EvalResult, task: ArithmeticTask) -> pd.DataFrame:
    """What the wrong digits have in common: the state of the digit pairs below them, against base rates.

    Every wrong answer digit A_d of every question counts once, grouped by the tri-state
    (PAIR_STATES, or "none" below A0) of the pair directly below ("pair d-1") and of the two
    pairs below ("pairs d-1, d-2", state like "MakeSum9, MakeCarry1"). Columns
    [answer_digit, below, state, wrong_digits, wrong_share, base_rate, ratio]:

    - per answer digit (rows "A5" .. "A0", digits with a wrong answer only): wrong_share is the
      share of that digit's wrong answers in the state; base_rate how often the state occurs
      under that digit across all of the result's questions; ratio = wrong_share / base_rate;
    - "all" rows pool the digits: wrong_share is over all wrong digits, and base_rate averages the
      digits' base rates weighted by their share of the wrong digits, so a digit that fails
      often does not pass for a state that does (and "none" gets ratio 1).

    Rows where the state neither occurs nor fails are left out; "all" rows come first, then the
    digits An .. A0, each group by wrong_digits, most first. An empty table when nothing is wrong.
    """
    if task.n_digits != result.batch.n_digits:
        raise ArithlensError(f"the task has {task.n_digits} digits but the result has {result.batch.n_digits}")
    n = task.n_digits
    state_names = (*task.names.pair_states, NO_PAIR)  # index 3 = NO_PAIR
    kinds = len(state_names)
    states = pair_states(result.batch)
    wrong = ~result.correct_digits[:, -(n + 1):]  # [batch, n+1], An .. A0 (a sign has no pair below)
    total = len(result)
    # per group: [n+1 digits (units first), codes] counts of wrong digits and of all questions
    counts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for group, depth in zip(PATTERN_GROUPS, (1, 2)):
        size = kinds**depth
        wrong_counts = torch.zeros(n + 1, size, dtype=torch.long)
        base_counts = torch.zeros(n + 1, size, dtype=torch.long)
        for digit in range(n + 1):
            code = _state_below(states, digit, 1)
            if depth == 2:
                code = code * kinds + _state_below(states, digit, 2)
            base_counts[digit] = torch.bincount(code, minlength=size)
            wrong_counts[digit] = torch.bincount(code[wrong[:, n - digit]], minlength=size)
        counts[group] = (wrong_counts, base_counts)

    wrong_per_digit = wrong.sum(dim=0).flip(0).double()  # [n+1], units first
    wrong_total = float(wrong_per_digit.sum())
    if wrong_total == 0:
        return pd.DataFrame(columns=FAILURE_PATTERN_COLUMNS)
    pooled: list[dict[str, str | int | float]] = []
    by_digit: dict[int, list[dict[str, str | int | float]]] = {d: [] for d in range(n, -1, -1)}
    for group, (wrong_counts, base_counts) in counts.items():
        base_rates = base_counts.double() / total  # [n+1, codes]
        weights = wrong_per_digit / wrong_total
        pooled += _pattern_rows("all", group, wrong_counts.sum(dim=0), wrong_counts.sum(dim=0).double() / wrong_total,
                                weights @ base_rates, state_names)
        for digit in by_digit:
            if wrong_per_digit[digit] > 0:
                by_digit[digit] += _pattern_rows(f"A{digit}", group, wrong_counts[digit],
                                                 wrong_counts[digit].double() / wrong_per_digit[digit],
                                                 base_rates[digit], state_names)
    return pd.DataFrame([*pooled, *(row for rows in by_digit.values() for row in rows)],
                        columns=FAILURE_PATTERN_COLUMNS)


def _pattern_rows(digit: str, group: str, wrong: torch.Tensor, share: torch.Tensor, base: torch.Tensor,
                  state_names: tuple[str, ...]) -> list[dict[str, str | int | float]]:
    """The rows of one (answer digit, grouping): codes that occur or fail, most wrong digits first."""
    kinds = len(state_names)
    rows = []
    for code in sorted(range(len(wrong)), key=lambda c: (-int(wrong[c]), -float(base[c]))):
        if int(wrong[code]) == 0 and float(base[code]) == 0.0:
            continue
        first, second = divmod(code, kinds)
        state = state_names[code] if len(wrong) == kinds else f"{state_names[first]}, {state_names[second]}"
        rate = float(base[code])
        rows.append({"answer_digit": digit, "below": group, "state": state, "wrong_digits": int(wrong[code]),
                     "wrong_share": float(share[code]), "base_rate": rate,
                     "ratio": float(share[code]) / rate if rate > 0 else float("nan")})
    return rows


def _percent(share: float) -> str:
    """51%, or 0.45% for shares under 1% (which would round to a misleading 0%)."""
    return f"{100 * share:.0f}%" if share >= 0.01 else f"{100 * share:.2g}%"


def failure_pattern_summary(patterns: pd.DataFrame) -> str:
    """One sentence on the most over-represented state below the wrong digits, from `failure_patterns`.

    The state of the pair directly below whose share of the wrong digits most exceeds its base
    rate; when even that one is under PATTERN_MIN_RATIO times its base rate, a sentence saying so.

    E.g. "51% of wrong digits (180 of 353) sit above a pair summing to 9 (base rate 10%)."
    """
    if patterns.empty:
        return "No wrong digits."
    pooled = patterns[(patterns["answer_digit"] == "all") & (patterns["below"] == PATTERN_GROUPS[0])]
    states = pooled[pooled["state"].isin(_STATE_PHRASES)]
    excess = states["wrong_share"] - states["base_rate"]
    best = states.loc[excess.idxmax()] if len(states) else None
    if best is None or best.ratio < PATTERN_MIN_RATIO:
        closest = "" if best is None else f" (at most {best.ratio:.2f} times, above {_STATE_PHRASES[best.state]})"
        return f"Wrong digits sit above each kind of digit pair about as often as that pair occurs{closest}."
    return (f"{_percent(best.wrong_share)} of wrong digits ({int(best.wrong_digits):,} of "
            f"{int(pooled['wrong_digits'].sum()):,}) sit above {_STATE_PHRASES[best.state]} "
            f"(base rate {_percent(best.base_rate)}).")


def failure_pattern_digest(patterns: pd.DataFrame, top: int = 8) -> dict[str, object]:
    """For summary.json: the sentence of `failure_pattern_summary` and the first `top` rows (the pooled ones)."""
    return {"summary": failure_pattern_summary(patterns), "top": patterns.head(top).to_dict("records")}
