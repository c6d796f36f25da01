"""Run-folder safety: one writer at a time, `--force` that cannot lose a run, and folders swapped whole.

Three promises, each kept by one tool here:

- **One writer.** `run_folder_lock` holds an exclusive `flock` on RUN_DIR/.arithlens.lock
  while a command writes the folder. The kernel drops the lock when the process
  dies, however it dies, so a killed run never leaves the folder locked.
- **`--force` replaces a run only when the new one has something to write.**
  `ForcedReplacement` refuses folders arithlens did not make (or that hold files
  it did not write), then sets the old artefacts aside in RUN_DIR/.arithlens-replaced/
  and deletes them only after the new run's first save. If the new run fails
  before that, the old one is put back; if the process is killed before that,
  the next command into the folder puts it back (`recover_run_folder`).
- **A folder of results is replaced as one unit.** `replace_folder` swaps a
  finished staging folder for the old one with two renames; `recover_folder`
  repairs the one state a kill between them can leave.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from arithlens.errors import RunFolderError
from arithlens.runs import (
    ANALYSIS_DIR,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    RUN_ARTEFACTS,
    TRAIN_STATE_FILE,
    is_bundled,
)

LOCK_FILE = ".arithlens.lock"
SET_ASIDE_DIR = ".arithlens-replaced"


# ----- one writer -----------------------------------------------------------


@contextmanager
def run_folder_lock(path: Path, *, create: bool = True) -> Iterator[None]:
    """Hold the folder's write lock, or fail at once with one line naming the process that has it."""
    if is_bundled(path):
        raise RunFolderError(f"{path.name} is a bundled model, installed with arithlens; no command writes into it "
                             f"(copy the folder to work on it)")
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"{path} exists and is not a folder; choose another --out")
    created = create and not path.exists()
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        handle = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise RunFolderError(f"cannot write to {path}: {error.strerror or error}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(handle, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunFolderError(
                f"{path} is in use by another arithlens process (pid {holder}); wait for it to finish, "
                f"or write to another folder") from None
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(handle, 0)
    finally:
        os.close(handle)  # closing drops the flock
        if created and _only_lock_left(path):
            shutil.rmtree(path, ignore_errors=True)  # a command that failed at once leaves no empty folder behind


def _only_lock_left(path: Path) -> bool:
    try:
        return [p.name for p in path.iterdir()] == [LOCK_FILE]
    except OSError:
        return False


def check_writable(path: Path) -> None:
    """Fail before the expensive work, not at the first save after it."""
    probe = path / f".arithlens-write-check-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise RunFolderError(f"cannot write to {path}: {error.strerror or error}") from None


# ----- --force ----------------------------------------------------------------

# What arithlens writes into a run folder; anything else is the user's and blocks --force.
_HIDDEN_OK = (LOCK_FILE, SET_ASIDE_DIR)
ANALYSIS_SUFFIXES = (".parquet", ".json")  # an analysis folder holds its tables and summary.json, nothing else


ANALYSIS_OPERATION_FOLDERS = ("add", "sub")  # a mixed model's analysis has one folder per operation


def is_analysis_folder(path: Path, nested: bool = True) -> bool:
    """Whether `path` holds only what `analyze` writes (hidden staging and temporary files aside)."""
    return path.is_dir() and all(
        (entry.is_file() and entry.suffix in ANALYSIS_SUFFIXES)
        or (nested and entry.is_dir() and entry.name in ANALYSIS_OPERATION_FOLDERS
            and is_analysis_folder(entry, nested=False))
        for entry in path.iterdir() if not entry.name.startswith("."))


def existing_artefacts(path: Path) -> list[str]:
    return [name for name in RUN_ARTEFACTS if (path / name).exists()] if path.is_dir() else []


