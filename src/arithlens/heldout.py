"""Held-out accuracy measured while a model trains.

A fixed set of random questions, drawn from its own seed (`TrainConfig.eval_seed`),
never from the training stream, is scored every `eval_every` steps: overall,
per answer digit and per cascade depth. The numbers go into the metrics table
as `heldout_*` columns (NaN on steps with no evaluation), so they are saved,
resumed and plotted with every other metric.
"""

from __future__ import annotations

import torch

from arithlens.model import AnswerForward, predicted_digits
from arithlens.task import AdditionBatch, AdditionTask

EVAL_CHUNK = 4096  # questions per forward: keeps activations of the larger models well inside the cache budget


def heldout_metric_names(n_digits: int) -> list[str]:
    """Columns of one held-out evaluation, in the order `heldout_accuracy` fills them."""
    names = ["heldout_accuracy"]
    names += [f"heldout_acc_A{d}" for d in range(n_digits, -1, -1)]
    names += [f"heldout_acc_depth{k}" for k in range(n_digits)]
    return names


def heldout_batch(task: AdditionTask, count: int, seed: int) -> AdditionBatch:
    """The held-out questions: uniform random, from `seed` alone."""
    return task.generate(count, torch.Generator().manual_seed(seed))


def heldout_accuracy(forward: AnswerForward, batch: AdditionBatch) -> torch.Tensor:
    """One float64 vector: overall accuracy, accuracy of An .. A0, then of cascade depths 0 .. n-1.

    A depth with no question in the set is NaN.
    """
    n = batch.n_digits
    targets = batch.tokens[:, 2 * n + 2 :]  # [batch, n+1]
    with torch.inference_mode():
        predicted = torch.cat([
            predicted_digits(forward(batch.tokens[start : start + EVAL_CHUNK]))
            for start in range(0, len(batch), EVAL_CHUNK)
        ])  # [batch, n+1]
    correct_digits = predicted == targets
    correct = correct_digits.all(dim=1).double()  # [batch]
    depth_onehot = torch.nn.functional.one_hot(batch.cascade_depth, n).double()  # [batch, n]
    by_depth = (correct[:, None] * depth_onehot).sum(dim=0) / depth_onehot.sum(dim=0)  # 0/0 = NaN: no such depth
    return torch.cat([correct.mean()[None], correct_digits.double().mean(dim=0), by_depth])
