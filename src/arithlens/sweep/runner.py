"""`run_sweep`: every cell of a grid trained, analysed and reported in SWEEP_DIR/<cell>/, then compared.

SWEEP_DIR/sweep.json records the grid, the fixed flags and each cell's status,
attempts and error, rewritten atomically after every change, so it always says
which cells finished. A re-run with the same flags skips finished cells (trained
to the end, analysed, reported) and carries on with the rest; a re-run whose
cells would be trained differently (say another --steps) is refused before
anything is touched, so a finished cell is never lost.

A failed cell is tried once more (not a diverged one: the same seed diverges
again), then recorded with its error; the other cells go on. Ctrl-C cancels
the outstanding cells (training saves its current step), shuts Ray down,
records which cells finished and stops with exit code 130.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from arithlens import __version__
from arithlens.config import RunConfig
from arithlens.errors import ArithlensError, RunFolderError
from arithlens.folders import LOCK_FILE, run_folder_lock
from arithlens.runs import CONFIG_FILE, read_config, write_json
from arithlens.sweep import DEFAULT_COUNT
from arithlens.sweep.backends import INSTALL_HINT, Job, SequentialBackend, choose_backend
from arithlens.sweep.cell import is_finished
from arithlens.sweep.grid import Cell, GridValue, SweepPlan, plan_sweep
from arithlens.sweep.page import SWEEP_FILE, read_record, write_comparison

ATTEMPTS = 2  # a failed cell is tried once more


@dataclass
class SweepResult:
    """What a sweep did; `exit_code` is 0, 1 (some cell failed) or 130 (interrupted)."""

    path: Path
    backend: str
    cells: list[str]
    skipped: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False
    report: Path | None = None

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else 1 if self.failed else 0

    def interrupted_message(self) -> str:
        done = len(self.finished) + len(self.skipped)
        return (f"interrupted: {done} of {len(self.cells)} cells are finished (see {self.path / SWEEP_FILE}); "
                f"run the same command again to continue")

    def summary_lines(self) -> list[str]:
        lines = [f"sweep of {len(self.cells)} cells on {self.backend}: {len(self.finished)} finished now, "
                 f"{len(self.skipped)} already finished, {len(self.failed)} failed"]
        lines += [f"  failed {name}: {error}" for name, error in self.failed.items()]
        if self.report is not None:
            lines.append(f"comparison {self.path / 'comparison.parquet'}; report {self.report}")
        return lines


def _differences(mine: dict[str, Any], theirs: dict[str, Any], prefix: str = "") -> list[str]:
    """ "train.steps 300 (here) vs 500 (on disk)" for every setting that differs between two config dicts."""
    found = []
    for key in sorted(set(mine) | set(theirs)):
        a, b = mine.get(key), theirs.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            found.append(f"{prefix}{key} {a!r} (asked now) vs {b!r} (on disk)")
    return found


def _refuse_changed(where: str, cell: Cell, stored: dict[str, Any]) -> None:
    try:
        same = RunConfig.from_dict(stored) == cell.config
    except (ArithlensError, TypeError):
        same = False
    if not same:
        changed = "; ".join(_differences(cell.config.to_dict(), stored)[:4]) or "unreadable config"
        raise RunFolderError(f"{where} holds cell {cell.name} trained with other settings ({changed}); "
                             f"sweep into another --out, or remove that cell's folder")


def check_sweep_folder(folder: Path, plan: SweepPlan) -> dict[str, Any] | None:
    """Refuse a folder that is not this sweep's (nothing is written); its earlier sweep.json, if any."""
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"{folder} exists and is not a folder; choose another --out")
    record = None
    if (folder / SWEEP_FILE).exists():
        record = read_record(folder)
        cells = {cell.name: cell for cell in plan.cells}
        for stored in record.get("cells", []):
            if stored.get("name") in cells and "config" in stored:
                _refuse_changed(str(folder / SWEEP_FILE), cells[stored["name"]], stored["config"])
    elif folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir()):
        raise RunFolderError(f"{folder} is not empty and holds no {SWEEP_FILE}: it is not an arithlens sweep folder; "
                             f"choose another --out")
    for cell in plan.cells:
        cell_folder = folder / cell.name
        if (cell_folder / CONFIG_FILE).is_file():
            config, _ = read_config(cell_folder)
            _refuse_changed(str(cell_folder), cell, config.to_dict())
        elif cell_folder.exists() and any(p.name != LOCK_FILE for p in cell_folder.iterdir()):
            raise RunFolderError(f"{cell_folder} is in the way of cell {cell.name}: it is not an arithlens run folder")
    return record


def _sweep_command(plan: SweepPlan, folder: Path, count: int, address: str | None) -> str:
    """The `arithlens sweep` line that continues this sweep (recorded in sweep.json and shown in the report)."""
    parts = [*plan.flag_arguments(), "--count", str(count), *(["--address", address] if address else []),
             "--out", str(folder)]
    return "arithlens sweep " + " ".join(shlex.quote(part) for part in parts)


