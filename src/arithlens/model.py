"""The model: a TransformerLens 4.x `TransformerBridge`, plus a fast answer-only forward.

`build_model` boots a native TransformerBridge, so `run_with_cache`,
`run_with_hooks`, `ActivationCache` methods and `transformer_lens.patching`
all work on it with the classic hook names (`blocks.0.attn.hook_z`, ...).

Every model carries an `AdditionTokenizer` (characters 0-9, `+`, `=`, no BOS), so
the TransformerLens string utilities work: `model.to_tokens("12345+67890=")`,
`model.to_str_tokens(...)`, `model.to_string(...)` and
`model.generate("12345+67890=", max_new_tokens=6, do_sample=False)`. It adds no
parameter and changes no logit.

`AnswerForward` computes the same logits, but only at the n+1 positions that
predict answer digits. The loss reads nothing else, so the gradients are the
same while the last layer's queries, attention output, MLP and unembedding run
on 6 positions instead of 18 (5 digits). It reads the bridge's own parameters,
so training through it trains the bridge. A test holds both paths equal.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from arithlens.config import ModelConfig
from arithlens.errors import ConfigError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedTokenizer

SYMBOLS = (*(str(d) for d in range(10)), "+", "=", "-")  # token id = index: 0-9, + (10), = (11), - (12)
PAD_TOKEN = "<pad>"


class AdditionTokenizer(PreTrainedTokenizer):
    """A character tokenizer for a task's vocabulary, for TransformerLens's string utilities.

    Each of 0-9, `+`, `=` is one token (ids 0-11, as `arithlens.task` encodes them), and `-` (12)
    for subtraction and mixed models (`d_vocab=13`); whitespace is skipped and any other character
    is an error. There is no BOS.
    `<pad>` (id 12, or 13 with `-`) stands in as the pad and end-of-sequence token, which TransformerLens's
    padding and `generate` ask for: it lies outside the model's 12-token vocabulary, so the
    model never predicts it (generation runs to `max_new_tokens`) and a padded batch of
    unequal questions fails at the embedding instead of running on a made-up token.
    A `transformers.PreTrainedTokenizer` because TransformerLens checks for one
    (`setup_tokenizer`) and calls its `__call__`, `decode`, `batch_decode` and padding.
    """

    vocab_files_names = {"vocab_file": "vocab.json"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, d_vocab: int = 12, **kwargs: Any) -> None:
        self._symbols = SYMBOLS[:d_vocab]
        self._ids = {symbol: index for index, symbol in enumerate(self._symbols)}
        kwargs.setdefault("pad_token", PAD_TOKEN)
        kwargs.setdefault("eos_token", PAD_TOKEN)
        kwargs.pop("vocab_file", None)  # the vocabulary is fixed; a saved copy only documents it
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self._symbols)

    def get_vocab(self) -> dict[str, int]:
        return {**self._ids, **self.added_tokens_encoder}

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        tokens = [c for c in text if not c.isspace()]
        unknown = sorted({c for c in tokens if c not in self._ids})
        if unknown:
            known = ", ".join(repr(s) for s in self._symbols[10:])
            raise ValueError(f"this model's tokenizer knows only 0-9, {known}, not {', '.join(map(repr, unknown))}")
        return tokens

    def _convert_token_to_id(self, token: str) -> int:
        return self._ids[token]

    def _convert_id_to_token(self, index: int) -> str:
        return self._symbols[index] if 0 <= index < len(self._symbols) else PAD_TOKEN

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        path = os.path.join(save_directory, (f"{filename_prefix}-" if filename_prefix else "") + "vocab.json")
        with open(path, "w", encoding="utf-8") as file:
            json.dump(self._ids, file)
        return (path,)


def bridge_config(config: ModelConfig) -> TransformerBridgeConfig:
    """The TransformerLens config for an arithlens `ModelConfig`."""
    return TransformerBridgeConfig(
        n_layers=config.n_layers,
        d_model=config.d_model,
        d_head=config.d_head,
        n_heads=config.n_heads,
        d_mlp=config.d_mlp,
        d_vocab=config.d_vocab,
        n_ctx=config.n_ctx,
        act_fn=config.act_fn,
        normalization_type=config.normalization,
        seed=config.seed,
    )


def resolve_device(name: str) -> torch.device:
    """A torch device for a user-given name, with a clear error if it is unusable."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r}: use 'cpu', 'cuda', 'cuda:0' or 'mps'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but CUDA is not available here; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} was asked for but MPS is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unsupported device {name!r}: use 'cpu', 'cuda' or 'mps'")
    return device


