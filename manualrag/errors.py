"""One base exception with specific subclasses; the CLI maps them to exit codes."""

from __future__ import annotations


class ManualragError(Exception):
    """Base class: a user-facing error with an actionable message (no traceback shown)."""

    exit_code = 2


class ConfigError(ManualragError):
    """A bad config file, environment variable or flag; the message names the key."""


class ModelUnavailableError(ManualragError):
    """Encoder weights cannot be loaded (offline, wrong name, no cache)."""


class EncoderMismatchError(ManualragError):
    """The index was built with another encoder than the one requested."""


class IndexLockedError(ManualragError):
    """Another writer holds the index lock."""


class IndexNotFoundError(ManualragError):
    """No index at the given location."""


class IndexCorruptError(ManualragError):
    """A file of the index is damaged (SQLite reports corruption, or it is not a database at all)."""


class StoreError(ManualragError):
    """The vector store (embedded folder or server) cannot be used."""


class ExtractionError(ManualragError):
    """One file could not be extracted; carries the file and a one-line reason."""

    exit_code = 1

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class NonFiniteVectorsError(ManualragError):
    """A model returned NaN/infinite vectors, in float32 too: the document it was embedding fails alone."""

    exit_code = 1
