"""One base exception with specific subclasses; the CLI maps them to exit codes."""

from __future__ import annotations

import shlex
from collections.abc import Callable


class ManualragError(Exception):
    """Base class: a user-facing error with an actionable message (no traceback shown)."""

    exit_code = 2


def shell_arg(value: object) -> str:
    """``value`` as one argument of a command that a message suggests, quoted for a POSIX shell where it
    needs it (``--index-dir 'Manuals Library'``), so the command runs as pasted."""
    return shlex.quote(str(value))


class ConfigError(ManualragError):
    """A bad config file, environment variable or flag; the message names the key."""


# the last way out of a model that cannot be loaded: go without vectors, in the words of each command
INDEX_LEXICAL_ONLY = "--no-dense (lexical search only)"
QUERY_LEXICAL_ONLY = "--channels lexical (keyword search only)"


class ModelUnavailableError(ManualragError):
    """Encoder weights cannot be loaded (offline, wrong name, no cache).

    ``what``: the failure alone; ``ways_out(lexical_only)``, when given, the advice after it, whose last way
    (no vectors at all) is an option of the command: ``index``'s by default, :meth:`worded_for` another's."""

    def __init__(self, what: str, ways_out: Callable[[str], str] | None = None, lexical_only: str = ""):
        self.what = what
        self.ways_out = ways_out
        super().__init__(f"{what}. {ways_out(lexical_only or INDEX_LEXICAL_ONLY)}" if ways_out else what)

    def __reduce__(self) -> tuple[type[ModelUnavailableError], tuple[str]]:
        return ModelUnavailableError, (str(self),)  # to another process: the message as worded (no callable)

    def worded_for(self, lexical_only: str) -> ModelUnavailableError:
        """The same error with the ways out of a command whose lexical-only option is ``lexical_only``."""
        if self.ways_out is None:
            return self
        return ModelUnavailableError(self.what, self.ways_out, lexical_only)


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
