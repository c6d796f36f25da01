"""Greedy answers and the answer-only loss of a model.

`greedy_answers` generates An .. A0 one token at a time, feeding back the
model's own digits, as a user asking the model would. (Question-level accuracy
from one teacher-forced forward is the same number: both agree up to the first
wrong digit.) `predict` does it for question strings.

TransformerLens's `model.generate(question, max_new_tokens=n+1, do_sample=False)`
also works (the model has a tokenizer) and gives the same answers for a trained
model, but it samples unless `do_sample=False` is passed, and its argmax runs over
all 12 tokens, so a weak model can "answer" `+` or `=`; `predict` takes the argmax
over the digits 0-9 only, the convention every arithlens number uses.

`answer_loss` is the training loss: cross-entropy on the n+1 answer digits only.
`model(tokens, return_type="loss")` is TransformerLens's next-token loss over every
position, so it also scores predicting the question's own digits, which are random
(ln 10 = 2.3 each at best) and never trained: it stays high however good the model is.
"""

from __future__ import annotations

import torch

from arithlens.metrics import token_losses
from arithlens.model import TransformerBridge, answer_logits, model_config_of, predicted_answer
from arithlens.task import task_for


@torch.no_grad()
def greedy_answers(model: TransformerBridge, question_tokens: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """Answer tokens [batch, answer_len] (the sign, then An first) for question tokens [batch, >= 2n+2]."""
    task = task_for(model_config_of(model))
    allowed = task.answer_allowed()  # [answer_len, d_vocab]
    device = next(model.parameters()).device
    outputs = []
    for start in range(0, question_tokens.shape[0], chunk_size):
        sequence = question_tokens[start : start + chunk_size, : task.question_len].to(device)
        for index in range(task.answer_len):
            next_token = predicted_answer(model(sequence)[:, -1], allowed[index])  # [batch]
            sequence = torch.cat([sequence, next_token[:, None]], dim=1)
        outputs.append(sequence[:, task.question_len :].cpu())
    return torch.cat(outputs)


def predict(model: TransformerBridge, questions: list[str]) -> list[str]:
    """Full sequences such as "12345+67890=080235" (or "12345-67890=-055545"), with the model's own answer."""
    task = task_for(model_config_of(model))
    tokens = task.encode(questions)
    answers = greedy_answers(model, tokens)
    return task.decode(torch.cat([tokens[:, : task.question_len], answers], dim=1))


def answer_loss(model: TransformerBridge, tokens: torch.Tensor | list[str] | str, *,
                per_digit: bool = False) -> torch.Tensor:
    """The loss training minimises: mean cross-entropy of the answer digits An .. A0 only (float64).

    `tokens` are full sequences [batch, 3n+3] (answers included) or question strings such as
    "12345+67890=" (the true answer is filled in). The forward runs through the bridge, so hooks
    added with `model.hooks(...)` apply and gradients flow. With `per_digit`, the losses
    [batch, n+1] (An first) instead of their mean. Use this, not `model(tokens, return_type="loss")`,
    which also averages over the question positions that nothing trains.
    """
    task = task_for(model_config_of(model))
    if not isinstance(tokens, torch.Tensor):
        tokens = task.encode(tokens)
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    losses = token_losses(answer_logits(model, tokens), tokens[:, task.question_len : task.seq_len])
    return losses if per_digit else losses.mean()
