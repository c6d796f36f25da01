"""arithlens: train small transformers on integer arithmetic and reverse-engineer what they learn.

The public API:
    AdditionTask, AdditionBatch, SubTask, QuestionCategory   -- the task and its labels
    ModelConfig, TrainConfig, RunConfig                      -- frozen, validated configs
    build_model, load_model                                  -- TransformerLens TransformerBridge models
    train                                                    -- training into a run folder
"""

from __future__ import annotations

__version__ = "0.1.0"

from arithlens.config import ModelConfig, RunConfig, TrainConfig
from arithlens.errors import ArithlensError
from arithlens.model import build_model
from arithlens.task import AdditionBatch, AdditionTask, QuestionCategory, SubTask

__all__ = [
    "AdditionBatch",
    "AdditionTask",
    "ArithlensError",
    "ModelConfig",
    "QuestionCategory",
    "RunConfig",
    "SubTask",
    "TrainConfig",
    "__version__",
    "build_model",
]
