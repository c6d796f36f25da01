"""The column-by-column draw behind every question set: digit pairs drawn uniformly under per-column rules.

An operation's sets (`question_sets` for addition, `subtraction_sets`) say per column which
values of the pair are allowed given what comes in from the column below: a rule is a bool
table [carry or borrow in (0/1), value (0..18)], where the value is x_d + y_d for addition and
a_d - b_d + 9 for subtraction. Value 9 is the one that passes a carry or borrow on (a sum of 9,
equal digits), so it is also the one a cascade is made of. This module draws the pairs, units
first; the operation supplies its pair values and its carry rule.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

PASSING = 9  # the value that passes a carry (sum 9) or a borrow (equal digits) on
VALUES = 19  # values 0..18


def draw_pairs(plan: torch.Tensor, rules: torch.Tensor, pair_value: torch.Tensor,
               carries_out: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], generator: torch.Generator, *,
               max_depth: int | None = None,
               restrict: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None) -> torch.Tensor:
    """Digit pairs [count, n] (index 10 * first + second, units first), each column's drawn uniformly
    among the pairs its rule allows.

    plan [count, n] holds each column's rule index into `rules` [rule, 2, VALUES]; pair_value [100]
    is each pair's value; carries_out(values, carry_in) says which columns carry or borrow out.
    `max_depth` forbids passing a carry on when that would make a cascade longer than it;
    restrict(column, carry_in), when given, may narrow a column's allowed values further.
    """
    count, n = plan.shape
    carry = torch.zeros(count, dtype=torch.long)
    run = torch.zeros(count, dtype=torch.long)
    pairs = torch.empty(count, n, dtype=torch.long)
    passing = torch.arange(VALUES) == PASSING
    for column in range(n):
        allowed_values = rules[plan[:, column], carry]  # [count, VALUES]
        if max_depth is not None:
            too_deep = (carry == 1) & (run >= max_depth)
            allowed_values = allowed_values & ~(too_deep[:, None] & passing)
        narrower = restrict(column, carry) if restrict is not None else None
        if narrower is not None:
            allowed_values = allowed_values & narrower
        allowed = allowed_values[:, pair_value]  # [count, 100]
        if not allowed.any(dim=1).all():
            raise RuntimeError("question-set plan allows no digit pair; this is a bug in the set's plan")
        keys = torch.rand(count, 100, generator=generator).masked_fill(~allowed, -1.0)
        pairs[:, column] = keys.argmax(dim=1)  # uniform over the allowed pairs
        values = pair_value[pairs[:, column]]
        run = torch.where((carry == 1) & (values == PASSING), run + 1, torch.zeros_like(run))
        carry = carries_out(values, carry).long()
    return pairs
