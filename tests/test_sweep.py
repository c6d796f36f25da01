"""`arithlens sweep`: a grid of tiny runs on local Ray, on a separate Ray head, and in-process without Ray.

Each sweep trains 3-digit models (d_model 32) for 50 steps and analyses them
on a handful of questions, so a cell takes seconds; most of a Ray test's time
is Ray starting. The tests that start Ray are marked slow.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from rich.console import Console

from arithlens.errors import ArithlensError
from arithlens.sweep import backends
from arithlens.sweep.compare import CellAnalysis, cell_groups, map_components, universality
from arithlens.sweep.page import write_comparison
from arithlens.sweep.runner import run_sweep
from chromium import find_chromium, load_page
from test_cli import arithlens, assert_user_error

TINY = ["--digits", "3", "--d-model", "32", "--d-mlp", "64", "--batch-size", "16", "--steps", "50",
        "--checkpoint-every", "25", "--recipe", "fast"]
TINY_GRID = {"digits": 3, "d_model": 32, "d_mlp": 64, "batch_size": 16, "steps": 50, "checkpoint_every": 25,
             "recipe": "fast"}
COUNT = ["--count", "40", "--no-progress"]
NO_RAY = "Ray is not installed (pip install 'arithlens[sweep]')"
ray_missing = pytest.mark.skipif(backends.load_ray() is None, reason=NO_RAY)


def read_record(folder: Path) -> dict:
    return json.loads((folder / "sweep.json").read_text())


def assert_cells_finished(folder: Path, names: list[str]) -> None:
    record = read_record(folder)
    assert [c["name"] for c in record["cells"]] == names
    assert all(c["status"] == "complete" for c in record["cells"]), record["cells"]
    for name in names:
        run = json.loads((folder / name / "config.json").read_text())
        assert run["run"]["status"] == "complete"
        assert (folder / name / "analysis" / "summary.json").is_file()
        assert (folder / name / "report.html").is_file()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if backends.load_ray() is None:
        pytest.skip(NO_RAY)
    out = tmp_path_factory.mktemp("sweep") / "seeds"
    done = arithlens("sweep", "--seed", "1,2", *TINY, *COUNT, "--out", str(out))
    assert done.returncode == 0, (done.stdout, done.stderr)
    return out


@pytest.mark.slow
def test_local_ray_sweep_writes_cells_comparison_and_report(ray_sweep: Path) -> None:
    assert_cells_finished(ray_sweep, ["seed-1", "seed-2"])
    record = read_record(ray_sweep)
    assert record["grid"] == {"seed": [1, 2]} and record["fixed"]["steps"] == "50"
    assert "local Ray" in record["backend"]
    assert json.loads((ray_sweep / "seed-1" / "config.json").read_text())["run"]["threads"] == 1
    table = pd.read_parquet(ray_sweep / "comparison.parquet")
    assert table["cell"].tolist() == ["seed-1", "seed-2"] and table["seed"].tolist() == [1, 2]
    for column in ("accuracy", "nines", "accuracy_depth_0", "accuracy_A3", "phases_A0", "map_claims"):
        assert column in table.columns
    assert set(pd.read_parquet(ray_sweep / "universality.parquet").columns) >= {
        "answer_digit", "role", "position", "attends_to", "cells_with_it", "share"}


def add_findings(folder: Path) -> None:
    """Give a copied sweep's tiny cells (50 steps learn no algorithm) phase changes, circuit scores and a map."""
    for index, name in enumerate(["seed-1", "seed-2"]):
        analysis = folder / name / "analysis"
        summary = json.loads((analysis / "summary.json").read_text())
        summary["circuit"] = {"questions": 40, "reference": "text is left out", "answer_digits": {
            "A0": {"nodes": 2 + index, "faithfulness": 0.9 - 0.1 * index}, "all": {"faithfulness": 0.8}}}
        summary["answer_digits"]["A0"]["phase_changes"] = [
            {"start_step": 10, "steepest_step": 20 + index, "end_step": 30, "log10_drop": 1.0}]
        (analysis / "summary.json").write_text(json.dumps(summary))
        rows = [{"answer_digit": "A1", "role": "BaseAdd", "node": f"P9L0H{1 + 2 * index}", "kind": "head",
                 "position": 9, "layer": 0, "head": 1 + 2 * index, "attends_to": "D1 (0.5), D'1 (0.4)"}]
        if index == 0:
            rows.append({"answer_digit": "A1", "role": "MakeCarry1", "node": "P9L0M", "kind": "mlp", "position": 9,
                         "layer": 0, "head": -1, "attends_to": ""})
        pd.DataFrame(rows).to_parquet(analysis / "algorithm_map.parquet", index=False)


@pytest.mark.slow
def test_sweep_report_draws_every_figure_in_chromium(ray_sweep: Path, tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); cannot render the report")
    folder = tmp_path / "copy"
    shutil.copytree(ray_sweep, folder, ignore=shutil.ignore_patterns("checkpoints"))
    add_findings(folder)
    page_path = write_comparison(folder)
    page = page_path.read_text()
    assert 'src="http' not in page
    assert "Shared by all 2 cells: A1 BaseAdd: head at P9 reading D1, D&#x27;1" in page
    assert "Varies across all 2 cells: A1 MakeCarry1: MLP at P9 (1 of 2)" in page
    result = load_page(page_path, budget_ms=60000)
    assert result.errors == []
    declared = int(re.search(r'name="arithlens-figure-count" content="(\d+)"', page).group(1))
    assert declared == 5  # accuracy, cascade depth, phase changes, circuit scores, agreement
    assert result.drawn_figures == declared and 'class="figure-error"' not in result.dom


