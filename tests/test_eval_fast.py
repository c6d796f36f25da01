"""Fast evaluation: same verdicts as the full bridge, `eval --json`, `eval --all`, and the FLOP count."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from arithlens.analysis.accuracy import (
    accuracy_table,
    evaluate,
    exhaustive_accuracy,
    random_accuracy,
)
from arithlens.config import ModelConfig
from arithlens.errors import ArithlensError
from arithlens.flops import answer_forward_flops
from arithlens.model import AnswerForward, answer_logits, build_model, predicted_digits
from arithlens.scoring import default_chunk_size
from arithlens.runs import load_model, save_model
from arithlens.task import AdditionTask

TINY = {"d_model": 32, "d_mlp": 64, "n_heads": 4}


def arithlens(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arithlens.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def saved_model(folder: Path, n_digits: int, **shape: int) -> Path:
    """A tiny untrained model saved as a .safetensors file, which `--model PATH` loads."""
    path = folder / f"tiny_d{n_digits}.safetensors"
    save_model(build_model(ModelConfig(n_digits=n_digits, **{**TINY, **shape})), path)
    return path


@pytest.fixture(scope="module")
def tiny2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return saved_model(tmp_path_factory.mktemp("eval_fast"), 2)


def parse_one_json(done: subprocess.CompletedProcess) -> dict:
    """The command's stdout, which must be exactly one JSON object on one line."""
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    payload = json.loads(lines[0], parse_constant=lambda name: pytest.fail(f"{name} is not valid JSON"))
    assert isinstance(payload, dict)
    return payload


def assert_groups_equal(groups: list[dict], table) -> None:
    assert len(groups) == len(table)
    for group, row in zip(groups, table.to_dict("records")):
        assert set(group) == set(row)
        for key, value in row.items():
            if isinstance(value, float) and math.isnan(value):
                assert group[key] is None, (key, group)
            else:
                assert group[key] == value, (key, group, row)


@pytest.mark.parametrize(
    ("model_config", "chunk_size"),
    [
        (ModelConfig(n_digits=2, **TINY), None),
        (ModelConfig(n_digits=2, **TINY), 16),  # many chunks through the worker pool
        (ModelConfig(n_digits=3, n_layers=2, normalization="LN", act_fn="gelu", **TINY), 48),
    ],
)
def test_fast_verdicts_equal_the_full_bridge(model_config: ModelConfig, chunk_size: int | None) -> None:
    model = build_model(model_config)
    batch = AdditionTask(model_config.n_digits).generate(300, torch.Generator().manual_seed(11))
    threads = torch.get_num_threads()
    result = evaluate(model, batch, chunk_size=chunk_size)
    assert torch.get_num_threads() == threads  # the workers' single-thread setting is undone
    with torch.no_grad():
        reference = predicted_digits(answer_logits(model, batch.tokens))  # [300, n+1], the slow path
    assert torch.equal(result.predicted, reference)
    expected = batch.tokens[:, 2 * model_config.n_digits + 2 :]
    assert torch.equal(result.correct, (reference == expected).all(dim=1))
    assert result.loss_per_digit.shape == reference.shape and result.loss_per_digit.dtype == torch.float64


def test_chunk_size_changes_nothing() -> None:
    model = build_model(ModelConfig(n_digits=2, **TINY))
    one = random_accuracy(model, 500, seed=2, chunk_size=7)
    other = random_accuracy(model, 500, seed=2, chunk_size=500)
    assert torch.equal(one.batch.tokens, other.batch.tokens)
    assert torch.equal(one.predicted, other.predicted)
    torch.testing.assert_close(one.loss_per_digit, other.loss_per_digit)


def test_default_chunks_are_cache_sized_on_a_cpu() -> None:
    cpu = torch.device("cpu")
    wide = ModelConfig(n_digits=5, n_layers=2, d_model=256, d_mlp=1024)  # add_d5_l2's shape
    assert 8 <= default_chunk_size(wide, cpu) <= 256
    assert default_chunk_size(ModelConfig(n_digits=2, **TINY), cpu) > default_chunk_size(wide, cpu)
    assert default_chunk_size(wide, torch.device("cuda")) >= 4096


def test_eval_json_matches_accuracy_table(tiny2: Path) -> None:
    payload = parse_one_json(arithlens("eval", "--model", str(tiny2), "--count", "700", "--seed", "3", "--json"))
    table = accuracy_table(random_accuracy(load_model(tiny2), 700, seed=3))
    overall = table.iloc[0]
    assert payload["model"] == str(tiny2) and payload["question_set"] == "random" and payload["seed"] == 3
    for key in ("questions", "correct", "accuracy", "failures", "nines"):
        assert payload[key] == overall[key], key
    assert payload["questions"] == 700
    assert_groups_equal(payload["groups"], table)
    assert payload["seconds"] > 0 and payload["questions_per_s"] > 0


