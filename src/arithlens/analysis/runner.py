"""`analyze_run`: every analysis of a run folder, written to RUN_DIR/analysis/ (or a folder you name) as parquet plus summary.json.

Question sets (from `make_question_set`, all seeded by `seed`):
`count` random questions feed the ablations; their first `sample_count` feed
one shared activation cache for attention, logit lens, DLA and PCA;
`set_count` questions of every named set measure accuracy by case;
`full_accuracy_count` random questions (default `count`) measure overall
accuracy and nines; ablations replace activations with their mean over a
separate reference, 1,000 uniformly random questions of a fixed seed (never
the tested set: a narrow set's mean encodes its answer); patching builds its
own `patch_count` pairs per kind (200 by default, enough for the 95% interval
of a net flip rate to exclude 0 only for a real effect) and
patches every last-layer node at the answer-predicting positions plus every
useful node (earlier-layer nodes that ablation finds useless are skipped,
which is what keeps multi-layer models fast).

Files (one row per ...; columns):

- accuracy.parquet: accuracy_table rows of each question set.
  [source, source_description, group_kind, group, questions, correct, accuracy, failures, nines];
  source "random" is the full-accuracy set, others are the named sets.
- failures.parquet: up to 1000 wrongly answered random questions. [question, expected, predicted,
  wrong_digits, category, cascade_depth, use_carry1, use_sum9, make_sum9, make_carry1, pairs_below]
- failure_patterns.parquet: the wrong digits of the full-accuracy set grouped by the state of the
  digit pairs below them, against base rates (`failure_patterns`). [answer_digit, below, state,
  wrong_digits, wrong_share, base_rate, ratio]
- failed_cases.parquet: cases the model cannot do (accuracy < 99%), worst first. [source, group_kind,
  group, questions, accuracy, failure_rate, description]
- node_ablation.parquet: mean ablation of each head/MLP at each position. [node, kind, position, layer,
  head, answer_digit, subtask_class, questions, loss, loss_delta, accuracy, accuracy_delta, method,
  reference] (reference: a description of the questions the means come from)
- position_ablation.parquet: mean ablation at each position of what it computes (site "attention+mlp
  output": every head's z and the MLP output) and of what it is given (site "input": layer 0's
  resid_pre), on the first 2,000 random questions. [site, position, position_name, answer_digit, questions, loss, loss_delta, accuracy,
  accuracy_delta, method, reference]
- useful_nodes.parquet: [node, kind, position, layer, head, impacts, failing_subtasks, failure_rate, attends_to,
  method, reference]
- attention.parquet: mean attention per category. [category, questions, layer, head, query_pos,
  query_name, key_pos, key_name, weight]
- attention_examples.parquet: [example, question, category, layer, head, query_pos, query_name, key_pos,
  key_name, weight]
- logit_lens.parquet: [answer_digit, position, subtask_class, stage_index, stage, questions,
  correct_logit, logit_diff, accuracy, loss]
- dla.parquet: [answer_digit, position, subtask_class, component, kind, layer, head, node, questions,
  logit_attr, logit_diff_attr]
- head_sources.parquet: [answer_digit, position, subtask_class, layer, head, node, source_pos,
  source_name, questions, logit_attr, logit_diff_attr]
- patching.parquet: [kind, answer_digit, component, layer, head, position, position_name, node, pairs,
  clean_logit_diff, corrupted_logit_diff, patched_logit_diff, recovery, flips, clean_correct, baseline_flips,
  net_flips, flips_ci_low, flips_ci_high, net_flips_ci_low, net_flips_ci_high]; net_flips = flips -
  baseline_flips, the evidence; the _ci_ columns are 95% intervals
- pca.parquet: [answer_digit, position, layer, head, node, pair_digit, pair_offset, questions,
  n_make_carry1, n_make_sum9, n_neither, explained_variance_pc1, explained_variance_pc2,
  explained_variance_pc3, explained_variance_top, separation, silhouette]
- pca_points.parquet: [answer_digit, position, layer, head, node, question, pc1, pc2, pc3,
  tri_state_below, tri_state_below2]
- phases.parquet: [answer_digit, loss_column, phase, start_step, steepest_step, end_step, loss_before,
  loss_after, log10_drop, max_slope_per_1k]
- subtask_changes.parquet: [answer_digit, phase, column, subtask, digit, loss_before, loss_after, log10_change]
- checkpoint_nodes.parquet: [answer_digit, phase, step_before, step_after, node, useful_before,
  useful_after, became_useful, failure_rate_before, failure_rate_after, impacts_after, failing_subtasks_after]
- algorithm_map.parquet: [answer_digit, role, node, kind, position, layer, head, supported_by,
  confidence, patching_recovery, patching_net_flips, patching_net_flips_ci_low, patching_net_flips_ci_high,
  ablation_drop, pca_separation, pca_silhouette, attends_to, evidence]
- circuit.parquet: does the map explain the model (`circuit.map_circuit`, on the first 2,000 random
  questions, means over the ablation reference): per answer digit its map nodes kept and every other
  node mean-ablated, plus "all" (the union map, whole answer). [answer_digit, nodes, node_count,
  faithfulness, completeness, accuracy_kept, accuracy_ablated, cpr, cmd, redundant_nodes, accuracy_full,
  logit_diff_full, logit_diff_empty, logit_diff_kept, logit_diff_ablated, curve_nodes, questions, reference]
- circuit_curve.parquet: f as the nodes that can reach the digit are kept in order of single-node
  ablation effect. [answer_digit, nodes_kept, share_kept, node_added, map_nodes_kept, faithfulness, accuracy]
- circuit_minimality.parquet: f without each map node. [answer_digit, node, faithfulness_without, drop,
  accuracy_without, accuracy_drop, redundant]
- edges.parquet: in models of 2+ layers, the edges from earlier-layer nodes into the map's later-layer
  nodes, by path patching on the first 500 random questions (`edges.path_patching_edges`; empty for one
  layer). [answer_digit, sender, receiver, sender_layer, receiver_layer, sender_position, receiver_position,
  effect, effect_abs, receiver_effect, share, questions, reference]; effect < 0: the edge matters
- clauses.parquet: the published 1-layer algorithm (hypotheses/published_1layer.toml, or the same
  clauses for other digit counts) tested causally on `patch_count` question pairs per clause
  (`clauses.evaluate_clauses`). [clause, answer_digit, subtask, pair, expect, test, nodes, claim, pairs,
  clean_correct, baseline_flips, flips, net_flips, net_flips_ci_low, net_flips_ci_high, recovery, changed,
  changed_ci_low, changed_ci_high, margin, verdict, reason]; verdict is strong, weak or fail
- summary.json: model config, settings, overall accuracy, per answer digit its useful nodes with
  their sub-task roles, its role -> nodes map and phase changes; the cases the model cannot do;
  "failure_patterns" (a one-sentence summary and the first rows of failure_patterns.parquet);
  "circuit" (questions, reference and per answer digit and "all" f, completeness, CPR, CMD and the
  redundant nodes of the map);
  "clauses" (the hypothesis file, "X of Y clauses passed (S strong, W weak)", counts by verdict
  and the rows of clauses.parquet); every file's columns; seconds per stage.

Tables of a stage that has nothing to report (no metrics, no phase change)
are written empty with their columns.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pyarrow import ArrowException
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from arithlens import __version__
from arithlens.analysis.ablation import node_ablation, position_ablation
from arithlens.analysis.accuracy import (
    accuracy_table,
    evaluate,
    failure_pattern_digest,
    failure_patterns,
    failure_table,
    random_accuracy,
)
from arithlens.analysis.algorithm_map import algorithm_map, digit_roles, failed_cases
from arithlens.analysis.attention import attention_examples, mean_attention_by_class, top_attended
from arithlens.analysis.attribution import analysis_cache, direct_logit_attribution, head_source_attribution, logit_lens
from arithlens.analysis.circuit import circuit_summary, map_circuit
from arithlens.analysis.clauses import CLAUSE_COLUMNS, clause_summary, evaluate_clauses
from arithlens.analysis.dynamics import bracketing_steps, compare_checkpoints, phase_changes, subtask_changes
from arithlens.analysis.edges import EDGE_COLUMNS, path_patching_edges, top_edges
from arithlens.analysis.hypotheses import default_clauses
from arithlens.analysis.nodes import Node, node_name, nodes_table, useful_nodes
from arithlens.analysis.patching import DEFAULT_PAIRS, activation_patching, pair_kinds
from arithlens.analysis.pca import head_output_pca
from arithlens.analysis.question_sets import make_question_set, question_set_names
from arithlens.errors import ArithlensError, RunFolderError
from arithlens.folders import (
    check_writable,
    is_analysis_folder,
    recover_folder,
    replace_folder,
    run_folder_lock,
    staging_folder,
)
from arithlens.model import model_config_of
from arithlens.runs import ANALYSIS_DIR, Run, is_bundled, load_run, resolve_run_path, write_json
from arithlens.task import ArithmeticTask, task_for
from arithlens.vocabulary import localise

SUMMARY_FILE = "summary.json"
MIN_COUNT = 2  # PCA needs at least two questions; checked before the work, not at the PCA stage
FAILURE_LIMIT = 1000
POSITION_ABLATION_COUNT = 2000
CIRCUIT_COUNT = 2000  # each node set kept is a forward pass of its own; f settles to ~0.01 long before 10K
EDGE_COUNT = 500  # path patching costs a recomputation per edge; 1,770 edges of add_d5_l2 take ~21 s at 500
MAX_COUNT = 1_000_000


def _check_count(name: str, value: Any, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ArithlensError(f"{name} must be an integer >= {minimum}, got {value!r}")


class _Stages:
    """One rich progress bar per stage (or nothing when progress is off), with seconds per stage."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, total: int = 1) -> Iterator[Callable[[int], None]]:
        started = time.perf_counter()
        task_id = None if self.progress is None else self.progress.add_task(name, total=max(total, 1))

        def advance(k: int) -> None:
            if self.progress is not None and task_id is not None:
                self.progress.advance(task_id, k)

        yield advance
        if self.progress is not None and task_id is not None:
            self.progress.update(task_id, completed=max(total, 1))
        self.seconds[name] = round(time.perf_counter() - started, 3)