def foreign_files(path: Path) -> list[str]:
    """Files in `path` that arithlens did not write (relative paths), which --force must not delete."""
    foreign = []
    for entry in sorted(path.rglob("*")):
        relative = entry.relative_to(path)
        top = relative.parts[0]
        if top in _HIDDEN_OK or entry.is_dir() or top.startswith("."):
            continue  # our lock, an earlier set-aside, and atomic writes' temporary files
        if len(relative.parts) == 1 and top in RUN_ARTEFACTS:
            continue
        if top == CHECKPOINT_DIR and len(relative.parts) == 2 and entry.suffix == ".safetensors":
            continue
        if top == ANALYSIS_DIR and entry.suffix in ANALYSIS_SUFFIXES and (
                len(relative.parts) == 2 or (len(relative.parts) == 3
                                             and relative.parts[1] in ANALYSIS_OPERATION_FOLDERS)):
            continue
        foreign.append(str(relative))
    return foreign


def _is_arithlens_config(path: Path) -> bool:
    try:
        data = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "arithlens_version" in data and {"model", "train"} <= data.keys()


def check_replaceable(path: Path, force: bool) -> list[str]:
    """The artefacts a new run into `path` would replace, or an error saying why it must not."""
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"{path} exists and is not a folder; choose another --out")
    existing = existing_artefacts(path)
    if not existing:
        return []
    if not force:
        raise RunFolderError(
            f"{path} already holds a run ({', '.join(existing)}); use --resume {path} to continue it, "
            f"--force to overwrite it, or another --out")
    if (path / CONFIG_FILE).exists() and not _is_arithlens_config(path):
        raise RunFolderError(f"{path} was not made by arithlens (its {CONFIG_FILE} is not an arithlens run's); "
                             f"--force will not delete it: choose another --out")
    foreign = foreign_files(path)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise RunFolderError(f"{path} holds files arithlens did not write ({shown}); --force will not delete them: "
                             f"move them out or choose another --out")
    return existing


class ForcedReplacement:
    """The old run's artefacts, set aside until the new run's first save (see the module docstring)."""

    def __init__(self, path: Path, names: list[str]) -> None:
        self.path = path
        self.aside = path / SET_ASIDE_DIR
        self.names = names
        self.pending = False

    def set_aside(self) -> None:
        if not self.names:
            return
        self.aside.mkdir(exist_ok=True)
        for name in self.names:
            os.replace(self.path / name, self.aside / name)
        self.pending = True

    def discard(self) -> None:
        """The new run has saved: the old one is gone for good."""
        if self.pending:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.pending = False

    def restore(self) -> None:
        """The new run failed before saving anything: put the old run back as it was."""
        if self.pending:
            _restore_set_aside(self.path)
            self.pending = False


def _restore_set_aside(path: Path) -> None:
    aside = path / SET_ASIDE_DIR
    for name in RUN_ARTEFACTS:
        new = path / name
        if new.is_dir():
            shutil.rmtree(new)
        elif new.exists():
            new.unlink()
    for entry in aside.iterdir():
        os.replace(entry, path / entry.name)
    aside.rmdir()


def recover_run_folder(path: Path) -> None:
    """Finish what a killed `--force` left: keep the new run if it saved, else restore the old one.

    Call with the folder's lock held.
    """
    if not (path / SET_ASIDE_DIR).is_dir():
        return
    if (path / CHECKPOINT_DIR / TRAIN_STATE_FILE).is_file():
        shutil.rmtree(path / SET_ASIDE_DIR)
    else:
        _restore_set_aside(path)


# ----- whole-folder swaps ---------------------------------------------------------


def staging_folder(target: Path) -> Path:
    """A fresh, empty folder beside `target` to build its replacement in."""
    staging = target.with_name(f".{target.name}.new-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def _old(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def replace_folder(staging: Path, target: Path) -> None:
    """Put the finished `staging` folder at `target`; the old `target` is deleted only afterwards."""
    _restore_old(target)
    old = _old(target)
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def recover_folder(target: Path) -> None:
    """Repair what a killed writer left: put back an old folder a kill between `replace_folder`'s
    renames left set aside, and delete abandoned staging folders (call with the writers' lock held)."""
    _restore_old(target)
    for abandoned in target.parent.glob(f".{target.name}.new-*"):
        shutil.rmtree(abandoned, ignore_errors=True)


def _restore_old(target: Path) -> None:
    old = _old(target)
    if old.is_dir() and not target.exists():
        os.replace(old, target)
