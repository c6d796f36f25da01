"""Edges between nodes of different layers, by path patching: what turns a 2-layer algorithm map into a graph.

Nodes are heads and MLPs at one position, named as in `naming` (``P14L0H2``,
``P14L0M``). The edge from a sender S (layer l_s, position p_s) to a receiver
R (layer l_r > l_s, position p_r >= p_s), for answer digit A_d, has

    effect = mean over questions of m_d(S -> R patched) - m_d(clean),

where m_d is A_d's logit margin (the correct token's logit minus the best
other allowed token's, `circuit.logit_margins`) and "S -> R patched" means: S's
output is replaced by its mean over the reference questions (mean ablation,
as everywhere in arithlens; by default 1,000 uniformly random questions, see
`reference`) ONLY on the path into R. R's input is recomputed as if S were
mean-ablated, while every other node, S's own direct path to the residual
stream elsewhere and into other receivers included, keeps its clean value.
Negative effects mean the edge matters.

How (the standard path patching): one clean pass is cached. R's input is
layer l_r's residual stream with S's clean output swapped for its mean at
p_s (for an MLP receiver, the stream after layer l_r's attention, which holds
the clean heads). A head receiver reads p_s through its key and value, and
through its query too when p_s == p_r; an MLP receiver reads only its own
position, so only senders at p_r reach it directly. R's output is recomputed
from that input, through its layer's LayerNorm where the model has one. Then
R's new output is written into an otherwise clean forward pass and
everything downstream of R (the rest of its layer at p_r, later layers, the
logits) is recomputed; nothing else changes. Both steps run on
`ablation_engine.Engine`, the model as functions of its parameters, which a
test (tests/test_edges.py) holds equal to bridge hooks. It recomputes only
R's position onwards, where one hooked bridge pass per edge (1.1 s over 500
questions of the bundled add_d5_l2 on this 2-core CPU) would take over half an
hour for that model's 1,770 default edges; this takes ~21 s.

Each edge row also carries `receiver_effect`, the same margin change when R
itself is mean-ablated, and `share` = effect / receiver_effect (NaN when that
is 0): how much of what R does for A_d comes through S.
"""

from __future__ import annotations

import math
from itertools import chain

import pandas as pd
import torch
from transformer_lens.model_bridge import TransformerBridge

from arithlens.analysis.ablation_engine import Cache, Engine, Target, chunks
from arithlens.analysis.accuracy import check_batch, check_chunk_size
from arithlens.analysis.circuit import NodeSpace, Node, logit_margins
from arithlens.analysis.naming import node_name
from arithlens.analysis.reference import Reference, resolve_reference
from arithlens.errors import ArithlensError
from arithlens.model import model_config_of
from arithlens.scoring import cpu_workers
from arithlens.task import AdditionBatch, task_for

EDGE_COLUMNS = ["answer_digit", "sender", "receiver", "sender_layer", "receiver_layer", "sender_position",
                "receiver_position", "effect", "effect_abs", "receiver_effect", "share", "questions", "reference"]


class _Written(Cache):
    """A source for `Engine.ablated_logits` whose every site holds R's recomputed output, so that the engine
    writes it at R and recomputes what is downstream, exactly as for an ablation."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value  # [b, d_head] for a head, [b, d_model] for an MLP

    def site(self, target: Target, layer: int, rel: int) -> torch.Tensor:
        return self.value


def is_edge(sender: Node, receiver: Node) -> bool:
    """Whether S can reach R directly: an earlier layer, and R's own position (MLP) or one it attends to (head)."""
    (p_s, l_s, _), (p_r, l_r, head_r) = sender, receiver
    return l_s < l_r and (p_s <= p_r if head_r is not None else p_s == p_r)


def _rows(space: NodeSpace, receiver: Node, digits: set[int] | None) -> list[int]:
    """The answer rows (An .. A0, a sign first where there is one) whose margins an edge into R is scored on:
    the row R's position predicts, and for a receiver below the last layer every row predicted at or after it."""
    position, layer, _ = receiver
    first = position - space.first_answer  # the row R's own position predicts (negative: none)
    rows = [first] if layer == space.last else range(max(first, 0), space.answer_rows)
    n_tokens = space.answer_rows  # digit d is row n_tokens - 1 - d
    return [r for r in rows if 0 <= r < n_tokens and (digits is None or n_tokens - 1 - r in digits)]


