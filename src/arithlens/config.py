"""Frozen, validated configuration for models and training runs.

Defaults are the seed notebook's: a 1-layer, 4-head, d_model 512 transformer
with no LayerNorm, trained with AdamW (lr 1e-4, wd 0.1, betas 0.9/0.98) on
batches of 64 fresh 5-digit questions for 3000 steps, seed 129000.
Every artefact stores these as JSON (`RunConfig.to_dict`).

Training recipes (`RECIPES`) are named sets of `TrainConfig` values:
`TrainConfig.from_recipe("fast", steps=4000)` starts from a recipe and lets
explicit values override it. The resolved values, not the name, are what a
run uses, and config.json records all of them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from arithlens.errors import ConfigError
from arithlens.task import MAX_DIGITS, OPS, make_task

DEFAULT_SEED = 129000
# torch seeds are 64-bit; every seed arithlens takes is 0 .. MAX_SEED (the trainer also draws from seed + 1).
MAX_SEED = 2**63 - 1
# Sizes past these are typos, not experiments: a model this large takes longer to build than to notice,
# and far longer than anything arithlens is for. What fits in memory is checked separately (`require_memory`).
MAX_LAYERS = 256
MAX_WIDTH = 2**16  # d_model and d_head
MAX_MLP_WIDTH = 2**20
MAX_PARAMETERS = 2**31
MAX_STEPS = 10**9
MAX_QUESTIONS = 10**9  # batch_size, finite and eval_count
ACT_FNS = ("relu", "gelu", "gelu_new", "silu")
NORMALIZATIONS = ("LN", "RMS", "LNPre", "RMSPre")
# "seed": the seed notebook's N(0, 1/d_model) weights and N(0, 1/d_vocab) unembedding, which learn
# this task much faster than "transformerlens" (TransformerLens's own GPT-2-style init).
INITS = ("seed", "transformerlens")
SCHEDULES = ("constant", "linear", "cosine")
# The held-out set measured during training: its own seed, so it is never drawn from the training stream.
HELD_OUT_SEED = 271828

# What each recipe sets; everything else keeps TrainConfig's (the seed's) defaults.
# "fast" is the fastest recipe measured on this project's addition models (README,
# "Training recipes"): 10x the seed's lr with linear warm-up from 0.01x over the
# first 5% of steps, cosine decay to 1% of the lr, gradient clipping at 1.0, and
# 40% of questions Sum9-enriched so that carry cascades are seen often enough.
RECIPES: dict[str, dict[str, Any]] = {
    "seed": {},
    "fast": {
        "lr": 1e-3,
        "schedule": "cosine",
        "warmup_fraction": 0.05,
        "warmup_start": 0.01,
        "min_lr": 1e-5,
        "grad_clip": 1.0,
        "enrich_fraction": 0.4,
    },
}


def _require_int(name: str, value: Any, minimum: int, hint: str = "", maximum: int | None = None,
                 flag: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}{hint}")
    if maximum is not None and value > maximum:
        lower = f" (lower {flag})" if flag else ""
        raise ConfigError(f"{name} must be at most {maximum:,}, got {value:,}{lower}")


def check_seed(value: Any, name: str = "seed") -> None:
    """A seed torch can take: an integer from 0 to MAX_SEED (`name` is what the user typed, e.g. --seed)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{name} must be an integer from 0 to {MAX_SEED}, got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require_fraction(name: str, value: Any) -> None:
    if not _is_number(value) or not 0.0 <= value <= 1.0:
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
    op: str = "add"  # "add", "sub" or "mixed": the task (arithlens.task) and so the vocabulary and n_ctx

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ConfigError(f"unknown operation {self.op!r}: use --op add, sub or mixed")
        _require_int("n_digits", self.n_digits, 1, " (use --digits 1 or more)")
        if self.n_digits > MAX_DIGITS:
            raise ConfigError(f"n_digits must be at most {MAX_DIGITS}, got {self.n_digits}")
        _require_int("n_layers", self.n_layers, 1, " (use --layers 1 or more)", MAX_LAYERS, "--layers")
        _require_int("d_model", self.d_model, 1, "", MAX_WIDTH, "--d-model")
        _require_int("n_heads", self.n_heads, 1, " (use --heads 1 or more)", MAX_WIDTH, "--heads")
        _require_int("d_mlp", self.d_mlp, 1, "", MAX_MLP_WIDTH, "--d-mlp")
        check_seed(self.seed)
        if self.d_head is None:
            if self.d_model % self.n_heads != 0:
                raise ConfigError(
                    f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}); "
                    f"pick e.g. d_model {self.n_heads * max(1, self.d_model // self.n_heads)} or set d_head"
                )
            object.__setattr__(self, "d_head", self.d_model // self.n_heads)
        _require_int("d_head", self.d_head, 1, "", MAX_WIDTH)
        if self.parameter_count() > MAX_PARAMETERS:
            raise ConfigError(f"the model would have about {self.parameter_count():,} parameters, more than the "
                              f"{MAX_PARAMETERS:,} arithlens supports; lower --d-model, --d-mlp or --layers")
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
        return make_task(self.op, self.n_digits).seq_len

    def parameter_count(self) -> int:
        """The number of weights (within a few LayerNorm scales): embeddings, attention, MLP, unembedding."""
        d, attn = self.d_model, self.n_heads * (self.d_head or 0)
        per_layer = 4 * d * attn + 3 * attn + 2 * d * self.d_mlp + self.d_mlp + 2 * d + 4 * d
        return (2 * self.d_vocab + self.n_ctx) * d + self.d_vocab + self.n_layers * per_layer + 2 * d

    @property
    def d_vocab(self) -> int:
        return make_task(self.op, self.n_digits).d_vocab

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
    schedule: str = "constant"
    warmup_start: float = 0.0
    min_lr: float = 0.0
    grad_clip: float | None = None
    recipe: str = "seed"
    seed: int = DEFAULT_SEED
    finite: int | None = None
    enrich_fraction: float = 0.0
    enrich_sum9_prob: float = 0.4
    checkpoint_every: int = 500
    device: str = "cpu"
    eval_every: int = 0
    eval_count: int = 10_000
    eval_seed: int = HELD_OUT_SEED
    until_accuracy: float | None = None
    init_from: str | None = None  # a run folder or bundled model whose weights start this run (arithlens.init_from)

    def __post_init__(self) -> None:
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from.strip()):
            raise ConfigError(f"init_from must name a run folder or bundled model, got {self.init_from!r}")
        _require_int("steps", self.steps, 1, " (use --steps 1 or more)", MAX_STEPS, "--steps")
        _require_int("batch_size", self.batch_size, 1, " (use --batch-size 1 or more)", MAX_QUESTIONS,
                     "--batch-size")
        if not isinstance(self.lr, (int, float)) or not 0 < self.lr < 1:
            raise ConfigError(f"lr must be a number in (0, 1), got {self.lr!r}")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not isinstance(self.betas, (list, tuple)):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))
        _require_int("warmup_steps", self.warmup_steps, 0)
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}: use one of {', '.join(SCHEDULES)}")
        _require_fraction("warmup_start", self.warmup_start)
        if not _is_number(self.min_lr) or not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"min_lr must be a number from 0 to lr ({self.lr}), got {self.min_lr!r}")
        if self.grad_clip is not None and (not _is_number(self.grad_clip) or not 0 < self.grad_clip < math.inf):
            raise ConfigError(f"grad_clip must be a positive number (or None for no clipping), got {self.grad_clip!r}")
        if not isinstance(self.recipe, str) or self.recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {self.recipe!r}: use one of {', '.join(RECIPES)}")
        check_seed(self.seed)
        if self.finite is not None:
            _require_int("finite", self.finite, 1, " (the fixed training set needs at least one question)",
                         MAX_QUESTIONS, "--finite")
        _require_fraction("enrich_fraction", self.enrich_fraction)
        _require_fraction("enrich_sum9_prob", self.enrich_sum9_prob)
        _require_int("checkpoint_every", self.checkpoint_every, 1, " (use --checkpoint-every 1 or more)")
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"device must be a name such as 'cpu' or 'cuda', got {self.device!r}")
        _require_int("eval_every", self.eval_every, 0, " (0 turns held-out evaluation off)")
        _require_int("eval_count", self.eval_count, 1, " (use --eval-count 1 or more)", MAX_QUESTIONS,
                     "--eval-count")
        check_seed(self.eval_seed, "eval_seed")
        if self.until_accuracy is not None:
            if not _is_number(self.until_accuracy) or not 0 < self.until_accuracy <= 1:
                raise ConfigError(f"until_accuracy must be a number in (0, 1], got {self.until_accuracy!r}")
            if self.eval_every == 0:
                raise ConfigError("until_accuracy needs held-out evaluation: set --eval-every K as well")

    @classmethod
    def from_recipe(cls, recipe: str = "seed", **overrides: Any) -> TrainConfig:
        """A config from a named recipe, with explicit values taking precedence.

        `warmup_fraction` (a share of `steps`) may be given instead of `warmup_steps`.
        """
        if recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {recipe!r}: use one of {', '.join(RECIPES)}")
        values = {**RECIPES[recipe], **{k: v for k, v in overrides.items() if v is not None}}
        if overrides.get("warmup_steps") is not None:
            values.pop("warmup_fraction", None)
            steps = values.get("steps", cls.steps)
            if overrides["warmup_steps"] > steps:
                # Only an asked-for warm-up is checked: the seed's fixed 10 steps simply never
                # finish in a shorter run, as in the seed notebook.
                raise ConfigError(f"the warm-up ({overrides['warmup_steps']} steps) is longer than the run "
                                  f"({steps} steps); use a shorter --warmup-steps or a share such as 0.05")
        fraction = values.pop("warmup_fraction", None)
        if fraction is not None:
            _require_fraction("warmup_fraction", fraction)
            values["warmup_steps"] = round(fraction * values.get("steps", cls.steps))
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown training setting(s): {', '.join(unknown)}")
        return cls(recipe=recipe, **values)

    def lr_multiplier(self, step: int) -> float:
        """The lr at `step` as a multiple of `lr`.

        Warm-up rises linearly from `warmup_start` to 1 over `warmup_steps` (the
        seed's min(step / 10, 1) is warm-up from 0 over 10 steps). Then the
        schedule holds (constant) or decays, linearly or on a cosine, to
        `min_lr` at the last step.
        """
        if step < self.warmup_steps:
            return self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        decay_steps = max(self.steps - 1 - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / decay_steps, 1.0)
        shape = 1.0 - progress if self.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        floor = self.min_lr / self.lr
        return floor + (1.0 - floor) * shape

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = _known_fields(cls, data, "train")
        if isinstance(known.get("betas"), list):  # JSON has no tuples; anything else is refused by the checks
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


