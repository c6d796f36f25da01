"""Patching pairs for subtraction: clean and corrupted questions that differ in one sub-task.

The same four kinds as addition's (`patching`), on the larger operand a minus the smaller b,
under their identifiers (the tables name them BaseDiff, MakeBorrow, MakeZero, UseZero):

- ``BaseAdd`` (BaseDiff, d <= n-1): a_d changes; no borrow into d in either question;
- ``MakeCarry1`` (MakeBorrow, 1 <= d <= n-1): pair d-1 has a_d < b_d (clean: a borrow into d)
  or a_d > b_d (corrupted: none), with no borrow into d-1;
- ``MakeSum9`` (MakeZero, 2 <= d <= n-1): a borrow comes into d-1 in both; pair d-1 is equal
  (clean: the borrow passes on into d) or a_d = b_d + 1 (corrupted: it stops);
- ``UseSum9`` (UseZero, 2 <= d <= n-1): pair d-1 is equal in both; pair d-2 borrows (clean)
  or not (corrupted), so only the cascade borrows into d.

A_n of a subtraction is always 0, so it has no pairs. The top pair keeps a_{n-1} > b_{n-1}
(5..9 against 0..4) so that a stays the larger operand in both questions; every other row
turns into b - a, so half the pairs have negative answers (the same sign in both questions).
"""

from __future__ import annotations

import torch

from arithlens.batch import ArithmeticBatch
from arithlens.task import ArithmeticTask

_FIRST_DIGIT = {"BaseAdd": 0, "MakeCarry1": 1, "MakeSum9": 2, "UseSum9": 2}


def subtraction_pair_kinds(n_digits: int, kinds: tuple[str, ...]) -> list[tuple[str, int]]:
    """Every (kind, answer digit) that exists for `n_digits`-digit subtraction."""
    return [(kind, digit) for digit in range(n_digits - 1, -1, -1) for kind in kinds
            if _FIRST_DIGIT[kind] <= digit]


def _ordered(count: int, low: int, high: int, generator: torch.Generator, larger: bool) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    """Digit pairs (a, b), a > b if `larger` else a < b, within low..high."""
    first = torch.randint(low, high + 1, (count,), generator=generator)
    second = torch.randint(low, high + 1, (count,), generator=generator)
    same = first == second
    second = torch.where(same, (second + 1 - low) % (high - low + 1) + low, second)
    big, small = torch.maximum(first, second), torch.minimum(first, second)
    return (big, small) if larger else (small, big)


def make_subtraction_pairs(task: ArithmeticTask, kind: str, digit: int, count: int,
                           generator: torch.Generator) -> tuple[ArithmeticBatch, ArithmeticBatch]:
    """(clean, corrupted) batches of one kind for answer digit A`digit` (see the module docstring)."""
    n = task.n_digits
    a = torch.randint(0, 10, (count, n), generator=generator)  # units first
    b = torch.randint(0, 10, (count, n), generator=generator)
    a[:, n - 1] = torch.randint(5, 10, (count,), generator=generator)  # a > b at the top: a stays the larger
    b[:, n - 1] = torch.randint(0, 5, (count,), generator=generator)

    def no_borrow_into(column: int, xs: torch.Tensor, ys: torch.Tensor) -> None:
        if column >= 1:
            xs[:, column - 1], ys[:, column - 1] = _ordered(count, 0, 9, generator, larger=True)

    d = digit
    if kind == "BaseAdd":
        no_borrow_into(d, a, b)
        a2, b2 = a.clone(), b.clone()
        if d == n - 1:  # stay within 5..9 so that a stays the larger operand
            a2[:, d] = (a[:, d] - 5 + torch.randint(1, 5, (count,), generator=generator)) % 5 + 5
        else:
            a2[:, d] = (a[:, d] + torch.randint(1, 10, (count,), generator=generator)) % 10
    elif kind == "MakeCarry1":
        no_borrow_into(d - 1, a, b)
        a[:, d - 1], b[:, d - 1] = _ordered(count, 0, 9, generator, larger=False)
        a2, b2 = a.clone(), b.clone()
        a2[:, d - 1], b2[:, d - 1] = _ordered(count, 0, 9, generator, larger=True)
    elif kind == "MakeSum9":
        a[:, d - 2], b[:, d - 2] = _ordered(count, 0, 9, generator, larger=False)  # a fresh borrow into d-1
        b[:, d - 1] = torch.randint(0, 9, (count,), generator=generator)
        a[:, d - 1] = b[:, d - 1]
        a2, b2 = a.clone(), b.clone()
        a2[:, d - 1] = b[:, d - 1] + 1
    else:  # UseSum9
        b[:, d - 1] = torch.randint(0, 10, (count,), generator=generator)
        a[:, d - 1] = b[:, d - 1]
        no_borrow_into(d - 2, a, b)
        a[:, d - 2], b[:, d - 2] = _ordered(count, 0, 9, generator, larger=False)
        a2, b2 = a.clone(), b.clone()
        a2[:, d - 2], b2[:, d - 2] = _ordered(count, 0, 9, generator, larger=True)
    negative = (torch.arange(count) % 2 == 1)[:, None]

    def question(larger: torch.Tensor, smaller: torch.Tensor) -> ArithmeticBatch:
        return task.batch_from_digits(torch.where(negative, smaller, larger), torch.where(negative, larger, smaller))

    return question(a, b), question(a2, b2)
