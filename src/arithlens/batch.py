"""A batch of questions: tokens plus every label the analyses condition on.

Labels are stored under the roles every operation shares (`arithlens.operations`), so one
analysis reads addition and subtraction alike: `batch.use_carry` is UseCarry1 for an addition
row and UseBorrow for a subtraction row. Each operation's own names are kept as read-only
aliases (`batch.make_sum9`, `batch.make_borrow`, ...), for notebooks and for symmetry with
the papers. Per-digit tensors are [batch, n_digits], index 0 = units digit.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from arithlens.errors import ArithlensError


@dataclass
class ArithmeticBatch:
    """Tokens and labels; `op` says which operation each row is (0 add, 1 sub)."""

    tokens: torch.Tensor  # [batch, seq_len] long
    base: torch.Tensor  # [batch, n] long: x_d + y_d, or (a_d - b_d) mod 10
    base_carry: torch.Tensor  # [batch, n] bool: the pair alone makes a carry (x_d + y_d >= 10; a_d < b_d)
    make_carry: torch.Tensor  # [batch, n] bool: carry out of d (addition), a_d < b_d (subtraction)
    make_pass: torch.Tensor  # [batch, n] bool: sum 9 (addition), a_d == b_d (subtraction)
    use_carry: torch.Tensor  # [batch, n] bool: carry (borrow) into d
    use_pass: torch.Tensor  # [batch, n] bool: make_pass and use_carry
    category: torch.Tensor  # [batch] long, QuestionCategory values
    cascade_depth: torch.Tensor  # [batch] long, longest run of use_pass columns
    op: torch.Tensor  # [batch] long: 0 addition, 1 subtraction
    negative: torch.Tensor  # [batch] bool: the answer is below zero

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def n_digits(self) -> int:
        return self.base.shape[1]

    def to(self, device: torch.device | str) -> ArithmeticBatch:
        return type(self)(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def select(self, index: torch.Tensor | slice) -> ArithmeticBatch:
        """Rows picked by a boolean mask, an index tensor or a slice."""
        return type(self)(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concat(batches: list[ArithmeticBatch]) -> ArithmeticBatch:
        if not batches:
            raise ArithlensError("cannot concatenate an empty list of batches")
        return ArithmeticBatch(
            **{f.name: torch.cat([getattr(b, f.name) for b in batches]) for f in fields(ArithmeticBatch)})

    # ----- addition's names ---------------------------------------------
    @property
    def base_add(self) -> torch.Tensor:
        """BaseAdd, x_d + y_d."""
        return self.base

    @property
    def make_carry1(self) -> torch.Tensor:
        """MakeCarry1: a carry out of digit d."""
        return self.make_carry

    @property
    def make_sum9(self) -> torch.Tensor:
        """MakeSum9: x_d + y_d == 9."""
        return self.make_pass

    @property
    def use_carry1(self) -> torch.Tensor:
        """UseCarry1: a carry into digit d."""
        return self.use_carry

    @property
    def use_sum9(self) -> torch.Tensor:
        """UseSum9: MakeSum9 and a carry in."""
        return self.use_pass

    # ----- subtraction's names (on larger minus smaller) ----------------
    @property
    def base_diff(self) -> torch.Tensor:
        """MD: (a_d - b_d) mod 10."""
        return self.base

    @property
    def make_borrow(self) -> torch.Tensor:
        """MB: a_d < b_d."""
        return self.make_carry

    @property
    def make_zero(self) -> torch.Tensor:
        """MZ: a_d == b_d."""
        return self.make_pass

    @property
    def use_borrow(self) -> torch.Tensor:
        """A borrow into digit d."""
        return self.use_carry

    @property
    def use_zero(self) -> torch.Tensor:
        """MakeZero and a borrow in: the borrow passes through."""
        return self.use_pass

    @property
    def borrow_cascade_depth(self) -> torch.Tensor:
        """The longest run of columns a borrow passes through."""
        return self.cascade_depth


AdditionBatch = ArithmeticBatch  # the name before subtraction existed
