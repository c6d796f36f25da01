"""Greedy answers from a trained model.

`greedy_answers` generates An .. A0 one token at a time, feeding back the
model's own digits, as a user asking the model would. (Question-level accuracy
from one teacher-forced forward is the same number: both agree up to the first
wrong digit.)
"""

from __future__ import annotations

import torch

from arithlens.model import TransformerBridge, model_config_of, predicted_digits
from arithlens.task import AdditionTask


@torch.no_grad()
def greedy_answers(model: TransformerBridge, question_tokens: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """Answer digits [batch, n+1] (An first) for question tokens [batch, >= 2n+2]."""
    n = model_config_of(model).n_digits
    device = next(model.parameters()).device
    outputs = []
    for start in range(0, question_tokens.shape[0], chunk_size):
        sequence = question_tokens[start : start + chunk_size, : 2 * n + 2].to(device)
        for _ in range(n + 1):
            next_digit = predicted_digits(model(sequence)[:, -1])  # [batch]
            sequence = torch.cat([sequence, next_digit[:, None]], dim=1)
        outputs.append(sequence[:, 2 * n + 2 :].cpu())
    return torch.cat(outputs)


def predict(model: TransformerBridge, questions: list[str]) -> list[str]:
    """Full sequences such as "12345+67890=080235", with the model's own answer."""
    task = AdditionTask(model_config_of(model).n_digits)
    tokens = task.encode(questions)
    answers = greedy_answers(model, tokens)
    return [q + "".join(str(d) for d in row) for q, row in zip(task.decode(tokens[:, : task.question_len]), answers.tolist())]
