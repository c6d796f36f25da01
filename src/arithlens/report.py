"""One self-contained, offline HTML report per run: RUN_DIR/report.html.

`build_report(run_dir)` reads the run folder (config.json, metrics.parquet and,
when `analyze` has run, analysis/) and writes a single HTML file that needs no
network: plotly.js is inlined once, the plotly template once, and every figure
is a JSON blob drawn by `Plotly.newPlot` when the page loads. No script, style,
font or image is fetched from anywhere.

Parts that cannot be drawn (no metrics yet, an interrupted run, no analysis
folder, a missing analysis table) are listed in a notice at the top, so a
partial report always says what it lacks.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline

import arithlens
from arithlens.errors import ArithlensError
from arithlens.plots import analysis as analysis_plots
from arithlens.plots import circuit as circuit_plots
from arithlens.plots import training as training_plots
from arithlens.runs import ANALYSIS_DIR, METRICS_FILE, REPORT_FILE, Run, is_bundled, load_run
from arithlens.task import ArithmeticTask, task_for
from arithlens.vocabulary import localise_figure, localise_text

OPERATION_NAMES = {"add": "addition", "sub": "subtraction"}

Item = go.Figure | pd.DataFrame | str


@dataclass
class Section:
    """A titled part of the report holding figures, tables (DataFrames) and HTML snippets."""

    key: str
    title: str
    intro: str = ""
    items: list[tuple[str, Item]] = field(default_factory=list)


def build_report(run_dir: str | Path, out: str | Path | None = None,
                 analysis: str | Path | None = None) -> Path:
    """Write the run's report (RUN_DIR/report.html unless `out` is given) and return its path.

    `analysis` names an analysis folder written elsewhere (`arithlens analyze --out`);
    the default is RUN_DIR/analysis/.
    """
    run = load_run(run_dir)
    target = Path(out) if out is not None else run.path / REPORT_FILE
    if target.is_dir():
        raise ArithlensError(f"cannot write the report to {target}: it is a folder; give a file name such as "
                             f"{target / REPORT_FILE}")
    page = render_report(run, analysis)
    special = target.exists() and not target.is_file()  # /dev/stdout, a FIFO: written as it is, never replaced
    final = target if special else target.resolve()  # through a symlink, which stays a symlink
    tmp = final if special else final.with_name(f".{final.name}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        if not special:
            tmp.replace(final)
    except OSError as error:
        if not special:
            tmp.unlink(missing_ok=True)
        raise ArithlensError(f"cannot write the report to {target}: {error.strerror or error}") from None
    return target


def render_report(run: Run, analysis: str | Path | None = None) -> str:
    """The whole report page as a string."""
    notices: list[str] = []
    metrics = _metrics(run, notices)
    tables = _analysis(run, notices, analysis)
    status = run.info.get("status")
    steps_done = run.info.get("steps_done")
    if status != "complete":
        notices.insert(
            0,
            f"This run is not complete (status: {html.escape(str(status or 'unknown'))}, "
            f"{steps_done if steps_done is not None else '?'} of {run.config.train.steps} steps): "
            f"the curves stop at the last saved step and model.safetensors holds the weights saved then. "
            f"Resume it with <code>arithlens train --resume {html.escape(str(run.path))}</code>.",
        )
    task = task_for(run.config.model)
    operations = tables.get("operations") if isinstance(tables.get("operations"), dict) else None
    sections = [_header_section(run, tables.get("summary"))]
    phases = phase_bands(next(iter(operations.values())) if operations else tables)
    if metrics is not None:
        sections.append(_training_section(metrics, phases, notices, task))
    if operations:  # a mixed model: the operations compared, then each one's sections
        sections.append(_operations_section(tables, task))
        for view in task.views():
            key = view.operation.key
            if key in operations:
                sections += _analysis_sections(operations[key], run, notices, view, OPERATION_NAMES[key])
            else:
                notices.append(f"The analysis has no {OPERATION_NAMES[key]} folder; rerun <code>arithlens analyze</code>.")
    elif tables:
        sections += _analysis_sections(tables, run, notices, task)
    return page_html(f"arithlens report: {run.path.name}", _subtitle(run), sections, notices)


# ----- inputs --------------------------------------------------------------


def _metrics(run: Run, notices: list[str]) -> pd.DataFrame | None:
    path = run.path / METRICS_FILE
    if not path.is_file():
        notices.append(f"No {METRICS_FILE}: the run has not recorded a training step, so there are no loss curves.")
        return None
    metrics = run.metrics  # refuses a damaged table with one clear error
    if len(metrics) == 0:
        notices.append(f"{METRICS_FILE} is empty, so there are no loss curves.")
        return None
    return metrics


def _analysis(run: Run, notices: list[str], analysis: str | Path | None) -> dict[str, Any]:
    folder = run.path / ANALYSIS_DIR if analysis is None else Path(analysis)
    if analysis is not None and not folder.is_dir():
        raise ArithlensError(f"no analysis folder {folder}; write it with arithlens analyze {run.path} --out {folder}")
    if not folder.is_dir():
        notices.append(
            f"No {ANALYSIS_DIR}/ folder: the interpretability analysis has not been run. "
            f"Run <code>arithlens analyze {html.escape(str(run.path))}</code>, then rebuild this report."
        )
        return {}
    from arithlens.analysis.runner import load_analysis  # imports the analysis stack only when there is one

    return dict(load_analysis(run.path, folder))


# ----- sections ------------------------------------------------------------


def _header_section(run: Run, summary: Any = None) -> Section:
    info = run.info
    config_data = json.loads((run.path / "config.json").read_text())
    facts = {
        "run folder": str(run.path),
        "status": info.get("status", "unknown"),
        "steps done": f"{info.get('steps_done', '?')} of {run.config.train.steps}",
        "data seed": run.config.train.seed,
        "model seed": run.config.model.seed,
        "training mode": (f"finite ({run.config.train.finite} questions)" if run.config.train.finite else "infinite"),
        "device": info.get("device", "unknown"),
        "started": info.get("started", "unknown"),
        "finished": info.get("finished", "not finished"),
        "run time": _duration(info.get("seconds")),
        "trained with arithlens": config_data.get("arithlens_version", "unknown"),
        "report by arithlens": arithlens.__version__,
        "report built": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    command = info.get("command") or "(not recorded)"
    section = Section("run", "Run")
    section.items.append(("", _key_values(facts)))
    section.items.append(("Command that reproduces this run", f"<pre><code>{html.escape(command)}</code></pre>"))
    section.items.append(("Model", _key_values(run.config.model.to_dict())))
    section.items.append(("Training", _key_values(run.config.train.to_dict())))
    if isinstance(summary, dict):
        settings = {"analysed": summary.get("created", "unknown"), **summary.get("settings", {}),
                    "seconds": round(sum(summary.get("seconds", {}).values()), 1)}
        section.items.append(("Analysis settings", _key_values(settings)))
    return section


def _training_section(metrics: pd.DataFrame, phases: pd.DataFrame | None, notices: list[str],
                      task: ArithmeticTask) -> Section:
    finite = training_plots.is_finite_mode(metrics)
    intro = (
        "The seed notebook's loss graphs. Per-digit sub-task curves split every answer digit's loss into "
        "BaseAdd (no carry in), UseCarry1 (carry in, digit pair not summing to 9) and UseSum9 (carry in, pair "
        "summing to 9); case counts are summed over all steps and digits. Where a step had no case of a sub-task, "
        "the previous value is carried forward."
    )
    if finite:
        intro += " Finite mode: sub-task curves are measured on each step's fresh test batch, as in the seed."
    if training_plots.has_heldout(metrics):
        intro += (" The first graph is accuracy on a fixed held-out set of random questions (drawn from its own "
                  "seed, never trained on), measured every --eval-every steps.")
    if phases is not None and len(phases):
        intro += " Shaded bands on the loss curves mark the phase changes found per answer digit."
    if task.signed:
        intro += (" For subtraction the sub-tasks are BaseDiff (no borrow in), UseBorrow (a borrow into a pair of "
                  "unequal digits) and UseZero (a borrow into an equal pair, which passes it on); a mixed model's "
                  "curves pool both operations' questions. The answer's sign token is scored in the loss and in the "
                  "held-out accuracy but has no sub-task curve.")
        intro = localise_text(intro, task) if len(task.operations) == 1 else intro
    section = Section("training", "Training", intro)
    try:
        section.items += [(localise_text(heading, task), localise_figure(fig, task))
                          for heading, fig in training_plots.training_figures(metrics, phases)]
    except (KeyError, ValueError) as error:  # e.g. a metrics table from another version: say so, keep the rest
        notices.append(f"The loss curves could not be drawn from {METRICS_FILE} ({html.escape(type(error).__name__)}: "
                       f"{html.escape(str(error))}).")
    return section


def _analysis_sections(tables: dict[str, Any], run: Run, notices: list[str], task: ArithmeticTask,
                       operation: str = "") -> list[Section]:
    """The analysis sections of one operation's tables (`operation` names it for a mixed model)."""
    model = run.config.model
    sections: list[Section] = []
    for key, title, intro, parts in ANALYSIS_PARTS:
        if operation:
            key, title = f"{key}-{task.operation.key}", f"{title} ({operation} questions)"
        section = Section(key, title, localise_text(intro, task))
        for heading, name, make in parts:
            frame = tables.get(name)
            if name == "checkpoint_nodes" and not run.checkpoint_steps():
                section.items.append((heading, f"<p class='intro'>{checkpoint_note(run, frame)}</p>"))
                if not isinstance(frame, pd.DataFrame) or not len(frame):
                    continue  # the note says why there is nothing; "left out" or "none compared" would not
            if not isinstance(frame, pd.DataFrame):
                notices.append(f"{title}: {heading} is left out (no analysis table <code>{name}</code>; "
                               f"rerun <code>arithlens analyze</code>).")
                continue
            if not len(frame):
                items: list[Item] = [f"<p class='intro'>{EMPTY_NOTES.get(name, 'Nothing to show.')}</p>"]
            else:
                try:
                    items = make(frame, tables, task, model.n_layers, model.n_heads)
                except Exception as error:  # one odd table must not cost the whole report; the notice says why
                    notices.append(f"{title}: {heading} could not be drawn from <code>{name}</code> "
                                   f"({html.escape(type(error).__name__)}: {html.escape(str(error))}).")
                    continue
            section.items += [(heading if i == 0 else "", item) for i, item in enumerate(items)]
        if section.items:
            sections.append(section)
    return sections


