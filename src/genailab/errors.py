"""Errors that genailab raises on bad input.

Every error a user can trigger with bad data, a bad argument or a bad checkpoint is a
:class:`GenailabError`. Each message names the argument, the value and what was expected, so the CLI
can print it as one paragraph without a traceback. They also subclass the matching builtin
(``ValueError``, ``KeyError``, ``OSError``) so ordinary ``except ValueError`` code keeps working.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "GenailabError",
    "GeneOverlapError",
    "InvalidCountsError",
    "InvalidInputError",
    "MissingKeyError",
    "OutputPathError",
    "UnknownLabelError",
]


class GenailabError(Exception):
    """Base class of every documented genailab error."""


class InvalidInputError(GenailabError, ValueError):
    """An argument or data object does not have the expected value, type or shape."""


class InvalidCountsError(InvalidInputError):
    """A count matrix is not finite, non-negative and integer."""


class MissingKeyError(InvalidInputError, KeyError):
    """A required ``obs``/``var``/``layers`` key is absent."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class UnknownLabelError(InvalidInputError, KeyError):
    """A categorical label was not seen when the model was trained."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class GeneOverlapError(InvalidInputError):
    """A dataset shares too few genes with a model's gene list."""


class CheckpointError(GenailabError, ValueError):
    """A saved model directory is missing, truncated, corrupt or from an incompatible version."""


class OutputPathError(GenailabError, OSError):
    """An output path cannot be written."""
