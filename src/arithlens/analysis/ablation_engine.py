"""The fast ablation engine: the model as functions of its parameters, recomputing only what an ablation changes.

`Engine.run` caches one forward pass over a chunk of questions (per layer: z,
resid_mid and mlp_out at the positions that layer computes, the queries, keys
and values of every layer after the first, plus the tokens);
`Engine.ablated_logits` overwrites one `Target` (a head's z, an MLP's output,
or a whole position's output, input or resid_post) with the values of a
source cache (a mean over the reference questions, a resampled forward pass,
or zeros) and recomputes from there to the answer logits. What a target can
change and what it costs is described in `ablation`'s module docstring, which
also holds the engines equal (`fast=False` runs the TransformerBridge with
overwriting hooks, from the same `Target.sites`). `Engine.kept_logits` keeps
a set of heads and MLPs and overwrites all the others at once (`circuit`).

A change at position p of layer l leaves every earlier position as cached
(attention is causal), so later layers recompute only positions p onwards:
their queries, and keys and values where the input changed (at p alone in
layer l+1), reading the cached keys and values of earlier positions. That is
what keeps node ablation of a 2-layer model near the cost of one MLP per
answer position a node reaches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformer_lens.model_bridge import TransformerBridge

from arithlens.analysis.accuracy import check_chunk_size
from arithlens.model import AnswerForward
from arithlens.task import AdditionBatch

Site = tuple[str, int | None, int | None]  # (hook name, head, position) to overwrite; None = all of that axis
# (layer, "z" | "mlp_out" | "post", value [b, positions, ...], position of its first row) -> edits value in place
Edit = Callable[[int, str, torch.Tensor, int], None]


@dataclass(frozen=True)
class Target:
    """One ablation at a position: a head's z, an MLP's output, or a whole position's site.

    A "post" target replaces resid_post at `position` in `layer` and every
    later layer; an "output" target every head's z and the MLP output there,
    in `layer` and every later layer; an "input" target layer 0's resid_pre.
    """

    kind: str  # "z" | "mlp_out" | "post" | "output" | "input"
    layer: int
    position: int
    head: int | None = None

    def sites(self, n_layers: int) -> list[Site]:
        """(hook name, head, position) for the bridge engine."""
        layers = range(self.layer, n_layers)
        if self.kind == "z":
            return [(f"blocks.{self.layer}.attn.hook_z", self.head, self.position)]
        if self.kind == "mlp_out":
            return [(f"blocks.{self.layer}.hook_mlp_out", None, self.position)]
        if self.kind == "output":
            return [(f"blocks.{layer}.{hook}", None, self.position) for layer in layers
                    for hook in ("attn.hook_z", "hook_mlp_out")]
        if self.kind == "input":
            return [("blocks.0.hook_resid_pre", None, self.position)]
        return [(f"blocks.{layer}.hook_resid_post", None, self.position) for layer in layers]


def chunks(size: int, chunk_size: int) -> list[slice]:
    """Slices of at most `chunk_size` rows covering `size` rows."""
    check_chunk_size(chunk_size)
    return [slice(start, min(start + chunk_size, size)) for start in range(0, size, chunk_size)]


@dataclass
class Cache:
    """Per layer, at the positions that layer computes: z [b, q, head, d_head], resid_mid and mlp_out [b, q, d_model]."""

    z: list[torch.Tensor] = field(default_factory=list)
    mid: list[torch.Tensor] = field(default_factory=list)
    mlp_out: list[torch.Tensor] = field(default_factory=list)
    # layer -> (queries [b, head, q, d_head], keys, values [b, head, kv_len, d_head]) for layers after the
    # first, which a change downstream of a node reads (a forward pass only; a mean has none)
    qkv: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    logits: torch.Tensor | None = None  # [b, n+1, d_vocab]
    # the last layer's MLP at one position: (position, pre-activation, its logit contribution)
    hidden: tuple[int, torch.Tensor, torch.Tensor] | None = None
    tokens: torch.Tensor | None = None  # [b, kv_len], for a forward pass: the inputs are recomputed, not kept
    embed: torch.Tensor | None = None  # [1, kv_len, d_model], for a mean: the mean input (token + position)

    def post(self, layer: int, rows: slice = slice(None)) -> torch.Tensor:
        return self.mid[layer][:, rows] + self.mlp_out[layer][:, rows]

    def site(self, target: Target, layer: int, rel: int) -> torch.Tensor:
        """The cached value a target overwrites, [b, ...]."""
        if target.kind == "z":
            return self.z[layer][:, rel, target.head]
        if target.kind == "mlp_out":
            return self.mlp_out[layer][:, rel]
        return self.mid[layer][:, rel] + self.mlp_out[layer][:, rel]

    def tensors(self) -> list[torch.Tensor]:
        return [*self.z, *self.mid, *self.mlp_out]

    @staticmethod
    def from_tensors(tensors: list[torch.Tensor]) -> Cache:
        layers = len(tensors) // 3
        return Cache(tensors[:layers], tensors[layers : 2 * layers], tensors[2 * layers :])


class Engine:
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

    def layers(self, resid: torch.Tensor, first: int, cache: Cache | None = None,
               edit: Edit | None = None) -> torch.Tensor:
        """Answer logits from resid_pre of layer `first` ([b, kv_len, d_model]).

        `edit` may change each layer's z, mlp_out and resid_post in place (in
        that order), at the positions that layer computes; `cache` collects
        what `Cache` holds.
        """
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
            if edit is not None:
                edit(layer, "z", z, start)
            mid = resid[:, start:] + f._linear(z.flatten(2), f"{prefix}.attn.o")
            mlp_out = self._mlp(mid, layer)
            if edit is not None:
                edit(layer, "mlp_out", mlp_out, start)
            resid = mid + mlp_out
            if cache is not None:
                cache.z.append(z)
                cache.mid.append(mid)
                cache.mlp_out.append(mlp_out)
                cache.qkv[layer] = (queries, keys, values)  # layer 0's: read when a position's input changes
            if edit is not None:
                edit(layer, "post", resid, start)
        return self._unembed(resid)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Layer 0's resid_pre, token plus position embedding: [b, pos, d_model] for tokens [b, pos]."""
        return self.f.params["embed.weight"][tokens] + self.f.params["pos_embed.weight"][: tokens.shape[1]]

    def inputs(self, cache: Cache) -> torch.Tensor:
        """The cached questions' layer-0 resid_pre, [b, kv_len, d_model] (b = 1 for a mean)."""
        if cache.embed is not None:
            return cache.embed
        assert cache.tokens is not None  # every forward-pass cache keeps its tokens
        return self.embed(cache.tokens)

    def run(self, tokens: torch.Tensor) -> Cache:
        tokens = tokens[:, : self.f.kv_len]
        cache = Cache(tokens=tokens)
        cache.logits = self.layers(self.embed(tokens), 0, cache)
        return cache

    def means(self, reference: AdditionBatch, chunk_size: int) -> Cache:
        """The mean over `reference` of everything an ablation can write, as a one-row cache.

        One chunk's cache is held at a time.
        """
        device = self.f.answer_mask.device
        totals: list[torch.Tensor] = []
        for part in chunks(len(reference), chunk_size):
            cache = self.run(reference.tokens[part].to(device))
            sums = [t.sum(0, keepdim=True) for t in (*cache.tensors(), self.inputs(cache))]
            totals = [a + b for a, b in zip(totals, sums)] if totals else sums
        means = [t / len(reference) for t in totals]
        mean = Cache.from_tensors(means[:-1])
        mean.embed = means[-1]
        return mean

    def _folded_head_change(self, cache: Cache, rel: int, head: slice, dz: torch.Tensor) -> torch.Tensor:
        """Change in the logits [b, d_vocab] at last-layer position `rel` when one head's z moves by dz."""
        folded = self.folded
        if cache.hidden is None or cache.hidden[0] != rel:  # shared by the heads at one position
            pre = self.f._linear(cache.mid[self.last][:, rel], f"blocks.{self.last}.mlp.in")  # [b, d_mlp]
            cache.hidden = (rel, pre, self.f._activation(pre) @ folded["unembed_out"].T)
        _, pre, mlp_logits = cache.hidden
        new_post = self.f._activation(torch.addmm(pre, dz, folded["in_o"][:, head].T))  # [b, d_mlp]
        return new_post @ folded["unembed_out"].T - mlp_logits + dz @ folded["unembed_o"][:, head].T

    def _position_logits(self, cache: Cache, target: Target, source: Cache | None) -> torch.Tensor:
        """Answer logits with a whole position's input, or its output in `target.layer` and every later layer
        (every head's z and the MLP output), overwritten; recomputed from the changed position onwards."""
        position, layer = target.position, target.layer
        batch = cache.mid[0].shape[0]
        if target.kind == "input":  # layer 0 recomputes from here: keys and values at p, queries from p on
            new = torch.zeros_like(cache.mid[0][:, 0]) if source is None else self.inputs(source)[:, position]
            return self._downstream(cache, -1, position, new.expand(batch, -1)[:, None], None)

        def overwritten(stage: str, at: int) -> torch.Tensor:
            """What the source holds for this position's z or mlp_out in layer `at`."""
            rel = position - self.first_query(at)
            kept = cache.z[at][:, rel] if stage == "z" else cache.mlp_out[at][:, rel]
            if source is None:
                return torch.zeros_like(kept)
            return (source.z if stage == "z" else source.mlp_out)[at][:, rel].expand_as(kept)

        rel = position - self.first_query(layer)
        w_o = self.f.params[f"blocks.{layer}.attn.o.weight"]  # [d_model, head * d_head]
        dz = (overwritten("z", layer) - cache.z[layer][:, rel]).flatten(1)  # [b, head * d_head]
        post = cache.mid[layer][:, rel] + dz @ w_o.T + overwritten("mlp_out", layer)  # [b, d_model]
        if layer == self.last:
            logits = cache.logits.clone()
            logits[:, rel] = self._unembed(post)
            return logits

        def edit(later: int, stage: str, value: torch.Tensor, start: int) -> None:
            # later layers recompute rows from `start`; the last one may start after this position
            if stage != "post" and start <= position < start + value.shape[1]:
                value[:, position - start] = overwritten(stage, later)

        return self._downstream(cache, layer, position, post[:, None], edit)

    def ablated_logits(self, cache: Cache, target: Target, source: Cache | None) -> torch.Tensor | None:
        """Answer logits with `target` overwritten from `source` (None = zeros); None when nothing changes."""
        layer, position = target.layer, target.position
        # An input at p is read by attention at every later position, so by the answers whenever it is an input.
        reached = position < self.f.kv_len if target.kind == "input" else self.reaches_answers(layer, position)
        if not reached:
            return None
        if target.kind in ("input", "output"):
            return self._position_logits(cache, target, source)
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

            def overwrite_later(later: int, stage: str, resid: torch.Tensor, start: int) -> None:
                if stage == "post" and position >= start:
                    rel = position - self.first_query(later)
                    resid[:, position - start] = 0.0 if source is None else source.site(target, later, rel)

            edit = overwrite_later  # a resid_post ablation also holds every later layer's post at this position

        if layer == self.last:
            logits = cache.logits.clone()
            logits[:, rel] = self._unembed(post)
            return logits
        return self._downstream(cache, layer, position, post[:, None], edit)

    def _downstream(self, cache: Cache, layer: int, position: int, post: torch.Tensor, edit: Edit | None,
                    rows: tuple[int, int] | None = None, starts: list[int] | None = None) -> torch.Tensor:
        """Answer logits [b, rows, d_vocab] when layer `layer`'s resid_post (layer -1: the input, layer 0's
        resid_pre) changes to `post` ([b, r, d_model]) at positions position .. position+r-1; every other
        input is as cached.

        Later layers recompute positions from the first changed one (or from
        starts[later], where `edit` changes that layer earlier) up to the last
        answer row asked for (`rows`, [start, stop) with An as row 0; default
        all), with queries, keys and values recomputed only where their input
        changed (in the first later layer, at the changed rows alone).
        """
        f = self.f
        first_row, stop_row = rows or (0, self.f.kv_len - self.f.first_answer_logit)
        stop = f.first_answer_logit + stop_row  # positions after the last row asked for are never read
        changed = post
        for later in range(layer + 1, self.config.n_layers):
            prefix = f"blocks.{later}"
            start = min(position, starts[later]) if starts is not None else position
            if later == self.last:  # the last layer computes only the answer rows asked for
                start = max(start, f.first_answer_logit + first_row)
            begin = min(start, position)  # the input rows read: queries from `start`, changed rows from `position`
            # a new tensor [b, stop - begin, d_model]; layer -1 is the input (a position's input changed)
            rows_read = slice(begin, stop)
            inputs = cache.post(later - 1, rows_read) if later > 0 else self.inputs(cache)[:, rows_read].clone()
            inputs[:, position - begin : position - begin + changed.shape[1]] = changed
            normed = f._norm(inputs, f"{prefix}.ln1")
            cached_q, cached_k, cached_v = cache.qkv[later]
            end = position + changed.shape[1]  # the changed rows are position .. end-1
            new = normed[:, position - begin : end - begin]
            keys, values = cached_k[:, :, :stop].clone(), cached_v[:, :, :stop].clone()  # [b, head, stop, d_head]
            keys[:, :, position:end] = f._heads(f._linear(new, f"{prefix}.attn.k"))
            values[:, :, position:end] = f._heads(f._linear(new, f"{prefix}.attn.v"))
            offset = self.first_query(later)
            queries = cached_q[:, :, start - offset : stop - offset].clone()  # [b, head, q, d_head]
            low = max(start, position)
            if end > low:
                queries[:, :, low - start : end - start] = f._heads(f._linear(normed[:, low - begin : end - begin],
                                                                             f"{prefix}.attn.q"))
            scores = (queries @ keys.transpose(-1, -2)) / f.scale
            pattern = scores.masked_fill(f.full_mask[start:stop, :stop], float("-inf")).softmax(dim=-1)
            z = (pattern @ values).transpose(1, 2)  # [b, q, head, d_head]
            if edit is not None:
                edit(later, "z", z, start)
            mid = inputs[:, start - begin :] + f._linear(z.flatten(2), f"{prefix}.attn.o")
            mlp_out = self._mlp(mid, later)
            if edit is not None:
                edit(later, "mlp_out", mlp_out, start)
            changed = mid + mlp_out  # [b, stop - start, d_model]
            if edit is not None:
                edit(later, "post", changed, start)
            position = start
        logits = cache.logits[:, first_row:stop_row].clone()
        logits[:, position - f.first_answer_logit - first_row :] = self._unembed(changed)
        return logits

    def kept_logits(self, cache: Cache, source: Cache, keep_z: torch.Tensor, keep_mlp: torch.Tensor,
                    rows: slice = slice(None)) -> torch.Tensor:
        """Answer logits [b, rows, d_vocab] (rows An .. A0) with every head and MLP not kept overwritten from `source`.

        keep_z [layer, position, head] and keep_mlp [layer, position] (bool,
        positions < kv_len) say which heads' z and MLPs' outputs are kept. The
        first layer with an overwritten node that can reach `rows` starts from
        its cached z (its inputs are clean); later layers recompute from the
        first position anything changed at, as in `ablated_logits`.
        """
        f = self.f
        first_row, stop_row, _ = rows.indices(self.f.kv_len - self.f.first_answer_logit)
        stop = f.first_answer_logit + stop_row
        ablated = [~(keep_z[layer].all(dim=-1) & keep_mlp[layer]) for layer in range(self.config.n_layers)]
        starts = []  # per layer, the first position whose node is overwritten (stop when none)
        for layer, where in enumerate(ablated):
            low = f.first_answer_logit + first_row if layer == self.last else 0
            hits = where[low:stop].nonzero()
            starts.append(low + int(hits[0]) if len(hits) else stop)
        first = next((layer for layer, start in enumerate(starts) if start < stop), None)
        if first is None:
            return cache.logits[:, first_row:stop_row]
        position, offset = starts[first], self.first_query(first)
        part = slice(position - offset, stop - offset)  # the cached rows of layer `first` at positions position..stop-1
        heads = (~keep_z[first, position:stop].all(dim=-1)).nonzero().squeeze(-1)  # positions with a head overwritten
        mid = cache.mid[first][:, part].clone()  # [b, q, d_model]
        if len(heads):
            z = cache.z[first][:, part][:, heads]  # [b, h, head, d_head]
            new_z = torch.where(keep_z[first, position:stop, :, None][heads], z, source.z[first][:, part][:, heads])
            w_o = f.params[f"blocks.{first}.attn.o.weight"]  # [d_model, head * d_head]
            mid[:, heads] += (new_z - z).flatten(2) @ w_o.T
        mlp_out = cache.mlp_out[first][:, part].clone()
        # an MLP kept whose input changed; the rest keep their cached output or take the source's
        moved = (~keep_z[first, position:stop].all(dim=-1) & keep_mlp[first, position:stop]).nonzero().squeeze(-1)
        if len(moved):
            mlp_out[:, moved] = self._mlp(mid[:, moved], first)
        mlp_out = torch.where(keep_mlp[first, position:stop, None], mlp_out, source.mlp_out[first][:, part])
        post = mid + mlp_out
        if first == self.last:
            logits = cache.logits[:, first_row:stop_row].clone()
            logits[:, position - f.first_answer_logit - first_row :] = self._unembed(post)
            return logits

        # Only positions with an overwritten node changed in this layer: the next one reads the rest as cached.
        post = post[:, : int(ablated[first][position:stop].nonzero()[-1]) + 1]

        def edit(layer: int, stage: str, value: torch.Tensor, start: int) -> None:
            # [b, q, ...] rows from `start`; overwrite the nodes not kept there with the source's value
            q = value.shape[1]
            rel = slice(start - self.first_query(layer), start - self.first_query(layer) + q)
            if stage == "z":
                value.copy_(torch.where(keep_z[layer, start : start + q, :, None], value, source.z[layer][:, rel]))
            elif stage == "mlp_out":
                value.copy_(torch.where(keep_mlp[layer, start : start + q, None], value, source.mlp_out[layer][:, rel]))

        return self._downstream(cache, first, position, post, edit, (first_row, stop_row), starts)
