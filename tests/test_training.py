"""Training: the loss falls, run folders hold what they should, and resuming is bit-exact."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from arithlens.config import ModelConfig, RunConfig, TrainConfig
from arithlens.errors import RunFolderError
from arithlens.runs import load_run
from arithlens.training import resume, train

TINY_MODEL = ModelConfig(n_digits=2, d_model=32, d_mlp=64, n_heads=4)


def tiny_config(steps: int = 30, **train_kwargs) -> RunConfig:
    return RunConfig(TINY_MODEL, TrainConfig(steps=steps, batch_size=32, lr=1e-3, checkpoint_every=10, **train_kwargs))


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_loss_falls_in_300_steps(tmp_path: Path) -> None:
    run = train(tiny_config(300), tmp_path / "run", progress=False)
    loss = run.metrics["loss"]
    assert len(loss) == 300
    assert loss.tail(30).mean() < 0.6 * loss.head(30).mean()
    assert run.info["status"] == "complete" and run.info["steps_done"] == 300


def test_run_folder_contents(tmp_path: Path) -> None:
    run = train(tiny_config(20), tmp_path / "run", progress=False, command="arithlens train --steps 20")
    names = {p.name for p in run.path.iterdir()}
    assert {"config.json", "model.safetensors", "metrics.parquet", "checkpoints"} <= names
    assert run.checkpoint_steps() == [10, 20]
    assert not list(run.path.rglob("*.pt")) and not list(run.path.rglob("*.pkl"))
    saved = json.loads((run.path / "config.json").read_text())
    assert saved["model"]["d_model"] == 32 and saved["train"]["steps"] == 20
    assert saved["run"]["command"] == "arithlens train --steps 20"
    assert weights_equal(run.model(), run.checkpoint_model(20))
    assert not weights_equal(run.model(), run.checkpoint_model(10))


def test_existing_run_is_not_overwritten_without_force(tmp_path: Path) -> None:
    run = train(tiny_config(10), tmp_path / "run", progress=False)
    before = (run.path / "model.safetensors").read_bytes()
    with pytest.raises(RunFolderError, match="--force"):
        train(tiny_config(10, seed=5), tmp_path / "run", progress=False)
    assert (run.path / "model.safetensors").read_bytes() == before
    train(tiny_config(10, seed=5), tmp_path / "run", progress=False, force=True)
    assert (run.path / "model.safetensors").read_bytes() != before


def test_resume_after_exception_is_bit_identical(tmp_path: Path) -> None:
    straight = train(tiny_config(30), tmp_path / "straight", progress=False)

    def crash(step: int) -> None:
        if step == 15:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        train(tiny_config(30), tmp_path / "crashed", progress=False, on_step=crash)
    assert load_run(tmp_path / "crashed").info["status"] == "interrupted"
    resumed = resume(tmp_path / "crashed", progress=False)
    assert weights_equal(straight.model(), resumed.model())
    assert straight.metrics.equals(resumed.metrics)


def test_ctrl_c_saves_the_exact_step_and_resumes(tmp_path: Path) -> None:
    straight = train(tiny_config(30), tmp_path / "straight", progress=False)

    def press_ctrl_c(step: int) -> None:
        if step == 17:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(30), tmp_path / "stopped", progress=False, on_step=press_ctrl_c)
    stopped = load_run(tmp_path / "stopped")
    assert stopped.info["steps_done"] == 17 and len(stopped.metrics) == 17
    resumed = resume(tmp_path / "stopped", progress=False)
    assert weights_equal(straight.model(), resumed.model())
    assert straight.metrics.equals(resumed.metrics)


def test_resume_extends_a_finished_run(tmp_path: Path) -> None:
    long = train(tiny_config(30), tmp_path / "long", progress=False)
    train(tiny_config(20), tmp_path / "short", progress=False)
    extended = resume(tmp_path / "short", steps=30, progress=False)
    assert weights_equal(long.model(), extended.model())
    with pytest.raises(RunFolderError, match="already trained"):
        resume(tmp_path / "short", steps=10, progress=False)


def test_finite_mode_records_train_and_test(tmp_path: Path) -> None:
    run = train(tiny_config(20, finite=50), tmp_path / "finite", progress=False)
    metrics = run.metrics
    assert {"test_loss", "test_loss_A0", "loss_A2"} <= set(metrics.columns)
    # the sub-task counts come from the fresh test batch of batch_size questions, as in the seed
    assert (metrics[[f"{s}_count_d0" for s in ("base_add", "use_carry1", "use_sum9")]].sum(axis=1) == 32).all()


def test_enriched_training_sees_more_sum9(tmp_path: Path) -> None:
    plain = train(tiny_config(20), tmp_path / "plain", progress=False).metrics
    rich = train(tiny_config(20, enrich_fraction=1.0, enrich_sum9_prob=0.6), tmp_path / "rich", progress=False).metrics
    assert rich["use_sum9_count_d1"].sum() > plain["use_sum9_count_d1"].sum()


def test_resume_without_state_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match="not a run folder"):
        resume(tmp_path, progress=False)
