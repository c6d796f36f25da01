"""Starting a larger model from a trained one (`arithlens.init_from`): which weights are copied where,
which keep the new model's own initialisation, what shapes are refused, and `train --init-from`.

The source's weights are overwritten with a random draw of their own before copying: both models
are seeded with the same default seed, so their seed-initialised weights share leading values,
and a copy that did nothing would otherwise look like one that worked.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from arithlens.config import ModelConfig
from arithlens.errors import ConfigError
from arithlens.init_from import check_fits, copy_into
from arithlens.model import TransformerBridge, build_model
from arithlens.task import make_task

ARITHLENS = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "arithlens"
SOURCE = ModelConfig(n_digits=2, n_layers=1, d_model=16, n_heads=2, d_mlp=32, op="add")
# 3 heads of width 8 (d_model 16 does not divide by 3, so d_head is given), twice the neurons, one more layer.
TARGET = ModelConfig(n_digits=2, n_layers=2, d_model=16, n_heads=3, d_head=8, d_mlp=64, op="mixed")
SRC_FLAGS = ["--digits", "2", "--layers", "1", "--d-model", "16", "--heads", "2", "--d-mlp", "32", "--steps", "5",
             "--no-progress"]


def randomised(config: ModelConfig, seed: int) -> TransformerBridge:
    """A model whose every weight, biases included, is a distinctive random draw (biases start at zero otherwise)."""
    model = build_model(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) + 3.0)
    return model


def states(model: TransformerBridge) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


@pytest.fixture(scope="module")
def copied() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """(source, target after the copy, a fresh target never copied into, the count copy_into returned)."""
    source = randomised(SOURCE, seed=5)
    target = build_model(TARGET)
    count = copy_into(target, source, "src")
    return states(source), states(target), states(build_model(TARGET)), count


def test_copy_returns_every_source_weight(copied: tuple) -> None:
    source, target, fresh, count = copied
    assert count == sum(t.numel() for t in source.values())
    assert set(source) <= set(target)
    # layer 1 is new in the target: all of it keeps the target's own seeded initialisation
    layer1 = [name for name in target if name.startswith("blocks.1.")]
    assert layer1 and all(torch.equal(target[name], fresh[name]) for name in layer1)


def test_token_rows_copied_and_minus_row_fresh(copied: tuple) -> None:
    source, target, fresh, _ = copied
    for name in ("embed.weight", "unembed.weight"):
        assert target[name].shape[0] == 13 and source[name].shape[0] == 12
        assert torch.equal(target[name][:12], source[name]), name  # tokens 0-9, + and =
        assert torch.equal(target[name][12], fresh[name][12]), name  # '-' is new
        assert not torch.equal(target[name][12], source[name][11]), name
    assert torch.equal(target["unembed.bias"][:12], source["unembed.bias"])
    assert torch.equal(target["unembed.bias"][12], fresh["unembed.bias"][12])


def test_heads_copied_into_the_first_heads(copied: tuple) -> None:
    source, target, fresh, _ = copied
    width = SOURCE.n_heads * SOURCE.d_head  # 16 of the target's 24 query/key/value rows
    for part in ("q", "k", "v"):
        for kind in ("weight", "bias"):
            name = f"blocks.0.attn.{part}.{kind}"
            assert torch.equal(target[name][:width], source[name]), name
            assert torch.equal(target[name][width:], fresh[name][width:]), name
            assert target[name].shape[0] == TARGET.n_heads * TARGET.d_head
    out = "blocks.0.attn.o.weight"
    assert torch.equal(target[out][:, :width], source[out])  # the output projection is read by columns
    assert torch.equal(target[out][:, width:], fresh[out][:, width:])
    assert torch.equal(target["blocks.0.attn.o.bias"], source["blocks.0.attn.o.bias"])


def test_mlp_copied_into_the_first_neurons(copied: tuple) -> None:
    source, target, fresh, _ = copied
    neurons = SOURCE.d_mlp
    for name in ("blocks.0.mlp.in.weight", "blocks.0.mlp.in.bias"):
        assert torch.equal(target[name][:neurons], source[name]), name
        assert torch.equal(target[name][neurons:], fresh[name][neurons:]), name
    out = "blocks.0.mlp.out.weight"
    assert torch.equal(target[out][:, :neurons], source[out])
    assert torch.equal(target[out][:, neurons:], fresh[out][:, neurons:])
    assert torch.equal(target["blocks.0.mlp.out.bias"], source["blocks.0.mlp.out.bias"])


def test_position_embedding_shifts_for_the_sign(copied: tuple) -> None:
    source, target, _, _ = copied
    n = SOURCE.n_digits
    pos_source, pos_target = source["pos_embed.weight"], target["pos_embed.weight"]
    assert pos_source.shape[0] == 3 * n + 3 and pos_target.shape[0] == 3 * n + 4
    # the question and '=' (rows 0 .. 2n+1) stay where they were
    assert torch.equal(pos_target[: 2 * n + 2], pos_source[: 2 * n + 2])
    # from '=' on, each source row moves up one: the sign sits at 2n+2, so the row that predicted An
    # now predicts An from the sign's position, and so on for every answer digit
    for p in range(2 * n + 1, 3 * n + 3):
        assert torch.equal(pos_target[p + 1], pos_source[p]), p
    # the sign's own row is not the fresh initialisation: it is the copied '=' row
    assert torch.equal(pos_target[2 * n + 2], pos_source[2 * n + 1])


def test_same_shape_copy_reproduces_the_source() -> None:
    # With nothing to add, a copy is the source itself: a new seed's weights are all replaced.
    for op in ("add", "sub"):
        source = randomised(replace(SOURCE, op=op), seed=9)
        target = build_model(replace(SOURCE, op=op, seed=1))
        assert not torch.equal(target.state_dict()["embed.weight"], source.state_dict()["embed.weight"])
        copy_into(target, source)
        tokens = make_task(op, SOURCE.n_digits).generate(32, torch.Generator().manual_seed(0)).tokens
        with torch.no_grad():
            assert torch.allclose(target(tokens), source(tokens), atol=1e-5), op


def test_grown_model_computes_what_the_source_did() -> None:
    # If the leading rows of q/k/v were not whole heads (a "(d_head, head)" layout, say), the copy would
    # splice heads together. Silencing everything new (the extra head's and neurons' outputs, the new
    # layer's writes) must leave exactly the source's function, which checks that layout end to end.
    source = randomised(SOURCE, seed=6)
    target = build_model(replace(TARGET, op="add"))
    copy_into(target, source)
    state = target.state_dict()
    with torch.no_grad():
        state["blocks.0.attn.o.weight"][:, SOURCE.n_heads * SOURCE.d_head:] = 0.0
        state["blocks.0.mlp.out.weight"][:, SOURCE.d_mlp:] = 0.0
        for name in ("attn.o.weight", "attn.o.bias", "mlp.out.weight", "mlp.out.bias"):
            state[f"blocks.1.{name}"].zero_()
    tokens = make_task("add", SOURCE.n_digits).generate(64, torch.Generator().manual_seed(1)).tokens
    with torch.no_grad():
        expected, got = source(tokens), target(tokens)
    assert expected.abs().max() > 1.0  # the comparison is not between two near-zero outputs
    assert torch.allclose(got, expected, atol=1e-4)


def test_sub_into_mixed_keeps_positions() -> None:
    # Both formats are signed, so no position moves.
    source = randomised(replace(SOURCE, op="sub"), seed=2)
    target = build_model(replace(TARGET, op="mixed"))
    copy_into(target, source)
    assert torch.equal(target.state_dict()["pos_embed.weight"], source.state_dict()["pos_embed.weight"])
    assert torch.equal(target.state_dict()["embed.weight"], source.state_dict()["embed.weight"])  # all 13 rows


@pytest.mark.parametrize(("source", "field"), [
    (replace(SOURCE, d_model=32), "d_model"),
    (replace(SOURCE, n_digits=3), "n_digits"),
    (replace(TARGET, op="add", n_layers=3), "n_layers"),
    (replace(SOURCE, n_heads=4, d_head=8, d_model=16), "n_heads"),
    (replace(SOURCE, d_mlp=128), "d_mlp"),
    (replace(SOURCE, normalization="LN"), "normalization"),
], ids=["d_model", "n_digits", "layers", "heads", "d_mlp", "norm"])
def test_check_fits_names_the_mismatch(source: ModelConfig, field: str) -> None:
    with pytest.raises(ConfigError, match=field) as raised:
        check_fits(TARGET, source, "runs/src")
    assert "--init-from runs/src" in str(raised.value)


def test_check_fits_operations() -> None:
    for source_op, target_op in (("add", "add"), ("add", "sub"), ("add", "mixed"), ("sub", "sub"),
                                 ("sub", "mixed"), ("mixed", "mixed")):
        check_fits(replace(TARGET, op=target_op), replace(SOURCE, op=source_op), "src")  # allowed: no error
    for source_op, target_op in (("sub", "add"), ("mixed", "add"), ("mixed", "sub")):
        with pytest.raises(ConfigError, match="operation"):
            check_fits(replace(TARGET, op=target_op), replace(SOURCE, op=source_op), "src")


def test_refused_copy_leaves_the_target_alone() -> None:
    source = randomised(replace(SOURCE, n_layers=3), seed=4)
    target = build_model(TARGET)
    before = states(target)
    with pytest.raises(ConfigError, match="n_layers"):
        copy_into(target, source, "three-layer source")
    assert all(torch.equal(tensor, before[name]) for name, tensor in target.state_dict().items())


# ----- the command line --------------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ARITHLENS), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("init_from") / "src"
    done = run_cli("train", "--op", "add", *SRC_FLAGS, "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.slow
def test_cli_train_init_from(source_run: Path, tmp_path: Path) -> None:
    from arithlens.runs import load_model

    out = tmp_path / "mixed"
    done = run_cli("train", "--op", "mixed", "--digits", "2", "--layers", "2", "--d-model", "16", "--heads", "2",
                   "--d-mlp", "32", "--steps", "5", "--out", str(out), "--init-from", str(source_run), "--no-progress")
    assert done.returncode == 0, done.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["init_from"] == str(source_run)
    assert config["model"]["op"] == "mixed" and config["run"]["status"] == "complete"
    source = load_model(source_run)
    assert config["run"]["init_from_weights"] == sum(t.numel() for t in source.state_dict().values())
    # Five steps at lr 1e-4 move weights by well under 0.01, so the shifted position rows still show the source.
    # (The leading token rows would match anyway, both models being drawn from the same default seed.)
    trained = load_model(out).state_dict()["pos_embed.weight"]
    fresh = build_model(ModelConfig(n_digits=2, n_layers=2, d_model=16, n_heads=2, d_mlp=32, op="mixed"))
    source_pos = source.state_dict()["pos_embed.weight"]
    assert torch.allclose(trained[6:], source_pos[5:], atol=1e-2)
    assert not torch.allclose(trained[6:], fresh.state_dict()["pos_embed.weight"][6:], atol=1e-2)


@pytest.mark.slow
def test_cli_init_from_wrong_width_is_one_line(source_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "wide"
    done = run_cli("train", "--op", "mixed", "--digits", "2", "--layers", "2", "--d-model", "32", "--heads", "2",
                   "--d-mlp", "32", "--steps", "5", "--out", str(out), "--init-from", str(source_run), "--no-progress")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert "d_model 16" in lines[0] and "--d-model 16" in lines[0]
    assert not (out / "config.json").exists()  # refused before any run was written
