"""Per-document budgets over every stage after extraction, and content-addressed windows.

One pathological file (5 MB of ``lorem ipsum zzyzx`` on one line) used to cost 862 s and 2.3 GB in the
parent and 41k vectors of which 70 were distinct, and those thousands of identical vectors broke Chroma's
HNSW graph for every other document. So, per document:

* identical passages are cut into windows once (their windows would be identical);
* identical windows (same channel, same text up to whitespace: :func:`manualrag.ids.content_key`) are
  embedded and stored once, under the id of the first;
* passages, windows per channel and figures are capped (``limits.*``); what is over a cap is left out, in
  reading order, with a warning naming the file, the count and the key to raise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from manualrag import ids

T = TypeVar("T")


def unique(items: Sequence[T], text_of: Callable[[T], str]) -> list[T]:
    """The first item of each distinct text (content-addressed), in order."""
    seen: set[str] = set()
    out: list[T] = []
    for item in items:
        key = ids.content_key(text_of(item))
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def cap(items: Sequence[T], limit: int, what: str, key: str) -> tuple[list[T], str | None]:
    """The first ``limit`` items, and a warning when some were left out."""
    if len(items) <= limit:
        return list(items), None
    return list(items[:limit]), (
        f"budget exceeded: {len(items)} {what}, only the first {limit} are indexed (raise config key '{key}')"
    )


def duplicates_note(total: int, kept: int, what: str) -> str | None:
    """A warning when most of a document's passages or windows were copies of each other."""
    if total >= 1000 and kept * 10 <= total:
        return (
            f"repetitive text: {total} {what}, {kept} distinct (each distinct one embedded and stored once)"
        )
    return None
