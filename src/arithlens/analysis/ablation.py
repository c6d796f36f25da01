"""Zero, mean and resample ablation of any hook, head, position or MLP, with effects per digit and sub-task.

One mechanism, two engines:

- the general engine runs the TransformerBridge with a hook that overwrites
  the chosen slice of an activation (`ablate`, and `fast=False` below);
- the fast engine (`node_ablation`, `position_ablation`) computes only what
  an ablation can change. It caches one forward pass over the whole question
  set, then for a node at layer l and position p changes that node's
  contribution to the residual stream at p and recomputes from there: the
  rest of layer l at p, then every later layer at all positions, then the
  answer logits. In the last layer nothing but the MLP and unembedding at p
  reads a change at p, so a 1-layer node costs one MLP and one unembedding at
  one position, and a last-layer node at a position that predicts no answer
  digit changes nothing and costs nothing. A test holds both engines equal.

Replacements: "zero" writes zeros, "mean" the mean over the reference
questions at the same position, "resample" the value from a reference
question drawn (with replacement) by `seed`. Both engines draw the same rows.

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
from dataclasses import dataclass, field

import pandas as pd
import torch
from transformer_lens.model_bridge import TransformerBridge

from arithlens.analysis.accuracy import check_batch, check_chunk_size, progress_bar
from arithlens.scoring import score_logits
from arithlens.analysis.attribution import digit_class_masks
from arithlens.analysis.nodes import node_name
from arithlens.errors import ArithlensError
from arithlens.model import AnswerForward, model_config_of
from arithlens.task import AdditionBatch, AdditionTask

METHODS = ("zero", "mean", "resample")
SUBTASK_CLASSES = ("all", "BA", "UC1", "US9")
Site = tuple[str, int | None, int | None]  # (hook name, head, position) to overwrite; None = all of that axis


# ----- effects per answer digit and sub-task class --------------------------------------------
def _effect_rows(n: int) -> list[tuple[str, str, int]]:
    """(answer_digit, subtask_class, column) per effects row; column n+1 is the whole question."""
    rows = [(f"A{n}", "all", 0)]
    for digit in range(n - 1, -1, -1):
        rows += [(f"A{digit}", cls, n - digit) for cls in SUBTASK_CLASSES]
    return rows + [("all", "all", n + 1)]


def _row_masks(batch: AdditionBatch) -> torch.Tensor:
    """Which questions each effects row counts, [batch, rows] float64."""
    everyone = torch.ones(len(batch), dtype=torch.bool)
    masks = [everyone if name == "all" else digit_class_masks(batch, int(name[1:]))[cls]
             for name, cls, _ in _effect_rows(batch.n_digits)]
    return torch.stack(masks, dim=1).double()


class _Tally:
    """Sums of loss and correctness per effects row, for the baseline and each of `count` ablations."""

    def __init__(self, n: int, count: int) -> None:
        self.n = n
        self.columns = torch.tensor([column for _, _, column in _effect_rows(n)])
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
        labels = _effect_rows(self.n)
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
@dataclass(frozen=True)
class _Target:
    """One ablation: a head's z, an MLP's output, or (kind "post") the residual stream at a position.

    A "post" target replaces resid_post at `position` in `layer` and every later layer.
    """

    kind: str  # "z" | "mlp_out" | "post"
    layer: int
    position: int
    head: int | None = None

    def sites(self, n_layers: int) -> list[Site]:
        """(hook name, head, position) for the bridge engine."""
        if self.kind == "z":
            return [(f"blocks.{self.layer}.attn.hook_z", self.head, self.position)]
        if self.kind == "mlp_out":
            return [(f"blocks.{self.layer}.hook_mlp_out", None, self.position)]
        return [(f"blocks.{layer}.hook_resid_post", None, self.position) for layer in range(self.layer, n_layers)]


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ArithlensError(f"unknown ablation method {method!r}; use one of {', '.join(METHODS)}")


def _resample_rows(reference_size: int, count: int, seed: int) -> torch.Tensor:
    return torch.randint(0, reference_size, (count,), generator=torch.Generator().manual_seed(seed))


def _chunks(size: int, chunk_size: int) -> list[slice]:
    check_chunk_size(chunk_size)
    return [slice(start, min(start + chunk_size, size)) for start in range(0, size, chunk_size)]


# ----- general engine: the bridge with overwriting hooks ------------------------------------------
def _site_index(model: TransformerBridge, batch: AdditionBatch, sites: list[Site]) -> list[tuple]:
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


def _reference_values(model: TransformerBridge, reference: AdditionBatch, sites: list[Site], indexes: list[tuple],
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
        for part in _chunks(len(tokens), chunk_size):
            _, cache = model.run_with_cache(tokens[part].to(device), names_filter=lambda name: name in names)
            for values, (name, _, _), index in zip(collected, sites, indexes):
                values.append(cache[name][index].sum(0) if method == "mean" else cache[name][index])
    if method == "mean":
        return [torch.stack(values).sum(0) / len(tokens) for values in collected]
    return [torch.cat(values) for values in collected]


def _hooked_answer_logits(model: TransformerBridge, batch: AdditionBatch, sites: list[Site], indexes: list[tuple],
                          values: list[torch.Tensor | float], per_question: bool, chunk_size: int) -> torch.Tensor:
    """Bridge logits [batch, n+1, d_vocab] at the answer positions, every site overwritten with its value."""
    n = batch.n_digits
    names = dict.fromkeys(name for name, _, _ in sites)
    device = next(model.parameters()).device
    logits = []
    with torch.no_grad():
        for part in _chunks(len(batch), chunk_size):
            hooks = [(name, _overwriter([(index, value[part] if per_question else value)
                                         for (site, _, _), index, value in zip(sites, indexes, values) if site == name]))
                     for name in names]
            out = model.run_with_hooks(batch.tokens[part].to(device), fwd_hooks=hooks)
            logits.append(out[:, 2 * n + 1 : 3 * n + 2].cpu())
    return torch.cat(logits)


def ablate(model: TransformerBridge, batch: AdditionBatch, hook_name: str, *, method: str = "mean",
           head: int | None = None, position: int | None = None, reference: AdditionBatch | None = None,
           seed: int = 0, chunk_size: int = 2048) -> pd.DataFrame:
    """Effects of ablating `hook_name` (one head and/or position of it, or all of it) over `batch`.

    `position` indexes the activation's position axis (the query for attention
    patterns and scores); `reference` supplies the mean or resampled values and
    defaults to `batch`. Effects columns as in the module docstring.
    """
    check_batch(model, batch)
    reference = batch if reference is None else reference
    check_batch(model, reference)
    _check_method(method)
    sites = [(hook_name, head, position)]
    indexes = _site_index(model, batch, sites)
    rows = _resample_rows(len(reference), len(batch), seed) if method == "resample" else None
    values = _reference_values(model, reference, sites, indexes, method, rows, chunk_size)
    answers = batch.tokens[:, 2 * batch.n_digits + 2 :].cpu()
    tally = _Tally(batch.n_digits, 1)
    base_loss, base_predicted = score_logits(_hooked_answer_logits(model, batch, [], [], [], False, chunk_size), answers)
    tally.add_baseline(batch, base_loss, base_predicted == answers)
    loss, predicted = score_logits(
        _hooked_answer_logits(model, batch, sites, indexes, values, rows is not None, chunk_size), answers)
    tally.add(0, tally.sums(loss, predicted == answers))
    return tally.frame().drop(columns="ablation")


# ----- fast engine: recompute only what an ablation changes ---------------------------------------
@dataclass
class _Cache:
    """Per layer, at the positions that layer computes: z [b, q, head, d_head], resid_mid and mlp_out [b, q, d_model]."""

    z: list[torch.Tensor] = field(default_factory=list)
    mid: list[torch.Tensor] = field(default_factory=list)
    mlp_out: list[torch.Tensor] = field(default_factory=list)
    logits: torch.Tensor | None = None  # [b, n+1, d_vocab]
    # the last layer's MLP at one position: (position, pre-activation, its logit contribution)
    hidden: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def post(self, layer: int) -> torch.Tensor:
        return self.mid[layer] + self.mlp_out[layer]

    def site(self, target: _Target, layer: int, rel: int) -> torch.Tensor:
        """The cached value a target overwrites, [b, ...]."""
        if target.kind == "z":
            return self.z[layer][:, rel, target.head]
        if target.kind == "mlp_out":
            return self.mlp_out[layer][:, rel]
        return self.mid[layer][:, rel] + self.mlp_out[layer][:, rel]

    def tensors(self) -> list[torch.Tensor]:
        return [*self.z, *self.mid, *self.mlp_out]

    @staticmethod
    def from_tensors(tensors: list[torch.Tensor]) -> _Cache:
        layers = len(tensors) // 3
        return _Cache(tensors[:layers], tensors[layers : 2 * layers], tensors[2 * layers :])


class _Engine:
    """The model as functions of its parameters, keeping what ablations need.

    Layers before the last compute every position up to 3n+1; the last layer
    computes queries onwards only at the answer-predicting positions.
    """

    def __init__(self, model: TransformerBridge) -> None:
        self.f = AnswerForward(model)  # its norm/linear/activation helpers and masks
        self.config = self.f.config
        self.last = self.config.n_layers - 1
        self.folded: dict[str, torch.Tensor] | None = None
        if self.config.normalization is None:
            # Without normalisation the last MLP's input and the unembedding are linear maps, so a
            # head's change folds through them: only the MLP's nonlinearity is recomputed, at
            # d_head -> d_mlp -> d_vocab cost instead of d_model -> d_mlp -> d_model.
            params, prefix = self.f.params, f"blocks.{self.last}"
            with torch.no_grad():
                w_o = params[f"{prefix}.attn.o.weight"]  # [d_model, head * d_head]
                self.folded = {
                    "in_o": params[f"{prefix}.mlp.in.weight"] @ w_o,  # [d_mlp, head * d_head]
                    "unembed_o": params["unembed.weight"] @ w_o,  # [d_vocab, head * d_head]
                    "unembed_out": params["unembed.weight"] @ params[f"{prefix}.mlp.out.weight"],  # [d_vocab, d_mlp]
                }

    def first_query(self, layer: int) -> int:
        return self.f.first_answer_logit if layer == self.last else 0

    def reaches_answers(self, layer: int, position: int) -> bool:
        """Whether a change at (layer, position) can reach any answer logit (causal attention)."""
        return position < self.f.kv_len and position >= self.first_query(layer)

    def _mlp(self, mid: torch.Tensor, layer: int) -> torch.Tensor:
        prefix = f"blocks.{layer}"
        hidden = self.f._activation(self.f._linear(self.f._norm(mid, f"{prefix}.ln2"), f"{prefix}.mlp.in"))
        return self.f._linear(hidden, f"{prefix}.mlp.out")

    def _unembed(self, resid: torch.Tensor) -> torch.Tensor:
        return self.f._linear(self.f._norm(resid, "ln_final"), "unembed")

    def layers(self, resid: torch.Tensor, first: int, cache: _Cache | None = None,
               edit: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
        """Answer logits from resid_pre of layer `first` ([b, kv_len, d_model]); `edit` may change each resid_post in place."""
        f = self.f
        for layer in range(first, self.config.n_layers):
            prefix, start = f"blocks.{layer}", self.first_query(layer)
            normed = f._norm(resid, f"{prefix}.ln1")
            keys = f._heads(f._linear(normed, f"{prefix}.attn.k"))  # [b, head, kv_len, d_head]
            values = f._heads(f._linear(normed, f"{prefix}.attn.v"))
            queries = f._heads(f._linear(normed[:, start:], f"{prefix}.attn.q"))  # [b, head, q, d_head]
            scores = (queries @ keys.transpose(-1, -2)) / f.scale
            pattern = scores.masked_fill(f.full_mask[start:], float("-inf")).softmax(dim=-1)
            z = (pattern @ values).transpose(1, 2)  # [b, q, head, d_head]
            mid = resid[:, start:] + f._linear(z.flatten(2), f"{prefix}.attn.o")
            mlp_out = self._mlp(mid, layer)
            resid = mid + mlp_out
            if cache is not None:
                cache.z.append(z)
                cache.mid.append(mid)
                cache.mlp_out.append(mlp_out)
            if edit is not None:
                edit(layer, resid)
        return self._unembed(resid)

    def run(self, tokens: torch.Tensor) -> _Cache:
        tokens = tokens[:, : self.f.kv_len]
        resid = self.f.params["embed.weight"][tokens] + self.f.params["pos_embed.weight"][: self.f.kv_len]
        cache = _Cache()
        cache.logits = self.layers(resid, 0, cache)
        return cache

    def _folded_head_change(self, cache: _Cache, rel: int, head: slice, dz: torch.Tensor) -> torch.Tensor:
        """Change in the logits [b, d_vocab] at last-layer position `rel` when one head's z moves by dz."""
        folded = self.folded
        if cache.hidden is None or cache.hidden[0] != rel:  # shared by the heads at one position
            pre = self.f._linear(cache.mid[self.last][:, rel], f"blocks.{self.last}.mlp.in")  # [b, d_mlp]
            cache.hidden = (rel, pre, self.f._activation(pre) @ folded["unembed_out"].T)
        _, pre, mlp_logits = cache.hidden
        new_post = self.f._activation(torch.addmm(pre, dz, folded["in_o"][:, head].T))  # [b, d_mlp]
        return new_post @ folded["unembed_out"].T - mlp_logits + dz @ folded["unembed_o"][:, head].T

    def ablated_logits(self, cache: _Cache, target: _Target, source: _Cache | None) -> torch.Tensor | None:
        """Answer logits with `target` overwritten from `source` (None = zeros); None when nothing changes."""
        layer, position = target.layer, target.position
        if not self.reaches_answers(layer, position):
            return None
        rel = position - self.first_query(layer)
        old = cache.site(target, layer, rel)
        new = torch.zeros_like(old[:1]) if source is None else source.site(target, layer, rel)
        edit = None
        if target.kind == "z":
            head = slice(target.head * self.config.d_head, (target.head + 1) * self.config.d_head)
            if layer == self.last and self.folded is not None:
                logits = cache.logits.clone()
                logits[:, rel] += self._folded_head_change(cache, rel, head, new - old)
                return logits
            w_o = self.f.params[f"blocks.{layer}.attn.o.weight"][:, head]
            mid = cache.mid[layer][:, rel] + (new - old) @ w_o.T  # [b, d_model]
            post = mid + self._mlp(mid, layer)
        elif target.kind == "mlp_out":
            post = cache.mid[layer][:, rel] + new
        else:
            post = new.expand_as(old)

            def edit(later: int, resid: torch.Tensor) -> None:
                later_rel = position - self.first_query(later)
                if later_rel >= 0:
                    resid[:, later_rel] = 0.0 if source is None else source.site(target, later, later_rel)

        if layer == self.last:
            logits = cache.logits.clone()
            logits[:, rel] = self._unembed(post)
            return logits
        resid = cache.post(layer).clone()
        resid[:, position] = post
        return self.layers(resid, layer + 1, edit=edit)


