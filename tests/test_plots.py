"""Tests for arithlens.plots: every seed graph from a metrics table, titles, ffill, signed colour scales.

`synthetic_metrics` (also used by test_report.py) builds a realistic metrics
table through the training code's own `step_metrics`/`metrics_frame`: real
labelled batches, with made-up per-question losses that fall in one phase
change per answer digit, later for carry and sum-9 cases.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from arithlens.metrics import metric_names, metrics_frame, step_metrics
from arithlens.plots import analysis as analysis_plots
from arithlens.plots import training as training_plots
from arithlens.task import AdditionTask


def synthetic_losses(batch, progress: float, generator: torch.Generator) -> torch.Tensor:
    """Per-question, per-answer-token losses [batch, n+1] (An .. A0) at training progress 0..1."""
    n = batch.n_digits
    columns = []
    for d in range(n, -1, -1):
        centre = torch.full((len(batch),), 0.2 + 0.5 * d / max(n, 1), dtype=torch.float64)
        if d < n:
            centre = centre + 0.1 * batch.use_carry1[:, d] + 0.15 * batch.use_sum9[:, d]
        columns.append(2.3 * torch.sigmoid(-(progress - centre) * 25) + 1e-4)
    losses = torch.stack(columns, dim=1)
    noise = torch.exp(0.3 * torch.randn(losses.shape, generator=generator, dtype=torch.float64))
    return losses * noise


def synthetic_metrics(n_digits: int = 3, steps: int = 200, batch_size: int = 64, finite: bool = False,
                      seed: int = 0) -> pd.DataFrame:
    """A metrics table with the training contract's columns, built by arithlens.metrics itself."""
    task = AdditionTask(n_digits)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for step in range(steps):
        batch = task.generate(batch_size, generator, enrich_fraction=0.3)
        losses = synthetic_losses(batch, step / steps, generator)
        test = synthetic_losses(batch, step / steps, generator) * 1.2 if finite else None
        lr = 1e-4 * min(step / 10, 1)
        rows.append(step_metrics(lr, losses, test if finite else losses, batch, test))
    return metrics_frame(torch.stack(rows), 0, n_digits, finite)


@pytest.fixture(scope="module")
def metrics() -> pd.DataFrame:
    return synthetic_metrics(n_digits=3, steps=120)


def titles(figures: list[tuple[str, go.Figure]]) -> list[str]:
    return [fig.layout.title.text for _, fig in figures]


def test_synthetic_metrics_have_contract_columns(metrics: pd.DataFrame) -> None:
    assert list(metrics.columns) == ["step", *metric_names(3, False)]
    assert metrics["step"].tolist() == list(range(120))


def test_training_figures_cover_every_seed_graph(metrics: pd.DataFrame) -> None:
    figures = training_plots.training_figures(metrics)
    names = titles(figures)
    # total linear+log, per token linear+log, BaseAdd-only, per-digit x3, UC1 any, US9 one/two, 3 digits x 2 x 2
    assert len(figures) == 4 + 3 + 3 + 3 * 4
    assert "(Training) Loss Curves for 3 digit addition (Infinite)" in names
    assert "(Log scale) (Training) Loss Curves for 3 digit addition (Infinite)" in names
    assert "Per-digit (Log scale) (Training) Loss Curves for 3 digit addition (Infinite)" in names
    for digit in range(3):
        assert f"Loss for BaseAdd, UseCarry1 & UseSum9 Tasks for answer digit A{digit} (Infinite) (Training)" in names
        assert (f"Log Loss for BaseAdd, UseCarry1 & UseSum9 Tasks for answer digit A{digit} (Infinite) (Training)"
                in names)
        assert f"Loss for BaseAdd & UseCarry1 Tasks for answer digit A{digit} (Infinite) (Training)" in names
    log_figures = [fig for name, (_, fig) in zip(names, figures) if "Log" in name]
    assert log_figures and all(fig.layout.yaxis.type == "log" for fig in log_figures)


