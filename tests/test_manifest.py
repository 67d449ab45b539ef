"""Manifest (index.sqlite): round trips, crash-order semantics, FTS5 lexical search and its query sanitiser."""

from __future__ import annotations

import re
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manualrag.errors import IndexNotFoundError, ManualragError
from manualrag.manifest import (
    DB_NAME,
    SCHEMA_VERSION,
    DocRow,
    Manifest,
    ManifestSchemaError,
)
from manualrag.models import Figure, Passage, Window
from manualrag.retriever.lexical import compound_phrases, fts_query, lexical_search, query_terms

DOC = "manuals/pump.pdf"
DOC_ID = "0123456789abcdef"


def passage(
    n: int, text: str, page: int = 1, heading: str = "3 Wiring", path: str = DOC, doc_id: str = DOC_ID, **kw
) -> Passage:
    return Passage(
        f"{doc_id}:p{page}:{n}", path, page, (10.0, 20.0 + n, 300.0, 40.0 + n), heading, text, **kw
    )


def figure(digest: str, **kw) -> Figure:
    base = dict(
        digest=digest,
        kind="vector",
        pages=[2],
        bbox=(50.0, 60.0, 400.0, 500.0),
        width=730,
        height=915,
        dpi=150.0,
        caption="",
        nearby_text="",
        labels=[],
        ocr_text="",
        heading="",
        crop_path=f"crops/{digest}.png",
    )
    base.update(kw)
    return Figure(**base)


def fid(fig: Figure) -> str:
    return f"{DOC_ID}:f:{fig.digest[:16]}"


def doc_row(path: str = DOC, **kw) -> DocRow:
    base = dict(
        path=path,
        doc_id=DOC_ID,
        digest="d" * 64,
        size=1234,
        mtime=1.7e9,
        config_fp="cfg0",
        file_type="pdf",
        n_pages=12,
        title="Pump manual",
        warnings=["repaired: broken xref"],
        clip_model="clip-a",
        text_model="minilm",
    )
    base.update(kw)
    return DocRow(**base)


def sample_rows():
    ps = [
        passage(0, "Connect the supply cable to the terminal block before switching the pump on."),
        passage(
            1,
            "The connector X3 carries the sensor signal; see the wiring diagram. Tighten to 0.2 Nm.",
            heading="3 Wiring > 3.2 Sensors",
        ),
        passage(2, "Hidden text for search engines", suspect="white"),
        passage(0, "Scanned maintenance table", page=5, heading="", ocr=True),
    ]
    ws = [
        (Window(f"{ps[0].passage_id}:w0", ps[0].passage_id, ps[0].text, 18), "clip"),
        (Window(f"{ps[1].passage_id}:w0", ps[1].passage_id, ps[1].text[:40], 12), "clip"),
        (Window(f"{ps[1].passage_id}:w1", ps[1].passage_id, ps[1].text[40:], 10), "clip"),
        (Window(f"{ps[1].passage_id}:s0", ps[1].passage_id, ps[1].text, 25), "sem"),
    ]
    f1 = figure(
        "a" * 64,
        pages=[2, 7],
        caption="Figure 3: Sensor wiring",
        labels=["X1", "X2", "X3", "GND"],
        ocr_text="X3 24V",
        nearby_text="The sensor plugs into the controller.",
        heading="3 Wiring",
    )
    f2 = figure(
        "b" * 64,
        kind="symbol",
        pages=[2],
        width=40,
        height=40,
        dpi=96.0,
        nearby_text="WARNING hot surface",
        quality="tiny",
    )
    f3 = figure(
        "c" * 64, kind="raster", pages=[1, 2, 3, 4], boilerplate=True, labels=["ACME"], crop_path=None
    )
    figs = [(fid(f), f) for f in (f1, f2, f3)]
    return ps, ws, figs


def index_doc(m: Manifest, path: str = DOC, rows=None) -> tuple:
    ps, ws, figs = rows or sample_rows()
    m.begin_document(path)
    m.replace_rows(path, ps, ws, figs)
    m.commit_document(doc_row(path))
    return ps, ws, figs


@pytest.fixture
def manifest(tmp_path):
    m = Manifest.open(tmp_path / "index")
    yield m
    m.close()