def _operations_section(tables: dict[str, Any], task: ArithmeticTask) -> Section:
    """A mixed model's operations side by side: accuracy per group, the map as a circuit, and the useful
    nodes that serve both operations or only one."""
    operations = tables["operations"]
    section = Section("operations", "Addition and subtraction compared",
                      "This mixed model answers both operations; each has its own analysis below. Rows pair the "
                      "groups of the two operations in the same order (a category or cascade depth of one with "
                      "the matching one of the other).")
    columns: dict[str, pd.DataFrame] = {}
    for key, part in operations.items():
        accuracy = part.get("accuracy")
        if isinstance(accuracy, pd.DataFrame) and len(accuracy):
            rows = accuracy[accuracy["source"] == "random"].reset_index(drop=True)
            columns[key] = rows
    if columns:
        first = next(iter(columns.values()))
        side = pd.DataFrame({"group_kind": first["group_kind"]})
        side["group"] = [" / ".join(str(frame["group"].iloc[i]) if i < len(frame) else "" for frame in columns.values())
                         for i in range(len(first))]
        for key, frame in columns.items():
            name = OPERATION_NAMES.get(key, key)
            side[f"{name} questions"] = frame["questions"]
            side[f"{name} accuracy"] = frame["accuracy"]
            side[f"{name} nines"] = frame["nines"]
        section.items.append(("Accuracy side by side", side))
    circuits = []
    for key, part in operations.items():
        circuit = part.get("circuit")
        if isinstance(circuit, pd.DataFrame) and len(circuit):
            whole = circuit[circuit["answer_digit"] == "all"]
            if len(whole):
                row = whole.iloc[0]
                circuits.append({"operation": OPERATION_NAMES.get(key, key), "map nodes": int(row["node_count"]),
                                 "faithfulness": row["faithfulness"], "completeness": row["completeness"],
                                 "accuracy kept": row["accuracy_kept"]})
    if circuits:
        section.items.append(("The algorithm map as a circuit, whole answer", pd.DataFrame(circuits)))
    shared = (tables.get("summary") or {}).get("shared_nodes") if isinstance(tables.get("summary"), dict) else None
    if isinstance(shared, dict):
        lines = "".join(f"<li><strong>{html.escape(label)}</strong> ({len(shared.get(k, []))}): "
                        f"{html.escape(', '.join(shared.get(k, [])) or 'none')}</li>"
                        for k, label in (("both", "serve both operations"), ("only_add", "serve only addition"),
                                         ("only_sub", "serve only subtraction")))
        section.items.append(("Useful nodes: shared and own", f"<p class='intro'>A node is useful for an operation "
                              f"when mean-ablating it breaks some answer digit of that operation's questions.</p>"
                              f"<ul>{lines}</ul>"))
    return section


