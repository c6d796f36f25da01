"""Zero, mean and resample ablation of any hook, head, position or MLP, with effects per digit and sub-task.

One mechanism, two engines:

- the general engine runs the TransformerBridge with a hook that overwrites
  the chosen slice of an activation (`ablate`, and `fast=False` below);
- the fast engine (`node_ablation`, `position_ablation`; see
  `ablation_engine`) computes only what an ablation can change. It caches
  one forward pass over each chunk of questions, then for a node at layer l
  and position p changes that node's
  contribution to the residual stream at p and recomputes from there: the
  rest of layer l at p, then every later layer at positions p onwards (with
  the cached keys and values of earlier positions), then the answer logits.
  On a CPU each of one single-threaded worker per thread takes a chunk
  (`scoring.cpu_workers`). In the last layer nothing but the MLP and unembedding at p
  reads a change at p, so a 1-layer node costs one MLP and one unembedding at
  one position, and a last-layer node at a position that predicts no answer
  digit changes nothing and costs nothing. A position's whole output is
  recomputed the same way, from p onwards; its input too, from layer 0 at p
  onwards (its keys and values at p, every query from p). On the bundled
  add_d5_l2, both sites at every position over 2,000 questions took 8.5 s,
  against 24 s as full forward passes from layer 0. A test holds both
  engines equal.

Replacements: "zero" writes zeros, "mean" the mean over the reference
questions at the same position, "resample" the value from a reference
question drawn (with replacement) by `seed`. Both engines draw the same rows.
The reference defaults to 1,000 uniformly random questions of a fixed seed,
never the tested set itself (see `reference`); every table records `method`
and a description of the `reference` in two last columns.

`position_ablation` ablates, one position at a time, one of these sites:

- "attention+mlp output": every head's hook_z and the MLP output at the
  position, in every layer: what the position computes. (In a 1-layer model
  it, too, reaches only the digit the position predicts; what it measures
  there is how much of that digit the position's computation carries, beside
  the embedding's direct path to the unembedding.)
- "input": hook_resid_pre of layer 0 (token + position embedding): what the
  position is given, as every later position's attention reads it; this is
  where a digit's dependence on the operand digits shows;
- "resid_post" (only when asked for): the residual stream after every layer.
  In a 1-layer model nothing but the unembedding at that position reads it,
  so it shows each answer digit "computed" at the position before it whatever
  the model does, and positions that predict no digit "change nothing" even
  when their inputs matter. It cannot fail there and is not a measurement.

Effects tables have one row per answer digit and sub-task class: for digit d
below the top, BA = no carry into d, UC1 = carry into d and d not a sum-9,
US9 = carry into d and a sum-9 (UseSum9); "all" = every question; the top
digit An has "all" only. A last row, answer_digit "all", is whole-question
accuracy (every digit right) and the mean loss over digits. Columns
[answer_digit, subtask_class, questions, loss, loss_delta, accuracy,
accuracy_delta]; classes with no questions show NaN.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import pandas as pd
import torch
from transformer_lens.model_bridge import TransformerBridge

from arithlens.analysis.ablation_engine import Engine, Site, Target, chunks
from arithlens.analysis.accuracy import check_batch, progress_bar
from arithlens.analysis.attribution import digit_class_masks
from arithlens.analysis.naming import node_name
from arithlens.analysis.reference import Reference, resolve_reference
from arithlens.errors import ArithlensError
from arithlens.model import model_config_of
from arithlens.scoring import cpu_workers, score_logits
from arithlens.vocabulary import localise
from arithlens.task import AdditionBatch, task_for, task_for_batch

METHODS = ("zero", "mean", "resample")
SUBTASK_CLASSES = ("all", "BA", "UC1", "US9")
# position_ablation's sites and the Target kind of each; the first two are its default.
POSITION_SITES = ("attention+mlp output", "input")
_SITE_KINDS = {"attention+mlp output": "output", "input": "input", "resid_post": "post"}
# Questions per chunk of the fast engine. Small chunks keep each ablation's working set in cache: on the
# bundled add_d5_l2, 10K questions took 113 s in chunks of 512, 121 s (1,024), 139 s (2,048) and 178 s
# (5,000) on this 2-core CPU beside other work.
FAST_CHUNK = 512


# ----- effects per answer digit and sub-task class --------------------------------------------
def _effect_rows(n: int, signed: bool = False) -> list[tuple[str, str, int]]:
    """(answer_digit, subtask_class, column) per effects row; the last column is the whole question."""
    first = int(signed)  # a sign token is answer column 0
    rows = [("sign", "all", 0)] * first + [(f"A{n}", "all", first)]
    for digit in range(n - 1, -1, -1):
        rows += [(f"A{digit}", cls, first + n - digit) for cls in SUBTASK_CLASSES]
    return rows + [("all", "all", first + n + 1)]


def _signed(batch: AdditionBatch) -> bool:
    """Whether the batch's answers start with a sign token (subtraction and mixed layouts)."""
    return batch.tokens.shape[1] > 3 * batch.n_digits + 3