def _fast_tally(model: TransformerBridge, batch: AdditionBatch, targets: list[_Target], method: str, seed: int,
                chunk_size: int, progress: bool, label: str) -> _Tally:
    engine = _Engine(model)
    n = batch.n_digits
    device = engine.f.answer_mask.device
    tally = _Tally(n, len(targets))
    parts = _chunks(len(batch), chunk_size)
    rows = _resample_rows(len(batch), len(batch), seed) if method == "resample" else None
    with torch.inference_mode(), progress_bar(len(targets) * len(parts), label, progress) as advance:
        kept: _Cache | None = None
        means: _Cache | None = None
        if method == "mean":
            # A first pass for the means holds one chunk's cache at a time; a single chunk is kept for reuse.
            totals: list[torch.Tensor] = []
            for part in parts:
                kept = engine.run(batch.tokens[part].to(device))
                sums = [t.sum(0, keepdim=True) for t in kept.tensors()]
                totals = [a + b for a, b in zip(totals, sums)] if totals else sums
            means = _Cache.from_tensors([t / len(batch) for t in totals])
        for part in parts:
            tokens = batch.tokens[part].to(device)
            cache = kept if len(parts) == 1 and kept is not None else engine.run(tokens)
            source = means
            if rows is not None:
                source = engine.run(batch.tokens[rows[part]].to(device))
            answers = tokens[:, 2 * n + 2 :]
            base_loss, base_predicted = score_logits(cache.logits, answers)
            base_sums = tally.add_baseline(batch.select(part), base_loss, base_predicted == answers)
            for index, target in enumerate(targets):
                logits = engine.ablated_logits(cache, target, source)
                if logits is None:
                    tally.add(index, base_sums)
                else:
                    loss, predicted = score_logits(logits, answers)
                    tally.add(index, tally.sums(loss, predicted == answers))
                advance(1)
    return tally


