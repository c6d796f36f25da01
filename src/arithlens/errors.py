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
