"""User-facing errors.

Anything a user can cause (a bad flag, a missing file, a malformed question)
raises `ArithlensError`. The CLI turns it into one line on stderr and exit
code 2; Python callers get an ordinary `ValueError` subclass they can catch.
"""

from __future__ import annotations


class ArithlensError(ValueError):
    """A mistake in what the user asked for, with a message that says how to fix it."""


class ConfigError(ArithlensError):
    """An invalid configuration value."""


class RunFolderError(ArithlensError):
    """A run folder that is missing, damaged, or would be overwritten."""


class TrainingDiverged(ArithlensError):
    """The loss became NaN or infinite: training stopped and kept its last good checkpoint."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training after the current step was saved.

    A KeyboardInterrupt, so Python callers stop as they would on Ctrl-C; it
    carries what was saved and the exit code a shell expects (130 for SIGINT,
    143 for SIGTERM), which the CLI prints and returns.
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class CommandInterrupted(Exception):
    """The CLI's carrier for an interruption: typer would turn a KeyboardInterrupt into a bare exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
