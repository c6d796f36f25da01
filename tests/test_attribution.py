"""Logit lens and direct logit attribution on tiny untrained models: exact identities, not tuned numbers."""

from __future__ import annotations

import pytest
import torch

from arithlens import AdditionTask, ArithlensError, ModelConfig, build_model
from arithlens.analysis.attribution import (
    analysis_cache,
    digit_class_masks,
    direct_logit_attribution,
    head_source_attribution,
    logit_lens,
    logit_lens_logits,
)


def tiny(n_digits: int = 3, n_layers: int = 1, normalization: str | None = None):
    return build_model(ModelConfig(n_digits=n_digits, n_layers=n_layers, d_model=32, d_mlp=64, n_heads=4,
                                   normalization=normalization))


def questions(n_digits: int = 3, count: int = 96, seed: int = 0):
    return AdditionTask(n_digits).generate(count, torch.Generator().manual_seed(seed), enrich_fraction=0.5)


@pytest.mark.parametrize("normalization", [None, "LN", "RMS"])
def test_logit_lens_final_stage_is_the_models_logits(normalization):
    model = tiny(n_layers=2, normalization=normalization)
    batch = questions()
    logits, labels = logit_lens_logits(model, batch, chunk_size=40)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]
    assert logits.shape == (5, len(batch), 4, 12)
    with torch.no_grad():
        expected = model(batch.tokens)[:, AdditionTask(3).answer_logit_positions]
    torch.testing.assert_close(logits[-1], expected, atol=1e-5, rtol=1e-5)
    # the first stage sees only the embeddings: it differs from the final logits
    assert not torch.allclose(logits[0], logits[-1])


def test_logit_lens_table_matches_the_final_logits():
    model = tiny()
    batch = questions()
    table = logit_lens(model, batch)
    final = table[(table["stage"] == "final_post") & (table["subtask_class"] == "all")].set_index("answer_digit")
    with torch.no_grad():
        logits = model(batch.tokens)[:, AdditionTask(3).answer_logit_positions]
    targets = batch.tokens[:, 8:]
    correct = logits.gather(-1, targets[..., None]).squeeze(-1)  # [batch, 4]
    accuracy = (logits[..., :10].argmax(-1) == targets).double().mean(0)
    for column, digit in enumerate(["A3", "A2", "A1", "A0"]):
        assert final.loc[digit, "correct_logit"] == pytest.approx(float(correct[:, column].mean()), abs=1e-5)
        assert final.loc[digit, "accuracy"] == pytest.approx(float(accuracy[column]))
        assert final.loc[digit, "questions"] == len(batch)
    assert set(table.columns) == {"answer_digit", "position", "subtask_class", "stage_index", "stage", "questions",
                                  "correct_logit", "logit_diff", "accuracy", "loss"}
    # logit_diff is correct minus best wrong digit, so accuracy 1 <=> positive diff per question; means agree in sign
    assert (table.loc[table["accuracy"] == 0, "logit_diff"] < 0).all()


@pytest.mark.parametrize("normalization", [None, "LN", "RMS", "LNPre"])
def test_dla_components_sum_to_the_logit_and_logit_diff(normalization):
    model = tiny(n_layers=2, normalization=normalization)
    batch = questions()
    dla = direct_logit_attribution(model, batch, chunk_size=50)
    lens = logit_lens(model, batch)
    final = lens[lens["stage"] == "final_post"].set_index(["answer_digit", "subtask_class"])
    sums = dla[dla["questions"] > 0].groupby(["answer_digit", "subtask_class"])[["logit_attr", "logit_diff_attr"]].sum()
    assert len(sums) >= 10  # A3 all; A2, A1: all, BA, UC1 and mostly US9; A0 all, BA
    for key, row in sums.iterrows():
        assert row["logit_attr"] == pytest.approx(final.loc[key, "correct_logit"], abs=1e-4)
        assert row["logit_diff_attr"] == pytest.approx(final.loc[key, "logit_diff"], abs=1e-4)
    # 2 layers x 4 heads + 2 MLPs + embed + pos_embed + bias + unembed_bias per digit and class
    assert dla.groupby(["answer_digit", "subtask_class"]).size().eq(14).all()
    heads = dla[dla["kind"] == "head"]
    assert set(heads["node"][heads["answer_digit"] == "A0"]) == {f"P10L{l}H{h}" for l in range(2) for h in range(4)}
    assert set(dla.loc[dla["kind"] == "mlp", "node"][dla["answer_digit"] == "A3"]) == {"P7L0M", "P7L1M"}