def phase_bands(tables: dict[str, Any]) -> pd.DataFrame | None:
    """The phase-change table (answer_digit, start_step, end_step), if the analysis found any."""
    phases = tables.get("phases")
    return phases if isinstance(phases, pd.DataFrame) and len(phases) else None


PERCENT_COLUMNS = {"accuracy", "failure_rate", "failure_rate_before", "failure_rate_after", "wrong_share",
                   "base_rate", "accuracy_full", "accuracy_kept", "accuracy_ablated", "accuracy_without",
                   "accuracy_drop"}


def checkpoint_note(run: Run, frame: pd.DataFrame | None = None) -> str:
    """Why a run folder without checkpoints has no (or only an earlier) comparison of nodes across phases (HTML)."""
    if is_bundled(run.path):
        note = ("Bundled models ship without checkpoints, to keep the package small, so this folder has none to "
                "compare nodes across the phases with.")
    else:
        note = (f"This run folder has no checkpoints (training saves one every "
                f"{run.config.train.checkpoint_every} steps; none was saved, or the checkpoints/ folder was removed), "
                f"so nodes cannot be compared across the phases.")
    if isinstance(frame, pd.DataFrame) and len(frame) and {"step_before", "step_after"} <= set(frame.columns):
        steps = {int(s) for s in (*frame["step_before"], *frame["step_after"])}
        if steps <= {0, int(run.info.get("steps_done") or 0)}:
            note += (" Without them each phase is bracketed only by the untrained model (step 0, rebuilt from the "
                     "seed) and the final model, so the table below compares those two, not the models just before "
                     "and after each phase.")
        else:
            note += " The table below was computed from the checkpoints the run had when it was analysed."
    return note + (" Retrain with <code>arithlens train</code> (the command above reproduces the run) to get "
                   "checkpoints, then rerun <code>arithlens analyze</code>.")


