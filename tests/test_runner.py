"""analyze_run on a tiny hand-built run folder: every file written with its documented columns, and read back."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arithlens import ArithlensError, ModelConfig, RunConfig, TrainConfig, __version__, build_model
from arithlens.analysis import runner
from arithlens.analysis.runner import analyze_run, load_analysis
from arithlens.metrics import metric_names
from arithlens.runs import save_model, write_json

N = 3
SMALL = dict(count=200, sample_count=80, set_count=30, patch_count=4, checkpoint_count=80, progress=False)


def make_run(folder: Path, *, with_metrics: bool = True) -> Path:
    """config.json, model.safetensors, checkpoints and (optionally) metrics with a phase change in A3 and A0."""
    model_config = ModelConfig(n_digits=N, d_model=32, d_mlp=64, n_heads=4)
    config = RunConfig(model_config, TrainConfig(steps=60, checkpoint_every=20))
    (folder / "checkpoints").mkdir(parents=True)
    for step, seed in ((20, 1), (40, 2)):
        save_model(build_model(ModelConfig(**{**model_config.to_dict(), "seed": seed})),
                   folder / "checkpoints" / f"step_{step:05d}.safetensors")
    save_model(build_model(ModelConfig(**{**model_config.to_dict(), "seed": 3})), folder / "model.safetensors")
    write_json(folder / "config.json", {"arithlens_version": __version__, **config.to_dict(),
                                        "run": {"status": "complete", "steps_done": 60}})
    if with_metrics:
        steps = np.arange(1, 61)
        rng = np.random.default_rng(0)
        metrics = pd.DataFrame({"step": steps})
        for name in metric_names(N, finite=False):
            metrics[name] = 10 ** rng.normal(0, 0.01, len(steps))
        metrics["loss_A3"] = 10 ** (0.3 - 2 / (1 + np.exp(-(steps - 15) / 2.0)))
        metrics["loss_A0"] = 10 ** (0.3 - 2 / (1 + np.exp(-(steps - 45) / 2.0)))
        metrics.to_parquet(folder / "metrics.parquet")
    return folder


def documented_columns() -> dict[str, list[str]]:
    """File -> columns as the runner's module docstring lists them."""
    text = " ".join(runner.__doc__.split())
    found = {}
    for name, columns in re.findall(r"- (\w+\.parquet): [^\[]*\[([^\]]*)\]", text):
        found[name] = [c.strip() for c in columns.split(",")]
    return found


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> tuple[Path, dict[str, pd.DataFrame]]:
    folder = make_run(tmp_path_factory.mktemp("runs") / "run")
    return folder, analyze_run(folder, **SMALL)


@pytest.mark.slow  # analyze_run takes several seconds even on a tiny model
def test_every_file_is_written_with_its_documented_columns(analysed):
    folder, tables = analysed
    written = sorted(p.name for p in (folder / "analysis").iterdir())
    documented = documented_columns()
    assert len(documented) == 24  # edges.parquet joined the 23 with the path-patching stage
    assert written == sorted([*documented, "summary.json"])
    for name, columns in documented.items():
        frame = pd.read_parquet(folder / "analysis" / name)
        assert list(frame.columns) == columns, name
        assert list(tables[name.removesuffix(".parquet")].columns) == columns
    summary = json.loads((folder / "analysis" / "summary.json").read_text())
    assert summary["files"] == documented


@pytest.mark.slow  # analyze_run takes several seconds even on a tiny model
def test_tables_hold_the_analyses(analysed):
    _, tables = analysed
    accuracy = tables["accuracy"]
    assert accuracy.loc[(accuracy["source"] == "random") & (accuracy["group_kind"] == "overall"), "questions"].item() == 200
    assert {"cascade_depth_2", "published_hard", "base_add"} <= set(accuracy["source"])
    assert set(tables["attention"]["category"]) == {"all", "BaseAdd", "UseCarry1", "UseSum9"}
    assert tables["logit_lens"]["questions"].max() == 80  # the shared sample
    assert set(tables["patching"]["pairs"]) == {4}
    assert set(tables["pca"]["answer_digit"]) == {"A3", "A2", "A1"}
    phases = tables["phases"]
    assert list(phases["answer_digit"]) == ["A3", "A0"]
    assert abs(phases["steepest_step"].iloc[0] - 15) <= 2 and abs(phases["steepest_step"].iloc[1] - 45) <= 2
    nodes = tables["checkpoint_nodes"]
    brackets = set(zip(nodes["answer_digit"], nodes["step_before"], nodes["step_after"]))
    assert brackets <= {("A3", 0, 20), ("A0", 40, 60)}
    assert set(tables["subtask_changes"]["answer_digit"]) == {"A3", "A0"}
    assert len(tables["node_ablation"]) > 0 and set(tables["algorithm_map"].columns) >= {"role", "evidence"}


