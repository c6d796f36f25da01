"""The n-digit addition task: tokens, sub-task labels and seeded batch generation.

Layout (n digits, length 3n+3): x digits most significant first, `+` (10),
y digits, `=` (11), then the n+1 answer digits An ... A0. Logits at position p
predict the token at p+1, so positions 2n+1 .. 3n+1 predict An .. A0.

Per-digit label arrays are [batch, n_digits] with index 0 = units digit (D0).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from enum import Enum, IntEnum
from numbers import Integral

import torch

from arithlens.errors import ArithlensError

PLUS_TOKEN = 10
EQUALS_TOKEN = 11
D_VOCAB = 12
N_DIGIT_TOKENS = 10
MAX_DIGITS = 30  # keeps n_ctx and int64 answers (Python ints are used above 18) sane


class SubTask(str, Enum):
    """The per-digit sub-tasks named in the published addition work."""

    BASE_ADD = "BaseAdd"
    MAKE_CARRY1 = "MakeCarry1"
    MAKE_SUM9 = "MakeSum9"
    USE_CARRY1 = "UseCarry1"
    USE_SUM9 = "UseSum9"


class QuestionCategory(IntEnum):
    """The hardest sub-task a question needs: UseSum9 > UseCarry1 > BaseAdd."""

    BASE_ADD = 0
    USE_CARRY1 = 1
    USE_SUM9 = 2

    @property
    def label(self) -> str:
        return ("BaseAdd", "UseCarry1", "UseSum9")[self.value]


@dataclass
class AdditionBatch:
    """Tokens plus every label the analyses condition on.

    Per-digit tensors are [batch, n_digits], index 0 = units digit.
    """

    tokens: torch.Tensor  # [batch, 3n+3] long
    base_add: torch.Tensor  # [batch, n] long, x_d + y_d
    make_carry1: torch.Tensor  # [batch, n] bool, carry out of digit d
    make_sum9: torch.Tensor  # [batch, n] bool, x_d + y_d == 9
    use_carry1: torch.Tensor  # [batch, n] bool, carry into digit d
    use_sum9: torch.Tensor  # [batch, n] bool, make_sum9 and use_carry1
    category: torch.Tensor  # [batch] long, QuestionCategory values
    cascade_depth: torch.Tensor  # [batch] long, longest run of use_sum9 columns

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def n_digits(self) -> int:
        return self.base_add.shape[1]

    def to(self, device: torch.device | str) -> AdditionBatch:
        return AdditionBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def select(self, index: torch.Tensor | slice) -> AdditionBatch:
        """Rows picked by a boolean mask, an index tensor or a slice."""
        return AdditionBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concat(batches: list[AdditionBatch]) -> AdditionBatch:
        if not batches:
            raise ArithlensError("cannot concatenate an empty list of batches")
        return AdditionBatch(
            **{f.name: torch.cat([getattr(b, f.name) for b in batches]) for f in fields(AdditionBatch)}
        )


class AdditionTask:
    """n-digit addition: encoding, decoding, labels and seeded generation."""

    def __init__(self, n_digits: int = 5) -> None:
        if not isinstance(n_digits, int) or isinstance(n_digits, bool) or not 1 <= n_digits <= MAX_DIGITS:
            raise ArithlensError(f"n_digits must be an integer from 1 to {MAX_DIGITS}, got {n_digits!r}")
        self.n_digits = n_digits
        n = n_digits
        # [0-9], not \d: \d and int() also take other scripts' digits (١٢٣, full-width １２３).
        self._question_re = re.compile(rf"^([0-9]{{{n}}})\+([0-9]{{{n}}})=([0-9]{{{n + 1}}})?$")

    def __repr__(self) -> str:
        return f"AdditionTask(n_digits={self.n_digits})"

    # ----- layout -------------------------------------------------------
    @property
    def seq_len(self) -> int:
        return 3 * self.n_digits + 3

    @property
    def question_len(self) -> int:
        return 2 * self.n_digits + 2

    @property
    def answer_token_positions(self) -> list[int]:
        """Positions holding An .. A0."""
        return list(range(2 * self.n_digits + 2, 3 * self.n_digits + 3))

    @property
    def answer_logit_positions(self) -> list[int]:
        """Positions whose logits predict An .. A0 (one before each answer token)."""
        return list(range(2 * self.n_digits + 1, 3 * self.n_digits + 2))

    def answer_digit_names(self) -> list[str]:
        """["A5", ..., "A0"] for 5 digits: the order answer tokens appear in."""
        return [f"A{d}" for d in range(self.n_digits, -1, -1)]

    def position_names(self) -> list[str]:
        """The token each position holds: D4..D0, +, D'4..D'0, =, A5..A0 (displays use `position_label`)."""
        n = self.n_digits
        xs = [f"D{d}" for d in range(n - 1, -1, -1)]
        ys = [f"D'{d}" for d in range(n - 1, -1, -1)]
        return [*xs, "+", *ys, "=", *self.answer_digit_names()]

    def position_label(self, position: int) -> str:
        """How reports and plots show a position: `P14 (→A2)` where its logits predict an answer digit, else the
        token it holds, `P2 (D2)`.

        Token names alone mislead at the answer positions: P14 holds A3 (5 digits) but computes A2.
        """
        if not isinstance(position, Integral) or not 0 <= position < self.seq_len:
            raise ArithlensError(f"position must be 0..{self.seq_len - 1}, got {position!r}")
        position = int(position)  # numpy integers from table columns format like ints from here on
        if position in self.answer_logit_positions:
            return f"P{position} (→A{3 * self.n_digits + 1 - position})"
        return f"P{position} ({self.position_names()[position]})"

    def position_labels(self) -> list[str]:
        """`position_label` of every position, in order."""
        return [self.position_label(p) for p in range(self.seq_len)]

    def logit_position_for_answer_digit(self, digit: int) -> int:
        """The position whose logits predict answer digit A`digit` (0 = units)."""
        if not 0 <= digit <= self.n_digits:
            raise ArithlensError(f"answer digit must be 0..{self.n_digits}, got {digit}")
        return 3 * self.n_digits + 1 - digit

    # ----- labels -------------------------------------------------------
    def batch_from_digits(self, x_digits: torch.Tensor, y_digits: torch.Tensor) -> AdditionBatch:
        """Build tokens and labels from operand digits given units-first, [batch, n]."""
        n = self.n_digits
        if x_digits.shape != y_digits.shape or x_digits.ndim != 2 or x_digits.shape[1] != n:
            raise ArithlensError(f"operand digits must both be [batch, {n}], got {tuple(x_digits.shape)}")
        x_digits = x_digits.long()
        y_digits = y_digits.long()
        batch = x_digits.shape[0]
        device = x_digits.device
        base_add = x_digits + y_digits  # [batch, n]
        make_sum9 = base_add == 9
        use_carry1 = torch.zeros(batch, n, dtype=torch.bool, device=device)
        make_carry1 = torch.zeros(batch, n, dtype=torch.bool, device=device)
        answer = torch.zeros(batch, n + 1, dtype=torch.long, device=device)  # units-first
        carry = torch.zeros(batch, dtype=torch.bool, device=device)
        # The carry chain is inherently sequential over columns; each step is vectorised over the batch.
        for d in range(n):
            use_carry1[:, d] = carry
            total = base_add[:, d] + carry.long()
            carry = total >= 10
            make_carry1[:, d] = carry
            answer[:, d] = total % 10
        answer[:, n] = carry.long()
        use_sum9 = make_sum9 & use_carry1

        run = torch.zeros(batch, dtype=torch.long, device=device)
        depth = torch.zeros(batch, dtype=torch.long, device=device)
        for d in range(n):
            run = torch.where(use_sum9[:, d], run + 1, torch.zeros_like(run))
            depth = torch.maximum(depth, run)

        category = torch.full((batch,), int(QuestionCategory.BASE_ADD), dtype=torch.long, device=device)
        category[use_carry1.any(dim=1)] = int(QuestionCategory.USE_CARRY1)
        category[use_sum9.any(dim=1)] = int(QuestionCategory.USE_SUM9)

        tokens = torch.empty(batch, self.seq_len, dtype=torch.long, device=device)
        tokens[:, :n] = x_digits.flip(1)
        tokens[:, n] = PLUS_TOKEN
        tokens[:, n + 1 : 2 * n + 1] = y_digits.flip(1)
        tokens[:, 2 * n + 1] = EQUALS_TOKEN
        tokens[:, 2 * n + 2 :] = answer.flip(1)
        return AdditionBatch(
            tokens=tokens,
            base_add=base_add,
            make_carry1=make_carry1,
            make_sum9=make_sum9,
            use_carry1=use_carry1,
            use_sum9=use_sum9,
            category=category,
            cascade_depth=depth,
        )

    def batch_from_tokens(self, tokens: torch.Tensor) -> AdditionBatch:
        """Labels for question tokens ([batch, >= 2n+2]); the answer is recomputed."""
        n = self.n_digits
        if tokens.ndim != 2 or tokens.shape[1] < self.question_len:
            raise ArithlensError(f"tokens must be [batch, >= {self.question_len}], got {tuple(tokens.shape)}")
        x_digits = tokens[:, :n].flip(1)
        y_digits = tokens[:, n + 1 : 2 * n + 1].flip(1)
        if (x_digits > 9).any() or (y_digits > 9).any() or (x_digits < 0).any() or (y_digits < 0).any():
            raise ArithlensError("operand positions must hold digit tokens 0-9")
        return self.batch_from_digits(x_digits, y_digits)

    def batch_from_ints(self, xs: list[int], ys: list[int]) -> AdditionBatch:
        """Build a batch from Python integer operands."""
        limit = 10**self.n_digits
        for v in (*xs, *ys):
            if not 0 <= v < limit:
                raise ArithlensError(f"operand {v} does not fit in {self.n_digits} digits")
        powers = [10**d for d in range(self.n_digits)]
        x_digits = torch.tensor([[(v // p) % 10 for p in powers] for v in xs], dtype=torch.long)
        y_digits = torch.tensor([[(v // p) % 10 for p in powers] for v in ys], dtype=torch.long)
        return self.batch_from_digits(x_digits.reshape(-1, self.n_digits), y_digits.reshape(-1, self.n_digits))

    def every_question(self, start: int = 0, stop: int | None = None) -> AdditionBatch:
        """Questions `start` .. `stop`-1 of all 10^(2n), in order: question i is x = i // 10^n, y = i % 10^n.

        Slices of the range let a caller walk every question in bounded memory.
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
    ) -> AdditionBatch:
        """`count` uniformly random questions, all drawn from `generator`.

        Enrichment (as in the published work): a share `enrich_fraction` of the
        questions has each digit pair forced to sum to 9 with probability
        `enrich_sum9_prob`, which makes UseSum9 cascades common enough to learn.
        """
        if count < 1:
            raise ArithlensError(f"count must be at least 1, got {count}")
        if not 0.0 <= enrich_fraction <= 1.0 or not 0.0 <= enrich_sum9_prob <= 1.0:
            raise ArithlensError("enrichment fractions must lie in [0, 1]")
        n = self.n_digits
        # Always draw on the generator's device and in the same order, so a seed means one data stream.
        digits = torch.randint(0, 10, (2, count, n), generator=generator, device=generator.device)
        x_digits, y_digits = digits[0], digits[1]
        if enrich_fraction > 0.0:
            pick_question = torch.rand(count, 1, generator=generator, device=generator.device) < enrich_fraction
            pick_column = torch.rand(count, n, generator=generator, device=generator.device) < enrich_sum9_prob
            y_digits = torch.where(pick_question & pick_column, 9 - x_digits, y_digits)
        return self.batch_from_digits(x_digits.to(device), y_digits.to(device))

    # ----- text ---------------------------------------------------------
    def encode(self, texts: list[str] | str) -> torch.Tensor:
        """Strings to tokens [batch, 3n+3].

        Accepts questions ("12345+67890=", the true answer is filled in, which the
        model cannot see when predicting it) or full sequences
        ("12345+67890=080235", kept as written). Whitespace is ignored.
        """
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise ArithlensError("no questions given")
        n = self.n_digits
        rows: list[list[int]] = []
        for text in texts:
            cleaned = "".join(str(text).split())
            match = self._question_re.match(cleaned)
            foreign = next((c for c in cleaned if c.isdigit() and not c.isascii()), None)
            if foreign is not None:
                raise ArithlensError(f"question {text!r} has the digit {foreign!r} (U+{ord(foreign):04X}); "
                                     f"write questions with the ASCII digits 0-9")
            if match is None:
                raise ArithlensError(
                    f"malformed question {text!r}: expected {n} digits, '+', {n} digits, '=' "
                    f"and optionally {n + 1} answer digits, e.g. {'1' * n}+{'2' * n}="
                )
            x_text, y_text, answer_text = match.groups()
            if answer_text is None:
                answer_text = str(int(x_text) + int(y_text)).zfill(n + 1)
            rows.append([int(c) for c in x_text] + [PLUS_TOKEN] + [int(c) for c in y_text] + [EQUALS_TOKEN]
                        + [int(c) for c in answer_text])
        return torch.tensor(rows, dtype=torch.long)

    def decode(self, tokens: torch.Tensor) -> list[str]:
        """Tokens [batch, pos] (or [pos]) back to strings such as "12345+67890=080235"."""
        if tokens.ndim == 1:
            tokens = tokens[None]
        symbols = [str(i) for i in range(10)] + ["+", "="]
        out = []
        for row in tokens.tolist():
            try:
                out.append("".join(symbols[t] for t in row))
            except (IndexError, TypeError):
                raise ArithlensError(f"token ids must be 0..11, got {row}") from None
        return out

    def questions(self, batch: AdditionBatch) -> list[str]:
        """The question part ("12345+67890=") of every row."""
        return [s[: self.question_len] for s in self.decode(batch.tokens)]

    def answers(self, batch: AdditionBatch) -> list[str]:
        """The true answer digits (An..A0) of every row."""
        return [s[self.question_len :] for s in self.decode(batch.tokens)]
