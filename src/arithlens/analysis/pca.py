"""PCA of head outputs at an answer-predicting position, coloured by the tri-state of a digit pair below.

The published 1-layer model has, for A3, a head that reads digit pair 2 and
carries a tri-state: the pair makes a carry (x + y >= 10, "MakeCarry1"), sums to
exactly 9 ("MakeSum9"), or neither (at most one of the two holds). PCA of that
head's output over many questions shows three clusters. Here every head at the
position predicting A_d is projected on its top principal components
(an SVD of the centred outputs, randomised for large inputs; no sklearn) and coloured by the
tri-state of pair d-1 (and d-2), with two measures of how well the colours
cluster in the top-component space:

- separation: mean distance between class centroids divided by the mean
  distance of a point to its own class centroid (0 when the classes overlap
  completely; above ~2 the clusters are visibly apart);
- silhouette: the usual mean silhouette coefficient in [-1, 1] (near 0 for
  no structure, near 1 for tight, distinct clusters), on at most 2000 points.

The tri-state uses x_d + y_d alone (not the carry coming in), as the published
work does, so the three states never overlap. For subtraction it is MB/MZ/neither
(a_d < b_d, a_d == b_d, a_d > b_d), as the papers use it, and the tables say so. Head outputs are
`cache.stack_head_results` (hook_z @ W_O, without b_O) at that position.
"""

from __future__ import annotations

import pandas as pd
import torch
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.model_bridge import TransformerBridge

from arithlens.analysis.accuracy import check_batch
from arithlens.analysis.attribution import cached_chunks
from arithlens.analysis.nodes import node_name
from arithlens.errors import ArithlensError
from arithlens.model import model_config_of
from arithlens.vocabulary import localise
from arithlens.task import AdditionBatch, task_for, task_for_batch

TRI_STATES = ("MakeCarry1", "MakeSum9", "neither")
EXACT_PCA_LIMIT = 64  # above this many points and dims, the randomised SVD
SILHOUETTE_POINTS = 2000  # pairwise distances grow quadratically; 2000 points pin the mean down well


def tri_state(batch: AdditionBatch, digit: int) -> torch.Tensor:
    """Index into TRI_STATES [batch] of digit pair `digit`: 0 MakeCarry1, 1 MakeSum9, 2 neither."""
    if not 0 <= digit < batch.n_digits:
        raise ArithlensError(f"digit pair must be 0..{batch.n_digits - 1}, got {digit}")
    # base_carry: the pair makes a carry (borrow) alone; make_pass: it passes one on (sum 9; equal digits).
    return torch.where(batch.base_carry[:, digit], 0, torch.where(batch.make_pass[:, digit], 1, 2))


