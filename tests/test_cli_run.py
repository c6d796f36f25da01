"""The main job end to end: `arithlens run` trains, analyses and writes a report that Chromium draws."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from chromium import find_chromium, load_page
from test_cli import TINY_FLAGS, arithlens, assert_user_error


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("main_job") / "run"
    done = arithlens("run", *TINY_FLAGS, "--recipe", "fast", "--steps", "300", "--checkpoint-every", "100",
                     "--eval-every", "100", "--eval-count", "500", "--count", "300", "--out", str(out), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "report" in done.stdout and "accuracy" in done.stdout and "final loss" in done.stdout
    return out


@pytest.mark.slow
def test_run_writes_every_artefact(finished_run: Path) -> None:
    for name in ("config.json", "model.safetensors", "metrics.parquet", "report.html", "analysis/summary.json",
                 "analysis/node_ablation.parquet", "analysis/algorithm_map.parquet"):
        assert (finished_run / name).is_file(), name
    summary = json.loads((finished_run / "analysis" / "summary.json").read_text())
    assert set(summary["answer_digits"]) == {"A2", "A1", "A0"}
    config = json.loads((finished_run / "config.json").read_text())
    assert config["train"]["recipe"] == "fast" and config["train"]["schedule"] == "cosine"
    assert config["run"]["stop_reason"] == "steps" and 0 <= config["run"]["heldout_accuracy"] <= 1


@pytest.mark.slow
def test_report_of_the_main_job_draws_every_figure(finished_run: Path, tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh installs it)")
    page = load_page(finished_run / "report.html", screenshot=tmp_path / "shot.png")
    declared = int(re.search(r'<meta name="arithlens-figure-count" content="(\d+)">', page.dom).group(1))
    assert declared > 20
    assert page.drawn_figures == page.plotly_divs == declared
    # the --eval-every figure is drawn too: its title is in the SVG plotly made, not only in the embedded JSON
    assert re.search(r'class="gtitle"[^>]*>Held-out accuracy during training', page.dom)
    assert page.errors == []
    assert (tmp_path / "shot.png").stat().st_size > 10_000


@pytest.mark.slow
def test_report_and_eval_commands_on_the_run(finished_run: Path) -> None:
    (finished_run / "report.html").unlink()
    rebuilt = arithlens("report", str(finished_run))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (finished_run / "report.html").stat().st_size > 1_000_000  # plotly inlined
    evaluated = arithlens("eval", "--model", str(finished_run), "--count", "2000", "--no-progress")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "overall" in evaluated.stdout and "cascade_depth" in evaluated.stdout and "nines" in evaluated.stdout


def test_analyze_and_report_need_a_run_folder(tmp_path: Path) -> None:
    assert_user_error(arithlens("analyze", str(tmp_path / "missing")), "no run folder")
    assert_user_error(arithlens("report", str(tmp_path / "missing")), "no run folder")
    (tmp_path / "empty").mkdir()
    assert_user_error(arithlens("analyze", str(tmp_path / "empty")), "not a run folder")
    assert_user_error(arithlens("eval", "--model", str(tmp_path / "missing")), "no run folder")
    assert_user_error(arithlens("eval", "--count", "0"), "--count")
