"""Phase-change detection on synthetic loss curves, sub-task changes, and checkpoint comparison on a tiny run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from arithlens import AdditionTask, ArithlensError, ModelConfig, RunConfig, TrainConfig, build_model
from arithlens.analysis.dynamics import (
    bracketing_steps,
    compare_checkpoints,
    default_window,
    detect_phase_changes,
    phase_changes,
    smooth_log_loss,
    subtask_changes,
)
from arithlens.runs import load_run, save_model, write_json

STEPS = np.arange(3000)


def sigmoid_loss(centre: float, width: float, decades: float = 3.0, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    """A loss that falls `decades` orders of magnitude around `centre`, with multiplicative noise."""
    rng = np.random.default_rng(seed)
    log10 = np.log10(2.3) - decades / (1 + np.exp(-(STEPS - centre) / width))
    return 10 ** (log10 + rng.normal(0, noise, len(STEPS)))


def test_sigmoid_drop_is_found_at_the_right_steps():
    phases = detect_phase_changes(STEPS, sigmoid_loss(1200, 50))
    assert len(phases) == 1
    phase = phases[0]
    assert abs(phase.steepest_step - 1200) <= 25
    # with slope_fraction 0.25 the ends of a sigmoid lie 2.63 widths from the centre (smoothing widens them a little)
    assert 1200 - 2.63 * 50 - 40 <= phase.start_step <= 1200 - 2.63 * 50 + 15
    assert 1200 + 2.63 * 50 - 15 <= phase.end_step <= 1200 + 2.63 * 50 + 40
    assert phase.log10_drop == pytest.approx(3 * (0.933 - 0.067), abs=0.25)
    assert 1.0 < phase.loss_before < 2.3 and 0.002 < phase.loss_after < 0.01  # 10**(0.36 - 3 * 0.067 | 0.933)
    assert phase.max_slope_per_1k == pytest.approx(3 / (4 * 50) * 1000, rel=0.2)  # sigmoid peak slope a/(4w)


def test_two_phases_and_flat_noise():
    two = sigmoid_loss(700, 40, decades=1.5) * sigmoid_loss(2000, 80, decades=1.5, seed=1) / 2.3
    phases = detect_phase_changes(STEPS, two)
    assert [abs(p.steepest_step - c) <= 40 for p, c in zip(phases, (700, 2000))] == [True, True]
    assert phases[0].end_step < phases[1].start_step
    flat = 10 ** np.random.default_rng(3).normal(0.3, 0.1, len(STEPS))
    assert detect_phase_changes(STEPS, flat) == []
    # a small drop is not a phase change unless asked for
    small = sigmoid_loss(1500, 50, decades=0.3)
    assert detect_phase_changes(STEPS, small) == []
    assert len(detect_phase_changes(STEPS, small, min_drop=0.2)) == 1
    # the first steps' fit to the output distribution is not a phase change
    initial_fit = sigmoid_loss(1500, 50) * (1 + 4 * np.exp(-STEPS / 10.0))
    assert [abs(p.steepest_step - 1500) <= 25 for p in detect_phase_changes(STEPS, initial_fit)] == [True]


def test_smoothing_and_window():
    assert default_window(3000) == 61 and default_window(10) == 5 and default_window(100) % 2 == 1
    spiky = np.full(200, 1.0)
    spiky[100] = 1e6  # one spike does not survive the median
    assert np.allclose(smooth_log_loss(spiky, 5), 0.0)
    with_gap = np.array([1.0, np.nan, 1.0, 0.0])  # NaN interpolated, 0 clamped to the floor
    smoothed = smooth_log_loss(with_gap, 1)
    assert smoothed[1] == 0.0 and smoothed[3] == -12.0
    with pytest.raises(ArithlensError):
        detect_phase_changes(STEPS, STEPS[:10])


def synthetic_metrics() -> pd.DataFrame:
    centres = {2: 600, 1: 1400, 0: 2200}
    frame = pd.DataFrame({"step": STEPS})
    for digit, centre in centres.items():
        frame[f"loss_A{digit}"] = sigmoid_loss(centre, 40, seed=digit)
    frame["base_add_loss_d0"] = sigmoid_loss(2200, 40, seed=7)  # falls with A0
    frame["use_carry1_loss_d1"] = sigmoid_loss(1400, 40, seed=8)  # falls with A1
    frame["use_sum9_loss_d0"] = np.nan  # never occurs
    frame["use_sum9_one_loss"] = 0.5
    return frame


def test_phase_changes_per_digit_and_subtask_changes():
    metrics = synthetic_metrics()
    phases = phase_changes(metrics)
    assert list(phases["answer_digit"]) == ["A2", "A1", "A0"]
    assert [abs(s - c) <= 25 for s, c in zip(phases["steepest_step"], (600, 1400, 2200))] == [True] * 3
    assert set(phases["loss_column"]) == {"loss_A2", "loss_A1", "loss_A0"}
    changes = subtask_changes(metrics, phases)
    a1 = changes[changes["answer_digit"] == "A1"].set_index("column")
    assert a1.loc["use_carry1_loss_d1", "log10_change"] < -2
    assert abs(a1.loc["base_add_loss_d0", "log10_change"]) < 0.3
    assert a1.loc["use_carry1_loss_d1", "subtask"] == "use_carry1" and a1.loc["use_carry1_loss_d1", "digit"] == "A1"
    assert np.isnan(a1.loc["use_sum9_loss_d0", "log10_change"])
    assert a1.loc["use_sum9_one_loss", "digit"] == "all" and a1.loc["use_sum9_one_loss", "log10_change"] == 0


def test_test_columns_are_preferred_and_bad_tables_fail():
    metrics = synthetic_metrics()
    metrics["test_loss_A2"] = sigmoid_loss(2500, 40)
    phases = phase_changes(metrics)
    assert list(phases["loss_column"]) == ["test_loss_A2"] and abs(phases["steepest_step"].iloc[0] - 2500) <= 25
    assert len(phase_changes(metrics, source="train")) == 3
    with pytest.raises(ArithlensError, match="step"):
        phase_changes(metrics.drop(columns="step"))
    with pytest.raises(ArithlensError, match="loss_A"):
        phase_changes(pd.DataFrame({"step": [0, 1], "loss": [1.0, 0.5]}))
    assert subtask_changes(metrics, phases.iloc[0:0]).empty


def test_bracketing_steps_use_the_untrained_and_final_models():
    phases = pd.DataFrame({"start_step": [5, 25, 45], "end_step": [15, 38, 48]})
    assert bracketing_steps(phases, [10, 20, 30, 40], 50) == {0: (0, 20), 1: (20, 40), 2: (40, 50)}


def hand_made_run(folder: Path) -> Path:
    """A run folder with checkpoints at steps 10 and 20 and a final model at 30 (differently seeded weights)."""
    model_config = ModelConfig(n_digits=2, d_model=32, d_mlp=64, n_heads=2)
    (folder / "checkpoints").mkdir(parents=True)
    for step, seed in ((10, 1), (20, 2)):
        save_model(build_model(replace(model_config, seed=seed)), folder / "checkpoints" / f"step_{step:05d}.safetensors")
    save_model(build_model(replace(model_config, seed=3)), folder / "model.safetensors")
    write_json(folder / "config.json", {**RunConfig(model_config, TrainConfig(steps=30)).to_dict(),
                                        "run": {"status": "complete", "steps_done": 30}})
    return folder


def test_compare_checkpoints_on_a_tiny_run(tmp_path: Path):
    run = load_run(hand_made_run(tmp_path / "run"))
    phases = pd.DataFrame({"answer_digit": ["A1", "A0"], "phase": [0, 0], "start_step": [3, 12], "end_step": [18, 30]})
    batch = AdditionTask(2).generate(200, torch.Generator().manual_seed(0))
    calls = []
    # untrained weights: count any accuracy drop as useful, since this checks the bookkeeping, not a model
    table = compare_checkpoints(run, phases, batch, threshold=0.0, progress=calls.append)
    assert not table.empty
    assert calls == [1, 1, 1, 1]  # steps 0 (untrained), 10, 20 and 30 (final)
    assert list(table.columns) == ["answer_digit", "phase", "step_before", "step_after", "node", "useful_before",
                                   "useful_after", "became_useful", "failure_rate_before", "failure_rate_after",
                                   "impacts_after", "failing_subtasks_after"]
    assert set(zip(table["answer_digit"], table["step_before"], table["step_after"])) <= {("A1", 0, 20), ("A0", 10, 30)}
    assert (table["became_useful"] == (table["useful_after"] & ~table["useful_before"])).all()
    assert (table["useful_before"] | table["useful_after"]).all()
    for row in table.itertuples():
        assert (row.answer_digit in row.impacts_after.split(",")) == row.useful_after
