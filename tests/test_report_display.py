"""What the report shows: position labels, the failure patterns, sub-task digit names and the checkpoint note.

One tiny untrained 5-digit run is analysed by the real `analyze_run` with small
counts (a few seconds); an untrained model answers almost everything wrong,
which gives the failure tables plenty of rows.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from arithlens.config import ModelConfig, RunConfig, TrainConfig
from arithlens.model import build_model
from arithlens.report import build_report
from arithlens.runs import run_config_dict, save_model, write_json
from test_plots import synthetic_metrics
from test_report import figure_specs

N_DIGITS = 5


def make_run(path: Path) -> Path:
    """A complete 5-digit run folder: tiny untrained model, synthetic metrics, no checkpoints."""
    config = RunConfig(ModelConfig(n_digits=N_DIGITS, d_model=32, d_mlp=64, n_heads=4), TrainConfig(steps=80, seed=3))
    path.mkdir(parents=True)
    save_model(build_model(config.model), path / "model.safetensors")
    synthetic_metrics(N_DIGITS, 80).to_parquet(path / "metrics.parquet", index=False)
    write_json(path / "config.json", run_config_dict(config, {"command": "arithlens run --digits 5", "steps_done": 80,
                                                              "status": "complete"}))
    return path


@pytest.fixture(scope="module")
def analysed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from arithlens.analysis.runner import analyze_run

    run = make_run(tmp_path_factory.mktemp("display") / "run")
    analyze_run(run, count=128, progress=False, sample_count=64, set_count=8, patch_count=4, checkpoint_count=32)
    return run


@pytest.fixture(scope="module")
def page(analysed_run: Path) -> str:
    return build_report(analysed_run).read_text()


def section(page: str, key: str) -> str:
    start = page.index(f'<section id="{key}">')
    return page[start : page.index("</section>", start)]


def test_report_labels_positions_by_what_they_predict(page: str) -> None:
    assert "P14 (→A2)" in page and "P11 (→A5)" in page and "P2 (D2)" in page
    bare_tokens = {"=", "+", *(f"D{d}" for d in range(N_DIGITS)), *(f"D'{d}" for d in range(N_DIGITS))}
    labelled = 0
    for spec in figure_specs(page):
        for trace in spec["data"]:
            if trace.get("type") != "heatmap":
                continue
            labels = {str(v) for v in [*trace.get("x", []), *trace.get("y", [])]}
            assert not labels & bare_tokens, spec["layout"]["title"]["text"]
            labelled += any("(→A" in label for label in labels)
    assert labelled >= 5  # attention, position and node ablation, head sources, patching
    # the useful-node table names its positions the same way
    assert re.search(r"<td>P\d+ \(→A\d\)</td>", section(page, "ablation"))


def test_failure_patterns_are_written_summarised_and_shown(analysed_run: Path, page: str) -> None:
    from arithlens.analysis.accuracy import failure_pattern_summary

    table = pd.read_parquet(analysed_run / "analysis" / "failure_patterns.parquet")
    assert len(table) and table.answer_digit.iloc[0] == "all"
    summary = json.loads((analysed_run / "analysis" / "summary.json").read_text())
    patterns = summary["failure_patterns"]
    assert patterns["summary"] == failure_pattern_summary(table)
    assert 0 < len(patterns["top"]) <= 8 and set(patterns["top"][0]) == set(table.columns)
    assert summary["files"]["failure_patterns.parquet"] == list(table.columns)
    failures = pd.read_parquet(analysed_run / "analysis" / "failures.parquet")
    assert {"make_sum9", "make_carry1", "pairs_below"} <= set(failures.columns)
    accuracy = section(page, "accuracy")
    assert "<h3>Failure patterns</h3>" in accuracy
    assert patterns["summary"].replace("%", "") in re.sub(r"<[^>]+>", "", accuracy).replace("%", "")
    assert "<th>base_rate</th>" in accuracy and "<th>pairs_below</th>" in accuracy


def test_an_analysis_without_failure_patterns_still_reports(analysed_run: Path, tmp_path: Path) -> None:
    old = shutil.copytree(analysed_run, tmp_path / "old")
    (old / "analysis" / "failure_patterns.parquet").unlink()
    page = build_report(old).read_text()
    accuracy = section(page, "accuracy")
    assert "<h3>Failures</h3>" in accuracy and "<h3>Failure patterns</h3>" not in accuracy
    assert "no analysis table <code>failure_patterns</code>" in page


def test_subtask_changes_name_answer_digits(page: str) -> None:
    dynamics = section(page, "dynamics")
    if "Sub-task losses across each phase" in dynamics and "<th>digit</th>" in dynamics:
        cells = re.findall(r"<td>([AD]\d)</td>", dynamics)
        assert cells and all(cell.startswith("A") for cell in cells)


def test_subtask_changes_table_is_relabelled() -> None:
    from arithlens.report import subtask_changes_display

    frame = pd.DataFrame({"answer_digit": ["A2", "A2"], "column": ["use_sum9_loss_d1", "base_add_only_loss"],
                          "digit": ["D1", "all"]})
    assert subtask_changes_display(frame)["digit"].tolist() == ["A1", "all"]


def test_dynamics_says_plainly_when_a_run_has_no_checkpoints(page: str) -> None:
    dynamics = section(page, "dynamics")
    assert "no checkpoints" in dynamics and "arithlens train" in dynamics


def test_bundled_model_report_explains_missing_checkpoints(tmp_path: Path) -> None:
    from arithlens.report import checkpoint_note
    from arithlens.runs import load_run

    run = load_run("add_d5_l1")
    assert run.checkpoint_steps() == []
    note = checkpoint_note(run)
    assert "Bundled models ship without checkpoints" in note and "arithlens train" in note