def _say(console: Console, line: str) -> None:
    # Plain text on one line: a cell's error may hold [brackets] that rich would read as markup.
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _new_record(plan: SweepPlan, folder: Path, count: int, backend: str, command: str,
                before: dict[str, Any] | None) -> dict[str, Any]:
    cells = []
    for cell in plan.cells:
        finished = is_finished(folder / cell.name)
        cells.append({"name": cell.name, "folder": cell.name, "values": plan.typed_values(cell),
                      "status": "complete" if finished else "pending", "attempts": 0, "error": None,
                      "seconds": None, "command": f"{cell.command} --out {shlex.quote(str(folder / cell.name))}",
                      "config": cell.config.to_dict()})
    return {"arithlens_version": __version__, "command": command, "backend": backend, "count": count,
            "created": (before or {}).get("created", _now()), "updated": _now(), "status": "running",
            "grid": plan.typed_axes(), "fixed": plan.fixed, "cells": cells}


class _Book:
    """sweep.json in memory: every change is written through at once."""

    def __init__(self, folder: Path, record: dict[str, Any]) -> None:
        self.folder = folder
        self.record = record
        self.cells = {cell["name"]: cell for cell in record["cells"]}

    def update(self, name: str | None = None, **changes: Any) -> None:
        if name is None:
            self.record.update(changes)
        else:
            self.cells[name].update(changes)
        self.record["updated"] = _now()
        write_json(self.folder / SWEEP_FILE, self.record)


@contextmanager
def _bar(enabled: bool, console: Console, total: int, done: int) -> Iterator[Any]:
    """One bar for the whole sweep (cells done of all); None when progress is off."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("cells  {task.fields[failed]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("sweep", total=total, completed=done, failed="")
        yield lambda failed: progress.update(task, advance=1, failed=f"({failed} failed)" if failed else "")


def run_sweep(grid: Mapping[str, GridValue] | SweepPlan, out: str | Path, *, count: int = DEFAULT_COUNT,
              address: str | None = None, use_ray: bool | None = None, progress: bool = True,
              console: Console | None = None) -> SweepResult:
    """Train, analyse and report every cell of `grid` (see `plan_sweep`, or its plan) into `out`, then compare them.

    Runs on a local Ray instance when Ray is installed (`use_ray=False` forces
    the in-process fallback), or on the cluster at `address`. Every cell is
    validated, and the folder checked, before anything runs.
    """
    from arithlens.analysis.runner import check_analysis_settings

    plan = grid if isinstance(grid, SweepPlan) else plan_sweep(grid)
    check_analysis_settings(count=count)
    folder = Path(out).resolve()  # absolute: Ray workers do not share this process's working folder
    before = check_sweep_folder(folder, plan)
    backend = choose_backend(address, use_ray)
    console = console or Console()
    if isinstance(backend, SequentialBackend) and use_ray is None:
        _say(console, f"note: Ray is not installed, so the cells run one after another in this process; "
                 f"to run one per core: {INSTALL_HINT}")
    command = _sweep_command(plan, folder, count, address)
    needed = any(not is_finished(folder / cell.name) for cell in plan.cells)
    # Ray starts (only if a cell needs it) before anything is written, so a cluster that refuses us leaves no
    # folder behind; it shuts down on the way out, Ctrl-C or not.
    with backend if needed else nullcontext(), run_folder_lock(folder):
        book = _Book(folder, _new_record(plan, folder, count, backend.description, command, before))
        book.update()
        result = SweepResult(folder, backend.description, [cell.name for cell in plan.cells],
                             skipped=[n for n, c in book.cells.items() if c["status"] == "complete"])
        pending = [cell for cell in plan.cells if cell.name not in result.skipped]
        if pending:
            with _bar(progress, console, len(plan.cells), len(result.skipped)) as advance:
                _run_cells(pending, backend, book, result, count, console, advance)
        book.update(status="interrupted" if result.interrupted else "failed" if result.failed else "complete")
        if not result.interrupted:
            result.report = write_comparison(folder)
    return result


def _run_cells(pending: list[Cell], backend: Any, book: _Book, result: SweepResult, count: int, console: Console,
               advance: Any) -> None:
    """Submit every pending cell, collect them as they finish, retry a failure once; Ctrl-C stops them all."""
    jobs = {cell.name: Job(cell.name, str(book.folder / cell.name), cell.config.to_dict(), count,
                           book.cells[cell.name]["command"]) for cell in pending}
    try:
        for name, job in jobs.items():
            backend.submit(job)
            book.update(name, status="running", attempts=1, error=None)
        while backend.outstanding():
            job, outcome = backend.next_done()
            attempts = book.cells[job.name]["attempts"]
            if outcome["status"] == "complete":
                result.finished.append(job.name)
                book.update(job.name, status="complete", error=None, seconds=outcome["seconds"])
                _say(console, f"  {job.name}: finished in {outcome['seconds']:.0f} s")
            elif outcome.get("retry") and attempts < ATTEMPTS:
                _say(console, f"  {job.name} failed ({outcome['error']}); trying it once more")
                book.update(job.name, attempts=attempts + 1, error=outcome["error"])
                backend.submit(job)
                continue
            else:
                result.failed[job.name] = outcome["error"]
                book.update(job.name, status="failed", error=outcome["error"], seconds=outcome["seconds"])
            if advance is not None:
                advance(len(result.failed))
    except KeyboardInterrupt:
        backend.cancel()
        result.interrupted = True
        for name, cell in book.cells.items():
            if cell["status"] == "running":  # the folder says how far it got; a re-run carries on from there
                folder = book.folder / name
                done = is_finished(folder)
                if done:
                    result.finished.append(name)
                started = (folder / CONFIG_FILE).is_file()
                book.update(name, status="complete" if done else "interrupted" if started else "pending")
