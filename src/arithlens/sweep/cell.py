"""One cell of a sweep, start to finish: train (or resume), analyse, report, in the cell's run folder.

`run_cell` is what a Ray task runs (and what the sequential fallback calls in
process); it uses the Python API (`train`, `resume`, `analyze_run`,
`build_report`), never the CLI. It does only what the folder still lacks, so
a sweep that was stopped carries on where each cell was: a finished training is
kept, an interrupted one is resumed bit-identically from its train state, and a
missing analysis or report is (re)made.

It returns a plain dict (status, error, seconds) rather than raising, so that a
failure crosses a process boundary as a message, whatever the exception was.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from arithlens.errors import ArithlensError, TrainingDiverged
from arithlens.runs import ANALYSIS_DIR, CHECKPOINT_DIR, CONFIG_FILE, REPORT_FILE, TRAIN_STATE_FILE

SUMMARY_FILE = "summary.json"  # analysis.runner.SUMMARY_FILE, without importing the analysis stack here


def run_status(folder: Path) -> str | None:
    """The status config.json records for a run folder ("complete", "interrupted", ...), None if it has none."""
    try:
        return json.loads((folder / CONFIG_FILE).read_text()).get("run", {}).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def is_finished(folder: Path) -> bool:
    """Trained to the end, analysed and reported: a re-run of the sweep leaves it alone."""
    return (run_status(folder) == "complete" and (folder / ANALYSIS_DIR / SUMMARY_FILE).is_file()
            and (folder / REPORT_FILE).is_file())


def run_cell(folder: str, config: dict[str, Any], count: int, command: str,
             threads: int | None = None) -> dict[str, Any]:
    """Train, analyse and report one cell into `folder`; {"status": "complete" | "failed", "error", "retry", "seconds"}.

    `threads` sets torch's thread count first (Ray runs one single-threaded
    cell per core). A TrainingDiverged failure is marked not worth retrying:
    the same seed diverges the same way again.
    """
    import torch

    from arithlens.analysis.runner import analyze_run
    from arithlens.config import RunConfig
    from arithlens.report import build_report
    from arithlens.training import resume, train

    started = time.perf_counter()
    if threads is not None:
        torch.set_num_threads(threads)
    path = Path(folder)
    try:
        status = run_status(path)
        if status != "complete":
            if status is not None and (path / CHECKPOINT_DIR / TRAIN_STATE_FILE).is_file():
                resume(path, progress=False)
            else:  # nothing saved yet (or no train state): start the cell's own folder afresh
                train(RunConfig.from_dict(config), path, force=status is not None, progress=False, command=command)
        if not (path / ANALYSIS_DIR / SUMMARY_FILE).is_file():
            analyze_run(path, count=count, progress=False)
        if not (path / REPORT_FILE).is_file():
            build_report(path)
    except TrainingDiverged as error:
        return _failed(error, started, retry=False)
    except Exception as error:  # any failure is this cell's alone; the sweep goes on
        return _failed(error, started, retry=True)
    return {"status": "complete", "error": None, "retry": False, "seconds": round(time.perf_counter() - started, 2)}


def _failed(error: BaseException, started: float, retry: bool) -> dict[str, Any]:
    message = str(error) if isinstance(error, ArithlensError) else f"{type(error).__name__}: {error}"
    return {"status": "failed", "error": message, "retry": retry, "seconds": round(time.perf_counter() - started, 2)}
