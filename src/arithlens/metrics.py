"""Per-step training metrics: the loss broken down by answer token and by sub-task.

Definitions follow the seed notebook:
- per digit d: BaseAdd = no carry into d; UseCarry1 = carry into d and not Sum9;
  UseSum9 = carry into d and Sum9 (the three never overlap). Column
  `{subtask}_loss_d{d}` is the loss of answer digit A_d on those questions, so
  displays call it A{d} (`subtask_column_digit`); D{d} names the input digit of x;
- BaseAdd-only: questions with no carry anywhere, mean loss over A(n-1)..A0;
- UseCarry1-any: some carry and no UseSum9 anywhere, mean loss over all answer tokens;
- UseSum9 one / two digits: exactly one / two UseSum9 columns, mean over all answer tokens.

Everything is computed on the training device into one float64 vector per step,
so recording costs no host synchronisation; the trainer copies the history out
only when it writes the metrics table.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import torch

from arithlens.heldout import heldout_metric_names
from arithlens.task import ArithmeticBatch

PER_DIGIT_SUBTASKS = ("base_add", "use_carry1", "use_sum9")
AGGREGATES = ("base_add_only", "use_carry1_any", "use_sum9_one", "use_sum9_two")
_PER_DIGIT_COLUMN = re.compile(rf"^(?:{'|'.join(PER_DIGIT_SUBTASKS)})_(?:loss|count)_d(\d+)$")


def answer_token_names(n_digits: int, signed: bool = False) -> list[str]:
    """Answer tokens in sequence order: (sign,) A{n} .. A0."""
    return ["sign"] * signed + [f"A{d}" for d in range(n_digits, -1, -1)]


def subtask_column_digit(column: str) -> str:
    """The answer digit a sub-task column measures: "A0" for `base_add_loss_d0`, "all" for the question-level ones."""
    match = _PER_DIGIT_COLUMN.match(column)
    return f"A{match.group(1)}" if match else "all"


def metric_names(n_digits: int, finite: bool, heldout: bool = False, signed: bool = False) -> list[str]:
    """Column names of the metrics table, in the order `step_metrics` fills them.

    With `heldout`, the held-out evaluation's columns (`arithlens.heldout`) follow;
    they are NaN on steps with no evaluation.
    """
    tokens = answer_token_names(n_digits, signed)
    names = ["lr", "loss", *[f"loss_{t}" for t in tokens]]
    for subtask in PER_DIGIT_SUBTASKS:
        for d in range(n_digits):
            names += [f"{subtask}_loss_d{d}", f"{subtask}_count_d{d}"]
    for aggregate in AGGREGATES:
        names += [f"{aggregate}_loss", f"{aggregate}_count"]
    if finite:
        names += ["test_loss", *[f"test_loss_{t}" for t in tokens]]
    if heldout:
        names += heldout_metric_names(n_digits, signed)
    return names


def token_losses(logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """Per-question, per-answer-token loss [batch, n+1] from logits [batch, n+1, vocab].

    The log-softmax runs in float64: float32 cannot represent losses near 1e-9,
    which these models reach, and underflow there gives spiky gradients.
    """
    log_probs = torch.log_softmax(logits.to(torch.float64), dim=-1)
    return -log_probs.gather(-1, answers[..., None])[..., 0]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of `values` over rows where `mask`, per column; NaN where no row qualifies."""
    count = mask.sum(dim=0).to(torch.float64)
    total = (values * mask).sum(dim=0)
    return total / count, count  # 0/0 is NaN on purpose: "no such case this step"


def subtask_breakdown(losses: torch.Tensor, batch: ArithmeticBatch) -> torch.Tensor:
    """Per-digit and aggregate sub-task losses with case counts, as one float64 vector.

    The columns keep addition's keys for every operation: for subtraction `use_carry1` is
    UseBorrow and `use_sum9` UseZero (`arithlens.operations` maps the roles).
    """
    n = batch.n_digits
    by_digit = losses.flip(1)[:, :n]  # [batch, n], units first: column d is A_d (a sign token is left out)
    carry_in = batch.use_carry
    masks = (~carry_in, carry_in & ~batch.make_pass, batch.use_pass)
    parts: list[torch.Tensor] = []
    for mask in masks:
        mean, count = _masked_mean(by_digit, mask)
        parts.append(torch.stack([mean, count], dim=1).flatten())  # [loss_d0, count_d0, loss_d1, ...]

    n_use_sum9 = batch.use_pass.sum(dim=1)
    any_carry = carry_in.any(dim=1)
    question_means = (
        (losses[:, -n:].mean(dim=1), ~any_carry),  # BaseAdd-only: the seed leaves out An here
        (losses.mean(dim=1), any_carry & (n_use_sum9 == 0)),
        (losses.mean(dim=1), n_use_sum9 == 1),
        (losses.mean(dim=1), n_use_sum9 == 2),
    )
    for values, mask in question_means:
        mean, count = _masked_mean(values, mask)
        parts.append(torch.stack([mean, count]))
    return torch.cat(parts)


def step_metrics(
    lr: float,
    train_losses: torch.Tensor,
    subtask_losses: torch.Tensor,
    subtask_batch: ArithmeticBatch,
    test_losses: torch.Tensor | None = None,
) -> torch.Tensor:
    """One row of the metrics table (without the step column), on the losses' device.

    `train_losses` and `test_losses` are [batch, n+1]; the sub-task breakdown
    uses `subtask_losses` on `subtask_batch` (the test batch in finite mode, as the seed does).
    """
    with torch.no_grad():
        per_token = train_losses.mean(dim=0)
        parts = [
            torch.tensor([lr], dtype=torch.float64, device=train_losses.device),
            per_token.mean()[None],
            per_token,
            subtask_breakdown(subtask_losses, subtask_batch),
        ]
        if test_losses is not None:
            test_per_token = test_losses.mean(dim=0)
            parts += [test_per_token.mean()[None], test_per_token]
        return torch.cat(parts)


def metrics_frame(history: torch.Tensor, first_step: int, n_digits: int, finite: bool,
                  heldout: bool = False, signed: bool = False) -> pd.DataFrame:
    """The metrics table: one row per step, counts as integers."""
    frame = pd.DataFrame(history.cpu().numpy(), columns=metric_names(n_digits, finite, heldout, signed))
    frame.insert(0, "step", range(first_step, first_step + len(frame)))
    for column in frame.columns:
        if "_count" in column:
            frame[column] = frame[column].astype("int64")
    return frame


def read_metrics(path: Path, n_digits: int, finite: bool, heldout: bool = False, signed: bool = False) -> pd.DataFrame:
    """A run's metrics table, refused with one clear error if it is unreadable or lacks a column the run writes."""
    from arithlens.errors import RunFolderError

    advice = "restore it, or resume the run (arithlens train --resume) to write it again from the train state"
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError, TypeError, pa.ArrowException) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise RunFolderError(f"damaged {path}: {first_line}; {advice}") from None
    missing = [name for name in ["step", *metric_names(n_digits, finite, heldout, signed)] if name not in frame.columns]
    if missing:
        raise RunFolderError(f"damaged {path}: it has no column {missing[0]!r} "
                             f"({len(missing)} of the run's columns are missing); {advice}")
    wrong = [name for name in frame.columns if not pd.api.types.is_numeric_dtype(frame[name])]
    if wrong:
        raise RunFolderError(f"damaged {path}: column {wrong[0]!r} holds {frame[wrong[0]].dtype}, not numbers; "
                             f"{advice}")
    return frame
