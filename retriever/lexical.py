"""Lexical (BM25) query handling: user text -> a safe SQLite FTS5 MATCH expression -> ranked rows.

The lexical index itself (the FTS5 table, its columns and weights) is written by the manifest
(:mod:`manualrag.manifest`); how a *query* is read (tokens, phrases, stopwords, part-number prefixes) lives
here, on the retriever side.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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
# ligature glyphs as their letters, as extraction reads a PDF's text (a query pasted from a PDF viewer may
# hold them): U+FB00-FB06
LIGATURES = str.maketrans(
    {
        "\ufb00": "ff",
        "\ufb01": "fi",
        "\ufb02": "fl",
        "\ufb03": "ffi",
        "\ufb04": "ffl",
        "\ufb05": "st",
        "\ufb06": "st",
    }
)


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
    for chunk in text.translate(LIGATURES).split():
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


# a word this long may be two words written as one ("filesystem" / "file system"), each part this long
COMPOUND_PART_MIN = 4
# ... and no longer than this (real compounds are; a pasted hash or a key held down is not, and trying every
# split of a 100,000-letter "word" took minutes and, in the snippet's regex, all the memory)
COMPOUND_WORD_MAX = 40
MAX_COMPOUND_PHRASES = 8
_WORD_RE = re.compile(r"[^\W\d_]+")


def compound_phrases(text: str, manifest: Manifest) -> list[str]:
    """Extra FTS5 phrases for words a manual may write joined or apart: a long query word that the index
    holds as two words ("filesystem" -> ``"file system"``, also a word hyphenated at a line end) and two
    adjacent query words that the index holds as one ("boot loader" -> ``"bootloader"``).

    A word of 8+ letters is split into two parts of 4+ letters (no stopword), the most even split first, and
    the first split whose parts the index holds side by side is kept; a join is kept if the index holds the
    joined word. Each candidate is one ``LIMIT 1`` probe of the FTS5 index (~0.1 ms at a million records;
    reading document frequencies from the vocabulary instead walked every common part's row list, ~3 ms)."""
    seq: list[str | None] = []  # the query's plain words in order; None where adjacency breaks
    for chunk in text.translate(LIGATURES).split():
        runs = _RUN_RE.findall(chunk)
        seq.append(runs[0].lower() if len(runs) == 1 and _WORD_RE.fullmatch(runs[0]) else None)
    n = COMPOUND_PART_MIN
    out: list[str] = []
    for w in sorted({w for w in seq if w and w not in STOPWORDS and 2 * n <= len(w) <= COMPOUND_WORD_MAX}):
        splits = [(w[:i], w[i:]) for i in range(n, len(w) - n + 1) if not {w[:i], w[i:]} & STOPWORDS]
        for a, b in sorted(splits, key=lambda ab: (abs(len(ab[0]) - len(ab[1])), ab)):
            if manifest.lexical_holds(f'"{a} {b}"'):
                out.append(f'"{a} {b}"')
                break
    words = {w for w in seq if w}
    joins = [
        a + b
        for a, b in zip(seq, seq[1:], strict=False)
        if a and b and a not in STOPWORDS and b not in STOPWORDS and a + b not in words
    ]
    out += [f'"{j}"' for j in dict.fromkeys(joins) if manifest.lexical_holds(f'"{j}"')]
    return out[:MAX_COMPOUND_PHRASES]


def lexical_search(
    manifest: Manifest, query: str, limit: int, docs: Sequence[str] | None = None
) -> list[tuple[str, str, float]]:
    """BM25 hits for arbitrary user text: ``(ref_type, ref_id, score)`` best first (see :func:`fts_query`),
    with the query's joined/split word variants (:func:`compound_phrases`) as further phrases.

    The same hits as the plain OR query, found without scoring every row a common word matches
    (:meth:`Manifest.match_lexical_phrases`). ``docs``: search only these documents' rows (a source
    filter), None: all."""
    phrases = fts_phrases(query)
    if not phrases:
        return []
    return manifest.match_lexical_phrases(phrases + compound_phrases(query, manifest), limit, docs)
