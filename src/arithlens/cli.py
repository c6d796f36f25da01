"""The `arithlens` command line: a thin face over the Python API.

    arithlens run        train with the defaults (or flags), analyse, write report.html
    arithlens train      train only (--resume DIR continues a run)
    arithlens data       write labelled questions as JSON lines
    arithlens predict    greedy answers from a model
    arithlens eval       accuracy by category, cascade depth and answer digit
    arithlens analyze    every analysis, into RUN_DIR/analysis/
    arithlens report     (re)build RUN_DIR/report.html
    arithlens models     the bundled trained models

A user mistake prints one line on stderr and exits with code 2, never a traceback.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from arithlens.config import ModelConfig, RunConfig, TrainConfig
from arithlens.errors import ArithlensError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train small transformers on addition and reverse-engineer the algorithm they learn.",
)
console = Console()
err_console = Console(stderr=True)

Digits = Annotated[int, typer.Option("--digits", help="Digits per operand.")]
Layers = Annotated[int, typer.Option("--layers", help="Transformer layers.")]
Heads = Annotated[int, typer.Option("--heads", help="Attention heads per layer.")]
DModel = Annotated[int, typer.Option("--d-model", help="Residual stream width.")]
DMlp = Annotated[int, typer.Option("--d-mlp", help="MLP hidden width.")]
Norm = Annotated[Optional[str], typer.Option("--norm", help="LayerNorm kind: LN, RMS, LNPre, RMSPre (default none).")]
Act = Annotated[str, typer.Option("--act", help="Activation: relu, gelu, gelu_new, silu.")]
Steps = Annotated[int, typer.Option("--steps", help="Training steps (batches).")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Questions per batch.")]
Lr = Annotated[float, typer.Option("--lr", help="AdamW learning rate.")]
WeightDecay = Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for the weights and the data.")]
Finite = Annotated[Optional[int], typer.Option("--finite", help="Train on a fixed set of N questions (the seed's finite mode).")]
Enrich = Annotated[float, typer.Option("--enrich", help="Share of questions with Sum9-enriched digit pairs (0 = uniform).")]
CheckpointEvery = Annotated[int, typer.Option("--checkpoint-every", help="Steps between checkpoints.")]
Device = Annotated[str, typer.Option("--device", help="cpu, cuda or mps.")]
Out = Annotated[Optional[Path], typer.Option("--out", help="Run folder (default runs/run-<time>).")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite an existing run folder.")]
Resume = Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this folder.")]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="Hide progress bars.")]
ModelOpt = Annotated[str, typer.Option("--model", help="A run folder or a bundled model name (see `arithlens models`).")]


def _command_line() -> str:
    return "arithlens " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _default_out() -> Path:
    return Path("runs") / datetime.now().strftime("run-%Y%m%d-%H%M%S")


def _run_config(digits: int, layers: int, heads: int, d_model: int, d_mlp: int, norm: str | None, act: str,
                steps: int, batch_size: int, lr: float, weight_decay: float, seed: int, finite: int | None,
                enrich: float, checkpoint_every: int, device: str) -> RunConfig:
    return RunConfig(
        model=ModelConfig(n_digits=digits, n_layers=layers, n_heads=heads, d_model=d_model, d_mlp=d_mlp,
                          normalization=norm, act_fn=act, seed=seed),
        train=TrainConfig(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
                          finite=finite, enrich_fraction=enrich, checkpoint_every=checkpoint_every, device=device),
    )


def _train_or_resume(config: RunConfig, out: Path | None, force: bool, resume_dir: Path | None,
                     steps_given: bool, progress: bool) -> Path:
    from arithlens.training import resume, train

    if resume_dir is not None:
        run = resume(resume_dir, steps=config.train.steps if steps_given else None, progress=progress)
    else:
        run = train(config, out or _default_out(), force=force, progress=progress, command=_command_line())
    return run.path


def _steps_given() -> bool:
    return any(arg == "--steps" or arg.startswith("--steps=") for arg in sys.argv)


def _print_training_summary(run_path: Path) -> None:
    from arithlens.runs import load_run

    run = load_run(run_path)
    last = run.metrics.iloc[-1]
    console.print(f"[bold]trained[/bold] {int(last['step']) + 1} steps in {run.info.get('seconds', 0):.0f} s, "
                  f"final loss {last['loss']:.4g} (mean of last 100 steps: "
                  f"{run.metrics['loss'].tail(100).mean():.4g}); run folder: {run.path}")


@app.command()
def train(
    digits: Digits = 5, layers: Layers = 1, heads: Heads = 4, d_model: DModel = 512, d_mlp: DMlp = 2048,
    norm: Norm = None, act: Act = "relu", steps: Steps = 3000, batch_size: BatchSize = 64, lr: Lr = 1e-4,
    weight_decay: WeightDecay = 0.1, seed: Seed = 129000, finite: Finite = None, enrich: Enrich = 0.0,
    checkpoint_every: CheckpointEvery = 500, device: Device = "cpu", out: Out = None, force: Force = False,
    resume: Resume = None, no_progress: NoProgress = False,
) -> None:
    """Train a model into a run folder (config.json, model.safetensors, metrics.parquet, checkpoints/)."""
    config = _run_config(digits, layers, heads, d_model, d_mlp, norm, act, steps, batch_size, lr, weight_decay, seed,
                         finite, enrich, checkpoint_every, device)
    path = _train_or_resume(config, out, force, resume, _steps_given(), not no_progress)
    _print_training_summary(path)


@app.command()
def run(
    digits: Digits = 5, layers: Layers = 1, heads: Heads = 4, d_model: DModel = 512, d_mlp: DMlp = 2048,
    norm: Norm = None, act: Act = "relu", steps: Steps = 3000, batch_size: BatchSize = 64, lr: Lr = 1e-4,
    weight_decay: WeightDecay = 0.1, seed: Seed = 129000, finite: Finite = None, enrich: Enrich = 0.0,
    checkpoint_every: CheckpointEvery = 500, device: Device = "cpu", out: Out = None, force: Force = False,
    resume: Resume = None, no_progress: NoProgress = False,
    count: Annotated[int, typer.Option("--count", help="Questions per analysis.")] = 10_000,
) -> None:
    """The main job: train, analyse every experiment, and write report.html."""
    started = time.perf_counter()
    config = _run_config(digits, layers, heads, d_model, d_mlp, norm, act, steps, batch_size, lr, weight_decay, seed,
                         finite, enrich, checkpoint_every, device)
    path = _train_or_resume(config, out, force, resume, _steps_given(), not no_progress)
    _print_training_summary(path)
    summary = _analyze(path, count, not no_progress)
    report_path = _report(path)
    _print_analysis_summary(summary)
    console.print(f"[bold]report[/bold] {report_path}  (whole job {time.perf_counter() - started:.0f} s)")


def _analyze(path: Path, count: int, progress: bool) -> dict:
    from arithlens.analysis.runner import analyze_run

    analyze_run(path, count=count, progress=progress)
    summary_path = path / "analysis" / "summary.json"
    return json.loads(summary_path.read_text()) if summary_path.is_file() else {}


def _report(path: Path, out: Path | None = None) -> Path:
    from arithlens.report import build_report

    return build_report(path, out)


def _print_analysis_summary(summary: dict) -> None:
    """One screen: accuracy, accuracy by cascade depth, each answer digit's useful nodes, what fails."""
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


