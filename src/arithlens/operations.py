"""The operations a task can hold, addition and subtraction, and each one's per-digit sub-task labels.

Both are column algorithms of the same shape, which is why one set of analyses serves both:
each digit pair has a base value, may make a carry (a borrow) on its own, may pass an incoming
carry (borrow) on to the next column, and uses the carry (borrow) coming in from below.

=================  ===========================  ==================================================
role               addition                     subtraction (on larger minus smaller)
=================  ===========================  ==================================================
base               BaseAdd: x_d + y_d           BaseDiff (MD): (a_d - b_d) mod 10
base_carry         x_d + y_d >= 10              MakeBorrow (MB): a_d < b_d
make_carry         MakeCarry1: carry out of d   MakeBorrow (MB): a_d < b_d
make_pass          MakeSum9: x_d + y_d == 9     MakeZero (MZ): a_d == b_d
use_carry          UseCarry1: carry into d      UseBorrow: borrow into d
use_pass           UseSum9: MakeSum9 and carry  UseZero: MakeZero and borrow in
cascade_depth      longest run of UseSum9       borrow_cascade_depth: longest run of UseZero
=================  ===========================  ==================================================

Each `Operation` names its own sub-tasks (`SubtaskNames`): tables, figures and data records use
those names, so a subtraction model's analysis never speaks of sums.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

PLUS_TOKEN = 10
EQUALS_TOKEN = 11
MINUS_TOKEN = 12


@dataclass(frozen=True)
class SubtaskNames:
    """What one operation calls each role: display names, data-record keys and question categories."""

    base: str
    make_carry: str
    make_pass: str
    use_carry: str
    use_pass: str
    base_key: str
    make_carry_key: str
    make_pass_key: str
    use_carry_key: str
    use_pass_key: str
    depth_key: str
    categories: tuple[str, str, str]  # no carry/borrow anywhere; one without a cascade; a cascade
    pair_phrases: tuple[str, str, str]  # a pair that makes a carry alone; passes one on; neither, in words

    @property
    def pair_states(self) -> tuple[str, str, str]:
        """The tri-state of a digit pair: makes a carry (borrow) alone, passes one on, neither."""
        return (self.make_carry, self.make_pass, "neither")

    def name(self, role: str) -> str:
        """The display name of a role ("use_pass" -> "UseSum9" for addition)."""
        return getattr(self, role)

    def key(self, role: str) -> str:
        """The record/column key of a role ("use_pass" -> "use_sum9" for addition)."""
        return getattr(self, f"{role}_key")


@dataclass(frozen=True)
class ColumnLabels:
    """Every per-digit label of a batch, units first ([batch, n]), plus the answer."""

    base: torch.Tensor  # long
    base_carry: torch.Tensor  # bool: the pair makes a carry (borrow) on its own
    make_carry: torch.Tensor  # bool
    make_pass: torch.Tensor  # bool
    use_carry: torch.Tensor  # bool
    use_pass: torch.Tensor  # bool
    answer: torch.Tensor  # long [batch, n+1], units first: the digits of |result|
    negative: torch.Tensor  # bool [batch]


def _longest_run(flags: torch.Tensor) -> torch.Tensor:
    """The longest run of True along dim 1 of [batch, n]."""
    run = torch.zeros(flags.shape[0], dtype=torch.long, device=flags.device)
    depth = torch.zeros_like(run)
    for d in range(flags.shape[1]):
        run = torch.where(flags[:, d], run + 1, torch.zeros_like(run))
        depth = torch.maximum(depth, run)
    return depth


def cascade_depth(labels: ColumnLabels) -> torch.Tensor:
    """The longest run of columns that pass a carry (borrow) on: [batch] long."""
    return _longest_run(labels.use_pass)


@dataclass(frozen=True)
class Operation:
    """One arithmetic operation: its symbol, token, names and label rule."""

    key: str  # "add" or "sub", as --op spells it
    symbol: str
    token: int
    names: SubtaskNames
    value: Callable[[int, int], int] = field(repr=False)  # on Python integers, for checks and answers
    labels: Callable[[torch.Tensor, torch.Tensor], ColumnLabels] = field(repr=False)  # operand digits [batch, n]
    # The y digit that makes a column pass a carry (borrow) on, given x's: enrichment forces it.
    passing_partner: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)

    def enrich(self, x_digits: torch.Tensor, y_digits: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
        """y digits with the picked columns made to pass a carry on: sum 9 for addition, equal for subtraction."""
        return torch.where(pick, self.passing_partner(x_digits), y_digits)


def _add_labels(x_digits: torch.Tensor, y_digits: torch.Tensor) -> ColumnLabels:
    batch, n = x_digits.shape
    device = x_digits.device
    base = x_digits + y_digits  # [batch, n]
    make_pass = base == 9
    use_carry = torch.zeros(batch, n, dtype=torch.bool, device=device)
    make_carry = torch.zeros(batch, n, dtype=torch.bool, device=device)
    answer = torch.zeros(batch, n + 1, dtype=torch.long, device=device)
    carry = torch.zeros(batch, dtype=torch.bool, device=device)
    # The carry chain is sequential over columns; each step is vectorised over the batch.
    for d in range(n):
        use_carry[:, d] = carry
        total = base[:, d] + carry.long()
        carry = total >= 10
        make_carry[:, d] = carry
        answer[:, d] = total % 10
    answer[:, n] = carry.long()
    return ColumnLabels(base=base, base_carry=base >= 10, make_carry=make_carry, make_pass=make_pass,
                        use_carry=use_carry, use_pass=make_pass & use_carry, answer=answer,
                        negative=torch.zeros(batch, dtype=torch.bool, device=device))


def _sub_labels(x_digits: torch.Tensor, y_digits: torch.Tensor) -> ColumnLabels:
    batch, n = x_digits.shape
    device = x_digits.device
    # x < y exactly when the most significant differing digit is smaller: scanning units first,
    # each differing column overrides the verdict of the columns below it.
    negative = torch.zeros(batch, dtype=torch.bool, device=device)
    for d in range(n):
        differs = x_digits[:, d] != y_digits[:, d]
        negative = torch.where(differs, x_digits[:, d] < y_digits[:, d], negative)
    larger = torch.where(negative[:, None], y_digits, x_digits)  # a, [batch, n]
    smaller = torch.where(negative[:, None], x_digits, y_digits)  # b
    base = (larger - smaller) % 10
    make_borrow = larger < smaller
    make_zero = larger == smaller
    use_borrow = torch.zeros(batch, n, dtype=torch.bool, device=device)
    answer = torch.zeros(batch, n + 1, dtype=torch.long, device=device)
    borrow = torch.zeros(batch, dtype=torch.bool, device=device)
    for d in range(n):
        use_borrow[:, d] = borrow
        total = larger[:, d] - smaller[:, d] - borrow.long()
        borrow = total < 0
        answer[:, d] = total % 10
    # a >= b, so nothing borrows out of the top column and A_n is 0.
    return ColumnLabels(base=base, base_carry=make_borrow, make_carry=make_borrow, make_pass=make_zero,
                        use_carry=use_borrow, use_pass=make_zero & use_borrow, answer=answer, negative=negative)


ADD = Operation(
    key="add", symbol="+", token=PLUS_TOKEN,
    names=SubtaskNames(
        base="BaseAdd", make_carry="MakeCarry1", make_pass="MakeSum9", use_carry="UseCarry1", use_pass="UseSum9",
        base_key="base_add", make_carry_key="make_carry1", make_pass_key="make_sum9", use_carry_key="use_carry1",
        use_pass_key="use_sum9", depth_key="cascade_depth", categories=("BaseAdd", "UseCarry1", "UseSum9"),
        pair_phrases=("a pair summing to 10 or more", "a pair summing to 9", "a pair summing to 8 or less")),
    value=lambda x, y: x + y, labels=_add_labels, passing_partner=lambda x: 9 - x,
)
SUB = Operation(
    key="sub", symbol="-", token=MINUS_TOKEN,
    names=SubtaskNames(
        base="BaseDiff", make_carry="MakeBorrow", make_pass="MakeZero", use_carry="UseBorrow", use_pass="UseZero",
        base_key="base_diff", make_carry_key="make_borrow", make_pass_key="make_zero", use_carry_key="use_borrow",
        use_pass_key="use_zero", depth_key="borrow_cascade_depth",
        categories=("BaseDiff", "UseBorrow", "BorrowCascade"),
        pair_phrases=("a pair that borrows (a_d < b_d)", "a pair of equal digits", "a pair with a_d > b_d")),
    value=lambda x, y: x - y, labels=_sub_labels, passing_partner=lambda x: x,
)
OPERATIONS: dict[str, Operation] = {"add": ADD, "sub": SUB}
OPERATION_BY_TOKEN: dict[int, Operation] = {op.token: op for op in OPERATIONS.values()}
