"""Named, seeded question sets that each hold exactly the cases they claim.

Random questions rarely contain the hard cases (a 4-deep UseSum9 cascade in a
5-digit question has probability 10^-5), so these sets are built column by
column, units first, drawing each digit pair uniformly from the pairs that a
per-column rule allows given the carry coming in. Where a set claims a case
at a digit or a depth, rows cycle through every such digit or depth so each
one is present. After construction every row is checked against the task's
own labels; a row that does not hold its claim is a bug, not bad luck.

Names for n digits (see `question_set_names`):
- ``random``: uniform questions, as the evaluation stream draws them;
- ``base_add``: category BaseAdd (no carry into any digit);
- ``use_carry1``: category UseCarry1 (a carry somewhere, no UseSum9);
- ``use_sum9``: category UseSum9 (at least one UseSum9 digit);
- ``carry_into_D{d}``, d = 1..n-1: UseCarry1 at digit d;
- ``sum9_at_D{d}``, d = 0..n-1: MakeSum9 at digit d (x_d + y_d = 9);
- ``cascade_depth_{k}``, k = 1..n-1: longest UseSum9 cascade exactly k;
- ``published_hard``: the published failures (445+555, 06665+03335, ...) and
  cascades at least 2 deep (1 deep for 2 digits).

Subtraction has its own sets (`analysis.subtraction_sets`); a mixed model has every set of each
operation, named "add:cascade_depth_2", "sub:borrow_cascade_depth_2", plus a mixed "random".
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import torch

from arithlens.analysis.columns import draw_pairs
from arithlens.errors import ArithlensError
from arithlens.analysis.subtraction_sets import build_subtraction_set, subtraction_set_names
from arithlens.task import AdditionBatch, AdditionTask, ArithmeticTask, QuestionCategory

# Every digit pair, index 10 * x + y.
_PAIR_X = torch.arange(100) // 10
_PAIR_Y = torch.arange(100) % 10
_PAIR_SUM = _PAIR_X + _PAIR_Y

# A column rule is a bool table [carry_in (0/1), x_d + y_d (0..18)] of what is allowed.
_SUMS = torch.arange(19)[None, :]
_CARRY_IN = torch.arange(2)[:, None]
ANY = torch.ones(2, 19, dtype=torch.bool)
CARRY_OUT = _SUMS + _CARRY_IN >= 10
NO_CARRY_OUT = _SUMS + _CARRY_IN <= 9
SUM9 = (_SUMS == 9).expand(2, 19)
NO_USE_SUM9 = ~((_SUMS == 9) & (_CARRY_IN == 1))
_RULES = torch.stack([ANY, CARRY_OUT, NO_CARRY_OUT, SUM9, NO_USE_SUM9, CARRY_OUT & NO_USE_SUM9])
R_ANY, R_CARRY_OUT, R_NO_CARRY_OUT, R_SUM9, R_NO_USE_SUM9, R_CARRY_OUT_NO_USE_SUM9 = range(len(_RULES))

# The published hard cases, as operands; each is used where it fits in n digits.
PUBLISHED_EXAMPLES: tuple[tuple[int, int], ...] = ((6665, 3335), (445, 555))


@dataclass
class QuestionSet:
    """A named batch of questions and what it was built to contain."""

    name: str
    description: str
    batch: AdditionBatch

    def __len__(self) -> int:
        return len(self.batch)


def question_set_names(task_or_digits: ArithmeticTask | int) -> list[str]:
    """Every question-set name valid for a task (or for `n`-digit addition, given an int)."""
    task = task_or_digits if isinstance(task_or_digits, ArithmeticTask) else AdditionTask(task_or_digits)
    if len(task.operations) > 1:
        return ["random", *(f"{view.operation.key}:{name}" for view in task.views()
                            for name in question_set_names(view))]
    if task.operation.key == "sub":
        return subtraction_set_names(task.n_digits)
    n = task.n_digits
    names = ["random", "base_add"]
    if n >= 2:
        names += ["use_carry1", "use_sum9"]
    names += [f"carry_into_D{d}" for d in range(1, n)]
    names += [f"sum9_at_D{d}" for d in range(n)]
    names += [f"cascade_depth_{k}" for k in range(1, n)]
    if n >= 2:
        names.append("published_hard")
    return names


def make_question_set(task: ArithmeticTask, name: str, count: int = 1000, seed: int = 0) -> QuestionSet:
    """`count` questions of the named kind, the same for the same seed.

    For "published_hard" the published examples come first (as many as fit).
    """
    valid = question_set_names(task)
    if name not in valid:
        raise ArithlensError(f"unknown question set {name!r} for {task.describe_format()}; valid names: "
                             f"{', '.join(valid)}")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ArithlensError(f"count must be an integer >= 1, got {count!r}")
    # Mixing the name in keeps sets with the same seed from sharing their draws. The CPU generator
    # reads only the low 32 bits of a seed, so the two are hashed together into those.
    generator = torch.Generator().manual_seed(zlib.crc32(f"{name}:{seed}".encode()))
    if len(task.operations) > 1 and name != "random":
        key, _, own = name.partition(":")
        view = next(v for v in task.views() if v.operation.key == key)
        built = make_question_set(view, own, count, seed)
        return QuestionSet(name=name, description=f"{key}: {built.description}", batch=built.batch)
    if len(task.operations) == 1 and task.operation.key == "sub":
        description, batch, holds = build_subtraction_set(task, name, count, generator)
        return _checked(name, description, batch, holds)
    n = task.n_digits
    rows = torch.arange(count)
    plan = torch.full((count, n), R_ANY, dtype=torch.long)  # [count, n] rule per column, units first
    max_depth: int | None = None

    if name == "random":
        batch = task.generate(count, generator)
        return _checked(name, "uniformly random questions", batch, torch.ones(count, dtype=torch.bool))
    if name == "base_add":
        plan[:, : n - 1] = R_NO_CARRY_OUT  # the top column may carry: that makes An, not a UseCarry1
        description = "BaseAdd only: no carry into any digit"
        claim = lambda b: b.category == int(QuestionCategory.BASE_ADD)  # noqa: E731
    elif name == "use_carry1":
        column = rows % (n - 1)  # cycle so every digit that can pass a carry does
        plan[:] = R_NO_USE_SUM9
        plan[rows, column] = R_CARRY_OUT_NO_USE_SUM9
        description = "UseCarry1 category: at least one carry, no UseSum9"
        claim = lambda b: b.category == int(QuestionCategory.USE_CARRY1)  # noqa: E731
    elif name == "use_sum9":
        column = rows % (n - 1) + 1
        plan[rows, column - 1] = R_CARRY_OUT
        plan[rows, column] = R_SUM9
        description = "UseSum9 category: a carry into a digit pair summing to 9"
        claim = lambda b: (b.category == int(QuestionCategory.USE_SUM9)) & b.use_sum9[rows, column]  # noqa: E731
    elif match := re.fullmatch(r"carry_into_D(\d+)", name):
        digit = int(match.group(1))
        plan[:, digit - 1] = R_CARRY_OUT
        description = f"a carry into D{digit} (UseCarry1 at D{digit})"
        claim = lambda b: b.use_carry1[:, digit]  # noqa: E731
    elif match := re.fullmatch(r"sum9_at_D(\d+)", name):
        digit = int(match.group(1))
        plan[:, digit] = R_SUM9
        description = f"D{digit} + D'{digit} = 9 (MakeSum9 at D{digit}); other digits uniform"
        claim = lambda b: b.make_sum9[:, digit]  # noqa: E731
    elif match := re.fullmatch(r"cascade_depth_(\d+)", name):
        depth = int(match.group(1))
        start = rows % (n - depth) + 1  # first UseSum9 column, cycling over every place the run fits
        _plan_cascade(plan, rows, start, torch.full_like(rows, depth), fresh_carry=True)
        max_depth = depth
        description = f"longest UseSum9 cascade exactly {depth} deep"
        claim = lambda b: b.cascade_depth == depth  # noqa: E731
    else:  # published_hard
        return _published_hard(task, count, generator)

    batch = _sample(task, plan, generator, max_depth)
    return _checked(name, description, batch, claim(batch))


def _plan_cascade(plan: torch.Tensor, rows: torch.Tensor, start: torch.Tensor, depth: torch.Tensor,
                  fresh_carry: bool) -> None:
    """Plan a carry out of column start-1 followed by `depth` columns summing to 9.

    With `fresh_carry` the carry comes from a sum >= 10, so the run cannot be
    lengthened from below.
    """
    plan[rows, start - 1] = R_CARRY_OUT_NO_USE_SUM9 if fresh_carry else R_CARRY_OUT
    for offset in range(int(depth.max())):
        inside = offset < depth
        plan[rows[inside], (start + offset)[inside]] = R_SUM9


def _sample(task: AdditionTask, plan: torch.Tensor, generator: torch.Generator,
            max_depth: int | None) -> AdditionBatch:
    """Draw each column's digit pair uniformly among those its rule allows (`columns.draw_pairs`).

    `max_depth` forbids any UseSum9 that would make a cascade longer than it.
    """
    pairs = draw_pairs(plan, _RULES, _PAIR_SUM, lambda sums, carry: sums + carry >= 10, generator,
                       max_depth=max_depth)
    return task.batch_from_digits(_PAIR_X[pairs], _PAIR_Y[pairs])


def _published_hard(task: AdditionTask, count: int, generator: torch.Generator) -> QuestionSet:
    n = task.n_digits
    min_depth = min(2, n - 1)
    examples: list[tuple[int, int]] = [pair for pair in PUBLISHED_EXAMPLES if max(pair) < 10**n]
    # The extreme cascades: 4..45 + 5..55 and 9..99 + 0..01 run from the units carry to the top.
    examples += [(int("4" * (n - 1) + "5"), int("5" * n)), (10**n - 1, 1)]
    examples = list(dict.fromkeys(examples))[:count]
    parts = [task.batch_from_ints([x for x, _ in examples], [y for _, y in examples])]
    remaining = count - len(examples)
    if remaining > 0:
        rows = torch.arange(remaining)
        # Cycle through every (depth, start) that fits so each cascade shape is present.
        shapes = [(k, s) for k in range(min_depth, n) for s in range(1, n - k + 1)]
        shape = torch.tensor(shapes)[rows % len(shapes)]
        plan = torch.full((remaining, n), R_ANY, dtype=torch.long)
        _plan_cascade(plan, rows, shape[:, 1], shape[:, 0], fresh_carry=False)
        parts.append(_sample(task, plan, generator, None))
    batch = AdditionBatch.concat(parts)
    description = (f"published hard cases ({', '.join(f'{x:0{n}d}+{y:0{n}d}' for x, y in examples)}) "
                   f"and UseSum9 cascades at least {min_depth} deep")
    return _checked("published_hard", description, batch, batch.cascade_depth >= min_depth)


def _checked(name: str, description: str, batch: AdditionBatch, holds: torch.Tensor) -> QuestionSet:
    if not bool(holds.all()):
        raise RuntimeError(f"question set {name!r}: {int((~holds).sum())} rows miss their claim; this is a bug")
    return QuestionSet(name=name, description=description, batch=batch)
