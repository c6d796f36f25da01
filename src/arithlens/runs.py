"""Run folders: where a training run's config, weights, metrics and checkpoints live.

    RUN_DIR/config.json                  model + train config, and a "run" section (command, times, status)
    RUN_DIR/model.safetensors            final (or latest) weights, TransformerLens names
    RUN_DIR/metrics.parquet              one row per step (see arithlens.metrics)
    RUN_DIR/checkpoints/step_NNNNN.safetensors   weight snapshots for training-dynamics analysis
    RUN_DIR/checkpoints/train_state.safetensors  everything needed to resume bit-identically
    RUN_DIR/analysis/, RUN_DIR/report.html       written by `analyze` and `report`

Weights are safetensors only: nothing is ever unpickled. Every file write is
atomic (temporary file, then rename), so a killed process leaves the previous
version intact.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from arithlens import __version__
from arithlens.config import ModelConfig, RunConfig
from arithlens.errors import ArithlensError, RunFolderError
from arithlens.model import TransformerBridge, build_model, model_config_of

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
METRICS_FILE = "metrics.parquet"
CHECKPOINT_DIR = "checkpoints"
TRAIN_STATE_FILE = "train_state.safetensors"
REPORT_FILE = "report.html"
ANALYSIS_DIR = "analysis"
RUN_ARTEFACTS = (CONFIG_FILE, MODEL_FILE, METRICS_FILE, CHECKPOINT_DIR, REPORT_FILE, ANALYSIS_DIR)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` into a hidden file beside `path`, then rename it over `path`: readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.chmod(tmp, 0o644)  # run folders are meant to be shared; some writers create files 0600
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    atomic_write(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, with a clear error if it is damaged."""
    from safetensors import safe_open

    if not path.is_file():
        raise RunFolderError(f"missing file {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError) as error:
        raise RunFolderError(f"damaged safetensors file {path}: {error}; retrain or restore it") from None


def save_model(model: TransformerBridge, path: Path) -> None:
    """Weights under TransformerLens names, with the model config in the metadata."""
    config = model_config_of(model)
    save_tensors(path, model.state_dict(), {"config": json.dumps(config.to_dict()), "arithlens_version": __version__})


def _shape(tensor: torch.Tensor) -> str:
    return "(" + ", ".join(str(size) for size in tensor.shape) + ")"


def check_weights(expected: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], source: str | Path,
                  prefix: str = "") -> None:
    """Refuse weights that are not exactly the model's: every tensor present, shaped, typed as the model's
    (float32) and finite. Errors name `source` and the first tensor at fault (`prefix` + its name)."""
    mismatch = f"{source}: the weights do not match the config"
    missing = [name for name in expected if name not in weights]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise RunFolderError(f"{mismatch}: tensor {prefix + missing[0]!r} is missing{more}")
    unexpected = [name for name in weights if name not in expected]
    if unexpected:
        raise RunFolderError(f"{mismatch}: it has a tensor {prefix + unexpected[0]!r} the model does not")
    for name, want in expected.items():
        tensor = weights[name]
        if tensor.shape != want.shape:
            raise RunFolderError(f"{mismatch}: tensor {prefix + name!r} has shape {_shape(tensor)}, "
                                 f"the config's model needs {_shape(want)}")
        if tensor.dtype != want.dtype:
            raise RunFolderError(f"{source}: tensor {prefix + name!r} is {str(tensor.dtype).removeprefix('torch.')}; "
                                 f"arithlens weights are {str(want.dtype).removeprefix('torch.')} (save them as that)")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise RunFolderError(f"{source}: tensor {prefix + name!r} holds NaN or infinite values; "
                                 f"the weights are damaged (retrain or restore them)")


def model_from_weights(config: ModelConfig, weights: dict[str, torch.Tensor], device: str = "cpu",
                       source: str | Path = "the weights") -> TransformerBridge:
    """A model of `config` holding `weights`, which must match it exactly (see `check_weights`)."""
    model = build_model(config, device)
    check_weights(model.state_dict(), weights, source)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0]
        raise RunFolderError(f"{source}: the weights do not match the config: {first_line}") from None
    return model


def load_model_file(path: Path, config: ModelConfig | None = None, device: str = "cpu") -> TransformerBridge:
    weights, metadata = load_tensors(path)
    if config is None:
        if "config" not in metadata:
            raise RunFolderError(f"{path} has no config in its metadata; load it through its run folder")
        try:
            config = ModelConfig.from_dict(json.loads(metadata["config"]))
        except (json.JSONDecodeError, RecursionError) as error:
            raise RunFolderError(f"{path}: the config in its metadata is not JSON ({error})") from None
        except ArithlensError as error:
            raise RunFolderError(f"{path}: bad config in its metadata: {error}") from None
    return model_from_weights(config, weights, device, source=path)


def bundled_models_dir() -> Path:
    return Path(str(resources.files("arithlens") / "models"))


def bundled_model_names() -> list[str]:
    root = bundled_models_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / MODEL_FILE).is_file())


def is_bundled(path: Path) -> bool:
    """Whether `path` is one of the models installed with arithlens, which no command may rewrite."""
    try:
        return path.resolve().parent == bundled_models_dir().resolve()
    except OSError:
        return False


