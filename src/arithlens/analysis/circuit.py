"""Does the map explain the model? Faithfulness, completeness and minimality of node sets, by mean ablation.

A node is a head (its `blocks.L.attn.hook_z` at one position) or an MLP (its
`blocks.L.hook_mlp_out` at one position), at every position and layer, named
as in `naming` (``P14L0H2``, ``P14L0M``). To ablate a node is to replace its
output with its mean over the reference questions (by default 1,000
uniformly random questions, see `reference`; every table records which) and
recompute everything downstream, exactly as hooks on those two hook points
do; `fast=False` runs those hooks on the TransformerBridge, and a test holds
both paths equal.

The metric m, per answer digit A_d: the mean over questions of the logit
difference at the position that predicts A_d,

    logit(the correct digit) - max over the nine other digits of logit(digit),

over the digit tokens 0-9 only (`+` and `=` are never an answer). It is
positive exactly when the greedy digit is right. For the whole answer ("all")
m is the mean of the digits' m, and accuracy is the share of questions with
every digit right (a digit's own accuracy otherwise).

Scores of a node set C, normalised as in MIB / EAP-IG by the full model N
(nothing ablated) and the empty circuit (every node ablated):

- faithfulness f(C) = (m(C) - m(empty)) / (m(N) - m(empty)), where m(C) keeps
  C and ablates every other node at every position and layer: f(N) = 1 and
  f(empty) = 0 (NaN when m(N) = m(empty));
- completeness = f(N without C): only C is ablated. Near 0 when C holds what
  the digit needs (the digit breaks), near 1 when the model does as well
  without it;
- minimality: for each node v of C that can reach the digit,
  faithfulness_without = f(C without v) and drop = f(C) - f(C without v); v is
  redundant when its drop is below `threshold` (default 0.02, 2% of the full
  model's logit difference over the empty circuit's) and removing it costs
  less than `threshold` of the accuracy too. The accuracy test is there
  because m is a mean: a node only cascades need can be removed with m rising
  while 3% of the answers break (P12L0H1 for A4 in the bundled add_d5_l1);
- the curve: the K nodes that can reach the digit (causal attention: a node at
  position p reaches answers at p and after, a last-layer node only its own),
  added one at a time in order of importance, with f after each. Importance is
  the single-node ablation effect m(N) - m(N without v). CPR is the area under
  f and CMD the area under |1 - f|, both by the trapezoid rule over the
  normalised node count k / K in [0, 1]. Where K is large (more than 32, in
  models of 2+ layers) f is evaluated at every count up to 4 and at 8 evenly
  spaced counts after that; the trapezoids span the counts evaluated.

How it is computed: every node set is one `ablation_engine.Engine.kept_logits`
call per chunk of questions, which starts from the cached clean pass at the
first layer with an ablated node and recomputes only the positions and layers
downstream of it, and only the answer rows the score reads (one digit's, or
those the nodes just added or removed reach, the rest copied from a set that
differs only elsewhere). In one layer a row depends only on its own
position's nodes, so identical per-row sets are evaluated once. The chunks
run on `scoring.cpu_workers`. On the bundled models, `map_circuit` over 4,000
questions took 12 s (add_d5_l1) and 99 s (add_d5_l2) on this 2-core CPU.

`map_circuit` scores the algorithm map: per answer digit the map's nodes for
that digit, and for the whole answer their union. `score_circuit` scores a
node set you give (``score_circuit(model, batch, ["P14L0H2", "P14L0M"])``)
on every digit and the whole answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from transformer_lens.model_bridge import TransformerBridge

from arithlens.analysis.ablation import hooked_answer_logits, reference_values, site_index
from arithlens.analysis.ablation_engine import Engine, Target, chunks
from arithlens.analysis.accuracy import check_batch, check_chunk_size
from arithlens.analysis.naming import node_name, parse_node_name
from arithlens.analysis.reference import Reference, resolve_reference
from arithlens.config import ModelConfig
from arithlens.errors import ArithlensError
from arithlens.model import model_config_of, predicted_answer
from arithlens.scoring import cpu_workers
from arithlens.task import AdditionBatch, task_for

ALL = "all"
REDUNDANT_THRESHOLD = 0.02
CHUNK_SIZE = 512  # questions per chunk: small chunks keep a kept set's working set in cache (see ablation.FAST_CHUNK)
CURVE_EXACT = 32  # a curve over at most this many nodes is evaluated at every count; a longer one ...
CURVE_DENSE = 4  # ... at every count up to this ...
CURVE_SPACED = 8  # ... and at this many evenly spaced counts after it (each count is a forward pass per chunk)
CIRCUIT_COLUMNS = ["answer_digit", "nodes", "node_count", "faithfulness", "completeness", "accuracy_kept",
                   "accuracy_ablated", "cpr", "cmd", "redundant_nodes", "accuracy_full", "logit_diff_full",
                   "logit_diff_empty", "logit_diff_kept", "logit_diff_ablated", "curve_nodes", "questions",
                   "reference"]
CURVE_COLUMNS = ["answer_digit", "nodes_kept", "share_kept", "node_added", "map_nodes_kept", "faithfulness",
                 "accuracy"]
MINIMALITY_COLUMNS = ["answer_digit", "node", "faithfulness_without", "drop", "accuracy_without", "accuracy_drop",
                      "redundant"]

Node = tuple[int, int, int | None]  # (position, layer, head or None for the MLP)


class NodeSpace:
    """Every node of a model, position-major with the heads before the MLP (node_ablation's order).

    Answer rows run An .. A0 (row r predicts A_{n-r}); the columns of every
    score are those rows plus the whole answer, column n+1.
    """

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.n = config.n_digits
        task = task_for(config)
        self.first_answer = 2 * self.n + 1  # the position whose logits predict the first answer token
        self.kv_len = config.n_ctx - 1  # later positions predict nothing
        self.answer_rows = self.kv_len - self.first_answer  # n+1 digits, and a sign first in signed formats
        self.allowed = task.answer_allowed()  # [rows, d_vocab]: what each row may predict
        self.last = config.n_layers - 1
        self.nodes: list[Node] = [(p, layer, head) for p in range(config.n_ctx) for layer in range(config.n_layers)
                                  for head in [*range(config.n_heads), None]]
        self.names = [node_name(*node) for node in self.nodes]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.every = frozenset(range(len(self.nodes)))
        self.labels = [*task.answer_token_names(), ALL]

    def parse(self, nodes: str | Iterable[str]) -> frozenset[int]:
        """The indexes of user-given node names (a list, or one comma-separated string), checked against the model."""
        names = nodes.split(",") if isinstance(nodes, str) else list(nodes)
        picked = set()
        for name in names:
            if isinstance(name, str) and not name.strip():
                continue
            position, layer, head = parse_node_name(name)
            config = self.config
            if position >= config.n_ctx or layer >= config.n_layers or (head is not None and head >= config.n_heads):
                raise ArithlensError(
                    f"node {str(name).strip()} is not in this model: it has positions 0..{config.n_ctx - 1}, "
                    f"layers 0..{config.n_layers - 1} and heads 0..{config.n_heads - 1}")
            picked.add(self.index[node_name(position, layer, head)])
        return frozenset(picked)

    def joined(self, nodes: Iterable[int]) -> str:
        """Names in the model's node order, comma-joined."""
        return ",".join(self.names[i] for i in sorted(nodes))

    def reach(self, i: int) -> tuple[int, int]:
        """The answer rows [start, stop) node i can change (empty when it reaches none)."""
        position, layer, _ = self.nodes[i]
        if position >= self.kv_len or (layer == self.last and position < self.first_answer):
            return 0, 0
        if layer == self.last:
            return position - self.first_answer, position - self.first_answer + 1
        return max(position - self.first_answer, 0), self.answer_rows

    def is_whole(self, column: int) -> bool:
        """Whether a column is the whole answer's ("all")."""
        return column >= self.answer_rows

    def reaches(self, i: int, column: int) -> bool:
        start, stop = self.reach(i)
        return start < stop and (self.is_whole(column) or start <= column < stop)

    def rows(self, column: int) -> tuple[int, int]:
        """The answer rows a column's score reads: one digit's, or all of them."""
        return (0, self.answer_rows) if self.is_whole(column) else (column, column + 1)

    def masks(self, keep: frozenset[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep masks: heads [layer, position, head] and MLPs [layer, position], for positions < kv_len."""
        config = self.config
        keep_z = torch.zeros(config.n_layers, config.n_ctx, config.n_heads, dtype=torch.bool)
        keep_mlp = torch.zeros(config.n_layers, config.n_ctx, dtype=torch.bool)
        for i in keep:
            position, layer, head = self.nodes[i]
            if head is None:
                keep_mlp[layer, position] = True
            else:
                keep_z[layer, position, head] = True
        return keep_z[:, : self.kv_len].to(device), keep_mlp[:, : self.kv_len].to(device)


def circuit_nodes(model: TransformerBridge) -> list[str]:
    """Every node of the model, as `node_ablation` orders them."""
    return NodeSpace(model_config_of(model)).names


def check_circuit_nodes(model: TransformerBridge, nodes: str | Iterable[str]) -> list[str]:
    """The node names, checked (one error for a bad name or a node the model lacks), in the model's order."""
    space = NodeSpace(model_config_of(model))
    return [space.names[i] for i in sorted(space.parse(nodes))]


def logit_margins(logits: torch.Tensor, answers: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """The correct token's logit minus the largest other allowed token's: [..., rows] float64 for logits
    [..., rows, vocab] and answers [..., rows]. `allowed` [rows, vocab] (`ArithmeticTask.answer_allowed`)
    says what competes: digits, or + and - at a sign; by default the digits 0-9 (`+` and `=` never compete)."""
    if allowed is None:
        scores = logits[..., :10].double()
    else:
        scores = logits.double().masked_fill(~allowed.to(logits.device), float("-inf"))
    correct = scores.gather(-1, answers[..., None]).squeeze(-1)
    others = scores.scatter(-1, answers[..., None], float("-inf")).amax(dim=-1)
    return correct - others


# ----- evaluating node sets ---------------------------------------------------------------------
_Sums = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # margin sums and correct counts [rows], whole-answer count


def _sums(logits: torch.Tensor, answers: torch.Tensor, span: tuple[int, int], allowed: torch.Tensor) -> _Sums:
    """Sums over questions of the logit margin and correctness at answer rows span[0]..span[1]-1, on the CPU."""
    logits, answers = logits[:, span[0] : span[1]], answers[:, span[0] : span[1]]  # only the rows a job knows
    allowed = allowed[span[0] : span[1]]
    right = predicted_answer(logits, allowed) == answers
    return (logit_margins(logits, answers, allowed).sum(0).cpu(), right.sum(0).cpu().double(),
            right.all(dim=1).sum().cpu())


@dataclass(frozen=True)
class _Job:
    """One node set to keep (every other node ablated), evaluated at answer rows [start, stop).

    The other rows are copied from job `base` (an earlier job that differs only
    in nodes that cannot reach them), or left unknown.
    """

    keep: frozenset[int]
    rows: tuple[int, int]
    base: int | None = None


class _Scores:
    """m and accuracy per job and column (answer rows An .. A0, then the whole answer); NaN where not evaluated."""

    def __init__(self, margin: torch.Tensor, correct: torch.Tensor, whole: torch.Tensor, valid: torch.Tensor,
                 questions: int) -> None:
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        m = torch.where(valid, margin / questions, nan)  # [jobs, n+1]
        self.m = torch.cat([m, m.mean(dim=1, keepdim=True)], dim=1)  # NaN for "all" unless every row is known
        accuracy = torch.where(valid, correct / questions, nan)
        whole = torch.where(valid.all(dim=1), whole / questions, nan)
        self.accuracy = torch.cat([accuracy, whole[:, None]], dim=1)
        self.questions = questions


class _Evaluator:
    """Keeps one node set at a time and mean-ablates the rest, over chunks of the questions."""

    def __init__(self, model: TransformerBridge, batch: AdditionBatch, reference: Reference, fast: bool,
                 chunk_size: int) -> None:
        check_batch(model, batch)
        check_chunk_size(chunk_size)
        self.reference, self.description = resolve_reference(model, batch, reference, "mean")
        self.model, self.batch, self.fast, self.chunk_size = model, batch.to("cpu"), fast, chunk_size
        self.space = NodeSpace(model_config_of(model))
        self._brute: tuple[list, list, list] | None = None

    def run(self, jobs: list[_Job]) -> _Scores:
        count, rows = len(jobs), self.space.answer_rows
        spans: list[tuple[int, int]] = []  # the rows each job knows: its own and its base's (contiguous)
        for job in jobs:
            start, stop = job.rows
            if job.base is not None:
                start, stop = min(start, spans[job.base][0]), max(stop, spans[job.base][1])
            spans.append((start, stop))
        margin = torch.zeros(count, rows, dtype=torch.float64)
        correct = torch.zeros(count, rows, dtype=torch.float64)
        whole = torch.zeros(count, dtype=torch.float64)
        for sums in (self._fast_sums if self.fast else self._brute_sums)(jobs, spans):
            for j, ((start, stop), (m, c, w)) in enumerate(zip(spans, sums)):
                margin[j, start:stop] += m
                correct[j, start:stop] += c
                whole[j] += w
        valid = torch.zeros(count, rows, dtype=torch.bool)
        for j, (start, stop) in enumerate(spans):
            valid[j, start:stop] = True
        return _Scores(margin, correct, whole, valid, len(self.batch))

    def _brute_sums(self, jobs: list[_Job], spans: list[tuple[int, int]]) -> Iterable[list[_Sums]]:
        """Every job's sums over all the questions, each from one hooked bridge pass per chunk."""
        answers = self.batch.tokens[:, 2 * self.space.n + 2 :]  # the answer tokens, a sign first where there is one
        sites, indexes, values = self._brute_sites()
        sums = []
        for job, span in zip(jobs, spans):
            ablated = sorted(self.space.every - job.keep)
            logits = hooked_answer_logits(self.model, self.batch, [sites[i] for i in ablated],
                                           [indexes[i] for i in ablated], [values[i] for i in ablated],
                                           False, self.chunk_size)
            sums.append(_sums(logits, answers, span, self.space.allowed))
        yield sums

    def _fast_sums(self, jobs: list[_Job], spans: list[tuple[int, int]]) -> Iterable[list[_Sums]]:
        """Every job's sums per chunk of questions; on a CPU each of `cpu_workers` workers takes a chunk."""
        engine = Engine(self.model)
        device = engine.f.answer_mask.device
        parts = [self._parts(job) for job in jobs]
        masks = {keep: self.space.masks(keep, device) for job in parts for _, _, keep in job}
        bases = {job.base for job in jobs if job.base is not None}
        n = self.space.n
        with torch.inference_mode():
            means = engine.means(self.reference, self.chunk_size)

        def chunk(part: slice) -> list[_Sums]:
            with torch.inference_mode():  # grad mode is per thread
                tokens = self.batch.tokens[part].to(device)
                cache = engine.run(tokens)
                kept: dict[int, torch.Tensor] = {}
                done: dict[tuple[int, int, frozenset[int]], torch.Tensor] = {}  # one evaluation per distinct part
                sums = []
                for j, job in enumerate(jobs):
                    logits = (kept[job.base] if job.base is not None else cache.logits).clone()  # [b, n+1, vocab]
                    for key in parts[j]:
                        start, stop, keep = key
                        if key not in done:
                            done[key] = engine.kept_logits(cache, means, *masks[keep], slice(start, stop))
                        logits[:, start:stop] = done[key]
                    if j in bases:
                        kept[j] = logits
                    sums.append(_sums(logits, tokens[:, 2 * n + 2 :], spans[j], self.space.allowed))
                return sums

        workers = torch.get_num_threads() if device.type == "cpu" else 1
        pieces = chunks(len(self.batch), min(self.chunk_size, -(-len(self.batch) // workers)))
        with cpu_workers(workers) as pool:
            yield from (pool.map(chunk, pieces) if pool is not None else map(chunk, pieces))

    def _parts(self, job: _Job) -> list[tuple[int, int, frozenset[int]]]:
        """What a job evaluates, as (start row, stop row, the kept nodes that can reach those rows).

        Two jobs that keep the same nodes where it matters share one evaluation.
        In one layer a row depends only on its own position's nodes, so each row
        is its own part: the whole answer's sets then reuse the digits' ones.
        """
        start, stop = job.rows
        spans = [(r, r + 1) for r in range(start, stop)] if self.space.last == 0 else [(start, stop)] * (stop > start)
        return [(a, b, frozenset(i for i in job.keep if any(self.space.reaches(i, r) for r in range(a, b))))
                for a, b in spans]

    def _brute_sites(self) -> tuple[list, list, list]:
        """Every node's hook site, index and mean over the reference, gathered once."""
        if self._brute is None:
            n_layers = self.space.config.n_layers
            sites = [Target("z" if head is not None else "mlp_out", layer, position, head).sites(n_layers)[0]
                     for position, layer, head in self.space.nodes]
            indexes = site_index(self.model, self.batch, sites)
            values = reference_values(self.model, self.reference, sites, indexes, "mean", None, self.chunk_size)
            self._brute = sites, indexes, values
        return self._brute


# ----- scoring ----------------------------------------------------------------------------------
def _curve_counts(total: int) -> list[int]:
    if total <= CURVE_EXACT:
        return list(range(total + 1))
    spaced = [CURVE_DENSE + round((total - CURVE_DENSE) * j / CURVE_SPACED) for j in range(1, CURVE_SPACED + 1)]
    return sorted({*range(CURVE_DENSE + 1), *spaced})


@dataclass
class _Plan:
    """Jobs for one pass, with where each column's scores will be."""

    jobs: list[_Job]

    def add(self, keep: frozenset[int], rows: tuple[int, int], base: int | None = None) -> int:
        self.jobs.append(_Job(keep, rows, base))
        return len(self.jobs) - 1


def _score_sets(evaluator: _Evaluator, sets: dict[int, frozenset[int]], *, threshold: float, minimality: bool,
                curve: bool) -> dict[str, pd.DataFrame]:
    """Every score of each column's node set (column -> kept nodes), as the frames `map_circuit` documents."""
    space = evaluator.space
    every, full_rows = space.every, (0, space.answer_rows)
    first = _Plan([])
    full, empty = first.add(every, full_rows), first.add(frozenset(), full_rows)
    reaching = [i for i in range(len(space.nodes)) if space.reach(i)[0] < space.reach(i)[1]]
    single = {i: first.add(every - {i}, space.reach(i), full) for i in reaching} if curve else {}
    base_scores = evaluator.run(first.jobs)

    second = _Plan([])
    planned: dict[int, dict[str, object]] = {}
    for column, keep in sets.items():
        rows = space.rows(column)
        entry: dict[str, object] = {"kept": second.add(keep, rows), "ablated": second.add(every - keep, rows)}
        mine = [i for i in sorted(keep) if space.reaches(i, column)]
        if minimality:
            # For the whole answer only the rows a node reaches change without it; the rest come from C's own job.
            whole = space.is_whole(column)
            entry["without"] = {i: second.add(keep - {i}, space.reach(i) if whole else rows,
                                              entry["kept"] if whole else None) for i in mine}
        if curve:
            candidates = [i for i in reaching if space.reaches(i, column)]
            importance = {i: float(base_scores.m[full, column] - base_scores.m[single[i], column]) for i in candidates}
            order = sorted(candidates, key=lambda i: (-importance[i], i))
            points, previous = [], None
            for k in _curve_counts(len(order)):
                added = order[points[-1][0] if points else 0 : k]
                change = rows
                if previous is not None and space.is_whole(column):  # the whole answer: recompute what the new nodes reach
                    reach = [space.reach(i) for i in added]
                    change = (min(r[0] for r in reach), max(r[1] for r in reach)) if reach else (0, 0)
                previous = second.add(frozenset(order[:k]), change, previous if space.is_whole(column) else None)
                points.append((k, previous, added))
            entry["curve"] = (order, points)
        planned[column] = entry
    scores = evaluator.run(second.jobs)
    return _frames(space, sets, planned, base_scores, scores, full, empty, threshold, evaluator.description)


def _frames(space: NodeSpace, sets: dict[int, frozenset[int]], planned: dict[int, dict], base: _Scores,
            scores: _Scores, full: int, empty: int, threshold: float, reference: str) -> dict[str, pd.DataFrame]:
    circuit, curve_rows, minimality_rows = [], [], []
    for column, keep in sets.items():
        label, entry = space.labels[column], planned[column]
        m_full, m_empty = float(base.m[full, column]), float(base.m[empty, column])
        span = m_full - m_empty

        def f(job: int) -> float:
            return (float(scores.m[job, column]) - m_empty) / span if span != 0 else math.nan

        kept, ablated = entry["kept"], entry["ablated"]
        row = {"answer_digit": label, "nodes": space.joined(keep), "node_count": len(keep),
               "faithfulness": f(kept), "completeness": f(ablated),
               "accuracy_kept": float(scores.accuracy[kept, column]),
               "accuracy_ablated": float(scores.accuracy[ablated, column])}
        redundant = []
        for i, job in entry.get("without", {}).items():
            drop = row["faithfulness"] - f(job)
            accuracy = float(scores.accuracy[job, column])
            # Both: a node that a rare case needs (a cascade) can cost answers while the mean margin rises.
            idle = bool(drop < threshold and row["accuracy_kept"] - accuracy < threshold)
            redundant += [space.names[i]] if idle else []
            minimality_rows.append({"answer_digit": label, "node": space.names[i], "faithfulness_without": f(job),
                                    "drop": drop, "accuracy_without": accuracy,
                                    "accuracy_drop": row["accuracy_kept"] - accuracy, "redundant": idle})
        if "curve" in entry:
            order, points = entry["curve"]
            shares = [k / len(order) if order else 1.0 for k, _, _ in points]
            values = [f(job) for _, job, _ in points]
            row["cpr"] = _trapezoid(shares, values)
            row["cmd"] = _trapezoid(shares, [abs(1 - v) for v in values])
            row["curve_nodes"] = len(order)
            for (k, job, added), share, value in zip(points, shares, values):
                curve_rows.append({"answer_digit": label, "nodes_kept": k, "share_kept": share,
                                   "node_added": ",".join(space.names[i] for i in added),
                                   "map_nodes_kept": len(keep & set(order[:k])), "faithfulness": value,
                                   "accuracy": float(scores.accuracy[job, column])})
        if "without" in entry:
            row["redundant_nodes"] = ",".join(redundant)
        row.update({"accuracy_full": float(base.accuracy[full, column]), "logit_diff_full": m_full,
                    "logit_diff_empty": m_empty, "logit_diff_kept": float(scores.m[kept, column]),
                    "logit_diff_ablated": float(scores.m[ablated, column]), "questions": scores.questions,
                    "reference": reference})
        circuit.append(row)
    columns = [c for c in CIRCUIT_COLUMNS if c in circuit[0]] if circuit else CIRCUIT_COLUMNS
    return {"circuit": pd.DataFrame(circuit)[columns],
            "circuit_curve": pd.DataFrame(curve_rows, columns=CURVE_COLUMNS),
            "circuit_minimality": pd.DataFrame(minimality_rows, columns=MINIMALITY_COLUMNS)}


def _trapezoid(xs: Sequence[float], ys: Sequence[float]) -> float:
    return float(sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:])))


def _check_threshold(threshold: float) -> None:
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 <= threshold < 1:
        raise ArithlensError(f"threshold must be a number in [0, 1), got {threshold!r}")


# ----- public functions -------------------------------------------------------------------------
def score_circuit(model: TransformerBridge, batch: AdditionBatch, nodes: str | Iterable[str], *,
                  reference: Reference = None, threshold: float = REDUNDANT_THRESHOLD, curve: bool = False,
                  fast: bool = True, chunk_size: int = CHUNK_SIZE) -> pd.DataFrame:
    """Faithfulness, completeness, accuracies and redundant nodes of one node set, per answer digit and overall.

    One row per answer digit (An .. A0) and "all", columns as in `map_circuit`'s
    circuit table (cpr, cmd and curve_nodes only with `curve=True`, which also
    runs one single-node ablation per node). A node that cannot reach a digit
    is not tested for redundancy on it. `nodes` is a list of names or one
    comma-separated string; a bad name or a node the model lacks is an error.
    """
    _check_threshold(threshold)
    evaluator = _Evaluator(model, batch, reference, fast, chunk_size)
    keep = evaluator.space.parse(nodes)
    sets = {column: keep for column in range(len(evaluator.space.labels))}
    return _score_sets(evaluator, sets, threshold=threshold, minimality=True, curve=curve)["circuit"]


def faithfulness(model: TransformerBridge, batch: AdditionBatch, nodes: str | Iterable[str], *,
                 reference: Reference = None, fast: bool = True, chunk_size: int = CHUNK_SIZE) -> pd.DataFrame:
    """f of `nodes` kept (every other node mean-ablated) and the accuracy left, per answer digit and overall.

    Columns [answer_digit, nodes, node_count, faithfulness, completeness,
    accuracy_kept, accuracy_ablated, accuracy_full, logit_diff_full,
    logit_diff_empty, logit_diff_kept, logit_diff_ablated, questions, reference]:
    `completeness` and `accuracy_ablated` are those of ablating only `nodes`.
    """
    evaluator = _Evaluator(model, batch, reference, fast, chunk_size)
    keep = evaluator.space.parse(nodes)
    sets = {column: keep for column in range(len(evaluator.space.labels))}
    return _score_sets(evaluator, sets, threshold=0.0, minimality=False, curve=False)["circuit"]


def completeness(model: TransformerBridge, batch: AdditionBatch, nodes: str | Iterable[str], *,
                 reference: Reference = None, fast: bool = True, chunk_size: int = CHUNK_SIZE) -> pd.DataFrame:
    """f left when only `nodes` are mean-ablated, and the accuracy left: [answer_digit, nodes, completeness,
    accuracy_ablated, logit_diff_ablated, reference] per answer digit and overall."""
    frame = faithfulness(model, batch, nodes, reference=reference, fast=fast, chunk_size=chunk_size)
    return frame[["answer_digit", "nodes", "completeness", "accuracy_ablated", "logit_diff_ablated", "reference"]]


def minimality(model: TransformerBridge, batch: AdditionBatch, nodes: str | Iterable[str], *,
               reference: Reference = None, threshold: float = REDUNDANT_THRESHOLD, fast: bool = True,
               chunk_size: int = CHUNK_SIZE) -> pd.DataFrame:
    """For each node of the set and each answer digit it can reach (and "all"), f without it and the drop.

    Columns [answer_digit, node, faithfulness_without, drop, accuracy_without,
    accuracy_drop, redundant (drop and accuracy_drop both < threshold)].
    """
    _check_threshold(threshold)
    evaluator = _Evaluator(model, batch, reference, fast, chunk_size)
    keep = evaluator.space.parse(nodes)
    sets = {column: keep for column in range(len(evaluator.space.labels))}
    return _score_sets(evaluator, sets, threshold=threshold, minimality=True, curve=False)["circuit_minimality"]


def map_node_sets(algorithm_map: pd.DataFrame, n_digits: int, signed: bool = False) -> dict[str, list[str]]:
    """The algorithm map's nodes per answer digit (An .. A0, each with its rows' nodes) and their union ("all")."""
    if not {"answer_digit", "node"} <= set(algorithm_map.columns):
        raise ArithlensError("algorithm_map must be an algorithm_map table (columns answer_digit and node)")
    sets = {f"A{d}": sorted(set(algorithm_map.loc[algorithm_map["answer_digit"] == f"A{d}", "node"]))
            for d in range(n_digits, -1, -1)}
    sets[ALL] = sorted(set(algorithm_map["node"]))
    if signed:  # the map claims no sign node: a signed answer's sign is scored with the whole map
        sets["sign"] = sets[ALL]
    return sets


def map_circuit(model: TransformerBridge, batch: AdditionBatch, algorithm_map: pd.DataFrame, *,
                reference: Reference = None, threshold: float = REDUNDANT_THRESHOLD, fast: bool = True,
                chunk_size: int = CHUNK_SIZE) -> dict[str, pd.DataFrame]:
    """Does the map explain the model? Every score of the algorithm map's node sets (see the module docstring).

    Per answer digit the set is the map's nodes for that digit; for "all" it is
    their union. Returns three frames:

    - "circuit": one row per digit and "all": [answer_digit, nodes (comma-joined), node_count, faithfulness,
      completeness, accuracy_kept, accuracy_ablated, cpr, cmd, redundant_nodes, accuracy_full,
      logit_diff_full, logit_diff_empty, logit_diff_kept, logit_diff_ablated, curve_nodes, questions, reference];
    - "circuit_curve": [answer_digit, nodes_kept, share_kept (nodes_kept / curve_nodes), node_added (the
      node(s) added since the previous row), map_nodes_kept, faithfulness, accuracy];
    - "circuit_minimality": [answer_digit, node, faithfulness_without, drop, accuracy_without, accuracy_drop,
      redundant].
    """
    _check_threshold(threshold)
    evaluator = _Evaluator(model, batch, reference, fast, chunk_size)
    space = evaluator.space
    named = map_node_sets(algorithm_map, space.n, signed=space.answer_rows > space.n + 1)
    sets = {column: evaluator.space.parse(named[label]) for column, label in enumerate(evaluator.space.labels)}
    return _score_sets(evaluator, sets, threshold=threshold, minimality=True, curve=True)


def circuit_summary(circuit: pd.DataFrame) -> dict[str, object]:
    """summary.json's "circuit": the questions and reference, and per answer digit and "all" ("answer_digits")
    the map's node count, f, completeness, accuracies, CPR, CMD and redundant nodes."""
    digits: dict[str, dict[str, object]] = {}
    for row in circuit.itertuples(index=False):
        redundant = str(getattr(row, "redundant_nodes", "") or "")
        digits[row.answer_digit] = {
            "nodes": int(row.node_count), "faithfulness": float(row.faithfulness),
            "completeness": float(row.completeness), "accuracy_kept": float(row.accuracy_kept),
            "accuracy_ablated": float(row.accuracy_ablated), "cpr": float(getattr(row, "cpr", math.nan)),
            "cmd": float(getattr(row, "cmd", math.nan)), "redundant_nodes": redundant.split(",") if redundant else []}
    first = circuit.iloc[0] if len(circuit) else {}
    return {"questions": int(first.get("questions", 0)), "reference": str(first.get("reference", "")),
            "redundant_threshold": REDUNDANT_THRESHOLD, "answer_digits": digits}
