"""Training: the seed's loop, faster, recorded per step, checkpointed and resumable.

The step is the seed's: AdamW, float64 per-token cross-entropy over the n+1
answer tokens, a fresh batch each step (or the seed's finite mode: a fixed
training set plus a fresh test batch each step). The lr follows the config's
schedule (the seed's: warm-up min(step/10, 1), then constant), with optional
gradient clipping. It runs through `AnswerForward`, which skips the work the
loss cannot see.

With `eval_every`, a fixed held-out set is scored during training
(`arithlens.heldout`), and `until_accuracy` stops the run at the first
evaluation that reaches it; config.json then records why and when it stopped.

Resuming is bit-exact: the train state holds weights, AdamW moments, the
scheduler and both data RNG states, and the metrics history.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from arithlens.config import RunConfig, require_memory, training_memory
from arithlens.errors import ArithlensError, ConfigError, RunFolderError, TrainingDiverged, TrainingInterrupted
from arithlens.folders import ForcedReplacement, check_replaceable, check_writable, recover_run_folder, run_folder_lock
from arithlens.heldout import heldout_accuracy, heldout_batch
from arithlens.metrics import metric_names, metrics_frame, step_metrics, token_losses
from arithlens.model import AnswerForward, build_model, resolve_device
from arithlens.runs import (
    CHECKPOINT_DIR,
    METRICS_FILE,
    MODEL_FILE,
    TRAIN_STATE_FILE,
    Run,
    check_weights,
    load_run,
    load_tensors,
    resolve_run_path,
    run_config_dict,
    save_model,
    save_tensors,
    write_json,
)
from arithlens.task import ArithmeticBatch, task_for

LOG_EVERY = 25  # steps between progress-bar updates: the only host syncs in the loop
StepCallback = Callable[[int], None]


class _StopFlag:
    requested: bool = False
    signum: int = signal.SIGINT


@contextmanager
def _deferred_interrupts() -> Iterator[_StopFlag]:
    """Turn Ctrl-C / SIGTERM into a flag checked between steps, so a step is never half-saved."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def request_stop(signum: int, frame: object) -> None:
        flag.requested = True
        flag.signum = signum

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _adamw(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW with the fused kernel where the device has one: the optimizer step was a third
    of the seed's step time on CPU, and fusing roughly halves it."""
    try:
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=betas, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=betas)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Trainer:
    """Owns the model, optimizer, data streams and metrics history of one run folder."""

    def __init__(self, config: RunConfig, out_dir: Path, info: dict[str, Any]) -> None:
        self.config = config
        self.out_dir = out_dir
        self.info = info
        train = config.train
        self.device = resolve_device(train.device)
        require_memory(training_memory(config), str(self.device))  # refuse, before allocating what cannot fit
        self.task = task_for(config.model)
        self.model = build_model(config.model, self.device)
        self.forward = AnswerForward(self.model)
        self.optimizer = _adamw(self.model, train.lr, train.weight_decay, train.betas)
        # A plain lambda: LambdaLR only skips saving lr_lambdas that are plain functions.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: train.lr_multiplier(step))
        self.data_rng = torch.Generator().manual_seed(train.seed)
        self.test_rng = torch.Generator().manual_seed(train.seed + 1)
        self.fixed_train: ArithmeticBatch | None = None
        if train.finite is not None:
            self.fixed_train = self._generate(train.finite, self.data_rng)
        self.heldout = heldout_batch(self.task, train.eval_count, train.eval_seed).to(self.device) \
            if train.eval_every else None
        finite = train.finite is not None
        signed = self.task.signed
        self.n_step_metrics = len(metric_names(config.model.n_digits, finite, signed=signed))
        self.n_metrics = len(metric_names(config.model.n_digits, finite, heldout=self.heldout is not None,
                                          signed=signed))
        self.history = torch.zeros(train.steps, self.n_metrics, dtype=torch.float64, device=self.device)
        self.history[:, self.n_step_metrics :] = float("nan")  # held-out columns: NaN where nothing was measured
        self.step = 0
        self.after_save: Callable[[], None] | None = None  # told once each save is on disk

    # ----- data and loss ------------------------------------------------
    def _generate(self, count: int, rng: torch.Generator) -> ArithmeticBatch:
        train = self.config.train
        return self.task.generate(
            count, rng, enrich_fraction=train.enrich_fraction, enrich_sum9_prob=train.enrich_sum9_prob
        ).to(self.device)

    def _losses(self, batch: ArithmeticBatch) -> torch.Tensor:
        answers = batch.tokens[:, self.task.question_len : self.task.seq_len]
        return token_losses(self.forward(batch.tokens), answers)  # [batch, answer_len]

    def train_step(self) -> None:
        lr = self.scheduler.get_last_lr()[0]
        if self.fixed_train is None:
            batch = self._generate(self.config.train.batch_size, self.data_rng)
            losses = self._losses(batch)
            test_losses, subtask_losses, subtask_batch = None, losses.detach(), batch
        else:
            losses = self._losses(self.fixed_train)
            test_batch = self._generate(self.config.train.batch_size, self.test_rng)
            with torch.no_grad():
                test_losses = self._losses(test_batch)
            subtask_losses, subtask_batch = test_losses, test_batch
        losses.mean().backward()  # mean over batch, then over answer tokens, as the seed
        if self.config.train.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.history[self.step, : self.n_step_metrics] = step_metrics(
            lr, losses.detach(), subtask_losses, subtask_batch, test_losses)
        self.step += 1

    def evaluate_heldout(self) -> float:
        """Score the held-out set at the current step into its metrics row; returns the overall accuracy."""
        if self.heldout is None:
            raise ConfigError("this run has no held-out set: train with eval_every > 0")
        scores = heldout_accuracy(self.model, self.heldout)
        self.history[self.step - 1, self.n_step_metrics :] = scores.to(self.device)
        return float(scores[0])

    def heldout_due(self) -> bool:
        every = self.config.train.eval_every
        return self.heldout is not None and (self.step % every == 0 or self.step == self.config.train.steps)

    # ----- persistence --------------------------------------------------
    def _write_metrics(self) -> None:
        frame = metrics_frame(self.history[: self.step], 0, self.task.n_digits, self.config.train.finite is not None,
                              heldout=self.heldout is not None, signed=self.task.signed)
        tmp = self.out_dir / f".{METRICS_FILE}.tmp"
        frame.to_parquet(tmp, index=False)
        tmp.replace(self.out_dir / METRICS_FILE)

    def write_config(self) -> None:
        write_json(self.out_dir / "config.json", run_config_dict(self.config, self.info))

    def save(self, snapshot: bool) -> None:
        """Metrics, weights and the full resumable state at the current step."""
        checkpoints = self.out_dir / CHECKPOINT_DIR
        checkpoints.mkdir(exist_ok=True)
        self._write_metrics()
        save_model(self.model, self.out_dir / MODEL_FILE)
        if snapshot:
            save_model(self.model, checkpoints / f"step_{self.step:05d}.safetensors")
        tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        optimizer_state = self.optimizer.state_dict()
        for index, state in optimizer_state["state"].items():
            for key, value in state.items():
                tensors[f"optim.{index}.{key}"] = value
        tensors["rng.data"] = self.data_rng.get_state()
        tensors["rng.test"] = self.test_rng.get_state()
        tensors["history"] = self.history[: self.step]
        scheduler_state = {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"}
        metadata = {
            "step": str(self.step),
            "param_groups": json.dumps(optimizer_state["param_groups"]),
            "scheduler": json.dumps(scheduler_state),
        }
        save_tensors(checkpoints / TRAIN_STATE_FILE, tensors, metadata)
        self.info["steps_done"] = self.step
        self.write_config()
        if self.after_save is not None:
            self.after_save()

    def restore(self) -> None:
        """Load the train state, after checking every part of it: a damaged state, or one from another
        run, is refused with one error naming what is wrong, and nothing is loaded."""
        path = self.out_dir / CHECKPOINT_DIR / TRAIN_STATE_FILE
        tensors, metadata = load_tensors(path)
        step, optimizer_state, scheduler_state = _checked_train_state(self, path, tensors, metadata)
        try:
            self.model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
            self.optimizer.load_state_dict(optimizer_state)
            self.scheduler.load_state_dict({**scheduler_state, "lr_lambdas": [None]})
            self.data_rng.set_state(tensors["rng.data"])
            self.test_rng.set_state(tensors["rng.test"])
        except (RuntimeError, ValueError, KeyError, TypeError) as error:
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise RunFolderError(f"damaged train state {path}: {first_line}{_RESTORE_ADVICE}") from None
        self.step = step
        self.history[: self.step] = tensors["history"].to(self.device)

    def _weights_finite(self) -> bool:
        """Checked before each save: a step can leave NaN weights behind a finite loss."""
        with torch.no_grad():
            return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    def _diverged(self, loss: float, started: float) -> None:
        """Stop on a non-finite loss, keeping the last good checkpoint: only config.json is rewritten."""
        last_good = self.info.get("steps_done", 0)
        self.info.update(status="diverged", diverged_at_step=self.step,
                         seconds=round(self.info.get("seconds", 0.0) + time.perf_counter() - started, 2))
        self.write_config()
        kept = (f"the last good state (step {last_good}) is kept in {self.out_dir}" if last_good
                else "no checkpoint had been saved yet")
        raise TrainingDiverged(
            f"training diverged: the loss was {loss} (or the weights non-finite) by step {self.step}; {kept}. Lower --lr or --weight-decay, "
            f"or add --grad-clip, and train again")

    # ----- loop ---------------------------------------------------------
    def fit(self, progress: bool = True, on_step: StepCallback | None = None) -> None:
        train = self.config.train
        started = time.perf_counter()
        loss_column = TextColumn("loss {task.fields[loss]}")
        columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(), loss_column,
                   TimeElapsedColumn(), TimeRemainingColumn())
        if self.heldout is not None:
            columns = (*columns[:4], TextColumn("held-out {task.fields[heldout]}"), *columns[4:])
        self.info["status"] = "interrupted"  # until the last step is saved
        # Bit-identical repeats and resumes hold at one thread count: matmuls split their sums by thread.
        self.info["threads"] = torch.get_num_threads()
        self.info.pop("stop_reason", None)
        self.info.pop("stopped_at_step", None)
        reached = False
        with Progress(*columns, disable=not progress, transient=False) as bar, _deferred_interrupts() as stop:
            task_id = bar.add_task("train", total=train.steps, completed=self.step, loss="...", heldout="...")
            while self.step < train.steps and not reached:
                self.train_step()
                if self.heldout_due():
                    accuracy = self.evaluate_heldout()
                    self.info["heldout_accuracy"] = accuracy
                    self.info["heldout_step"] = self.step
                    bar.update(task_id, heldout=f"{100 * accuracy:.2f}%")
                    reached = train.until_accuracy is not None and accuracy >= train.until_accuracy
                checkpoint_due = self.step % train.checkpoint_every == 0 and self.step < train.steps and not reached
                if self.step % LOG_EVERY == 0 or self.step == train.steps or reached or checkpoint_due:
                    loss = float(self.history[self.step - 1, 1])  # the loop's only host sync
                    if not math.isfinite(loss) or (checkpoint_due and not self._weights_finite()):
                        self._diverged(loss, started)
                    bar.update(task_id, completed=self.step, loss=f"{loss:.4g}")
                if checkpoint_due:
                    self.save(snapshot=True)
                if on_step is not None:
                    on_step(self.step)
                if stop.requested:
                    self.info["seconds"] = round(self.info.get("seconds", 0.0) + time.perf_counter() - started, 2)
                    self.save(snapshot=False)  # nothing is lost: --resume continues from this exact step
                    name = signal.Signals(stop.signum).name
                    raise TrainingInterrupted(
                        f"interrupted by {name} at step {self.step} of {train.steps}: the run is saved in "
                        f"{self.out_dir}; continue it with: arithlens train --resume {self.out_dir}",
                        128 + int(stop.signum))
        if not self._weights_finite():
            self._diverged(float(self.history[self.step - 1, 1]), started)
        self.info.update(status="complete", finished=_now(), stopped_at_step=self.step,
                         stop_reason="until_accuracy" if reached else "steps")
        self.info["seconds"] = round(self.info.get("seconds", 0.0) + time.perf_counter() - started, 2)
        self.save(snapshot=True)


