"""Schedules, recipes, held-out evaluation while training, stopping at an accuracy, and same-seed determinism."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from arithlens.config import RECIPES, ModelConfig, RunConfig, TrainConfig
from arithlens.errors import ConfigError, TrainingDiverged
from arithlens.heldout import heldout_metric_names
from arithlens.runs import load_run
from arithlens.training import resume, train
from test_cli import arithlens, assert_user_error

TINY_MODEL = ModelConfig(n_digits=2, d_model=32, d_mlp=64, n_heads=4)
TINY_FLAGS = ["--digits", "2", "--d-model", "32", "--heads", "4", "--d-mlp", "64", "--no-progress"]


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----- schedules -------------------------------------------------------------

def test_seed_schedule_is_unchanged() -> None:
    seed = TrainConfig()
    assert (seed.schedule, seed.warmup_steps, seed.warmup_start, seed.recipe) == ("constant", 10, 0.0, "seed")
    assert [seed.lr_multiplier(s) for s in (0, 5, 10, 2999)] == [0.0, 0.5, 1.0, 1.0]


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_decay_runs_from_warmup_start_to_the_floor(schedule: str) -> None:
    config = TrainConfig(steps=91, lr=1e-3, schedule=schedule, warmup_steps=10, warmup_start=0.01, min_lr=1e-5)
    multipliers = [config.lr_multiplier(s) for s in range(91)]  # decay over steps 10 .. 90
    assert multipliers[0] == pytest.approx(0.01)
    assert multipliers[5] == pytest.approx(0.01 + 0.99 * 0.5)
    assert multipliers[10] == pytest.approx(1.0)
    assert multipliers[90] == pytest.approx(0.01)  # the last step trains at min_lr
    assert all(a >= b for a, b in zip(multipliers[10:], multipliers[11:]))  # never rises after warm-up
    middle = multipliers[50]  # halfway through the decay
    assert middle == pytest.approx(0.01 + 0.99 * 0.5)  # both shapes pass the midpoint there
    quarter = multipliers[30]
    expected = 1 - 0.25 if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * 0.25))
    assert quarter == pytest.approx(0.01 + 0.99 * expected, rel=1e-3)


def test_trainer_follows_the_schedule(tmp_path: Path) -> None:
    config = RunConfig(TINY_MODEL, TrainConfig(steps=40, batch_size=16, lr=1e-3, schedule="cosine", warmup_steps=4,
                                               warmup_start=0.1, min_lr=1e-4, checkpoint_every=100))
    lrs = train(config, tmp_path / "run", progress=False).metrics["lr"].tolist()
    assert lrs == pytest.approx([1e-3 * config.train.lr_multiplier(s) for s in range(40)])


# ----- recipes ---------------------------------------------------------------

def test_asked_for_warmup_longer_than_the_run_is_an_error() -> None:
    with pytest.raises(ConfigError, match="longer than the run"):
        TrainConfig.from_recipe("fast", steps=50, warmup_steps=60)
    assert TrainConfig.from_recipe("seed", steps=5).warmup_steps == 10  # the seed's own warm-up, as in the notebook


def test_fast_recipe_and_overrides() -> None:
    fast = TrainConfig.from_recipe("fast", steps=2000)
    assert fast.recipe == "fast" and fast.lr == RECIPES["fast"]["lr"] and fast.schedule == RECIPES["fast"]["schedule"]
    assert fast.warmup_steps == round(RECIPES["fast"]["warmup_fraction"] * 2000)
    assert TrainConfig.from_recipe("seed") == TrainConfig()
    mine = TrainConfig.from_recipe("fast", steps=2000, lr=5e-4, warmup_steps=7, batch_size=None)
    assert (mine.lr, mine.warmup_steps, mine.batch_size) == (5e-4, 7, fast.batch_size)
    assert TrainConfig.from_recipe("fast", steps=1000, warmup_fraction=0.2).warmup_steps == 200
    # every resolved value is recorded, so a run never depends on what a recipe means later
    assert TrainConfig.from_dict(fast.to_dict()) == fast


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"schedule": "exponential"}, "unknown schedule"),
        ({"recipe": "slow"}, "unknown recipe"),
        ({"until_accuracy": 0.0, "eval_every": 10}, "until_accuracy"),
        ({"until_accuracy": 1.5, "eval_every": 10}, "until_accuracy"),
        ({"until_accuracy": 0.9}, "--eval-every"),
        ({"eval_count": 0}, "eval_count"),
        ({"eval_every": -1}, "eval_every"),
        ({"min_lr": 0.5}, "min_lr"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"warmup_start": 2.0}, "warmup_start"),
    ],
)
def test_bad_training_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


BAD_FLAGS = [
    (["--schedule", "exponential"], "unknown schedule"),
    (["--recipe", "slow"], "unknown recipe"),
    (["--steps", "50", "--warmup-steps", "60"], "longer than the run"),
    (["--warmup-steps", "1.5"], "--warmup-steps"),
    (["--eval-every", "10", "--until-accuracy", "0"], "until_accuracy"),
    (["--eval-every", "10", "--until-accuracy", "1.01"], "until_accuracy"),
    (["--eval-every", "10", "--eval-count", "0"], "eval_count"),
    (["--betas", "0.9"], "--betas"),
]


def test_bad_training_flags_are_one_line_errors_and_lose_nothing(tmp_path: Path) -> None:
    existing = tmp_path / "run"
    done = arithlens("train", *TINY_FLAGS, "--steps", "5", "--out", str(existing))
    assert done.returncode == 0, done.stderr
    before = {p.relative_to(existing): p.read_bytes() for p in existing.rglob("*") if p.is_file()}
    # every case on `train`, and the first on `run` too: both read the one shared declaration of these flags
    cases = [("train", flags, message) for flags, message in BAD_FLAGS] + [("run", *BAD_FLAGS[0])]
    for command, flags, message in cases:
        assert_user_error(arithlens(command, *TINY_FLAGS, *flags, "--out", str(existing), "--force"), message)
    assert {p.relative_to(existing): p.read_bytes() for p in existing.rglob("*") if p.is_file()} == before


def test_recipe_flags_resolve_and_are_recorded(tmp_path: Path) -> None:
    out = tmp_path / "fast"
    done = arithlens("train", *TINY_FLAGS, "--recipe", "fast", "--steps", "40", "--lr", "3e-3", "--warmup-steps", "10%",
                     "--grad-clip", "0", "--out", str(out))
    assert done.returncode == 0, done.stderr
    saved = json.loads((out / "config.json").read_text())["train"]
    fast = RECIPES["fast"]
    assert saved["recipe"] == "fast" and saved["lr"] == 3e-3 and saved["warmup_steps"] == 4
    assert saved["schedule"] == fast["schedule"] and saved["min_lr"] == fast["min_lr"]
    assert saved["grad_clip"] is None  # --grad-clip 0 turns the recipe's clipping off
    # --resume keeps every resolved value, whatever flags come with it
    again = arithlens("train", "--resume", str(out), "--steps", "50", "--no-progress")
    assert again.returncode == 0, again.stderr
    resumed = json.loads((out / "config.json").read_text())["train"]
    assert {k: v for k, v in resumed.items() if k != "steps"} == {k: v for k, v in saved.items() if k != "steps"}


# ----- held-out evaluation and stopping ----------------------------------------

def test_heldout_accuracy_is_recorded_at_each_evaluation(tmp_path: Path) -> None:
    config = RunConfig(TINY_MODEL, TrainConfig(steps=25, batch_size=16, lr=1e-3, eval_every=10, eval_count=300,
                                               checkpoint_every=100))
    run = train(config, tmp_path / "run", progress=False)
    metrics = run.metrics
    assert set(heldout_metric_names(2)) <= set(metrics.columns)
    evaluated = metrics.loc[metrics["heldout_accuracy"].notna(), "step"].tolist()
    assert evaluated == [9, 19, 24]  # after 10, 20 and the last of 25 steps
    row = metrics.loc[metrics["step"] == 24].iloc[0]
    assert 0 <= row["heldout_accuracy"] <= row["heldout_acc_A0"] <= 1
    # the recorded accuracy is the saved model's accuracy on the held-out questions, re-measured here
    from arithlens.heldout import heldout_batch, heldout_accuracy
    from arithlens.task import AdditionTask
    batch = heldout_batch(AdditionTask(2), 300, config.train.eval_seed)
    again = heldout_accuracy(run.model(), batch)
    assert float(again[0]) == row["heldout_accuracy"]
    assert run.info["heldout_accuracy"] == row["heldout_accuracy"] and run.info["stop_reason"] == "steps"


def test_until_accuracy_stops_at_the_first_evaluation_that_reaches_it(tmp_path: Path) -> None:
    model = ModelConfig(n_digits=1, d_model=32, d_mlp=64, n_heads=4)
    config = RunConfig(model, TrainConfig(steps=600, batch_size=32, lr=1e-2, eval_every=20, eval_count=200,
                                          until_accuracy=0.5, checkpoint_every=1000))
    run = train(config, tmp_path / "run", progress=False)
    stopped = run.info["stopped_at_step"]
    assert run.info["stop_reason"] == "until_accuracy" and stopped < 600 and stopped % 20 == 0
    assert run.info["status"] == "complete" and run.info["steps_done"] == stopped and len(run.metrics) == stopped
    accuracies = run.metrics["heldout_accuracy"].dropna().tolist()
    assert accuracies[-1] >= 0.5 and all(a < 0.5 for a in accuracies[:-1])
    saved = json.loads((run.path / "config.json").read_text())["run"]
    assert saved["stop_reason"] == "until_accuracy" and saved["stopped_at_step"] == stopped


# ----- determinism -------------------------------------------------------------

def test_same_seed_gives_identical_weights_with_two_threads(tmp_path: Path) -> None:
    assert torch.get_num_threads() >= 2
    # the seed architecture's width: the embedding gradient is where thread order used to leak in
    model = ModelConfig(n_digits=3, d_model=128, d_mlp=256, n_heads=4)
    config = RunConfig(model, TrainConfig.from_recipe("fast", steps=30, batch_size=64, checkpoint_every=100))
    first = train(config, tmp_path / "a", progress=False)
    second = train(config, tmp_path / "b", progress=False)
    assert weights_equal(first.model(), second.model())


def test_cli_runs_are_bit_identical_at_the_default_thread_count(tmp_path: Path) -> None:
    flags = ["--digits", "3", "--d-model", "128", "--heads", "4", "--d-mlp", "256", "--steps", "30",
             "--recipe", "fast", "--no-progress"]
    for name in ("a", "b"):
        done = arithlens("train", *flags, "--out", str(tmp_path / name))
        assert done.returncode == 0, done.stderr
    assert weights_equal(load_run(tmp_path / "a").model(), load_run(tmp_path / "b").model())


def test_interrupted_fast_run_with_heldout_resumes_bit_identically(tmp_path: Path) -> None:
    assert torch.get_num_threads() >= 2
    config = RunConfig(TINY_MODEL, TrainConfig.from_recipe("fast", steps=40, batch_size=32, eval_every=8,
                                                           eval_count=200, checkpoint_every=10))
    straight = train(config, tmp_path / "straight", progress=False)

    def crash(step: int) -> None:
        if step == 23:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        train(config, tmp_path / "crashed", progress=False, on_step=crash)
    resumed = resume(tmp_path / "crashed", progress=False)
    assert weights_equal(straight.model(), resumed.model())
    assert straight.metrics.equals(resumed.metrics)


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupted_training_says_what_was_saved_and_exits_non_zero(tmp_path: Path, signum: int, code: int) -> None:
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "arithlens.cli", "train", *TINY_FLAGS, "--steps", "100000",
                                "--checkpoint-every", "50", "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = out / "checkpoints" / "train_state.safetensors"
    deadline = time.time() + 240
    while not state.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    # `arithlens train ... && arithlens analyze ...` must not carry on with a half-trained run
    assert process.returncode == code, stderr
    assert f"interrupted by {signal.Signals(signum).name}" in stderr and f"--resume {out}" in stderr, stderr
    saved = load_run(out)
    assert saved.info["status"] == "interrupted" and 0 < saved.info["steps_done"] < 100000
    resumed = arithlens("train", "--resume", str(out), "--steps", str(saved.info["steps_done"] + 5), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr


def test_divergence_stops_with_an_error_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    config = RunConfig(TINY_MODEL, TrainConfig(steps=60, batch_size=16, lr=1e-3, checkpoint_every=10))

    def blow_up(step: int) -> None:  # what an exploding update does: NaN in the weights from step 12 on
        if step == 12:
            with torch.no_grad():
                next(trainer_model.parameters()).fill_(float("nan"))

    from arithlens.training import Trainer
    out = tmp_path / "run"
    out.mkdir()
    trainer = Trainer(config, out, {"status": "interrupted"})
    trainer_model = trainer.model
    with pytest.raises(TrainingDiverged, match="step 20"):
        trainer.fit(progress=False, on_step=blow_up)
    run = load_run(out)
    assert run.info["status"] == "diverged" and run.info["steps_done"] == 10 and run.info["diverged_at_step"] == 20
    saved = run.model().state_dict()
    assert all(torch.isfinite(t).all() for t in saved.values())  # the step-10 weights, not the NaN ones
    assert run.checkpoint_steps() == [10]

    # A finite but absurd weight decay overflows the weights within a few steps (inf is refused up front).
    fresh = arithlens("train", *TINY_FLAGS, "--steps", "30", "--weight-decay", "1e30", "--out", str(tmp_path / "new"))
    assert_user_error(fresh, "training diverged", "no checkpoint had been saved yet")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["run"]["status"] == "diverged"