def with_position_labels(frame: pd.DataFrame, n_digits: analysis_plots.Layout) -> pd.DataFrame:
    """A table for display, its `position` column as labels like `P14 (→A2)` (`ArithmeticTask.position_label`)."""
    if "position" not in frame.columns:
        return frame
    task = analysis_plots.layout_task(n_digits)
    return frame.assign(position=[task.position_label(int(p)) for p in frame["position"]])


def subtask_changes_display(frame: pd.DataFrame) -> pd.DataFrame:
    """The sub-task change table with `digit` naming the answer digit each loss is of (A0 for `..._loss_d0`).

    Read from the column name: the per-digit sub-task loss at d is the loss of answer digit A_d, and
    "D0" would name the units digit of x.
    """
    from arithlens.metrics import subtask_column_digit  # metrics loads TransformerLens; only needed with an analysis

    if "column" not in frame.columns:
        return frame
    return frame.assign(digit=[subtask_column_digit(str(column)) for column in frame["column"]])


def _failure_pattern_items(frame: pd.DataFrame, t: dict[str, Any], n: int, layers: int, heads: int) -> list[Item]:
    from arithlens.analysis.accuracy import failure_pattern_summary  # loaded with the analysis tables already

    intro = ("Every wrong answer digit of the random questions, grouped by the state of the digit pair directly "
             "below it (pair d-1) and of the two pairs below (d-1, d-2): MakeCarry1 (the pair sums to 10 or more), "
             "MakeSum9 (sums to 9), neither, or none (below A0 there is no pair). base_rate is how often the state "
             "occurs under the same answer digits in all the questions (for \"all\", weighted by where the wrong "
             "digits are); a ratio well above 1 is where failures gather.")
    return [f"<p class='intro'><strong>{html.escape(failure_pattern_summary(frame))}</strong></p>"
            f"<p class='intro'>{html.escape(intro)}</p>", frame]


def _percent(values: pd.Series) -> list[str]:
    # Accuracy near 1 is the interesting part: 4 significant decimals would print 0.999999 as "1".
    return ["" if pd.isna(v) else f"{round(100 * v, 4) + 0.0:.4f}%" for v in values]  # + 0.0: no "-0.0000%"


def _accuracy_items(frame: pd.DataFrame, t: dict[str, Any], n: int, layers: int, heads: int) -> list[Item]:
    columns = ["group_kind", "group", "questions", "correct", "accuracy", "failures", "nines"]
    items: list[Item] = []
    if "source" not in frame.columns:
        return [frame[columns]]
    random_rows = frame[frame["source"] == "random"]
    if len(random_rows):
        items.append(f"<p class='intro'>{html.escape(str(random_rows['source_description'].iloc[0]))}:</p>")
        items.append(random_rows[columns])
    sets = frame[(frame["source"] != "random") & (frame["group_kind"] == "overall")]
    if len(sets):
        items.append("<p class='intro'>Each named question set (every case it claims is present):</p>")
        items.append(sets[["source", "source_description", "questions", "correct", "accuracy", "failures", "nines"]])
    return items


