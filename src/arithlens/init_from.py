"""Start a larger model from a trained one, as the published mixed model started from an addition model.

`copy_into(target, source)` copies every weight of `source` into the leading block of the same
tensor in `target`, which must be at least as large in every dimension:

- the token embedding and unembedding rows of the source's vocabulary (the new `-` row starts fresh);
- each source layer's heads into the first heads of the same layer (same d_head), its MLP into the
  first d_mlp neurons, its LayerNorms and biases;
- the position embedding, shifted where the target has a sign token: the source position that
  predicted An (`=`) now sits before the sign, and answer positions move up by one, so each
  answer digit is still predicted from the embedding that predicted it before.

Everything else (new heads, neurons, layers and token rows) keeps the target's own seeded
initialisation. The copy is deterministic, so `--init-from` runs keep "same seed, same bits".
"""

from __future__ import annotations

import torch

from arithlens.config import ModelConfig
from arithlens.errors import ConfigError
from arithlens.model import TransformerBridge, model_config_of
from arithlens.task import task_for


def check_fits(target: ModelConfig, source: ModelConfig, source_name: str) -> None:
    """Refuse, naming the mismatch, a source whose shape cannot be copied into `target`."""
    wrong: list[str] = []
    for field, flag in (("n_digits", "--digits"), ("d_model", "--d-model"), ("normalization", "--norm"),
                        ("act_fn", "--act")):
        if getattr(source, field) != getattr(target, field):
            wrong.append(f"{field} {getattr(source, field)} (the new model has {getattr(target, field)}; "
                         f"use {flag} {getattr(source, field)})")
    if source.d_head != target.d_head:
        wrong.append(f"heads of width {source.d_head} (d_model / heads; the new model's are {target.d_head})")
    for field, flag in (("n_layers", "--layers"), ("n_heads", "--heads"), ("d_mlp", "--d-mlp")):
        if getattr(source, field) > getattr(target, field):
            wrong.append(f"{field} {getattr(source, field)}, more than the new model's {getattr(target, field)} "
                         f"(use {flag} {getattr(source, field)} or more)")
    if source.op not in ("add", target.op) and (source.op, target.op) != ("sub", "mixed"):
        wrong.append(f"operation {source.op!r}, which a {target.op!r} model cannot start from")
    if wrong:
        raise ConfigError(f"--init-from {source_name} does not fit the new {target.op} model: it has "
                          + "; ".join(wrong))


def _position_rows(target: ModelConfig, source: ModelConfig) -> list[int]:
    """For each source position, the target row it is copied to."""
    shift = task_for(target).answer_len - task_for(source).answer_len  # 1 when a sign token is added
    first_answer_logit = 2 * source.n_digits + 1
    rows = list(range(source.n_ctx))
    return [p if p < first_answer_logit else p + shift for p in rows]


@torch.no_grad()
def copy_into(target: TransformerBridge, source: TransformerBridge, source_name: str = "the source") -> int:
    """Copy `source`'s weights into `target` (see the module docstring); returns the number of weights copied."""
    target_config, source_config = model_config_of(target), model_config_of(source)
    check_fits(target_config, source_config, source_name)
    target_state = target.state_dict()
    copied = 0
    for name, weight in source.state_dict().items():
        into = target_state[name]
        if name == "pos_embed.weight":
            rows = _position_rows(target_config, source_config)
            into[rows] = weight.to(into.device)
            # The target's `=` row (which now predicts the sign) starts as the source's `=` row too.
            into[2 * source_config.n_digits + 1] = weight[2 * source_config.n_digits + 1].to(into.device)
        else:
            block = tuple(slice(0, size) for size in weight.shape)
            into[block] = weight.to(into.device)
        copied += weight.numel()
    return copied
