"""Activation patching between question pairs that differ in one sub-task, per head and position.

For answer digit A_d a pair is a clean and a corrupted question that share
every digit except where one sub-task differs, and whose A_d differs (by one,
except for BaseAdd):

- ``BaseAdd`` (d < n): x_d changes; no carry into d in either question;
- ``MakeCarry1`` (d >= 1): pair d-1 sums to >= 10 (clean) or <= 8 (corrupted),
  so the carry into d is made directly or not at all;
- ``MakeSum9`` (d >= 2): a carry comes into d-1 in both; pair d-1 sums to 9
  (clean, the carry cascades into d) or 8 (corrupted, it stops);
- ``UseSum9`` (d >= 2): pair d-1 sums to 9 in both; pair d-2 sums to >= 10
  (clean) or <= 8 (corrupted), so only the cascade carries into d.

Patching runs the corrupted questions and writes in one clean activation: a
head's hook_z at one position, or an MLP's hook_mlp_out. By default it runs on
the fast ablation engine (`ablation_engine`): one cached pass of each chunk of
corrupted and clean questions, then per node the clean value written in and
only what it changes recomputed. `fast=False` runs
`transformer_lens.patching.generic_activation_patch` on the bridge with the
setters that `get_act_patch_attn_head_out_by_pos` (hook_z per layer, position,
head) and `get_act_patch_mlp_out` (per layer, position) use, one forward pass
per node; a test holds both equal. On the bundled add_d5_l2 (200 pairs per
kind, the 492 patches of its analysis) the engine took 7.4 s against 48 s,
with the same flips and logit differences within 1e-5. Only what can change
A_d's logit is patched: in the last layer only the position that predicts A_d
(a last-layer output at another position never reaches it), in earlier layers
the positions from the first one where the pair's questions differ (before it
both runs are identical) up to it; the sequence is cut after that position
(the model is causal). A test holds these rows equal to the full
`get_act_patch_attn_head_out_by_pos` sweep, whose other cells are exactly the
unpatched value. All pair kinds of one answer digit share a batch, so each
patch costs one forward per digit.

The metric per pair is the logit difference at A_d's position between the
clean and the corrupted answer digit. `recovery` = (patched - corrupted) /
(clean - corrupted) on the means: 1 means the node alone restores the clean
answer's preference. `flips` (the published "strong test") is the share of
pairs whose patched prediction of A_d is exactly the clean answer digit; but
a model that fails the corrupted question may give the clean digit unpatched
(`baseline_flips`, e.g. 46% of pairs), so the evidence is `net_flips` =
flips - baseline_flips. Each comes with a 95% interval: Wilson's for flips,
Newcombe's paired-data score interval (method 10 of Newcombe 1998,
Statistics in Medicine 17:2635) for net_flips, which counts only the pairs
the patch changes. With `DEFAULT_PAIRS` (200) pairs per kind a flip rate's
interval reaches at most about +-0.07 and a net rate's +-0.14 (when every
pair changes, half each way; far less when few do), narrow enough to tell a
flip rate of 54% from a baseline of 46% when the patch is what flips them.

Subtraction has the same four kinds on its own sub-tasks (`subtraction_pairs`), and the
tables name them BaseDiff, MakeBorrow, MakeZero and UseZero. A mixed model is patched one
operation at a time: pass `task=` one of `task_for(config).views()`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pandas as pd
import torch
from transformer_lens import patching
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.model_bridge import TransformerBridge

from arithlens.analysis.ablation import FAST_CHUNK
from arithlens.analysis.ablation_engine import Engine, Target, chunks
from arithlens.analysis.accuracy import check_batch
from arithlens.analysis.naming import node_name, parse_node_name
from arithlens.errors import ArithlensError
from arithlens.model import model_config_of
from arithlens.scoring import cpu_workers
from arithlens.analysis.subtraction_pairs import make_subtraction_pairs, subtraction_pair_kinds
from arithlens.vocabulary import canonical_name, localise
from arithlens.task import AdditionBatch, ArithmeticTask, task_for

PAIR_KINDS = ("BaseAdd", "MakeCarry1", "MakeSum9", "UseSum9")
DEFAULT_PAIRS = 200
Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval
_FIRST_DIGIT = {"BaseAdd": 0, "MakeCarry1": 1, "MakeSum9": 2, "UseSum9": 2}
_Sweep = tuple[str, pd.DataFrame, torch.Tensor]  # (component, index_df, values [metric, row, batch])


@dataclass
class PatchPairs:
    """Clean and corrupted questions, row for row, that differ in one sub-task feeding A`answer_digit`."""

    kind: str
    answer_digit: int
    clean: AdditionBatch
    corrupted: AdditionBatch

    def __len__(self) -> int:
        return len(self.clean)


def pair_kinds(n_digits: int, task: ArithmeticTask | None = None) -> list[tuple[str, int]]:
    """Every (kind, answer digit) pair set that exists for `n_digits` (addition, unless `task` says otherwise)."""
    if task is not None and task.operation.key == "sub":
        return subtraction_pair_kinds(n_digits, PAIR_KINDS)
    kinds = []
    for digit in range(n_digits, -1, -1):
        for kind in PAIR_KINDS:
            if _FIRST_DIGIT[kind] <= digit and not (kind == "BaseAdd" and digit == n_digits):
                kinds.append((kind, digit))
    return kinds


def _pairs_with_sums(sums: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits x, y (each [count]) with x + y == sums, x uniform over what fits."""
    low = (sums - 9).clamp(min=0)
    high = sums.clamp(max=9)
    x = low + (torch.rand(sums.shape, generator=generator) * (high - low + 1)).long().clamp(max=high - low)
    return x, sums - x