def _brute_tally(model: TransformerBridge, batch: AdditionBatch, targets: list[_Target], method: str, seed: int,
                 chunk_size: int, progress: bool, label: str) -> _Tally:
    """One full hooked bridge forward per target; the replacement values are gathered once for all."""
    n_layers = model_config_of(model).n_layers
    answers = batch.tokens[:, 2 * batch.n_digits + 2 :]
    tally = _Tally(batch.n_digits, len(targets))
    base_loss, base_predicted = score_logits(_hooked_answer_logits(model, batch, [], [], [], False, chunk_size), answers)
    tally.add_baseline(batch, base_loss, base_predicted == answers)
    sites = [site for target in targets for site in target.sites(n_layers)]
    indexes = _site_index(model, batch, sites)
    rows = _resample_rows(len(batch), len(batch), seed) if method == "resample" else None
    values = _reference_values(model, batch, sites, indexes, method, rows, chunk_size)
    start = 0
    with progress_bar(len(targets), label, progress) as advance:
        for number, target in enumerate(targets):
            part = slice(start, start + len(target.sites(n_layers)))
            start = part.stop
            logits = _hooked_answer_logits(model, batch, sites[part], indexes[part], values[part], rows is not None,
                                           chunk_size)
            loss, predicted = score_logits(logits, answers)
            tally.add(number, tally.sums(loss, predicted == answers))
            advance(1)
    return tally