@pytest.mark.slow
def test_rerun_skips_finished_cells(ray_sweep: Path) -> None:
    weights = ray_sweep / "seed-1" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    done = arithlens("sweep", "--seed", "1,2", *TINY, *COUNT, "--out", str(ray_sweep))
    assert done.returncode == 0, done.stderr
    assert "0 finished now, 2 already finished" in " ".join(done.stdout.split())
    assert weights.stat().st_mtime_ns == before


@pytest.mark.slow
@ray_missing
def test_sweep_on_a_separate_ray_head(tmp_path: Path) -> None:
    port = free_port()
    ray_bin = Path(sys.executable).with_name("ray")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    # --block keeps the head in this one process: ending it stops the cluster it started, and nothing else
    # (`ray stop` would stop every Ray instance of this user on the machine).
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
                             "--include-dashboard=false", "--disable-usage-stats"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
                time.sleep(0.5)
        out = tmp_path / "cluster"
        done = subprocess.run([sys.executable, "-m", "arithlens.cli", "sweep", "--seed", "3,4", *TINY, *COUNT,
                               "--address", f"127.0.0.1:{port}", "--out", str(out)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert_cells_finished(out, ["seed-3", "seed-4"])
        assert f"127.0.0.1:{port}" in read_record(out)["backend"]
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)


@pytest.mark.parametrize("args, fragment", [
    (["--seed", "1,2", "--colour", "red,blue"], "--colour"),  # not a training flag
    (["--resume", "a,b", "--seed", "1,2"], "--resume"),  # a training flag, but not one a sweep can vary
    (["--seed", "1", "--steps", "50"], "at least one axis"),
    (["--seed", "1,x"], "--seed"),
    (["--lr", "0.001,1e-3"], "same run"),
    (["--d-model", "32,30", "--heads", "4"], "divisible"),
])
def test_bad_grids_are_one_error_line(args: list[str], fragment: str, tmp_path: Path) -> None:
    assert_user_error(arithlens("sweep", *args, "--out", str(tmp_path / "s")), fragment)
    assert not (tmp_path / "s").exists()


@ray_missing
def test_unreachable_address_fails_fast(tmp_path: Path) -> None:
    done = arithlens("sweep", "--seed", "1,2", *TINY, "--address", f"127.0.0.1:{free_port()}",
                     "--out", str(tmp_path / "s"))
    assert_user_error(done, "cannot reach a Ray cluster")
    assert not (tmp_path / "s").exists()


def test_sequential_fallback_retries_records_failures_and_continues(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails, as without the extra
    out = tmp_path / "fallback"
    real = backends.run_cell
    calls: list[str] = []

    def flaky(folder: str, *args: object, **kwargs: object) -> dict:
        calls.append(Path(folder).name)
        if Path(folder).name == "seed-2":
            return {"status": "failed", "error": "RuntimeError: injected", "retry": True, "seconds": 0.0}
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(backends, "run_cell", flaky)
    text = io.StringIO()
    result = run_sweep({**TINY_GRID, "seed": "1,2"}, out, count=40, progress=False, console=Console(file=text))
    assert "pip install 'arithlens[sweep]'" in text.getvalue()
    assert result.exit_code == 1 and result.failed == {"seed-2": "RuntimeError: injected"}
    assert calls == ["seed-1", "seed-2", "seed-2"]  # tried once more, then recorded
    cells = {c["name"]: c for c in read_record(out)["cells"]}
    assert cells["seed-2"]["status"] == "failed" and cells["seed-2"]["attempts"] == 2
    assert cells["seed-2"]["error"] == "RuntimeError: injected"
    assert pd.read_parquet(out / "comparison.parquet")["cell"].tolist() == ["seed-1"]
    assert json.loads((out / "seed-1" / "config.json").read_text())["run"]["threads"] == torch.get_num_threads()

    monkeypatch.setattr(backends, "run_cell", real)
    again = run_sweep({**TINY_GRID, "seed": [1, 2]}, out, count=40, progress=False, console=Console(file=text))
    assert again.exit_code == 0 and again.skipped == ["seed-1"] and again.finished == ["seed-2"]
    assert_cells_finished(out, ["seed-1", "seed-2"])

    # A re-run that would train the cells differently is refused, and every finished cell stays.
    with pytest.raises(ArithlensError, match="other settings"):
        run_sweep({**TINY_GRID, "steps": 60, "seed": "1,2"}, out, count=40, progress=False, console=Console(file=text))
    assert_cells_finished(out, ["seed-1", "seed-2"])


def test_universality_matches_heads_by_role_position_and_reads_not_index() -> None:
    def cell(name: str, seed: int, heads: list[tuple[str, int, str]]) -> CellAnalysis:
        rows = [{"answer_digit": "A1", "role": role, "node": f"P8L0H{head}", "kind": "head", "position": 8,
                 "attends_to": reads} for role, head, reads in heads]
        return CellAnalysis(name, {"seed": seed}, {}, algorithm_map=pd.DataFrame(rows))

    cells = [cell("seed-1", 1, [("BaseAdd", 1, "D1 (0.51), D'1 (0.40)"), ("MakeCarry1", 0, "D0 (0.5)")]),
             cell("seed-2", 2, [("BaseAdd", 3, "D'1 (0.47), D1 (0.45)")])]
    table = universality(map_components(cells), cell_groups(cells, ["seed"]))
    shared = table[table["role"] == "BaseAdd"].iloc[0]
    assert (shared["attends_to"], shared["cells_with_it"], shared["share"]) == ("D1, D'1", 2, 1.0)
    varies = table[table["role"] == "MakeCarry1"].iloc[0]
    assert (varies["cells_with_it"], varies["in_cells"]) == (1, "seed-1")
