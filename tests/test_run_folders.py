"""Run folders cannot be lost or mixed: --force safety, the writer lock, whole-folder analysis swaps, early checks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from arithlens.analysis.runner import analyze_run, load_analysis
from arithlens.errors import ArithlensError, RunFolderError
from arithlens.folders import (
    LOCK_FILE,
    SET_ASIDE_DIR,
    ForcedReplacement,
    check_replaceable,
    recover_run_folder,
    run_folder_lock,
)
from arithlens.runs import bundled_model_names, bundled_models_dir, load_run
from test_cli import TINY_FLAGS, arithlens, assert_user_error

SMALL_ANALYSIS = {"count": 64, "progress": False, "sample_count": 32, "set_count": 8, "patch_count": 4,
                  "checkpoint_count": 16}


def snapshot(folder: Path) -> dict[str, str]:
    """Every visible file under `folder` and a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("folders") / "run"
    done = arithlens("train", *TINY_FLAGS, "--steps", "20", "--checkpoint-every", "10", "--out", str(out))
    assert done.returncode == 0, done.stderr
    analyze_run(out, **SMALL_ANALYSIS)
    return out


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


# ----- --force ------------------------------------------------------------------


@pytest.mark.parametrize("bad", [["--weight-decay", "nan"], ["--weight-decay", "inf"], ["--lr", "2"]])
def test_force_with_a_bad_flag_keeps_the_old_run_whole(run_copy: Path, bad: list[str]) -> None:
    before = snapshot(run_copy)
    assert_user_error(arithlens("train", *TINY_FLAGS, "--steps", "5", "--out", str(run_copy), "--force", *bad))
    assert snapshot(run_copy) == before


def test_force_keeps_the_old_run_when_the_new_one_fails_before_saving(run_copy: Path) -> None:
    before = snapshot(run_copy)
    done = arithlens("train", *TINY_FLAGS, "--steps", "30", "--weight-decay", "1e30", "--out", str(run_copy), "--force")
    assert_user_error(done, "training diverged", "earlier run", "kept")
    assert snapshot(run_copy) == before
    assert not (run_copy / SET_ASIDE_DIR).exists()


def test_force_replaces_the_whole_old_run_once_the_new_one_saves(run_copy: Path) -> None:
    done = arithlens("train", *TINY_FLAGS, "--steps", "12", "--seed", "7", "--out", str(run_copy), "--force")
    assert done.returncode == 0, done.stderr
    run = load_run(run_copy)
    assert run.config.train.seed == 7 and run.info["status"] == "complete"
    assert run.checkpoint_steps() == [12]  # none of the old run's checkpoints are mixed in
    assert not (run_copy / "analysis").exists() and not (run_copy / SET_ASIDE_DIR).exists()


def test_a_killed_force_is_repaired_by_the_next_command(run_copy: Path) -> None:
    before = snapshot(run_copy)
    replacement = ForcedReplacement(run_copy, check_replaceable(run_copy, force=True))
    replacement.set_aside()
    (run_copy / "config.json").write_text("{}")  # the new run's first file; then the process is killed
    recover_run_folder(run_copy)
    assert snapshot(run_copy) == before