# ------------------------------------------------------------------------------------------- round trips
def test_round_trip(manifest, tmp_path):
    ps, ws, figs = index_doc(manifest)
    manifest.set_meta("config", {"model": "clip-a", "list": [1, 2]})
    manifest.close()

    with Manifest.open(tmp_path / "index", readonly=True) as m:
        docs = m.documents()
        assert list(docs) == [DOC]
        d = docs[DOC]
        expected = doc_row()
        expected.indexed_at, expected.state = d.indexed_at, "ok"
        assert d == expected and re.match(r"\d{4}-\d\d-\d\dT", d.indexed_at)
        assert m.document(DOC) == d and m.document("nope") is None
        assert m.get_meta("config") == {"model": "clip-a", "list": [1, 2]}
        assert m.schema_version() == SCHEMA_VERSION and m.get_meta("absent", 7) == 7

        got = m.passages([p.passage_id for p in ps] + ["missing"])
        assert got == {p.passage_id: p for p in ps}

        wins = m.windows([w.window_id for w, _ in ws])
        for w, ch in ws:
            row = wins[w.window_id]
            assert (row.passage_id, row.doc_path, row.channel, row.text, row.n_tokens) == (
                w.passage_id,
                DOC,
                ch,
                w.text,
                w.n_tokens,
            )

        frows = m.figures([i for i, _ in figs])
        for i, f in figs:
            assert frows[i].figure_id == frows[i].id == i and frows[i].doc_path == DOC
            assert frows[i].to_figure() == f
        assert frows[figs[0][0]].page == 2

        assert [r.figure_id for r in m.figures_on_page(DOC, 7)] == [figs[0][0]]
        assert sorted(r.figure_id for r in m.figures_on_page(DOC, 2)) == sorted(i for i, _ in figs)
        assert m.figures_on_page(DOC, 9) == [] and m.figures_on_page("other.pdf", 2) == []
        assert [r.figure_id for r in m.figures_of_doc(DOC)] == sorted(i for i, _ in figs)
        assert m.crop_paths() == {f"crops/{'a' * 64}.png", f"crops/{'b' * 64}.png"}

        s = m.stats()
        assert s == {
            "documents": 1,
            "pages": 12,
            "passages": 4,
            "suspect_passages": 1,
            "ocr_passages": 1,
            "windows": {"clip": 3, "sem": 1},
            "figures": {"symbol": 1, "vector": 1},
            "boilerplate": 1,
            "errors": 0,
            "lexical_rows": 6,  # 4 passages + 2 figures (boilerplate has no lexical row)
        }
        with pytest.raises(ManualragError, match="read-only"):
            m.begin_document(DOC)


def test_models_errors_and_remove(manifest):
    ps, ws, figs = index_doc(manifest)
    other = passage(0, "other connector", path="other.pdf", doc_id="fedcba9876543210")
    index_doc(manifest, "other.pdf", ([other], [], []))
    manifest.commit_document(doc_row(clip_model="siglip-b", text_model=None))  # a re-commit replaces the row
    d = manifest.documents()[DOC]
    assert (d.clip_model, d.text_model) == ("siglip-b", None)

    manifest.record_error("broken.pdf", "cannot open:\n  bad xref", "extract")
    manifest.record_error(DOC, "ocr timed out", "ocr")
    errs = manifest.errors()
    assert errs["broken.pdf"].reason == "cannot open: bad xref" and errs["broken.pdf"].stage == "extract"
    manifest.clear_error("broken.pdf")
    assert list(manifest.errors()) == [DOC]

    manifest.remove_document(DOC)
    assert list(manifest.documents()) == ["other.pdf"]
    assert manifest.errors() == {}
    assert manifest.passages([p.passage_id for p in ps]) == {}
    assert manifest.figures_of_doc(DOC) == []
    assert manifest.vector_ids(DOC) == {"text": [], "sem": [], "image": [], "image_text": []}
    assert [r[1] for r in lexical_search(manifest, "connector", 10)] == [other.passage_id]
    assert manifest.paths_with_rows() == {"other.pdf"}
    assert manifest.stats()["lexical_rows"] == 1


