"""The algorithm map: for each answer digit, which nodes compute which sub-task, with the evidence.

Roles for answer digit A_d (the published sub-task names):

- BaseAdd: reads digit pair d (x_d + y_d mod 10);
- MakeCarry1: whether pair d-1 makes a carry into d;
- MakeSum9: whether pair d-1 sums to 9 (so a carry into d-1 would cascade on);
- UseSum9: whether a carry from pair d-2 cascades through a sum-9 pair d-1.

A node is credited with a role when either kind of causal evidence supports it:

- patching: patching the node alone from the clean into the corrupted question
  of that role's pair kind (see `patching`) restores at least
  `patch_threshold` of the clean-vs-corrupted logit difference of A_d, and
  makes more pairs give the clean answer digit than do unpatched: the 95%
  interval of the net flip rate (flips - baseline_flips) lies above 0. A
  model that fails the corrupted questions may "flip" half the pairs with no
  patch at all, so raw flips are no evidence. Only pair sets the model can do
  count: it must get A_d right on at least half of the clean questions and
  prefer the clean digit by at least `min_span` logits more on the clean than
  on the corrupted questions (otherwise the recovery ratio divides noise by
  noise);
- ablation (BaseAdd and MakeCarry1 only): mean-ablating it drops A_d's accuracy
  on the BA class (no carry in) by at least `threshold` (BaseAdd), or on the UC1
  class (carry in) by at least `threshold` while the BA drop is at most half
  of that (MakeCarry1: it matters when a carry comes in). Only classes the
  model gets right at least half the time count. The ablation classes do not
  single out the cascade, so they do not speak for MakeSum9 or UseSum9.

Supporting evidence is listed beside each claim but never makes one alone:
the PCA separation of the head's output by the tri-state of pair d-1
(MakeCarry1/MakeSum9) or d-2 (UseSum9), and the positions the head attends to.
`failed_cases` turns accuracy tables into the list of cases the model cannot do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from arithlens.vocabulary import canonical, localise
from arithlens.errors import ArithlensError
from arithlens.task import ArithmeticTask

ROLES = ("BaseAdd", "MakeCarry1", "MakeSum9", "UseSum9")
MAP_COLUMNS = ["answer_digit", "role", "node", "kind", "position", "layer", "head", "supported_by", "confidence",
               "patching_recovery", "patching_net_flips", "patching_net_flips_ci_low", "patching_net_flips_ci_high",
               "ablation_drop", "pca_separation", "pca_silhouette", "attends_to", "evidence"]
_PATCHING_NEEDS = {"kind", "answer_digit", "node", "recovery", "baseline_flips", "net_flips", "net_flips_ci_low",
                   "net_flips_ci_high"}
_PCA_OFFSET = {"MakeCarry1": 1, "MakeSum9": 1, "UseSum9": 2}  # which pair's tri-state speaks for a role


def roles_for(digit: int, n_digits: int) -> list[str]:
    """The roles that exist for answer digit A`digit` (A_n has no BaseAdd; A0 and A1 have no cascade)."""
    roles = []
    if digit < n_digits:
        roles.append("BaseAdd")
    if digit >= 1:
        roles.append("MakeCarry1")
    if digit >= 2:
        roles += ["MakeSum9", "UseSum9"]
    return roles


def _drops(ablation: pd.DataFrame) -> dict[tuple[str, str], dict[str, tuple[float, float]]]:
    """(node, answer digit) -> {class: (accuracy drop, unablated accuracy)} from a node_ablation frame."""
    rows = ablation[ablation["answer_digit"] != "all"]
    drops: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    for row in rows.itertuples(index=False):
        drop = -float(row.accuracy_delta)
        baseline = float(row.accuracy) + drop if hasattr(row, "accuracy") else 1.0
        drops.setdefault((row.node, row.answer_digit), {})[row.subtask_class] = (drop, baseline)
    return drops


def _model_does(patch: Any, min_span: float) -> bool:
    """Whether the model does the pair set's clean case well enough for a recovery ratio to mean something."""
    span = getattr(patch, "clean_logit_diff", float("inf")) - getattr(patch, "corrupted_logit_diff", 0.0)
    return span >= min_span and getattr(patch, "clean_correct", 1.0) >= 0.5


def _attention_text(attention: pd.DataFrame | None, layer: int, head: int, position: int) -> str:
    if attention is None or head < 0:
        return ""
    rows = attention[(attention["layer"] == layer) & (attention["head"] == head) & (attention["query_pos"] == position)]
    return ", ".join(f"{row.key_name} ({row.weight:.2f})" for row in rows.sort_values("rank").itertuples())


