"""Activation patching: pair construction, the self-patch no-op, and agreement with TransformerLens's full sweep."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching

from arithlens import AdditionTask, ArithlensError, ModelConfig, build_model
from arithlens.analysis.patching import (
    PAIR_KINDS,
    _metrics,
    activation_patching,
    make_patch_pairs,
    pair_kinds,
    patch_answer_digit,
    patch_sweep,
)


def tiny(n_layers: int = 1, n_digits: int = 3):
    return build_model(ModelConfig(n_digits=n_digits, n_layers=n_layers, d_model=32, d_mlp=64, n_heads=4))


def operands(batch, n):
    """x and y digits [batch, n], units first."""
    x = batch.tokens[:, :n].flip(1)
    y = batch.tokens[:, n + 1 : 2 * n + 1].flip(1)
    return x, y


def test_pair_kinds_per_digit():
    assert pair_kinds(3) == [("MakeCarry1", 3), ("MakeSum9", 3), ("UseSum9", 3),
                             ("BaseAdd", 2), ("MakeCarry1", 2), ("MakeSum9", 2), ("UseSum9", 2),
                             ("BaseAdd", 1), ("MakeCarry1", 1), ("BaseAdd", 0)]
    assert len(pair_kinds(5)) == 18


@pytest.mark.parametrize("kind,digit", pair_kinds(4))
def test_pairs_differ_in_exactly_their_sub_task(kind, digit):
    n = 4
    pairs = make_patch_pairs(AdditionTask(n), kind, digit, count=200, seed=3)
    clean, corrupt = pairs.clean, pairs.corrupted
    (cx, cy), (kx, ky) = operands(clean, n), operands(corrupt, n)
    changed = ((cx != kx) | (cy != ky)).any(dim=0)  # which digit pairs ever differ
    column = 2 * n + 2 + (n - digit)
    assert (clean.tokens[:, column] != corrupt.tokens[:, column]).all()
    if kind == "BaseAdd":
        assert changed.tolist() == [d == digit for d in range(n)]
        assert not clean.use_carry1[:, digit].any() and not corrupt.use_carry1[:, digit].any()
    elif kind == "MakeCarry1":
        assert changed.tolist() == [d == digit - 1 for d in range(n)]
        assert (clean.base_add[:, digit - 1] >= 10).all() and (corrupt.base_add[:, digit - 1] <= 8).all()
    elif kind == "MakeSum9":
        assert changed.tolist() == [d == digit - 1 for d in range(n)]
        assert clean.use_carry1[:, digit - 1].all() and corrupt.use_carry1[:, digit - 1].all()
        assert clean.use_sum9[:, digit - 1].all() and (corrupt.base_add[:, digit - 1] == 8).all()
    else:
        assert changed.tolist() == [d == digit - 2 for d in range(n)]
        assert (clean.base_add[:, digit - 1] == 9).all() and (corrupt.base_add[:, digit - 1] == 9).all()
        assert clean.use_sum9[:, digit - 1].all() and not corrupt.use_carry1[:, digit - 1].any()
    if digit < n:
        assert clean.use_carry1[:, digit].tolist() != corrupt.use_carry1[:, digit].tolist() or kind == "BaseAdd"
    again = make_patch_pairs(AdditionTask(n), kind, digit, count=200, seed=3)
    assert torch.equal(again.clean.tokens, clean.tokens)  # seeded


def test_bad_pair_requests():
    task = AdditionTask(3)
    with pytest.raises(ArithlensError, match="unknown pair kind"):
        make_patch_pairs(task, "Carry", 1)
    with pytest.raises(ArithlensError, match="answer digits"):
        make_patch_pairs(task, "UseSum9", 1)
    with pytest.raises(ArithlensError, match="answer digits"):
        make_patch_pairs(task, "BaseAdd", 3)
    with pytest.raises(ArithlensError, match="count"):
        make_patch_pairs(task, "BaseAdd", 0, count=0)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_patching_a_node_with_its_own_activation_is_a_no_op(n_layers):
    model = tiny(n_layers=n_layers)
    pairs = make_patch_pairs(AdditionTask(3), "MakeCarry1", 2, count=24)
    tokens = pairs.corrupted.tokens
    target = AdditionTask(3).logit_position_for_answer_digit(2)
    metrics = _metrics(target, pairs.clean.tokens[:, 9], pairs.corrupted.tokens[:, 9])
    with torch.no_grad():
        logits, own_cache = model.run_with_cache(tokens)
    unpatched = torch.stack([metric(logits) for metric in metrics.values()])  # [metric, batch]
    for component, index_df, values in patch_sweep(model, tokens, own_cache, metrics, target):
        assert values.shape == (2, len(index_df), 24)
        torch.testing.assert_close(values, unpatched[:, None].expand_as(values), atol=1e-6, rtol=0)
        assert len(index_df) == (4 if component == "head" else 1) * (1 if n_layers == 1 else 1 + target + 1)


@pytest.mark.slow
def test_restricted_sweep_matches_the_full_transformer_lens_sweep():
    model = tiny(n_layers=2)
    task = AdditionTask(3)
    pairs = make_patch_pairs(task, "BaseAdd", 1, count=16)
    target = task.logit_position_for_answer_digit(1)
    metrics = _metrics(target, pairs.clean.tokens[:, 10], pairs.corrupted.tokens[:, 10])
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(pairs.clean.tokens)
        baseline = metrics["logit_diff"](model(pairs.corrupted.tokens)).mean()

    def mean_logit_diff(logits):
        return metrics["logit_diff"](logits).mean()

    full = patching.get_act_patch_attn_head_out_by_pos(model, pairs.corrupted.tokens, clean_cache, mean_logit_diff)
    assert full.shape == (2, 12, 4)
    table = patch_answer_digit(model, [pairs])
    heads = table[table["component"] == "head"]
    for row in heads.itertuples():
        assert row.patched_logit_diff == pytest.approx(float(full[row.layer, row.position, row.head]), abs=1e-5)
    # what was skipped cannot change the logit: later positions, last-layer positions other than the target,
    # and positions before the first digit where the pair differs (x_1 at position 1)
    torch.testing.assert_close(full[:, target + 1 :], baseline.expand_as(full[:, target + 1 :]))
    torch.testing.assert_close(full[1, :target], baseline.expand_as(full[1, :target]))
    torch.testing.assert_close(full[0, :1], baseline.expand_as(full[0, :1]))
    assert sorted(set(heads.loc[heads["layer"] == 0, "position"])) == list(range(1, target + 1))
    assert len(heads) == 4 * target + 4


def test_activation_patching_table():
    model = tiny()
    table = activation_patching(model, count=8)
    assert set(table.columns) == {"kind", "answer_digit", "component", "layer", "head", "position", "position_name",
                                  "node", "pairs", "clean_logit_diff", "corrupted_logit_diff", "patched_logit_diff",
                                  "recovery", "flips", "clean_correct", "baseline_flips"}
    assert len(table) == len(pair_kinds(3)) * 5  # 4 heads + 1 MLP at the predicting position
    assert set(table["kind"]) == set(PAIR_KINDS)
    a0 = table[table["answer_digit"] == "A0"]
    assert set(a0["node"]) == {"P10L0H0", "P10L0H1", "P10L0H2", "P10L0H3", "P10L0M"}
    assert set(a0["position_name"]) == {"A1"}
    recovery = (table["patched_logit_diff"] - table["corrupted_logit_diff"]) / (
        table["clean_logit_diff"] - table["corrupted_logit_diff"])
    torch.testing.assert_close(torch.tensor(table["recovery"].to_numpy()), torch.tensor(recovery.to_numpy()))
    done = []
    activation_patching(model, count=4, kinds=[("BaseAdd", 0), ("MakeCarry1", 1)], progress=done.append)
    assert done == [1, 1]
    some = activation_patching(model, count=4, kinds=[("BaseAdd", 0), ("MakeCarry1", 1)], nodes=["P10L0H1", "P10L0M"])
    assert list(some["node"]) == ["P10L0H1", "P10L0M"]  # A1 (position 9) has none of these nodes
    every = activation_patching(model, count=4, kinds=[("BaseAdd", 0)]).set_index("node")
    assert some["patched_logit_diff"].tolist() == pytest.approx(
        every.loc[["P10L0H1", "P10L0M"], "patched_logit_diff"].tolist(), abs=1e-6)
    with pytest.raises(ArithlensError, match="bad node name"):
        activation_patching(model, count=4, nodes=["L0H1"])


def test_heads_that_write_nothing_have_no_patching_effect():
    """Known structure: with W_O = 0 no head writes to the residual stream, so patching any head changes nothing."""
    model = tiny()
    state = model.state_dict()
    state["blocks.0.attn.o.weight"] = torch.zeros_like(state["blocks.0.attn.o.weight"])
    model.load_state_dict(state)
    pairs = make_patch_pairs(AdditionTask(3), "MakeCarry1", 1, count=16)
    table = patch_answer_digit(model, [pairs])
    heads = table[table["component"] == "head"]
    assert len(heads) == 4
    assert heads["patched_logit_diff"].tolist() == pytest.approx(heads["corrupted_logit_diff"].tolist(), abs=1e-5)
    assert (heads["recovery"].abs() < 1e-4).all() or heads["recovery"].isna().all()