def test_replace_rows_replaces_everything_of_the_document(manifest):
    index_doc(manifest)
    new = [passage(0, "Replacement impeller assembly")]
    manifest.begin_document(DOC)
    manifest.replace_rows(
        DOC, new, [(Window(f"{new[0].passage_id}:w0", new[0].passage_id, "x", 1), "clip")], []
    )
    assert lexical_search(manifest, "X3", 10) == []
    assert lexical_search(manifest, "sensor", 10) == []
    assert [r[1] for r in lexical_search(manifest, "impeller", 10)] == [new[0].passage_id]
    assert manifest.figures_of_doc(DOC) == []
    assert manifest.vector_ids(DOC) == {
        "text": [f"{new[0].passage_id}:w0"],
        "sem": [],
        "image": [],
        "image_text": [],
    }


def test_replace_rows_is_one_transaction(manifest):
    ps, ws, figs = index_doc(manifest)
    dup = [passage(0, "a"), passage(0, "b")]  # same id twice: the insert fails
    with pytest.raises(sqlite3.IntegrityError):
        manifest.replace_rows(DOC, dup, [], [])
    assert manifest.passages([p.passage_id for p in ps]) == {p.passage_id: p for p in ps}  # rolled back
    assert lexical_search(manifest, "X3", 5)
    with pytest.raises(ValueError, match="belongs to"):
        manifest.replace_rows("elsewhere.pdf", ps, [], [])
    with pytest.raises(ValueError, match="channel"):
        manifest.replace_rows(DOC, ps, [(ws[0][0], "image")], [])


# ------------------------------------------------------------------------------------- crash semantics
def test_crash_order_uncommitted_document_is_absent(manifest, tmp_path):
    index_doc(manifest)
    assert DOC in manifest.documents()
    manifest.begin_document(DOC)  # a re-index starts ...
    ps, ws, figs = sample_rows()
    manifest.replace_rows(DOC, ps[:1], ws[:1], [])  # ... rows written, then the process dies (no commit)
    manifest.close()
    with Manifest.open(tmp_path / "index") as m:
        assert DOC not in m.documents()  # -> the next run redoes it
        assert DOC in m.paths_with_rows()
        assert m.vector_ids(DOC)["text"] == [ws[0][0].window_id]  # and can delete what the store may hold
        m.begin_document("new.pdf")  # a first index that dies before its commit
        assert "new.pdf" not in m.documents()


def test_vector_ids_cover_all_rows(manifest):
    ps, ws, figs = index_doc(manifest)
    ids = manifest.vector_ids(DOC)
    assert ids["text"] == sorted(w.window_id for w, ch in ws if ch == "clip")
    assert ids["image"] == sorted(i for i, _ in figs)  # boilerplate included: it has an image vector
    assert ids["image_text"] == sorted(f"{i}:t" for i, _ in figs)
    assert sorted(ids["sem"]) == sorted(
        [w.window_id for w, ch in ws if ch == "sem"] + [f"{i}:{t}" for i, _ in figs for t in ("s", "c")]
    )
    assert manifest.vector_ids("unknown.pdf") == {"text": [], "sem": [], "image": [], "image_text": []}
    every = manifest.all_vector_ids()
    assert {k: sorted(v) for k, v in every.items()} == {k: sorted(v) for k, v in ids.items()}


# ------------------------------------------------------------------------------------------ open modes
def test_readonly_open_of_a_missing_index(tmp_path):
    with pytest.raises(IndexNotFoundError) as ei:
        Manifest.open(tmp_path / "nowhere", readonly=True)
    assert str(tmp_path / "nowhere") in str(ei.value) and "manualrag index" in str(ei.value)
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "junk").mkdir()
    sqlite3.connect(tmp_path / "junk" / DB_NAME).close()  # an empty sqlite file
    with pytest.raises(IndexNotFoundError, match="not a manualrag index"):
        Manifest.open(tmp_path / "junk", readonly=True)


def test_an_index_of_a_newer_schema_is_refused(manifest, tmp_path):
    manifest.set_meta("schema_version", 99)
    manifest.close()
    with pytest.raises(
        ManifestSchemaError, match="schema 99, newer than this manualrag's.*upgrade manualrag"
    ):
        Manifest.open(tmp_path / "index")