def build_model(config: ModelConfig, device: torch.device | str = "cpu") -> TransformerBridge:
    """A freshly initialised model (deterministic for `config.seed`), in eval mode.

    `model.arithlens_config` holds the `ModelConfig` it was built from, and
    `model.tokenizer` an `AdditionTokenizer` (strings in, no BOS prepended).
    """
    if isinstance(device, str):
        device = resolve_device(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = TransformerBridge.boot_native(bridge_config(config), device=str(device))
    if config.init == "seed":
        _seed_init(model, config)
    model.eval()  # transformer_lens.patching refuses models in train mode
    model.arithlens_config = config
    _attach_tokenizer(model)
    return model


def _attach_tokenizer(model: TransformerBridge) -> None:
    """Give the bridge an `AdditionTokenizer` and tell TransformerLens our models have no BOS.

    The first assignment skips TransformerLens's tokenizer set-up, which would encode "a" to
    probe for BOS/EOS and reset d_vocab from the tokenizer (13 with <pad>): the flags are set here.
    """
    model.tokenizer = AdditionTokenizer(d_vocab=model_config_of(model).d_vocab)
    model.cfg.default_prepend_bos = False  # to_tokens/generate prepend nothing unless asked
    model.cfg.tokenizer_prepends_bos = False  # nothing to strip after tokenizing either
    model.cfg.tokenizer_appends_eos = False


def _seed_init(model: TransformerBridge, config: ModelConfig) -> None:
    """Re-draw the weights as the seed notebook did: every matrix N(0, 1/d_model) except the
    unembedding, N(0, 1/d_vocab); biases zero, norm scales one. Deterministic for `config.seed`."""
    generator = torch.Generator().manual_seed(config.seed)
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if name.endswith(".bias"):
                tensor.zero_()
            elif ".ln" in name or name.startswith("ln_final"):
                tensor.fill_(1.0)
            else:
                fan = config.d_vocab if name == "unembed.weight" else config.d_model
                draw = torch.randn(tensor.shape, generator=generator) / math.sqrt(fan)
                tensor.copy_(draw.to(tensor.device))


def model_config_of(model: TransformerBridge) -> ModelConfig:
    """The arithlens config a model was built with."""
    config = getattr(model, "arithlens_config", None)
    if not isinstance(config, ModelConfig):
        raise ConfigError("this model was not built by arithlens (no arithlens_config); use build_model or load_model")
    return config


class AnswerForward:
    """Logits at the answer-predicting positions only, from the bridge's parameters.

    Token positions after 3n+1 are dropped (nothing reads them), earlier layers
    run in full, and the last layer computes queries onwards only at positions
    2n+1 .. 3n+1.
    """

    def __init__(self, model: TransformerBridge) -> None:
        self.config = model_config_of(model)
        self.params = dict(model.state_dict(keep_vars=True))  # the live Parameters, shared with the bridge
        self.eps = float(model.cfg.eps)
        self.scale = math.sqrt(self.config.d_head)
        n = self.config.n_digits
        self.first_answer_logit = 2 * n + 1
        self.kv_len = self.config.n_ctx - 1
        device = self.params["embed.weight"].device
        query_positions = torch.arange(self.first_answer_logit, self.kv_len, device=device)
        key_positions = torch.arange(self.kv_len, device=device)
        # True where a key lies after the query: [q_pos, k_pos]
        self.answer_mask = key_positions[None, :] > query_positions[:, None]
        self.full_mask = key_positions[None, :] > key_positions[:, None]

    def _norm(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        kind = self.config.normalization
        if kind is None:
            return x
        weight = self.params.get(f"{prefix}.weight")
        bias = self.params.get(f"{prefix}.bias")
        if kind in ("LN", "LNPre"):
            return F.layer_norm(x, (x.shape[-1],), weight, bias, self.eps)
        normed = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed * weight if weight is not None else normed

    def _linear(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.linear(x, self.params[f"{prefix}.weight"], self.params.get(f"{prefix}.bias"))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, pos, _ = x.shape
        return x.view(batch, pos, self.config.n_heads, self.config.d_head).transpose(1, 2)

    def _activation(self, x: torch.Tensor) -> torch.Tensor:
        act = self.config.act_fn
        if act == "relu":
            return F.relu(x)
        if act == "gelu":
            return F.gelu(x)
        if act == "gelu_new":
            return F.gelu(x, approximate="tanh")
        return F.silu(x)

    def _block(self, resid: torch.Tensor, layer: int, answer_only: bool) -> torch.Tensor:
        prefix = f"blocks.{layer}"
        normed = self._norm(resid, f"{prefix}.ln1")  # [batch, kv_len, d_model]
        keys = self._heads(self._linear(normed, f"{prefix}.attn.k"))  # [batch, head, kv_len, d_head]
        values = self._heads(self._linear(normed, f"{prefix}.attn.v"))
        if answer_only:
            resid = resid[:, self.first_answer_logit :]  # [batch, n+1, d_model]
            normed = normed[:, self.first_answer_logit :]
            mask = self.answer_mask
        else:
            mask = self.full_mask
        queries = self._heads(self._linear(normed, f"{prefix}.attn.q"))  # [batch, head, q_pos, d_head]
        scores = (queries @ keys.transpose(-1, -2)) / self.scale  # [batch, head, q_pos, kv_len]
        pattern = scores.masked_fill(mask, float("-inf")).softmax(dim=-1)
        z = (pattern @ values).transpose(1, 2).flatten(2)  # [batch, q_pos, head * d_head]
        resid = resid + self._linear(z, f"{prefix}.attn.o")
        hidden = self._activation(self._linear(self._norm(resid, f"{prefix}.ln2"), f"{prefix}.mlp.in"))
        return resid + self._linear(hidden, f"{prefix}.mlp.out")  # [batch, q_pos, d_model]

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [batch, answer_len, d_vocab] predicting the answer tokens (sign first where there is one)."""
        tokens = tokens[:, : self.kv_len]
        # A one-hot matmul, not `W_E[tokens]`: indexing's backward accumulates rows in a
        # thread-dependent order, so two same-seed runs on 2+ threads drifted apart by ~1e-5.
        one_hot = F.one_hot(tokens, self.config.d_vocab).to(self.params["embed.weight"].dtype)  # [batch, kv_len, vocab]
        resid = one_hot @ self.params["embed.weight"] + self.params["pos_embed.weight"][: self.kv_len]
        last = self.config.n_layers - 1
        for layer in range(self.config.n_layers):
            resid = self._block(resid, layer, answer_only=layer == last)
        resid = self._norm(resid, "ln_final")
        return self._linear(resid, "unembed")


def answer_logits(model: TransformerBridge, tokens: torch.Tensor) -> torch.Tensor:
    """Full-bridge logits at the answer-predicting positions, [batch, answer_len, d_vocab]."""
    config = model_config_of(model)
    return model(tokens)[:, 2 * config.n_digits + 1 : config.n_ctx - 1]


def predicted_digits(logits: torch.Tensor) -> torch.Tensor:
    """Argmax over the digit tokens 0-9 only (never `+` or `=`)."""
    return logits[..., :10].argmax(dim=-1)


def predicted_answer(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Predicted answer tokens [..., answer_len] from logits [..., answer_len, d_vocab]: the argmax over
    the tokens each position may hold (`ArithmeticTask.answer_allowed`): digits, or `+`/`-` for a sign."""
    allowed = allowed.to(logits.device)
    return logits.masked_fill(~allowed, float("-inf")).argmax(dim=-1)
