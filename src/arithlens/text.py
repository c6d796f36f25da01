"""Questions as text: a task's encode and decode, with errors that name the model's operation and format.

`TaskText` is a mixin of `arithlens.task.ArithmeticTask`; it reads the task's layout (`n_digits`,
`operations`, `signed`, `question_len`, `d_vocab`) and its question pattern.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from arithlens.batch import ArithmeticBatch
from arithlens.errors import ArithlensError
from arithlens.operations import EQUALS_TOKEN, Operation

SYMBOLS = (*(str(d) for d in range(10)), "+", "=", "-")  # token id = index


class TaskText:
    """encode, decode, questions and answers of a task."""

    if TYPE_CHECKING:  # what the task supplies
        n_digits: int
        operations: tuple[Operation, ...]
        signed: bool
        question_len: int
        d_vocab: int
        _question_re: re.Pattern[str]
        _loose_re: re.Pattern[str]

        def describe_format(self) -> str: ...

    # ----- text ---------------------------------------------------------
    def encode(self, texts: list[str] | str) -> torch.Tensor:
        """Strings to tokens [batch, seq_len].

        Accepts questions ("12345+67890=", the true answer is filled in, which the
        model cannot see when predicting it) or full sequences
        ("12345+67890=080235", kept as written). Whitespace is ignored.
        """
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise ArithlensError("no questions given")
        rows: list[list[int]] = []
        for text in texts:
            cleaned = "".join(str(text).split())
            foreign = next((c for c in cleaned if c.isdigit() and not c.isascii()), None)
            if foreign is not None:
                raise ArithlensError(f"question {text!r} has the digit {foreign!r} (U+{ord(foreign):04X}); "
                                     f"write questions with the ASCII digits 0-9")
            match = self._question_re.match(cleaned)
            if match is None:
                raise ArithlensError(f"malformed question {text!r}: {self._mismatch(cleaned)}")
            x_text, symbol, y_text, answer_text = match.groups()
            operation = next(op for op in self.operations if op.symbol == symbol)
            if answer_text is None:
                value = operation.value(int(x_text), int(y_text))
                sign = ("-" if value < 0 else "+") if self.signed else ""
                answer_text = sign + str(abs(value)).zfill(self.n_digits + 1)
            rows.append([int(c) for c in x_text] + [operation.token] + [int(c) for c in y_text] + [EQUALS_TOKEN]
                        + [SYMBOLS.index(c) for c in answer_text])
        return torch.tensor(rows, dtype=torch.long)

    def _mismatch(self, cleaned: str) -> str:
        """Why a question does not fit this task, naming the model's operation and format."""
        loose = self._loose_re.match(cleaned)
        if loose is not None:
            _, symbol, _, answer = loose.groups()
            if symbol not in {op.symbol for op in self.operations}:
                return f"'{symbol}' is not an operation of this model: {self.describe_format()}"
            if answer is not None and self.signed != (answer[0] in "+-"):
                need = "start with a sign, + or -" if self.signed else "have no sign"
                return f"its answer must {need}: {self.describe_format()}"
        return self.describe_format()

    def decode(self, tokens: torch.Tensor) -> list[str]:
        """Tokens [batch, pos] (or [pos]) back to strings such as "12345+67890=080235"."""
        if tokens.ndim == 1:
            tokens = tokens[None]
        symbols = SYMBOLS[: self.d_vocab]
        out = []
        for row in tokens.tolist():
            try:
                if any(t < 0 for t in row):
                    raise IndexError
                out.append("".join(symbols[t] for t in row))
            except (IndexError, TypeError):
                raise ArithlensError(f"token ids must be 0..{self.d_vocab - 1}, got {row}") from None
        return out

    def questions(self, batch: ArithmeticBatch) -> list[str]:
        """The question part ("12345+67890=") of every row."""
        return [s[: self.question_len] for s in self.decode(batch.tokens)]

    def answers(self, batch: ArithmeticBatch) -> list[str]:
        """The true answer (sign and) digits of every row."""
        return [s[self.question_len :] for s in self.decode(batch.tokens)]
