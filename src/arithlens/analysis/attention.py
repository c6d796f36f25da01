"""Attention patterns: per question, averaged per question category, and a few worked examples.

Patterns come from the bridge's `blocks.{l}.attn.hook_pattern` via
`run_with_cache` (only that hook is kept, so large batches stay cheap).
The seed notebook showed them per question with CircuitsVis; `circuitsvis_html`
does the same when circuitsvis is installed (it is optional, never required).
"""

from __future__ import annotations

import pandas as pd
import torch
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.model_bridge import TransformerBridge

from arithlens.analysis.accuracy import check_batch
from arithlens.analysis.attribution import cached_chunks
from arithlens.errors import ArithlensError
from arithlens.model import model_config_of
from arithlens.vocabulary import localise
from arithlens.task import AdditionBatch, ArithmeticTask, QuestionCategory, task_for, task_for_batch

CATEGORIES = ("all", *(c.label for c in QuestionCategory))  # identifiers; tables name each operation's own


def attention_patterns(model: TransformerBridge, batch: AdditionBatch, *, chunk_size: int = 1024,
                       cache: ActivationCache | None = None) -> torch.Tensor:
    """Every head's attention pattern, [batch, layer, head, query_pos, key_pos] (rows sum to 1).

    `cache` reuses an `analysis_cache` of this batch instead of running the model.
    """
    check_batch(model, batch)
    n_layers = model_config_of(model).n_layers
    parts = []
    for _, part_cache in cached_chunks(model, batch, chunk_size, ("attn.hook_pattern",), cache):
        layers = [part_cache[f"blocks.{layer}.attn.hook_pattern"] for layer in range(n_layers)]
        parts.append(torch.stack(layers, dim=1).cpu())  # [chunk, layer, head, q, k]
    return torch.cat(parts)


def _pattern_rows(mean: torch.Tensor, names: list[str], **columns: object) -> list[dict[str, object]]:
    """Rows for a [layer, head, q, k] pattern, causal entries (key <= query) only."""
    n_layers, n_heads, n_pos, _ = mean.shape
    rows = []
    values = mean.tolist()
    for layer in range(n_layers):
        for head in range(n_heads):
            for query in range(n_pos):
                for key in range(query + 1):
                    rows.append({**columns, "layer": layer, "head": head, "query_pos": query, "query_name": names[query],
                                 "key_pos": key, "key_name": names[key], "weight": values[layer][head][query][key]})
    return rows


def mean_attention_by_class(model: TransformerBridge, batch: AdditionBatch, *, chunk_size: int = 1024,
                            cache: ActivationCache | None = None) -> pd.DataFrame:
    """Mean attention per question category (all, BaseAdd, UseCarry1, UseSum9; for subtraction all,
    BaseDiff, UseBorrow, BorrowCascade), every head.

    Columns [category, questions, layer, head, query_pos, query_name, key_pos,
    key_name, weight]; only causal entries (key_pos <= query_pos). A category
    with no questions in `batch` is left out.
    """
    check_batch(model, batch)
    task = task_for_batch(model_config_of(model), batch)
    names = task.position_names()
    totals: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(CATEGORIES, 0)
    for part, part_cache in cached_chunks(model, batch, chunk_size, ("attn.hook_pattern",), cache):
        patterns = attention_patterns(model, part, cache=part_cache).double()  # [chunk, layer, head, q, k]
        category = part.category.cpu()
        for label in CATEGORIES:
            mask = torch.ones_like(category, dtype=torch.bool) if label == "all" else (
                category == int(next(c for c in QuestionCategory if c.label == label)))
            if mask.any():
                totals[label] = totals.get(label, 0) + patterns[mask].sum(dim=0)
                counts[label] += int(mask.sum())
    rows = []
    for label in CATEGORIES:
        if counts[label]:
            rows += _pattern_rows((totals[label] / counts[label]).float(), names, category=label,
                                  questions=counts[label])
    return localise(pd.DataFrame(rows), task)


