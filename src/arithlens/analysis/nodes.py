"""Useful positions and useful nodes, tagged with what ablating them breaks.

A node is a head or an MLP at one position, named like ``P14L0H2`` (position
14, layer 0, head 2) or ``P14L0M`` (the layer-0 MLP at position 14); the names
live in `naming` and are re-exported here. A node or position is useful when
mean-ablating it (against the default reference, 1,000 uniformly random
questions) drops the accuracy of some answer digit, or of one sub-task class
of it (BA / UC1 / US9), by more than `threshold` (a fraction of the questions
in that group). Its tags, as in the published work: the answer digits it
impacts (e.g. ablating what P16 computes breaks only A0), the sub-task
classes that fail ("A3.US9"), the failure rate (the largest drop in a digit's
accuracy) and, for heads, the positions it attends to.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from transformer_lens.model_bridge import TransformerBridge

from arithlens.analysis.ablation import POSITION_SITES, node_ablation, position_ablation
from arithlens.analysis.attention import attention_patterns
from arithlens.analysis.naming import node_name, parse_node_name
from arithlens.analysis.reference import Reference
from arithlens.errors import ArithlensError
from arithlens.model import model_config_of
from arithlens.task import AdditionBatch, task_for

__all__ = ["Node", "node_name", "nodes_table", "parse_node_name", "useful_nodes", "useful_positions"]

ATTENTION_QUESTIONS = 2048  # mean attention settles long before this; more only costs time
ATTENTION_MIN_WEIGHT = 0.1
ATTENTION_TOP = 3


@dataclass(frozen=True)
class Node:
    """A useful node and its tags."""

    name: str
    position: int
    layer: int
    head: int | None  # None for an MLP
    impacts: tuple[str, ...]  # answer digits it breaks, e.g. ("A3",)
    failing_subtasks: tuple[str, ...]  # e.g. ("A3.UC1", "A3.US9")
    failure_rate: float  # the largest drop in an answer digit's accuracy
    attends_to: tuple[str, ...] = ()  # heads only: top attended position names

    @property
    def kind(self) -> str:
        return "mlp" if self.head is None else "head"


def _check_threshold(threshold: float) -> None:
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 <= threshold < 1:
        raise ArithlensError(f"threshold must be a number in [0, 1), got {threshold!r}")


def _breaks(effects: pd.DataFrame, threshold: float) -> tuple[tuple[str, ...], tuple[str, ...], float]:
    """(impacted digits, failing sub-task classes, failure rate) from one ablation's effects rows."""
    digits = effects[effects["answer_digit"] != "all"]
    broken = digits[digits["accuracy_delta"] < -threshold]  # NaN (empty class) compares False
    order = sorted(set(broken["answer_digit"]), key=_answer_order)  # the sign, then An first, as answers read
    failing = tuple(f"{row.answer_digit}.{row.subtask_class}" for row in broken.itertuples()
                    if row.subtask_class != "all")
    drops = -digits.loc[digits["subtask_class"] == "all", "accuracy_delta"]
    return tuple(order), failing, max(0.0, float(drops.max()))  # 0.0 first: max(-0.0, 0.0) is -0.0


def _answer_order(name: str) -> int:
    """Sort key of an answer token name: "sign" first, then An .. A0."""
    return -1_000 if name == "sign" else -int(name[1:])


