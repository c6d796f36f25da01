"""The `arithlens` command line: a thin face over the Python API.

    arithlens run        train with the defaults (or flags), analyse, write report.html
    arithlens train      train only (--resume DIR continues a run)
    arithlens data       write labelled questions as JSON lines
    arithlens predict    greedy answers from a model
    arithlens eval       accuracy by category, cascade depth and answer digit
    arithlens analyze    every analysis, into RUN_DIR/analysis/
    arithlens report     (re)build RUN_DIR/report.html
    arithlens hypothesis test a file of algorithm claims causally, by patching question pairs
    arithlens circuit    faithfulness, completeness and redundant nodes of a node set you name
    arithlens models     the bundled trained models
    arithlens sweep      a grid of runs (--seed 1,2,3 --layers 1,2) trained, analysed and compared, on Ray

A user mistake prints one line on stderr and exits with code 2, never a traceback.
"""

from __future__ import annotations

import functools
import inspect
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from arithlens.config import ModelConfig, RunConfig, TrainConfig
from arithlens.errors import ArithlensError, CommandInterrupted, TrainingInterrupted
from arithlens.sweep import DEFAULT_COUNT as SWEEP_COUNT

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train small transformers on addition and reverse-engineer the algorithm they learn.",
)
console = Console()
err_console = Console(stderr=True)

Digits = Annotated[int, typer.Option("--digits", help="Digits per operand.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for the weights and the data.")]
Enrich = Annotated[Optional[float], typer.Option(
    "--enrich", help="Share of questions with Sum9-enriched digit pairs (0 = uniform).")]
Out = Annotated[Optional[Path], typer.Option("--out", help="Run folder (default runs/run-<time>).")]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="Hide progress bars.")]
OpOpt = Annotated[str, typer.Option(
    "--op", help="Operation: add, sub (signed answers: 12345-67890=-055545) or mixed (both).")]
ModelOpt = Annotated[str, typer.Option("--model", help="A run folder or a bundled model name (see `arithlens models`).")]


def _option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


# The options `train` and `run` share, declared once. A default of None means "not given":
# the recipe's value (or the seed's) is used, and an explicit flag overrides the recipe.
TRAINING_OPTIONS: tuple[inspect.Parameter, ...] = (
    _option("op", OpOpt, "add"),
    _option("digits", Digits, 5),
    _option("layers", Annotated[int, typer.Option("--layers", help="Transformer layers.")], 1),
    _option("heads", Annotated[int, typer.Option("--heads", help="Attention heads per layer.")], 4),
    _option("d_model", Annotated[int, typer.Option("--d-model", help="Residual stream width.")], 512),
    _option("d_mlp", Annotated[int, typer.Option("--d-mlp", help="MLP hidden width.")], 2048),
    _option("norm", Annotated[Optional[str], typer.Option(
        "--norm", help="LayerNorm kind: LN, RMS, LNPre, RMSPre (default none).")], None),
    _option("act", Annotated[str, typer.Option("--act", help="Activation: relu, gelu, gelu_new, silu.")], "relu"),
    _option("recipe", Annotated[str, typer.Option(
        "--recipe", help="Training recipe: seed (the seed notebook's, default) or fast (see README).")], "seed"),
    _option("steps", Annotated[int, typer.Option("--steps", help="Training steps (batches).")], 3000),
    _option("batch_size", Annotated[Optional[int], typer.Option(
        "--batch-size", help="Questions per batch (recipe sets it).")], None),
    _option("lr", Annotated[Optional[float], typer.Option("--lr", help="Peak AdamW learning rate (recipe sets it).")], None),
    _option("schedule", Annotated[Optional[str], typer.Option(
        "--schedule", help="lr after warm-up: constant, linear or cosine decay to --min-lr (recipe sets it).")], None),
    _option("warmup_steps", Annotated[Optional[str], typer.Option(
        "--warmup-steps", help="Warm-up steps, or a share of the steps such as 0.05 or 5% (recipe sets it).")], None),
    _option("warmup_start", Annotated[Optional[float], typer.Option(
        "--warmup-start", help="lr multiple the warm-up starts from (recipe sets it).")], None),
    _option("min_lr", Annotated[Optional[float], typer.Option(
        "--min-lr", help="Floor lr the decay ends at (recipe sets it).")], None),
    _option("grad_clip", Annotated[Optional[float], typer.Option(
        "--grad-clip", help="Clip the gradient norm to this (0 = off) (recipe sets it).")], None),
    _option("betas", Annotated[Optional[str], typer.Option(
        "--betas", help="AdamW betas as B1,B2 (recipe sets it).")], None),
    _option("weight_decay", Annotated[Optional[float], typer.Option(
        "--weight-decay", help="AdamW weight decay (recipe sets it).")], None),
    _option("seed", Seed, 129000),
    _option("finite", Annotated[Optional[int], typer.Option(
        "--finite", help="Train on a fixed set of N questions (the seed's finite mode).")], None),
    _option("enrich", Enrich, None),
    _option("checkpoint_every", Annotated[int, typer.Option(
        "--checkpoint-every", help="Steps between checkpoints.")], 500),
    _option("eval_every", Annotated[int, typer.Option(
        "--eval-every", help="Score a fixed held-out set every K steps (0 = off).")], 0),
    _option("eval_count", Annotated[int, typer.Option(
        "--eval-count", help="Questions in the held-out set.")], 10_000),
    _option("until_accuracy", Annotated[Optional[float], typer.Option(
        "--until-accuracy", help="Stop at the first held-out evaluation with at least this accuracy (0-1].")], None),
    _option("device", Annotated[str, typer.Option("--device", help="cpu, cuda or mps.")], "cpu"),
    _option("init_from", Annotated[Optional[str], typer.Option(
        "--init-from", help="Start from a trained model's weights (a run folder or bundled model, e.g. add_d5_l2): "
        "copied into the first heads, neurons and layers of the new model.")], None),
    _option("out", Out, None),
    _option("force", Annotated[bool, typer.Option("--force", help="Overwrite an existing run folder.")], False),
    _option("resume", Annotated[Optional[Path], typer.Option(
        "--resume", help="Continue the run in this folder (its config is kept; only --steps may change).")], None),
    _option("no_progress", NoProgress, False),
)