def resolve_run_path(path_or_name: str | Path) -> Path:
    """A run folder for a path or a bundled model name."""
    path = Path(path_or_name)
    if path.is_dir():
        return path
    name = str(path_or_name)
    if name in bundled_model_names():
        return bundled_models_dir() / name
    known = ", ".join(bundled_model_names()) or "none installed"
    raise RunFolderError(f"no run folder or bundled model called {name!r} (bundled models: {known})")


@dataclass
class Run:
    """A run folder read back: config, metrics, weights and checkpoints."""

    path: Path
    config: RunConfig
    info: dict[str, Any]

    @property
    def metrics(self) -> pd.DataFrame:
        path = self.path / METRICS_FILE
        if not path.is_file():
            raise RunFolderError(f"{self.path} has no {METRICS_FILE}: the run has not recorded a step yet")
        from arithlens.metrics import read_metrics  # metrics imports TransformerLens: only when needed

        train = self.config.train
        return read_metrics(path, self.config.model.n_digits, train.finite is not None, train.eval_every > 0,
                            signed=self.config.model.op != "add")

    @property
    def is_complete(self) -> bool:
        return self.info.get("status") == "complete"

    def model(self, device: str = "cpu") -> TransformerBridge:
        path = self.path / MODEL_FILE
        if not path.is_file():
            raise RunFolderError(f"{self.path} has no {MODEL_FILE}: train it first (arithlens train --out {self.path})")
        return load_model_file(path, self.config.model, device)

    def checkpoint_steps(self) -> list[int]:
        """Steps of the weight snapshots in RUN_DIR/checkpoints/ (step_NNNNN.safetensors)."""
        folder = self.path / CHECKPOINT_DIR
        if not folder.is_dir():
            return []
        steps = set()
        for path in folder.glob("step_*.safetensors"):
            match = re.fullmatch(r"step_([0-9]+)\.safetensors", path.name)
            if match is None:
                raise RunFolderError(f"{path} is not a checkpoint name (training writes step_NNNNN.safetensors); "
                                     f"move it out of {folder}")
            steps.add(int(match.group(1)))
        return sorted(steps)

    def checkpoint_path(self, step: int) -> Path:
        return self.path / CHECKPOINT_DIR / f"step_{step:05d}.safetensors"

    def checkpoint_model(self, step: int, device: str = "cpu") -> TransformerBridge:
        path = self.checkpoint_path(step)
        if not path.is_file():
            raise RunFolderError(f"no checkpoint for step {step} in {self.path} (have {self.checkpoint_steps()})")
        return load_model_file(path, self.config.model, device)


def read_config(path: Path) -> tuple[RunConfig, dict[str, Any]]:
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise RunFolderError(f"{path} is not a run folder: it has no {CONFIG_FILE}")
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise RunFolderError(f"damaged {config_path}: {error}") from None
    except OSError as error:
        raise RunFolderError(f"cannot read {config_path}: {error.strerror or error}") from None
    try:
        config = RunConfig.from_dict(data)
    except ArithlensError as error:
        raise RunFolderError(f"{config_path}: {error}") from None
    return config, _run_info(data.get("run", {}), config_path)


# The "run" section's fields, by the type each must have (others are kept as they are).
_NUMBER = (int, float)
RUN_INFO_TYPES: dict[str, tuple[type, ...]] = {
    "command": (str,), "started": (str,), "finished": (str,), "device": (str,), "status": (str,),
    "stop_reason": (str,), "seconds": _NUMBER, "heldout_accuracy": _NUMBER, "steps_done": (int,),
    "threads": (int,), "heldout_step": (int,), "stopped_at_step": (int,), "diverged_at_step": (int,),
    "card": (dict,),
}


def _run_info(info: Any, config_path: Path) -> dict[str, Any]:
    """The config's "run" section, refused if a field the commands read has the wrong type."""
    if not isinstance(info, dict):
        raise RunFolderError(f"{config_path}: the 'run' section must be a JSON object, got {info!r:.60}")
    for key, types in RUN_INFO_TYPES.items():
        if key in info:
            value = info[key]
            if not isinstance(value, types) or isinstance(value, bool) or (types == (int,) and value < 0):
                kind = {_NUMBER: "a number", (int,): "a whole number >= 0", (str,): "a string"}.get(types, "an object")
                raise RunFolderError(f"{config_path}: run.{key} must be {kind}, got {value!r:.60}")
    return dict(info)


def load_run(path_or_name: str | Path) -> Run:
    """Open a run folder (or a bundled model by name)."""
    path = resolve_run_path(path_or_name)
    config, info = read_config(path)
    return Run(path=path, config=config, info=info)


def load_model(path_or_name: str | Path, device: str = "cpu") -> TransformerBridge:
    """A trained model from a run folder, a bundled model name or a .safetensors file."""
    path = Path(path_or_name)
    if path.is_file() and path.suffix == ".safetensors":
        return load_model_file(path, device=device)
    if path.is_file():
        raise RunFolderError(f"{path} is not a .safetensors file or run folder")
    return load_run(path_or_name).model(device)


def run_config_dict(config: RunConfig, info: dict[str, Any]) -> dict[str, Any]:
    return {"arithlens_version": __version__, **config.to_dict(), "run": info}


def require_finished_model(path: Path) -> None:
    if not (path / MODEL_FILE).is_file():
        raise ArithlensError(f"{path} has no {MODEL_FILE}: train it first, or resume it with --resume {path}")
