"""Sub-task loss breakdown against the seed notebook's own definitions."""

from __future__ import annotations

import math

import torch

from arithlens.metrics import metric_names, metrics_frame, step_metrics, token_losses
from arithlens.task import AdditionTask


def seed_style(losses: torch.Tensor, batch, n: int) -> dict[str, float]:
    """The seed's calculate_*_loss functions, rewritten with plain loops per question."""
    out: dict[str, float] = {}
    rows = range(len(batch))
    uc = batch.use_carry1.tolist()
    s9 = batch.make_sum9.tolist()
    us9 = batch.use_sum9.tolist()
    L = losses.tolist()  # columns An .. A0
    for d in range(n):
        col = n - d
        for name, keep in (
            ("base_add", lambda i: not uc[i][d]),
            ("use_carry1", lambda i: uc[i][d] and not s9[i][d]),
            ("use_sum9", lambda i: uc[i][d] and s9[i][d]),
        ):
            chosen = [L[i][col] for i in rows if keep(i)]
            out[f"{name}_loss_d{d}"] = sum(chosen) / len(chosen) if chosen else math.nan
            out[f"{name}_count_d{d}"] = len(chosen)
    no_carry = [i for i in rows if not any(uc[i])]
    out["base_add_only_loss"] = sum(sum(L[i][1:]) for i in no_carry) / len(no_carry) / n if no_carry else math.nan
    uc_any = [i for i in rows if any(uc[i]) and not any(us9[i])]
    one = [i for i in rows if sum(us9[i]) == 1]
    two = [i for i in rows if sum(us9[i]) == 2]
    for name, chosen in (("use_carry1_any", uc_any), ("use_sum9_one", one), ("use_sum9_two", two)):
        out[f"{name}_loss"] = sum(sum(L[i]) for i in chosen) / (len(chosen) * (n + 1)) if chosen else math.nan
        out[f"{name}_count"] = len(chosen)
    out["base_add_only_count"] = len(no_carry)
    return out


def test_breakdown_matches_the_seed() -> None:
    n = 5
    task = AdditionTask(n)
    batch = task.generate(512, torch.Generator().manual_seed(3), enrich_fraction=0.5)
    losses = torch.rand(512, n + 1, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    row = step_metrics(0.5, losses, losses, batch)
    names = metric_names(n, finite=False)
    values = dict(zip(names, row.tolist()))
    expected = seed_style(losses, batch, n)
    for key, want in expected.items():
        got = values[key]
        assert (math.isnan(want) and math.isnan(got)) or math.isclose(got, want, rel_tol=1e-9), key
    assert values["lr"] == 0.5
    assert math.isclose(values["loss"], losses.mean().item())
    assert math.isclose(values["loss_A0"], losses[:, -1].mean().item())
    assert math.isclose(values["loss_A5"], losses[:, 0].mean().item())


def test_per_digit_classes_partition_every_digit() -> None:
    """The seed's unit_test_nonoverlapping: BA + UC1 + US9 cases cover batch x digits exactly once."""
    n = 4
    batch = AdditionTask(n).generate(300, torch.Generator().manual_seed(0))
    row = step_metrics(0.0, torch.zeros(300, n + 1), torch.zeros(300, n + 1), batch)
    values = dict(zip(metric_names(n, False), row.tolist()))
    total = sum(values[f"{s}_count_d{d}"] for s in ("base_add", "use_carry1", "use_sum9") for d in range(n))
    assert total == 300 * n


def test_empty_case_is_nan_not_zero() -> None:
    task = AdditionTask(2)
    batch = task.batch_from_ints([11, 22], [11, 33])  # no carries at all
    values = dict(zip(metric_names(2, False), step_metrics(0.0, torch.ones(2, 3), torch.ones(2, 3), batch).tolist()))
    assert values["use_carry1_count_d1"] == 0 and math.isnan(values["use_carry1_loss_d1"])
    assert values["base_add_only_count"] == 2 and values["base_add_only_loss"] == 1.0


def test_token_losses_are_float64_and_exact_for_confident_logits() -> None:
    logits = torch.zeros(1, 1, 12)
    logits[0, 0, 3] = 25.0  # float32 log-softmax would round this loss to 0
    loss = token_losses(logits, torch.tensor([[3]]))
    assert loss.dtype == torch.float64
    assert 0 < loss.item() < 1e-9


def test_metrics_frame_columns() -> None:
    history = torch.zeros(3, len(metric_names(2, True)), dtype=torch.float64)
    frame = metrics_frame(history, 0, 2, True)
    assert list(frame["step"]) == [0, 1, 2]
    assert {"test_loss", "test_loss_A2", "use_sum9_two_count", "loss_A0"} <= set(frame.columns)
    assert frame["base_add_count_d0"].dtype == "int64"