def _grouped_command(func: Callable[..., None], options: tuple[inspect.Parameter, ...]) -> Callable[..., None]:
    """A command taking `options` and func's own parameters: `func(options, **own)` gets the options as one dict."""
    names = [p.name for p in options]
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
           for p in list(inspect.signature(func, eval_str=True).parameters.values())[1:]]

    @functools.wraps(func)
    def command(**kwargs: Any) -> None:
        try:
            func({name: kwargs.pop(name) for name in names}, **kwargs)
        except TrainingInterrupted as stopped:  # past typer, which would keep only "exit 130"
            raise CommandInterrupted(stopped.message, stopped.exit_code) from None

    command.__signature__ = inspect.Signature([*options, *own])  # type: ignore[attr-defined]
    command.__annotations__ = {}
    del command.__wrapped__  # typer must read the signature above, not func's
    return command


def training_command(func: Callable[..., None]) -> Callable[..., None]:
    """Give a command the shared training options: `func(options, **own)` gets them as one dict."""
    return _grouped_command(func, TRAINING_OPTIONS)


def sweep_command(func: Callable[..., None]) -> Callable[..., None]:
    """Give a command every training flag as text, a comma list being a sweep axis: `func(grid, **own)`."""
    from arithlens.sweep.grid import grid_options

    return _grouped_command(func, grid_options(TRAINING_OPTIONS))


def _command_line() -> str:
    return "arithlens " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _default_out() -> Path:
    return Path("runs") / datetime.now().strftime("run-%Y%m%d-%H%M%S")


def _warmup(text: str | None) -> dict[str, Any]:
    """--warmup-steps as steps ("100") or as a share of the steps ("0.05", "5%")."""
    if text is None:
        return {}
    value = text.strip()
    try:
        if not value.isascii():  # int() and float() also read other scripts' digits
            raise ValueError(value)
        if value.endswith("%"):
            return {"warmup_fraction": float(value[:-1]) / 100}
        if value.isdigit():
            return {"warmup_steps": int(value)}
        share = float(value)
    except ValueError:
        share = -1.0
    if not 0 <= share < 1:
        raise ArithlensError(f"--warmup-steps must be a whole number of steps or a share such as 0.05 or 5%, "
                             f"got {text!r}")
    return {"warmup_fraction": share}


