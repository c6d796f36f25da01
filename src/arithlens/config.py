"""Frozen, validated configuration for models and training runs.

Defaults are the seed notebook's: a 1-layer, 4-head, d_model 512 transformer
with no LayerNorm, trained with AdamW (lr 1e-4, wd 0.1, betas 0.9/0.98) on
batches of 64 fresh 5-digit questions for 3000 steps, seed 129000.
Every artefact stores these as JSON (`RunConfig.to_dict`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from arithlens.errors import ConfigError
from arithlens.task import D_VOCAB, MAX_DIGITS

DEFAULT_SEED = 129000
ACT_FNS = ("relu", "gelu", "gelu_new", "silu")
NORMALIZATIONS = ("LN", "RMS", "LNPre", "RMSPre")
# "seed": the seed notebook's N(0, 1/d_model) weights and N(0, 1/d_vocab) unembedding, which learn
# this task much faster than "transformerlens" (TransformerLens's own GPT-2-style init).
INITS = ("seed", "transformerlens")


def _require_int(name: str, value: Any, minimum: int, hint: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}{hint}")


def _require_fraction(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Shape and initialisation of the transformer. `d_head` defaults to d_model // n_heads."""

    n_digits: int = 5
    n_layers: int = 1
    d_model: int = 512
    n_heads: int = 4
    d_head: int | None = None
    d_mlp: int = 2048
    act_fn: str = "relu"
    normalization: str | None = None
    seed: int = DEFAULT_SEED
    init: str = "seed"

    def __post_init__(self) -> None:
        _require_int("n_digits", self.n_digits, 1, " (use --digits 1 or more)")
        if self.n_digits > MAX_DIGITS:
            raise ConfigError(f"n_digits must be at most {MAX_DIGITS}, got {self.n_digits}")
        _require_int("n_layers", self.n_layers, 1, " (use --layers 1 or more)")
        _require_int("d_model", self.d_model, 1)
        _require_int("n_heads", self.n_heads, 1, " (use --heads 1 or more)")
        _require_int("d_mlp", self.d_mlp, 1)
        _require_int("seed", self.seed, 0)
        if self.d_head is None:
            if self.d_model % self.n_heads != 0:
                raise ConfigError(
                    f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}); "
                    f"pick e.g. d_model {self.n_heads * max(1, self.d_model // self.n_heads)} or set d_head"
                )
            object.__setattr__(self, "d_head", self.d_model // self.n_heads)
        _require_int("d_head", self.d_head, 1)
        if self.act_fn not in ACT_FNS:
            raise ConfigError(f"act_fn must be one of {', '.join(ACT_FNS)}, got {self.act_fn!r}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.normalization is not None and self.normalization not in NORMALIZATIONS:
            raise ConfigError(
                f"normalization must be None or one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}"
            )

    @property
    def n_ctx(self) -> int:
        return 3 * self.n_digits + 3

    @property
    def d_vocab(self) -> int:
        return D_VOCAB

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**_known_fields(cls, data, "model"))


@dataclass(frozen=True)
class TrainConfig:
    """How to train. `finite` switches to the seed's fixed-training-set mode."""

    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 10
    seed: int = DEFAULT_SEED
    finite: int | None = None
    enrich_fraction: float = 0.0
    enrich_sum9_prob: float = 0.4
    checkpoint_every: int = 500
    device: str = "cpu"

    def __post_init__(self) -> None:
        _require_int("steps", self.steps, 1, " (use --steps 1 or more)")
        _require_int("batch_size", self.batch_size, 1, " (use --batch-size 1 or more)")
        if not isinstance(self.lr, (int, float)) or not 0 < self.lr < 1:
            raise ConfigError(f"lr must be a number in (0, 1), got {self.lr!r}")
        if not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))
        _require_int("warmup_steps", self.warmup_steps, 0)
        _require_int("seed", self.seed, 0)
        if self.finite is not None:
            _require_int("finite", self.finite, 1, " (the fixed training set needs at least one question)")
        _require_fraction("enrich_fraction", self.enrich_fraction)
        _require_fraction("enrich_sum9_prob", self.enrich_sum9_prob)
        _require_int("checkpoint_every", self.checkpoint_every, 1, " (use --checkpoint-every 1 or more)")
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"device must be a name such as 'cpu' or 'cuda', got {self.device!r}")

    def lr_multiplier(self, step: int) -> float:
        """The seed's warm-up, min(step / 10, 1): the very first step has lr 0."""
        if self.warmup_steps == 0:
            return 1.0
        return min(step / self.warmup_steps, 1.0)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = _known_fields(cls, data, "train")
        if "betas" in known:
            known["betas"] = tuple(known["betas"])
        return cls(**known)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run: the model and how it was trained."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        if not isinstance(data, dict) or "model" not in data:
            raise ConfigError("config must be a JSON object with a 'model' section")
        return cls(model=ModelConfig.from_dict(data["model"]), train=TrainConfig.from_dict(data.get("train", {})))


def _known_fields(cls: type, data: dict[str, Any], section: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"the '{section}' section of the config must be a JSON object")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {section} config field(s): {', '.join(unknown)}")
    return dict(data)
