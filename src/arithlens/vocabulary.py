"""Sub-task names in tables: each operation's own, over one set of role identifiers.

The analyses compute with one set of role identifiers, addition's names (BaseAdd, MakeCarry1,
MakeSum9, UseSum9; classes BA, UC1, US9), because every operation has the same column roles
(`arithlens.operations`). What they return and write speaks the operation's language:
`localise` renames the roles in a table's text for a subtraction model (BaseDiff, MakeBorrow,
MakeZero, UseZero; classes BD, UB, UZ; the category UseSum9 is BorrowCascade), and
`canonical` turns any operation's names back into the identifiers, so a table from either
operation can be read by the code that consumes it. Addition tables pass through unchanged.
"""

from __future__ import annotations

import re

import pandas as pd
import plotly.graph_objects as go

from arithlens.operations import ADD, OPERATIONS, Operation
from arithlens.task import ArithmeticTask

_CLASS_CODES = {"add": ("BA", "UC1", "US9"), "sub": ("BD", "UB", "UZ")}
_ROLES = ("base", "make_carry", "make_pass", "use_carry", "use_pass")


def _role_map(operation: Operation) -> dict[str, str]:
    """Addition's identifier -> the operation's name, for roles and class codes."""
    names = {ADD.names.name(role): operation.names.name(role) for role in _ROLES}
    names.update(zip(_CLASS_CODES["add"], _CLASS_CODES[operation.key]))
    return names


def _category_map(operation: Operation) -> dict[str, str]:
    return dict(zip(ADD.names.categories, operation.names.categories))


_REVERSE: dict[str, str] = {}
for _operation in OPERATIONS.values():
    _REVERSE.update({theirs: ours for ours, theirs in _role_map(_operation).items()})
    _REVERSE.update({theirs: ours for ours, theirs in _category_map(_operation).items()})


def class_codes(task: ArithmeticTask) -> tuple[str, str, str]:
    """The sub-task class codes of a task's operation: (BA, UC1, US9) or (BD, UB, UZ)."""
    return _CLASS_CODES[task.operation.key]


def _replace_words(text: str, mapping: dict[str, str], pattern: re.Pattern[str]) -> str:
    return pattern.sub(lambda match: mapping[match.group(0)], text)


def _pattern(mapping: dict[str, str]) -> re.Pattern[str]:
    words = sorted(mapping, key=len, reverse=True)
    return re.compile(r"(?<![A-Za-z0-9])(" + "|".join(map(re.escape, words)) + r")(?![A-Za-z0-9])")


_REVERSE_PATTERN = _pattern(_REVERSE)


def _rename(frame: pd.DataFrame, mapping: dict[str, str], category_mapping: dict[str, str]) -> pd.DataFrame:
    pattern = _pattern(mapping)
    category_pattern = _pattern(category_mapping) if category_mapping else None
    out = frame.copy()
    for column in out.columns:
        values = out[column]
        if not (values.dtype == object or pd.api.types.is_string_dtype(values)):
            continue
        use, words = ((category_mapping, category_pattern) if column == "category" and category_pattern
                      else (mapping, pattern))

        def rename(value: object, use: dict[str, str] = use, words: re.Pattern[str] = words) -> object:
            if isinstance(value, str):
                return _replace_words(value, use, words)
            if isinstance(value, (list, tuple)):
                return type(value)(rename(v) for v in value)
            if hasattr(value, "tolist") and not isinstance(value, (bytes, str)):
                return [rename(v) for v in value.tolist()]
            return value

        out[column] = values.map(rename)
    return out


def localise(frame: pd.DataFrame, task: ArithmeticTask) -> pd.DataFrame:
    """`frame` with its role identifiers in the task's own names (unchanged for addition)."""
    if len(task.operations) != 1 or task.operation.key == "add" or frame.empty:
        return frame
    operation = task.operation
    renamed = _rename(frame, _role_map(operation), _category_map(operation))
    return renamed.rename(columns=lambda c: _replace_words(c, _column_map(operation), _pattern(_column_map(operation)))
                          if _column_map(operation) else c)


def _column_map(operation: Operation) -> dict[str, str]:
    """Column names that carry a role (pca's n_make_carry1, ...)."""
    return {ADD.names.key(role): operation.names.key(role) for role in _ROLES}


def canonical(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with any operation's role names turned back into the identifiers the analyses compute with."""
    if frame.empty:
        return frame
    columns = {theirs: ours for op in OPERATIONS.values() for ours, theirs in _column_map(op).items()}
    out = _rename(frame, _REVERSE, {})
    return out.rename(columns=lambda c: _replace_words(c, columns, _pattern(columns)))


def canonical_name(name: str) -> str:
    """One role or class name as its identifier ("MakeBorrow" -> "MakeCarry1"; addition's are unchanged)."""
    return _replace_words(name, _REVERSE, _REVERSE_PATTERN)


def localised_name(name: str, task: ArithmeticTask) -> str:
    """One role identifier in the task's names ("MakeCarry1" -> "MakeBorrow" for subtraction)."""
    if len(task.operations) != 1 or task.operation.key == "add":
        return name
    mapping = _role_map(task.operation)
    return _replace_words(name, mapping, _pattern(mapping))


def localise_text(text: str, task: ArithmeticTask) -> str:
    """Free text (a figure title, a legend entry) in the task's names; a mixed model's text names both
    operations' ("BaseAdd/BaseDiff"), since its training curves pool them."""
    if all(op.key == "add" for op in task.operations):
        return text
    if len(task.operations) == 1:
        mapping = _role_map(task.operation)
        text = re.sub(r"\baddition\b", "subtraction", text)
    else:
        mapping = {ours: f"{ours}/{theirs}" for ours, theirs in _role_map(OPERATIONS["sub"]).items()}
        text = re.sub(r"\baddition\b", "addition and subtraction", text)
    return _replace_words(text, mapping, _pattern(mapping))


def localise_figure(fig: go.Figure, task: ArithmeticTask) -> go.Figure:
    """The figure with its title, subplot titles, axis titles and trace names in the task's names."""
    if all(op.key == "add" for op in task.operations):
        return fig
    if fig.layout.title.text:
        fig.layout.title.text = localise_text(fig.layout.title.text, task)
    for annotation in fig.layout.annotations:
        if annotation.text:
            annotation.text = localise_text(annotation.text, task)
    for trace in fig.data:
        if getattr(trace, "name", None):
            trace.name = localise_text(trace.name, task)
    for key in fig.layout:
        axis = fig.layout[key]
        if key.startswith(("xaxis", "yaxis")) and axis.title.text:
            axis.title.text = localise_text(axis.title.text, task)
    return fig