def _betas(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        if not text.isascii():  # float() also reads other scripts' digits
            raise ValueError(text)
        first, second = (float(part) for part in text.split(","))
    except ValueError:
        raise ArithlensError(f"--betas must be two numbers such as 0.9,0.98, got {text!r}") from None
    return first, second


def run_config_from_flags(options: dict[str, Any]) -> RunConfig:
    """The resolved config: the recipe's values, overridden by every flag given (`arithlens sweep` builds
    each cell's config with it too)."""
    grad_clip = options["grad_clip"]
    train = TrainConfig.from_recipe(
        options["recipe"], steps=options["steps"], batch_size=options["batch_size"], lr=options["lr"],
        schedule=options["schedule"], warmup_start=options["warmup_start"], min_lr=options["min_lr"],
        weight_decay=options["weight_decay"], betas=_betas(options["betas"]), seed=options["seed"],
        finite=options["finite"], enrich_fraction=options["enrich"], checkpoint_every=options["checkpoint_every"],
        device=options["device"], eval_every=options["eval_every"], eval_count=options["eval_count"],
        until_accuracy=options["until_accuracy"], init_from=options["init_from"], **_warmup(options["warmup_steps"]),
    )
    if grad_clip is not None:  # 0 turns a recipe's clipping off
        train = replace(train, grad_clip=grad_clip or None)
    return RunConfig(
        model=ModelConfig(n_digits=options["digits"], n_layers=options["layers"], n_heads=options["heads"],
                          d_model=options["d_model"], d_mlp=options["d_mlp"], normalization=options["norm"],
                          act_fn=options["act"], seed=options["seed"], op=options["op"]),
        train=train,
    )


def _train_or_resume(options: dict[str, Any]) -> Path:
    """Validate every flag first (nothing on disk is touched by a bad one), then train or resume."""
    from arithlens.training import resume, train

    config = run_config_from_flags(options)
    progress = not options["no_progress"]
    if options["resume"] is not None:
        _check_resume_flags(options, config)
        run = resume(options["resume"], steps=config.train.steps if _steps_given() else None, progress=progress)
    else:
        if _empty_out_given():
            raise ArithlensError("--out is empty; name the run folder to create (or leave --out out for runs/NAME)")
        run = train(config, options["out"] or _default_out(), force=options["force"], progress=progress,
                    command=_command_line())
    return run.path


def _empty_out_given() -> bool:
    """`--out ""` reaches us as Path("."), the current folder; nobody means that by an empty name."""
    argv = sys.argv[1:]
    return "--out=" in argv or any(arg == "--out" and i + 1 < len(argv) and not argv[i + 1].strip()
                                   for i, arg in enumerate(argv))


def _steps_given() -> bool:
    return any(arg == "--steps" or arg.startswith("--steps=") for arg in sys.argv)


# The config field each training flag sets, for --resume's check.
_RESUME_FIELDS = {
    "digits": ("model", "n_digits"), "layers": ("model", "n_layers"), "heads": ("model", "n_heads"),
    "d_model": ("model", "d_model"), "d_mlp": ("model", "d_mlp"), "norm": ("model", "normalization"),
    "act": ("model", "act_fn"), "seed": ("model", "seed"), "recipe": ("train", "recipe"),
    "batch_size": ("train", "batch_size"), "lr": ("train", "lr"), "schedule": ("train", "schedule"),
    "warmup_steps": ("train", "warmup_steps"), "warmup_start": ("train", "warmup_start"),
    "min_lr": ("train", "min_lr"), "grad_clip": ("train", "grad_clip"), "betas": ("train", "betas"),
    "weight_decay": ("train", "weight_decay"), "finite": ("train", "finite"), "enrich": ("train", "enrich_fraction"),
    "checkpoint_every": ("train", "checkpoint_every"), "eval_every": ("train", "eval_every"),
    "eval_count": ("train", "eval_count"), "until_accuracy": ("train", "until_accuracy"),
    "device": ("train", "device"), "op": ("model", "op"), "init_from": ("train", "init_from"),
}


def _given(name: str) -> bool:
    """Whether the user typed the training option `name` (a parameter name such as "d_model": --d-model)."""
    flag = "--" + name.replace("_", "-")
    return any(arg == flag or arg.startswith(flag + "=") for arg in sys.argv[1:])


def _check_resume_flags(options: dict[str, Any], config: RunConfig) -> None:
    """--resume keeps the run's own settings, so a flag asking for other ones is refused, not silently ignored.

    A flag repeating the run's value (the original command with --resume added) is fine; only --steps may change.
    """
    from arithlens.runs import load_run

    run = load_run(options["resume"])
    ignored = []
    for name, (section, field) in _RESUME_FIELDS.items():
        if not _given(name):
            continue
        wanted = getattr(getattr(config, section), field)
        stored = getattr(getattr(run.config, section), field)
        share = _warmup(options["warmup_steps"]).get("warmup_fraction") if name == "warmup_steps" else None
        if share is not None:  # a share of the run's own steps
            wanted = round(share * run.config.train.steps)
        if wanted != stored:
            ignored.append(f"--{name.replace('_', '-')} {options[name]} (the run has {stored})")
    if options["force"]:
        ignored.append("--force (a resumed run keeps its files)")
    if _given("out") and options["out"].resolve() != run.path.resolve():
        ignored.append(f"--out {options['out']} (the run is in {run.path})")
    if ignored:
        raise ArithlensError(f"--resume continues {run.path} with the settings it was started with, so it would "
                             f"ignore {'; '.join(ignored)}: drop them (only --steps may change), or start a new run "
                             f"with --out")


def _print_training_summary(run_path: Path) -> None:
    from arithlens.runs import load_run

    run = load_run(run_path)
    last = run.metrics.iloc[-1]
    console.print(f"[bold]trained[/bold] {int(last['step']) + 1} steps in {run.info.get('seconds', 0):.0f} s, "
                  f"final loss {last['loss']:.4g} (mean of last 100 steps: "
                  f"{run.metrics['loss'].tail(100).mean():.4g}); run folder: {run.path}")
    if "heldout_accuracy" in run.info:
        console.print(f"  held-out accuracy {100 * run.info['heldout_accuracy']:.3f}% at step {run.info['heldout_step']}"
                      f" ({run.config.train.eval_count:,} questions)")
    if run.info.get("stop_reason") == "until_accuracy":
        console.print(f"  stopped at step {run.info['stopped_at_step']}: held-out accuracy reached "
                      f"{run.config.train.until_accuracy}")


@app.command()
@training_command
def train(options: dict[str, Any]) -> None:
    """Train a model into a run folder (config.json, model.safetensors, metrics.parquet, checkpoints/)."""
    _print_training_summary(_train_or_resume(options))


@app.command()
@training_command
def run(
    options: dict[str, Any],
    count: Annotated[int, typer.Option("--count", help="Questions per analysis.")] = 10_000,
) -> None:
    """The main job: train, analyse every experiment, and write report.html."""
    from arithlens.analysis.runner import check_analysis_settings

    started = time.perf_counter()
    check_analysis_settings(count=count)  # a bad --count fails now, not after the training
    path = _train_or_resume(options)
    _print_training_summary(path)
    summary = _analyze(path, count, not options["no_progress"])
    report_path = _report(path)
    _print_analysis_summary(summary)
    console.print(f"[bold]report[/bold] {report_path}  (whole job {time.perf_counter() - started:.0f} s)")


def _analyze(path: Path, count: int, progress: bool, out: Path | None = None) -> dict:
    """The analysis's summary.json; a mixed model's gets each operation's own under "operation_summaries"."""
    from arithlens.analysis.runner import SUMMARY_FILE, analysis_folder, analyze_run

    analyze_run(path, out=out, count=count, progress=progress)
    folder = analysis_folder(path, out)
    summary_path = folder / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if isinstance(summary.get("operations"), dict):
        summary["operation_summaries"] = {key: json.loads((folder / key / SUMMARY_FILE).read_text())
                                          for key in summary["operations"]}
    return summary


def _report(path: Path, out: Path | None = None, analysis: Path | None = None) -> Path:
    from arithlens.report import build_report

    return build_report(path, out, analysis)


def _print_analysis_summary(summary: dict) -> None:
    """One screen: accuracy, accuracy by cascade depth, each answer digit's useful nodes, what fails;
    for a mixed model, one such block per operation and the nodes the operations share."""
    if isinstance(summary.get("operation_summaries"), dict):
        for key, part in summary["operation_summaries"].items():
            console.print(f"[bold]{ {'add': 'addition', 'sub': 'subtraction'}.get(key, key)} questions[/bold]")
            _print_analysis_summary(part)
        shared = summary.get("shared_nodes") or {}
        console.print(f"[bold]useful nodes[/bold] {len(shared.get('both', []))} serve both operations, "
                      f"{len(shared.get('only_add', []))} only addition, {len(shared.get('only_sub', []))} only "
                      f"subtraction")
        return
    accuracy = summary.get("accuracy") or {}
    if accuracy:
        console.print(f"[bold]accuracy[/bold] {100 * accuracy['accuracy']:.3f}% of {accuracy['questions']:,} random "
                      f"questions ({accuracy['failures']:,} failures, {accuracy['nines']:.0f} nines)")
        depths = accuracy.get("by_cascade_depth", {})
        parts = [f"depth {d}: {100 * v['accuracy']:.1f}%" for d, v in depths.items()
                 if v.get("questions") and v.get("accuracy") is not None]
        if parts:
            console.print("  by cascade depth  " + ", ".join(parts))
    for digit, info in (summary.get("answer_digits") or {}).items():
        nodes = ", ".join(n["node"] for n in info.get("useful_nodes", [])[:6]) or "none found"
        console.print(f"  {digit} (computed at P{info.get('position')}): useful nodes {nodes}")
    cannot = summary.get("cannot_do") or []
    if cannot:
        console.print("[bold]cannot do[/bold] " + "; ".join(cannot[:3]))
    clauses = summary.get("clauses") or {}
    if str(clauses.get("file", "")).startswith("none:"):
        console.print(f"[bold]published algorithm[/bold] not tested: {clauses['file'][len('none: '):]}")
    elif clauses.get("text"):
        failed = ", ".join(clauses.get("failed", [])[:6])
        console.print(f"[bold]published algorithm[/bold] {clauses['text']}" + (f"; failed: {failed}" if failed else ""))
    whole = ((summary.get("circuit") or {}).get("answer_digits") or {}).get("all")
    if whole and whole.get("faithfulness") is not None and whole.get("completeness") is not None:
        console.print(f"[bold]the map as a circuit[/bold] faithfulness {whole['faithfulness']:.3f}, completeness "
                      f"{whole['completeness']:.3f} ({whole['nodes']} nodes; see circuit.parquet)")


@app.command()
def analyze(
    run_dir: Annotated[str, typer.Argument(help="A run folder or bundled model name.")],
    count: Annotated[int, typer.Option("--count", help="Questions per analysis.")] = 10_000,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Write the analysis folder here (default RUN_DIR/analysis; ./NAME-analysis for a bundled model).",
    )] = None,
    no_progress: NoProgress = False,
) -> None:
    """Run every analysis on a run and write RUN_DIR/analysis/ (tables + summary.json)."""
    from arithlens.analysis.runner import analysis_folder, check_analysis_settings
    from arithlens.runs import is_bundled, load_run, require_finished_model

    check_analysis_settings(count=count)
    path = load_run(run_dir).path
    require_finished_model(path)
    bundled = is_bundled(path)
    if out is None and bundled:
        out = Path(f"{path.name}-analysis")  # the installed package keeps its shipped analysis untouched
    target = analysis_folder(path, out)  # refuses a folder it must not replace, before the work
    summary = _analyze(path, count, not no_progress, out)
    _print_analysis_summary(summary)
    console.print(f"analysis written to {target}")
    if out is not None:
        console.print(f"draw it with: arithlens report {run_dir if bundled else path} --analysis {target}")


