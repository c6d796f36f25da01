"""Activation patching: pair construction, the self-patch no-op, and agreement with TransformerLens's full sweep."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from transformer_lens import patching

from arithlens import AdditionTask, ArithlensError, ModelConfig, build_model
from arithlens.analysis.patching import (
    DEFAULT_PAIRS,
    PAIR_KINDS,
    pair_metrics,
    activation_patching,
    make_patch_pairs,
    pair_kinds,
    paired_difference_interval,
    patch_answer_digit,
    patch_sweep,
    wilson_interval,
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
    metrics = pair_metrics(target, pairs.clean.tokens[:, 9], pairs.corrupted.tokens[:, 9])
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
    metrics = pair_metrics(target, pairs.clean.tokens[:, 10], pairs.corrupted.tokens[:, 10])
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


@pytest.mark.parametrize(("n_layers", "normalization"), [(1, None), (1, "LN"), (2, None), (2, "LN"), (3, "LN")])
def test_fast_engine_equals_transformer_lens_patching(n_layers, normalization):
    """The engine's patching and TransformerLens's generic_activation_patch on the bridge, row for row."""
    model = build_model(ModelConfig(n_digits=3, n_layers=n_layers, d_model=32, d_mlp=64, n_heads=4,
                                    normalization=normalization)).to(torch.float64)
    kinds = [("BaseAdd", 1), ("MakeCarry1", 1), ("UseSum9", 3), ("MakeSum9", 2)]
    fast = activation_patching(model, count=24, kinds=kinds)
    bridge = activation_patching(model, count=24, kinds=kinds, fast=False)
    labels = ["kind", "answer_digit", "component", "layer", "head", "position", "node", "pairs"]
    pd.testing.assert_frame_equal(fast[labels], bridge[labels])
    # generic_activation_patch keeps its results in float32, so logit differences agree to its rounding ...
    # (recovery, their ratio over an untrained model's tiny span, is held to its formula elsewhere)
    logit = ["clean_logit_diff", "corrupted_logit_diff", "patched_logit_diff", "recovery"]
    pd.testing.assert_frame_equal(fast[logit[:3]], bridge[logit[:3]], rtol=1e-5, atol=1e-5)
    # ... and of float64 models not one prediction may flip (one flip would move a rate by 1/24)
    counts = [c for c in fast.columns if c not in labels + logit + ["position_name"]]
    pd.testing.assert_frame_equal(fast[counts], bridge[counts], rtol=0, atol=1e-6)
    moved = (fast["patched_logit_diff"] - fast["corrupted_logit_diff"]).abs()
    assert (moved > 1e-3).any()  # the comparison is not between two no-ops
    assert len(fast) > 5 * len(kinds) or n_layers == 1  # earlier layers' positions are patched too


def test_activation_patching_table():
    model = tiny()
    table = activation_patching(model, count=8)
    assert set(table.columns) == {"kind", "answer_digit", "component", "layer", "head", "position", "position_name",
                                  "node", "pairs", "clean_logit_diff", "corrupted_logit_diff", "patched_logit_diff",
                                  "recovery", "flips", "clean_correct", "baseline_flips", "net_flips",
                                  "flips_ci_low", "flips_ci_high", "net_flips_ci_low", "net_flips_ci_high"}
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


def test_flips_are_reported_net_of_the_unpatched_baseline_with_intervals():
    """A pair whose corrupted question already gives the clean digit is no evidence that the patch flipped it."""
    model = tiny()
    table = activation_patching(model, count=40, kinds=[("MakeCarry1", 1), ("BaseAdd", 0)])
    torch.testing.assert_close(torch.tensor(table["net_flips"].to_numpy()),
                               torch.tensor((table["flips"] - table["baseline_flips"]).to_numpy()))
    assert (table["baseline_flips"] > 0).any()  # an untrained model's corrupted answers often "flip" unpatched
    assert (table["flips_ci_low"] <= table["flips"]).all() and (table["flips"] <= table["flips_ci_high"]).all()
    assert (table["net_flips_ci_low"] <= table["net_flips"]).all()
    assert (table["net_flips"] <= table["net_flips_ci_high"]).all()
    assert (table["net_flips_ci_low"] >= -1).all() and (table["net_flips_ci_high"] <= 1).all()
    assert DEFAULT_PAIRS >= 200
    assert activation_patching.__kwdefaults__["count"] == DEFAULT_PAIRS


def interval(first, second):
    return tuple(float(bound) for bound in paired_difference_interval(first, second))


def test_confidence_intervals():
    low, high = wilson_interval(torch.tensor([0.0, 10.0, 5.0]), 10)
    assert low[0] == 0 and high[0] == pytest.approx(1.96**2 / (10 + 1.96**2), abs=1e-4)  # 0 of 10
    assert high[1] == 1 and low[1] == pytest.approx(10 / (10 + 1.96**2), abs=1e-4)
    assert float(low[2] + high[2]) == pytest.approx(1.0) and 0.2 < low[2] < 0.25  # 5/10: about 0.237 .. 0.763
    patched = torch.tensor([1.0] * 30 + [0.0] * 70)
    same = interval(patched, patched)  # the patch changes no pair
    assert same[0] < 0 < same[1] and same[0] == pytest.approx(-same[1])
    both = torch.tensor([1.0] * 46 + [0.0] * 54)
    flips = torch.tensor([1.0] * 54 + [0.0] * 46)
    more = interval(flips, both)  # 8 pairs flip only with the patch, none only without: a real effect
    assert 0 < more[0] < 0.08 < more[1]
    assert interval(both, flips) == pytest.approx((-more[1], -more[0]))
    swapped = interval(flips, torch.tensor([0.0] * 54 + [1.0] * 46))
    assert swapped[0] < 0 < swapped[1]  # 54% vs 46% of pairs, every pair swapped: no evidence at all
    low, high = paired_difference_interval(torch.stack([flips, both]), torch.stack([both, both]))  # [rows, pairs]
    assert (float(low[0]), float(high[0])) == pytest.approx(more) and low[1] < 0 < high[1]


def test_report_patching_grids_draw_net_flips():
    from arithlens.report import ANALYSIS_PARTS

    table = activation_patching(tiny(), count=40, kinds=[("MakeCarry1", 1)])
    make = next(make for key, _, _, parts in ANALYSIS_PARTS if key == "patching"
                for _, name, make in parts if name == "patching")
    figures = make(table, {}, 3, 1, 4)
    assert [fig.layout.coloraxis.colorbar.title.text for fig in figures] == ["recovery", "net_flips"]
    drawn = sorted(float(v) for row in figures[1].data[0].z for v in row)
    assert drawn == pytest.approx(sorted(table["net_flips"].round(4)), abs=1e-9)
    assert "95% CI" in figures[1].data[0].hovertemplate and "40 pairs per kind" in figures[1].layout.title.text
