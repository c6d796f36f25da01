"""arithlens: train small transformers on integer arithmetic and reverse-engineer what they learn.

The public API:
    AdditionTask, AdditionBatch, SubTask, QuestionCategory   -- the task and its labels
    SubtractionTask, MixedTask, ArithmeticBatch, task_for    -- subtraction and mixed models (--op sub|mixed)
    ModelConfig, TrainConfig, RunConfig                      -- frozen, validated configs
    build_model, load_model, load_run                        -- TransformerLens TransformerBridge models, run folders
    train, resume                                            -- training into a run folder
    predict, answer_loss                                     -- greedy answers; the training (answer-only) loss

Heavy modules (TransformerLens) load on first use, so `arithlens --help` and
config errors stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from arithlens.config import ModelConfig, RunConfig, TrainConfig
from arithlens.errors import ArithlensError
from arithlens.task import (
    AdditionBatch,
    AdditionTask,
    ArithmeticBatch,
    ArithmeticTask,
    MixedTask,
    QuestionCategory,
    SubTask,
    SubtractionTask,
    task_for,
)

_LAZY = {
    "build_model": "arithlens.model",
    "load_model": "arithlens.runs",
    "load_run": "arithlens.runs",
    "train": "arithlens.training",
    "resume": "arithlens.training",
    "predict": "arithlens.inference",
    "answer_loss": "arithlens.inference",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'arithlens' has no attribute {name!r}")


__all__ = [
    "ArithmeticBatch",
    "ArithmeticTask",
    "MixedTask",
    "SubtractionTask",
    "task_for",
    "AdditionBatch",
    "AdditionTask",
    "ArithlensError",
    "ModelConfig",
    "QuestionCategory",
    "RunConfig",
    "SubTask",
    "TrainConfig",
    "__version__",
    *_LAZY,
]