@app.command()
def report(
    run_dir: Annotated[str, typer.Argument(help="A run folder or bundled model name.")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Write the page here (default RUN_DIR/report.html; NAME-report.html here for a bundled model).",
    )] = None,
    analysis: Annotated[Optional[Path], typer.Option(
        "--analysis", help="Draw this analysis folder (from analyze --out) instead of RUN_DIR/analysis.",
    )] = None,
) -> None:
    """(Re)build RUN_DIR/report.html, an offline page with every figure."""
    from arithlens.runs import is_bundled, load_run

    path = load_run(run_dir).path
    if out is None and is_bundled(path):
        out = Path(f"{path.name}-report.html")  # the installed package keeps its shipped report untouched
    if out is not None and not out.parent.is_dir():
        raise ArithlensError(f"cannot write {out}: folder {out.parent} does not exist")
    console.print(f"report written to {_report(path, out, analysis)}")


@app.command()
def hypothesis(
    run_dir: Annotated[str, typer.Argument(help="A run folder or bundled model name.")],
    file: Annotated[str, typer.Argument(help="A hypothesis file (TOML), or a shipped one: published_1layer.")],
    pairs: Annotated[int, typer.Option("--pairs", help="Question pairs per clause.")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the question pairs.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the table.")] = False,
) -> None:
    """Test each clause of a hypothesis file causally, by patching question pairs that differ in its sub-task."""
    from arithlens.analysis.clauses import clause_counts, clause_display, clause_records, evaluate_clauses
    from arithlens.analysis.hypotheses import read_hypotheses
    from arithlens.runs import load_model

    if pairs < 1:
        raise ArithlensError(f"--pairs must be at least 1, got {pairs}")
    hypotheses = read_hypotheses(file)  # a broken file fails before the model loads
    frame = evaluate_clauses(load_model(run_dir), hypotheses, pairs=pairs, seed=seed)
    counts = clause_counts(frame)
    if as_json:
        payload = {"model": run_dir, "file": file, "pairs": pairs, "seed": seed, "counts": counts,
                   "clauses": clause_records(frame)}
        sys.stdout.write(json.dumps(payload, allow_nan=False) + "\n")
        return
    table = Table(title=f"{hypotheses.title or file} on {run_dir} ({pairs} question pairs per clause, seed {seed})")
    shown = clause_display(frame)
    for column in shown.columns:
        table.add_column(column, justify="right" if column in ("pair", "pairs", "recovery") else "left",
                         no_wrap=column != "patched")
    colours = {"strong": "green", "weak": "yellow", "fail": "red"}
    for row in shown.itertuples(index=False):
        table.add_row(*map(str, row[:-1]), f"[{colours[row.verdict]}]{row.verdict}[/]")
    Console(width=max(console.width, 180)).print(table)  # wide enough not to wrap when piped (rich assumes 80)
    console.print(counts["text"], markup=False, highlight=False)


@app.command()
def circuit(
    run_dir: Annotated[str, typer.Argument(help="A run folder or bundled model name.")],
    nodes: Annotated[list[str], typer.Argument(help="Nodes to keep, e.g. P14L0H2 P14L0M (commas work too).")],
    count: Annotated[int, typer.Option("--count", help="Random questions to score on.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the questions.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the table.")] = False,
) -> None:
    """Faithfulness, completeness and redundant nodes of a node set, per answer digit and for the whole answer.

    Every other head and MLP is mean-ablated (see `arithlens.analysis.circuit`).
    """
    import math

    from arithlens.analysis.circuit import check_circuit_nodes, score_circuit
    from arithlens.analysis.question_sets import make_question_set
    from arithlens.model import model_config_of
    from arithlens.runs import load_model
    from arithlens.task import task_for

    if count < 1:
        raise ArithlensError(f"--count must be at least 1, got {count}")
    loaded = load_model(run_dir)
    names = check_circuit_nodes(loaded, ",".join(nodes))  # a bad or missing node fails before the work
    batch = make_question_set(task_for(model_config_of(loaded)), "random", count, seed).batch
    frame = score_circuit(loaded, batch, names)
    if as_json:
        records = frame.drop(columns=["nodes", "reference"]).to_dict("records")
        rows = [{key: (None if isinstance(value, float) and not math.isfinite(value) else value)  # NaN is not JSON
                 for key, value in row.items()} for row in records]
        payload = {"model": run_dir, "nodes": names, "questions": count, "seed": seed,
                   "reference": str(frame["reference"].iloc[0]), "scores": rows}
        sys.stdout.write(json.dumps(payload, allow_nan=False) + "\n")
        return
    table = Table(title=f"{', '.join(names)} kept in {run_dir}, every other node mean-ablated ({count:,} questions, "
                        f"seed {seed})")
    for column in ("answer digit", "f", "completeness", "accuracy kept", "accuracy ablated", "full model",
                   "redundant"):
        table.add_column(column, justify="left" if column in ("answer digit", "redundant") else "right")
    for row in frame.itertuples(index=False):
        table.add_row(row.answer_digit, f"{row.faithfulness:.3f}", f"{row.completeness:.3f}",
                      f"{100 * row.accuracy_kept:.2f}%", f"{100 * row.accuracy_ablated:.2f}%",
                      f"{100 * row.accuracy_full:.2f}%", row.redundant_nodes)
    Console(width=max(console.width, 140)).print(table)
    console.print(f"f = (m(kept) - m(none)) / (m(full) - m(none)), m = the correct digit's logit minus the largest "
                  f"other digit's; completeness = f with only these nodes ablated. Means over "
                  f"{frame['reference'].iloc[0]}.", markup=False, highlight=False)


@app.command()
def data(
    op: OpOpt = "add",
    digits: Digits = 5,
    count: Annotated[int, typer.Option("--count", help="Number of questions.")] = 10,
    seed: Seed = 0,
    output_format: Annotated[str, typer.Option("--format", help="Output format (jsonl).")] = "jsonl",
    enrich: Enrich = 0.0,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """Write labelled questions, one JSON object per line (per-digit lists are units-first; subtraction's
    labels are on the larger operand minus the smaller)."""
    import torch

    from arithlens.datasets import jsonl_chunks
    from arithlens.task import make_task

    from arithlens.config import check_seed, question_bytes, require_memory

    if output_format != "jsonl":
        raise ArithlensError(f"unknown --format {output_format!r}: only jsonl is supported")
    if count < 1:
        raise ArithlensError(f"--count must be at least 1, got {count}")
    check_seed(seed, "--seed")
    if enrich is not None and not 0.0 <= enrich <= 1.0:
        raise ArithlensError(f"--enrich must be a share from 0 to 1, got {enrich}")
    task = make_task(op, digits)
    require_memory({"the questions (--count)": count * question_bytes(digits)})
    if output is not None:
        _check_output_file(output)
    batch = task.generate(count, torch.Generator().manual_seed(seed), enrich_fraction=enrich)
    if output is None:
        for lines in jsonl_chunks(task, batch):
            sys.stdout.write(lines)
        return
    special = output.exists() and not output.is_file()  # /dev/stdout, a FIFO: written as it is, never replaced
    target = output if special else output.resolve()  # through a symlink, which stays a symlink
    tmp = target if special else target.with_name(f".{target.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            for lines in jsonl_chunks(task, batch):
                handle.write(lines)
        if not special:
            tmp.replace(target)  # whole or not at all: an earlier file stays until the new one is complete
    except OSError as error:
        if not special:
            tmp.unlink(missing_ok=True)
        raise ArithlensError(f"cannot write --output {output}: {error.strerror or error}") from None


def _check_output_file(output: Path) -> None:
    """An output file path that can be written: not a folder, in a folder that exists."""
    if output.is_dir():
        raise ArithlensError(f"--output {output} is a folder; give a file name such as {output / 'questions.jsonl'}")
    if not output.parent.is_dir():
        raise ArithlensError(f"cannot write --output {output}: folder {output.parent} is missing")


@app.command()
def predict(
    questions: Annotated[Optional[list[str]], typer.Argument(help="Questions such as 12345+67890=")] = None,
    model: ModelOpt = "add_d5_l1",
    file: Annotated[Optional[Path], typer.Option("--file", help="A file with one question per line.")] = None,
) -> None:
    """Print the model's greedy answer to each question, one per line."""
    from arithlens.inference import predict as predict_answers
    from arithlens.runs import load_model

    texts = list(questions or [])
    if file is not None:
        texts += _question_lines(file)
    if not texts:
        raise ArithlensError("give questions as arguments or --file F (e.g. arithlens predict 12345+67890=)")
    for line in predict_answers(load_model(model), texts):
        print(line)


def _question_lines(file: Path) -> list[str]:
    """The questions of a --file: UTF-8 text (a BOM is fine), one per line, blank lines skipped."""
    if file.is_dir():
        raise ArithlensError(f"--file {file} is a folder; give a text file with one question per line")
    if not file.is_file():
        raise ArithlensError(f"no such file {file}")
    try:
        text = file.read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise ArithlensError(f"cannot read --file {file}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ArithlensError(f"--file {file} is not UTF-8 text (byte {error.object[error.start]:#04x} at "
                             f"offset {error.start}); give a text file with one question per line") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


@app.command("eval")
def evaluate(
    model: ModelOpt = "add_d5_l1",
    count: Annotated[int, typer.Option("--count", help="Questions to test.")] = 100_000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the test questions.")] = 12345,
    question_set: Annotated[str, typer.Option(
        "--set", help="Question set: random, or a built set such as cascade_depth_3, use_sum9, published_hard "
        "(subtraction: borrow_cascade_depth_2, negative, ...; a mixed model's are add:NAME and sub:NAME).",
    )] = "random",
    every: Annotated[bool, typer.Option(
        "--all", help="Check every question (all 10^(2n) pairs x, y: a proof, not a sample); at most 3 digits.",
    )] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object on stdout instead of the table.",
    )] = False,
    no_progress: NoProgress = False,
) -> None:
    """Accuracy overall, by category, by cascade depth and by answer digit, in nines.

    --all checks every question of a model of up to 3 digits; --json prints one JSON object.
    """
    import math

    from arithlens.analysis.accuracy import (
        EXHAUSTIVE_MAX_DIGITS,
        accuracy_records,
        accuracy_table,
        evaluate as evaluate_batch,
        exhaustive_accuracy,
        exhaustive_question_count,
        random_accuracy,
    )
    from arithlens.analysis.question_sets import make_question_set
    from arithlens.model import model_config_of
    from arithlens.runs import load_model
    from arithlens.task import task_for

    from arithlens.config import check_seed, question_bytes, require_memory

    if count < 1:
        raise ArithlensError(f"--count must be at least 1, got {count}")
    check_seed(seed, "--seed")
    if every and question_set != "random":
        raise ArithlensError(f"--all checks every question, so it takes no --set; drop --set {question_set}")
    loaded = load_model(model)
    n_digits = model_config_of(loaded).n_digits
    if not every:  # every question is kept with its answer and loss until the table is made
        require_memory({"the questions (--count)": count * (question_bytes(n_digits) + 16 * (n_digits + 1))})
    if every and n_digits > EXHAUSTIVE_MAX_DIGITS:
        raise ArithlensError(
            f"eval --all checks every question, and a {n_digits}-digit model has "
            f"{exhaustive_question_count(n_digits):,} of them; use --count N for a random sample "
            f"(at most {EXHAUSTIVE_MAX_DIGITS} digits for --all)"
        )
    started = time.perf_counter()
    if every:
        result = exhaustive_accuracy(loaded, progress=not no_progress)
    elif question_set == "random":
        result = random_accuracy(loaded, count, seed=seed, progress=not no_progress)
    else:
        questions = make_question_set(task_for(model_config_of(loaded)), question_set, count, seed)
        result = evaluate_batch(loaded, questions.batch, progress=not no_progress)
    seconds = time.perf_counter() - started
    rows = accuracy_table(result)
    if as_json:
        overall = accuracy_records(rows)[0]  # the first row is the overall one
        payload = {
            "model": model, "question_set": "all" if every else question_set, "seed": None if every else seed,
            "questions": overall["questions"], "correct": overall["correct"], "accuracy": overall["accuracy"],
            "failures": overall["failures"], "nines": overall["nines"],
            "loss": result.loss if math.isfinite(result.loss) else None,  # a diverged model's NaN is not JSON
            "groups": accuracy_records(rows),
            "seconds": round(seconds, 3), "questions_per_s": round(len(result) / seconds, 1),
        }
        # Plain stdout, not rich: rich would wrap long lines and style the text.
        sys.stdout.write(json.dumps(payload, allow_nan=False) + "\n")
        return
    title = (f"accuracy of {model} on all {len(result):,} questions (every x, y)" if every
             else f"accuracy of {model} on {count:,} {question_set} questions (seed {seed})")
    table = Table(title=title)
    for column in ("group", "questions", "correct", "accuracy", "failures", "nines"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for row in rows.itertuples():
        if row.questions == 0:  # e.g. cascade depths a built set never has
            continue
        table.add_row(f"{row.group_kind}: {row.group}", f"{row.questions:,}", f"{row.correct:,}",
                      f"{100 * row.accuracy:.4f}%", f"{row.failures:,}", f"{row.nines:.2f}")
    Console(width=max(console.width, 110)).print(table)
    console.print(f"{len(result):,} questions in {seconds:.1f} s ({len(result) / seconds:,.0f} questions/s)")


@app.command()
def models() -> None:
    """List the bundled trained models with their size, steps, loss and accuracy."""
    from arithlens.runs import bundled_models_dir, bundled_model_names, load_run

    names = bundled_model_names()
    if not names:
        console.print("no bundled models are installed")
        return
    table = Table(title="bundled models")
    for column in ("name", "op", "layers", "d_model", "heads", "size", "recipe", "steps", "loss", "accuracy"):
        table.add_column(column, no_wrap=True)
    for name in names:
        run = load_run(bundled_models_dir() / name)
        card = run.info.get("card", {})
        model_cfg = run.config.model
        size_mib = (run.path / "model.safetensors").stat().st_size / 2**20
        accuracy = card.get("accuracy")
        table.add_row(name, model_cfg.op, str(model_cfg.n_layers), str(model_cfg.d_model), str(model_cfg.n_heads),
                      f"{size_mib:.1f} MiB", run.config.train.recipe, f"{run.info.get('steps_done', 0):,}",
                      f"{card.get('final_loss', float('nan')):.3g}",
                      f"{100 * accuracy:.2f}% of {card.get('accuracy_questions', 0):,}" if accuracy is not None else "")
    # Wide enough that names are never cut short, also when piped (rich assumes 80 columns then).
    Console(width=max(console.width, 120)).print(table)


@app.command()
@sweep_command
def sweep(
    grid: dict[str, Any],
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Sweep folder (default sweeps/sweep-<time>); the same command again continues it.")] = None,
    count: Annotated[int, typer.Option("--count", help="Questions per analysis of each cell.")] = SWEEP_COUNT,
    address: Annotated[Optional[str], typer.Option(
        "--address", help="HOST:PORT of a Ray cluster's head to run on (default: a local Ray instance, one cell "
                          "per core).")] = None,
    no_progress: NoProgress = False,
) -> None:
    """Train, analyse and report a grid of runs (e.g. --seed 1,2,3 --layers 1,2), then compare their circuits.

    A training flag with several comma-separated values is an axis; a single value is fixed for every cell.
    Exit code 1 if a cell failed (the others are still compared), 130 on Ctrl-C; the same command continues.
    """
    from arithlens.sweep.grid import plan_sweep

    plan = plan_sweep(grid)  # a bad grid fails here, before the training stack loads

    from arithlens.sweep.runner import run_sweep

    target = out or Path("sweeps") / datetime.now().strftime("sweep-%Y%m%d-%H%M%S")
    result = run_sweep(plan, target, count=count, address=address, progress=not no_progress, console=console)
    for line in result.summary_lines():
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if result.interrupted:
        raise CommandInterrupted(result.interrupted_message(), 130)
    if result.failed:
        raise typer.Exit(1)


def _environment_error(error: Exception) -> str | None:
    """One line for what the machine, not arithlens, refused: memory that cannot be had, a file that cannot be
    read or written. Commands check what they can up front; this is the net under those checks."""
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and any(
            words in first_line.lower() for words in ("out of memory", "can't allocate memory", "not enough memory"))):
        return (f"out of memory ({first_line[:200]}); lower what sizes the work: --count, --steps, --batch-size, "
                f"--finite, --eval-count, --d-model, --d-mlp or --layers")
    if isinstance(error, OSError):
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror or first_line}{where}"
    return None


def main() -> None:
    """Entry point: run the app, turning user mistakes into one line and exit code 2."""
    try:
        code = app(standalone_mode=False)
    except CommandInterrupted as stopped:
        err_console.print(stopped.message, markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(stopped.exit_code) from None
    except ArithlensError as error:
        err_console.print(f"error: {error}", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # outside a command; a training run reports itself through CommandInterrupted
        code = 130
    except typer.Exit as done:
        raise SystemExit(done.exit_code) from None
    except typer.Abort:
        raise SystemExit(130) from None
    except Exception as error:
        # Usage errors (bad option values) come from typer's click; they carry their own message and exit code.
        format_message = getattr(error, "format_message", None)
        exit_code = getattr(error, "exit_code", None)
        if callable(format_message) and isinstance(exit_code, int):
            err_console.print(f"error: {format_message()}", markup=False, highlight=False, soft_wrap=True)
            raise SystemExit(exit_code) from None
        line = _environment_error(error)
        if line is None:
            raise
        err_console.print(f"error: {line}", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    if isinstance(code, int) and code != 0:  # typer returns, not raises, the exit code of a Ctrl-C
        if code == 130:
            err_console.print("interrupted", markup=False, highlight=False)
        raise SystemExit(code)


if __name__ == "__main__":
    main()