def useful_positions(model: TransformerBridge, batch: AdditionBatch, *, threshold: float = 0.01,
                     reference: Reference = None, ablation: pd.DataFrame | None = None) -> pd.DataFrame:
    """Positions whose computation or input, mean-ablated, breaks some answer digit.

    Each of `position_ablation`'s default sites is judged on its own: what the
    position computes ("attention+mlp output", every layer's heads and MLP)
    and what it is given ("input", its embedding). resid_post rows in
    `ablation` are left out: in a 1-layer model they cannot fail. Sub-task
    classes are not considered here. `ablation` reuses a `position_ablation`
    frame of this model and batch; `reference` as in `ablate`.

    Columns [site, position, position_name, impacts ("A1,A0"), failure_rate, max_loss_delta].
    """
    _check_threshold(threshold)
    if ablation is None:
        ablation = position_ablation(model, batch, method="mean", reference=reference)
    if "site" not in ablation.columns:
        raise ArithlensError("ablation must be a position_ablation table with a site column (an older table "
                             "ablated resid_post, which in a 1-layer model cannot fail); rerun position_ablation")
    ablation = ablation[ablation["site"].isin(POSITION_SITES)]
    rows = []
    for (site, position, position_name), effects in ablation.groupby(["site", "position", "position_name"],
                                                                     sort=False):
        impacts, _, failure_rate = _breaks(effects.assign(subtask_class="all"), threshold)
        if impacts:
            rows.append({"site": site, "position": position, "position_name": position_name,
                         "impacts": ",".join(impacts), "failure_rate": failure_rate,
                         "max_loss_delta": float(effects["loss_delta"].max())})
    return pd.DataFrame(rows, columns=["site", "position", "position_name", "impacts", "failure_rate",
                                       "max_loss_delta"])


def useful_nodes(model: TransformerBridge, batch: AdditionBatch, *, threshold: float = 0.01,
                 ablation: pd.DataFrame | None = None, reference: Reference = None) -> list[Node]:
    """Every node whose mean ablation breaks an answer digit or sub-task class, in position order.

    `ablation` reuses a `node_ablation` frame of this model and batch;
    otherwise one is made with `reference` (as in `ablate`).
    """
    _check_threshold(threshold)
    if ablation is None:
        ablation = node_ablation(model, batch, method="mean", reference=reference)
    names = task_for(model_config_of(model)).position_names()
    pattern = None
    nodes = []
    for name, effects in ablation.groupby("node", sort=False):
        impacts, failing, failure_rate = _breaks(effects, threshold)
        if not impacts:
            continue
        position, layer, head = parse_node_name(name)
        attends_to: tuple[str, ...] = ()
        if head is not None:
            if pattern is None:  # [layer, head, query, key], averaged over the first questions
                pattern = attention_patterns(model, batch.select(slice(0, ATTENTION_QUESTIONS))).mean(0)
            weights = pattern[layer, head, position]  # [key]
            top = weights.argsort(descending=True)[:ATTENTION_TOP]
            attends_to = tuple(names[k] for i, k in enumerate(top.tolist())
                               if i == 0 or weights[k] >= ATTENTION_MIN_WEIGHT)
        nodes.append(Node(name, position, layer, head, impacts, failing, failure_rate, attends_to))
    return sorted(nodes, key=lambda node: (node.position, node.layer, node.head is None, node.head or 0))


def nodes_table(nodes: list[Node], *, ablation: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per node; tuple tags joined with commas.

    Columns [node, kind, position, layer, head (-1 for MLPs), impacts,
    failing_subtasks, failure_rate, attends_to]; with `ablation` (the
    node_ablation frame the nodes were found in) also its [method, reference].
    """
    columns = ["node", "kind", "position", "layer", "head", "impacts", "failing_subtasks", "failure_rate", "attends_to"]
    table = pd.DataFrame(
        [{"node": node.name, "kind": node.kind, "position": node.position, "layer": node.layer,
          "head": -1 if node.head is None else node.head, "impacts": ",".join(node.impacts),
          "failing_subtasks": ",".join(node.failing_subtasks), "failure_rate": node.failure_rate,
          "attends_to": ",".join(node.attends_to)} for node in nodes],
        columns=columns,
    )
    recorded = [c for c in ("method", "reference") if ablation is not None and c in ablation.columns]
    for column in recorded:
        table[column] = pd.Series([ablation[column].iloc[0]] * len(table), dtype="object")
    return table
