"""Question sets as plain records, for sharing and inspection (`arithlens data`).

Each record: question, answer, the five per-digit label lists (units-first),
category (BaseAdd / UseCarry1 / UseSum9) and cascade_depth.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from arithlens.task import AdditionBatch, AdditionTask, QuestionCategory


def batch_records(task: AdditionTask, batch: AdditionBatch) -> list[dict[str, Any]]:
    """One JSON-ready dict per question."""
    questions = task.questions(batch)
    answers = task.answers(batch)
    base_add = batch.base_add.tolist()
    make_carry1 = batch.make_carry1.tolist()
    make_sum9 = batch.make_sum9.tolist()
    use_carry1 = batch.use_carry1.tolist()
    use_sum9 = batch.use_sum9.tolist()
    categories = batch.category.tolist()
    depths = batch.cascade_depth.tolist()
    return [
        {
            "question": questions[i],
            "answer": answers[i],
            "base_add": base_add[i],
            "make_carry1": make_carry1[i],
            "make_sum9": make_sum9[i],
            "use_carry1": use_carry1[i],
            "use_sum9": use_sum9[i],
            "category": QuestionCategory(categories[i]).label,
            "cascade_depth": depths[i],
        }
        for i in range(len(batch))
    ]


def jsonl_chunks(task: AdditionTask, batch: AdditionBatch, chunk_size: int = 10_000) -> Iterator[str]:
    """The records of `batch` as JSON lines, `chunk_size` questions per string: a large set is written
    without ever holding all of its records in memory at once."""
    for start in range(0, len(batch), chunk_size):
        chunk = batch.select(slice(start, start + chunk_size))
        yield "".join(json.dumps(record) + "\n" for record in batch_records(task, chunk))