def _pairs(space: NodeSpace, receivers: list[str] | None, senders: list[str] | None,
           digits: set[int] | None) -> list[tuple[Node, list[Node], list[int]]]:
    """(receiver, its senders, its answer rows) for every receiver with at least one sender and one row."""
    if receivers is None:  # every last-layer node at the answer-predicting positions
        picked = [i for i, (p, layer, _) in enumerate(space.nodes)
                  if layer == space.last and space.first_answer <= p < space.kv_len]
    else:
        picked = sorted(space.parse(receivers))
    sending = [space.nodes[i] for i in (range(len(space.nodes)) if senders is None else sorted(space.parse(senders)))]
    plan = []
    for i in picked:
        receiver = space.nodes[i]
        rows = _rows(space, receiver, digits)
        mine = [s for s in sending if is_edge(s, receiver)]
        if rows and mine and space.last > 0:
            plan.append((receiver, mine, rows))
    return plan


def _target(node: Node) -> Target:
    position, layer, head = node
    return Target("mlp_out" if head is None else "z", layer, position, head)


def _sender_delta(engine: Engine, cache: Cache, means: Cache, sender: Node) -> torch.Tensor:
    """What swapping S's clean output for its mean adds to the residual stream at p_s, [b, d_model]."""
    position, layer, head = sender  # layer < last, so the cache holds every position of it
    if head is None:
        return means.mlp_out[layer][:, position] - cache.mlp_out[layer][:, position]
    d_head = engine.config.d_head
    w_o = engine.f.params[f"blocks.{layer}.attn.o.weight"][:, head * d_head : (head + 1) * d_head]  # [d_model, d_head]
    return (means.z[layer][:, position, head] - cache.z[layer][:, position, head]) @ w_o.T  # b_O is not S's


def _receiver_output(engine: Engine, cache: Cache, receiver: Node, p_s: int, delta: torch.Tensor) -> torch.Tensor:
    """R's output recomputed from its input with `delta` added at p_s: z [b, d_head] or mlp_out [b, d_model]."""
    f, (p_r, layer, head) = engine.f, receiver
    rel = p_r - engine.first_query(layer)
    if head is None:  # resid_mid holds the clean heads of R's layer; ln2 and the MLP read it afresh
        return engine._mlp(cache.mid[layer][:, rel] + delta, layer)
    prefix, d_head = f"blocks.{layer}", engine.config.d_head
    part = slice(head * d_head, (head + 1) * d_head)
    normed = f._norm(cache.post(layer - 1)[:, p_s] + delta, f"{prefix}.ln1")  # [b, d_model], R's layer's LN

    def project(kind: str) -> torch.Tensor:  # one head's q, k or v from the changed input, [b, d_head]
        bias = f.params.get(f"{prefix}.attn.{kind}.bias")
        return torch.nn.functional.linear(normed, f.params[f"{prefix}.attn.{kind}.weight"][part],
                                          None if bias is None else bias[part])

    queries, keys, values = cache.qkv[layer]  # [b, head, q, d_head], [b, head, kv_len, d_head] x2
    query = project("q") if p_s == p_r else queries[:, head, rel]  # [b, d_head]
    keys, values = keys[:, head, : p_r + 1].clone(), values[:, head, : p_r + 1].clone()  # causal: keys <= p_r
    keys[:, p_s], values[:, p_s] = project("k"), project("v")
    pattern = ((keys @ query[:, :, None]).squeeze(-1) / f.scale).softmax(dim=-1)  # [b, p_r + 1]
    return (pattern[:, None] @ values).squeeze(1)  # [b, d_head]