def test_eval_json_turns_empty_groups_into_null(tiny2: Path) -> None:
    # base_add questions have no carries, so the UseCarry1 and UseSum9 groups are empty (NaN).
    payload = parse_one_json(arithlens("eval", "--model", str(tiny2), "--set", "base_add", "--count", "200",
                                       "--json", "--no-progress"))
    empty = [g for g in payload["groups"] if g["questions"] == 0]
    assert {g["group"] for g in empty if g["group_kind"] == "category"} == {"UseCarry1", "UseSum9"}
    assert all(g["accuracy"] is None and g["nines"] is None for g in empty)


def test_every_question_enumerates_each_pair_once() -> None:
    task = AdditionTask(2)
    batch = task.every_question()
    assert len(batch) == 10**4
    pairs = [(int(q[:2]), int(q[3:5])) for q in task.questions(batch)]
    assert pairs == [(x, y) for x in range(100) for y in range(100)]
    assert [int(a) for a in task.answers(batch)] == [x + y for x, y in pairs]
    middle = task.every_question(1234, 1240)
    assert torch.equal(middle.tokens, batch.tokens[1234:1240])
    with pytest.raises(ArithlensError):
        task.every_question(5, 5)


def test_exhaustive_accuracy_covers_every_question(monkeypatch: pytest.MonkeyPatch) -> None:
    from arithlens.analysis import accuracy

    model = build_model(ModelConfig(n_digits=2, **TINY))
    monkeypatch.setattr(accuracy, "GENERATE_BLOCK", 3000)  # several blocks, the last one short
    result = exhaustive_accuracy(model)
    assert len(result) == 10**4
    assert torch.equal(result.batch.tokens, AdditionTask(2).every_question().tokens)
    assert torch.equal(result.correct, evaluate(model, result.batch).correct)
    with pytest.raises(ArithlensError, match="100,000,000"):
        exhaustive_accuracy(build_model(ModelConfig(n_digits=4, **TINY)))


def test_eval_all_on_two_digits(tiny2: Path) -> None:
    payload = parse_one_json(arithlens("eval", "--model", str(tiny2), "--all", "--json"))
    assert payload["questions"] == 10**4 and payload["question_set"] == "all" and payload["seed"] is None
    table = accuracy_table(exhaustive_accuracy(load_model(tiny2)))
    assert_groups_equal(payload["groups"], table)
    done = arithlens("eval", "--model", str(tiny2), "--all", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "all 10,000 questions" in " ".join(done.stdout.split())


def assert_user_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_eval_all_refuses_large_models_and_question_sets(tiny2: Path, tmp_path: Path) -> None:
    four = saved_model(tmp_path, 4)
    assert_user_error(arithlens("eval", "--model", str(four), "--all"), "100,000,000", "--count", "4-digit")
    assert_user_error(arithlens("eval", "--model", str(tiny2), "--all", "--set", "use_sum9"), "--set")


@pytest.mark.parametrize(
    "config",
    [ModelConfig(n_digits=2, **TINY), ModelConfig(n_digits=3, n_layers=2, d_model=48, d_mlp=80, n_heads=3, d_head=10),
     ModelConfig(n_digits=5, n_layers=2, d_model=64, d_mlp=256, n_heads=4, normalization="LN")],
)
def test_flops_equal_the_forward_matmuls(config: ModelConfig) -> None:
    forward = AnswerForward(build_model(config))
    tokens = AdditionTask(config.n_digits).generate(5, torch.Generator().manual_seed(0)).tokens
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        forward(tokens)
    assert counter.get_total_flops() == 5 * answer_forward_flops(config)


def test_flops_grow_with_width() -> None:
    counts = [answer_forward_flops(ModelConfig(n_digits=5, d_model=d, d_mlp=4 * d)) for d in (64, 128, 256, 512)]
    assert counts[0] > 0 and counts == sorted(set(counts))
    # add_d5_l2: 2 layers, d_model 256, d_mlp 1024 is about 39.5 MFLOP a question
    assert answer_forward_flops(ModelConfig(n_digits=5, n_layers=2, d_model=256, d_mlp=1024)) == pytest.approx(
        39.6e6, rel=0.01)