@app.command()
def analyze(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    count: Annotated[int, typer.Option("--count", help="Questions per analysis.")] = 10_000,
    no_progress: NoProgress = False,
) -> None:
    """Run every analysis on a run and write RUN_DIR/analysis/ (tables + summary.json)."""
    from arithlens.runs import load_run, require_finished_model

    path = load_run(run_dir).path
    require_finished_model(path)
    summary = _analyze(path, count, not no_progress)
    _print_analysis_summary(summary)
    console.print(f"analysis written to {path / 'analysis'}")


@app.command()
def report(
    run_dir: Annotated[str, typer.Argument(help="A run folder or bundled model name.")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Write the page here (default RUN_DIR/report.html; NAME-report.html here for a bundled model).",
    )] = None,
) -> None:
    """(Re)build RUN_DIR/report.html, an offline page with every figure."""
    from arithlens.runs import bundled_models_dir, load_run

    path = load_run(run_dir).path
    if out is None and path.resolve().parent == bundled_models_dir().resolve():
        out = Path(f"{path.name}-report.html")  # the installed package keeps its shipped report untouched
    if out is not None and not out.parent.is_dir():
        raise ArithlensError(f"cannot write {out}: folder {out.parent} does not exist")
    console.print(f"report written to {_report(path, out)}")


