"""Bounded BM25 top-k over the FTS5 lexical table: score the rows the query's rare phrases hold, not every
row a common word matches.

FTS5's ``bm25()`` is evaluated for every row an OR query matches before ``ORDER BY ... LIMIT`` keeps k of
them. A query with common words ("on", "using", "design", "file") matches a large share of a big index, and
scoring those rows is most of the lexical channel's time: at 270k lexical rows (about a million vector
records) a heading query took ~115 ms at the median to score, against ~11 ms to merely enumerate its matches.

Here the candidates are the rows that hold one of the query's rarest phrases (ascending document frequency,
read from an ``fts5vocab`` table in microseconds, while their frequencies add up to at most
``CANDIDATE_ROWS``, in an index of more than ``BOUND_FACTOR`` times that many rows; multi-token phrases and
part-number prefixes always choose rows), and FTS5's own ``bm25()`` scores them for the *whole* query. Two
queries do it, neither of which enumerates the rows that hold only common phrases (an earlier single query,
``MATCH <all phrases> AND +rowid IN (<rare rows>)``, still walked every match of the OR to test it against
the candidates: half its time at 243k rows): ``MATCH <rare>`` scores every candidate for the rare phrases,
which is its whole score when it holds no common phrase, and ``MATCH (<rare>) AND (<common>)`` scores the
candidates that hold both kinds, each phrase once (see :meth:`FtsTopK._rare_rows`).

Every returned score is the plain query's score of that row, and the order is the plain query's (ties by
rowid), with one reservation: ``bm25()`` adds the per-phrase terms in the order the phrases appear in the
expression, and the second query lists the rare phrases first, so the score of a row holding three or more
of the phrases may differ from the plain query's in the last bits (measured: at most 4e-16 relative). Rows
whose scores tie to 1e-12 are put in rowid order, the plain query's order of tied rows, so a tie summed in
another order stays a tie (scores closer than 1e-12 that the plain query does not see as tied would come in
rowid order too). What can differ: a row that holds none
of the rare phrases, only common ones, is not considered. The result is *proven* identical to the plain
query when the k-th score exceeds the largest score such a row could reach: bm25 sums, per phrase,
``idf * f * (k1 + 1) / (f + k1 * (1 - b + b * D / avgdl))``, each term below ``idf * (k1 + 1)``, with
``idf = log((N - n + 0.5) / (n + 0.5))`` from the phrase's document frequency ``n`` (fts5_aux.c: k1 = 1.2,
b = 0.75). ``last_plan`` says which case a query was.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence

K1, B = 1.2, 0.75  # FTS5's bm25() constants (fts5_aux.c)
_EPS = 1e-9  # relative margin against rounding in the bound comparison
_TIE = 1e-12  # scores this close (relative) are a tie summed in another order: ordered by rowid
CANDIDATE_ROWS = 12000  # rows the rarest phrases may choose for scoring (by document frequency)
# bound only where the plain query may score this many times more rows (below, the second MATCH the bounded
# query runs costs more than it saves: measured slower at 25k lexical rows, 1.7x faster at 174k)
BOUND_FACTOR = 3


def _varint(blob: bytes, i: int = 0) -> int:
    """SQLite's big-endian varint (FTS5 writes its row count with it)."""
    v = 0
    for j in range(8):
        c = blob[i + j]
        v = (v << 7) | (c & 0x7F)
        if c < 0x80:
            return v
    return (v << 8) | blob[i + 8]


def idf(n_rows: int, df: int) -> float:
    """FTS5's idf of a phrase held by ``df`` of ``n_rows`` rows."""
    x = math.log((n_rows - df + 0.5) / (df + 0.5)) if n_rows > 0 else 0.0
    return x if x > 0 else 1e-6