def test_reader_queries_while_a_writer_writes(manifest, tmp_path):
    index_doc(manifest)
    reader = Manifest.open(tmp_path / "index", readonly=True)
    try:
        assert reader.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        with manifest._tx() as c:  # a writer in the middle of a transaction
            c.execute("DELETE FROM documents")
            assert list(reader.documents()) == [DOC]  # not blocked, sees the last commit
            assert lexical_search(reader, "X3", 3)
        assert reader.documents() == {}  # and the new state once committed
        index_doc(manifest, "b.pdf", ([passage(0, "bee", path="b.pdf", doc_id="b" * 16)], [], []))
        assert list(reader.documents()) == ["b.pdf"]
    finally:
        reader.close()


# ---------------------------------------------------------------------------------------------- lexical
def test_lexical_ranks_the_figure_labelled_x3_first(manifest):
    ps, ws, figs = index_doc(manifest)
    hits = lexical_search(manifest, "X3", 10)
    assert hits[0][:2] == ("figure", figs[0][0])
    assert ("passage", ps[1].passage_id) in [h[:2] for h in hits]
    assert all(s > 0 for *_, s in hits)
    assert [s for *_, s in hits] == sorted((s for *_, s in hits), reverse=True)
    assert lexical_search(manifest, "x3", 1) == hits[:1]  # case-insensitive, limit honoured


def test_porter_stemming(manifest):
    ps, *_ = index_doc(
        manifest, rows=([passage(0, "Each connector is keyed."), passage(1, "Unrelated text")], [], [])
    )
    assert [h[1] for h in lexical_search(manifest, "connectors", 10)] == [ps[0].passage_id]
    assert [h[1] for h in lexical_search(manifest, "keying", 10)] == [ps[0].passage_id]


def test_words_written_joined_or_apart_find_each_other(manifest):
    ps, *_ = index_doc(
        manifest,
        rows=(
            [
                passage(0, "Mount the file system read-only before the check."),
                passage(1, "Flash the bootloader over USB."),
                passage(
                    2, "A system log and a file list; the system is up."
                ),  # the words, never side by side
                passage(3, "The transmit path is disabled."),
            ],
            [],
            [],
        ),
    )
    first = lambda q: [h[1] for h in lexical_search(manifest, q, 10)][:1]  # noqa: E731
    assert first("filesystem") == [ps[0].passage_id]  # split: "file system" stands in passage 0
    assert first("boot loader") == [ps[1].passage_id]  # joined: the index holds "bootloader"
    assert compound_phrases("filesystem check", manifest) == ['"file system"']
    assert compound_phrases("boot loader", manifest) == ['"bootloader"']
    # "systemfile": both parts are words of the index, but never side by side: no phrase, no hit
    assert compound_phrases("systemfile", manifest) == []
    assert lexical_search(manifest, "systemfile", 10) == []
    # parts shorter than 4 letters or stopwords are never split off ("transmit" is not "trans mit")
    assert compound_phrases("transmit", manifest) == []


def test_ocr_text_and_caption_and_nearby_text_are_searchable(manifest):
    ps, ws, figs = index_doc(manifest)
    assert lexical_search(manifest, "24V", 5)[0][:2] == ("figure", figs[0][0])  # OCR text
    assert lexical_search(manifest, "hot surface", 5)[0][:2] == ("figure", figs[1][0])  # nearby text
    assert lexical_search(manifest, "ACME", 5) == []  # boilerplate: no lexical row
    assert ("passage", ps[2].passage_id) in [h[:2] for h in lexical_search(manifest, "search engines", 5)]


def test_phrases_for_joined_tokens(manifest):
    ps, *_ = index_doc(manifest)
    assert query_terms("0.2 Nm") == ["0 2", "nm"]
    assert lexical_search(manifest, "0.2", 5)[0][1] == ps[1].passage_id
    assert query_terms("X3/X4") == ["x3 x4", "x3", "x4"]
    assert query_terms("74HC125 self-test") == ["74hc125", "self test", "self", "test"]
    # a query pasted from a PDF viewer keeps the ligature glyphs that extraction reads as letters
    assert query_terms("time of \ufb02ight, e\ufb00ect") == ["time", "flight", "effect"]
    assert (
        lexical_search(manifest, "hot sur\ufb00ace", 5)[0][:2]
        == lexical_search(manifest, "hot surface", 5)[0][:2]
    )