def _run_targets(model: TransformerBridge, batch: AdditionBatch, targets: list[_Target], method: str, fast: bool,
                 seed: int, chunk_size: int, progress: bool, label: str) -> pd.DataFrame:
    check_batch(model, batch)
    _check_method(method)
    run = _fast_tally if fast else _brute_tally
    return run(model, batch.to("cpu"), targets, method, seed, chunk_size, progress, label).frame()


def node_ablation(model: TransformerBridge, batch: AdditionBatch, *, method: str = "mean", fast: bool = True,
                  progress: bool = False, seed: int = 0, chunk_size: int = 16384) -> pd.DataFrame:
    """Ablate every head (its hook_z) and every MLP (its hook_mlp_out) at every position, one at a time.

    Columns [node, kind, position, layer, head (-1 for MLPs)] + the effects
    columns. `fast=False` runs one full bridge forward per node (slow; for
    checking). `seed` draws the resampled questions; `chunk_size` bounds how
    many questions are cached at once (beyond one chunk, mean ablation takes
    an extra pass for the means).
    """
    config = model_config_of(model)
    targets = []
    for position in range(config.n_ctx):
        for layer in range(config.n_layers):
            targets += [_Target("z", layer, position, head) for head in range(config.n_heads)]
            targets.append(_Target("mlp_out", layer, position))
    frame = _run_targets(model, batch, targets, method, fast, seed, chunk_size, progress, "node ablation")
    node = pd.DataFrame({
        "node": [node_name(t.position, t.layer, t.head) for t in targets],
        "kind": ["head" if t.kind == "z" else "mlp" for t in targets],
        "position": [t.position for t in targets],
        "layer": [t.layer for t in targets],
        "head": [-1 if t.head is None else t.head for t in targets],
    })
    return node.iloc[frame["ablation"]].reset_index(drop=True).join(frame.drop(columns="ablation"))


def position_ablation(model: TransformerBridge, batch: AdditionBatch, *, method: str = "mean", fast: bool = True,
                      progress: bool = False, seed: int = 0, chunk_size: int = 16384) -> pd.DataFrame:
    """Ablate the residual stream (hook_resid_post of every layer) at each position, one position at a time.

    Columns [position, position_name, answer_digit, questions, loss, loss_delta,
    accuracy, accuracy_delta], for subtask_class "all" only.
    """
    config = model_config_of(model)
    targets = [_Target("post", 0, position) for position in range(config.n_ctx)]
    frame = _run_targets(model, batch, targets, method, fast, seed, chunk_size, progress, "position ablation")
    frame = frame[frame["subtask_class"] == "all"].reset_index(drop=True)
    names = AdditionTask(config.n_digits).position_names()
    frame.insert(0, "position_name", [names[i] for i in frame["ablation"]])
    frame.insert(0, "position", frame.pop("ablation"))
    return frame.drop(columns="subtask_class")