class FtsTopK:
    """Top-k BM25 queries on one connection's FTS5 table ``table`` (see the module doc).

    ``conn`` may be read-only (``mode=ro`` and ``PRAGMA query_only``): the vocabulary table it adds lives in
    the connection's TEMP schema. Not thread-safe: the caller serialises calls (the manifest's lock).
    """

    def __init__(self, conn: sqlite3.Connection, table: str, tokenize: str, bm25_args: str):
        self.conn = conn
        self.table = table
        self.tokenize = tokenize
        self.bm25 = f"bm25({table}, {bm25_args})"
        self._tok: sqlite3.Connection | None = None
        self._vocab = f"temp.{table}_df"
        self.candidate_rows = CANDIDATE_ROWS
        self._df: dict[str, int] = {}
        self._n = 0
        self._must_prove = False  # the last query's phrases hold few rows: bound only when proven exact
        self.last_plan = ""  # "plain" or "bounded (...)": what the last query did (tests, benches)

    def close(self) -> None:
        if self._tok is not None:
            self._tok.close()
            self._tok = None

    # --------------------------------------------------------------------------------------------- setup
    def _prepare(self) -> None:
        if self._tok is not None:
            return
        query_only = self.conn.execute("PRAGMA query_only").fetchone()[0]
        if query_only:  # mode=ro guards the index file; only the TEMP schema is written here
            self.conn.execute("PRAGMA query_only = 0")
        try:
            self.conn.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {self._vocab} USING fts5vocab(main, {self.table}, row)"
            )
        finally:
            if query_only:
                self.conn.execute("PRAGMA query_only = 1")
        # the query's tokens as the index's tokenizer makes them (porter stems): an in-memory FTS5 table
        tok = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        tok.execute(f"CREATE VIRTUAL TABLE q USING fts5(t, tokenize = '{self.tokenize}')")
        tok.execute("CREATE VIRTUAL TABLE q_terms USING fts5vocab(q, instance)")
        self._tok = tok

    def tokens(self, text: str) -> list[str]:
        """``text`` split and stemmed by the index's tokenizer."""
        self._prepare()
        tok = self._tok
        assert tok is not None
        tok.execute("INSERT INTO q(rowid, t) VALUES (1, ?)", (text,))
        try:
            return [r[0] for r in tok.execute("SELECT term FROM q_terms ORDER BY offset")]
        finally:
            tok.execute("DELETE FROM q")

    def n_rows(self) -> int:
        """Rows in the FTS5 index (its averages record, what bm25() itself reads)."""
        row = self.conn.execute(f"SELECT block FROM {self.table}_data WHERE id = 1").fetchone()
        return _varint(bytes(row[0])) if row and row[0] else 0

    def doc_freqs(self, tokens: Sequence[str]) -> dict[str, int]:
        self._prepare()
        uniq = list(dict.fromkeys(tokens))
        marks = ",".join("?" * len(uniq))
        rows = self.conn.execute(f"SELECT term, doc FROM {self._vocab} WHERE term IN ({marks})", uniq)
        got = {r[0]: int(r[1]) for r in rows}
        return {t: got.get(t, 0) for t in uniq}

    # -------------------------------------------------------------------------------------------- query
    def _ranked(self, match: str, limit: int) -> list[tuple]:
        """``(rowid, ref_type, ref_id, bm25)`` of ``match``, best first (ties by rowid)."""
        sql = f"SELECT rowid, ref_type, ref_id, {self.bm25} AS s FROM {self.table} WHERE {self.table} MATCH ?"
        return self.conn.execute(sql + " ORDER BY s, rowid LIMIT ?", (match, int(limit))).fetchall()

    def _ranked_in(self, match: str, limit: int, docs: Sequence[str]) -> list[tuple]:
        """:meth:`_ranked` restricted to the rows of the documents ``docs`` (the table's ``doc_path``
        column), with the same scores: ``bm25()`` reads its statistics from the whole table. Only the rows
        that match *and* belong to ``docs`` are scored, so a filter costs at most what the plain query does."""
        sql = (
            f"SELECT rowid, ref_type, ref_id, {self.bm25} AS s FROM {self.table} WHERE {self.table} MATCH ?"
            " AND doc_path IN (SELECT value FROM json_each(?)) ORDER BY s, rowid LIMIT ?"
        )
        return self.conn.execute(sql, (match, json.dumps(list(docs)), int(limit))).fetchall()

    def search(self, phrases: Sequence[str], limit: int, docs: Sequence[str] | None = None) -> list[tuple]:
        """``(ref_type, ref_id, bm25)`` rows (bm25 negative, best first) of ``phrases`` OR-ed, the top ``limit``.

        ``phrases`` are safe FTS5 phrase expressions (``"word"``, ``"two words"``, ``"prefix"*``). ``docs``:
        only the rows of these document paths (a source filter), searched plainly (see
        :meth:`_ranked_in`); None: every row, bounded as the module doc says.
        """
        phrases = list(dict.fromkeys(phrases))
        if not phrases or limit <= 0:
            return []
        full = " OR ".join(phrases)
        if docs is not None:
            self.last_plan = "plain (source filter)"
            return [r[1:] for r in self._ranked_in(full, limit, docs)]
        rare = self._candidate_phrases(phrases, limit)
        if rare is None:
            self.last_plan = "plain"
            return [r[1:] for r in self._ranked(full, limit)]
        rows = self._rare_rows(phrases, rare, limit)
        if len(rows) < limit:  # the rare phrases hold too few rows: every row counts
            self.last_plan = "plain"
            return [r[1:] for r in self._ranked(full, limit)]
        exact = self._proven(phrases, rare, rows, limit)
        if self._must_prove and not exact:
            self.last_plan = "plain (bounded, not proven exact)"
            return [r[1:] for r in self._ranked(full, limit)]
        self.last_plan = f"bounded ({len(rare)} of {len(phrases)} phrases chose the rows, {'exact' if exact else 'not proven exact'})"
        return [r[1:] for r in rows]

    def _proven(self, phrases: list[str], rare: list[str], rows: list[tuple], limit: int) -> bool:
        """Whether ``rows`` (the top rows holding a phrase of ``rare``) are the whole query's top ``limit``:
        the rows left out, holding only common phrases, provably score below the k-th row."""
        slack = sum((K1 + 1.0) * idf(self._n, self._df[p]) for p in phrases if p not in rare)
        return len(rows) == limit and -float(rows[-1][3]) > slack * (1.0 + _EPS)

    def _rare_rows(self, phrases: list[str], rare: list[str], limit: int) -> list[tuple]:
        """The top ``limit`` rows holding a phrase of ``rare``, scored by ``bm25()`` for every phrase (best
        first, ties by rowid), without enumerating the rows that hold only common phrases: two queries.

        * ``(rare) AND (common)``: the rows holding phrases of both kinds, each phrase in the expression
          once, so ``bm25()`` is the whole query's score (its terms summed rare phrases first: see the
          module doc on the last bits);
        * ``rare``: every rare row scored for the rare phrases only, which *is* the whole query's score of
          a row without common phrases (their terms are 0.0) and below it for the others.

        The union, each row with its score from the first query where it has one, holds the top rows: a rare
        row missing from it either scores below the second query's ``limit`` rows, whose whole scores are at
        least as good, or holds a common phrase and scores below the first query's ``limit`` rows."""
        common = [p for p in phrases if p not in rare]
        rare_or = " OR ".join(rare)
        best: dict[int, tuple] = {r[0]: r for r in self._ranked(rare_or, limit)}
        best.update((r[0], r) for r in self._ranked(f"({rare_or}) AND ({' OR '.join(common)})", limit))
        rows = sorted(best.values(), key=lambda r: (r[3], r[0]))
        # scores that tie but for those last bits keep the plain query's order of tied rows: by rowid
        out: list[tuple] = []
        i = 0
        while i < len(rows):
            j = i + 1
            while j < len(rows) and float(rows[j][3]) - float(rows[i][3]) <= _TIE * abs(float(rows[i][3])):
                j += 1
            out.extend(sorted(rows[i:j], key=lambda r: r[0]))
            i = j
        return out[:limit]

    def _candidate_phrases(self, phrases: list[str], limit: int) -> list[str] | None:
        """The rarest phrases, whose rows are the candidates (at most ``candidate_rows`` by document
        frequency), or None when the query may match few rows anyway: then every matching row is scored."""
        if len(phrases) < 2:
            return None
        self._n = self.n_rows()
        if self._n <= BOUND_FACTOR * self.candidate_rows:  # a small index: nothing worth bounding
            return None
        single: dict[str, str] = {}
        for p in phrases:
            if p.startswith('"') and p.endswith('"'):
                toks = self.tokens(p[1:-1])
                if len(toks) == 1:
                    single[p] = toks[0]
        if not single:
            return None
        dfs = self.doc_freqs(list(single.values()))
        self._df = {p: dfs[t] for p, t in single.items()}
        total = sum(self._df.values())
        if total <= self.candidate_rows:
            return None
        # a query whose phrases hold few rows is bounded only where it is proven exact (else: plain)
        self._must_prove = total <= BOUND_FACTOR * self.candidate_rows
        # phrases without a vocabulary row (multi-token, prefix: part numbers, "x3 x4") always choose rows
        rare = [p for p in phrases if p not in self._df]
        seen = 0
        for p in sorted(self._df, key=lambda p: (self._df[p], p)):
            if seen >= limit and seen + self._df[p] > self.candidate_rows:
                break
            rare.append(p)
            seen += self._df[p]
        return rare if len(rare) < len(phrases) else None
