"""PCA and cluster separation: exact variance shares, clusters on synthetic data, and the per-head tables."""

from __future__ import annotations

import pytest
import torch

from arithlens import AdditionTask, ArithlensError, ModelConfig, build_model
from arithlens.analysis.attribution import analysis_cache
from arithlens.analysis.pca import TRI_STATES, cluster_separation, head_output_pca, head_outputs, pca, tri_state


def tiny(n_layers: int = 1):
    return build_model(ModelConfig(n_digits=3, n_layers=n_layers, d_model=32, d_mlp=64, n_heads=4))


def questions(count: int = 300):
    return AdditionTask(3).generate(count, torch.Generator().manual_seed(2), enrich_fraction=0.5)


def test_pca_explained_variance_of_known_axes():
    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([5.0, 3.0, 1.0, 0.5, 0.1])
    points = torch.randn(20000, 5, generator=generator) * scales
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=generator))
    projected, ratio, axes = pca(points @ rotation, components=3)
    expected = scales.double().pow(2) / scales.double().pow(2).sum()
    torch.testing.assert_close(ratio, expected[:3], atol=0.01, rtol=0.02)
    assert float(ratio.sum()) <= 1.0
    assert projected.shape == (20000, 3) and axes.shape == (3, 5)
    torch.testing.assert_close(axes @ axes.T, torch.eye(3, dtype=axes.dtype), atol=1e-6, rtol=0)
    all_ratio = pca(points, components=5)[1]
    assert float(all_ratio.sum()) == pytest.approx(1.0)
    # more components than the data has: the extra ones explain nothing
    assert pca(points[:2], components=3)[1].tolist()[1:] == pytest.approx([0.0, 0.0], abs=1e-12)
    with pytest.raises(ArithlensError):
        pca(points[:1])


def test_randomised_pca_matches_the_exact_svd():
    generator = torch.Generator().manual_seed(4)
    points = torch.randn(700, 200, generator=generator) @ torch.randn(200, 200, generator=generator)
    projected, ratio, axes = pca(points, components=3)  # large: randomised
    centred = points.double() - points.double().mean(0)
    singular = torch.linalg.svd(centred).S
    torch.testing.assert_close(ratio, singular[:3].pow(2) / singular.pow(2).sum(), atol=1e-3, rtol=0)
    torch.testing.assert_close(projected.var(0) * 699, singular[:3].pow(2), rtol=1e-3, atol=0)
    state = torch.get_rng_state()
    assert torch.equal(pca(points, components=3)[0], projected)  # reproducible
    assert torch.equal(torch.get_rng_state(), state)  # and the global random state is untouched


def test_separation_finds_three_clusters_and_not_noise():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(600) % 3
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = centres[labels] + torch.randn(600, 2, generator=generator)
    separation, silhouette = cluster_separation(points, labels)
    assert separation > 5 and silhouette > 0.7
    shuffled = labels[torch.randperm(600, generator=generator)]
    separation, silhouette = cluster_separation(points, shuffled)
    assert separation < 0.5 and abs(silhouette) < 0.1
    assert all(v != v for v in cluster_separation(points, torch.zeros(600, dtype=torch.long)))  # one class: NaN


def test_pca_recovers_a_planted_tri_state():
    """Synthetic head outputs that encode the tri-state of pair 1 in one direction cluster by it."""
    batch = questions(900)
    states = tri_state(batch, 1)
    generator = torch.Generator().manual_seed(1)
    directions = torch.randn(3, 32, generator=generator) * 4
    outputs = directions[states] + torch.randn(900, 32, generator=generator) * 0.3
    projected, ratio, _ = pca(outputs, components=3)
    separation, silhouette = cluster_separation(projected, states)
    assert float(ratio[:2].sum()) > 0.8  # three centres span a plane
    assert separation > 3 and silhouette > 0.6
    assert not cluster_separation(projected, tri_state(batch, 0))[1] > 0.2  # another pair's tri-state is noise


def test_tri_state_is_by_the_digit_pair_alone():
    batch = AdditionTask(3).batch_from_ints([55, 45, 12, 9], [55, 54, 12, 0])
    assert [TRI_STATES[s] for s in tri_state(batch, 0).tolist()] == ["MakeCarry1", "MakeSum9", "neither", "MakeSum9"]
    with pytest.raises(ArithlensError):
        tri_state(batch, 3)


def test_head_outputs_sum_to_the_attention_output():
    model = tiny()
    batch = questions(50)
    outputs = head_outputs(model, batch, 9, chunk_size=20)  # [head, batch, d_model]
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.tokens)
    attn_out = cache["blocks.0.hook_attn_out"][:, 9]
    torch.testing.assert_close(outputs.sum(0) + model.blocks[0].attn.b_O, attn_out, atol=1e-5, rtol=1e-5)


def test_head_output_pca_tables():
    model = tiny(n_layers=2)
    batch = questions()
    summary, points = head_output_pca(model, batch, max_points=100, cache=analysis_cache(model, batch))
    # A3, A2 (pairs below at offsets 1 and 2) and A1 (offset 1 only), 8 heads each
    assert len(summary) == (2 + 2 + 1) * 8
    assert set(summary["answer_digit"]) == {"A3", "A2", "A1"}
    assert (summary["explained_variance_top"] <= 1 + 1e-9).all()
    ev = summary[["explained_variance_pc1", "explained_variance_pc2", "explained_variance_pc3"]]
    assert (ev.diff(axis=1).iloc[:, 1:] <= 1e-9).all().all()  # sorted, largest first
    a2 = summary[(summary["answer_digit"] == "A2") & (summary["pair_offset"] == 1)].iloc[0]
    assert a2["pair_digit"] == 1 and a2["position"] == 8
    assert a2["n_make_carry1"] + a2["n_make_sum9"] + a2["n_neither"] == len(batch)
    assert len(points) == 3 * 8 * 100
    assert set(points["tri_state_below"]) <= set(TRI_STATES)
    assert set(points.loc[points["answer_digit"] == "A1", "tri_state_below2"]) == {"n/a"}
    fresh, _ = head_output_pca(model, batch, answer_digits=[2], max_points=10)
    torch.testing.assert_close(torch.tensor(fresh["separation"].to_numpy()),
                               torch.tensor(summary.loc[summary["answer_digit"] == "A2", "separation"].to_numpy()))
    with pytest.raises(ArithlensError, match="A0"):
        head_output_pca(model, batch, answer_digits=[0])
    with pytest.raises(ArithlensError, match="3-digit"):
        head_output_pca(model, AdditionTask(4).generate(8, torch.Generator().manual_seed(0)))