@contextmanager
def _progress(enabled: bool) -> Iterator[_Stages]:
    if not enabled:
        yield _Stages(None)
        return
    columns = (TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as progress:
        yield _Stages(progress)


def check_analysis_settings(*, count: int = 10_000, full_accuracy_count: int | None = None,
                            sample_count: int = 1000, set_count: int = 300, patch_count: int = DEFAULT_PAIRS,
                            checkpoint_count: int = 500, seed: int = 0) -> None:
    """Validate `analyze_run`'s numbers; `arithlens run` calls it before training, not after."""
    _check_count("count", count, MIN_COUNT)
    if count > MAX_COUNT:
        raise ArithlensError(f"count must be at most {MAX_COUNT:,} (the ablations hold every question's "
                             f"activations), got {count:,}; use `arithlens eval --count` for accuracy on more")
    for name, value in (("full_accuracy_count", full_accuracy_count if full_accuracy_count is not None else count),
                        ("sample_count", sample_count), ("set_count", set_count), ("patch_count", patch_count),
                        ("checkpoint_count", checkpoint_count)):
        _check_count(name, value)
    _check_count("seed", seed, 0)


def analysis_folder(run_path: Path, out: str | Path | None = None) -> Path:
    """Where the analysis of `run_path` goes: `out`, or RUN_DIR/analysis/ (never a bundled model's own)."""
    if out is None:
        if is_bundled(run_path):
            raise ArithlensError(
                f"{run_path.name} is a bundled model: its analysis ships with arithlens and is not rewritten; "
                f"give an output folder (arithlens analyze {run_path.name} --out DIR; "
                f"the CLI's default is ./{run_path.name}-analysis)")
        return run_path / ANALYSIS_DIR
    target = Path(out)
    if target.exists() and not is_analysis_folder(target):
        raise RunFolderError(f"{target} exists and is not an arithlens analysis folder; "
                             f"choose another output folder (it would be replaced)")
    if not target.parent.is_dir():
        raise RunFolderError(f"cannot write the analysis into {target}: folder {target.parent} does not exist")
    return target


def analyze_run(run_dir: str | Path, *, out: str | Path | None = None, count: int = 10_000, progress: bool = True,
                full_accuracy_count: int | None = None, sample_count: int = 1000, set_count: int = 300,
                patch_count: int = DEFAULT_PAIRS, checkpoint_count: int = 500, threshold: float = 0.01,
                seed: int = 0, dynamics: bool = True) -> dict[str, pd.DataFrame]:
    """Run every analysis on a run folder and write RUN_DIR/analysis/, or `out` (see the module docstring).

    Returns the tables by name (file stem). `dynamics=False` skips the
    checkpoint comparison (phases are still detected from the metrics), which
    evaluates the node ablation of every checkpoint that brackets a phase.
    The folder is written as one unit: built beside the old one, then swapped
    in, so a killed analysis leaves the previous analysis whole. A bundled
    model needs `out`: its own analysis is part of the installed package.
    """
    check_analysis_settings(count=count, full_accuracy_count=full_accuracy_count, sample_count=sample_count,
                            set_count=set_count, patch_count=patch_count, checkpoint_count=checkpoint_count, seed=seed)
    full_accuracy_count = count if full_accuracy_count is None else full_accuracy_count
    path = resolve_run_path(run_dir)
    target = analysis_folder(path, out)
    # A bundled model's folder is never written, so it needs no lock; a run folder is locked against
    # a training run (or another analysis) rewriting it underneath this one.
    with nullcontext() if is_bundled(path) else run_folder_lock(path, create=False):
        recover_folder(target)
        check_writable(target.parent)
        return _analyze_into(path, target, count=count, progress=progress, full_accuracy_count=full_accuracy_count,
                             sample_count=sample_count, set_count=set_count, patch_count=patch_count,
                             checkpoint_count=checkpoint_count, threshold=threshold, seed=seed, dynamics=dynamics)


def _analyze_into(run_path: Path, target: Path, *, count: int, progress: bool, full_accuracy_count: int,
                  sample_count: int, set_count: int, patch_count: int, checkpoint_count: int, threshold: float,
                  seed: int, dynamics: bool) -> dict[str, pd.DataFrame]:
    """Every analysis, once per operation of the model (one for addition or subtraction, two for mixed)."""
    settings = {"count": count, "full_accuracy_count": full_accuracy_count, "sample_count": min(sample_count, count),
                "set_count": set_count, "patch_count": patch_count, "checkpoint_count": checkpoint_count,
                "threshold": threshold, "seed": seed, "dynamics": dynamics}
    with _progress(progress) as stages:
        with stages.stage("load"):
            run = load_run(run_path)
            metrics = _metrics(run)  # read now: a damaged table fails before the work, not after it
            model = run.model()
            views = task_for(run.config.model).views()
        parts: dict[str, tuple[dict[str, pd.DataFrame], dict[str, Any]]] = {}
        for view in views:
            prefix = f"{view.operation.key}: " if len(views) > 1 else ""
            tables, nodes, hypotheses = _analyze_operation(
                run, model, view, metrics, stages, prefix, count=count, full_accuracy_count=full_accuracy_count,
                sample_count=sample_count, set_count=set_count, patch_count=patch_count,
                checkpoint_count=checkpoint_count, threshold=threshold, seed=seed, dynamics=dynamics)
            parts[view.operation.key] = (tables, _summary(run, view, tables, nodes, stages.seconds, settings={
                **settings, "hypotheses": hypotheses}))
        total = sum(len(tables) + 1 for tables, _ in parts.values())
        with stages.stage("write", total=total) as advance:
            if len(parts) == 1:
                ((tables, summary),) = parts.values()
                _write_folder(target, {"": (tables, summary)}, None, advance)
                return tables
            combined = _mixed_summary(run, parts, stages.seconds, settings)
            _write_folder(target, {f"{key}/": value for key, value in parts.items()}, combined, advance)
    return {f"{key}/{name}": frame for key, (tables, _) in parts.items() for name, frame in tables.items()}


def _analyze_operation(run: Run, model: Any, task: ArithmeticTask, metrics: pd.DataFrame, stages: _Stages,
                       prefix: str, *, count: int, full_accuracy_count: int, sample_count: int, set_count: int,
                       patch_count: int, checkpoint_count: int, threshold: float, seed: int,
                       dynamics: bool) -> tuple[dict[str, pd.DataFrame], list[Node], str]:
    """Every analysis of one operation's questions (`task` is a single-operation task in the model's layout)."""
    tables: dict[str, pd.DataFrame] = {}
    n = task.n_digits
    random_set = make_question_set(task, "random", count, seed)
    batch = random_set.batch
    sample = batch.select(slice(0, min(sample_count, count)))

    set_names = [name for name in question_set_names(task) if name != "random"]
    with stages.stage(prefix + "accuracy", total=1 + len(set_names)) as advance:
        result = evaluate(model, make_question_set(task, "random", full_accuracy_count, seed).batch) \
            if len(task_for(run.config.model).operations) > 1 else random_accuracy(model, full_accuracy_count, seed)
        frames = [accuracy_table(result).assign(source="random", source_description=(
            f"{full_accuracy_count:,} uniformly random questions"))]
        tables["failures"] = failure_table(result, task, limit=FAILURE_LIMIT)
        tables["failure_patterns"] = failure_patterns(result, task)
        advance(1)
        for name in set_names:
            question_set = make_question_set(task, name, set_count, seed)
            frames.append(accuracy_table(evaluate(model, question_set.batch)).assign(
                source=name, source_description=question_set.description))
            advance(1)
        accuracy = pd.concat(frames, ignore_index=True)
        front = ["source", "source_description"]
        tables["accuracy"] = accuracy[front + [c for c in accuracy.columns if c not in front]]

    with stages.stage(prefix + "ablation", total=3) as advance:
        tables["node_ablation"] = node_ablation(model, batch, method="mean")
        advance(1)
        # A position's input ablation recomputes layer 0 from it onwards; effects of tens of points need no more.
        tables["position_ablation"] = position_ablation(
            model, batch.select(slice(0, min(count, POSITION_ABLATION_COUNT))), method="mean")
        advance(1)
        nodes = useful_nodes(model, batch, threshold=threshold, ablation=tables["node_ablation"])
        tables["useful_nodes"] = nodes_table(nodes, ablation=tables["node_ablation"])

    with stages.stage(prefix + "cache"):
        cache = analysis_cache(model, sample)

    with stages.stage(prefix + "attention", total=2) as advance:
        tables["attention"] = mean_attention_by_class(model, sample, cache=cache)
        advance(1)
        tables["attention_examples"] = attention_examples(model, task, seed=seed)

    with stages.stage(prefix + "attribution", total=3) as advance:
        tables["logit_lens"] = logit_lens(model, sample, cache=cache)
        advance(1)
        tables["dla"] = direct_logit_attribution(model, sample, cache=cache)
        advance(1)
        tables["head_sources"] = head_source_attribution(model, sample, cache=cache)

    with stages.stage(prefix + "patching", total=len(pair_kinds(n, task))) as advance:
        config = run.config.model
        grid = {node_name(p, config.n_layers - 1, h) for p in task.answer_logit_positions
                for h in [*range(config.n_heads), None]}
        tables["patching"] = activation_patching(model, count=patch_count, seed=seed, progress=advance,
                                                 nodes=grid | {node.name for node in nodes}, task=task)

    with stages.stage(prefix + "pca"):
        tables["pca"], tables["pca_points"] = head_output_pca(model, sample, cache=cache)
    del cache

    with stages.stage(prefix + "phases"):
        tables["phases"] = phase_changes(metrics)
        tables["subtask_changes"] = localise(subtask_changes(metrics, tables["phases"]), task)

    phases = tables["phases"] if dynamics else tables["phases"].iloc[0:0]
    final_step = int(run.info.get("steps_done") or (metrics["step"].max() if len(metrics) else 0))
    models = {s for pair in bracketing_steps(phases, run.checkpoint_steps(), final_step).values() for s in pair}
    with stages.stage(prefix + "checkpoints", total=len(models)) as advance:
        tables["checkpoint_nodes"] = compare_checkpoints(
            run, phases, batch.select(slice(0, min(checkpoint_count, count))), threshold=threshold,
            progress=advance)

    with stages.stage(prefix + "algorithm map"):
        attention_top = top_attended(tables["attention"], top_k=2, min_weight=0.1)
        tables["algorithm_map"] = algorithm_map(n, tables["node_ablation"], patching=tables["patching"],
                                                pca=tables["pca"], attention=attention_top, threshold=threshold,
                                                task=task)
        tables["failed_cases"] = localise(failed_cases(tables["accuracy"]), task)

    with stages.stage(prefix + "circuit"):  # does the map explain the model? (circuit.py)
        tables.update(map_circuit(model, batch.select(slice(0, min(count, CIRCUIT_COUNT))),
                                  tables["algorithm_map"]))

    with stages.stage(prefix + "edges"):  # layer-to-layer edges by path patching (edges.py): the map as a graph
        tables["edges"] = _edges(model, batch.select(slice(0, min(count, EDGE_COUNT))), tables["algorithm_map"])

    with stages.stage(prefix + "clauses"):
        if run.config.model.op == "add":
            hypotheses = default_clauses(n)  # the published algorithm, tested by patching (clauses.py)
            tables["clauses"] = evaluate_clauses(model, hypotheses, pairs=patch_count, seed=seed)
            source = hypotheses.source
        else:  # the hypothesis format speaks addition's sub-tasks and layout
            tables["clauses"] = pd.DataFrame(columns=CLAUSE_COLUMNS)
            source = f"none: the published clauses describe addition, and this is a {run.config.model.op} model"
    return tables, nodes, source


def _edges(model: Any, batch: Any, the_map: pd.DataFrame) -> pd.DataFrame:
    """Path-patched edges into the map's nodes above layer 0 (every earlier node a candidate sender), or into
    every last-layer node at the answer positions when the map has none there; none for a 1-layer model."""
    if model_config_of(model).n_layers < 2:
        return pd.DataFrame(columns=EDGE_COLUMNS)
    receivers = sorted(set(the_map.loc[the_map["layer"] >= 1, "node"])) if len(the_map) else []
    return path_patching_edges(model, batch, receivers=receivers or None)


def _metrics(run: Run) -> pd.DataFrame:
    """The run's metrics table, or an empty one (no phases) for a run folder without metrics."""
    if not (run.path / "metrics.parquet").is_file():
        return pd.DataFrame({"step": [], "loss_A0": []})
    return run.metrics  # a damaged table is an error, not "no phases"


def _write_folder(target: Path, parts: dict[str, tuple[dict[str, pd.DataFrame], dict[str, Any]]],
                  combined: dict[str, Any] | None, advance: Callable[[int], None]) -> None:
    """Every table and summary.json, built in a staging folder and swapped in whole.

    `parts` maps a subfolder ("" for the folder itself, "add/" and "sub/" for a mixed model) to its
    tables and summary; `combined` is a mixed model's top-level summary.json.
    """
    staging = None
    try:
        staging = staging_folder(target)
        for sub, (tables, summary) in parts.items():
            folder = staging / sub
            folder.mkdir(exist_ok=True)
            for name, frame in tables.items():
                frame.to_parquet(folder / f"{name}.parquet", index=False)
                advance(1)
            write_json(folder / SUMMARY_FILE, summary)
        if combined is not None:
            write_json(staging / SUMMARY_FILE, combined)
        replace_folder(staging, target)
    except BaseException as error:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError):
            raise RunFolderError(f"cannot write the analysis into {target}: {error.strerror or error}") from None
        raise


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None, numpy scalars plain Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _summary(run: Run, task: ArithmeticTask, tables: dict[str, pd.DataFrame], nodes: list[Node],
             seconds: dict[str, float], settings: dict[str, Any]) -> dict[str, Any]:
    n = run.config.model.n_digits
    accuracy = tables["accuracy"]
    random_rows = accuracy[accuracy["source"] == "random"]
    overall = random_rows[random_rows["group_kind"] == "overall"].iloc[0]
    roles = digit_roles(tables["algorithm_map"])
    claims = tables["algorithm_map"]
    phases = tables["phases"]
    checkpoint_nodes = tables["checkpoint_nodes"]
    digits: dict[str, Any] = {}
    for digit in range(n, -1, -1):
        name = f"A{digit}"
        row = random_rows[(random_rows["group_kind"] == "answer_digit") & (random_rows["group"] == name)]
        useful = []
        for node in nodes:
            if name not in node.impacts:
                continue
            node_roles = claims[(claims["answer_digit"] == name) & (claims["node"] == node.name)]["role"].tolist()
            useful.append({"node": node.name, "kind": node.kind, "roles": node_roles or ["unassigned"],
                           "failure_rate": node.failure_rate,
                           "failing_subtasks": [f for f in node.failing_subtasks if f.startswith(f"{name}.")],
                           "attends_to": list(node.attends_to)})
        digit_phases = phases[phases["answer_digit"] == name]
        new_nodes = checkpoint_nodes[(checkpoint_nodes["answer_digit"] == name)
                                     & checkpoint_nodes["became_useful"].astype(bool)]["node"].tolist()
        digits[name] = {
            "position": task.logit_position_for_answer_digit(digit),
            "accuracy": float(row["accuracy"].iloc[0]) if len(row) else None,
            "useful_nodes": useful,
            "roles": roles.get(name, {}),
            "phase_changes": digit_phases[["start_step", "steepest_step", "end_step", "loss_before", "loss_after",
                                           "log10_drop"]].to_dict("records"),
            "nodes_that_became_useful": sorted(set(new_nodes)),
        }
    return _clean({
        "arithlens_version": __version__,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "run": str(run.path),
        "model": run.config.model.to_dict(),
        "op": task.operation.key,
        "subtask_names": {role: task.names.name(role) for role in SUBTASK_ROLES},
        "settings": settings,
        "accuracy": {"questions": int(overall["questions"]), "accuracy": float(overall["accuracy"]),
                     "failures": int(overall["failures"]), "nines": float(overall["nines"]),
                     "by_category": _by_group(random_rows, "category"),
                     "by_cascade_depth": _by_group(random_rows, "cascade_depth"),
                     "by_question_set": {r.source: r.accuracy for r in accuracy[
                         (accuracy["source"] != "random") & (accuracy["group_kind"] == "overall")].itertuples()}},
        "answer_digits": digits,
        "cannot_do": tables["failed_cases"]["description"].tolist(),
        "failure_patterns": failure_pattern_digest(tables["failure_patterns"]),
        "circuit": circuit_summary(tables["circuit"]),
        "edges": top_edges(tables["edges"], 10).to_dict("records") if len(tables["edges"]) else [],
        "clauses": clause_summary(tables["clauses"], str(settings.get("hypotheses", ""))),
        "files": {f"{name}.parquet": list(map(str, frame.columns)) for name, frame in tables.items()},
        "seconds": seconds,
    })


