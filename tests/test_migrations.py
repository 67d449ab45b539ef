"""Schema migrations: an index written by the previous release opens, answers queries and upgrades in place.

The DDL below is the previous release's, verbatim (commit 67e0280, indexer/manifest.py, schema 1); it is
written with raw sqlite3, as that release did, never through the code under test.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from manualrag import manifest as manifest_mod
from manualrag import migrations
from manualrag.config import load_config
from manualrag.manifest import Manifest, ManifestSchemaError
from manualrag.retriever.lexical import lexical_search
from manualrag.retriever.search import Retriever

V1_PENDING = """CREATE TABLE IF NOT EXISTS pending_deletes (
    kind TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (kind, id)
) WITHOUT ROWID"""

V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    path TEXT PRIMARY KEY,
    doc_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    config_fp TEXT NOT NULL,
    file_type TEXT NOT NULL,
    n_pages INTEGER NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    warnings TEXT NOT NULL DEFAULT '[]',
    clip_model TEXT,
    text_model TEXT,
    indexed_at TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'ok'
);
CREATE TABLE IF NOT EXISTS passages (
    id TEXT PRIMARY KEY,
    doc_path TEXT NOT NULL,
    page INTEGER NOT NULL,
    bbox TEXT NOT NULL,
    heading TEXT NOT NULL DEFAULT '',
    text TEXT NOT NULL,
    suspect TEXT,
    ocr INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS passages_doc ON passages(doc_path);
CREATE TABLE IF NOT EXISTS windows (
    id TEXT PRIMARY KEY,
    passage_id TEXT NOT NULL,
    doc_path TEXT NOT NULL,
    channel TEXT NOT NULL CHECK (channel IN ('clip', 'sem')),
    text TEXT NOT NULL,
    n_tokens INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS windows_doc ON windows(doc_path);
CREATE INDEX IF NOT EXISTS windows_passage ON windows(passage_id);
CREATE TABLE IF NOT EXISTS figures (
    id TEXT PRIMARY KEY,
    doc_path TEXT NOT NULL,
    digest TEXT NOT NULL,
    kind TEXT NOT NULL,
    pages TEXT NOT NULL,
    bbox TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    dpi REAL NOT NULL,
    caption TEXT NOT NULL DEFAULT '',
    nearby_text TEXT NOT NULL DEFAULT '',
    labels TEXT NOT NULL DEFAULT '[]',
    ocr_text TEXT NOT NULL DEFAULT '',
    heading TEXT NOT NULL DEFAULT '',
    quality TEXT NOT NULL DEFAULT 'ok',
    crop_path TEXT,
    boilerplate INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS figures_doc ON figures(doc_path);
CREATE TABLE IF NOT EXISTS errors (path TEXT PRIMARY KEY, reason TEXT NOT NULL, stage TEXT NOT NULL, at TEXT NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS lexical USING fts5(
    ref_id UNINDEXED, ref_type UNINDEXED, doc_path UNINDEXED, page UNINDEXED,
    caption, labels, body,
    tokenize = 'porter unicode61'
);
-- which document owns each lexical row (FTS5 cannot index doc_path: deletes go by rowid)
CREATE TABLE IF NOT EXISTS lexical_rows (rowid INTEGER PRIMARY KEY, doc_path TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS lexical_rows_doc ON lexical_rows(doc_path);
"""

DOC = "pump.pdf"
PID = "0123456789abcdef:p2:0"
FID = "0123456789abcdef:f:" + "ab" * 8


def write_v1_index(index_dir: Path, with_pending: bool) -> None:
    """An index as the previous release left it (lexical only: no vectors)."""
    index_dir.mkdir(parents=True)
    db = sqlite3.connect(index_dir / "index.sqlite")
    db.executescript(V1_SCHEMA + (V1_PENDING + ";" if with_pending else ""))
    db.execute("INSERT INTO meta VALUES ('schema', '1')")
    db.execute("INSERT INTO meta VALUES ('library', ?)", (json.dumps(str(index_dir.parent / "lib")),))
    db.execute(
        "INSERT INTO documents(path, doc_id, digest, size, mtime, config_fp, file_type, n_pages, indexed_at)"
        " VALUES (?, '0123456789abcdef', 'd1', 10, 1.5, 'fp', 'pdf', 3, '2026-11-20T10:00:00+00:00')",
        (DOC,),
    )
    db.execute(
        "INSERT INTO passages(id, doc_path, page, bbox, heading, text, suspect, ocr) VALUES (?,?,?,?,?,?,?,?)",
        (PID, DOC, 2, "[10, 20, 300, 60]", "4 Safety", "The relief valve opens at 6 bar.", None, 0),
    )
    db.execute(
        "INSERT INTO figures(id, doc_path, digest, kind, pages, bbox, width, height, dpi, caption, nearby_text,"
        " labels, ocr_text, heading, quality, crop_path, boilerplate) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (FID, DOC, "ab" * 32, "vector", "[3]", "[0, 0, 200, 100]", 400, 200, 144.0,
         "Figure 1: impeller wiring", "", '["L1", "N"]', "PE", "5 Wiring", "ok", None, 0),
    )  # fmt: skip
    rows = [
        (1, PID, "passage", DOC, 2, "4 Safety", "", "The relief valve opens at 6 bar."),
        (2, FID, "figure", DOC, 3, "Figure 1: impeller wiring", "L1 N\nPE", "5 Wiring"),
    ]
    db.executemany("INSERT INTO lexical_rows(rowid, doc_path) VALUES (?, ?)", [(r[0], DOC) for r in rows])
    db.executemany(
        "INSERT INTO lexical(rowid, ref_id, ref_type, doc_path, page, caption, labels, body) VALUES (?,?,?,?,?,?,?,?)",
        rows,
    )
    db.commit()
    db.close()