def _algorithm_items(frame: pd.DataFrame, t: dict[str, Any], n: int, layers: int, heads: int) -> list[Item]:
    from arithlens.vocabulary import localised_name

    task = analysis_plots.layout_task(n)
    grid = pd.DataFrame({"answer digit": [f"A{d}" for d in range(task.n_digits, -1, -1)]})
    for role in (localised_name(r, task) for r in ("BaseAdd", "MakeCarry1", "MakeSum9", "UseSum9")):
        grid[role] = [", ".join(f"{r.node} ({r.confidence})" for r in frame[(frame["answer_digit"] == digit)
                      & (frame["role"] == role)].itertuples()) for digit in grid["answer digit"]]
    columns = ["answer_digit", "role", "node", *(["position"] if "position" in frame.columns else []), "supported_by",
               "confidence", "evidence"]
    return [grid, "<p class='intro'>Each claim and its evidence (confidence counts the kinds of evidence that "
                  "agree: patching and ablation are causal, PCA only supports):</p>",
            with_position_labels(frame[columns], n)]


def _node_items(frame: pd.DataFrame, t: dict[str, Any], n: int, layers: int, heads: int) -> list[Item]:
    classes = [c for c in analysis_plots.SUBTASK_CLASSES[1:] if (frame["subtask_class"] == c).any()]
    return [analysis_plots.node_effect_heatmaps(frame, n, value="accuracy_delta"),
            analysis_plots.node_effect_heatmaps(frame, n, value="loss_delta"),
            *(analysis_plots.node_effect_heatmaps(frame, n, value="accuracy_delta", subtask_class=c) for c in classes)]


def _pca_items(points: pd.DataFrame, t: dict[str, Any], n: int, layers: int, heads: int) -> list[Item]:
    summary = t.get("pca")
    items: list[Item] = [analysis_plots.pca_scatter(points, n, summary=summary)]
    below2 = points[points["tri_state_below2"] != "n/a"]
    if len(below2):
        items.append(analysis_plots.pca_scatter(below2, n, colour_by="tri_state_below2", summary=summary))
    if isinstance(summary, pd.DataFrame) and len(summary):
        items.append(summary.sort_values("separation", ascending=False))
    return items


def _clause_items(frame: pd.DataFrame, t: dict[str, Any], n: int, layers: int, heads: int) -> list[Item]:
    from arithlens.analysis.clauses import clause_counts, clause_display  # loaded with the analysis tables already

    summary = t.get("summary") if isinstance(t.get("summary"), dict) else {}
    file = (summary.get("clauses") or {}).get("file", "the hypothesis file")
    shown = clause_display(frame).assign(claim=frame["claim"]).map(lambda value: html.escape(str(value)))
    shown["verdict"] = [f"<span class='verdict-{v}'>{v}</span>" for v in shown["verdict"]]  # escaped words only
    body = shown[["clause", "claim", *[c for c in shown.columns if c not in ("clause", "claim")]]].to_html(
        index=False, escape=False, classes="data", border=0)
    return [f"<p class='intro'><strong>{html.escape(clause_counts(frame)['text'])}</strong> "
            f"({html.escape(str(file))}). {CLAUSES_NOTE}</p>", f"<div class='table-wrap'>{body}</div>"]


CLAUSES_NOTE = (
    "Each clause is tested causally: its nodes (the heads at the position predicting the digit that put at least "
    "half their attention on the pair it names) are patched from clean questions into ones that differ in exactly "
    "that sub-task. <em>strong</em>: the 95% interval of the net flip rate (pairs that now give exactly the clean "
    "digit, minus those that do unpatched) lies above 50%; <em>weak</em>: above 0. An absent clause passes strong "
    "when the digit's change lies within its margin (weak: cannot be told from it) and fails when it is larger.")


def _circuit_items(frame: pd.DataFrame, t: dict[str, Any], n: int, layers: int, heads: int) -> list[Item]:
    first = ["answer_digit", "node_count", "faithfulness", "completeness", "accuracy_full", "accuracy_kept",
             "accuracy_ablated", "cpr", "cmd", "redundant_nodes"]
    shown = frame[[c for c in first if c in frame.columns] + [c for c in ("nodes",) if c in frame.columns]]
    where = (f"{int(frame['questions'].iloc[0]):,} random questions; means over {frame['reference'].iloc[0]}"
             if {"questions", "reference"} <= set(frame.columns) else "")
    return [f"<p class='intro'>{html.escape(where)}</p>", shown]


