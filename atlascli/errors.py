"""User-facing errors: one clear line saying what is wrong and how to fix it."""

from __future__ import annotations


class AtlasError(Exception):
    """An error caused by the user's input or environment, not by a bug.

    The CLI prints ``message`` (and ``hint`` after it) on one line and exits non-zero,
    without a traceback unless ``--debug`` is given.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class NotFoundError(AtlasError):
    """A model, artifact, dataset or file that does not exist."""


class CorruptArtifactError(AtlasError):
    """An artifact whose files do not match the checksums of its manifest."""


class InputError(AtlasError):
    """Invalid arguments: out-of-range layer, bad dimensions, empty dataset, NaN values..."""


class PeerError(AtlasError):
    """Another rank of a multi-process run failed (or disagreed) and rank 0 reports why; this rank exits quietly."""
