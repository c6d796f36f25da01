"""Named, seeded subtraction question sets that each hold exactly the cases they claim.

Built like the addition sets (`question_sets`): column by column, units first, on the larger
operand a minus the smaller b, drawing each digit pair uniformly among the pairs a per-column
rule allows given the borrow coming in; the top column never borrows out, so a >= b. Then each
row becomes a - b (a positive answer) or b - a (negative), alternating unless the set fixes
the sign. Every row is checked against the task's own labels afterwards.

Names for n digits (see `subtraction_set_names`):
- ``random``: uniform questions, as the evaluation stream draws them;
- ``positive``, ``negative``, ``zero``: answers above, below and at zero;
- ``no_borrow``, ``use_borrow``, ``borrow_cascade``: the three categories (BaseDiff,
  UseBorrow, BorrowCascade);
- ``borrow_into_D{d}``, d = 1..n-1: a borrow into digit d;
- ``zero_at_D{d}``, d = 0..n-1: a_d == b_d (MakeZero at digit d);
- ``borrow_cascade_depth_{k}``, k = 1..n-1: the longest run of zero columns a borrow passes
  through is exactly k (the published M2, M3, ... and N2, N3, ... classes);
- ``published_hard``: 10..0 - 0..01 (100000-000001 in the papers' 6 digits), its negative,
  and cascades at least 2 deep.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from arithlens.analysis.columns import draw_pairs
from arithlens.batch import ArithmeticBatch
from arithlens.errors import ArithlensError
from arithlens.task import ArithmeticTask

_PAIR_A = torch.arange(100) // 10
_PAIR_B = torch.arange(100) % 10
_PAIR_DIFF = _PAIR_A - _PAIR_B + 9  # 0..18: a_d - b_d shifted to index a rule table

# A column rule is a bool table [borrow_in (0/1), a_d - b_d + 9 (0..18)] of what is allowed.
_DIFFS = torch.arange(19)[None, :] - 9
_BORROW_IN = torch.arange(2)[:, None]
ANY = torch.ones(2, 19, dtype=torch.bool)
BORROW_OUT = _DIFFS - _BORROW_IN < 0
NO_BORROW_OUT = _DIFFS - _BORROW_IN >= 0
ZERO = (_DIFFS == 0).expand(2, 19)
NO_USE_ZERO = ~((_DIFFS == 0) & (_BORROW_IN == 1))
FRESH_BORROW = (_DIFFS < 0).expand(2, 19)  # borrows whatever comes in, so a cascade cannot grow from below
_RULES = torch.stack([ANY, BORROW_OUT, NO_BORROW_OUT, ZERO, NO_USE_ZERO, BORROW_OUT & NO_USE_ZERO, FRESH_BORROW])
R_ANY, R_BORROW_OUT, R_NO_BORROW_OUT, R_ZERO, R_NO_USE_ZERO, R_BORROW_NO_USE_ZERO, R_FRESH = range(len(_RULES))
_CATEGORY_SETS = {"no_borrow": 0, "use_borrow": 1, "borrow_cascade": 2}


def subtraction_set_names(n_digits: int) -> list[str]:
    """Every subtraction question-set name valid for `n_digits` digits."""
    n = n_digits
    names = ["random", "positive", "negative", "zero", "no_borrow"]
    if n >= 2:
        names += ["use_borrow"]
    if n >= 3:
        names += ["borrow_cascade"]
    names += [f"borrow_into_D{d}" for d in range(1, n)]
    names += [f"zero_at_D{d}" for d in range(n)]
    names += [f"borrow_cascade_depth_{k}" for k in range(1, n - 1)]
    if n >= 2:
        names.append("published_hard")
    return names


def build_subtraction_set(task: ArithmeticTask, name: str, count: int,
                          generator: torch.Generator) -> tuple[str, ArithmeticBatch, torch.Tensor]:
    """(description, batch, the claim per row) of a named subtraction set."""
    n = task.n_digits
    rows = torch.arange(count)
    plan = torch.full((count, n), R_ANY, dtype=torch.long)
    plan[:, n - 1] = R_NO_BORROW_OUT  # a >= b
    sign: torch.Tensor | None = None  # True where the row becomes b - a; None alternates
    max_depth: int | None = None
    claim: Callable[[ArithmeticBatch], torch.Tensor]
    if name == "random":
        batch = task.generate(count, generator)
        return "uniformly random questions", batch, torch.ones(count, dtype=torch.bool)
    if name in ("positive", "negative"):
        sign = torch.full((count,), name == "negative")
        description = f"{name} answers"
        claim = (lambda b: b.negative) if name == "negative" else (lambda b: ~b.negative)  # noqa: E731
        batch = _sample(task, plan, generator, None, sign, strictly_larger=True)
        return description, batch, claim(batch) & _nonzero(batch)
    if name == "zero":
        plan[:] = R_ZERO
        description = "x == y: the answer is +00..0"
        claim = lambda b: (b.tokens[:, task.question_len + 1 :] == 0).all(dim=1) & ~b.negative  # noqa: E731
    elif name in _CATEGORY_SETS:
        category = _CATEGORY_SETS[name]
        if category == 0:
            plan[:] = R_NO_BORROW_OUT
        elif category == 1:
            plan[:, : n - 1] = R_NO_USE_ZERO
            plan[rows, rows % (n - 1)] = R_BORROW_NO_USE_ZERO
        else:
            column = rows % (n - 2) + 1
            plan[rows, column - 1] = R_BORROW_OUT
            plan[rows, column] = R_ZERO
        description = f"the {task.names.categories[category]} category"
        claim = lambda b: b.category == category  # noqa: E731
    elif match := re.fullmatch(r"borrow_into_D(\d+)", name):
        digit = int(match.group(1))
        plan[:, digit - 1] = R_BORROW_OUT
        description = f"a borrow into D{digit}"
        claim = lambda b: b.use_borrow[:, digit]  # noqa: E731
    elif match := re.fullmatch(r"zero_at_D(\d+)", name):
        digit = int(match.group(1))
        plan[:, digit] = R_ZERO
        description = f"equal digits at D{digit} (MakeZero at D{digit}); other digits uniform"
        claim = lambda b: b.make_zero[:, digit]  # noqa: E731
    elif match := re.fullmatch(r"borrow_cascade_depth_(\d+)", name):
        depth = int(match.group(1))
        start = rows % (n - 1 - depth) + 1  # the top column cannot pass a borrow on (a >= b)
        _plan_cascade(plan, rows, start, depth)
        max_depth = depth
        description = f"a borrow passed on through exactly {depth} equal-digit column(s), no longer run"
        claim = lambda b: b.borrow_cascade_depth == depth  # noqa: E731
    else:  # published_hard
        return _published_hard(task, count, generator)
    batch = _sample(task, plan, generator, max_depth, sign, strictly_larger=False)
    return description, batch, claim(batch)


def _nonzero(batch: ArithmeticBatch) -> torch.Tensor:
    return batch.base.ne(0).any(dim=1) | batch.use_carry.any(dim=1)


def _plan_cascade(plan: torch.Tensor, rows: torch.Tensor, start: torch.Tensor, depth: int) -> None:
    """A fresh borrow out of column start-1, then `depth` zero columns it passes through."""
    plan[rows, start - 1] = R_FRESH
    for offset in range(depth):
        plan[rows, start + offset] = R_ZERO


def _sample(task: ArithmeticTask, plan: torch.Tensor, generator: torch.Generator, max_depth: int | None,
            negative: torch.Tensor | None, strictly_larger: bool) -> ArithmeticBatch:
    """Draw each column's (a_d, b_d) uniformly among those its rule allows (`columns.draw_pairs`), then
    order the operands."""
    count, n = plan.shape

    def leaves_something(column: int, borrow: torch.Tensor) -> torch.Tensor | None:
        if not strictly_larger or column != n - 1:
            return None
        return torch.arange(19) - 9 - borrow[:, None] > 0  # a > b: the top column leaves something, or a lower one did

    pairs = draw_pairs(plan, _RULES, _PAIR_DIFF, lambda values, borrow: values - 9 - borrow < 0, generator,
                       max_depth=max_depth, restrict=leaves_something)
    larger, smaller = _PAIR_A[pairs], _PAIR_B[pairs]
    flip = (torch.arange(count) % 2 == 1) if negative is None else negative
    x = torch.where(flip[:, None], smaller, larger)
    y = torch.where(flip[:, None], larger, smaller)
    return task.batch_from_digits(x, y)


def _published_hard(task: ArithmeticTask, count: int, generator: torch.Generator) -> tuple[str, ArithmeticBatch,
                                                                                           torch.Tensor]:
    n = task.n_digits
    min_depth = min(2, n - 2)
    top = 10 ** (n - 1)
    examples = list(dict.fromkeys([(top, 1), (1, top), (10**n - 1, 10**n - 1), (top, top - 1)]))[:count]
    parts = [task.batch_from_ints([x for x, _ in examples], [y for _, y in examples])]
    remaining = count - len(examples)
    if remaining > 0:
        if min_depth >= 1:
            rows = torch.arange(remaining)
            shapes = [(k, s) for k in range(min_depth, n - 1) for s in range(1, n - k)]
            shape = torch.tensor(shapes)[rows % len(shapes)]
            plan = torch.full((remaining, n), R_ANY, dtype=torch.long)
            plan[:, n - 1] = R_NO_BORROW_OUT
            for k in range(min_depth, n - 1):
                chosen = rows[shape[:, 0] == k]
                _plan_cascade(plan, chosen, shape[shape[:, 0] == k, 1], k)
        else:
            plan = torch.full((remaining, n), R_NO_BORROW_OUT, dtype=torch.long)
        parts.append(_sample(task, plan, generator, None, None, strictly_larger=False))
    batch = ArithmeticBatch.concat(parts)
    shown = ", ".join(f"{x:0{n}d}-{y:0{n}d}" for x, y in examples)
    description = f"published hard cases ({shown}) and borrow cascades at least {max(min_depth, 0)} deep"
    holds = batch.borrow_cascade_depth >= max(min_depth, 0)
    holds[: len(examples)] = True
    return description, batch, holds


def check_subtraction_set_name(task: ArithmeticTask, name: str) -> None:
    valid = subtraction_set_names(task.n_digits)
    if name not in valid:
        raise ArithlensError(f"unknown question set {name!r} for {task.n_digits}-digit subtraction; valid names: "
                             f"{', '.join(valid)}")