@pytest.mark.slow  # analyze_run takes several seconds even on a tiny model
def test_summary_names_each_digits_nodes_and_roles(analysed):
    folder, tables = analysed
    summary = load_analysis(folder)["summary"]
    assert summary["model"]["n_digits"] == N and summary["settings"]["patch_count"] == 4
    assert summary["accuracy"]["questions"] == 200
    assert list(summary["answer_digits"]) == ["A3", "A2", "A1", "A0"]
    a0 = summary["answer_digits"]["A0"]
    assert a0["position"] == 10
    assert [p["start_step"] for p in a0["phase_changes"]] == tables["phases"].loc[
        tables["phases"]["answer_digit"] == "A0", "start_step"].tolist()
    useful = pd.read_parquet(folder / "analysis" / "useful_nodes.parquet")
    for digit, entry in summary["answer_digits"].items():
        expected = {row.node for row in useful.itertuples() if digit in row.impacts.split(",")}
        assert {node["node"] for node in entry["useful_nodes"]} == expected
        for node in entry["useful_nodes"]:
            assert node["roles"] and all(r in ("BaseAdd", "MakeCarry1", "MakeSum9", "UseSum9", "unassigned")
                                         for r in node["roles"])
    assert summary["cannot_do"] == tables["failed_cases"]["description"].tolist()
    clauses = summary["clauses"]  # the published algorithm for 3 digits, tested causally
    assert clauses["file"] == "published_1layer (3 digits)" and clauses["total"] == len(tables["clauses"]) == 14
    assert clauses["text"] == f"{clauses['passed']} of 14 clauses passed ({clauses['strong']} strong, {clauses['weak']} weak)"
    circuit = summary["circuit"]  # the map's scores per answer digit, on the sample of 200
    assert circuit["questions"] == 200 and list(circuit["answer_digits"]) == ["A3", "A2", "A1", "A0", "all"]
    assert set(circuit["answer_digits"]["all"]) >= {"faithfulness", "completeness", "cpr", "cmd", "redundant_nodes"}
    assert set(summary["seconds"]) >= {"accuracy", "ablation", "patching", "pca", "phases", "checkpoints"}


@pytest.mark.slow  # analyze_run takes several seconds even on a tiny model
def test_load_analysis_reads_everything_back(analysed):
    folder, tables = analysed
    loaded = load_analysis(folder)
    assert set(loaded) == {*tables, "summary"}
    for name, frame in tables.items():
        pd.testing.assert_frame_equal(loaded[name].reset_index(drop=True), frame.reset_index(drop=True),
                                      check_dtype=False)


@pytest.mark.slow  # analyze_run takes several seconds even on a tiny model
def test_a_run_without_metrics_still_gets_every_file(tmp_path):
    folder = make_run(tmp_path / "bare", with_metrics=False)
    tables = analyze_run(folder, **{**SMALL, "progress": True})
    assert tables["phases"].empty and tables["checkpoint_nodes"].empty and tables["subtask_changes"].empty
    assert len(list((folder / "analysis").glob("*.parquet"))) == 24


def test_bad_input(tmp_path):
    with pytest.raises(ArithlensError, match="run folder"):
        analyze_run(tmp_path / "missing", **SMALL)
    folder = make_run(tmp_path / "run")
    with pytest.raises(ArithlensError, match="count"):
        analyze_run(folder, **{**SMALL, "count": 0})
    with pytest.raises(ArithlensError, match="patch_count"):
        analyze_run(folder, **{**SMALL, "patch_count": -1})
    with pytest.raises(ArithlensError, match="arithlens analyze"):
        load_analysis(folder)
