"""Bad input never gives a traceback: a table of damaged files and bad flags, each run through the CLI.

Every case sets up one kind of damage (in a copy of a tiny trained run, or in a
scratch folder) and runs one command as a user would. Each must end with exit
code 2 and exactly one `error:` line on stderr, no traceback, and nothing the
user had changed: every file is byte-for-byte as before and no stray file (a
`.tmp`, an output) is left behind.

The commands run in-process through `arithlens.cli.main`, the console script's
own entry point (one import of torch and TransformerLens for the whole table
instead of one per case); `test_the_console_script_agrees` runs a case as a real
subprocess to show the two agree.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from arithlens import cli
from test_cli import arithlens, assert_user_error

TINY = ["--digits", "2", "--d-model", "16", "--heads", "2", "--d-mlp", "32", "--batch-size", "8", "--lr", "0.001",
        "--no-progress"]
LOCK = ".arithlens.lock"  # the writer lock a command may leave in a run folder; it holds no data


def run_cli(*args: str) -> tuple[int, str, str]:
    """`arithlens ARGS` through the console script's entry point: exit code, stdout, stderr.

    An exception that escapes `main` is what a user would see as a traceback, so it is printed to stderr.
    """
    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["arithlens", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main()
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
            except BaseException:  # noqa: BLE001 - exactly what the table looks for
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (but the lock) with a hash of its bytes (its mode, where it cannot be read)."""
    def fingerprint(path: Path) -> str:
        try:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        except PermissionError:
            return f"unreadable, mode {path.stat().st_mode:o}, {path.stat().st_size} bytes"

    return {str(p.relative_to(folder)): fingerprint(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK}


# ----- the shared tiny runs ---------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished, analysed 2-digit run, and a 3-digit one whose train state goes where it does not belong."""
    from arithlens.analysis.runner import analyze_run

    root = tmp_path_factory.mktemp("faults")
    paths = {"run": root / "run", "run3": root / "run3"}
    for name, digits in (("run", "2"), ("run3", "3")):
        flags = [*TINY, "--digits", digits, "--steps", "6", "--checkpoint-every", "3"]
        code, _, err = run_cli("train", *flags, "--out", paths[name])
        assert code == 0, err
    analyze_run(paths["run"], count=16, progress=False, sample_count=8, set_count=4, patch_count=2,
                checkpoint_count=8)
    return paths


@dataclass
class Where:
    """What a case's setup works on: its own copy of the run, the 3-digit run, and a scratch folder."""

    run: Path
    run3: Path
    tmp: Path

    @property
    def state(self) -> Path:
        return self.run / "checkpoints" / "train_state.safetensors"

    def config(self) -> dict:
        return json.loads((self.run / "config.json").read_text())

    def write_config(self, data: dict) -> None:
        (self.run / "config.json").write_text(json.dumps(data))


# ----- damage -------------------------------------------------------------------------


def edit_tensors(path: Path, tensors: Callable[[dict], None] | None = None,
                 metadata: Callable[[dict], None] | None = None) -> None:
    """Rewrite a safetensors file with its tensors and/or metadata changed in place."""
    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata() or {})
    data = load_file(str(path))
    if tensors is not None:
        tensors(data)
    if metadata is not None:
        metadata(meta)
    save_file(data, str(path), metadata=meta)


def config_field(section: str, key: str, value: object) -> Callable[[Where], None]:
    def setup(w: Where) -> None:
        data = w.config()
        if section:
            data[section][key] = value
        else:
            data[key] = value
        w.write_config(data)
    return setup


def weights(change: Callable[[dict], None]) -> Callable[[Where], None]:
    return lambda w: edit_tensors(w.run / "model.safetensors", tensors=change)


def state(tensors: Callable[[dict], None] | None = None,
          metadata: Callable[[dict], None] | None = None) -> Callable[[Where], None]:
    return lambda w: edit_tensors(w.state, tensors=tensors, metadata=metadata)


def write(name: str, content: bytes | str) -> Callable[[Where], None]:
    def setup(w: Where) -> None:
        path = w.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return setup


def garbage(relative: str, content: bytes = b"PAR1 not really parquet") -> Callable[[Where], None]:
    return lambda w: (w.run / relative).write_bytes(content)


