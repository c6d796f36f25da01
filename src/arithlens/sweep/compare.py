"""Comparing the cells of a sweep: accuracy, phase changes, circuit scores, and which parts of the algorithm they share.

Every function takes `CellAnalysis` records (one finished cell each: its grid
values, its analysis summary.json and algorithm_map.parquet) and returns a
DataFrame:

- `comparison`: one row per cell. [cell, <grid flags>, steps_done, train_seconds, questions, accuracy, failures,
  nines, accuracy_depth_<d>..., accuracy_A<d>..., phases_A<d>, phase_A<d>_start, phase_A<d>_steepest,
  phase_A<d>_end (the largest phase change of each answer digit), map_claims, circuit.<score>...
  (summary.json's "circuit" scores per answer digit, e.g. circuit.A3.faithfulness, where a cell has them)]
- `cascade_accuracy`: [cell, cascade_depth, questions, accuracy]
- `phase_steps`: [cell, answer_digit, phase, start_step, steepest_step, end_step, log10_drop]
- `circuit_scores`: [cell, score, value]
- `map_components`: the algorithm map with heads matched by what they do, not their index:
  [cell, answer_digit, role, kind, position, attends_to, nodes]; attends_to is the set of positions
  the node attends to (names only, sorted; weights dropped), so H1 in one seed and H3 in another
  doing the same thing are one component.
- `universality`: per component, how many cells have it. [group, answer_digit, role, kind, position,
  attends_to, cells_with_it, cells, share, in_cells]; "group" is "all cells", or one value of the
  axes other than the seed ("layers=2") so that "every seed" is asked within each model shape.

`universality_sentences` says in words which parts every cell of a group shares and which vary.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from arithlens.errors import RunFolderError
from arithlens.runs import ANALYSIS_DIR, CONFIG_FILE
from arithlens.sweep.cell import SUMMARY_FILE, run_status
from arithlens.vocabulary import canonical_name

ALL_CELLS = "all cells"
COMPONENT_KEY = ["answer_digit", "role", "kind", "position", "attends_to"]
ROLE_ORDER = {"BaseAdd": 0, "MakeCarry1": 1, "MakeSum9": 2, "UseSum9": 3}  # subtraction's roles map onto these
UNIVERSALITY_COLUMNS = ["group", *COMPONENT_KEY, "cells_with_it", "cells", "share", "in_cells"]


@dataclass
class CellAnalysis:
    """What a finished cell's folder says: grid values, run info, summary.json and the algorithm map."""

    name: str
    values: dict[str, Any]
    summary: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    algorithm_map: pd.DataFrame | None = None


def load_cell(folder: Path, name: str, values: dict[str, Any]) -> CellAnalysis | None:
    """A finished cell's analysis, or None while it has none (not trained to the end, or not analysed)."""
    summary_path = folder / ANALYSIS_DIR / SUMMARY_FILE
    if run_status(folder) != "complete" or not summary_path.is_file():
        return None
    map_path = folder / ANALYSIS_DIR / "algorithm_map.parquet"
    try:
        summary = json.loads(summary_path.read_text())
        info = json.loads((folder / CONFIG_FILE).read_text()).get("run", {})
        claims = pd.read_parquet(map_path) if map_path.is_file() else None
    except (OSError, ValueError) as error:  # pyarrow's errors are ValueErrors too
        raise RunFolderError(f"cannot read the analysis of cell {name} in {folder} ({error}); remove its analysis/ "
                             f"folder and run the sweep again to redo it") from None
    return CellAnalysis(name, values, summary, info, claims)


def _answer_digits(summary: dict[str, Any]) -> dict[str, Any]:
    return summary.get("answer_digits") or {}