def test_dla_equals_transformer_lens_logit_attrs_without_a_norm():
    model = tiny()
    batch = questions(count=64)
    dla = direct_logit_attribution(model, batch)
    position = 10  # predicts A0
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.tokens)
        stack, labels = cache.get_full_resid_decomposition(expand_neurons=False, pos_slice=position,
                                                           return_labels=True)
        attrs = cache.logit_attrs(stack, tokens=batch.tokens[:, -1], pos_slice=position)  # [component, batch]
    ours = dla[(dla["answer_digit"] == "A0") & (dla["subtask_class"] == "all")].set_index("component")
    for index, label in enumerate(labels):
        assert ours.loc[label, "logit_attr"] == pytest.approx(float(attrs[index].mean()), abs=1e-5)


@pytest.mark.parametrize("normalization", [None, "LN"])
def test_source_attribution_sums_to_each_heads_dla(normalization):
    model = tiny(n_layers=2, normalization=normalization)
    batch = questions(count=64)
    dla = direct_logit_attribution(model, batch)
    sources = head_source_attribution(model, batch, chunk_size=30)
    summed = sources[sources["questions"] > 0].groupby(["answer_digit", "subtask_class", "node"])[["logit_attr", "logit_diff_attr"]].sum()
    heads = dla[dla["kind"] == "head"].set_index(["answer_digit", "subtask_class", "node"])
    for key, row in summed.iterrows():
        assert row["logit_attr"] == pytest.approx(heads.loc[key, "logit_attr"], abs=1e-4)
        assert row["logit_diff_attr"] == pytest.approx(heads.loc[key, "logit_diff_attr"], abs=1e-4)
    a0 = sources[(sources["answer_digit"] == "A0") & (sources["node"] == "P10L0H0") & (sources["subtask_class"] == "all")]
    assert list(a0["source_pos"]) == list(range(11))  # causal: only positions up to the query
    assert list(a0["source_name"])[:4] == ["D2", "D1", "D0", "+"]


def test_shared_cache_gives_the_same_tables():
    model = tiny(normalization="LN")
    batch = questions(count=80)
    cache = analysis_cache(model, batch, chunk_size=32)
    for function in (logit_lens, direct_logit_attribution, head_source_attribution):
        fresh = function(model, batch, chunk_size=25)
        shared = function(model, batch, cache=cache)
        numeric = fresh.select_dtypes("number").columns
        torch.testing.assert_close(torch.tensor(shared[numeric].to_numpy()), torch.tensor(fresh[numeric].to_numpy()),
                                   atol=1e-5, rtol=1e-5, equal_nan=True)
    with pytest.raises(ArithlensError, match="cache holds 80"):
        logit_lens(model, batch.select(slice(0, 10)), cache=cache)


def test_digit_classes_partition_the_questions():
    batch = questions(count=200)
    for digit in range(3):
        masks = digit_class_masks(batch, digit)
        total = masks["BA"].long() + masks["UC1"].long() + masks["US9"].long()
        assert (total == 1).all()
        assert torch.equal(masks["US9"], batch.use_sum9[:, digit])
    assert set(digit_class_masks(batch, 3)) == {"all"}
    with pytest.raises(ArithlensError):
        digit_class_masks(batch, 4)


def test_bad_input_is_an_arithlens_error():
    model = tiny()
    with pytest.raises(ArithlensError, match="3-digit"):
        logit_lens(model, questions(n_digits=2))
    with pytest.raises(ArithlensError, match="empty"):
        direct_logit_attribution(model, questions().select(slice(0, 0)))
    with pytest.raises(ArithlensError, match="chunk_size"):
        logit_lens(model, questions(), chunk_size=0)