def test_case_counts_and_shares_in_titles(metrics: pd.DataFrame) -> None:
    totals = training_plots.case_totals(metrics, 3)
    assert sum(totals.values()) == 120 * 64 * 3  # the three classes partition every (question, digit)
    expected = {label: int(100 * count / sum(totals.values())) for label, count in totals.items()}
    fig = training_plots.subtask_digit_curves(metrics, "use_sum9")
    assert fig.layout.title.text == (
        f"Per-digit UseSum9 Loss (Infinite) (Training) ({totals['UseSum9']} cases, {expected['UseSum9']}%)"
    )
    assert training_plots.base_add_only_curve(metrics).layout.title.text.startswith(
        f"AllDigits BaseAdd Loss (Infinite) (Training) ({totals['BaseAdd']} cases"
    )
    sum9 = training_plots.use_sum9_cascade_curves(metrics)
    one = int(metrics["use_sum9_one_count"].sum())
    assert [trace.name for trace in sum9.data] == [
        f"1 digit ({one} questions)", f"2 digits ({int(metrics['use_sum9_two_count'].sum())} questions)"
    ]


def test_steps_without_cases_carry_the_previous_value() -> None:
    frame = pd.DataFrame({"step": [0, 1, 2, 3], "x_loss": [1.0, math.nan, math.nan, 0.5], "x_count": [3, 0, 0, 2]})
    shown = training_plots.display_series(frame, "x_loss", "x_count")
    assert shown.tolist() == [1.0, 1.0, 1.0, 0.5]


def test_per_digit_curves_are_filled_forward(metrics: pd.DataFrame) -> None:
    fig = training_plots.subtask_digit_curves(metrics, "use_sum9")
    # US9 is impossible at the units digit (no carry comes in): all NaN there, and filled elsewhere
    assert [trace.name for trace in fig.data] == ["A0", "A1", "A2"]
    assert np.isnan(np.asarray(fig.data[0].y, dtype=float)).all()
    later = np.asarray(fig.data[2].y, dtype=float)
    first_seen = np.argmax(~np.isnan(later))
    assert not np.isnan(later[first_seen:]).any()


def test_finite_mode_adds_testing_curves() -> None:
    frame = synthetic_metrics(n_digits=2, steps=40, finite=True)
    names = titles(training_plots.training_figures(frame))
    assert "(Testing) Loss Curves for 2 digit addition (Finite)" in names
    assert "Per-digit (Testing) Loss Curves for 2 digit addition (Finite)" in names
    assert any(name.startswith("Per-digit BaseAdd Loss (Finite) (Testing)") for name in names)


def test_long_runs_are_binned_but_keep_the_mean() -> None:
    frame = pd.DataFrame({"step": np.arange(10_000), "loss": np.linspace(2, 0, 10_000)})
    fig = training_plots.lines_figure(frame, [("loss", frame["loss"])], "t", max_points=1000)
    y = np.asarray(fig.data[0].y, dtype=float)
    assert len(y) == 1000
    assert abs(y.mean() - frame["loss"].mean()) < 1e-3


def test_phase_bands_become_shapes(metrics: pd.DataFrame) -> None:
    phases = pd.DataFrame({"answer_digit": ["A0", "A1"], "start_step": [10, 40], "end_step": [20, 60]})
    fig = training_plots.add_phase_bands(training_plots.loss_curves(metrics), phases)
    assert [(s.x0, s.x1) for s in fig.layout.shapes] == [(10, 20), (40, 60)]


def test_heatmaps_use_position_labels_and_a_centred_diverging_scale() -> None:
    names = AdditionTask(2).position_labels()
    rows = []
    for position in range(len(names)):
        for head in (-1, 0, 1):
            for digit in ("all", "A2", "A1", "A0"):
                rows.append({"node": "", "kind": "head", "position": position, "layer": 0, "head": head,
                             "answer_digit": digit, "subtask_class": "all", "questions": 10, "loss": 1.0,
                             "loss_delta": 0.1 * position, "accuracy": 0.5, "accuracy_delta": -0.01 * position})
    fig = analysis_plots.node_effect_heatmaps(pd.DataFrame(rows), 2)
    assert fig.layout.coloraxis.cmid == 0
    assert fig.layout.coloraxis.colorscale == go.layout.Coloraxis(colorscale="RdBu").colorscale
    assert list(fig.data[0].y) == names
    assert list(fig.data[0].x) == ["L0H0", "L0H1", "L0M"]
    z = np.asarray(fig.data[1].z, dtype=float)
    assert z[names.index("P5 (→A2)")].tolist() == pytest.approx([-0.05] * 3)  # "=" at P5 predicts A2
