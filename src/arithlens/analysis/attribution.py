"""Logit lens and direct logit attribution (DLA), per answer digit, from TransformerLens caches.

Both read the activation cache of a `run_with_cache` forward through the bridge:

- The logit lens takes `cache.accumulated_resid(incl_mid=True, apply_ln=True)`
  at each answer-predicting position and unembeds every stage (`0_pre`,
  `0_mid`, ..., `final_post`); the last stage is the model's own logits.
- DLA takes `cache.get_full_resid_decomposition(expand_neurons=False,
  apply_ln=True)`, which stacks every head's result (`cache.stack_head_results`),
  every MLP's output (`cache.decompose_resid`), the embeddings and the summed
  output biases, scaled by the cached final-norm scale (`apply_ln_to_stack`).
  Each component is dotted with the unembedding direction of the correct digit
  (and of correct minus best wrong digit). That is exactly `cache.logit_attrs`
  for models without a final-norm weight (the default, which has no LayerNorm;
  a test holds them equal); with a LN/RMS weight the weight is folded into the
  direction, as TransformerLens's `fold_ln` would, because `logit_attrs` alone
  would ignore it. The components plus the constant `unembed_bias` row
  (b_U, plus the final-norm bias through W_U) sum exactly to the logit.

TL 4.3 note: `stack_head_results` works on the bridge without
`cfg.use_attn_result`; the cache computes each head's result from `hook_z @ W_O`
itself (`ActivationCache._ensure_head_results`), so no flag is set here.

Per-position attribution splits each head's result by the source position it
attends to: pattern[q, k] * (v[k] @ W_O), which sums over k to the head's result.

Answer digit classes (as in the training metrics): for A_d with d < n,
BA = no carry into d, UC1 = carry in and x_d + y_d != 9, US9 = carry in and
x_d + y_d == 9; A_n only has "all". Subtraction's are BD, UB and UZ (no borrow in;
a borrow into an unequal pair; a borrow into an equal pair, which passes it on); the
tables name them so (`vocabulary.localise`). A sign token is not analysed here: these
tables cover the answer digits.
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import torch
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.model_bridge import TransformerBridge

from arithlens.analysis.accuracy import check_batch, check_chunk_size
from arithlens.analysis.naming import node_name
from arithlens.errors import ArithlensError
from arithlens.model import model_config_of
from arithlens.vocabulary import canonical_name, localise
from arithlens.task import AdditionBatch, task_for_batch

DIGIT_CLASSES = ("all", "BA", "UC1", "US9")


def digit_class_masks(batch: AdditionBatch, digit: int) -> dict[str, torch.Tensor]:
    """Boolean masks [batch] for each sub-task class of answer digit A`digit`."""
    n = batch.n_digits
    if not 0 <= digit <= n:
        raise ArithlensError(f"answer digit must be 0..{n}, got {digit}")
    masks = {"all": torch.ones(len(batch), dtype=torch.bool, device=batch.tokens.device)}
    if digit < n:
        carry_in = batch.use_carry[:, digit]
        masks["BA"] = ~carry_in
        masks["UC1"] = carry_in & ~batch.make_pass[:, digit]
        masks["US9"] = batch.use_pass[:, digit]
    return masks


def answer_targets(batch: AdditionBatch) -> torch.Tensor:
    """The correct answer digits [batch, n+1], An .. A0 (the order of the digit logit positions; a sign is left out)."""
    return batch.tokens[:, -(batch.n_digits + 1) :]


def chunks(batch: AdditionBatch, chunk_size: int) -> Iterator[AdditionBatch]:
    for start in range(0, len(batch), chunk_size):
        yield batch.select(slice(start, start + chunk_size))


def best_wrong_digit(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The highest-scoring digit token other than the target, per row: [...]."""
    digit_logits = logits[..., :10].clone()
    digit_logits.scatter_(-1, targets[..., None].clamp(max=9), float("-inf"))
    return digit_logits.argmax(dim=-1)


