"""User-facing errors.

Every problem a user can fix (bad name, value out of range, missing data file) raises a subclass of
`LifelongError`; the command line prints its message on one line and exits with status 2, without a
traceback. Messages say what was wrong and what is accepted.
"""

from __future__ import annotations


class LifelongError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""


class ConfigError(LifelongError, ValueError):
    """An unknown name, a value out of range, or an impossible combination."""


class DataError(LifelongError):
    """A data file is missing, corrupt or could not be downloaded."""