def test_force_refuses_a_folder_arithlens_did_not_make(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    (folder / "analysis").mkdir(parents=True)
    (folder / "config.json").write_text('{"learning_rate": 1}')
    (folder / "analysis" / "notes.txt").write_text("my notes")
    before = snapshot(folder)
    assert_user_error(arithlens("train", *TINY_FLAGS, "--steps", "5", "--out", str(folder), "--force"),
                      "not made by arithlens")
    assert snapshot(folder) == before


def test_force_refuses_a_run_holding_the_users_own_files(run_copy: Path) -> None:
    (run_copy / "analysis" / "notes.txt").write_text("my notes")
    before = snapshot(run_copy)
    assert_user_error(arithlens("train", *TINY_FLAGS, "--steps", "5", "--out", str(run_copy), "--force"),
                      "analysis/notes.txt")
    assert snapshot(run_copy) == before


# ----- one writer ------------------------------------------------------------------


def test_a_second_writer_is_refused(run_copy: Path) -> None:
    before = snapshot(run_copy)
    with run_folder_lock(run_copy, create=False):
        for args in (["train", *TINY_FLAGS, "--steps", "5", "--out", str(run_copy), "--force"],
                     ["train", "--resume", str(run_copy), "--steps", "25", "--no-progress"],
                     ["analyze", str(run_copy), "--count", "16", "--no-progress"]):
            assert_user_error(arithlens(*args), "in use by another arithlens process", str(os.getpid()))
    assert snapshot(run_copy) == before
    done = arithlens("train", "--resume", str(run_copy), "--steps", "25", "--no-progress")
    assert done.returncode == 0, done.stderr


def test_the_lock_does_not_outlive_a_killed_process(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from arithlens.folders import run_folder_lock\n"
         f"with run_folder_lock(Path({str(folder)!r})):\n    print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunFolderError, match="in use"):
        with run_folder_lock(folder):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    with run_folder_lock(folder):
        pass


def test_a_failed_command_leaves_no_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with run_folder_lock(tmp_path / "new"):
            raise RuntimeError("fails before writing anything")
    assert not (tmp_path / "new").exists()


# ----- the analysis folder ------------------------------------------------------------


def test_a_killed_analysis_leaves_the_previous_one_whole(run_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(run_copy / "analysis")
    written = []
    real = pd.DataFrame.to_parquet

    def dies_after_three(frame: pd.DataFrame, path: object, *args: object, **kwargs: object) -> None:
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(path)
        real(frame, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        analyze_run(run_copy, **{**SMALL_ANALYSIS, "seed": 5})
    monkeypatch.undo()
    assert snapshot(run_copy / "analysis") == before
    assert [p.name for p in run_copy.iterdir() if p.name.startswith(".analysis")] == []
    analyze_run(run_copy, **{**SMALL_ANALYSIS, "seed": 5})
    assert load_analysis(run_copy)["summary"]["settings"]["seed"] == 5


def test_a_stale_table_does_not_survive_a_new_analysis(run_copy: Path) -> None:
    stale = run_copy / "analysis" / "from_an_older_version.parquet"
    pd.DataFrame({"x": [1]}).to_parquet(stale)
    analyze_run(run_copy, **SMALL_ANALYSIS)
    assert not stale.exists()


def test_analyze_never_writes_into_a_bundled_model(tmp_path: Path) -> None:
    name = bundled_model_names()[0]
    shipped = snapshot(bundled_models_dir() / name)
    with pytest.raises(ArithlensError, match="bundled model"):
        analyze_run(name, **SMALL_ANALYSIS)
    done = arithlens("analyze", name, "--count", "16", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / f"{name}-analysis" / "summary.json").read_text())
    assert summary["settings"]["count"] == 16
    assert f"--analysis {name}-analysis" in done.stdout
    report = arithlens("report", name, "--analysis", f"{name}-analysis", "--out", "page.html", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert snapshot(bundled_models_dir() / name) == shipped


def test_analyze_refuses_to_replace_a_folder_that_is_not_an_analysis(run_copy: Path, tmp_path: Path) -> None:
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "thesis.tex").write_text("...")
    assert_user_error(arithlens("analyze", str(run_copy), "--out", str(documents), "--count", "16", "--no-progress"),
                      "not an arithlens analysis folder")
    assert (documents / "thesis.tex").read_text() == "..."


# ----- checks before the work ------------------------------------------------------------


def test_run_checks_its_analysis_count_before_training(tmp_path: Path) -> None:
    assert_user_error(arithlens("run", *TINY_FLAGS, "--steps", "2000", "--out", str(tmp_path / "r"), "--count", "0"),
                      "count")
    assert not (tmp_path / "r").exists()  # refused before training: no run folder was made


def test_analyze_checks_its_count_before_the_work(run_copy: Path) -> None:
    before = snapshot(run_copy)
    assert_user_error(arithlens("analyze", str(run_copy), "--count", "1", "--no-progress"), "count")
    assert snapshot(run_copy) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_resume_into_a_read_only_folder_fails_before_training(run_copy: Path) -> None:
    os.chmod(run_copy, 0o555)
    try:
        assert_user_error(arithlens("train", "--resume", str(run_copy), "--steps", "40", "--no-progress"),
                          "cannot write")
    finally:
        os.chmod(run_copy, 0o755)
    assert load_run(run_copy).info["steps_done"] == 20