@app.command()
def data(
    digits: Digits = 5,
    count: Annotated[int, typer.Option("--count", help="Number of questions.")] = 10,
    seed: Seed = 0,
    output_format: Annotated[str, typer.Option("--format", help="Output format (jsonl).")] = "jsonl",
    enrich: Enrich = 0.0,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """Write labelled questions, one JSON object per line (per-digit lists are units-first)."""
    import torch

    from arithlens.datasets import batch_records
    from arithlens.task import AdditionTask

    if output_format != "jsonl":
        raise ArithlensError(f"unknown --format {output_format!r}: only jsonl is supported")
    if count < 1:
        raise ArithlensError(f"--count must be at least 1, got {count}")
    task = AdditionTask(digits)
    batch = task.generate(count, torch.Generator().manual_seed(seed), enrich_fraction=enrich)
    lines = "".join(json.dumps(record) + "\n" for record in batch_records(task, batch))
    if output is None:
        sys.stdout.write(lines)
    else:
        output.write_text(lines)


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
        if not file.is_file():
            raise ArithlensError(f"no such file {file}")
        texts += [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if not texts:
        raise ArithlensError("give questions as arguments or --file F (e.g. arithlens predict 12345+67890=)")
    for line in predict_answers(load_model(model), texts):
        print(line)


@app.command("eval")
def evaluate(
    model: ModelOpt = "add_d5_l1",
    count: Annotated[int, typer.Option("--count", help="Questions to test.")] = 100_000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the test questions.")] = 12345,
    question_set: Annotated[str, typer.Option(
        "--set", help="Question set: random, or a built set such as cascade_depth_3, use_sum9, published_hard.",
    )] = "random",
    no_progress: NoProgress = False,
) -> None:
    """Accuracy overall, by category, by cascade depth and by answer digit, in nines."""
    from arithlens.analysis.accuracy import accuracy_table, evaluate as evaluate_batch, random_accuracy
    from arithlens.analysis.question_sets import make_question_set
    from arithlens.model import model_config_of
    from arithlens.runs import load_model
    from arithlens.task import AdditionTask

    if count < 1:
        raise ArithlensError(f"--count must be at least 1, got {count}")
    loaded = load_model(model)
    if question_set == "random":
        result = random_accuracy(loaded, count, seed=seed, progress=not no_progress)
    else:
        questions = make_question_set(AdditionTask(model_config_of(loaded).n_digits), question_set, count, seed)
        result = evaluate_batch(loaded, questions.batch, progress=not no_progress)
    table = Table(title=f"accuracy of {model} on {count:,} {question_set} questions (seed {seed})")
    for column in ("group", "questions", "correct", "accuracy", "failures", "nines"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for row in accuracy_table(result).itertuples():
        if row.questions == 0:  # e.g. cascade depths a built set never has
            continue
        table.add_row(f"{row.group_kind}: {row.group}", f"{row.questions:,}", f"{row.correct:,}",
                      f"{100 * row.accuracy:.4f}%", f"{row.failures:,}", f"{row.nines:.2f}")
    Console(width=max(console.width, 110)).print(table)


@app.command()
def models() -> None:
    """List the bundled trained models with their size, steps, loss and accuracy."""
    from arithlens.runs import bundled_models_dir, bundled_model_names, load_run

    names = bundled_model_names()
    if not names:
        console.print("no bundled models are installed")
        return
    table = Table(title="bundled models")
    for column in ("name", "layers", "d_model", "heads", "size", "steps", "loss", "accuracy"):
        table.add_column(column, no_wrap=True)
    for name in names:
        run = load_run(bundled_models_dir() / name)
        card = run.info.get("card", {})
        model_cfg = run.config.model
        size_mib = (run.path / "model.safetensors").stat().st_size / 2**20
        accuracy = card.get("accuracy")
        table.add_row(name, str(model_cfg.n_layers), str(model_cfg.d_model), str(model_cfg.n_heads),
                      f"{size_mib:.1f} MiB", f"{run.info.get('steps_done', 0):,}",
                      f"{card.get('final_loss', float('nan')):.3g}",
                      f"{100 * accuracy:.2f}% of {card.get('accuracy_questions', 0):,}" if accuracy is not None else "")
    # Wide enough that names are never cut short, also when piped (rich assumes 80 columns then).
    Console(width=max(console.width, 110)).print(table)


def main() -> None:
    """Entry point: run the app, turning user mistakes into one line and exit code 2."""
    try:
        app(standalone_mode=False)
    except ArithlensError as error:
        err_console.print(f"error: {error}", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        err_console.print("interrupted (a training run keeps its last step: continue it with --resume DIR)",
                          markup=False, highlight=False)
        raise SystemExit(130) from None
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
        raise

if __name__ == "__main__":
    main()
