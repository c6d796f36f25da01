"""Tiny models and question batches shared by the analysis tests.

`trained_one_digit_model` is a 1-digit adder trained full-batch on all 100
questions until it answers every one (well under a second of CPU). One-digit
addition keeps the published structure in miniature: position 3 ("=")
predicts A1 (the carry) and position 4 predicts A0. Each call returns a fresh
copy, so a test that edits weights cannot leak into another.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from transformer_lens.model_bridge import TransformerBridge

from arithlens.config import ModelConfig
from arithlens.model import AnswerForward, build_model
from arithlens.task import AdditionBatch, AdditionTask


def tiny_model(n_digits: int = 2, n_layers: int = 1, normalization: str | None = None,
               dtype: torch.dtype = torch.float32, **shape: int) -> TransformerBridge:
    """An untrained tiny model (d_model 32, d_mlp 64, 4 heads unless given)."""
    config = ModelConfig(n_digits=n_digits, n_layers=n_layers, normalization=normalization,
                         **{"d_model": 32, "d_mlp": 64, "n_heads": 4, **shape})
    return build_model(config).to(dtype)


def all_questions(n_digits: int) -> AdditionBatch:
    """Every question of `n_digits` digits (10^(2n) of them; keep n small)."""
    limit = 10**n_digits
    xs = [x for x in range(limit) for _ in range(limit)]
    ys = [y for _ in range(limit) for y in range(limit)]
    return AdditionTask(n_digits).batch_from_ints(xs, ys)


def random_questions(n_digits: int, count: int, seed: int = 0) -> AdditionBatch:
    return AdditionTask(n_digits).generate(count, torch.Generator().manual_seed(seed))


@lru_cache(maxsize=None)
def _trained_one_digit_state(n_layers: int) -> dict[str, torch.Tensor]:
    model = tiny_model(n_digits=1, n_layers=n_layers)
    forward = AnswerForward(model)
    questions = all_questions(1)
    answers = questions.tokens[:, 4:]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2,
                                  weight_decay=0.0, betas=(0.9, 0.98))
    for _ in range(400):
        logits = forward(questions.tokens)
        loss = -logits.double().log_softmax(-1).gather(-1, answers[..., None]).mean()
        if bool((logits.detach()[..., :10].argmax(-1) == answers).all()) and loss.item() < 0.05:
            break  # before stepping, so the weights kept are the ones just checked
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    else:
        raise AssertionError("the 1-digit fixture model did not learn addition in 400 steps")
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def trained_one_digit_model(n_layers: int = 1) -> TransformerBridge:
    """A fresh 1-digit model that answers all 100 questions correctly."""
    model = tiny_model(n_digits=1, n_layers=n_layers)
    model.load_state_dict(_trained_one_digit_state(n_layers))
    return model