@pytest.mark.parametrize(
    "query",
    [
        '"X3',
        'X3"',
        "X3 -X1",
        "-X3",
        "X3*",
        "caption:X3",
        "labels : X3",
        "X3 NEAR X1",
        "NEAR(X3 X1)",
        "X3 AND",
        "OR X3",
        "NOT X3",
        "(X3",
        "X3)",
        "^X3",
        "{caption} X3",
        "X3 + X1",
        "'X3'",
        "X3;--",
        'X3 "" ""',
    ],
)
def test_fts_syntax_in_queries_is_neutralised(manifest, query):
    ps, ws, figs = index_doc(manifest)
    hits = lexical_search(manifest, query, 10)
    assert ("figure", figs[0][0]) in [h[:2] for h in hits]
    assert re.fullmatch(r'"[^"]+"\*?( OR "[^"]+"\*?)*', fts_query(query))


def test_stopwords_and_empty_queries(manifest):
    index_doc(manifest)
    assert query_terms("how do I wire the X3 connector") == ["wire", "x3", "connector"]
    assert query_terms("the") == ["the"]  # nothing else left: keep it rather than search nothing
    assert query_terms("ON/OFF switch") == ["on off", "on", "off", "switch"]
    for q in ("", "   ", "!!! -- ***", '""', "_"):
        assert fts_query(q) == "" and lexical_search(manifest, q, 10) == []
    assert lexical_search(manifest, "X3", 0) == []
    assert len(query_terms(" ".join(f"w{i}" for i in range(100)))) == 32


def test_part_numbers_match_as_prefixes(manifest):
    """People type a part family ("DAC0800", "74HC"), manuals print the full designation ("DAC0800LCN",
    "74HC4040"): letter+digit tokens of 4+ characters also match as prefixes; words and short codes don't."""
    fid = "d" * 64
    figs = [
        (
            f"{DOC_ID}:f:{fid[:16]}",
            figure(fid, caption="Figure 3: symbol sheet", labels=["DAC0800LCN", "74HC4040", "M30"]),
        )
    ]
    ps = [passage(0, "Mount the converter board with M3 screws."), passage(1, "The display shows segments.")]
    index_doc(manifest, rows=(ps, [], figs))
    assert fts_query("DAC0800 converter") == '"dac0800"* OR "converter"'
    assert fts_query("m3 seg") == '"m3" OR "seg"'  # short code and plain word: exact terms only
    for q in ("DAC0800", "74HC", "dac0800lcn"):
        assert [h[:2] for h in lexical_search(manifest, q, 5)] == [("figure", figs[0][0])], q
    assert lexical_search(manifest, "seg", 5) == []  # no prefix matching for words
    assert [h[1] for h in lexical_search(manifest, "M3", 5)] == [ps[0].passage_id]  # not M30


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    m = Manifest.open(tmp_path_factory.mktemp("fuzz") / "index")
    index_doc(m)
    yield m
    m.close()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_is_a_valid_query(filled, text):
    q = fts_query(text)
    assert q == "" or re.fullmatch(r'"[^"]+"\*?( OR "[^"]+"\*?)*', q)
    hits = lexical_search(filled, text, 5)
    assert isinstance(hits, list) and len(hits) <= 5


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40), st.sampled_from(["clip", "sem"]))
def test_any_text_round_trips(tmp_path_factory, text, channel):
    m = Manifest.open(tmp_path_factory.mktemp("rt") / "index")
    try:
        p = passage(0, text, heading=text)
        f = figure("e" * 64, labels=[text, "X9"], ocr_text=text, caption=text)
        m.replace_rows(
            DOC, [p], [(Window(p.passage_id + ":w0", p.passage_id, text, 3), channel)], [(fid(f), f)]
        )
        assert m.passages([p.passage_id])[p.passage_id] == p
        assert m.figures([fid(f)])[fid(f)].to_figure() == f
        lexical_search(m, text, 3)
    finally:
        m.close()


