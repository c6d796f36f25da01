"""The command line as a user runs it: real subprocesses, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from arithlens.runs import load_run

TINY_FLAGS = ["--digits", "2", "--d-model", "32", "--d-mlp", "64", "--batch-size", "16", "--lr", "0.001", "--no-progress"]


def arithlens(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arithlens.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    done = arithlens("train", *TINY_FLAGS, "--steps", "20", "--checkpoint-every", "10", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "final loss" in done.stdout
    return out


def assert_user_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_train_writes_a_run_folder(trained_run: Path) -> None:
    run = load_run(trained_run)
    assert run.config.model.n_digits == 2 and len(run.metrics) == 20
    assert run.checkpoint_steps() == [10, 20]
    assert run.info["command"].startswith("arithlens train")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--steps", "0"], "steps"),
        (["--steps", "-3"], "steps"),
        (["--digits", "0"], "n_digits"),
        (["--digits", "-2"], "n_digits"),
        (["--batch-size", "0"], "batch_size"),
        (["--d-model", "30", "--heads", "4"], "divisible"),
        (["--device", "tpu"], "unknown device"),
        (["--steps", "many"], "--steps"),
    ],
)
def test_bad_training_flags(args: list[str], fragment: str, tmp_path: Path) -> None:
    assert_user_error(arithlens("train", *args, "--out", str(tmp_path / "x")), fragment)
    assert not (tmp_path / "x" / "config.json").exists()


def test_existing_run_folder_is_kept(trained_run: Path) -> None:
    before = (trained_run / "model.safetensors").read_bytes()
    assert_user_error(arithlens("train", *TINY_FLAGS, "--steps", "5", "--out", str(trained_run)), "--force")
    assert (trained_run / "model.safetensors").read_bytes() == before


def test_predict_prints_one_answer_per_line(trained_run: Path, tmp_path: Path) -> None:
    questions = tmp_path / "questions.txt"
    questions.write_text("12+34=\n\n99+01=\n")
    done = arithlens("predict", "--model", str(trained_run), "45+55=", "--file", str(questions))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3
    assert [line[:6] for line in lines] == ["45+55=", "12+34=", "99+01="]
    assert all(len(line) == 9 and line[6:].isdigit() for line in lines)


def test_predict_bad_inputs(trained_run: Path, tmp_path: Path) -> None:
    assert_user_error(arithlens("predict", "--model", str(trained_run), "12+3="), "malformed question")
    assert_user_error(arithlens("predict", "--model", str(tmp_path / "nothing"), "12+34="), "no run folder")
    assert_user_error(arithlens("predict", "--model", str(trained_run)), "give questions")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("config.json", "metrics.parquet"):
        (damaged / name).write_bytes((trained_run / name).read_bytes())
    (damaged / "model.safetensors").write_bytes(b"\x00not a safetensors file")
    assert_user_error(arithlens("predict", "--model", str(damaged), "12+34="), "damaged")
    (damaged / "model.safetensors").unlink()
    assert_user_error(arithlens("predict", "--model", str(damaged), "12+34="), "model.safetensors")


def test_data_writes_labelled_jsonl(tmp_path: Path) -> None:
    done = arithlens("data", "--digits", "3", "--count", "50", "--seed", "4", "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 50
    for record in records:
        x, y = record["question"].rstrip("=").split("+")
        assert int(x) + int(y) == int(record["answer"])
        assert record["base_add"][0] == int(x[-1]) + int(y[-1])  # units first
        assert record["category"] in {"BaseAdd", "UseCarry1", "UseSum9"}
        assert set(record) == {"question", "answer", "op", "base_add", "make_carry1", "make_sum9", "use_carry1",
                               "use_sum9", "category", "cascade_depth"}
        assert record["op"] == "add"
    again = arithlens("data", "--digits", "3", "--count", "50", "--seed", "4")
    assert again.stdout == done.stdout
    assert_user_error(arithlens("data", "--format", "xml"), "jsonl")
    assert_user_error(arithlens("data", "--digits", "0"), "n_digits")


@pytest.mark.slow
def test_killed_training_resumes_to_identical_weights(tmp_path: Path) -> None:
    flags = [*TINY_FLAGS, "--steps", "300", "--checkpoint-every", "20"]
    straight = arithlens("train", *flags, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "arithlens.cli", "train", *flags, "--out", str(killed_dir)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed_dir / "checkpoints" / "train_state.safetensors"
    deadline = time.time() + 240
    while not state.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # no chance to save anything
    process.wait()
    assert load_run(killed_dir).info["status"] == "interrupted"

    resumed = arithlens("train", "--resume", str(killed_dir), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    a = load_run(tmp_path / "straight").model().state_dict()
    b = load_run(killed_dir).model().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_run(killed_dir).metrics.equals(load_run(tmp_path / "straight").metrics)


def test_eval_on_a_built_question_set(trained_run: Path) -> None:
    done = arithlens("eval", "--model", str(trained_run), "--set", "cascade_depth_1", "--count", "300", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "300 cascade_depth_1 questions" in " ".join(done.stdout.split())  # the title may wrap
    # every question of the set has cascade depth 1, so that is the only depth row
    depth_rows = [line for line in done.stdout.splitlines() if "cascade_depth:" in line]
    assert len(depth_rows) == 1 and "cascade_depth: 1" in depth_rows[0], depth_rows
    assert_user_error(arithlens("eval", "--model", str(trained_run), "--set", "cascade_depth_9"), "unknown question set")
