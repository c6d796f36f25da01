"""Question sets as plain records, for sharing and inspection (`arithlens data`).

Each record: question, answer, op, the per-digit label lists (units first) under the names of
the question's operation (addition: base_add, make_carry1, make_sum9, use_carry1, use_sum9;
subtraction, on the larger operand minus the smaller: base_diff, make_borrow, make_zero,
use_borrow, use_zero), the category, the cascade depth (cascade_depth / borrow_cascade_depth)
and, for subtraction, the published question class (M0, M1, M2, ... and N0, N1, ... for
negative answers: 0 no borrow, 1 a borrow with no cascade, k+1 a cascade of depth k).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from arithlens.operations import OPERATIONS
from arithlens.task import OPERATION_IDS, ArithmeticBatch, ArithmeticTask

_ROLES = ("base", "make_carry", "make_pass", "use_carry", "use_pass")
_OPERATION_OF_ID = {index: OPERATIONS[key] for key, index in OPERATION_IDS.items()}


def question_class(category: int, depth: int, negative: bool) -> str:
    """The published subtraction class: M (or N, negative) then 0 no borrow, 1 a borrow, k+1 a cascade of depth k."""
    return ("N" if negative else "M") + str(0 if category == 0 else 1 + depth)


def batch_records(task: ArithmeticTask, batch: ArithmeticBatch) -> list[dict[str, Any]]:
    """One JSON-ready dict per question."""
    questions = task.questions(batch)
    answers = task.answers(batch)
    labels = {role: getattr(batch, role).tolist() for role in _ROLES}
    categories = batch.category.tolist()
    depths = batch.cascade_depth.tolist()
    ops = batch.op.tolist()
    negative = batch.negative.tolist()
    records = []
    for i in range(len(batch)):
        operation = _OPERATION_OF_ID[ops[i]]
        names = operation.names
        record: dict[str, Any] = {"question": questions[i], "answer": answers[i], "op": operation.key}
        record.update({names.key(role): labels[role][i] for role in _ROLES})
        record["category"] = names.categories[categories[i]]
        record[names.depth_key] = depths[i]
        if operation.key == "sub":
            record["class"] = question_class(categories[i], depths[i], negative[i])
        records.append(record)
    return records


def jsonl_chunks(task: ArithmeticTask, batch: ArithmeticBatch, chunk_size: int = 10_000) -> Iterator[str]:
    """The records of `batch` as JSON lines, `chunk_size` questions per string: a large set is written
    without ever holding all of its records in memory at once."""
    for start in range(0, len(batch), chunk_size):
        chunk = batch.select(slice(start, start + chunk_size))
        yield "".join(json.dumps(record) + "\n" for record in batch_records(task, chunk))