def _main_phase(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """The phase change with the largest loss drop (a digit can have several small ones as well)."""
    return max(phases, key=lambda p: p.get("log10_drop") or 0.0) if phases else {}


def _numeric_leaves(data: Any, prefix: str = "") -> dict[str, float]:
    """{"a.b": 0.9, ...}: every number in a nested dict, keys joined by dots (bools and text left out)."""
    if isinstance(data, dict):
        leaves: dict[str, float] = {}
        for key, value in data.items():
            leaves.update(_numeric_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return leaves
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        return {prefix: float(data)}
    return {}


def _circuit_leaves(summary: dict[str, Any]) -> dict[str, float]:
    """The scores of summary.json's "circuit" section: {"A3.faithfulness": 0.98, "all.cpr": ...}.

    Its per-answer-digit part when it has one (the rest is settings: question count, thresholds),
    else every number in it; nothing when the section is missing (an analysis from before it existed).
    """
    circuit = summary.get("circuit")
    if not isinstance(circuit, dict):
        return {}
    digits = circuit.get("answer_digits")
    return _numeric_leaves(digits if isinstance(digits, dict) else circuit)


def comparison(cells: Sequence[CellAnalysis]) -> pd.DataFrame:
    """One row per cell (see the module docstring for the columns)."""
    rows = []
    for cell in cells:
        accuracy = cell.summary.get("accuracy") or {}
        row: dict[str, Any] = {"cell": cell.name, **cell.values, "steps_done": cell.info.get("steps_done"),
                               "train_seconds": cell.info.get("seconds"),
                               **{k: accuracy.get(k) for k in ("questions", "accuracy", "failures", "nines")}}
        for depth, group in (accuracy.get("by_cascade_depth") or {}).items():
            row[f"accuracy_depth_{depth}"] = group.get("accuracy")
        for digit, info in _answer_digits(cell.summary).items():
            row[f"accuracy_{digit}"] = info.get("accuracy")
        for digit, info in _answer_digits(cell.summary).items():
            phases = info.get("phase_changes") or []
            main = _main_phase(phases)
            row[f"phases_{digit}"] = len(phases)
            for part in ("start", "steepest", "end"):
                row[f"phase_{digit}_{part}"] = main.get(f"{part}_step")
        row["map_claims"] = None if cell.algorithm_map is None else len(cell.algorithm_map)
        row.update({f"circuit.{name}": value for name, value in _circuit_leaves(cell.summary).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def cascade_accuracy(cells: Sequence[CellAnalysis]) -> pd.DataFrame:
    """Accuracy by cascade depth per cell, long form."""
    rows = [{"cell": cell.name, "cascade_depth": int(depth), "questions": group.get("questions"),
             "accuracy": group.get("accuracy")}
            for cell in cells
            for depth, group in ((cell.summary.get("accuracy") or {}).get("by_cascade_depth") or {}).items()]
    return pd.DataFrame(rows, columns=["cell", "cascade_depth", "questions", "accuracy"])


def phase_steps(cells: Sequence[CellAnalysis]) -> pd.DataFrame:
    """Every phase change of every answer digit of every cell, long form."""
    columns = ["start_step", "steepest_step", "end_step", "log10_drop"]
    rows = [{"cell": cell.name, "answer_digit": digit, "phase": index, **{c: phase.get(c) for c in columns}}
            for cell in cells for digit, info in _answer_digits(cell.summary).items()
            for index, phase in enumerate(info.get("phase_changes") or [])]
    return pd.DataFrame(rows, columns=["cell", "answer_digit", "phase", *columns])


def circuit_scores(cells: Sequence[CellAnalysis]) -> pd.DataFrame:
    """The numbers of each cell's summary.json "circuit" section, long form (empty when no cell has one)."""
    rows = [{"cell": cell.name, "score": name, "value": value}
            for cell in cells for name, value in _circuit_leaves(cell.summary).items()]
    return pd.DataFrame(rows, columns=["cell", "score", "value"])


def _attended(text: Any) -> str:
    """ "D'2 (0.51), D2 (0.48)" -> "D2, D'2": the positions alone, in a fixed order."""
    names = [re.sub(r"\s*\([^)]*\)\s*$", "", part).strip() for part in str(text or "").split(",")]
    return ", ".join(sorted((n for n in names if n), key=lambda n: (n.replace("'", ""), "'" in n)))  # D2 before D'2


def map_components(cells: Sequence[CellAnalysis]) -> pd.DataFrame:
    """Each cell's algorithm-map claims matched by role, position and attended positions (not head index)."""
    frames = []
    for cell in cells:
        claims = cell.algorithm_map
        if claims is None or not len(claims):
            continue
        claims = claims.assign(cell=cell.name, attends_to=claims["attends_to"].map(_attended))
        grouped = claims.groupby(COMPONENT_KEY, sort=False)["node"].agg(lambda nodes: ", ".join(sorted(set(nodes))))
        frames.append(grouped.reset_index().rename(columns={"node": "nodes"}).assign(cell=cell.name))
    columns = ["cell", *COMPONENT_KEY, "nodes"]
    if not frames:
        return pd.DataFrame([], columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def cell_groups(cells: Sequence[CellAnalysis], axes: Sequence[str]) -> dict[str, list[str]]:
    """{"all cells": every cell} and, when the seed is an axis beside others, one group per other-axis value.

    So "which parts does every seed share" is asked of each model shape (layers=1, layers=2) as
    well as of the whole sweep.
    """
    groups = {ALL_CELLS: [cell.name for cell in cells]}
    others = [axis for axis in axes if axis != "seed"]
    if "seed" in axes and others:
        for cell in cells:
            label = ",".join(f"{axis}={cell.values.get(axis)}" for axis in others)
            groups.setdefault(label, []).append(cell.name)
    return groups


def universality(components: pd.DataFrame, groups: dict[str, list[str]]) -> pd.DataFrame:
    """Per group of cells and component, how many of the group's cells have it; widest-shared first."""
    rows = []
    for group, names in groups.items():
        part = components[components["cell"].isin(names)]
        for key, found in part.groupby(COMPONENT_KEY, sort=False):
            holders = sorted(set(found["cell"]), key=names.index)
            rows.append({"group": group, **dict(zip(COMPONENT_KEY, key)), "cells_with_it": len(holders),
                         "cells": len(names), "share": len(holders) / len(names), "in_cells": ", ".join(holders)})
    table = pd.DataFrame(rows, columns=UNIVERSALITY_COLUMNS)
    if not len(table):
        return table
    order = table.assign(_digit=table["answer_digit"].str[1:].astype(int),
                         _role=table["role"].map(lambda role: ROLE_ORDER.get(canonical_name(role), len(ROLE_ORDER))),
                         _group=table["group"].map(list(groups).index))
    order = order.sort_values(["_group", "share", "_digit", "_role", "position", "kind", "attends_to"],
                              ascending=[True, False, False, True, True, True, True])
    return order[UNIVERSALITY_COLUMNS].reset_index(drop=True)


def component_label(row: Any) -> str:
    """ "A2 BaseAdd: head at P14 reading D2, D'2" (or "MLP at P14")."""
    where = f"{'MLP' if row.kind == 'mlp' else row.kind} at P{int(row.position)}"
    reads = f" reading {row.attends_to}" if row.attends_to else ""
    return f"{row.answer_digit} {row.role}: {where}{reads}"


def universality_sentences(table: pd.DataFrame, groups: dict[str, list[str]], limit: int = 12) -> list[str]:
    """Per group, one sentence on what every cell shares and one on what varies."""
    sentences = []
    for group, names in groups.items():
        part = table[table["group"] == group]
        if len(names) < 2:
            sentences.append(f"{group}: only one cell ({names[0]}) has an analysis, so nothing can be compared yet."
                             if names else f"{group}: no cell has an analysis yet.")
            continue
        shared, varies = part[part["share"] == 1.0], part[part["share"] < 1.0]
        every = f"all {len(names)} cells" if group == ALL_CELLS else f"all {len(names)} cells with {group}"
        if len(shared):
            listed = "; ".join(component_label(r) for r in shared.head(limit).itertuples())
            more = f" (and {len(shared) - limit} more)" if len(shared) > limit else ""
            sentences.append(f"Shared by {every}: {listed}{more}.")
        else:
            sentences.append(f"No part of the algorithm map is shared by {every}.")
        if len(varies):
            listed = "; ".join(f"{component_label(r)} ({r.cells_with_it} of {r.cells})"
                               for r in varies.head(limit).itertuples())
            more = f" (and {len(varies) - limit} more)" if len(varies) > limit else ""
            sentences.append(f"Varies across {every}: {listed}{more}.")
        else:
            sentences.append(f"Nothing varies: every component found is found in {every}.")
    return sentences
