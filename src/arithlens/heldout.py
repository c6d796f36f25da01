"""Held-out accuracy measured while a model trains.

A fixed set of random questions, drawn from its own seed (`TrainConfig.eval_seed`),
never from the training stream, is scored every `eval_every` steps: overall,
per answer digit and per cascade depth. The numbers go into the metrics table
as `heldout_*` columns (NaN on steps with no evaluation), so they are saved,
resumed and plotted with every other metric.
"""

from __future__ import annotations

import torch
from transformer_lens.model_bridge import TransformerBridge

from arithlens.scoring import Scorer
from arithlens.task import ArithmeticBatch, ArithmeticTask


def heldout_metric_names(n_digits: int, signed: bool = False) -> list[str]:
    """Columns of one held-out evaluation, in the order `heldout_accuracy` fills them."""
    names = ["heldout_accuracy"]
    names += ["heldout_acc_sign"] * signed
    names += [f"heldout_acc_A{d}" for d in range(n_digits, -1, -1)]
    names += [f"heldout_acc_depth{k}" for k in range(n_digits)]
    return names


def heldout_batch(task: ArithmeticTask, count: int, seed: int) -> ArithmeticBatch:
    """The held-out questions: uniform random, from `seed` alone."""
    return task.generate(count, torch.Generator().manual_seed(seed))


def heldout_accuracy(model: TransformerBridge, batch: ArithmeticBatch) -> torch.Tensor:
    """One float64 vector: overall accuracy, accuracy of (the sign and) An .. A0, then of cascade depths 0 .. n-1.

    A depth with no question in the set is NaN. Scoring reads the model's live weights
    and changes nothing, so evaluating mid-run leaves training bit-identical.
    """
    n = batch.n_digits
    targets = batch.tokens[:, 2 * n + 2 :].cpu()  # [batch, answer_len]
    with Scorer(model, None) as scorer:
        _, predicted = scorer.score(batch.tokens, lambda k: None)  # [batch, n+1]
    batch = batch.to("cpu")
    correct_digits = predicted == targets
    correct = correct_digits.all(dim=1).double()  # [batch]
    depth_onehot = torch.nn.functional.one_hot(batch.cascade_depth, n).double()  # [batch, n]
    by_depth = (correct[:, None] * depth_onehot).sum(dim=0) / depth_onehot.sum(dim=0)  # 0/0 = NaN: no such depth
    return torch.cat([correct.mean()[None], correct_digits.double().mean(dim=0), by_depth])