SUBTASK_ROLES = ("base", "make_carry", "make_pass", "use_carry", "use_pass")


def _mixed_summary(run: Run, parts: dict[str, tuple[dict[str, pd.DataFrame], dict[str, Any]]],
                   seconds: dict[str, float], settings: dict[str, Any]) -> dict[str, Any]:
    """A mixed model's top-level summary.json: each operation's headline numbers, and which useful nodes
    serve both operations and which serve one (the operations' own analyses sit in add/ and sub/)."""
    useful = {key: set(tables["useful_nodes"]["node"]) for key, (tables, _) in parts.items()}
    both = set.intersection(*useful.values())
    return _clean({
        "arithlens_version": __version__,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "run": str(run.path),
        "model": run.config.model.to_dict(),
        "op": "mixed",
        "operations": {key: {"folder": f"{key}/", "accuracy": summary["accuracy"],
                             "useful_nodes": len(useful[key]),
                             "circuit_all": summary["circuit"]["answer_digits"].get("all")}
                       for key, (_, summary) in parts.items()},
        "shared_nodes": {"both": sorted(both),
                         **{f"only_{key}": sorted(nodes - both) for key, nodes in useful.items()}},
        "settings": settings,
        "seconds": seconds,
    })


def _by_group(rows: pd.DataFrame, kind: str) -> dict[str, Any]:
    part = rows[rows["group_kind"] == kind]
    return {str(r.group): {"questions": int(r.questions), "accuracy": r.accuracy} for r in part.itertuples()}