def algorithm_map(n_digits: int, ablation: pd.DataFrame, *, patching: pd.DataFrame | None = None,
                  pca: pd.DataFrame | None = None, attention: pd.DataFrame | None = None,
                  threshold: float = 0.01, patch_threshold: float = 0.2, pca_threshold: float = 2.0,
                  min_span: float = 1.0, task: ArithmeticTask | None = None) -> pd.DataFrame:
    """One row per (answer digit, role, node) claim, with its evidence.

    `ablation` is a `node_ablation` frame, `patching` an `activation_patching`
    frame, `pca` the summary of `head_output_pca`, `attention` a `top_attended`
    frame. `min_span` is in logits. Columns [answer_digit, role, node, kind, position, layer, head,
    supported_by ("patching,ablation"), confidence (number of evidence kinds
    that agree, PCA included), patching_recovery, patching_net_flips (flips
    net of the unpatched baseline) and its 95% interval
    patching_net_flips_ci_low / _high, ablation_drop, pca_separation,
    pca_silhouette, attends_to, evidence]. The input tables may use any operation's names; with
    `task` the map uses its names (MakeBorrow, ...), otherwise the identifiers (addition's).
    """
    ablation = canonical(ablation)
    patching = None if patching is None else canonical(patching)
    pca = None if pca is None else canonical(pca)
    if not 0 <= threshold < 1 or not 0 < patch_threshold <= 1:
        raise ArithlensError("threshold must lie in [0, 1) and patch_threshold in (0, 1]")
    required = {"node", "kind", "position", "layer", "head", "answer_digit", "subtask_class", "accuracy_delta"}
    if not required <= set(ablation.columns):
        raise ArithlensError(f"ablation must be a node_ablation table (missing {sorted(required - set(ablation.columns))})")
    if patching is not None and not _PATCHING_NEEDS <= set(patching.columns):
        raise ArithlensError(f"patching must be an activation_patching table with flips net of the baseline "
                             f"(missing {sorted(_PATCHING_NEEDS - set(patching.columns))}); rerun the patching")
    drops = _drops(ablation)
    info = ablation.drop_duplicates("node").set_index("node")[["kind", "position", "layer", "head"]]
    patch_index = {} if patching is None else {
        (row.kind, row.answer_digit, row.node): row for row in patching.itertuples(index=False)}
    pca_index = {} if pca is None else {
        (row.answer_digit, row.node, int(row.pair_offset)): row for row in pca.itertuples(index=False)}
    nodes = set(info.index) | {key[2] for key in patch_index}
    rows = []
    limits = _Limits(threshold, patch_threshold, pca_threshold, min_span, _ablating(ablation))
    for digit in range(n_digits, -1, -1):
        name = f"A{digit}"
        for role in roles_for(digit, n_digits):
            for node in sorted(nodes):
                rows += _claim(name, digit, role, node, info, drops, patch_index, pca_index, attention, limits)
    frame = pd.DataFrame(rows, columns=MAP_COLUMNS)
    return frame if task is None else localise(frame, task)


@dataclass(frozen=True)
class _Limits:
    threshold: float
    patch_threshold: float
    pca_threshold: float
    min_span: float
    ablating: str  # how the ablation evidence was measured, e.g. "mean-ablating it (against ...)"


def _ablating(ablation: pd.DataFrame) -> str:
    """The words for the ablation behind the evidence: its method and, where recorded, its reference."""
    method = str(ablation["method"].iloc[0]) if "method" in ablation.columns and len(ablation) else "mean"
    if "reference" not in ablation.columns or not len(ablation) or method == "zero":
        return f"{method}-ablating it"
    return f"{method}-ablating it (against {ablation['reference'].iloc[0]})"


def _claim(name: str, digit: int, role: str, node: str, info: pd.DataFrame, drops: dict, patch_index: dict,
           pca_index: dict, attention: pd.DataFrame | None, limits: _Limits) -> list[dict[str, object]]:
    """The claim row for one (digit, role, node), or nothing if no causal evidence supports it."""
    supported, evidence = [], []
    patch = patch_index.get((role, name, node))
    nan = float("nan")
    recovery, net, low, high = (nan, nan, nan, nan) if patch is None else (
        float(patch.recovery), float(patch.net_flips), float(patch.net_flips_ci_low), float(patch.net_flips_ci_high))
    if patch is not None and recovery >= limits.patch_threshold and low > 0 and _model_does(patch, limits.min_span):
        supported.append("patching")
        evidence.append(f"patching it from {role} pairs restores {recovery:.0%} of A{digit}'s logit difference; "
                        f"{net:+.0%} of pairs flip to the clean answer, net of the {float(patch.baseline_flips):.0%} "
                        f"that flip unpatched (95% CI {low:.0%} to {high:.0%})")
    classes = drops.get((node, name), {})
    base, carry = classes.get("BA", (0.0, 0.0)), classes.get("UC1", (0.0, 0.0))
    ablation_drop = float("nan")
    if role == "BaseAdd":
        ablation_drop = base[0]
        if base[0] >= limits.threshold and base[1] >= 0.5:
            supported.append("ablation")
            evidence.append(f"{limits.ablating} drops A{digit} accuracy by {base[0]:.0%} on questions with no "
                            f"carry in")
    elif role == "MakeCarry1":
        ablation_drop = carry[0]
        if carry[0] >= limits.threshold and carry[1] >= 0.5 and base[0] <= carry[0] / 2:
            supported.append("ablation")
            evidence.append(f"{limits.ablating} drops A{digit} accuracy by {carry[0]:.0%} with a carry in "
                            f"vs {base[0]:.0%} without")
    if not supported:
        return []
    if node in info.index:
        kind, position, layer, head = (info.loc[node, c] for c in ("kind", "position", "layer", "head"))
    else:  # only patched, never ablated
        kind, position, layer, head = patch.component, patch.position, patch.layer, patch.head
    separation = silhouette = float("nan")
    confidence = len(supported)
    offset = _PCA_OFFSET.get(role)
    if offset is not None and (name, node, offset) in pca_index:
        pca_row = pca_index[(name, node, offset)]
        separation, silhouette = float(pca_row.separation), float(pca_row.silhouette)
        if separation >= limits.pca_threshold:
            confidence += 1
            evidence.append(f"its output clusters by the tri-state of pair D{digit - offset} "
                            f"(separation {separation:.1f}, silhouette {silhouette:.2f})")
    attends = _attention_text(attention, int(layer), int(head), int(position))
    if attends:
        evidence.append(f"attends to {attends}")
    return [{
        "answer_digit": name, "role": role, "node": node, "kind": kind, "position": int(position),
        "layer": int(layer), "head": int(head), "supported_by": ",".join(supported), "confidence": confidence,
        "patching_recovery": recovery, "patching_net_flips": net, "patching_net_flips_ci_low": low,
        "patching_net_flips_ci_high": high, "ablation_drop": ablation_drop,
        "pca_separation": separation, "pca_silhouette": silhouette, "attends_to": attends,
        "evidence": "; ".join(evidence),
    }]