def _random_sums(count: int, low: int, high: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(low, high + 1, (count,), generator=generator)


def make_patch_pairs(task: ArithmeticTask, kind: str, answer_digit: int, count: int = DEFAULT_PAIRS,
                     seed: int = 0) -> PatchPairs:
    """`count` seeded pairs of one kind for answer digit A`answer_digit` (see the module docstring).

    `kind` is a role in the task's names or its identifier (MakeBorrow or MakeCarry1 for subtraction).
    """
    n = task.n_digits
    kind = canonical_name(kind)
    if kind not in PAIR_KINDS:
        raise ArithlensError(f"unknown pair kind {kind!r}; use one of {', '.join(PAIR_KINDS)}")
    valid_kinds = pair_kinds(n, task)
    if (kind, answer_digit) not in valid_kinds:
        valid = sorted({d for k, d in valid_kinds if k == kind})
        raise ArithlensError(f"{kind} pairs for {n} digits exist for answer digits {valid}, not {answer_digit}")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ArithlensError(f"count must be an integer >= 1, got {count!r}")
    generator = torch.Generator().manual_seed(seed * 1009 + answer_digit * 31 + PAIR_KINDS.index(kind))
    if task.operation.key == "sub":
        clean, corrupted = make_subtraction_pairs(task, kind, answer_digit, count, generator)
        return _checked_pairs(task, kind, answer_digit, clean, corrupted)
    x = torch.randint(0, 10, (count, n), generator=generator)  # units first
    y = torch.randint(0, 10, (count, n), generator=generator)
    d = answer_digit

    def set_sums(xs: torch.Tensor, ys: torch.Tensor, column: int, sums: torch.Tensor) -> None:
        xs[:, column], ys[:, column] = _pairs_with_sums(sums, generator)

    if kind == "BaseAdd":
        if d >= 1:
            set_sums(x, y, d - 1, _random_sums(count, 0, 8, generator))  # no carry into d
        x2, y2 = x.clone(), y.clone()
        x2[:, d] = (x[:, d] + torch.randint(1, 10, (count,), generator=generator)) % 10
    elif kind == "MakeCarry1":
        set_sums(x, y, d - 1, _random_sums(count, 10, 18, generator))
        x2, y2 = x.clone(), y.clone()
        set_sums(x2, y2, d - 1, _random_sums(count, 0, 8, generator))
    elif kind == "MakeSum9":
        set_sums(x, y, d - 2, _random_sums(count, 10, 18, generator))  # a carry into d-1 in both
        set_sums(x, y, d - 1, torch.full((count,), 9))
        x2, y2 = x.clone(), y.clone()
        set_sums(x2, y2, d - 1, torch.full((count,), 8))
    else:  # UseSum9
        set_sums(x, y, d - 1, torch.full((count,), 9))
        set_sums(x, y, d - 2, _random_sums(count, 10, 18, generator))
        x2, y2 = x.clone(), y.clone()
        set_sums(x2, y2, d - 2, _random_sums(count, 0, 8, generator))
    return _checked_pairs(task, kind, d, task.batch_from_digits(x, y), task.batch_from_digits(x2, y2))


def _checked_pairs(task: ArithmeticTask, kind: str, digit: int, clean: AdditionBatch,
                   corrupted: AdditionBatch) -> PatchPairs:
    column = task.seq_len - 1 - digit  # the token of A_digit
    differs = clean.tokens[:, column] != corrupted.tokens[:, column]
    same_sign = clean.negative == corrupted.negative
    if not bool(differs.all()) or not bool(same_sign.all()):
        raise AssertionError(f"{kind} pairs for A{digit} do not all change A{digit} alone")  # a construction bug
    return PatchPairs(kind=kind, answer_digit=digit, clean=clean, corrupted=corrupted)


def wilson_interval(successes: torch.Tensor, trials: torch.Tensor | float, z: float = Z95
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Wilson score interval (low, high) for the proportion successes / trials, elementwise."""
    successes = successes.double()
    trials = torch.as_tensor(trials, dtype=torch.float64)
    share = successes / trials
    scale = 1 + z**2 / trials
    centre = (share + z**2 / (2 * trials)) / scale
    half = z * torch.sqrt(share * (1 - share) / trials + z**2 / (4 * trials**2)) / scale
    # At 0 (or all) successes the bound is exactly 0 (or 1); rounding would leave 1e-17 off it.
    low = torch.where(successes <= 0, 0.0, (centre - half).clamp(min=0.0))
    return low, torch.where(successes >= trials, 1.0, (centre + half).clamp(max=1.0))


def paired_difference_interval(first: torch.Tensor, second: torch.Tensor, z: float = Z95
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval (low, high) for mean(first) - mean(second) of paired 0/1 outcomes [..., pairs].

    Newcombe's hybrid score interval for paired proportions (1998, method 10):
    each rate's Wilson interval, combined through the correlation of the pairs,
    so pairs that flip either way, or not at all, both with and without the
    patch, narrow or widen it as they should.
    """
    first, second = first.bool(), second.bool()
    pairs = first.shape[-1]
    both = (first & second).sum(-1).double()
    only_first = (first & ~second).sum(-1).double()
    only_second = (~first & second).sum(-1).double()
    neither = pairs - both - only_first - only_second
    rate1, rate2 = (both + only_first) / pairs, (both + only_second) / pairs
    low1, high1 = wilson_interval(both + only_first, pairs, z)
    low2, high2 = wilson_interval(both + only_second, pairs, z)
    margins = (both + only_first) * (only_second + neither) * (both + only_second) * (only_first + neither)
    # phi, the correlation of the pairs' outcomes; 0 when a margin is empty (Newcombe's convention)
    phi = torch.where(margins > 0, (both * neither - only_first * only_second) / margins.clamp(min=1).sqrt(), 0.0)
    below = (rate1 - low1) ** 2 - 2 * phi * (rate1 - low1) * (high2 - rate2) + (high2 - rate2) ** 2
    above = (high1 - rate1) ** 2 - 2 * phi * (high1 - rate1) * (rate2 - low2) + (rate2 - low2) ** 2
    difference = rate1 - rate2
    return ((difference - below.clamp(min=0).sqrt()).clamp(min=-1.0),
            (difference + above.clamp(min=0).sqrt()).clamp(max=1.0))


def _index_df(n_layers: int, target: int, per_head: int | None, first: int = 0,
              nodes: set[str] | None = None) -> pd.DataFrame:
    """(layer, pos[, head]) rows that can reach the logit at position `target`.

    Earlier layers: positions `first` .. target (before `first` the clean and
    corrupted questions are the same, so patching there changes nothing); the
    last layer: the target only. `nodes` keeps only those node names.
    """
    rows = []
    for layer in range(n_layers):
        positions = [target] if layer == n_layers - 1 else list(range(first, target + 1))
        for pos in positions:
            for head in (range(per_head) if per_head else [None]):
                if nodes is None or node_name(pos, layer, head) in nodes:
                    rows.append((layer, pos) if head is None else (layer, pos, head))
    return pd.DataFrame(rows, columns=["layer", "pos", "head"] if per_head else ["layer", "pos"])


def pair_metrics(target: int, clean_digit: torch.Tensor, corrupt_digit: torch.Tensor
             ) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Per-pair metrics on logits [batch, pos, vocab]."""
    def logit_diff(logits: torch.Tensor) -> torch.Tensor:
        row = logits[:, target]
        return (row.gather(-1, clean_digit[:, None]) - row.gather(-1, corrupt_digit[:, None])).squeeze(-1)

    def flips(logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, target, :10].argmax(dim=-1) == clean_digit).float()

    return {"logit_diff": logit_diff, "flips": flips}


def patch_sweep(model: TransformerBridge, corrupted_tokens: torch.Tensor, clean_cache: ActivationCache,
                metrics: dict[str, Callable[[torch.Tensor], torch.Tensor]], target: int, *, first: int = 0,
                nodes: set[str] | None = None) -> list[_Sweep]:
    """Patch, one at a time, every head output (hook_z) and MLP output that can reach position `target`.

    Returns (component, index_df, values [metric, row, batch]) for "head" and
    "mlp" (a component with no node left to patch is left out); index_df has
    columns (layer, pos, head) or (layer, pos). See `_index_df` for `first` and `nodes`.
    """
    config = model_config_of(model)
    sweeps = (
        ("head", "z", patching.layer_pos_head_vector_patch_setter,
         _index_df(config.n_layers, target, config.n_heads, first, nodes)),
        ("mlp", "mlp_out", patching.layer_pos_patch_setter, _index_df(config.n_layers, target, None, first, nodes)),
    )
    results = []
    for component, activation, setter, index_df in sweeps:
        if index_df.empty:
            continue
        # transformer_lens.patching draws its own tqdm bar per sweep; arithlens shows rich bars instead.
        with torch.inference_mode(), contextlib.redirect_stderr(io.StringIO()):
            result = patching.generic_activation_patch(model, corrupted_tokens, clean_cache, metrics, setter,
                                                       activation, index_df=index_df, reduce="none")
        results.append((component, index_df, result.values.cpu()))
    return results


def _engine_sweep(model: TransformerBridge, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor,
                  clean_digit: torch.Tensor, corrupt_digit: torch.Tensor, target: int, *, first: int,
                  nodes: set[str] | None, chunk_size: int = FAST_CHUNK
                  ) -> tuple[torch.Tensor, torch.Tensor, list[_Sweep]]:
    """`patch_sweep` on the fast ablation engine: each corrupted chunk's cached pass, one node at a time
    overwritten with the clean pass's value and recomputed from there (`Engine.ablated_logits`).

    Returns the clean and the unpatched corrupted metrics [metric, batch] and, as `patch_sweep`,
    (component, index_df, values [metric, row, batch]) per component. On a CPU each of
    `cpu_workers` single-threaded workers takes a chunk of pairs.
    """
    engine = Engine(model)
    config, device = engine.config, engine.f.answer_mask.device
    row = target - engine.f.first_answer_logit  # the engine's logits start at the first answer row
    components = [(component, frame) for component, frame in (
        ("head", _index_df(config.n_layers, target, config.n_heads, first, nodes)),
        ("mlp", _index_df(config.n_layers, target, None, first, nodes))) if not frame.empty]
    targets = [Target("z", int(r.layer), int(r.pos), int(r.head)) if component == "head"
               else Target("mlp_out", int(r.layer), int(r.pos))
               for component, frame in components for r in frame.itertuples(index=False)]

    def chunk(part: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.inference_mode():  # grad mode is per thread
            clean = engine.run(clean_tokens[part].to(device))
            corrupted = engine.run(corrupted_tokens[part].to(device))
            metrics = pair_metrics(row, clean_digit[part].to(device), corrupt_digit[part].to(device))

            def measure(logits: torch.Tensor | None) -> torch.Tensor:
                logits = corrupted.logits if logits is None else logits  # None: the node cannot reach the row
                return torch.stack([metric(logits) for metric in metrics.values()]).cpu()  # [metric, b]

            base = measure(corrupted.logits)
            patched = [measure(engine.ablated_logits(corrupted, node, clean)) for node in targets]
            values = torch.stack(patched, dim=1) if patched else base.new_zeros(len(base), 0, base.shape[1])
            return measure(clean.logits), base, values  # values [metric, node, b]

    workers = torch.get_num_threads() if device.type == "cpu" else 1
    pieces = chunks(len(clean_tokens), min(chunk_size, -(-len(clean_tokens) // workers)))
    with cpu_workers(workers) as pool:
        results = list(pool.map(chunk, pieces) if pool is not None else map(chunk, pieces))
    clean_values, baseline, values = (torch.cat([r[i] for r in results], dim=-1) for i in range(3))
    sweeps, start = [], 0
    for component, frame in components:
        sweeps.append((component, frame, values[:, start : start + len(frame)]))
        start += len(frame)
    return clean_values, baseline, sweeps


def _bridge_sweep(model: TransformerBridge, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor,
                  clean_digit: torch.Tensor, corrupt_digit: torch.Tensor, target: int, *, first: int,
                  nodes: set[str] | None) -> tuple[torch.Tensor, torch.Tensor, list[_Sweep]]:
    """As `_engine_sweep`, through TransformerLens's `generic_activation_patch` on the bridge (`patch_sweep`)."""
    device = model.W_U.device
    metrics = pair_metrics(target, clean_digit.to(device), corrupt_digit.to(device))
    # The model is causal, so positions after the target cannot change its logits: leave them out (saves a fifth).
    with torch.inference_mode():
        clean_logits, clean_cache = model.run_with_cache(
            clean_tokens[:, : target + 1].to(device),
            names_filter=lambda name: name.endswith(("attn.hook_z", "hook_mlp_out")))
        clean_values = torch.stack([metric(clean_logits) for metric in metrics.values()]).cpu()  # [metric, batch]
        corrupted_part = corrupted_tokens[:, : target + 1].to(device)
        baseline = torch.stack([metric(model(corrupted_part)) for metric in metrics.values()]).cpu()
    return clean_values, baseline, patch_sweep(model, corrupted_part, clean_cache, metrics, target, first=first,
                                               nodes=nodes)


def patch_answer_digit(model: TransformerBridge, pair_sets: list[PatchPairs], *,
                       nodes: set[str] | None = None, fast: bool = True) -> pd.DataFrame:
    """Patch every head (hook_z) and MLP (mlp_out) that can reach one answer digit, for its pair sets.

    All sets must be for the same answer digit; they share one batch. `nodes`
    limits the patching to those node names. `fast=False` patches through
    TransformerLens's `generic_activation_patch` on the bridge, one forward
    pass per node (a test holds both equal). Columns as `activation_patching`.
    """
    if not pair_sets:
        raise ArithlensError("no pair sets to patch")
    digits = {p.answer_digit for p in pair_sets}
    if len(digits) != 1:
        raise ArithlensError(f"patch_answer_digit takes pair sets of one answer digit, got {sorted(digits)}")
    clean = AdditionBatch.concat([p.clean for p in pair_sets])
    corrupted = AdditionBatch.concat([p.corrupted for p in pair_sets])
    check_batch(model, clean)
    task = task_for(model_config_of(model))
    digit = digits.pop()
    target = task.logit_position_for_answer_digit(digit)
    column = task.seq_len - 1 - digit
    differs = (clean.tokens[:, : target + 1] != corrupted.tokens[:, : target + 1]).any(dim=0)
    first = int(differs.nonzero()[0, 0])  # the pairs always differ somewhere in the question
    sweep = _engine_sweep if fast else _bridge_sweep
    clean_values, baseline, sweeps = sweep(model, clean.tokens, corrupted.tokens, clean.tokens[:, column],
                                           corrupted.tokens[:, column], target, first=first, nodes=nodes)
    names = task.position_names()
    bounds = torch.cumsum(torch.tensor([0] + [len(p) for p in pair_sets]), 0).tolist()
    rows = []
    for component, index_df, values in sweeps:
        for set_index, pairs in enumerate(pair_sets):
            part = slice(bounds[set_index], bounds[set_index + 1])
            clean_ld = float(clean_values[0, part].mean())
            corrupt_ld = float(baseline[0, part].mean())
            span = clean_ld - corrupt_ld
            flipped = values[1, :, part]  # [row, pair], 1 where the patched pair gives the clean digit
            flips_low, flips_high = wilson_interval(flipped.sum(-1), len(pairs))
            net_low, net_high = paired_difference_interval(flipped, baseline[1, part].expand_as(flipped))
            for row_index, index_row in enumerate(index_df.itertuples(index=False)):
                patched_ld = float(values[0, row_index, part].mean())
                head = int(index_row.head) if component == "head" else -1
                position = int(index_row.pos)
                rows.append({
                    "kind": pairs.kind, "answer_digit": f"A{digit}", "component": component,
                    "layer": int(index_row.layer), "head": head, "position": position,
                    "position_name": names[position],
                    "node": node_name(position, int(index_row.layer), None if component == "mlp" else head),
                    "pairs": len(pairs), "clean_logit_diff": clean_ld, "corrupted_logit_diff": corrupt_ld,
                    "patched_logit_diff": patched_ld,
                    "recovery": (patched_ld - corrupt_ld) / span if abs(span) > 1e-9 else float("nan"),
                    "flips": float(flipped[row_index].mean()),
                    "clean_correct": float(clean_values[1, part].mean()),
                    "baseline_flips": float(baseline[1, part].mean()),
                    "net_flips": float(flipped[row_index].mean() - baseline[1, part].mean()),
                    "flips_ci_low": float(flips_low[row_index]), "flips_ci_high": float(flips_high[row_index]),
                    "net_flips_ci_low": float(net_low[row_index]), "net_flips_ci_high": float(net_high[row_index]),
                })
    return pd.DataFrame(rows)


def activation_patching(model: TransformerBridge, *, count: int = DEFAULT_PAIRS, seed: int = 0,
                        kinds: list[tuple[str, int]] | None = None, nodes: Iterable[str] | None = None,
                        progress: Callable[[int], None] | None = None,
                        task: ArithmeticTask | None = None, fast: bool = True) -> pd.DataFrame:
    """Patch heads and MLPs for every (kind, answer digit) pair set (or just `kinds`).

    `nodes` limits the patching to those node names (e.g. the useful nodes, as
    the published work did); in models of several layers that saves most of
    the time, since earlier layers have a node at every position.

    Columns [kind, answer_digit, component ("head"|"mlp"), layer, head (-1 for
    MLPs), position, position_name, node, pairs, clean_logit_diff,
    corrupted_logit_diff, patched_logit_diff, recovery, flips, clean_correct,
    baseline_flips, net_flips, flips_ci_low, flips_ci_high, net_flips_ci_low,
    net_flips_ci_high]. `flips` is the share of patched pairs that now predict
    the clean answer digit, `baseline_flips` that share with no patch,
    `net_flips` their difference (the evidence), each `_ci_` pair its 95%
    interval, and `clean_correct` the share of clean questions whose A_d the
    model gets right. `count` pairs per kind (200 by default: fewer cannot
    tell a net flip rate of several points from 0).
    `progress(k)` is called after each answer digit with the number of pair sets done.
    `task` picks the operation of a mixed model (one of `task_for(config).views()`).
    `fast=False` patches through TransformerLens on the bridge (see `patch_answer_digit`).
    """
    config = model_config_of(model)
    task = task_for(config) if task is None else task
    if len(task.operations) != 1:
        raise ArithlensError("a mixed model is patched one operation at a time: pass task= one of "
                             "task_for(model.arithlens_config).views()")
    wanted = pair_kinds(config.n_digits, task) if kinds is None else [(canonical_name(k), d) for k, d in kinds]
    keep = None if nodes is None else set(nodes)
    for name in keep or ():
        parse_node_name(name)  # a clear error for a misspelt node
    frames = []
    for digit in sorted({d for _, d in wanted}, reverse=True):
        sets = [make_patch_pairs(task, kind, digit, count, seed) for kind, d in wanted if d == digit]
        frames.append(patch_answer_digit(model, sets, nodes=keep, fast=fast))
        if progress is not None:
            progress(len(sets))
    if not frames:
        raise ArithlensError("no pair kinds to patch")
    return localise(pd.DataFrame(pd.concat(frames, ignore_index=True)), task)