def _final_norm(model: TransformerBridge) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    state = model.state_dict()
    return state.get("ln_final.weight"), state.get("ln_final.bias")


def _directions(model: TransformerBridge, tokens: torch.Tensor) -> torch.Tensor:
    """Unembedding directions [..., d_model] of `tokens`, with the final-norm weight folded in."""
    weight, _ = _final_norm(model)
    directions = model.W_U.T[tokens]  # [..., d_model]
    return directions * weight if weight is not None else directions


def _constant(model: TransformerBridge, tokens: torch.Tensor) -> torch.Tensor:
    """What every component leaves out: b_U plus the final-norm bias through W_U, [...]."""
    _, bias = _final_norm(model)
    constant = model.b_U[tokens]
    if bias is not None:
        constant = constant + (bias @ model.W_U)[tokens]
    return constant


class _Accumulator:
    """Sums per (answer digit, class) over chunks, turned into means at the end."""

    def __init__(self) -> None:
        self.sums: dict[tuple[int, str], torch.Tensor] = {}
        self.counts: dict[tuple[int, str], int] = {}

    def add(self, values: torch.Tensor, batch: AdditionBatch, n: int) -> None:
        """values [batch, n+1, ...] with columns An .. A0."""
        for column, digit in enumerate(range(n, -1, -1)):
            for name, mask in digit_class_masks(batch, digit).items():
                key = (digit, name)
                total = values[:, column][mask.to(values.device)].sum(dim=0).double().cpu()
                self.sums[key] = self.sums.get(key, 0) + total
                self.counts[key] = self.counts.get(key, 0) + int(mask.sum())

    def means(self) -> Iterator[tuple[int, str, int, torch.Tensor]]:
        for (digit, name), total in self.sums.items():
            count = self.counts[(digit, name)]
            yield digit, name, count, total / count if count else torch.full_like(total, float("nan"))


ANALYSIS_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "attn.hook_z", "attn.hook_v",
                  "attn.hook_pattern", "hook_embed", "hook_pos_embed", "hook_mlp_out", "hook_attn_out", "hook_scale")