def _chunk_sums(engine: Engine, means: Cache, plan: list[tuple[Node, list[Node], list[int]]], tokens: torch.Tensor,
                allowed: torch.Tensor) -> list[torch.Tensor]:
    """Per receiver, the margin changes [1 + senders, rows] summed over a chunk of questions: R mean-ablated
    first, then each edge S -> R."""
    with torch.inference_mode():  # grad mode is per thread
        answers = tokens[:, 2 * engine.config.n_digits + 2 :]  # [b, rows]: the answer tokens, a sign first if any
        cache = engine.run(tokens)
        clean = logit_margins(cache.logits, answers, allowed)  # [b, rows] float64
        sums = []
        for receiver, mine, _ in plan:
            target = _target(receiver)
            # lazily, so one recomputed output is held at a time
            sources = chain([means], (_Written(_receiver_output(engine, cache, receiver, sender[0],
                                                               _sender_delta(engine, cache, means, sender)))
                                      for sender in mine))
            changes = []
            for source in sources:
                logits = engine.ablated_logits(cache, target, source)  # None: R reaches no answer (never planned)
                changes.append(clean * 0 if logits is None else logit_margins(logits, answers, allowed) - clean)
            sums.append(torch.stack(changes).sum(1).cpu())  # [1 + senders, rows]
        return sums


def path_patching_edges(model: TransformerBridge, batch: AdditionBatch, receivers: list[str] | None = None,
                        senders: list[str] | None = None, answer_digits: list[int] | None = None,
                        reference: Reference = None, chunk_size: int = 512) -> pd.DataFrame:
    """Every edge S -> R's effect on the answer digits R can change (see the module docstring).

    `receivers` default to every last-layer head and MLP at the answer-predicting
    positions; `senders` to every node of an earlier layer at a position R
    reads directly (<= p_r for a head, p_r itself for an MLP). Pairs that are
    not edges (same or later layer, later position, or an MLP from another
    position) are left out, as are receivers whose digits are all filtered
    out. A last-layer receiver is scored on the digit its position predicts;
    one below on every digit predicted at or after its position. `answer_digits`
    (0 = units) keeps only those digits. Columns `EDGE_COLUMNS`, one row per
    (receiver, sender, digit); empty for a 1-layer model.
    """
    check_batch(model, batch)
    check_chunk_size(chunk_size)
    space = NodeSpace(model_config_of(model))
    for digit in answer_digits or []:  # a digit out of range is a one-line error
        task_for(space.config).logit_position_for_answer_digit(digit)
    plan = _pairs(space, receivers, senders, None if answer_digits is None else set(answer_digits))
    if not plan:
        return pd.DataFrame(columns=EDGE_COLUMNS)
    reference, description = resolve_reference(model, batch, reference, "mean")
    engine = Engine(model)
    device = engine.f.answer_mask.device
    allowed = task_for(space.config).answer_allowed()  # [rows, d_vocab]
    # On a CPU each single-threaded worker takes a chunk: intra-op threads stall on these small ops when busy.
    workers = torch.get_num_threads() if device.type == "cpu" else 1
    parts = chunks(len(batch), min(chunk_size, -(-len(batch) // workers)))
    totals: list[torch.Tensor] = []
    with cpu_workers(workers) as pool:  # the means too run on one thread inside it
        with torch.inference_mode():
            means = engine.means(reference.to("cpu"), chunk_size)

        def score(part: slice) -> list[torch.Tensor]:
            return _chunk_sums(engine, means, plan, batch.tokens[part].to(device), allowed)

        for sums in (pool.map(score, parts) if pool else map(score, parts)):
            totals = [a + b for a, b in zip(totals, sums)] if totals else sums
    labels, count = task_for(space.config).answer_token_names(), len(batch)
    records = []
    for (receiver, mine, rows), sums in zip(plan, totals):
        for j, sender in enumerate(mine):
            for r in rows:
                effect, whole = float(sums[1 + j, r]) / count, float(sums[0, r]) / count
                records.append((labels[r], node_name(*sender), node_name(*receiver), sender[1], receiver[1],
                                sender[0], receiver[0], effect, abs(effect), whole,
                                effect / whole if whole != 0 else math.nan, count, description))
    return pd.DataFrame.from_records(records, columns=EDGE_COLUMNS)


def top_edges(edges: pd.DataFrame, k: int = 20) -> pd.DataFrame:
    """The `k` edges with the largest |effect|, largest first (ties in the table's order)."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ArithlensError(f"k must be an integer >= 0, got {k!r}")
    if "effect" not in edges.columns:
        raise ArithlensError("edges must be a path_patching_edges table (it has no effect column)")
    size = edges["effect"].abs().reset_index(drop=True)  # by row number: a concatenated table repeats labels
    return edges.iloc[size.sort_values(ascending=False, kind="stable").index[:k]].reset_index(drop=True)