def _edge_items(frame: pd.DataFrame, t: dict[str, Any], n: int, layers: int, heads: int) -> list[Item]:
    from arithlens.analysis.edges import top_edges  # loaded with the analysis tables already

    questions = int(frame["questions"].iloc[0]) if "questions" in frame.columns else 0
    return [f"<p class='intro'>The 20 strongest of {len(frame):,} edges into the map's nodes above layer 0, on "
            f"{questions:,} random questions. An edge's effect is the change in the answer digit's logit margin "
            f"when only the sender's output into the receiver is mean-ablated (everything else clean); share is "
            f"that as a part of ablating the receiver itself.</p>", top_edges(frame, 20)]


Make = Callable[[pd.DataFrame, dict[str, Any], int, int, int], list[Item]]
AP = analysis_plots
ANALYSIS_PARTS: list[tuple[str, str, str, list[tuple[str, str, Make]]]] = [
    ("algorithm", "Algorithm map",
     "Which node computes which sub-task for each answer digit, as far as causal evidence supports it.",
     [("Nodes per answer digit and sub-task (confidence in brackets)", "algorithm_map", _algorithm_items)]),
    ("circuit", "Does the map explain the model?",
     "The algorithm map scored as a circuit, as MIB and EAP-IG score circuits. m is the correct answer digit's logit "
     "minus the largest other digit's logit, averaged over the questions (for the whole answer, over the digits too). "
     "<em>Faithfulness</em> f = (m(map) - m(none)) / (m(full model) - m(none)), with every node outside the map "
     "mean-ablated (every head's z and MLP's output at every position and layer; none = all of them ablated): 1 means "
     "the map alone does what the model does. <em>Completeness</em> is f left when only the map's nodes are ablated: "
     "near 0 means the digit breaks without them. <em>Minimality</em>: the fall in f when one map node alone is "
     "removed; a node is redundant when f falls by less than 0.02 and the accuracy by less than 2 points. "
     "The curve keeps the nodes that can reach the digit most important first (by their single-node ablation effect); "
     "CPR is the area under it and CMD the area under |1 - f|, over the share of nodes kept.",
     [("Faithfulness and completeness per answer digit", "circuit", _circuit_items),
      ("Faithfulness as nodes are added by importance", "circuit_curve",
       lambda f, t, n, l, h: [circuit_plots.faithfulness_curve(f, n, t.get("circuit"))]),
      ("Circuit diagram", "circuit_minimality",
       lambda f, t, n, l, h: [circuit_plots.circuit_diagram(t["algorithm_map"], f, n, l, h, t.get("attention"),
                                                            t.get("edges"))]),
      ("Edges between layers (path patching)", "edges", _edge_items),
      ("Minimality: each map node removed alone", "circuit_minimality", lambda f, t, n, l, h: [f]),
      ("Hypothesis tests: the published algorithm, clause by clause", "clauses", _clause_items)]),
    ("accuracy", "Accuracy", "Accuracy in nines (on 1M questions 0-1 failures is six nines, 2-10 five nines).",
     [("Accuracy", "accuracy", _accuracy_items),
      ("Cases the model cannot do", "failed_cases", lambda f, t, n, l, h: [f]),
      ("Failures", "failures", lambda f, t, n, l, h: [f]),
      ("Failure patterns", "failure_patterns", _failure_pattern_items)]),
    ("attention", "Attention", "Mean attention of each head per question category, and for a few questions. "
     "Rows are the query positions that predict an answer digit; columns the positions attended to.",
     [("Mean attention by question category", "attention",
       lambda f, t, n, layers, h: [AP.attention_heatmaps(f, n, layer=i) for i in range(layers)]),
      ("Example questions", "attention_examples",
       lambda f, t, n, layers, h: [AP.attention_heatmaps(f, n, layer=i, row_key="example") for i in range(layers)])]),
    ("ablation", "Ablation and useful nodes",
     "Mean ablation of what each position computes (every head's and the MLP's output there) and, separately, of "
     "what it is given (its input embedding), and of each head and MLP at each position (a node). The means come "
     "from a separate set of uniformly random questions, named under each title. A position's residual stream after "
     "the last layer is not ablated: in a 1-layer model only its own unembedding reads it, so that could not fail. "
     "Red marks harm: accuracy falling or loss rising.",
     [("Useful positions", "position_ablation",
       lambda f, t, n, l, h: [AP.position_ablation_heatmap(f, n, value=v) for v in ("accuracy_delta", "loss_delta")]),
      ("Useful nodes", "useful_nodes",
       lambda f, t, n, l, h: [AP.useful_nodes_map(f, n, l, h), with_position_labels(f, n)]),
      ("Node ablation per answer digit", "node_ablation", _node_items)]),
    ("attribution", "Logit lens and direct logit attribution", "",
     [("Logit lens", "logit_lens", lambda f, t, n, l, h: [AP.logit_lens_figure(f, n)]),
      ("Direct logit attribution", "dla", lambda f, t, n, l, h: [AP.dla_heatmap(f, n)]),
      ("Head attribution by source position", "head_sources", lambda f, t, n, l, h: [AP.head_source_heatmaps(f, n)])]),
    ("patching", "Activation patching",
     "Patching one node from a clean question into a corrupted one that differs in one sub-task. Recovery 1 means "
     "the node alone restores the clean answer's logit difference; net flips is the share of pairs that then give the "
     "clean answer digit minus the share that give it with no patch at all (the strong test, net of the baseline; "
     "hover for its 95% interval).",
     [("Patching grids", "patching",
       lambda f, t, n, l, h: [AP.patching_heatmaps(f, n, value=v) for v in ("recovery", "net_flips")])]),
    ("pca", "PCA of head outputs", "Clusters by the tri-state of the digit pair below (MakeCarry1, MakeSum9, "
     "neither); sep is the centroid separation (above about 2 the clusters are visibly apart).",
     [("Head outputs by tri-state", "pca_points", _pca_items)]),
    ("dynamics", "Training dynamics", "Phase changes per answer digit (shaded on the loss curves), the sub-task "
     "losses either side, and the nodes that become useful across each phase.",
     [("Phase changes", "phases", lambda f, t, n, l, h: [f]),
      ("Sub-task losses across each phase", "subtask_changes", lambda f, t, n, l, h: [subtask_changes_display(f)]),
      ("Nodes across each phase (from checkpoints)", "checkpoint_nodes", lambda f, t, n, l, h: [f])]),
]
EMPTY_NOTES = {
    "algorithm_map": "No node has causal evidence for any sub-task yet (an untrained or barely trained model).",
    "failed_cases": "None: every case reaches 99% accuracy.",
    "failures": "None: every question was answered correctly.",
    "useful_nodes": "No node's ablation breaks an answer digit.",
    "phases": "No phase change was found in the per-digit loss curves.",
    "subtask_changes": "No phase change, so nothing to compare.",
    "checkpoint_nodes": "No phase change was bracketed by checkpoints, or none was compared.",
    "circuit_minimality": "The map names no node, so there is nothing to remove (and no circuit to draw).",
    "edges": "No edges: a 1-layer model has no layer to layer paths.",
}


