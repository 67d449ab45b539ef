"""Untrusted text on a terminal: file names, document text, captions, error reasons and log messages come
from files an attacker may have written. Shown raw, a control character drives the terminal (moves the
cursor, rewrites lines, recolours) and a line break forges lines of our own output (``FAILED ok.md: ...``).

``one_line`` is for every human-readable line we print: line breaks of every kind become visible escapes
(``\\n``, ``\\r``, ``\\u2028``) and other control characters and bidi overrides become U+FFFD, so one
record is always one line. ``block`` is for output that is multi-line by design (the LLM context block, the
eval table): it keeps ``\\n`` and neutralises everything else."""

from __future__ import annotations

import logging
import re
from typing import Any

# line breaks as Python's str.splitlines() and terminals see them, but tab
_BREAKS = {
    "\n": "\\n",
    "\r": "\\r",
    "\x0b": "\\v",
    "\x0c": "\\f",
    "\x1c": "\\x1c",
    "\x1d": "\\x1d",
    "\x1e": "\\x1e",
    "\x85": "\\x85",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_BREAK_RE = re.compile("[" + "".join(_BREAKS) + "]")
# control characters (but tab and newline) and bidi overrides/isolates
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def one_line(text: Any) -> Any:
    """``text`` (a str; anything else is returned as is) as one safe line."""
    if not isinstance(text, str):
        return text
    return _CONTROL.sub("\ufffd", _BREAK_RE.sub(lambda m: _BREAKS[m.group()], text))


def block(text: Any) -> Any:
    """``text`` as safe lines: newlines kept, other line breaks escaped, control characters neutralised."""
    if not isinstance(text, str):
        return text
    return "\n".join(one_line(line) for line in text.split("\n"))


class OneLineFormatter(logging.Formatter):
    """Log records as one line each (messages often carry file names); a traceback (``--debug``) follows.
    ``plain``: a record reads ``warning: message`` (its level in lower case, no logger name), as the CLI's
    own warnings and errors do."""

    def __init__(self, fmt: str | None = None, plain: bool = False):
        super().__init__(fmt)
        self.plain = plain

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        if self.plain:
            return one_line(f"{record.levelname.lower()}: {record.getMessage()}")
        return one_line(super().formatMessage(record))
