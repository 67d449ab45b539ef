"""Bounded BM25 top-k over FTS5 (manualrag.fts_topk): the rows it returns carry FTS5's own bm25 scores for
the whole query, it equals the plain ORDER BY query whenever it says so, and it works on a read-only index."""

from __future__ import annotations

import random
import sqlite3

import pytest

from manualrag.manifest import W_BODY, W_CAPTION, W_LABELS, DocRow, Manifest
from manualrag.models import Passage
from manualrag.retriever.lexical import fts_phrases

COMMON = ["valve", "pump", "motor", "cable", "switch", "power", "using", "design"]
RARE = [f"rare{i}" for i in range(40)] + ["relief", "impeller", "gasket", "thermistor"]
PLAIN = (
    f"SELECT ref_type, ref_id, bm25(lexical, 0, 0, 0, 0, {W_CAPTION}, {W_LABELS}, {W_BODY}) AS s"
    " FROM lexical WHERE lexical MATCH ? ORDER BY s, rowid LIMIT ?"
)
QUERIES = [
    "relief valve pump",
    "impeller gasket motor cable power",
    "thermistor using design switch",
    "rare3 rare7 valve pump motor",
    "rare1 rare2 rare3 rare4 power cable using design switch motor",
    "the pump",
    "valve motor",  # only common words
    "X3 rare5 cable",
    "nothing-like-this cable",
]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """400 passages: common words in most of them, rare words in a few, lengths varying."""
    path = tmp_path_factory.mktemp("topk") / "index.sqlite"
    rng = random.Random(3)
    doc = "manuals/synthetic.pdf"
    ps = []
    for n in range(400):
        words = [w for w in COMMON if rng.random() < 0.5] + [w for w in RARE if rng.random() < 0.03]
        words += rng.choices(["the", "and", "unit", "check", "before", "after"], k=rng.randint(2, 40))
        rng.shuffle(words)
        heading = rng.choice(["Wiring", "Pump maintenance", "Safety", "Relief valve"])
        ps.append(
            Passage(f"d:p1:{n}", doc, 1 + n // 20, (0.0, 0.0, 1.0, 1.0), heading, " ".join(words) + " X3")
        )
    with Manifest(path) as m:
        m.begin_document(doc)
        m.replace_rows(doc, ps, [], [])
        m.commit_document(
            DocRow(
                path=doc, doc_id="d", digest="d" * 64, size=1, mtime=0.0, config_fp="c", file_type="pdf",
                n_pages=20, title="t", clip_model=None, text_model=None,
            )
        )  # fmt: skip
    with Manifest(path, readonly=True) as m:
        yield m


def plain(m: Manifest, phrases: list[str], limit: int) -> list[tuple[str, str, float]]:
    rows = m._query(PLAIN, (" OR ".join(phrases), limit))
    return [(r[0], r[1], -float(r[2])) for r in rows]


def test_tokens_and_row_count_are_those_of_the_index(index):
    index.match_lexical_phrases(['"pump"'], 1)  # makes the helper
    tk = index._topk
    assert tk.tokens("Connections relational happy X3/X4") == ["connect", "relat", "happi", "x3", "x4"]
    assert tk.n_rows() == 400
    assert tk.doc_freqs(["x3", "nosuchterm"]) == {"x3": 400, "nosuchterm": 0}


@pytest.mark.parametrize("query", QUERIES)
def test_bounded_top_k_scores_are_fts5_scores_and_exact_when_proven(index, query):
    phrases = fts_phrases(query)
    every = {(t, i): s for t, i, s in plain(index, phrases, 10_000)}
    index.match_lexical_phrases(phrases, 1)
    tk = index._topk
    tk.candidate_rows = 60  # small enough for the bound to choose rows in a 400-row index
    try:
        got = index.match_lexical_phrases(phrases, 10)
        plan = tk.last_plan
    finally:
        tk.candidate_rows = 10**9
    want = plain(index, phrases, 10)
    assert len(got) == len(want)
    for t, i, s in got:  # each row's score is the plain query's score of that row
        assert s == pytest.approx(every[(t, i)], rel=1e-12)
    assert [s for *_, s in got] == sorted((s for *_, s in got), reverse=True)
    if plan == "plain" or plan.endswith(", exact)"):
        assert got == want, plan
    # with the default bound (larger than this index) it is the plain query itself
    assert index.match_lexical_phrases(phrases, 10) == want


def test_rows_restricted_to_documents_keep_the_plain_query_scores(index):
    """A source filter (``docs``) searches only those documents' rows, scored as the whole query scores
    them; a document without rows gives none."""
    phrases = fts_phrases("relief valve pump")
    want = plain(index, phrases, 7)
    assert index.match_lexical_phrases(phrases, 7, docs=["manuals/synthetic.pdf", "other.pdf"]) == want
    assert index._topk.last_plan == "plain (source filter)"
    assert index.match_lexical_phrases(phrases, 7, docs=["other.pdf"]) == []


def test_the_bound_chooses_rows_for_a_query_with_common_words(index):
    """The test above must exercise both paths: some queries bounded and proven exact."""
    tk = index._topk or index.match_lexical_phrases(['"pump"'], 1) or index._topk
    tk.candidate_rows = 60
    plans = []
    try:
        for q in QUERIES:
            index.match_lexical_phrases(fts_phrases(q), 10)
            plans.append(tk.last_plan)
    finally:
        tk.candidate_rows = 10**9
    assert any(p.endswith(", exact)") for p in plans), plans
    assert "plain" in plans, plans


def test_a_read_only_index_stays_read_only(index):
    index.match_lexical_phrases(fts_phrases("relief valve pump"), 5)
    assert index.conn.execute("PRAGMA query_only").fetchone()[0] == 1
    with pytest.raises(sqlite3.OperationalError):
        index.conn.execute("DELETE FROM lexical_rows")


@pytest.mark.parametrize("query", [q for q in QUERIES if len(fts_phrases(q)) >= 2])
@pytest.mark.parametrize("n_rare", [1, 2, 3])
def test_rare_rows_are_the_top_rows_holding_a_rare_phrase(index, query, n_rare):
    """The two-query scoring of the candidates (rare phrases alone, then rare AND common) gives what the
    plain query gives restricted to the rows holding a rare phrase: the same rows in the same order, each
    with its plain score (to the last bits: bm25 sums the phrases in another order, and rows tied in the
    plain query stay in its rowid order), for any choice of rare phrases and limits below and above the
    number of such rows."""
    phrases = list(dict.fromkeys(fts_phrases(query)))
    rare = phrases[-n_rare:] if n_rare < len(phrases) else phrases[-1:]
    index.match_lexical_phrases(phrases, 1)  # makes the helper
    tk = index._topk
    holding = {r[0] for r in index.conn.execute(
        "SELECT rowid FROM lexical WHERE lexical MATCH ?", (" OR ".join(rare),)
    )}  # fmt: skip
    every = index.conn.execute(
        f"SELECT rowid, ref_type, ref_id, {tk.bm25} AS s FROM lexical WHERE lexical MATCH ?"
        " ORDER BY s, rowid",
        (" OR ".join(phrases),),
    ).fetchall()
    for limit in (1, 5, 10, len(holding) + 3):
        want = [tuple(r) for r in every if r[0] in holding][:limit]
        got = tk._rare_rows(phrases, rare, limit)
        assert [r[:3] for r in got] == [r[:3] for r in want]
        assert [r[3] for r in got] == pytest.approx([r[3] for r in want], rel=1e-12)