def _answers(m: Manifest) -> tuple:
    passage = m.passages([PID])[PID]
    figure = m.figures([FID])[FID]
    return (
        [(t, i) for t, i, _ in lexical_search(m, "relief valve", 5)],
        [(t, i) for t, i, _ in lexical_search(m, "impeller wiring", 5)],
        (passage.page, passage.bbox, passage.text, passage.heading),
        (figure.pages, figure.labels, figure.bbox, figure.boilerplate, figure.quality),
        list(m.documents()),
    )


@pytest.mark.parametrize("with_pending", [False, True], ids=["v1", "v1+pending_deletes"])
def test_an_index_of_the_previous_release_is_read_then_upgraded_in_place(tmp_path, with_pending):
    idx = tmp_path / "idx"
    write_v1_index(idx, with_pending)
    with Manifest.open(idx, readonly=True) as m:  # a reader reads it as it is and writes nothing
        assert m.schema_version() == 1
        before = _answers(m)
    assert before[0] == [("passage", PID)] and before[1] == [("figure", FID)]
    assert before[3] == ([3], ["L1", "N"], (0.0, 0.0, 200.0, 100.0), False, "ok")

    with Manifest.open(idx) as m:  # the next writer upgrades it
        assert m.schema_version() == migrations.LATEST
        assert m.pending_deletes() == {}
        assert _answers(m) == before
    db = sqlite3.connect(idx / "index.sqlite")
    meta = dict(db.execute("SELECT key, value FROM meta"))
    db.close()
    assert json.loads(meta["schema_version"]) == json.loads(meta["schema"]) == migrations.LATEST


def test_a_query_on_a_previous_release_index_works_without_reset(tmp_path):
    idx = tmp_path / "idx"
    write_v1_index(idx, with_pending=False)
    cfg = load_config(None, overrides={"index_dir": str(idx)})
    with Retriever.open(idx, cfg) as r:
        res = r.search("relief valve 6 bar", channels=["lexical"], k=3)
    assert [(h.kind, h.id, h.page) for h in res.hits][:1] == [("text", PID, 2)]
    assert res.hits[0].text == "The relief valve opens at 6 bar."


def test_a_failing_migration_leaves_the_index_at_its_old_version(tmp_path, monkeypatch):
    idx = tmp_path / "idx"
    write_v1_index(idx, with_pending=False)
    nxt = migrations.LATEST + 1
    broken = migrations.Migration(nxt, "test", ("CREATE TABLE half_done (x)", "ALTER TABLE nowhere ADD y"))
    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, broken))
    monkeypatch.setattr(manifest_mod, "SCHEMA_VERSION", nxt)
    with pytest.raises(sqlite3.OperationalError, match="nowhere"):
        Manifest.open(idx)
    db = sqlite3.connect(idx / "index.sqlite")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    meta = dict(db.execute("SELECT key, value FROM meta"))
    db.close()
    assert "half_done" not in tables and "pending_deletes" not in tables
    assert meta["schema"] == "1" and "schema_version" not in meta


def test_a_reader_stops_with_a_way_out_when_it_cannot_read_the_older_schema(tmp_path, monkeypatch):
    idx = tmp_path / "idx"
    write_v1_index(idx, with_pending=True)
    nxt = migrations.LATEST + 1
    reshape = migrations.Migration(nxt, "test", ("CREATE TABLE reshaped (x)",), additive=False)
    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, reshape))
    monkeypatch.setattr(manifest_mod, "SCHEMA_VERSION", nxt)
    with pytest.raises(ManifestSchemaError, match=r"schema 1, .* run `manualrag index LIBRARY --index-dir"):
        Manifest.open(idx, readonly=True)
    with Manifest.open(idx) as m:
        assert m.schema_version() == nxt


def test_an_upgraded_index_has_the_tables_and_columns_of_a_new_one(tmp_path):
    """A field added to Passage/Figure (or a table added to the schema) without its migration fails here."""
    old, new = tmp_path / "old", tmp_path / "new"
    write_v1_index(old, with_pending=False)
    Manifest.open(old).close()
    Manifest.open(new).close()

    def shape(idx: Path) -> dict[str, set[str]]:
        db = sqlite3.connect(idx / "index.sqlite")
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        out = {t: {r[1] for r in db.execute(f"PRAGMA table_info('{t}')")} for t in tables}
        db.close()
        return out

    assert shape(old) == shape(new)