# ----- memory ------------------------------------------------------------------------------

GIB = 2**30


def available_memory(device: str = "cpu") -> int | None:
    """Bytes that new allocations on `device` can still get (RAM for "cpu"), or None where unknown."""
    kind = device.split(":")[0]
    if kind == "cuda":
        import torch

        try:
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except (RuntimeError, AssertionError, ValueError):
            return None
    if kind != "cpu":
        return None
    free: list[int] = []
    try:
        for line in open("/proc/meminfo", encoding="ascii"):  # noqa: SIM115 - a tiny read
            if line.startswith("MemAvailable:"):
                free.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:  # a container's own limit (cgroup v2) can be far below the machine's
        limit = open("/sys/fs/cgroup/memory.max", encoding="ascii").read().strip()  # noqa: SIM115
        if limit.isdigit():
            used = int(open("/sys/fs/cgroup/memory.current", encoding="ascii").read().strip())  # noqa: SIM115
            free.append(max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return min(free) if free else None


def require_memory(parts: dict[str, int], device: str = "cpu") -> None:
    """Refuse work that would need more memory than `device` has free.

    `parts` maps what needs memory, worded with the flag that sizes it
    ("the metrics history (--steps)"), to rough bytes. A refusal names the
    largest part, so the user knows which flag to lower; an allocation that
    fails later anyway is turned into the same kind of one-line error by the CLI.
    """
    free = available_memory(device)
    total = sum(parts.values())
    if free is None or total <= free:
        return
    largest = max(parts, key=lambda name: parts[name])
    raise ConfigError(f"this needs about {total / GIB:,.1f} GiB of memory on {device}, and {free / GIB:,.1f} GiB "
                      f"is free; most of it is {largest}: lower it")


def question_bytes(n_digits: int) -> int:
    """Memory a generated question takes: tokens and every label tensor (int64), with room for a copy."""
    return 2 * 8 * (3 * n_digits + 3 + 5 * n_digits + 2)


def activation_bytes(config: ModelConfig) -> int:
    """Rough memory one question's forward and backward pass keeps, over all layers."""
    n_ctx, d, attn = config.n_ctx, config.d_model, config.n_heads * (config.d_head or 0)
    per_layer = n_ctx * (6 * d + 4 * attn + 3 * config.d_mlp) + 3 * config.n_heads * n_ctx * n_ctx
    return 2 * 4 * (config.n_layers * per_layer + 3 * n_ctx * config.d_vocab)


def training_memory(config: RunConfig) -> dict[str, int]:
    """Rough bytes training `config` needs, by what sizes them (see `require_memory`)."""
    from arithlens.metrics import metric_names

    model, train = config.model, config.train
    n = model.n_digits
    columns = len(metric_names(n, train.finite is not None, heldout=train.eval_every > 0, signed=model.op != "add"))
    per_question = question_bytes(n) + activation_bytes(model)
    parts = {
        "the model, its gradients and AdamW moments (--d-model, --d-mlp, --layers)": 4 * 4 * model.parameter_count(),
        "the metrics history (--steps)": 8 * columns * train.steps,
        "one training batch (--batch-size)": train.batch_size * per_question,
    }
    if train.finite is not None:
        parts["the fixed training set, all of it in every step (--finite)"] = train.finite * per_question
    if train.eval_every > 0:
        parts["the held-out set (--eval-count)"] = train.eval_count * question_bytes(n)
    return parts
