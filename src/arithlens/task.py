"""Arithmetic tasks: token layout, sub-task labels and seeded batch generation.

A task is a layout plus the operations it holds (`arithlens.operations`):

- `AdditionTask(n)`: the seed's format, length 3n+3. x digits most significant first,
  `+` (10), y digits, `=` (11), then the n+1 answer digits An ... A0.
- `SubtractionTask(n)` and `MixedTask(n)` (addition and subtraction): an operator token,
  `+` or `-` (12), and after `=` a sign token (`+` for answers >= 0, `-` below 0), then the
  n+1 digits of |x - y| (or x + y): `12345-67890=-055545`, length 3n+4.

Logits at position p predict the token at p+1, so positions 2n+1 .. seq_len-2 predict the
answer tokens, the sign first where there is one. Per-digit label arrays are [batch, n] with
index 0 = units digit (D0), and use each operation's roles (`ArithmeticBatch`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from enum import Enum, IntEnum
from numbers import Integral

import torch

from arithlens.batch import AdditionBatch, ArithmeticBatch
from arithlens.errors import ArithlensError
from arithlens.operations import ADD, EQUALS_TOKEN, MINUS_TOKEN, OPERATIONS, PLUS_TOKEN, SUB, Operation, cascade_depth
from arithlens.text import TaskText

D_VOCAB = 12  # the addition vocabulary: 0-9, + and =
SIGNED_D_VOCAB = 13  # with - (12), for subtraction and mixed models
N_DIGIT_TOKENS = 10
MAX_DIGITS = 30  # keeps n_ctx and int64 answers (Python ints are used above 18) sane
OPS = ("add", "sub", "mixed")
OPERATION_IDS = {"add": 0, "sub": 1}  # ArithmeticBatch.op
# Published enrichment of subtraction: among enriched questions, y = x (a zero answer) this often.
EQUAL_OPERANDS_PROB = 0.01


class SubTask(str, Enum):
    """The per-digit sub-tasks named in the published addition work."""

    BASE_ADD = "BaseAdd"
    MAKE_CARRY1 = "MakeCarry1"
    MAKE_SUM9 = "MakeSum9"
    USE_CARRY1 = "UseCarry1"
    USE_SUM9 = "UseSum9"


class QuestionCategory(IntEnum):
    """The hardest sub-task a question needs: a cascade > a carry (borrow) > neither.

    `label` is addition's name; `ArithmeticTask.category_label` gives each operation's own.
    """

    BASE_ADD = 0
    USE_CARRY1 = 1
    USE_SUM9 = 2

    @property
    def label(self) -> str:
        return ("BaseAdd", "UseCarry1", "UseSum9")[self.value]


class ArithmeticTask(TaskText):
    """n-digit arithmetic in one layout: encoding, decoding, labels and seeded generation.

    Use `AdditionTask`, `SubtractionTask`, `MixedTask`, or `task_for(config)` for a model's.
    """

    op = "add"

    def __init__(self, n_digits: int = 5, operations: tuple[Operation, ...] = (ADD,), signed: bool = False) -> None:
        if not isinstance(n_digits, int) or isinstance(n_digits, bool) or not 1 <= n_digits <= MAX_DIGITS:
            raise ArithlensError(f"n_digits must be an integer from 1 to {MAX_DIGITS}, got {n_digits!r}")
        if not signed and operations != (ADD,):
            raise ArithlensError("only addition has an unsigned answer format")
        self.n_digits = n_digits
        self.operations = operations
        self.signed = signed
        n = n_digits
        symbols = "".join(re.escape(op.symbol) for op in operations)
        sign = "[+-]" if signed else ""
        # [0-9], not \d: \d and int() also take other scripts' digits (١٢٣, full-width １２３).
        self._question_re = re.compile(rf"^([0-9]{{{n}}})([{symbols}])([0-9]{{{n}}})=({sign}[0-9]{{{n + 1}}})?$")
        self._loose_re = re.compile(rf"^([0-9]{{{n}}})([+-])([0-9]{{{n}}})=([+-]?[0-9]{{{n + 1}}})?$")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_digits={self.n_digits})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ArithmeticTask) and (self.n_digits, self.operations, self.signed)
                == (other.n_digits, other.operations, other.signed))

    def __hash__(self) -> int:
        return hash((self.n_digits, self.operations, self.signed))

    # ----- operations ---------------------------------------------------
    @property
    def operation(self) -> Operation:
        """The one operation of a single-operation task (its names label every analysis)."""
        if len(self.operations) != 1:
            raise ArithlensError(f"a {self.op} model holds {len(self.operations)} operations; analyse each with "
                                 f"task.views() (one task per operation)")
        return self.operations[0]

    @property
    def names(self):  # noqa: ANN201 - SubtaskNames, kept out of the signature to keep imports one-way
        """The sub-task names of this task's operation."""
        return self.operation.names

    def views(self) -> list[ArithmeticTask]:
        """One single-operation task per operation, in this task's layout: how a mixed model is analysed."""
        if len(self.operations) == 1:
            return [self]
        return [OperationView(self.n_digits, op) for op in self.operations]

    @property
    def key(self) -> str:
        """"add", "sub", or an operation's key for a view of a mixed model."""
        return self.op if len(self.operations) != 1 else self.operation.key

    def category_label(self, category: int) -> str:
        """A question category's name in this task's operation ("UseSum9", "BorrowCascade")."""
        return self.operation.names.categories[int(category)]

    def describe_format(self) -> str:
        """The expected question format, for error messages."""
        n = self.n_digits
        examples = " or ".join(f"{'1' * n}{op.symbol}{'2' * n}=" for op in self.operations)
        answer = f"a sign and {n + 1} digits" if self.signed else f"{n + 1} digits"
        kind = {"add": "addition", "sub": "subtraction", "mixed": "mixed addition/subtraction"}[self.op]
        return f"a {n}-digit {kind} model takes questions like {examples}, with answers of {answer}"

    # ----- layout -------------------------------------------------------
    @property
    def d_vocab(self) -> int:
        return SIGNED_D_VOCAB if self.signed else D_VOCAB

    @property
    def question_len(self) -> int:
        return 2 * self.n_digits + 2

    @property
    def answer_len(self) -> int:
        """Answer tokens: the sign (signed formats) and n+1 digits."""
        return self.n_digits + 1 + int(self.signed)

    @property
    def seq_len(self) -> int:
        return self.question_len + self.answer_len

    @property
    def answer_token_positions(self) -> list[int]:
        """Positions holding the answer tokens (sign first, then An .. A0)."""
        return list(range(self.question_len, self.seq_len))

    @property
    def answer_logit_positions(self) -> list[int]:
        """Positions whose logits predict the answer tokens (one before each)."""
        return list(range(self.question_len - 1, self.seq_len - 1))

    @property
    def digit_logit_positions(self) -> list[int]:
        """Positions whose logits predict An .. A0 (the sign's excluded)."""
        return self.answer_logit_positions[int(self.signed):]

    def answer_digit_names(self) -> list[str]:
        """["A5", ..., "A0"] for 5 digits: the order answer digits appear in."""
        return [f"A{d}" for d in range(self.n_digits, -1, -1)]

    def answer_token_names(self) -> list[str]:
        """Every answer token's name in order: "sign" first where there is one, then An .. A0."""
        return ["sign"] * int(self.signed) + self.answer_digit_names()

    def answer_allowed(self) -> torch.Tensor:
        """Which tokens each answer position may predict, [answer_len, d_vocab] bool: digits, or + and - for the sign."""
        allowed = torch.zeros(self.answer_len, self.d_vocab, dtype=torch.bool)
        allowed[:, :N_DIGIT_TOKENS] = True
        if self.signed:
            allowed[0] = False
            allowed[0, [PLUS_TOKEN, MINUS_TOKEN]] = True
        return allowed

    def position_names(self) -> list[str]:
        """The token each position holds: D4..D0, +, D'4..D'0, =, (sign,) A5..A0 (displays use `position_label`)."""
        n = self.n_digits
        xs = [f"D{d}" for d in range(n - 1, -1, -1)]
        ys = [f"D'{d}" for d in range(n - 1, -1, -1)]
        operator = "".join(op.symbol for op in self.operations)
        return [*xs, operator, *ys, "=", *self.answer_token_names()]

    def position_label(self, position: int) -> str:
        """How reports and plots show a position: `P14 (→A2)` where its logits predict an answer token, else the
        token it holds, `P2 (D2)`.

        Token names alone mislead at the answer positions: P14 holds A3 (5-digit addition) but computes A2.
        """
        if not isinstance(position, Integral) or not 0 <= position < self.seq_len:
            raise ArithlensError(f"position must be 0..{self.seq_len - 1}, got {position!r}")
        position = int(position)  # numpy integers from table columns format like ints from here on
        if position in self.answer_logit_positions:
            return f"P{position} (→{self.answer_token_names()[position - self.question_len + 1]})"
        return f"P{position} ({self.position_names()[position]})"

    def position_labels(self) -> list[str]:
        """`position_label` of every position, in order."""
        return [self.position_label(p) for p in range(self.seq_len)]

    def logit_position_for_answer_digit(self, digit: int) -> int:
        """The position whose logits predict answer digit A`digit` (0 = units)."""
        if not isinstance(digit, Integral) or not 0 <= digit <= self.n_digits:
            raise ArithlensError(f"answer digit must be 0..{self.n_digits}, got {digit}")
        return self.seq_len - 2 - int(digit)

    # ----- labels -------------------------------------------------------
    def _op_ids(self, ops: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        known = torch.tensor([OPERATION_IDS[op.key] for op in self.operations], device=device)
        if ops is None:
            if len(self.operations) != 1:
                raise ArithlensError(f"a {self.op} task needs each question's operation (ops=)")
            return known[0].expand(batch).clone()
        ops = ops.long().to(device)
        if ops.shape != (batch,) or not torch.isin(ops, known).all():
            raise ArithlensError(f"ops must be [{batch}] operation ids from {known.tolist()}")
        return ops

    def batch_from_digits(self, x_digits: torch.Tensor, y_digits: torch.Tensor,
                          ops: torch.Tensor | None = None) -> ArithmeticBatch:
        """Build tokens and labels from operand digits given units-first, [batch, n].

        `ops` gives each row's operation id (`OPERATION_IDS`); single-operation tasks need none.
        """
        n = self.n_digits
        if x_digits.shape != y_digits.shape or x_digits.ndim != 2 or x_digits.shape[1] != n:
            raise ArithlensError(f"operand digits must both be [batch, {n}], got {tuple(x_digits.shape)}")
        x_digits, y_digits = x_digits.long(), y_digits.long()
        batch, device = x_digits.shape[0], x_digits.device
        op_ids = self._op_ids(ops, batch, device)
        labels = None
        for operation in self.operations:  # each row takes the labels of its own operation
            mine = operation.labels(x_digits, y_digits)
            if labels is None:
                labels = mine
                continue
            rows = op_ids == OPERATION_IDS[operation.key]
            labels = type(mine)(**{f.name: torch.where(rows if getattr(mine, f.name).ndim == 1 else rows[:, None],
                                                       getattr(mine, f.name), getattr(labels, f.name))
                                   for f in fields(mine)})
        assert labels is not None
        category = torch.full((batch,), int(QuestionCategory.BASE_ADD), dtype=torch.long, device=device)
        category[labels.use_carry.any(dim=1)] = int(QuestionCategory.USE_CARRY1)
        category[labels.use_pass.any(dim=1)] = int(QuestionCategory.USE_SUM9)

        op_tokens = torch.where(op_ids == OPERATION_IDS["sub"], MINUS_TOKEN, PLUS_TOKEN)
        tokens = torch.empty(batch, self.seq_len, dtype=torch.long, device=device)
        tokens[:, :n] = x_digits.flip(1)
        tokens[:, n] = op_tokens
        tokens[:, n + 1 : 2 * n + 1] = y_digits.flip(1)
        tokens[:, 2 * n + 1] = EQUALS_TOKEN
        if self.signed:
            tokens[:, self.question_len] = torch.where(labels.negative, MINUS_TOKEN, PLUS_TOKEN)
        tokens[:, self.seq_len - n - 1 :] = labels.answer.flip(1)
        return ArithmeticBatch(
            tokens=tokens, base=labels.base, base_carry=labels.base_carry, make_carry=labels.make_carry,
            make_pass=labels.make_pass, use_carry=labels.use_carry, use_pass=labels.use_pass, category=category,
            cascade_depth=cascade_depth(labels), op=op_ids, negative=labels.negative,
        )

    def batch_from_tokens(self, tokens: torch.Tensor) -> ArithmeticBatch:
        """Labels for question tokens ([batch, >= 2n+2]); the answer is recomputed."""
        n = self.n_digits
        if tokens.ndim != 2 or tokens.shape[1] < self.question_len:
            raise ArithlensError(f"tokens must be [batch, >= {self.question_len}], got {tuple(tokens.shape)}")
        x_digits = tokens[:, :n].flip(1)
        y_digits = tokens[:, n + 1 : 2 * n + 1].flip(1)
        if (x_digits > 9).any() or (y_digits > 9).any() or (x_digits < 0).any() or (y_digits < 0).any():
            raise ArithlensError("operand positions must hold digit tokens 0-9")
        by_token = {op.token: OPERATION_IDS[op.key] for op in self.operations}
        operators = tokens[:, n].tolist()
        unknown = next((t for t in operators if t not in by_token), None)
        if unknown is not None:
            raise ArithlensError(f"position {n} holds token {unknown}, not this task's operator; {self.describe_format()}")
        ops = torch.tensor([by_token[t] for t in operators], dtype=torch.long, device=tokens.device)
        return self.batch_from_digits(x_digits, y_digits, ops)

    def batch_from_ints(self, xs: list[int], ys: list[int], ops: list[str] | None = None) -> ArithmeticBatch:
        """Build a batch from Python integer operands (and, for a mixed task, "add"/"sub" per question)."""
        limit = 10**self.n_digits
        for v in (*xs, *ys):
            if not 0 <= v < limit:
                raise ArithlensError(f"operand {v} does not fit in {self.n_digits} digits")
        powers = [10**d for d in range(self.n_digits)]
        x_digits = torch.tensor([[(v // p) % 10 for p in powers] for v in xs], dtype=torch.long)
        y_digits = torch.tensor([[(v // p) % 10 for p in powers] for v in ys], dtype=torch.long)
        op_ids = None
        if ops is not None:
            if any(op not in OPERATION_IDS for op in ops):
                raise ArithlensError(f"operations must be 'add' or 'sub', got {sorted(set(ops) - set(OPERATION_IDS))}")
            op_ids = torch.tensor([OPERATION_IDS[op] for op in ops], dtype=torch.long)
        return self.batch_from_digits(x_digits.reshape(-1, self.n_digits), y_digits.reshape(-1, self.n_digits), op_ids)

    def every_question(self, start: int = 0, stop: int | None = None) -> ArithmeticBatch:
        """Questions `start` .. `stop`-1 of all 10^(2n), in order: question i is x = i // 10^n, y = i % 10^n.

        Slices of the range let a caller walk every question in bounded memory. A mixed task
        enumerates per operation: use `task.views()`.
        """
        n = self.n_digits
        total = 10 ** (2 * n)
        stop = total if stop is None else stop
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= total):
            raise ArithlensError(f"need 0 <= start < stop <= {total:,}, got start={start!r}, stop={stop!r}")
        if n > 9:  # 10^(2n) would overflow int64 question indices
            raise ArithlensError(f"every_question supports at most 9 digits, not {n}")
        index = torch.arange(start, stop, dtype=torch.long)  # [batch]
        powers = 10 ** torch.arange(n, dtype=torch.long)  # [n], units first
        x_digits = (index // 10**n)[:, None] // powers % 10  # [batch, n]
        y_digits = (index % 10**n)[:, None] // powers % 10
        return self.batch_from_digits(x_digits, y_digits)

    # ----- generation ---------------------------------------------------
    def generate(
        self,
        count: int,
        generator: torch.Generator,
        *,
        enrich_fraction: float = 0.0,
        enrich_sum9_prob: float = 0.4,
        device: torch.device | str = "cpu",
    ) -> ArithmeticBatch:
        """`count` uniformly random questions (operations equally likely), all drawn from `generator`.

        Enrichment (as in the published work): a share `enrich_fraction` of the questions has
        each digit pair forced, with probability `enrich_sum9_prob`, to pass a carry on (sum to 9
        in addition, equal digits in subtraction), which makes cascades common enough to learn.
        Enriched subtraction questions also get y = x (a zero answer) with probability 1%.
        Addition-only tasks draw exactly what they always drew, so a seed means one data stream.
        """
        if count < 1:
            raise ArithlensError(f"count must be at least 1, got {count}")
        if not 0.0 <= enrich_fraction <= 1.0 or not 0.0 <= enrich_sum9_prob <= 1.0:
            raise ArithlensError("enrichment fractions must lie in [0, 1]")
        n = self.n_digits
        where = generator.device
        # Always draw on the generator's device and in the same order, so a seed means one data stream.
        digits = torch.randint(0, 10, (2, count, n), generator=generator, device=where)
        x_digits, y_digits = digits[0], digits[1]
        op_ids = None
        if len(self.operations) > 1:
            choice = torch.randint(0, len(self.operations), (count,), generator=generator, device=where)
            op_ids = torch.tensor([OPERATION_IDS[op.key] for op in self.operations], device=where)[choice]
        if enrich_fraction > 0.0:
            pick_question = torch.rand(count, 1, generator=generator, device=where) < enrich_fraction
            pick_column = torch.rand(count, n, generator=generator, device=where) < enrich_sum9_prob
            ops = op_ids if op_ids is not None else torch.full((count,), OPERATION_IDS[self.operations[0].key],
                                                                device=where)
            enriched = y_digits
            for operation in self.operations:
                rows = (ops == OPERATION_IDS[operation.key])[:, None]
                enriched = torch.where(rows, operation.enrich(x_digits, y_digits, pick_question & pick_column),
                                       enriched)
            y_digits = enriched
            if SUB in self.operations:
                equal = torch.rand(count, 1, generator=generator, device=where) < EQUAL_OPERANDS_PROB
                y_digits = torch.where(pick_question & equal & (ops == OPERATION_IDS["sub"])[:, None],
                                       x_digits, y_digits)
        return self.batch_from_digits(x_digits.to(device), y_digits.to(device),
                                      None if op_ids is None else op_ids.to(device))

class AdditionTask(ArithmeticTask):
    """n-digit addition in the seed's format: `12345+67890=080235`."""

    op = "add"

    def __init__(self, n_digits: int = 5) -> None:
        super().__init__(n_digits, (ADD,), signed=False)


class SubtractionTask(ArithmeticTask):
    """n-digit subtraction with a signed answer: `12345-67890=-055545`."""

    op = "sub"

    def __init__(self, n_digits: int = 5) -> None:
        super().__init__(n_digits, (SUB,), signed=True)


class MixedTask(ArithmeticTask):
    """Addition and subtraction in one model, both with signed answers: `12345+67890=+080235`."""

    op = "mixed"

    def __init__(self, n_digits: int = 5) -> None:
        super().__init__(n_digits, (ADD, SUB), signed=True)


class OperationView(ArithmeticTask):
    """One operation of a mixed model, in the mixed layout: its questions, labels and names."""

    def __init__(self, n_digits: int, operation: Operation) -> None:
        super().__init__(n_digits, (operation,), signed=True)
        self.op = "mixed"

    def __repr__(self) -> str:
        return f"OperationView(n_digits={self.n_digits}, {self.operation.key!r})"


TASKS: dict[str, type[ArithmeticTask]] = {"add": AdditionTask, "sub": SubtractionTask, "mixed": MixedTask}


def make_task(op: str, n_digits: int) -> ArithmeticTask:
    """The task for an operation name ("add", "sub" or "mixed")."""
    if op not in TASKS:
        raise ArithlensError(f"unknown operation {op!r}: use one of {', '.join(OPS)}")
    return TASKS[op](n_digits)


def task_for(config: object) -> ArithmeticTask:
    """The task a model config (anything with `op` and `n_digits`) was built for."""
    return make_task(getattr(config, "op", "add"), config.n_digits)  # type: ignore[attr-defined]


def task_for_batch(config: object, batch: ArithmeticBatch) -> ArithmeticTask:
    """The task whose names describe `batch`: the model's own, or, for a mixed model asked about one
    operation's questions, the view of that operation (`ArithmeticTask.views`)."""
    task = task_for(config)
    if len(task.operations) == 1:
        return task
    present = [view for view in task.views() if bool((batch.op == OPERATION_IDS[view.operation.key]).any())]
    return present[0] if len(present) == 1 else task


__all__ = [
    "ADD", "D_VOCAB", "EQUALS_TOKEN", "MAX_DIGITS", "MINUS_TOKEN", "N_DIGIT_TOKENS", "OPERATIONS", "OPS",
    "PLUS_TOKEN", "SIGNED_D_VOCAB", "SUB", "AdditionBatch", "AdditionTask", "ArithmeticBatch", "ArithmeticTask",
    "MixedTask", "OperationView", "QuestionCategory", "SubTask", "SubtractionTask", "make_task", "task_for", "task_for_batch",
]