def test_constructor_takes_the_db_file_or_the_folder(tmp_path):
    db = tmp_path / "idx" / DB_NAME
    with Manifest(db) as m:  # the writer creates folder and file
        index_doc(m, rows=([passage(0, "pump")], [], []))
        m.touch_document(DOC, 999, 2.5e9)
        m.commit_document(doc_row("epoch.pdf", indexed_at=1.7e9))  # epoch seconds become ISO time
    with Manifest(db, readonly=True) as r, Manifest(tmp_path / "idx", readonly=True) as r2:
        d = r.documents()
        assert (d[DOC].size, d[DOC].mtime) == (999, 2.5e9)
        assert d["epoch.pdf"].indexed_at == "2023-11-14T22:13:20+00:00"
        assert r2.documents() == d
    with pytest.raises(IndexNotFoundError, match="manualrag index"):
        Manifest(tmp_path / "none" / DB_NAME, readonly=True)


def test_captions_on_pages_reads_only_the_pages_asked_for(manifest):
    """(figure id, doc, page, caption) of the captioned, non-boilerplate figures shown on the (doc, page)
    pairs: any page of a figure spanning several, other documents' same pages left out, over more pairs than
    one statement takes (200)."""
    index_doc(manifest)  # DOC: f1 "Figure 3" on pages 2 and 7, f2 uncaptioned, f3 boilerplate on 1-4
    other, other_id = "other.pdf", "fedcba9876543210"
    g = figure("e" * 64, pages=[7], caption="Figure 9: Pump curve")
    gid = f"{other_id}:f:{g.digest[:16]}"
    manifest.begin_document(other)
    manifest.replace_rows(other, [passage(0, "pump curve", path=other, doc_id=other_id)], [], [(gid, g)])
    manifest.commit_document(doc_row(other, doc_id=other_id))
    f1 = f"{DOC_ID}:f:{'a' * 16}"
    assert manifest.captions_on_pages([(DOC, 7)]) == [(f1, DOC, 7, "Figure 3: Sensor wiring")]
    assert manifest.captions_on_pages([(DOC, 2), (DOC, 2)]) == [(f1, DOC, 2, "Figure 3: Sensor wiring")]
    assert manifest.captions_on_pages([(DOC, 1), (DOC, 3), (other, 2), ("missing.pdf", 7)]) == []
    many = [(f"doc{i}.pdf", i) for i in range(450)] + [(other, 7), (DOC, 7)]
    assert sorted(manifest.captions_on_pages(many)) == sorted(
        [(f1, DOC, 7, "Figure 3: Sensor wiring"), (gid, other, 7, "Figure 9: Pump curve")]
    )


def test_figure_places_are_the_document_and_first_page_of_each_figure(manifest):
    """What page support reads for every candidate figure: the same (doc, first page) as the whole rows say,
    unknown ids left out, over more ids than one statement takes."""
    index_doc(manifest)
    rows = manifest.figures_of_doc(DOC)
    ids = [r.id for r in rows]
    places = manifest.figure_places(ids + ["missing:f:0000000000000000"] + [f"x{i}" for i in range(450)])
    assert places == {r.id: (r.doc_path, r.page) for r in rows}
    assert places[f"{DOC_ID}:f:{'a' * 16}"] == (DOC, 2)  # f1 spans pages 2 and 7


def test_a_damaged_page_that_reads_as_broken_text_is_a_corrupt_index(tmp_path):
    """Damage that leaves SQLite a readable page but puts a byte that is not UTF-8 into text (here the
    schema's own SQL): reading it raised a raw UnicodeDecodeError out of the manifest (found by the fuzzer);
    it is the damaged-index error with its ways out, as SQLite's own corruption errors are."""
    from manualrag.errors import IndexCorruptError

    db = tmp_path / "idx" / DB_NAME
    with Manifest(db):
        pass
    data = bytearray(db.read_bytes())
    at = data.index(b"CREATE TABLE meta")
    data[at + 7] = 0x95  # "CREATE \x95ABLE meta": same length, not UTF-8
    db.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match="is damaged .*manualrag check --repair"):
        with Manifest(db, readonly=True) as m:
            m.documents()
