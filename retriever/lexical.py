"""Lexical (BM25) query handling: user text -> a safe SQLite FTS5 MATCH expression -> ranked rows.

The lexical index itself (the FTS5 table, its columns and weights) is written by the manifest
(:mod:`manualrag.manifest`); how a *query* is read (tokens, phrases, stopwords, part-number prefixes) lives
here, on the retriever side.
"""

from __future__ import annotations

import re

from manualrag.manifest import Manifest

MAX_QUERY_TERMS = 32

# Query words that carry no meaning for BM25. Deliberately small: "on", "off", "no", "in", "out", "up",
# "down" stay searchable (ON/OFF switch, NO/NC contact, IN/OUT pins).
STOPWORDS = frozenset(
    """a an and are as at be been but by can could do does did for from had has have how i if into is it
    its me my of or our shall should so such than that the their them then there these they this those to
    was we were what when where which who whom why will with would you your""".split()
)

# unicode letters and digits: what FTS5's unicode61 tokenizer keeps as token characters
_RUN_RE = re.compile(r"[^\W_]+")


def query_terms(text: str) -> list[str]:
    """The FTS5 terms for a user query: words, and phrases for joined tokens ("0.2", "X3/X4", "self-test").

    Tokens are runs of unicode letters and digits (what FTS5's unicode61 tokenizer keeps), lower-cased;
    "74HC125" and "X3" stay whole. A whitespace-separated chunk made of several runs becomes a phrase
    ("0.2" -> "0 2", which matches the indexed text "0.2") plus its runs of two or more characters.
    Stopwords are dropped unless nothing else is left. FTS5 syntax in the input (quotes, ``-``, ``*``,
    ``:``, ``^``, parentheses, AND/OR/NOT/NEAR) is never passed through.
    """
    terms: list[str] = []
    stop: list[str] = []
    for chunk in text.split():
        runs = [r.lower() for r in _RUN_RE.findall(chunk)]
        if not runs:
            continue
        if len(runs) == 1:
            (stop if runs[0] in STOPWORDS else terms).append(runs[0])
            continue
        terms.append(" ".join(runs))
        terms.extend(r for r in runs if len(r) > 1 and r not in STOPWORDS)
    chosen = terms or stop
    return list(dict.fromkeys(chosen))[:MAX_QUERY_TERMS]


_PART_NUMBER_RE = re.compile(r"^(?=[^ ]*\d)(?=[^ ]*[^\W\d_])[^\W_]{4,}$")


def fts_phrases(text: str) -> list[str]:
    """The safe FTS5 phrase expressions for arbitrary user text (see :func:`fts_query`)."""
    return [f'"{t}"*' if _PART_NUMBER_RE.match(t) else f'"{t}"' for t in query_terms(text)]


def fts_query(text: str) -> str:
    """A safe FTS5 MATCH expression for arbitrary user text: quoted terms OR-ed; "" when nothing to search.

    A single token of 4+ characters mixing letters and digits (a part or model number: "DAC0800",
    "74HC", "RS232") also matches as a prefix: manuals print the full designation ("DAC0800LCN",
    "74HC4040", "RS232C") where people type the family.
    """
    return " OR ".join(fts_phrases(text))


def lexical_search(manifest: Manifest, query: str, limit: int) -> list[tuple[str, str, float]]:
    """BM25 hits for arbitrary user text: ``(ref_type, ref_id, score)`` best first (see :func:`fts_query`).

    The same hits as the plain OR query, found without scoring every row a common word matches
    (:meth:`Manifest.match_lexical_phrases`)."""
    return manifest.match_lexical_phrases(fts_phrases(query), limit)