def load_analysis(run_dir: str | Path, folder: str | Path | None = None) -> dict[str, Any]:
    """Every table of RUN_DIR/analysis/ (or of `folder`) by name, plus "summary" (the parsed summary.json).

    A mixed model's analysis also has "operations": {"add": {...}, "sub": {...}}, each loaded the same way
    from its subfolder.
    """
    run_path = resolve_run_path(run_dir)
    folder = run_path / ANALYSIS_DIR if folder is None else Path(folder)
    if not folder.is_dir():
        raise ArithlensError(f"{folder} holds no analysis yet; run `arithlens analyze {run_path}` first")
    result = _load_folder(run_path, folder)
    operations = result.get("summary", {}).get("operations") if isinstance(result.get("summary"), dict) else None
    if isinstance(operations, dict):
        result["operations"] = {}
        for key in operations:
            sub = folder / str(key)
            if not sub.is_dir():
                raise RunFolderError(f"damaged {folder}: its summary lists operation {key!r} but {sub} is missing; "
                                     f"run `arithlens analyze {run_path}` again")
            result["operations"][key] = _load_folder(run_path, sub)
    return result


def _load_folder(run_path: Path, folder: Path) -> dict[str, Any]:
    """The tables and summary of one analysis folder (a mixed model's operation folders each are one)."""
    again = f"run `arithlens analyze {run_path}` again"
    summary_path = folder / SUMMARY_FILE
    summary: Any = None
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
            raise RunFolderError(f"damaged {summary_path}: {error}; {again}") from None
        _check_summary(summary, summary_path, again)
    columns = summary.get("files", {}) if isinstance(summary, dict) else {}
    result: dict[str, Any] = {}
    for path in sorted(folder.glob("*.parquet")):
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError, TypeError, ArrowException) as error:
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise RunFolderError(f"damaged {path}: {first_line}; {again}") from None
        missing = [c for c in columns.get(path.name, []) if c not in frame.columns]
        if missing:
            raise RunFolderError(f"damaged {path}: it has no column {missing[0]!r}, which {SUMMARY_FILE} lists; "
                                 f"{again}")
        result[path.stem] = frame
    if summary is not None:
        result["summary"] = summary
    return result


def _check_summary(summary: Any, path: Path, again: str) -> None:
    """summary.json as `analyze_run` writes it: an object whose parts readers take apart have their types."""
    if not isinstance(summary, dict):
        raise RunFolderError(f"damaged {path}: it must hold a JSON object; {again}")
    for key in ("settings", "seconds", "files", "accuracy", "answer_digits"):
        if key in summary and not isinstance(summary[key], dict):
            raise RunFolderError(f"damaged {path}: '{key}' must be a JSON object; {again}")
    seconds = summary.get("seconds", {})
    files = summary.get("files", {})
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seconds.values()) or \
            not all(isinstance(v, list) and all(isinstance(c, str) for c in v) for v in files.values()):
        raise RunFolderError(f"damaged {path}: 'seconds' must map stages to numbers and 'files' tables to "
                             f"column names; {again}")