def analysis_cache(model: TransformerBridge, batch: AdditionBatch, *, chunk_size: int = 1024,
                   hooks: tuple[str, ...] = ANALYSIS_HOOKS) -> ActivationCache:
    """One `ActivationCache` over all of `batch`, holding only hooks whose names end with one of `hooks`.

    The analyses here (and attention, PCA) read the same few hooks, so the
    runner builds this once and passes it as `cache=`; a few thousand
    questions of the default model take a few hundred MB.
    """
    check_batch(model, batch)
    check_chunk_size(chunk_size)
    device = model.W_U.device
    parts: list[dict[str, torch.Tensor]] = []
    with torch.inference_mode():
        for part in chunks(batch, chunk_size):
            _, cache = model.run_with_cache(part.tokens.to(device), names_filter=lambda name: name.endswith(hooks))
            parts.append(dict(cache.cache_dict))
    merged = parts[0] if len(parts) == 1 else {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
    return ActivationCache(merged, model)


def cached_chunks(model: TransformerBridge, batch: AdditionBatch, chunk_size: int, hooks: tuple[str, ...],
                  cache: ActivationCache | None) -> Iterator[tuple[AdditionBatch, ActivationCache]]:
    """(questions, their cache) pairs: the given cache of the whole batch, or one fresh cache per chunk."""
    check_chunk_size(chunk_size)
    if cache is not None:
        size = next(iter(cache.cache_dict.values())).shape[0]
        if size != len(batch):
            raise ArithlensError(f"the cache holds {size} questions but the batch has {len(batch)}; "
                                 "build it with analysis_cache(model, batch)")
        yield batch, cache
        return
    for part in chunks(batch, chunk_size):
        yield part, analysis_cache(model, part, chunk_size=len(part), hooks=hooks)


def _final_logits(model: TransformerBridge, cache: ActivationCache, positions: list[int]) -> torch.Tensor:
    """The model's logits [batch, n+1, d_vocab] at `positions`, rebuilt from the cached final residual."""
    stack = cache.accumulated_resid(layer=None, apply_ln=True, pos_slice=positions)
    return stack[-1] @ model.W_U + model.b_U


def logit_lens_logits(model: TransformerBridge, batch: AdditionBatch, *, chunk_size: int = 1024,
                      cache: ActivationCache | None = None) -> tuple[torch.Tensor, list[str]]:
    """Logits of every accumulated-residual stage at the answer-predicting positions.

    Returns ([stage, batch, n+1, d_vocab], stage labels); the last stage,
    `final_post`, equals the model's logits.
    """
    check_batch(model, batch)
    positions = task_for_batch(model_config_of(model), batch).digit_logit_positions
    parts: list[torch.Tensor] = []
    labels: list[str] = []
    hooks = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_scale")
    with torch.inference_mode():
        for _, part_cache in cached_chunks(model, batch, chunk_size, hooks, cache):
            stack, labels = part_cache.accumulated_resid(layer=None, incl_mid=True, apply_ln=True,
                                                    pos_slice=positions, return_labels=True)
            parts.append((stack @ model.W_U + model.b_U).cpu())  # [stage, chunk, n+1, d_vocab]
    return torch.cat(parts, dim=1), labels


def logit_lens(model: TransformerBridge, batch: AdditionBatch, *, chunk_size: int = 1024,
               cache: ActivationCache | None = None) -> pd.DataFrame:
    """How well each residual stage already predicts each answer digit.

    Columns [answer_digit, position, subtask_class, stage_index, stage, questions,
    correct_logit, logit_diff, accuracy, loss]: means over the class's questions
    of the correct digit's logit, its lead over the best wrong digit, the argmax
    accuracy over digits 0-9 and the float64 cross-entropy over all logits.
    """
    n = check_batch(model, batch)
    logits, labels = logit_lens_logits(model, batch, chunk_size=chunk_size, cache=cache)  # [stage, batch, n+1, vocab]
    targets = answer_targets(batch).cpu()[None].expand(logits.shape[:3])  # [stage, batch, n+1]
    correct = logits.gather(-1, targets[..., None]).squeeze(-1)
    wrong = logits.gather(-1, best_wrong_digit(logits, targets)[..., None]).squeeze(-1)
    hit = (logits[..., :10].argmax(dim=-1) == targets).double()
    loss = -logits.double().log_softmax(dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    stats = torch.stack([correct.double(), (correct - wrong).double(), hit, loss], dim=-1)  # [stage, batch, n+1, 4]
    accumulator = _Accumulator()
    accumulator.add(stats.permute(1, 2, 0, 3), batch.to("cpu"), n)  # values [batch, n+1, stage, 4]
    task = task_for_batch(model_config_of(model), batch)
    rows = []
    for digit, name, count, mean in accumulator.means():
        for stage_index, stage in enumerate(labels):
            values = mean[stage_index].tolist()
            rows.append({
                "answer_digit": f"A{digit}", "position": task.logit_position_for_answer_digit(digit),
                "subtask_class": name, "stage_index": stage_index, "stage": stage, "questions": count,
                "correct_logit": values[0], "logit_diff": values[1], "accuracy": values[2], "loss": values[3],
            })
    return localise(_sorted(pd.DataFrame(rows), ["answer_digit", "subtask_class", "stage_index"], n), task)


def _component_meta(label: str, position: int) -> dict[str, object]:
    """kind/layer/head/node for a get_full_resid_decomposition label."""
    if label.startswith("L") and "H" in label:
        layer, head = (int(x) for x in label[1:].split("H"))
        return {"kind": "head", "layer": layer, "head": head, "node": node_name(position, layer, head)}
    if label.endswith("_mlp_out"):
        layer = int(label.split("_")[0])
        return {"kind": "mlp", "layer": layer, "head": -1, "node": node_name(position, layer, None)}
    return {"kind": label, "layer": -1, "head": -1, "node": ""}


def _attributions(model: TransformerBridge, stack: torch.Tensor, cache: ActivationCache, positions: list[int],
                  targets: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """Logit and logit-diff attributions [component, batch, n+1, 2] of a residual stack [component, batch, n+1, d_model]."""
    scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=positions)
    correct_dir = _directions(model, targets)  # [batch, n+1, d_model]
    diff_dir = correct_dir - _directions(model, wrong)
    return torch.stack([(scaled * correct_dir).sum(-1), (scaled * diff_dir).sum(-1)], dim=-1)


def _has_final_norm(model: TransformerBridge) -> bool:
    return model.cfg.normalization_type in ("LN", "LNPre", "RMS", "RMSPre")


def direct_logit_attribution(model: TransformerBridge, batch: AdditionBatch, *, chunk_size: int = 1024,
                             cache: ActivationCache | None = None) -> pd.DataFrame:
    """Direct logit attribution of every head, MLP, embedding and bias, per answer digit.

    Columns [answer_digit, position, subtask_class, component, kind, layer, head,
    node, questions, logit_attr, logit_diff_attr]. kind is head, mlp, embed,
    pos_embed, bias (summed attention/MLP output biases) or unembed_bias (b_U
    and the final-norm bias); per answer digit and class the rows sum to the
    mean logit of the correct digit (logit_attr) and to its mean lead over the
    best wrong digit (logit_diff_attr). Heads and MLPs are nodes at the
    position that predicts the digit (e.g. P16L0H1 for A0 with 5 digits).
    """
    n = check_batch(model, batch)
    task = task_for_batch(model_config_of(model), batch)
    positions = task.digit_logit_positions
    device = model.W_U.device
    accumulator = _Accumulator()
    labels: list[str] = []
    hooks = ("hook_resid_pre", "hook_resid_post", "attn.hook_z", "hook_embed", "hook_pos_embed", "hook_mlp_out",
             "hook_scale")
    with torch.inference_mode():
        for part, part_cache in cached_chunks(model, batch, chunk_size, hooks, cache):
            targets = answer_targets(part).to(device)
            wrong = best_wrong_digit(_final_logits(model, part_cache, positions), targets)
            stack, labels = part_cache.get_full_resid_decomposition(expand_neurons=False, pos_slice=positions,
                                                                    return_labels=True)
            attrs = _attributions(model, stack, part_cache, positions, targets, wrong)  # [comp, chunk, n+1, 2]
            constant = torch.stack([_constant(model, targets), _constant(model, targets) - _constant(model, wrong)], -1)
            attrs = torch.cat([attrs, constant[None]], dim=0)
            accumulator.add(attrs.permute(1, 2, 0, 3), part.to("cpu"), n)  # [chunk, n+1, comp, 2]
    labels = [*labels, "unembed_bias"]
    rows = []
    for digit, name, count, mean in accumulator.means():
        position = task.logit_position_for_answer_digit(digit)
        for index, label in enumerate(labels):
            rows.append({
                "answer_digit": f"A{digit}", "position": position, "subtask_class": name, "component": label,
                **_component_meta(label, position), "questions": count,
                "logit_attr": float(mean[index, 0]), "logit_diff_attr": float(mean[index, 1]),
            })
    return localise(_sorted(pd.DataFrame(rows), ["answer_digit", "subtask_class"], n), task)


def head_source_attribution(model: TransformerBridge, batch: AdditionBatch, *, chunk_size: int = 512,
                            cache: ActivationCache | None = None) -> pd.DataFrame:
    """Each head's direct logit attribution split by the source position it reads.

    Columns [answer_digit, position, subtask_class, layer, head, node,
    source_pos, source_name, questions, logit_attr, logit_diff_attr]; summed
    over source_pos a head's rows equal its row in `direct_logit_attribution`.
    """
    n = check_batch(model, batch)
    config = model_config_of(model)
    task = task_for_batch(config, batch)
    positions = task.digit_logit_positions
    device = model.W_U.device
    accumulator = _Accumulator()
    normed = _has_final_norm(model)
    hooks = ("hook_resid_pre", "hook_resid_post", "attn.hook_v", "attn.hook_pattern", "hook_scale")
    with torch.inference_mode():
        for part, part_cache in cached_chunks(model, batch, chunk_size, hooks, cache):
            targets = answer_targets(part).to(device)
            wrong = best_wrong_digit(_final_logits(model, part_cache, positions), targets)
            correct_dir = _directions(model, targets)
            directions = torch.stack([correct_dir, correct_dir - _directions(model, wrong)], dim=-1)  # [b, n+1, d, 2]
            per_head = []
            for layer in range(config.n_layers):
                pattern = part_cache[f"blocks.{layer}.attn.hook_pattern"][:, :, positions]  # [chunk, head, n+1, k]
                values = part_cache[f"blocks.{layer}.attn.hook_v"]  # [chunk, k, head, d_head]
                w_o = model.blocks[layer].attn.W_O  # [head, d_head, d_model]
                for head in range(config.n_heads):
                    written = values[:, :, head] @ w_o[head]  # [chunk, k, d_model]
                    if normed:
                        # [k, chunk, n+1, d_model]: what the head moves from each source into each answer position
                        stack = pattern[:, head].permute(2, 0, 1)[..., None] * written.transpose(0, 1)[:, :, None]
                        per_head.append(_attributions(model, stack, part_cache, positions, targets, wrong))
                    else:
                        # No final norm, so apply_ln_to_stack is the identity: project each source onto the
                        # directions first instead of building the [k, chunk, n+1, d_model] stack (4x faster).
                        projected = torch.einsum("bkd,bqdm->bqkm", written, directions)  # [chunk, n+1, k, 2]
                        per_head.append((pattern[:, head, :, :, None] * projected).permute(2, 0, 1, 3))
            attrs = torch.stack(per_head, dim=0)  # [layer*head, k, chunk, n+1, 2]
            accumulator.add(attrs.permute(2, 3, 0, 1, 4), part.to("cpu"), n)  # [chunk, n+1, layer*head, k, 2]
    names = task.position_names()
    rows = []
    for digit, name, count, mean in accumulator.means():
        position = task.logit_position_for_answer_digit(digit)
        for index in range(config.n_layers * config.n_heads):
            layer, head = divmod(index, config.n_heads)
            for source in range(position + 1):
                rows.append({
                    "answer_digit": f"A{digit}", "position": position, "subtask_class": name, "layer": layer,
                    "head": head, "node": node_name(position, layer, head), "source_pos": source,
                    "source_name": names[source], "questions": count,
                    "logit_attr": float(mean[index, source, 0]), "logit_diff_attr": float(mean[index, source, 1]),
                })
    return localise(_sorted(pd.DataFrame(rows), ["answer_digit", "subtask_class"], n), task)


def _sorted(frame: pd.DataFrame, keys: list[str], n: int) -> pd.DataFrame:
    """Rows ordered An .. A0, classes in DIGIT_CLASSES order, keeping the order within a group."""
    if frame.empty:
        return frame
    order = {f"A{d}": n - d for d in range(n + 1)}
    frame = frame.assign(_digit=frame["answer_digit"].map(order),
                         _class=frame["subtask_class"].map(lambda c: DIGIT_CLASSES.index(canonical_name(c))),
                         _row=range(len(frame)))
    sort_keys = ["_digit", "_class"] + [k for k in keys if k not in ("answer_digit", "subtask_class")] + ["_row"]
    return frame.sort_values(sort_keys).drop(columns=["_digit", "_class", "_row"]).reset_index(drop=True)
