"""One exception family, so every entry point can turn a mistake into one line that says what to fix.

The CLI prints ``error: <message>`` and exits 2; notebooks show the message without a traceback wall
(see :func:`simo.notebook.setup`). Messages name the offending value and the valid choices.
"""
from __future__ import annotations


class SimoError(Exception):
    """Base class: a user-facing error whose message says what to fix."""


class ConfigError(SimoError):
    """Unknown profile, unknown parameter, wrong type or value in a profile or notebook parameter."""


class DataError(SimoError):
    """Missing, malformed or empty dataset directory or split."""


class TaskError(SimoError):
    """Unknown task name or a task that the dataset cannot serve."""


class CheckpointError(SimoError):
    """Missing, corrupt, truncated or mismatched checkpoint / weights file."""


class MergeError(SimoError):
    """Bad inputs to a merge method (key sets, shapes, dtypes, parameter ranges, unknown method)."""


class TrainingError(SimoError):
    """Training diverged (NaN/inf loss) or cannot proceed."""


class PreviewError(SimoError):
    """Bad inputs to a preview: alpha not on the simplex, mismatched posteriors, ..."""


def one_of(value: object, choices, what: str) -> str:
    """Format 'unknown <what> 'x'; choose one of: a, b, c' for error messages."""
    return f"unknown {what} {value!r}; choose one of: {', '.join(map(str, choices))}"