def pca(points: torch.Tensor, components: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(projections [n, k], explained variance ratio [k], principal axes [k, d]) of points [n, d].

    The ratios are shares of the total variance, so they sum to at most 1.
    Small inputs get an exact SVD; larger ones `torch.svd_lowrank` (randomised
    subspace iteration, several times faster at 1000 x 512 and within 1e-3 of exact
    for the top components), seeded inside `fork_rng` so the result is
    reproducible and the global random state is left alone.
    """
    if points.ndim != 2 or points.shape[0] < 2:
        raise ArithlensError(f"PCA needs a [points, dims] tensor with at least 2 points, got {tuple(points.shape)}")
    if not isinstance(components, int) or components < 1:
        raise ArithlensError(f"components must be an integer >= 1, got {components!r}")
    centred = points.double() - points.double().mean(dim=0)
    if min(centred.shape) <= EXACT_PCA_LIMIT:
        _, singular, axes = torch.linalg.svd(centred, full_matrices=False)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            _, singular, basis = torch.svd_lowrank(centred, q=min(components + 20, *centred.shape), niter=6)
        axes = basis.T
    k = min(components, singular.shape[0])
    total = centred.pow(2).sum()
    ratio = singular[:k].pow(2) / total if total > 0 else torch.zeros(k, dtype=torch.float64)
    axes = axes[:k]
    if k < components:  # fewer points or dims than asked: the missing components explain nothing
        ratio = torch.cat([ratio, torch.zeros(components - k, dtype=torch.float64)])
        axes = torch.cat([axes, torch.zeros(components - k, axes.shape[1], dtype=axes.dtype)])
    return centred @ axes.T, ratio, axes


def cluster_separation(points: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(separation ratio, mean silhouette) of labelled points [n, k]; NaN with fewer than 2 classes.

    Classes with a single point are left out.
    """
    points = points.double()
    classes = [c for c in labels.unique().tolist() if int((labels == c).sum()) >= 2]
    if len(classes) < 2:
        return float("nan"), float("nan")
    keep = torch.isin(labels, torch.tensor(classes, device=labels.device))
    points, labels = points[keep], labels[keep]
    centroids = torch.stack([points[labels == c].mean(dim=0) for c in classes])  # [class, k]
    index = torch.tensor([classes.index(c) for c in labels.tolist()])
    within = (points - centroids[index]).norm(dim=1).mean()
    between = torch.pdist(centroids).mean()
    separation = float(between / within) if within > 0 else float("inf")

    sample = points[:SILHOUETTE_POINTS]
    sample_index = index[:SILHOUETTE_POINTS]
    distances = torch.cdist(sample, sample)  # [m, m]
    member = torch.nn.functional.one_hot(sample_index, len(classes)).double()  # [m, class]
    sizes = member.sum(dim=0)  # [class]
    mean_to = (distances @ member) / sizes.clamp(min=1)  # [m, class], includes self for own class
    own_size = sizes[sample_index]
    own = (distances @ member).gather(1, sample_index[:, None]).squeeze(1) / (own_size - 1).clamp(min=1)
    other = mean_to.masked_fill(member.bool() | (sizes == 0)[None], float("inf")).min(dim=1).values
    score = (other - own) / torch.maximum(own, other)
    score = torch.where(own_size > 1, score, torch.zeros_like(score)).nan_to_num(0.0)
    return separation, float(score.mean())


def head_outputs(model: TransformerBridge, batch: AdditionBatch, position: int, *, chunk_size: int = 1024,
                 cache: ActivationCache | None = None) -> torch.Tensor:
    """Every head's output at `position`, [layer * head, batch, d_model] (index = layer * n_heads + head)."""
    check_batch(model, batch)
    seq_len = task_for(model_config_of(model)).seq_len
    if not 0 <= position < seq_len:
        raise ArithlensError(f"position must be 0..{seq_len - 1}, got {position}")
    parts = []
    with torch.inference_mode():
        for _, part_cache in cached_chunks(model, batch, chunk_size, ("attn.hook_z",), cache):
            parts.append(part_cache.stack_head_results(layer=-1, pos_slice=position).cpu())
    return torch.cat(parts, dim=1)


def head_output_pca(model: TransformerBridge, batch: AdditionBatch, *, answer_digits: list[int] | None = None,
                    pair_offsets: tuple[int, ...] = (1, 2), components: int = 3, max_points: int = 1000,
                    chunk_size: int = 1024, cache: ActivationCache | None = None
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """PCA of every head at the position predicting each answer digit A_d (d >= 1).

    Returns (summary, points). summary columns: [answer_digit, position, layer,
    head, node, pair_digit, pair_offset, questions, n_make_carry1, n_make_sum9,
    n_neither, explained_variance_pc1 .. _pc{components}, explained_variance_top,
    separation, silhouette], one row per head and pair d - offset.
    points columns: [answer_digit, position, layer, head, node, question,
    pc1 .. pc{components}, tri_state_below, tri_state_below2] for the first
    `max_points` questions ("n/a" where the pair does not exist).
    """
    n = check_batch(model, batch)
    config = model_config_of(model)
    task = task_for_batch(config, batch)
    digits = list(range(n, 0, -1)) if answer_digits is None else list(answer_digits)
    for digit in digits:
        if not 1 <= digit <= n:
            raise ArithlensError(f"answer digits for PCA must be 1..{n} (A0 has no pair below), got {digit}")
    if any(not isinstance(o, int) or o < 1 for o in pair_offsets):
        raise ArithlensError(f"pair_offsets must be integers >= 1, got {pair_offsets!r}")
    if len(batch) < 2:
        raise ArithlensError("PCA needs at least 2 questions")
    cpu_batch = batch.to("cpu")
    summary, points = [], []
    pc_names = [f"pc{i + 1}" for i in range(components)]
    for digit in digits:
        position = task.logit_position_for_answer_digit(digit)
        outputs = head_outputs(model, batch, position, chunk_size=chunk_size, cache=cache)  # [L*H, batch, d]
        states = {o: tri_state(cpu_batch, digit - o) for o in pair_offsets if digit - o >= 0}
        state_names = [
            [TRI_STATES[s] for s in states[o][:max_points].tolist()] if o in states else ["n/a"] * min(max_points, len(batch))
            for o in (1, 2)
        ]
        for index in range(config.n_layers * config.n_heads):
            layer, head = divmod(index, config.n_heads)
            node = node_name(position, layer, head)
            projected, ratio, _ = pca(outputs[index], components)
            ids = {"answer_digit": f"A{digit}", "position": position, "layer": layer, "head": head, "node": node}
            for offset, labels in states.items():
                separation, silhouette = cluster_separation(projected, labels)
                counts = torch.bincount(labels, minlength=3).tolist()
                summary.append({
                    **ids, "pair_digit": digit - offset, "pair_offset": offset, "questions": len(batch),
                    "n_make_carry1": counts[0], "n_make_sum9": counts[1], "n_neither": counts[2],
                    **{f"explained_variance_{name}": float(r) for name, r in zip(pc_names, ratio)},
                    "explained_variance_top": float(ratio.sum()), "separation": separation, "silhouette": silhouette,
                })
            shown = projected[:max_points].float()
            frame = pd.DataFrame(shown.numpy(), columns=pc_names)
            frame.insert(0, "question", range(len(frame)))
            for column, value in reversed(ids.items()):
                frame.insert(0, column, value)
            frame["tri_state_below"] = state_names[0]
            frame["tri_state_below2"] = state_names[1]
            points.append(frame)
    return localise(pd.DataFrame(summary), task), localise(pd.concat(points, ignore_index=True), task)
