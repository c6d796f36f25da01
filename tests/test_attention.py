"""Attention patterns, class means and examples, on tiny models including one with known (uniform) attention."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from arithlens import AdditionTask, ArithlensError, ModelConfig, QuestionCategory, build_model
from arithlens.analysis.attention import (
    attention_examples,
    attention_patterns,
    circuitsvis_html,
    mean_attention_by_class,
    top_attended,
)
from arithlens.analysis.attribution import analysis_cache


def tiny(n_layers: int = 1):
    return build_model(ModelConfig(n_digits=3, n_layers=n_layers, d_model=32, d_mlp=64, n_heads=4))


def questions(count: int = 120):
    return AdditionTask(3).generate(count, torch.Generator().manual_seed(1), enrich_fraction=0.5)


def uniform_attention_model():
    """Zero queries: every score is 0, so each query attends equally to itself and all earlier positions."""
    model = tiny()
    state = model.state_dict()
    state["blocks.0.attn.q.weight"] = torch.zeros_like(state["blocks.0.attn.q.weight"])
    state["blocks.0.attn.q.bias"] = torch.zeros_like(state["blocks.0.attn.q.bias"])
    model.load_state_dict(state)
    return model


def test_patterns_shape_rows_sum_to_one_and_are_causal():
    model = tiny(n_layers=2)
    batch = questions()
    patterns = attention_patterns(model, batch, chunk_size=50)
    assert patterns.shape == (120, 2, 4, 12, 12)
    torch.testing.assert_close(patterns.sum(-1), torch.ones(120, 2, 4, 12))
    assert (patterns.triu(diagonal=1) == 0).all()
    cached = attention_patterns(model, batch, cache=analysis_cache(model, batch))
    torch.testing.assert_close(cached, patterns)


def test_known_structure_uniform_attention():
    model = uniform_attention_model()
    batch = questions(40)
    patterns = attention_patterns(model, batch)
    expected = torch.tril(torch.ones(12, 12)) / torch.arange(1, 13)[:, None]
    torch.testing.assert_close(patterns, expected.expand_as(patterns))
    table = mean_attention_by_class(model, batch)
    row = table[(table["category"] == "all") & (table["head"] == 2) & (table["query_pos"] == 10)]
    assert len(row) == 11 and row["weight"].tolist() == pytest.approx([1 / 11] * 11)
    assert row["query_name"].iloc[0] == "A1"  # position 10 holds A1 (and predicts A0)


def test_mean_by_class_matches_the_per_question_patterns():
    model = tiny()
    batch = questions()
    patterns = attention_patterns(model, batch)
    table = mean_attention_by_class(model, batch, chunk_size=35)
    assert set(table.columns) == {"category", "questions", "layer", "head", "query_pos", "query_name", "key_pos",
                                  "key_name", "weight"}
    for category in QuestionCategory:
        mask = batch.category == int(category)
        rows = table[table["category"] == category.label]
        assert rows["questions"].iloc[0] == int(mask.sum())
        mean = patterns[mask].mean(0)
        for row in rows.sample(20, random_state=0).itertuples():
            assert row.weight == pytest.approx(float(mean[row.layer, row.head, row.query_pos, row.key_pos]), abs=1e-6)
    assert (table["key_pos"] <= table["query_pos"]).all()
    assert len(table) == 4 * 4 * 78  # 4 categories x 4 heads x causal entries of 12 positions


def test_examples_cover_each_category_or_the_given_questions():
    model = tiny()
    task = AdditionTask(3)
    examples = attention_examples(model, task, per_class=2)
    by_example = examples.groupby("example")[["question", "category"]].first()
    assert sorted(by_example["category"]) == ["BaseAdd", "BaseAdd", "UseCarry1", "UseCarry1", "UseSum9", "UseSum9"]
    given = attention_examples(model, task, questions=["445+555=", "123+456="])
    assert list(given.groupby("example")["question"].first()) == ["445+555=", "123+456="]
    assert list(given.groupby("example")["category"].first()) == ["UseSum9", "BaseAdd"]
    with pytest.raises(ArithlensError):
        attention_examples(model, AdditionTask(4))
    with pytest.raises(ArithlensError):
        attention_examples(model, task, per_class=0)


def test_top_attended_ranks_keys_by_weight():
    model = tiny()
    table = mean_attention_by_class(model, questions())
    top = top_attended(table, top_k=2, min_weight=0.0)
    assert set(top.groupby(["layer", "head", "query_pos"]).size()) <= {1, 2}
    for _, group in top.groupby(["layer", "head", "query_pos"]):
        assert list(group["rank"]) == list(range(len(group)))
        assert group["weight"].is_monotonic_decreasing
    assert (top_attended(table, min_weight=0.3)["weight"] >= 0.3).all()
    with pytest.raises(ArithlensError, match="category"):
        top_attended(table, category="nope")


def test_bad_input_is_an_arithlens_error():
    model = tiny()
    with pytest.raises(ArithlensError, match="3-digit"):
        attention_patterns(model, AdditionTask(2).generate(4, torch.Generator().manual_seed(0)))
    with pytest.raises(ArithlensError, match="empty"):
        mean_attention_by_class(model, questions().select(slice(0, 0)))


@pytest.mark.skipif(importlib.util.find_spec("circuitsvis") is not None, reason="circuitsvis is installed")
def test_circuitsvis_is_optional():
    with pytest.raises(ArithlensError, match="pip install circuitsvis"):
        circuitsvis_html(tiny(), AdditionTask(3), "123+456=")