# ----- HTML ----------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0;
       color: #1f2328; background: #fff; }
header { background: #24292f; color: #fff; padding: 14px 28px; }
header h1 { margin: 0; font-size: 22px; } header p { margin: 4px 0 0; color: #c9d1d9; }
nav { padding: 8px 28px; border-bottom: 1px solid #d0d7de; background: #f6f8fa; position: sticky; top: 0; z-index: 5; }
nav a { margin-right: 14px; color: #0969da; text-decoration: none; }
main { padding: 0 28px 40px; max-width: 1400px; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 4px; margin-top: 36px; }
h3 { margin: 22px 0 6px; font-size: 16px; }
.notice { background: #fff8c5; border: 1px solid #d4a72c; padding: 10px 14px; margin: 16px 0; border-radius: 6px; }
.notice li { margin: 3px 0; }
.figure { width: 100%; min-height: 420px; }
.figure-error { color: #cf222e; white-space: pre-wrap; }
table.data { border-collapse: collapse; font-size: 13px; margin: 6px 0 12px; }
table.data th, table.data td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; }
table.data th { background: #f6f8fa; }
.table-wrap { max-height: 480px; overflow: auto; display: inline-block; max-width: 100%; }
pre { background: #f6f8fa; padding: 10px; border-radius: 6px; overflow-x: auto; }
.intro { color: #57606a; max-width: 1000px; }
.verdict-strong { color: #1a7f37; font-weight: 600; } .verdict-weak { color: #9a6700; font-weight: 600; }
.verdict-fail { color: #cf222e; font-weight: 600; }
"""

LOADER = """
(function () {
  var template = JSON.parse(document.getElementById("plotly-template").textContent);
  var config = {responsive: true, displaylogo: false};
  var divs = Array.prototype.slice.call(document.querySelectorAll("div[data-figure]"));
  function fail(div, error) {
    div.innerHTML = "<p class='figure-error'>This figure could not be drawn: " + String(error) + "</p>";
    console.error("figure " + div.id + ": " + (error && error.stack ? error.stack : error));
  }
  function draw(i) {
    if (i >= divs.length) { document.body.setAttribute("data-figures-done", String(divs.length)); return; }
    var div = divs[i];
    try {
      var spec = JSON.parse(document.getElementById(div.id + "-data").textContent);
      spec.layout.template = template;
      Plotly.newPlot(div, spec.data, spec.layout, config).catch(function (e) { fail(div, e); });
    } catch (e) { fail(div, e); }
    setTimeout(function () { draw(i + 1); }, 0);  // keep the page responsive while figures draw
  }
  draw(0);
})();
"""


def _json_for_script(data: Any) -> str:
    # '<' '>' '&' only occur inside JSON strings, so escaping them keeps the JSON valid and the script tag closed.
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), allow_nan=False,
                                                         ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _figure_json(fig: go.Figure, default_template: str) -> str:
    spec = json.loads(pio.to_json(fig, validate=False, remove_uids=True))
    layout = spec.setdefault("layout", {})
    template = layout.get("template")
    if template is not None and json.dumps(template, sort_keys=True) == default_template:
        del layout["template"]  # the shared copy is applied by the loader
    return _json_for_script(spec)


def _key_values(data: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_format_value(v))}</td></tr>" for k, v in data.items()
    )
    return f"<table class='data'>{rows}</table>"


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v) for v in value)
    if value is None:
        return "none"
    return str(value)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "unknown"
    minutes, secs = divmod(float(seconds), 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}h {minutes:02d}m {secs:04.1f}s" if hours else f"{minutes}m {secs:04.1f}s"


def table_html(frame: pd.DataFrame, max_rows: int = 200) -> str:
    """A DataFrame as an escaped HTML table (first `max_rows` rows, with a note when cut)."""
    shown = frame.head(max_rows)
    for column in shown.columns:
        if column in PERCENT_COLUMNS and pd.api.types.is_float_dtype(shown[column]):
            shown = shown.assign(**{column: _percent(shown[column])})
    body = shown.to_html(index=False, escape=True, classes="data", border=0, na_rep="", float_format=_float)
    note = f"<p class='intro'>First {max_rows} of {len(frame)} rows.</p>" if len(frame) > max_rows else ""
    return f"<div class='table-wrap'>{body}</div>{note}"


def _float(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def _render_items(section: Section, figures: list[str], default_template: str) -> Iterable[str]:
    previous = ""
    for heading, item in section.items:
        if heading and heading != previous:  # consecutive items of one group share their heading
            yield f"<h3>{html.escape(heading)}</h3>"
            previous = heading
        if isinstance(item, go.Figure):
            index = len(figures)
            figures.append(f'<script type="application/json" id="fig-{index}-data">'
                           f"{_figure_json(item, default_template)}</script>")
            yield f'<div class="figure" id="fig-{index}" data-figure="{index}"></div>'
        elif isinstance(item, pd.DataFrame):
            yield table_html(item)
        else:
            yield str(item)


def page_html(title: str, subtitle: str, sections: list[Section], notices: list[str]) -> str:
    """One offline page: a header, a nav bar, the notices and every section, plotly inlined once.

    A run's report and a sweep's comparison (`arithlens.sweep.page`) are both drawn by it.
    """
    template_spec = pio.templates[pio.templates.default].to_plotly_json()
    default_template = json.dumps(template_spec, sort_keys=True)
    figures: list[str] = []
    body: list[str] = []
    for section in sections:
        body.append(f'<section id="{section.key}"><h2>{html.escape(section.title)}</h2>')
        if section.intro:
            body.append(f"<p class='intro'>{section.intro}</p>")
        body.extend(_render_items(section, figures, default_template))
        body.append("</section>")
    nav = " ".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in sections)
    notice = (
        "<div class='notice'><strong>This report is partial.</strong><ul>"
        + "".join(f"<li>{n}</li>" for n in notices)
        + "</ul></div>"
        if notices
        else ""
    )
    plotly_js = plotly.offline.get_plotlyjs()
    if "</script" in plotly_js.lower():
        raise ArithlensError("this plotly build cannot be inlined (its JavaScript holds '</script'); reinstall plotly")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            f'<meta name="arithlens-figure-count" content="{len(figures)}">',
            f"<style>{CSS}</style>",
            f"<script>{plotly_js}</script>",
            "</head><body>",
            f"<header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></header>",
            f"<nav>{nav}</nav>",
            "<main>",
            notice,
            *body,
            "</main>",
            f'<script type="application/json" id="plotly-template">{_json_for_script(template_spec)}</script>',
            *figures,
            f"<script>{LOADER}</script>",
            "</body></html>",
        ]
    )


def _subtitle(run: Run) -> str:
    m = run.config.model
    return (
        f"{m.n_digits}-digit addition, {m.n_layers} layer(s), {m.n_heads} heads, d_model {m.d_model}, "
        f"{run.config.train.steps} steps, data seed {run.config.train.seed}"
    )