def _row_masks(batch: AdditionBatch) -> torch.Tensor:
    """Which questions each effects row counts, [batch, rows] float64."""
    everyone = torch.ones(len(batch), dtype=torch.bool)
    masks = [everyone if cls == "all" else digit_class_masks(batch, int(name[1:]))[cls]
             for name, cls, _ in _effect_rows(batch.n_digits, _signed(batch))]
    return torch.stack(masks, dim=1).double()


class _Tally:
    """Sums of loss and correctness per effects row, for the baseline and each of `count` ablations."""

    def __init__(self, n: int, count: int, signed: bool = False) -> None:
        self.n = n
        self.signed = signed
        self.columns = torch.tensor([column for _, _, column in _effect_rows(n, signed)])
        rows = len(self.columns)
        self.questions = torch.zeros(rows, dtype=torch.float64)
        self.base = torch.zeros(2, rows, dtype=torch.float64)  # [loss | correct, row]
        self.ablated = torch.zeros(count, 2, rows, dtype=torch.float64)
        self.masks = torch.empty(0)

    def sums(self, loss: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
        """Per-row sums [loss | correct, row] of per-digit loss and correctness [b, n+1] of the current chunk."""
        loss, correct = loss.cpu(), correct.cpu()
        loss = torch.cat([loss, loss.mean(dim=1, keepdim=True)], dim=1)  # [b, n+2]
        correct = torch.cat([correct, correct.all(dim=1, keepdim=True)], dim=1).double()
        by_column = torch.stack([loss, correct]).transpose(1, 2) @ self.masks  # [2, n+2, rows]
        return by_column[:, self.columns, torch.arange(len(self.columns))]

    def add_baseline(self, chunk: AdditionBatch, loss: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
        """Start a chunk of questions: take its masks, add its baseline and return the baseline's sums."""
        self.masks = _row_masks(chunk)
        self.questions += self.masks.sum(0)
        sums = self.sums(loss, correct)
        self.base += sums
        return sums

    def add(self, index: int, sums: torch.Tensor) -> None:
        self.ablated[index] += sums

    def frame(self) -> pd.DataFrame:
        """Effects rows for every ablation, ablation-major, with an `ablation` index column."""
        count, rows = self.ablated.shape[0], len(self.columns)
        base = self.base / self.questions  # NaN where a class has no questions
        ablated = self.ablated / self.questions
        labels = _effect_rows(self.n, self.signed)
        return pd.DataFrame({
            "ablation": torch.arange(count).repeat_interleave(rows).numpy(),
            "answer_digit": [name for name, _, _ in labels] * count,
            "subtask_class": [cls for _, cls, _ in labels] * count,
            "questions": self.questions.long().repeat(count).numpy(),
            "loss": ablated[:, 0].flatten().numpy(),
            "loss_delta": (ablated[:, 0] - base[0]).flatten().numpy(),
            "accuracy": ablated[:, 1].flatten().numpy(),
            "accuracy_delta": (ablated[:, 1] - base[1]).flatten().numpy(),
        })


# ----- what to ablate ---------------------------------------------------------------------------
def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ArithlensError(f"unknown ablation method {method!r}; use one of {', '.join(METHODS)}")


def _resample_rows(reference_size: int, count: int, seed: int) -> torch.Tensor:
    return torch.randint(0, reference_size, (count,), generator=torch.Generator().manual_seed(seed))


# ----- general engine: the bridge with overwriting hooks ------------------------------------------
def site_index(model: TransformerBridge, batch: AdditionBatch, sites: list[Site]) -> list[tuple]:
    """The activation index each site overwrites, after checking the hook, head and position exist."""
    for name, _, _ in sites:
        if name not in model.hook_dict:
            close = difflib.get_close_matches(name, list(model.hook_dict), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see model.hook_dict for the names"
            raise ArithlensError(f"unknown hook {name!r}{hint}")
    names = {name for name, _, _ in sites}
    with torch.no_grad():
        probe = batch.tokens[:1].to(next(model.parameters()).device)
        _, cache = model.run_with_cache(probe, names_filter=lambda name: name in names)
    indexes = []
    for name, head, position in sites:
        if name not in cache:
            raise ArithlensError(f"hook {name!r} does not fire in this model; ablate e.g. blocks.0.attn.hook_z instead")
        shape = cache[name].shape
        if name.endswith(("hook_pattern", "hook_attn_scores")):
            pos_dim, head_dim = 2, 1  # [batch, head, query, key]: `position` is the query
        elif len(shape) == 4:
            pos_dim, head_dim = 1, 2  # [batch, pos, head, d_head]
        else:
            pos_dim, head_dim = 1, None
        index: list = [slice(None)] * len(shape)
        if head is not None:
            if head_dim is None:
                raise ArithlensError(f"hook {name!r} has no head dimension; leave head=None or use blocks.L.attn.hook_z")
            if not 0 <= head < shape[head_dim]:
                raise ArithlensError(f"head must be 0..{shape[head_dim] - 1}, got {head}")
            index[head_dim] = head
        if position is not None:
            if not 0 <= position < shape[pos_dim]:
                raise ArithlensError(f"position must be 0..{shape[pos_dim] - 1}, got {position}")
            index[pos_dim] = position
        indexes.append(tuple(index))
    return indexes


def _overwriter(writes: list[tuple[tuple, torch.Tensor | float]]) -> Callable:
    """A hook that writes each value at its index.

    One hook per name, matched by construction: the bridge may call a hook under
    an alias (hook_z arrives as attn.o.hook_in), so `hook.name` cannot be trusted.
    """

    def overwrite(value: torch.Tensor, hook: object) -> torch.Tensor:
        value = value.clone()
        for index, new in writes:
            value[index] = new
        return value

    return overwrite


def reference_values(model: TransformerBridge, reference: AdditionBatch, sites: list[Site], indexes: list[tuple],
                      method: str, rows: torch.Tensor | None, chunk_size: int) -> list[torch.Tensor | float]:
    """What each site is overwritten with: its mean over `reference`, the values of the
    reference questions at `rows` (resample, [batch, ...]) or 0.0 (zero)."""
    if method == "zero" or not sites:
        return [0.0] * len(sites)
    tokens = reference.tokens if rows is None else reference.tokens[rows]
    names = {name for name, _, _ in sites}
    device = next(model.parameters()).device
    collected: list[list[torch.Tensor]] = [[] for _ in sites]
    with torch.no_grad():
        for part in chunks(len(tokens), chunk_size):
            _, cache = model.run_with_cache(tokens[part].to(device), names_filter=lambda name: name in names)
            for values, (name, _, _), index in zip(collected, sites, indexes):
                values.append(cache[name][index].sum(0) if method == "mean" else cache[name][index])
    if method == "mean":
        return [torch.stack(values).sum(0) / len(tokens) for values in collected]
    return [torch.cat(values) for values in collected]


def hooked_answer_logits(model: TransformerBridge, batch: AdditionBatch, sites: list[Site], indexes: list[tuple],
                          values: list[torch.Tensor | float], per_question: bool, chunk_size: int) -> torch.Tensor:
    """Bridge logits [batch, answer_len, d_vocab] at the answer positions, every site overwritten with its value."""
    n = batch.n_digits
    stop = batch.tokens.shape[1] - 1
    names = dict.fromkeys(name for name, _, _ in sites)
    device = next(model.parameters()).device
    logits = []
    with torch.no_grad():
        for part in chunks(len(batch), chunk_size):
            hooks = [(name, _overwriter([(index, value[part] if per_question else value)
                                         for (site, _, _), index, value in zip(sites, indexes, values) if site == name]))
                     for name in names]
            out = model.run_with_hooks(batch.tokens[part].to(device), fwd_hooks=hooks)
            logits.append(out[:, 2 * n + 1 : stop].cpu())
    return torch.cat(logits)


def _recorded(frame: pd.DataFrame, method: str, reference: str) -> pd.DataFrame:
    """The frame with the method and the reference's description as its last columns."""
    return frame.assign(method=method, reference=reference)


def ablate(model: TransformerBridge, batch: AdditionBatch, hook_name: str, *, method: str = "mean",
           head: int | None = None, position: int | None = None, reference: Reference = None,
           seed: int = 0, chunk_size: int = 2048) -> pd.DataFrame:
    """Effects of ablating `hook_name` (one head and/or position of it, or all of it) over `batch`.

    `position` indexes the activation's position axis (the query for attention
    patterns and scores); `reference` (a batch or a QuestionSet) supplies the
    mean or resampled values and defaults to 1,000 uniformly random questions
    (see `arithlens.analysis.reference`). Effects columns as in the module
    docstring, then [method, reference].
    """
    check_batch(model, batch)
    _check_method(method)
    reference, description = resolve_reference(model, batch, reference, method)
    sites = [(hook_name, head, position)]
    indexes = site_index(model, batch, sites)
    rows = _resample_rows(len(reference), len(batch), seed) if method == "resample" else None
    values = reference_values(model, reference, sites, indexes, method, rows, chunk_size)
    answers = batch.tokens[:, 2 * batch.n_digits + 2 :].cpu()
    allowed = task_for(model_config_of(model)).answer_allowed()
    tally = _Tally(batch.n_digits, 1, _signed(batch))
    base_loss, base_predicted = score_logits(hooked_answer_logits(model, batch, [], [], [], False, chunk_size), answers,
                                             allowed)
    tally.add_baseline(batch, base_loss, base_predicted == answers)
    loss, predicted = score_logits(
        hooked_answer_logits(model, batch, sites, indexes, values, rows is not None, chunk_size), answers, allowed)
    tally.add(0, tally.sums(loss, predicted == answers))
    frame = _recorded(tally.frame().drop(columns="ablation"), method, description)
    return localise(frame, task_for_batch(model_config_of(model), batch))


def _fast_tally(model: TransformerBridge, batch: AdditionBatch, reference: AdditionBatch, targets: list[Target],
                method: str, seed: int, chunk_size: int, progress: bool, label: str) -> _Tally:
    """Every target over every chunk; on a CPU each of `cpu_workers` single-threaded workers takes a chunk."""
    engine = Engine(model)
    n = batch.n_digits
    device = engine.f.answer_mask.device
    allowed = task_for(model_config_of(model)).answer_allowed()
    tally = _Tally(n, len(targets), _signed(batch))
    workers = torch.get_num_threads() if device.type == "cpu" else 1
    parts = chunks(len(batch), min(chunk_size, -(-len(batch) // workers)))  # a chunk for every worker
    rows = _resample_rows(len(reference), len(batch), seed) if method == "resample" else None
    with torch.inference_mode():
        means = engine.means(reference, chunk_size) if method == "mean" else None

    def score(part: slice) -> tuple[slice, tuple[torch.Tensor, torch.Tensor], list]:
        """(part, its unablated (loss, predicted), and each target's, or None where it changes nothing)."""
        with torch.inference_mode():  # grad mode is per thread
            tokens = batch.tokens[part].to(device)
            cache = engine.run(tokens)
            source = means if rows is None else engine.run(reference.tokens[rows[part]].to(device))
            answers = tokens[:, 2 * n + 2 :]
            scored = []
            for target in targets:
                logits = engine.ablated_logits(cache, target, source)
                scored.append(None if logits is None else score_logits(logits, answers, allowed))
                advance(1)
            return part, score_logits(cache.logits, answers, allowed), scored

    with progress_bar(len(targets) * len(parts), label, progress) as advance, cpu_workers(workers) as pool:
        for part, (base_loss, base_predicted), scored in (pool.map(score, parts) if pool else map(score, parts)):
            answers = batch.tokens[part, 2 * n + 2 :].to(base_predicted.device)
            base_sums = tally.add_baseline(batch.select(part), base_loss, base_predicted == answers)
            for index, result in enumerate(scored):
                tally.add(index, base_sums if result is None else tally.sums(result[0], result[1] == answers))
    return tally


def _brute_tally(model: TransformerBridge, batch: AdditionBatch, reference: AdditionBatch, targets: list[Target],
                 method: str, seed: int, chunk_size: int, progress: bool, label: str) -> _Tally:
    """One full hooked bridge forward per target; the replacement values are gathered once for all."""
    n_layers = model_config_of(model).n_layers
    answers = batch.tokens[:, 2 * batch.n_digits + 2 :]
    allowed = task_for(model_config_of(model)).answer_allowed()
    tally = _Tally(batch.n_digits, len(targets), _signed(batch))
    base_loss, base_predicted = score_logits(hooked_answer_logits(model, batch, [], [], [], False, chunk_size), answers,
                                             allowed)
    tally.add_baseline(batch, base_loss, base_predicted == answers)
    sites = [site for target in targets for site in target.sites(n_layers)]
    indexes = site_index(model, batch, sites)
    rows = _resample_rows(len(reference), len(batch), seed) if method == "resample" else None
    values = reference_values(model, reference, sites, indexes, method, rows, chunk_size)
    start = 0
    with progress_bar(len(targets), label, progress) as advance:
        for number, target in enumerate(targets):
            part = slice(start, start + len(target.sites(n_layers)))
            start = part.stop
            logits = hooked_answer_logits(model, batch, sites[part], indexes[part], values[part], rows is not None,
                                           chunk_size)
            loss, predicted = score_logits(logits, answers, allowed)
            tally.add(number, tally.sums(loss, predicted == answers))
            advance(1)
    return tally


def _run_targets(model: TransformerBridge, batch: AdditionBatch, reference: AdditionBatch, targets: list[Target],
                 method: str, fast: bool, seed: int, chunk_size: int, progress: bool, label: str) -> pd.DataFrame:
    run = _fast_tally if fast else _brute_tally
    return run(model, batch.to("cpu"), reference.to("cpu"), targets, method, seed, chunk_size, progress,
               label).frame()


def node_ablation(model: TransformerBridge, batch: AdditionBatch, *, method: str = "mean", reference: Reference = None,
                  fast: bool = True, progress: bool = False, seed: int = 0,
                  chunk_size: int = FAST_CHUNK) -> pd.DataFrame:
    """Ablate every head (its hook_z) and every MLP (its hook_mlp_out) at every position, one at a time.

    Columns [node, kind, position, layer, head (-1 for MLPs)] + the effects
    columns + [method, reference]. `reference` as in `ablate` (default: 1,000
    uniformly random questions). `fast=False` runs one full bridge forward per
    node (slow; for checking). `seed` draws the resampled questions;
    `chunk_size` bounds how many questions are cached at once.
    """
    check_batch(model, batch)
    _check_method(method)
    reference, description = resolve_reference(model, batch, reference, method)
    config = model_config_of(model)
    targets = []
    for position in range(config.n_ctx):
        for layer in range(config.n_layers):
            targets += [Target("z", layer, position, head) for head in range(config.n_heads)]
            targets.append(Target("mlp_out", layer, position))
    frame = _run_targets(model, batch, reference, targets, method, fast, seed, chunk_size, progress, "node ablation")
    node = pd.DataFrame({
        "node": [node_name(t.position, t.layer, t.head) for t in targets],
        "kind": ["head" if t.kind == "z" else "mlp" for t in targets],
        "position": [t.position for t in targets],
        "layer": [t.layer for t in targets],
        "head": [-1 if t.head is None else t.head for t in targets],
    })
    frame = node.iloc[frame["ablation"]].reset_index(drop=True).join(frame.drop(columns="ablation"))
    return localise(_recorded(frame, method, description), task_for_batch(config, batch))


def position_ablation(model: TransformerBridge, batch: AdditionBatch, *, method: str = "mean",
                      reference: Reference = None, sites: tuple[str, ...] = POSITION_SITES, fast: bool = True,
                      progress: bool = False, seed: int = 0, chunk_size: int = FAST_CHUNK) -> pd.DataFrame:
    """Ablate each position's `sites`, one position and site at a time.

    Sites (see the module docstring): "attention+mlp output" (what the
    position computes, every layer), "input" (its layer-0 resid_pre) and, only
    when asked for, "resid_post" (which in a 1-layer model cannot fail).
    Columns [site, position, position_name, answer_digit, questions, loss,
    loss_delta, accuracy, accuracy_delta, method, reference], for
    subtask_class "all" only; sites in the order given.
    """
    sites = (sites,) if isinstance(sites, str) else tuple(sites)  # one site may come as a bare string
    unknown = [site for site in sites if site not in _SITE_KINDS]
    if unknown or not sites:
        raise ArithlensError(f"unknown position ablation site(s) {unknown}; use some of {', '.join(_SITE_KINDS)}")
    check_batch(model, batch)
    _check_method(method)
    reference, description = resolve_reference(model, batch, reference, method)
    config = model_config_of(model)
    targets = [Target(_SITE_KINDS[site], 0, position) for site in sites for position in range(config.n_ctx)]
    frame = _run_targets(model, batch, reference, targets, method, fast, seed, chunk_size, progress,
                         "position ablation")
    frame = frame[frame["subtask_class"] == "all"].reset_index(drop=True)
    names = task_for(config).position_names()
    ablation = frame.pop("ablation")
    frame.insert(0, "position_name", [names[i % config.n_ctx] for i in ablation])
    frame.insert(0, "position", ablation % config.n_ctx)
    frame.insert(0, "site", [sites[i // config.n_ctx] for i in ablation])
    return localise(_recorded(frame.drop(columns="subtask_class"), method, description),
                    task_for_batch(config, batch))