_RESTORE_ADVICE = "; restore the run folder from a copy, or start the run again with --force"
_ADAMW_STATE = ("step", "exp_avg", "exp_avg_sq")


def _checked_train_state(trainer: Trainer, path: Path, tensors: dict[str, torch.Tensor],
                         metadata: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """The step, optimizer state and scheduler state of a train state that fits `trainer` in every part."""
    damaged = f"damaged train state {path}"

    def refuse(problem: str) -> RunFolderError:
        return RunFolderError(f"{damaged}: {problem}{_RESTORE_ADVICE}")

    text = metadata.get("step")
    if not isinstance(text, str) or not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise refuse(f"its step is {text!r}, not a whole number of steps >= 1")
    step = int(text)
    history = tensors.get("history")
    if history is None or history.dtype != torch.float64 or history.ndim != 2:
        raise refuse("it has no float64 'history' tensor [steps, metrics]")
    if history.shape[1] != trainer.n_metrics:
        raise RunFolderError(
            f"the train state {path} records {history.shape[1]} metrics per step, and this run's config "
            f"{trainer.n_metrics}: it is from another run (different --digits, --finite or --eval-every)"
            f"{_RESTORE_ADVICE}")
    if history.shape[0] != step:
        raise refuse(f"its step ({step}) disagrees with its history, which has {history.shape[0]} steps")
    if step > trainer.config.train.steps:
        raise RunFolderError(f"{trainer.out_dir} has already trained {step} steps; ask for --steps >= {step}")

    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    check_weights(trainer.model.state_dict(), weights, f"the train state {path}", prefix="model.")

    params = list(trainer.model.parameters())
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            parts = key.split(".", 2)
            if len(parts) != 3 or not (parts[1].isascii() and parts[1].isdigit()) or int(parts[1]) >= len(params) \
                    or parts[2] not in _ADAMW_STATE:
                raise refuse(f"it has a tensor {key!r} that is no part of this run's AdamW state")
            state.setdefault(int(parts[1]), {})[parts[2]] = value
    for index, param in enumerate(params):
        for name in _ADAMW_STATE:
            value = state.get(index, {}).get(name)
            want = () if name == "step" else param.shape
            if value is None:
                raise refuse(f"the AdamW state tensor 'optim.{index}.{name}' is missing")
            if value.shape != want or value.dtype != torch.float32 or not bool(torch.isfinite(value).all()):
                raise refuse(f"the AdamW state tensor 'optim.{index}.{name}' is not a finite float32 tensor of "
                             f"shape {tuple(want)}")

    fresh_groups = trainer.optimizer.state_dict()["param_groups"]
    groups = _json_metadata(metadata, "param_groups", refuse)
    if not isinstance(groups, list) or len(groups) != len(fresh_groups) or not all(
            isinstance(g, dict) and g.get("params") == f["params"]
            and all(_is_number(g.get(k)) for k in ("lr", "initial_lr", "weight_decay", "eps"))
            and isinstance(g.get("betas"), list) and len(g["betas"]) == 2 and all(map(_is_number, g["betas"]))
            for g, f in zip(groups, fresh_groups)):
        raise refuse("its 'param_groups' metadata is not this run's AdamW parameter groups")

    fresh_scheduler = {k: v for k, v in trainer.scheduler.state_dict().items() if k != "lr_lambdas"}
    scheduler = _json_metadata(metadata, "scheduler", refuse)
    if not isinstance(scheduler, dict) or scheduler.get("last_epoch") != step or not all(
            isinstance(scheduler.get(k), list) and len(scheduler[k]) == len(fresh_groups)
            and all(map(_is_number, scheduler[k])) for k in ("base_lrs", "_last_lr")):
        raise refuse(f"its 'scheduler' metadata is not a learning-rate schedule at step {step}")
    # Only the fields this torch's scheduler has, each of the type it has: no stray attributes get set.
    for key, value in scheduler.items():
        if key in fresh_scheduler and not (type(value) is type(fresh_scheduler[key])
                                           or (_is_number(value) and _is_number(fresh_scheduler[key]))):
            raise refuse(f"its 'scheduler' metadata has {key} = {value!r:.40}")
    scheduler_state = {k: v for k, v in scheduler.items() if k in fresh_scheduler}

    for key, rng in (("rng.data", trainer.data_rng), ("rng.test", trainer.test_rng)):
        value = tensors.get(key)
        want = rng.get_state()
        if value is None or value.dtype != want.dtype or value.shape != want.shape:
            raise refuse(f"its random-number state {key!r} is missing or not a {tuple(want.shape)} "
                         f"{str(want.dtype).removeprefix('torch.')} tensor")
    return step, {"state": state, "param_groups": groups}, scheduler_state


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _json_metadata(metadata: dict[str, str], key: str, refuse: Callable[[str], RunFolderError]) -> Any:
    try:
        return json.loads(metadata[key])
    except KeyError:
        raise refuse(f"its {key!r} metadata is missing") from None
    except (json.JSONDecodeError, RecursionError, TypeError):
        raise refuse(f"its {key!r} metadata is not JSON") from None


def train(
    config: RunConfig,
    out_dir: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
    command: str | None = None,
    on_step: StepCallback | None = None,
) -> Run:
    """Train a new model into `out_dir` and return the finished run.

    With `force`, an earlier run in `out_dir` is replaced only once the new run
    has saved something; if the new run fails first, the old one is put back.
    """
    out = Path(out_dir)
    trainer_device = resolve_device(config.train.device)  # fail before touching the folder
    with run_folder_lock(out):
        recover_run_folder(out)
        replaced = check_replaceable(out, force)
        check_writable(out)
        info = {"command": command or "", "started": _now(), "device": str(trainer_device), "status": "interrupted"}
        trainer = Trainer(config, out, info)  # allocates everything before the old run is touched
        if config.train.init_from is not None:
            _start_from(trainer, config.train.init_from)
        replacement = ForcedReplacement(out, replaced)
        replacement.set_aside()
        trainer.after_save = replacement.discard
        try:
            trainer.write_config()
            trainer.fit(progress=progress, on_step=on_step)
        except ArithlensError as error:
            if not replacement.pending:
                raise
            replacement.restore()
            raise type(error)(f"{error}; the earlier run in {out} is kept as it was") from None
        except BaseException:
            replacement.restore()
            raise
    return load_run(out)


def _start_from(trainer: Trainer, source_name: str) -> None:
    """Copy a trained model's weights into the fresh model (`arithlens.init_from`); resumes restore instead."""
    from arithlens.init_from import check_fits, copy_into
    from arithlens.runs import load_model

    source_run = load_run(source_name) if not str(source_name).endswith(".safetensors") else None
    if source_run is not None:  # the shape is checked before the weights are read
        check_fits(trainer.config.model, source_run.config.model, source_name)
    source = load_model(source_name, device=str(trainer.device))
    trainer.info["init_from_weights"] = copy_into(trainer.model, source, source_name)


def resume(
    run_dir: str | Path,
    *,
    steps: int | None = None,
    progress: bool = True,
    on_step: StepCallback | None = None,
) -> Run:
    """Continue an interrupted (or finished, with more `steps`) run from its train state, bit-identically."""
    path = resolve_run_path(run_dir)
    with run_folder_lock(path, create=False):
        recover_run_folder(path)
        run = load_run(path)
        config = run.config
        if steps is not None:
            config = replace(config, train=replace(config.train, steps=steps))
        if not (run.path / CHECKPOINT_DIR / TRAIN_STATE_FILE).is_file():
            raise RunFolderError(f"{run.path} has no saved train state to resume from; start it again with --force")
        for folder in (run.path, run.path / CHECKPOINT_DIR):
            check_writable(folder)  # before the steps, not at the save after them
        trainer = Trainer(config, run.path, dict(run.info))
        trainer.restore()
        trainer.fit(progress=progress, on_step=on_step)
    return load_run(run.path)