def attention_examples(model: TransformerBridge, task: ArithmeticTask, *, per_class: int = 2, seed: int = 0,
                       questions: list[str] | None = None) -> pd.DataFrame:
    """Attention patterns of a few questions: `per_class` of each category, or the given `questions`.

    Questions are drawn as the seed notebook did, from one seeded random batch
    (with sum-9 enrichment so UseSum9 cases exist). Columns [example, question,
    category, layer, head, query_pos, query_name, key_pos, key_name, weight].
    """
    own = task_for(model_config_of(model))
    if own.n_digits != task.n_digits or own.seq_len != task.seq_len or not set(task.operations) <= set(own.operations):
        raise ArithlensError(f"the task ({task!r}) does not suit the model: {own.describe_format()}; "
                             f"use arithlens.task_for(model.arithlens_config) or one of its views()")
    if questions is not None:
        batch = task.batch_from_tokens(task.encode(questions))
    else:
        if not isinstance(per_class, int) or isinstance(per_class, bool) or per_class < 1:
            raise ArithlensError(f"per_class must be an integer >= 1, got {per_class!r}")
        pool = task.generate(max(256, 64 * per_class), torch.Generator().manual_seed(seed), enrich_fraction=0.5)
        picks = [torch.nonzero(pool.category == int(c)).squeeze(1)[:per_class] for c in QuestionCategory]
        batch = pool.select(torch.cat(picks))
    patterns = attention_patterns(model, batch)
    texts = task.questions(batch)
    names = task.position_names()
    rows = []
    for example in range(len(batch)):
        rows += _pattern_rows(patterns[example], names, example=example, question=texts[example],
                              category=QuestionCategory(int(batch.category[example])).label)
    return localise(pd.DataFrame(rows), task_for_batch(model_config_of(model), batch))


def top_attended(mean_attention: pd.DataFrame, *, category: str = "all", top_k: int = 2,
                 min_weight: float = 0.1) -> pd.DataFrame:
    """The positions each head attends to most, from `mean_attention_by_class` output.

    Columns [layer, head, query_pos, query_name, rank, key_pos, key_name, weight]:
    up to `top_k` keys per (head, query) with mean weight >= `min_weight`.
    """
    rows = mean_attention[mean_attention["category"] == category]
    if rows.empty:
        raise ArithlensError(f"no attention rows for category {category!r}; have {sorted(set(mean_attention['category']))}")
    rows = rows[rows["weight"] >= min_weight].sort_values("weight", ascending=False)
    top = rows.groupby(["layer", "head", "query_pos"], sort=True).head(top_k).copy()
    top["rank"] = top.groupby(["layer", "head", "query_pos"]).cumcount()
    columns = ["layer", "head", "query_pos", "query_name", "rank", "key_pos", "key_name", "weight"]
    return top.sort_values(["layer", "head", "query_pos", "rank"])[columns].reset_index(drop=True)


def circuitsvis_html(model: TransformerBridge, task: ArithmeticTask, question: str, *, layer: int = 0) -> str:
    """A self-contained CircuitsVis attention view of one question (needs `pip install circuitsvis`).

    Uses `local_src`, which inlines the viewer, because the default HTML loads
    it from a CDN and fails offline.
    """
    n_layers = model_config_of(model).n_layers
    if not 0 <= layer < n_layers:
        raise ArithlensError(f"layer must be 0..{n_layers - 1}, got {layer}")
    try:
        import circuitsvis as cv
    except ImportError:
        raise ArithlensError("circuitsvis is not installed; `pip install circuitsvis` to get HTML attention views") from None
    batch = task.batch_from_tokens(task.encode(question))
    patterns = attention_patterns(model, batch)[0, layer]  # [head, q, k]
    tokens = [c for c in task.decode(batch.tokens)[0]]
    html = cv.attention.attention_heads(attention=patterns, tokens=tokens,
                                         attention_head_names=[f"L{layer}H{h}" for h in range(patterns.shape[0])])
    return html.local_src