def digit_roles(map_frame: pd.DataFrame) -> dict[str, dict[str, list[str]]]:
    """{answer digit: {role: [nodes]}} from an `algorithm_map` frame."""
    result: dict[str, dict[str, list[str]]] = {}
    for row in map_frame.itertuples(index=False):
        result.setdefault(row.answer_digit, {}).setdefault(row.role, []).append(row.node)
    return result


def failed_cases(accuracy: pd.DataFrame, *, min_accuracy: float = 0.99, min_questions: int = 20) -> pd.DataFrame:
    """The cases the model cannot do, from an accuracy table with a `source` column.

    `accuracy` holds `accuracy_table` rows per source (the question set they
    were measured on: "random", "cascade_depth_2", ...). Every category, cascade
    depth and answer digit of the random set, every question set overall, and
    "cascade depth >= k" (pooled over the cascade_depth_j sets, j >= k) whose
    accuracy is below `min_accuracy` on at least `min_questions` questions is
    listed, worst first. Columns [source, group_kind, group, questions, accuracy,
    failure_rate, description].
    """
    columns = ["source", "group_kind", "group", "questions", "accuracy", "failure_rate", "description"]
    needed = {"source", "group_kind", "group", "questions", "correct", "accuracy"}
    if not needed <= set(accuracy.columns):
        raise ArithlensError(f"accuracy needs columns {sorted(needed)}")
    picked = accuracy[((accuracy["source"] == "random") & (accuracy["group_kind"] != "overall"))
                      | ((accuracy["source"] != "random") & (accuracy["group_kind"] == "overall"))].copy()
    depth_sets = accuracy[accuracy["source"].str.match(r"^(?:borrow_)?cascade_depth_\d+$")
                          & (accuracy["group_kind"] == "overall")]
    depths = sorted(int(s.rsplit("_", 1)[1]) for s in depth_sets["source"])
    pooled = []
    for k in depths[:-1]:  # the deepest set alone is already listed as itself
        rows = depth_sets[depth_sets["source"].map(lambda s: int(s.rsplit("_", 1)[1]) >= k)]
        questions, correct = int(rows["questions"].sum()), int(rows["correct"].sum())
        pooled.append({"source": "cascade_depth_sets", "group_kind": "cascade_depth_at_least", "group": str(k),
                       "questions": questions, "correct": correct, "accuracy": correct / questions})
    picked = pd.concat([picked, pd.DataFrame(pooled)], ignore_index=True) if pooled else picked
    picked = picked[(picked["questions"] >= min_questions) & (picked["accuracy"] < min_accuracy)].copy()
    picked["failure_rate"] = 1.0 - picked["accuracy"]
    picked["description"] = [_describe(row) for row in picked.itertuples(index=False)]
    picked = picked.sort_values("accuracy").reset_index(drop=True)
    return picked[columns] if not picked.empty else pd.DataFrame([], columns=columns)


def _describe(row: Any) -> str:
    """One line like "UseSum9 cascades of depth >= 2: 62.0% correct, 38.0% fail (600 questions)"."""
    what = {
        "category": f"{row.group} questions",
        "cascade_depth": f"questions with a UseSum9 cascade of depth {row.group}",
        "cascade_depth_at_least": f"UseSum9 cascades of depth >= {row.group}",
        "answer_digit": f"answer digit {row.group}",
    }.get(row.group_kind, f"the {row.source} question set")
    where = "" if row.source in ("random", "cascade_depth_sets") or row.group_kind == "overall" else f" ({row.source})"
    return f"{what}{where}: {row.accuracy:.1%} correct, {row.failure_rate:.1%} fail ({row.questions} questions)"
