"""The fast ablation engine: the model as functions of its parameters, recomputing only what an ablation changes.

`Engine.run` caches one forward pass over a chunk of questions (per layer: z,
resid_mid and mlp_out at the positions that layer computes, plus the tokens);
`Engine.ablated_logits` overwrites one `Target` (a head's z, an MLP's output,
or a whole position's output, input or resid_post) with the values of a
source cache (a mean over the reference questions, a resampled forward pass,
or zeros) and recomputes from there to the answer logits. What a target can
change and what it costs is described in `ablation`'s module docstring, which
also holds the engines equal (`fast=False` runs the TransformerBridge with
overwriting hooks, from the same `Target.sites`).
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
Edit = Callable[[int, str, torch.Tensor], None]  # (layer, "z" | "mlp_out" | "post", value) -> edits value in place


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
    logits: torch.Tensor | None = None  # [b, n+1, d_vocab]
    # the last layer's MLP at one position: (position, pre-activation, its logit contribution)
    hidden: tuple[int, torch.Tensor, torch.Tensor] | None = None
    tokens: torch.Tensor | None = None  # [b, kv_len], for a forward pass: the inputs are recomputed, not kept
    embed: torch.Tensor | None = None  # [1, kv_len, d_model], for a mean: the mean input (token + position)

    def post(self, layer: int) -> torch.Tensor:
        return self.mid[layer] + self.mlp_out[layer]

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
        that order), at the positions that layer computes.
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
                edit(layer, "z", z)
            mid = resid[:, start:] + f._linear(z.flatten(2), f"{prefix}.attn.o")
            mlp_out = self._mlp(mid, layer)
            if edit is not None:
                edit(layer, "mlp_out", mlp_out)
            resid = mid + mlp_out
            if cache is not None:
                cache.z.append(z)
                cache.mid.append(mid)
                cache.mlp_out.append(mlp_out)
            if edit is not None:
                edit(layer, "post", resid)
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
        """Answer logits with a whole position's input or output (every layer's heads and MLP) overwritten."""
        position = target.position
        resid = self.inputs(cache)  # [b, kv_len, d_model]
        if target.kind == "input":
            resid = resid.clone()
            resid[:, position] = 0.0 if source is None else self.inputs(source)[:, position]
            return self.layers(resid, 0)

        def edit(layer: int, stage: str, value: torch.Tensor) -> None:
            rel = position - self.first_query(layer)
            if stage == "post" or rel < 0 or layer < target.layer:
                return
            if source is None:
                value[:, rel] = 0.0
            else:
                value[:, rel] = (source.z if stage == "z" else source.mlp_out)[layer][:, rel]

        return self.layers(resid, 0, edit=edit)

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

            def overwrite_later(later: int, stage: str, resid: torch.Tensor) -> None:
                later_rel = position - self.first_query(later)
                if stage == "post" and later_rel >= 0:
                    resid[:, later_rel] = 0.0 if source is None else source.site(target, later, later_rel)

            edit = overwrite_later  # a resid_post ablation also holds every later layer's post at this position

        if layer == self.last:
            logits = cache.logits.clone()
            logits[:, rel] = self._unembed(post)
            return logits
        resid = cache.post(layer).clone()
        resid[:, position] = post
        return self.layers(resid, layer + 1, edit=edit)