def truncate(relative: str) -> Callable[[Where], None]:
    def setup(w: Where) -> None:
        data = (w.run / relative).read_bytes()
        (w.run / relative).write_bytes(data[: len(data) // 2])
    return setup


def lone_model(metadata: dict[str, str]) -> Callable[[Where], None]:
    """A .safetensors model file outside a run folder, with the given metadata."""
    return lambda w: save_file(load_file(str(w.run / "model.safetensors")), str(w.tmp / "lone.safetensors"),
                               metadata=metadata)


def read_only(relative: str) -> Callable[[Where], None]:
    def setup(w: Where) -> None:
        path = w.tmp / relative
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o555)
    return setup


def unreadable(name: str) -> Callable[[Where], None]:
    def setup(w: Where) -> None:
        (w.tmp / name).write_text("12+34=\n")
        (w.tmp / name).chmod(0o000)
    return setup


def stray_checkpoint(w: Where) -> None:
    shutil.copy(w.run / "model.safetensors", w.run / "checkpoints" / "step_final.safetensors")


def state_from_3_digit_run(w: Where) -> None:
    shutil.copy(w.run3 / "checkpoints" / "train_state.safetensors", w.state)


def optim_exp_avg_shape(tensors: dict) -> None:
    key = next(k for k in tensors if k.endswith(".exp_avg"))
    tensors[key] = torch.zeros(3, 3)


def report_is_a_folder(w: Where) -> None:
    (w.run / "report.html").unlink(missing_ok=True)
    (w.run / "report.html").mkdir()
    (w.run / "report.html" / "keep.txt").write_text("mine")


def _set(key: str, value: object) -> Callable[[dict], None]:
    return lambda d: d.__setitem__(key, value)


def _drop(key: str) -> Callable[[dict], None]:
    return lambda d: d.pop(key)


def _cast(key: str, dtype: torch.dtype) -> Callable[[dict], None]:
    return lambda d: d.__setitem__(key, d[key].to(dtype))


def _fill(key: str, value: float) -> Callable[[dict], None]:
    return lambda d: d[key].fill_(value)


# ----- the table ----------------------------------------------------------------------


@dataclass
class Case:
    id: str
    args: list[str]  # {run}, {run3} and {tmp} are filled in
    setup: Callable[[Where], None] | None = None
    says: str = ""  # the error line holds this
    root_skip: bool = False  # permissions that root ignores
    patch: dict[str, object] = field(default_factory=dict)  # attributes replaced for the case (monkeypatch)


RESUME = ["train", "--resume", "{run}", "--steps", "9", "--no-progress"]
PREDICT = ["predict", "--model", "{run}", "12+34="]
REPORT = ["report", "{run}"]
NEW = ["--out", "{tmp}/new"]
HUGE = str(10**23)
ONE_GIB_FREE = {"arithlens.config.available_memory": lambda device="cpu": 2**30}
NO_MEMORY_CHECK = {"arithlens.config.require_memory": lambda parts, device="cpu": None}


def columns_dropped(relative: str, keep: int) -> Callable[[Where], None]:
    def setup(w: Where) -> None:
        frame = pd.read_parquet(w.run / relative)
        frame.iloc[:, :keep].to_parquet(w.run / relative)
    return setup


def summary_field(key: str, value: object) -> Callable[[Where], None]:
    def setup(w: Where) -> None:
        path = w.run / "analysis" / "summary.json"
        data = json.loads(path.read_text())
        data[key] = value
        path.write_text(json.dumps(data))
    return setup

CASES = [
    # --- questions and question files
    Case("predict-file-binary", ["predict", "--model", "{run}", "--file", "{tmp}/q.bin"],
         write("q.bin", b"\x89PNG\r\n\x1a\n\x00\xff\xfe"), "UTF-8"),
    Case("predict-file-utf16", ["predict", "--model", "{run}", "--file", "{tmp}/q.txt"],
         write("q.txt", "12+34=\n".encode("utf-16")), "UTF-8"),
    Case("predict-file-is-a-folder", ["predict", "--model", "{run}", "--file", "{tmp}"], None, "folder"),
    Case("predict-file-missing", ["predict", "--model", "{run}", "--file", "{tmp}/none.txt"], None, "no such file"),
    Case("predict-file-empty", ["predict", "--model", "{run}", "--file", "{tmp}/empty.txt"], write("empty.txt", ""),
         "give questions"),
    Case("predict-file-unreadable", ["predict", "--model", "{run}", "--file", "{tmp}/q.txt"], unreadable("q.txt"),
         "q.txt", root_skip=True),
    Case("predict-arabic-indic-digits", ["predict", "--model", "{run}", "١٢+٣٤="], None, "0-9"),
    Case("predict-full-width-digits", ["predict", "--model", "{run}", "１２+３４="], None, "0-9"),
    Case("predict-unicode-digits-in-file", ["predict", "--model", "{run}", "--file", "{tmp}/q.txt"],
         write("q.txt", "12+34=\n٤٥+٦٧=\n"), "0-9"),
    # --- model files
    Case("model-metadata-not-json", ["predict", "--model", "{tmp}/lone.safetensors", "12+34="],
         lone_model({"config": "{not json"}), "lone.safetensors"),
    Case("model-metadata-config-wrong", ["predict", "--model", "{tmp}/lone.safetensors", "12+34="],
         lone_model({"config": json.dumps({"n_digits": "two"})}), "lone.safetensors"),
    Case("model-file-empty", ["predict", "--model", "{tmp}/lone.safetensors", "12+34="],
         write("lone.safetensors", b""), "lone.safetensors"),
    Case("weights-nan", PREDICT, weights(_fill("embed.weight", float("nan"))), "embed.weight"),
    Case("weights-inf", PREDICT, weights(_fill("unembed.weight", float("inf"))), "unembed.weight"),
    Case("weights-fp16", PREDICT, weights(_cast("embed.weight", torch.float16)), "float16"),
    Case("weights-int64", PREDICT, weights(_cast("pos_embed.weight", torch.int64)), "int64"),
    Case("weights-missing-key", PREDICT, weights(_drop("blocks.0.mlp.in.weight")), "blocks.0.mlp.in.weight"),
    Case("weights-extra-key", PREDICT, weights(_set("blocks.7.attn.q.weight", torch.zeros(2, 2))),
         "blocks.7.attn.q.weight"),
    Case("weights-wrong-shape", PREDICT, weights(_set("embed.weight", torch.zeros(12, 8))), "embed.weight"),
    # --- config.json
    Case("config-betas-number", PREDICT, config_field("train", "betas", 5), "betas"),
    Case("config-betas-null", PREDICT, config_field("train", "betas", None), "betas"),
    Case("config-recipe-list", PREDICT, config_field("train", "recipe", ["fast"]), "recipe"),
    Case("config-lr-string", PREDICT, config_field("train", "lr", "0.001"), "lr"),
    Case("config-seed-huge", PREDICT, config_field("train", "seed", 10**30), "seed"),
    Case("config-model-seed-huge", PREDICT, config_field("model", "seed", 2**64), "seed"),
    Case("config-layers-huge", PREDICT, config_field("model", "n_layers", 10**9), "n_layers"),
    Case("config-d-model-huge", PREDICT, config_field("model", "d_model", 2**30), "d_model"),
    Case("config-model-a-list", PREDICT, config_field("", "model", [1, 2]), "model"),
    Case("config-train-null", PREDICT, config_field("", "train", None), "train"),
    Case("config-run-a-string", REPORT, config_field("", "run", "abc"), "run"),
    Case("config-run-a-list", PREDICT, config_field("", "run", [1, 2]), "run"),
    Case("config-run-seconds-string", REPORT, config_field("run", "seconds", "long"), "seconds"),
    Case("config-run-steps-done-string", RESUME, config_field("run", "steps_done", "six"), "steps_done"),
    Case("config-nested-garbage", PREDICT, garbage("config.json", b"[" * 100_000 + b"]" * 100_000), "config.json"),
    Case("config-binary", PREDICT, garbage("config.json", b"\xff\xfe\x00"), "config.json"),
    # --- metrics and analysis tables
    Case("metrics-garbage", REPORT, garbage("metrics.parquet"), "metrics.parquet"),
    Case("metrics-truncated", REPORT, truncate("metrics.parquet"), "metrics.parquet"),
    Case("metrics-empty-file", REPORT, garbage("metrics.parquet", b""), "metrics.parquet"),
    Case("metrics-wrong-columns", REPORT, columns_dropped("metrics.parquet", 3), "metrics.parquet"),
    Case("analysis-table-garbage", REPORT, garbage("analysis/accuracy.parquet"), "accuracy.parquet"),
    Case("analysis-table-truncated", REPORT, truncate("analysis/node_ablation.parquet"), "node_ablation.parquet"),
    Case("analysis-summary-binary", REPORT, garbage("analysis/summary.json", b"\xff\xfe\x00"), "summary.json"),
    Case("analysis-summary-wrong-types", REPORT, summary_field("seconds", ["slow"]), "summary.json"),
    Case("analysis-table-wrong-columns", REPORT, columns_dropped("analysis/accuracy.parquet", 2), "accuracy.parquet"),
    Case("stray-checkpoint-name", REPORT, stray_checkpoint, "step_final.safetensors"),
    # --- the train state --resume reads
    Case("state-weight-wrong-shape", RESUME, state(_set("model.embed.weight", torch.zeros(12, 8))), "embed.weight"),
    Case("state-weights-nan", RESUME, state(_fill("model.embed.weight", float("nan"))), "embed.weight"),
    Case("state-missing-rng", RESUME, state(_drop("rng.data")), "rng.data"),
    Case("state-rng-wrong-size", RESUME, state(_set("rng.test", torch.zeros(7, dtype=torch.uint8))), "rng.test"),
    Case("state-missing-history", RESUME, state(_drop("history")), "history"),
    Case("state-step-not-a-number", RESUME, state(metadata=_set("step", "six")), "step"),
    Case("state-step-negative", RESUME, state(metadata=_set("step", "-3")), "step"),
    Case("state-step-disagrees-with-history", RESUME, state(metadata=_set("step", "4")), "history"),
    Case("state-missing-step", RESUME, state(metadata=_drop("step")), "step"),
    Case("state-from-a-3-digit-run", RESUME, state_from_3_digit_run, "train state"),
    Case("state-optimizer-moment-wrong-shape", RESUME, state(optim_exp_avg_shape), "exp_avg"),
    Case("state-optimizer-missing", RESUME, state(lambda t: [t.pop(k) for k in list(t) if k.startswith("optim.")]),
         "optim"),
    Case("state-param-groups-not-json", RESUME, state(metadata=_set("param_groups", "[{")), "param_groups"),
    Case("state-scheduler-not-json", RESUME, state(metadata=_set("scheduler", "nope")), "scheduler"),
    Case("state-scheduler-garbage", RESUME, state(metadata=_set("scheduler", json.dumps({"last_epoch": "x"}))),
         "scheduler"),
    Case("state-not-safetensors", RESUME, garbage("checkpoints/train_state.safetensors", b"\x00" * 64),
         "train_state.safetensors"),
    # --- flags too large to allocate, and seeds
    Case("train-seed-huge", ["train", *TINY, "--steps", "5", "--seed", HUGE, *NEW], None, "seed"),
    Case("train-steps-huge", ["train", *TINY, "--steps", str(10**12), *NEW], None, "--steps"),
    Case("train-batch-size-huge", ["train", *TINY, "--steps", "5", "--batch-size", str(10**12), *NEW], None,
         "--batch-size"),
    Case("train-finite-huge", ["train", *TINY, "--steps", "5", "--finite", str(10**12), *NEW], None, "--finite"),
    Case("train-eval-count-huge", ["train", *TINY, "--steps", "5", "--eval-every", "5", "--eval-count", str(10**12),
                                   *NEW], None, "--eval-count"),
    Case("train-d-model-huge", ["train", "--digits", "2", "--d-model", str(2**20), "--steps", "5", *NEW], None,
         "--d-model"),
    Case("train-layers-huge", ["train", *TINY, "--layers", str(10**6), "--steps", "5", *NEW], None, "layers"),
    Case("train-steps-beyond-memory", ["train", *TINY, "--steps", str(10**8), *NEW], None, "--steps",
         patch=ONE_GIB_FREE),
    Case("train-batch-beyond-memory", ["train", *TINY, "--steps", "5", "--batch-size", str(10**6), *NEW], None,
         "--batch-size", patch=ONE_GIB_FREE),
    Case("resume-steps-beyond-memory", [*RESUME[:3], "--steps", str(10**8), "--no-progress"], None, "--steps",
         patch=ONE_GIB_FREE),
    Case("allocation-fails-past-the-checks", ["data", "--count", str(10**15)], None, "out of memory",
         patch=NO_MEMORY_CHECK),
    Case("train-warmup-arabic-digits", ["train", *TINY, "--steps", "20", "--warmup-steps", "١٠", *NEW], None,
         "--warmup-steps"),
    Case("train-betas-full-width", ["train", *TINY, "--steps", "5", "--betas", "０.9,0.98", *NEW], None, "--betas"),
    Case("train-out-read-only", ["train", *TINY, "--steps", "5", "--out", "{tmp}/ro/run"], read_only("ro"), "ro",
         root_skip=True),
    Case("data-seed-negative", ["data", "--seed", "-1"], None, "--seed"),
    Case("data-seed-huge", ["data", "--seed", HUGE], None, "--seed"),
    Case("data-count-huge", ["data", "--count", str(10**15)], None, "--count"),
    Case("data-output-missing-folder", ["data", "--output", "{tmp}/missing/q.jsonl"], None, "missing"),
    Case("data-output-is-a-folder", ["data", "--output", "{tmp}"], None, "folder"),
    Case("data-output-read-only", ["data", "--output", "{tmp}/ro/q.jsonl"], read_only("ro"), "q.jsonl",
         root_skip=True),
    Case("eval-seed-negative", ["eval", "--model", "{run}", "--seed", "-1", "--count", "10"], None, "--seed"),
    Case("eval-seed-huge", ["eval", "--model", "{run}", "--seed", HUGE, "--count", "10"], None, "--seed"),
    Case("eval-count-huge", ["eval", "--model", "{run}", "--count", str(10**15), "--no-progress"], None, "--count"),
    # --- outputs that cannot be written
    Case("report-out-is-a-folder", ["report", "{run}", "--out", "{tmp}/adir"], write("adir/keep.txt", "mine"),
         "folder"),
    Case("report-html-is-a-folder", REPORT, report_is_a_folder, "report.html"),
    Case("report-out-read-only", ["report", "{run}", "--out", "{tmp}/ro/r.html"], read_only("ro"), "r.html",
         root_skip=True),
    # --- --resume with flags it would ignore
    Case("resume-with-other-lr", ["train", "--resume", "{run}", "--lr", "0.01", "--no-progress"], None, "--lr"),
    Case("resume-with-other-model", ["train", "--resume", "{run}", "--d-model", "64", "--layers", "2",
                                     "--no-progress"], None, "--d-model"),
    Case("resume-with-other-out", ["train", "--resume", "{run}", "--out", "{tmp}/elsewhere", "--no-progress"], None,
         "--out"),
    Case("resume-with-force", [*RESUME, "--force"], None, "--force"),
    # --- found while fixing the above
    Case("train-out-empty", ["train", "--steps", "5", "--no-progress", "--out", ""], None, "--out is empty"),
    Case("analyze-count-huge", ["analyze", "{run}", "--count", str(10**9), "--no-progress"], None, "at most"),
    Case("analyze-damaged-metrics-before-the-work", ["analyze", "{run}", "--count", "64", "--no-progress"],
         garbage("metrics.parquet"), "metrics.parquet"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gives_one_error_line_and_loses_nothing(case: Case, runs: dict[str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    if case.root_skip and os.geteuid() == 0:
        pytest.skip("root ignores file permissions, so this damage cannot be made here")
    where = Where(run=tmp_path / "run", run3=runs["run3"], tmp=tmp_path / "scratch")
    shutil.copytree(runs["run"], where.run)
    where.tmp.mkdir()
    for target, value in case.patch.items():
        monkeypatch.setattr(target, value)
    if case.setup is not None:
        case.setup(where)
    monkeypatch.chdir(where.tmp)  # a command that wrongly writes into the current folder is seen too
    before = snapshot(tmp_path)
    args = [a.format(run=where.run, run3=where.run3, tmp=where.tmp) for a in case.args]
    try:
        code, out, err = run_cli(*args)
    finally:
        for path in tmp_path.rglob("*"):  # let pytest clean up read-only folders
            if path.is_dir():
                path.chmod(0o755)
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, out[-500:], err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.says in lines[0], lines[0]
    assert snapshot(tmp_path) == before


def test_the_console_script_agrees(tmp_path: Path) -> None:
    """The same one-line error from a real process (the table runs `main` in-process)."""
    assert_user_error(arithlens("data", "--output", str(tmp_path / "missing" / "q.jsonl")), "missing")
    assert list(tmp_path.iterdir()) == []


# ----- what bad input must not break ---------------------------------------------------


def test_a_bom_at_the_start_of_a_question_file_is_accepted(runs: dict[str, Path], tmp_path: Path) -> None:
    questions = tmp_path / "q.txt"
    questions.write_bytes("\ufeff12+34=\r\n\r\n99+01=\n".encode())
    code, out, err = run_cli("predict", "--model", runs["run"], "--file", questions)
    assert code == 0, err
    assert [line[:6] for line in out.splitlines()] == ["12+34=", "99+01="]


def test_resume_accepts_the_flags_it_was_trained_with(runs: dict[str, Path], tmp_path: Path) -> None:
    """Repeating the run's own flags with --resume is no conflict: only flags that differ are refused."""
    run = tmp_path / "run"
    shutil.copytree(runs["run"], run)
    code, _, err = run_cli("train", *TINY, "--steps", "8", "--checkpoint-every", "3", "--resume", run, "--out", run)
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["run"]["steps_done"] == 8


def test_data_output_is_written_whole(tmp_path: Path) -> None:
    code, _, err = run_cli("data", "--digits", "2", "--count", "3", "--seed", "0", "--output", tmp_path / "q.jsonl")
    assert code == 0, err
    assert [p.name for p in tmp_path.iterdir()] == ["q.jsonl"]
    assert len((tmp_path / "q.jsonl").read_text().splitlines()) == 3
