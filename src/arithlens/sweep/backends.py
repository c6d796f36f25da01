"""Where a sweep's cells run: Ray (a local instance, or a cluster at --address) or in this process, one by one.

Both backends take jobs (`submit`) and hand back finished ones (`next_done`),
so the sweep's bookkeeping (retries, sweep.json, the progress bar) is written
once, in `runner`. Ray runs one cell per core with one torch thread each; the
cell function is `cell.run_cell`, the Python API, never the CLI.

Ray is an optional extra (`pip install 'arithlens[sweep]'`); without it the
sweep runs in this process at the process's torch thread count.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
from collections import deque
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any, Protocol

from arithlens.errors import ArithlensError
from arithlens.sweep.cell import run_cell

INSTALL_HINT = "pip install 'arithlens[sweep]'"
CONNECT_TIMEOUT_S = 5.0  # a cluster that does not answer by then is unreachable: say so, don't hang
CANCEL_GRACE_S = 20.0  # after Ctrl-C, how long cancelled cells get to save their step and stop


@dataclass(frozen=True)
class Job:
    """One attempt at one cell."""

    name: str
    folder: str
    config: dict[str, Any]
    count: int
    command: str


class Backend(Protocol):
    description: str

    def submit(self, job: Job) -> None: ...

    def next_done(self) -> tuple[Job, dict[str, Any]]: ...

    def outstanding(self) -> int: ...

    def cancel(self) -> None: ...


def load_ray() -> ModuleType | None:
    """The ray module, or None when the optional extra is not installed."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        return None


class SequentialBackend:
    """Runs each cell in this process when asked for the next finished one."""

    description = "this process, one cell at a time (Ray is not installed)"

    def __init__(self) -> None:
        self.queue: deque[Job] = deque()

    def __enter__(self) -> SequentialBackend:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.queue.clear()

    def submit(self, job: Job) -> None:
        self.queue.append(job)

    def next_done(self) -> tuple[Job, dict[str, Any]]:
        job = self.queue.popleft()
        return job, run_cell(job.folder, job.config, job.count, job.command)

    def outstanding(self) -> int:
        return len(self.queue)

    def cancel(self) -> None:
        self.queue.clear()  # the running cell stopped itself: training saves its step on Ctrl-C


def parse_address(address: str) -> tuple[str, int]:
    """HOST:PORT of a Ray cluster's head (what `ray start --head` prints), or one clear error."""
    host, _, port = address.strip().rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ArithlensError(f"--address must be HOST:PORT of a Ray head (as `ray start --head` prints it, "
                             f"e.g. 127.0.0.1:6379), got {address!r}")
    return host.strip("[]"), int(port)


def check_reachable(address: str) -> None:
    """Fail fast, before anything is trained, when nothing listens at the cluster's address."""
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as error:
        reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or str(error))
        raise ArithlensError(f"cannot reach a Ray cluster at {address} ({reason}); start one with "
                             f"`ray start --head --port {port}` or check the address") from None


class RayBackend:
    """Cells as Ray tasks (one CPU, one torch thread each) on a local instance or the cluster at `address`."""

    def __init__(self, ray: ModuleType, address: str | None) -> None:
        self.ray = ray
        self.address = address
        self.running: dict[Any, Job] = {}
        local = f"a local Ray instance ({os.cpu_count()} workers, one torch thread each)"
        self.description = f"the Ray cluster at {address}" if address else local

    def __enter__(self) -> RayBackend:
        # Ray would otherwise ask for (and send) usage statistics: a sweep must run offline and quietly.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        quiet: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
        try:
            if self.address is None:
                # "local": a new instance of our own, even where `ray start` left a cluster address behind.
                self.ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **quiet)
            else:
                self.ray.init(address=self.address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as error:
            cause = error.__cause__ or error
            hint = (" If the cluster uses token authentication, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN."
                    if "auth" in str(cause).lower() else "")
            first = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(".")
            raise ArithlensError(f"cannot start Ray on {self.description}: {first}.{hint}") from None
        self.remote = self.ray.remote(num_cpus=1, max_retries=0)(run_cell)  # the sweep retries, and records it
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.ray.shutdown()

    def submit(self, job: Job) -> None:
        ref = self.remote.remote(job.folder, job.config, job.count, job.command, 1)
        self.running[ref] = job

    def next_done(self) -> tuple[Job, dict[str, Any]]:
        [ref], _ = self.ray.wait(list(self.running), num_returns=1)
        job = self.running.pop(ref)
        try:
            return job, self.ray.get(ref)
        except self.ray.exceptions.RayError as error:  # the worker died (killed, out of memory): worth a retry
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            return job, {"status": "failed", "error": f"{type(error).__name__}: {first}", "retry": True,
                         "seconds": None}

    def outstanding(self) -> int:
        return len(self.running)

    def cancel(self) -> None:
        """Interrupt every running cell (training saves its step on the KeyboardInterrupt) and wait a little."""
        refs = list(self.running)
        for ref in refs:
            self.ray.cancel(ref)
        if refs:
            self.ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_S)
        self.running.clear()


def choose_backend(address: str | None, use_ray: bool | None) -> SequentialBackend | RayBackend:
    """Ray when it is installed (or asked for), else the sequential fallback; --address needs Ray."""
    ray = load_ray() if use_ray is not False else None
    if address is not None:
        if ray is None:
            raise ArithlensError(f"--address needs Ray, which is not installed: {INSTALL_HINT}")
        check_reachable(address)  # now, before the sweep folder is touched
        return RayBackend(ray, address)
    if use_ray and ray is None:
        raise ArithlensError(f"Ray is not installed: {INSTALL_HINT}")
    return RayBackend(ray, None) if ray is not None else SequentialBackend()
