"""The manifest: ``index_dir/index.sqlite`` (stdlib sqlite3, WAL) with documents, passages, windows,
figures, per-file errors, meta, and the FTS5 lexical index (BM25 over text, figure labels, captions).

Writes: every write method is one transaction. The order in which an index run calls them for a document
(``begin_document``, vectors upserted, ``replace_rows``, ``commit_document``, pending deletes flushed) is
the write-order contract stated once in docs/reliability.md ("Write order"); a document with no committed
``documents`` row is redone by the next run. The tables' columns come from :mod:`manualrag.schema`; an
older index is upgraded by :mod:`manualrag.migrations`.

Readers (the retriever) open read-only (``mode=ro``) and may query while a writer runs (WAL); a reader
takes one query's rows in one :meth:`Manifest.read_snapshot`, so it sees each document before or after
``replace_rows``, never half of it.
Lists are stored as JSON text; nothing is pickled.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from manualrag import ids, migrations
from manualrag.errors import IndexCorruptError, IndexNotFoundError, ManualragError, shell_arg
from manualrag.index import DB_NAME
from manualrag.models import Figure, FileError, Passage, Window
from manualrag.schema import FIGURES, LEXICAL_TOKENIZE, PASSAGES, create_statements

SCHEMA_VERSION = migrations.LATEST
CHANNELS = ("clip", "sem")
# bm25 column weights: caption (passage heading / figure caption), labels (figure labels + OCR), body
W_CAPTION, W_LABELS, W_BODY = 2.0, 1.5, 1.0
_CHUNK = 500  # ids per IN (...) list
READER_MMAP_BYTES = 1 << 30  # of index.sqlite a read-only connection maps into memory (SQLite's mmap_size)


class ManifestSchemaError(ManualragError):
    """index.sqlite was written by another schema version of manualrag."""


@dataclass
class DocRow:
    """One committed document."""

    path: str
    doc_id: str
    digest: str
    size: int
    mtime: float
    config_fp: str
    file_type: str
    n_pages: int
    title: str = ""
    warnings: list[str] = field(default_factory=list)
    clip_model: str | None = None
    text_model: str | None = None
    # ISO 8601 UTC; commit_document fills it when empty (epoch seconds are converted)
    indexed_at: str = ""
    state: str = "ok"
    # role -> the identities of the vectors this document's records have (indexer/reuse.py); None: not
    # recorded (no vectors, or indexed before manualrag recorded them)
    vector_identity: dict[str, list[str]] | None = None


@dataclass
class WindowRow:
    window_id: str
    passage_id: str
    doc_path: str
    channel: str  # clip | sem
    text: str
    n_tokens: int

    @property
    def id(self) -> str:
        return self.window_id


@dataclass(kw_only=True)
class FigureRow(Figure):
    """A figure as the manifest stores it: every ``Figure`` field (see :mod:`manualrag.schema`) plus its id
    and document."""

    figure_id: str
    doc_path: str

    @property
    def id(self) -> str:
        return self.figure_id

    @property
    def page(self) -> int:
        """The first page that shows the figure."""
        return self.pages[0] if self.pages else 0

    def to_figure(self) -> Figure:
        return Figure(**{f.name: _copy(getattr(self, f.name)) for f in fields(Figure)})


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


# ------------------------------------------------------------------------------------------------ helpers
def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _iso(value: str | float) -> str:
    """An ISO 8601 time from an ISO string or epoch seconds."""
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(float(value), UTC).isoformat(timespec="seconds")
    return str(value)


def _chunks(seq: Sequence[str], n: int = _CHUNK) -> Iterator[Sequence[str]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _window_row(r: sqlite3.Row) -> WindowRow:
    return WindowRow(r["id"], r["passage_id"], r["doc_path"], r["channel"], r["text"], int(r["n_tokens"]))


def _figure_row(r: sqlite3.Row) -> FigureRow:
    return FigureRow(**FIGURES.decode(r))


def _passage(r: sqlite3.Row) -> Passage:
    return Passage(**PASSAGES.decode(r))


def _doc_row(r: sqlite3.Row) -> DocRow:
    return DocRow(
        path=r["path"],
        doc_id=r["doc_id"],
        digest=r["digest"],
        size=int(r["size"]),
        mtime=float(r["mtime"]),
        config_fp=r["config_fp"],
        file_type=r["file_type"],
        n_pages=int(r["n_pages"]),
        title=r["title"],
        warnings=list(json.loads(r["warnings"])),
        clip_model=r["clip_model"],
        text_model=r["text_model"],
        indexed_at=r["indexed_at"],
        state=r["state"],
        # (an index of schema 4, read before an index run upgrades it, has no such column)
        vector_identity=json.loads(r["vector_identity"] or "null") if "vector_identity" in r.keys() else None,
    )


# ---------------------------------------------------------------------------------------------- manifest
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def is_corruption(exc: BaseException) -> bool:
    """SQLite says the file is damaged ("database disk image is malformed") or not a database at all."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    return type(exc) is sqlite3.DatabaseError


def corrupt_error(path: Path, exc: BaseException) -> IndexCorruptError:
    idir = shell_arg(path.parent)
    return IndexCorruptError(
        f"{path} is damaged ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): "
        f"`manualrag check --repair --index-dir {idir}` rebuilds it from the library, "
        f"`manualrag reset --index-dir {idir}` deletes the index, or restore the folder from a backup"
    )


def _corruption_is_an_index_error(cls: type) -> type:
    """Every public method (and the constructor) of the manifest turns SQLite's corruption errors into
    :class:`IndexCorruptError` naming the file and the ways out, instead of a raw traceback."""

    def wrap(fn: Any) -> Any:
        @functools.wraps(fn)
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except sqlite3.DatabaseError as exc:
                if is_corruption(exc):
                    raise corrupt_error(Path(self.path), exc) from exc
                raise
            except UnicodeDecodeError as exc:  # a damaged page read as text (every text we store is UTF-8)
                raise corrupt_error(Path(self.path), ValueError("text that is not UTF-8")) from exc

        return method

    for name, fn in list(vars(cls).items()):
        if (
            callable(fn)
            and not isinstance(fn, (staticmethod, classmethod, type))
            and (name == "__init__" or not name.startswith("_"))
        ):
            setattr(cls, name, wrap(fn))
    return cls


@_corruption_is_an_index_error
class Manifest:
    """``index_dir/index.sqlite``: ``Manifest(db_file, readonly=...)`` or ``Manifest.open(index_dir, ...)``.

    A writer creates the file (and its folder); ``readonly=True`` needs an existing index and raises
    :class:`IndexNotFoundError` otherwise. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: Path | str, readonly: bool = False):
        path = Path(path)
        if path.is_dir():  # an index folder was given
            path = path / DB_NAME
        self.path = path
        self.readonly = readonly
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._topk: Any = None  # FtsTopK on this connection, made on first use
        index_dir = path.parent
        if readonly:
            if not path.is_file():
                raise IndexNotFoundError(
                    f"no index in {index_dir} ({path.name} is missing): build one with `manualrag index`"
                    " or pass the right --index-dir"
                )
            uri = path.resolve().as_uri() + "?mode=ro"
            if not os.access(index_dir, os.W_OK) and not Path(f"{path}-wal").exists():
                uri += "&immutable=1"  # a read-only copy of an index: WAL needs a writable folder otherwise
            conn = sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None, check_same_thread=False)
        else:
            index_dir.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), timeout=5.0, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            if readonly:
                conn.execute("PRAGMA query_only = 1")
                # a reader's row lookups (a query's candidate passages and figures, spread over the file)
                # read mapped pages instead of a read() call and a copy each: measured 2x faster at 1M records
                conn.execute(f"PRAGMA mmap_size = {READER_MMAP_BYTES}")
            else:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
            self._conn = conn
            self._check_schema(index_dir)
        except BaseException:
            conn.close()
            self._conn = None
            raise

    @classmethod
    def open(cls, index_dir: Path | str, readonly: bool = False) -> Manifest:
        """Open ``index_dir/index.sqlite`` (a writer creates it)."""
        return cls(Path(index_dir) / DB_NAME, readonly=readonly)

    def _check_schema(self, index_dir: Path) -> None:
        """Create a new index's tables, or bring an older one up to date (see :mod:`manualrag.migrations`)."""
        has_meta = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if not has_meta:
            if self.readonly:
                raise IndexNotFoundError(
                    f"{self.path} is not a manualrag index (no meta table): build one with `manualrag index`"
                )
            with self._tx() as c:
                for stmt in create_statements():
                    c.execute(stmt)
                self._set_version(c, SCHEMA_VERSION)
            return
        version = self.schema_version()
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ManifestSchemaError(
                f"{self.path} has manifest schema {version}, newer than this manualrag's "
                f"({SCHEMA_VERSION}): upgrade manualrag, or use a new --index-dir"
            )
        todo = migrations.pending(version)
        if not todo:
            return
        if self.readonly:
            if all(m.additive for m in todo):
                return  # read as it is; the next index run upgrades it
            raise ManifestSchemaError(
                f"{self.path} has manifest schema {version}, this manualrag reads {SCHEMA_VERSION}: run "
                f"`manualrag index LIBRARY --index-dir {shell_arg(index_dir)}` once to upgrade it in place (nothing is "
                "re-embedded)"
            )
        with self._tx() as c:  # all or nothing: a failure leaves the index at its old version
            version = self.schema_version()  # another writer may have upgraded it meanwhile
            for m in migrations.pending(version):
                for stmt in m.statements:
                    c.execute(stmt)
            self._set_version(c, SCHEMA_VERSION)

    def schema_version(self) -> Any:
        """The schema version the index is at (``meta.schema_version``, or the legacy ``schema`` key)."""
        version = self.get_meta(migrations.VERSION_KEY)
        return self.get_meta(migrations.LEGACY_KEY) if version is None else version

    @staticmethod
    def _set_version(c: _TxCursor, version: int) -> None:
        for key in (migrations.VERSION_KEY, migrations.LEGACY_KEY):
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(version)))

    def close(self) -> None:
        with self._lock:
            if self._topk is not None:
                self._topk.close()
                self._topk = None
            if self._conn is not None:
                self._conn.close()
                self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ManualragError(f"the manifest {self.path} is closed")
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """One write transaction (BEGIN IMMEDIATE: takes the write lock up front, waits busy_timeout)."""
        if self.readonly:
            raise ManualragError(f"the manifest {self.path} was opened read-only")
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield _TxCursor(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def read_snapshot(self) -> Iterator[None]:
        """Every read inside the block sees one state of the index (a WAL read transaction), even while a
        writer commits documents: a reader sees each document before or after its update, never half of it."""
        with self._lock:
            conn = self.conn
            if conn.in_transaction:  # nested, or inside a write transaction: already one state
                yield
                return
            conn.execute("BEGIN")
            try:
                yield
            finally:
                conn.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self.conn.execute(sql, params).fetchall()

    def _by_ids(self, table: str, ids: Iterable[str], columns: str = "*") -> list[sqlite3.Row]:
        uniq = list(dict.fromkeys(ids))
        rows: list[sqlite3.Row] = []
        for part in _chunks(uniq):
            rows.extend(self._query(f"SELECT {columns} FROM {table} WHERE id IN ({_marks(len(part))})", part))
        return rows

    # ------------------------------------------------------------------------------------------- meta
    def set_meta(self, key: str, value: Any) -> None:
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def delete_meta(self, key: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM meta WHERE key = ?", (key,))

    def has_vector_records(self) -> bool:
        """Whether any committed thing has vectors: a text window (CLIP or text model) or a figure."""
        rows = self._query("SELECT EXISTS(SELECT 1 FROM windows) OR EXISTS(SELECT 1 FROM figures) AS any_")
        return bool(rows[0]["any_"])

    def needs_vectors(self, kind: str) -> bool:
        """Whether a committed document's rows need vectors of store ``kind`` (text, image, sem): the
        document was embedded with the model that makes them, and has windows or figures they describe.
        A store without them has lost them (deleted folder, emptied collection, server reset)."""
        if kind == "text":
            sql = (
                "SELECT EXISTS(SELECT 1 FROM windows w JOIN documents d ON d.path = w.doc_path"
                " WHERE w.channel = 'clip' AND d.state = 'ok' AND d.clip_model IS NOT NULL)"
            )
        elif kind == "image":
            sql = (
                "SELECT EXISTS(SELECT 1 FROM figures f JOIN documents d ON d.path = f.doc_path"
                " WHERE f.boilerplate = 0 AND d.state = 'ok' AND d.clip_model IS NOT NULL)"
            )
        elif kind == "sem":
            sql = (
                "SELECT EXISTS(SELECT 1 FROM windows w JOIN documents d ON d.path = w.doc_path"
                " WHERE w.channel = 'sem' AND d.state = 'ok' AND d.text_model IS NOT NULL)"
                " OR EXISTS(SELECT 1 FROM figures f JOIN documents d ON d.path = f.doc_path"
                " WHERE f.boilerplate = 0 AND d.state = 'ok' AND d.text_model IS NOT NULL AND"
                " (f.caption != '' OR f.labels != '[]' OR f.ocr_text != '' OR f.heading != ''"
                " OR f.nearby_text != ''))"
            )
        else:
            raise ValueError(f"needs_vectors: kind must be text, image or sem, got {kind!r}")
        return bool(self._query(sql)[0][0])

    def get_meta(self, key: str, default: Any = None) -> Any:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0]["value"]) if rows else default

    # ------------------------------------------------------------------------------------------ write
    def begin_document(self, path: str) -> None:
        """Mark ``path`` as being rewritten: its documents row goes (a crash from here on means "redo")."""
        with self._tx() as c:
            c.execute("DELETE FROM documents WHERE path = ?", (path,))

    def vector_ids(self, path: str) -> dict[str, list[str]]:
        """Ids the vector store may hold for ``path``'s rows, by record kind (text, sem, image, image_text)."""
        q = "SELECT id, channel FROM windows WHERE doc_path = ? ORDER BY id"
        windows = [(r["id"], r["channel"]) for r in self._query(q, (path,))]
        figures = [
            r["id"] for r in self._query("SELECT id FROM figures WHERE doc_path = ? ORDER BY id", (path,))
        ]
        return ids.vector_ids(windows, figures)

    def pending_deletes(self) -> dict[str, list[str]]:
        """Superseded vector ids not yet deleted from the store, by kind (see ``replace_rows``)."""
        out: dict[str, list[str]] = {}
        for r in self._query("SELECT kind, id FROM pending_deletes ORDER BY kind, id"):
            out.setdefault(r["kind"], []).append(r["id"])
        return out

    def clear_pending(self, kind: str, ids: Sequence[str]) -> None:
        with self._tx() as c:
            c.executemany("DELETE FROM pending_deletes WHERE kind = ? AND id = ?", [(kind, i) for i in ids])

    def all_vector_ids(self) -> dict[str, set[str]]:
        """Every id the vector store may hold, by kind (for an orphan sweep of the store)."""
        windows = [(r["id"], r["channel"]) for r in self._query("SELECT id, channel FROM windows")]
        figures = [r["id"] for r in self._query("SELECT id FROM figures")]
        return {kind: set(v) for kind, v in ids.vector_ids(windows, figures).items()}

    def replace_rows(
        self,
        path: str,
        passages: Sequence[Passage],
        windows: Sequence[tuple[Window, str]],
        figures: Sequence[tuple[str, Figure]],
        live: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Replace every passage, window, figure and lexical row of ``path`` (one transaction).

        ``live``: the vector ids the new version has in the store, by kind (default: every id its rows may
        have). The old version's ids outside it are recorded as pending deletes in the same transaction,
        for the caller to delete from the store after ``commit_document`` (``pending_deletes``,
        ``clear_pending``); a reader meanwhile drops them, since no row names them.

        Boilerplate figures get rows (they have vectors) but no lexical row; suspect passages get both
        (``passages.suspect`` says why a reader cannot see the text, so the retriever can mark or drop them).
        """
        for p in passages:
            if p.doc_path != path:
                raise ValueError(f"passage {p.passage_id} belongs to {p.doc_path!r}, not {path!r}")
        for _, ch in windows:
            if ch not in CHANNELS:
                raise ValueError(f"window channel must be one of {CHANNELS}, got {ch!r}")
        lexical: list[tuple[str, str, str, int, str, str, str]] = []
        for p in passages:
            lexical.append((p.passage_id, "passage", path, p.page, p.heading or "", "", p.text))
        for fid, f in figures:
            if f.boilerplate:
                continue
            labels = "\n".join(x for x in (" ".join(f.labels), f.ocr_text) if x.strip())
            body = "\n".join(x for x in (f.nearby_text, f.heading) if x.strip())
            lexical.append((fid, "figure", path, f.pages[0] if f.pages else 0, f.caption or "", labels, body))
        old = self.vector_ids(path)
        if live is None:
            live = ids.vector_ids([(w.window_id, ch) for w, ch in windows], [fid for fid, _ in figures])
        with self._tx() as c:
            # ids the new version uses (again) are live, never pending; the old version's others are
            for kind, vids in live.items():
                c.executemany(
                    "DELETE FROM pending_deletes WHERE kind = ? AND id = ?", [(kind, i) for i in vids]
                )
            for kind, vids in old.items():
                keep = set(live.get(kind, ()))
                c.executemany(
                    "INSERT OR IGNORE INTO pending_deletes(kind, id) VALUES (?, ?)",
                    [(kind, i) for i in vids if i not in keep],
                )
            self._delete_rows(c, path)
            c.executemany(PASSAGES.insert, [PASSAGES.values(p, doc_path=path) for p in passages])
            c.executemany(
                "INSERT INTO windows(id, passage_id, doc_path, channel, text, n_tokens) VALUES (?,?,?,?,?,?)",
                [(w.window_id, w.passage_id, path, ch, w.text, int(w.n_tokens)) for w, ch in windows],
            )
            c.executemany(
                FIGURES.insert, [FIGURES.values(f, figure_id=fid, doc_path=path) for fid, f in figures]
            )
            if lexical:
                base = c.execute("SELECT COALESCE(MAX(rowid), 0) + 1 FROM lexical_rows").fetchone()[0]
                c.executemany(
                    "INSERT INTO lexical_rows(rowid, doc_path) VALUES (?, ?)",
                    [(base + i, path) for i in range(len(lexical))],
                )
                c.executemany(
                    "INSERT INTO lexical(rowid, ref_id, ref_type, doc_path, page, caption, labels, body)"
                    " VALUES (?,?,?,?,?,?,?,?)",
                    [(base + i, *row) for i, row in enumerate(lexical)],
                )

    @staticmethod
    def _delete_rows(c: _TxCursor, path: str) -> None:
        rowids = [(r[0],) for r in c.execute("SELECT rowid FROM lexical_rows WHERE doc_path = ?", (path,))]
        c.executemany("DELETE FROM lexical WHERE rowid = ?", rowids)
        c.execute("DELETE FROM lexical_rows WHERE doc_path = ?", (path,))
        for table in ("passages", "windows", "figures"):
            c.execute(f"DELETE FROM {table} WHERE doc_path = ?", (path,))

    def commit_document(self, row: DocRow) -> None:
        """Record ``row.path`` as indexed (state 'ok'): the last write for a document."""
        indexed_at = _iso(row.indexed_at) if row.indexed_at else _now()
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO documents(path, doc_id, digest, size, mtime, config_fp, file_type, n_pages,"
                " title, warnings, clip_model, text_model, indexed_at, state, vector_identity)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,'ok',?)",
                (
                    row.path,
                    row.doc_id,
                    row.digest,
                    int(row.size),
                    float(row.mtime),
                    row.config_fp,
                    row.file_type,
                    int(row.n_pages),
                    row.title or "",
                    json.dumps(list(row.warnings)),
                    row.clip_model,
                    row.text_model,
                    indexed_at,
                    None if row.vector_identity is None else json.dumps(row.vector_identity, sort_keys=True),
                ),
            )
        row.indexed_at, row.state = indexed_at, "ok"

    def touch_document(self, path: str, size: int, mtime: float) -> None:
        """Record a new size/mtime for a committed document whose content did not change."""
        with self._tx() as c:
            c.execute(
                "UPDATE documents SET size = ?, mtime = ? WHERE path = ?", (int(size), float(mtime), path)
            )

    def remove_document(self, path: str) -> None:
        """Forget ``path`` entirely: documents row, passages, windows, figures, lexical rows, error."""
        with self._tx() as c:
            c.execute("DELETE FROM documents WHERE path = ?", (path,))
            c.execute("DELETE FROM errors WHERE path = ?", (path,))
            self._delete_rows(c, path)

    def record_error(
        self, path: str, reason: str, stage: str, version: tuple[int, float, str] | None = None
    ) -> None:
        """Record a file's failure; ``version`` (size, mtime, extraction fingerprint) when the failure is
        the file's own (its content or the settings must change before it is worth trying again)."""
        reason = " ".join(str(reason).split())
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO errors(path, reason, stage, at) VALUES (?,?,?,?)",
                (path, reason, stage, _now()),
            )
            c.execute("DELETE FROM failed_versions WHERE path = ?", (path,))
            if version is not None:
                c.execute(
                    "INSERT INTO failed_versions(path, size, mtime, config_fp) VALUES (?,?,?,?)",
                    (path, *version),
                )

    def clear_error(self, path: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM errors WHERE path = ?", (path,))
            c.execute("DELETE FROM failed_versions WHERE path = ?", (path,))

    def failed_versions(self) -> dict[str, tuple[int, float, str]]:
        """Files whose last run failed, by path: the (size, mtime, extraction fingerprint) that failed."""
        rows = self._query("SELECT path, size, mtime, config_fp FROM failed_versions")
        return {r["path"]: (int(r["size"]), float(r["mtime"]), r["config_fp"]) for r in rows}

    # ------------------------------------------------------------------------------------------- read
    def documents(self) -> dict[str, DocRow]:
        """Committed documents by path."""
        return {
            r["path"]: _doc_row(r)
            for r in self._query("SELECT * FROM documents WHERE state = 'ok' ORDER BY path")
        }

    def document_paths(self) -> list[str]:
        """The paths of the committed documents, sorted (cheaper than :meth:`documents`)."""
        return [r[0] for r in self._query("SELECT path FROM documents WHERE state = 'ok' ORDER BY path")]

    def image_documents(self, paths: Iterable[str]) -> set[str]:
        """Those of ``paths`` that are committed loose image files (one query per 500 paths)."""
        out: set[str] = set()
        for part in _chunks(list(dict.fromkeys(paths))):
            rows = self._query(
                f"SELECT path FROM documents WHERE file_type = 'image' AND state = 'ok' AND path IN ({_marks(len(part))})",
                part,
            )
            out.update(r[0] for r in rows)
        return out

    def document(self, path: str) -> DocRow | None:
        rows = self._query("SELECT * FROM documents WHERE path = ? AND state = 'ok'", (path,))
        return _doc_row(rows[0]) if rows else None

    def document_by_id(self, doc_id: str) -> DocRow | None:
        """The committed document whose ``doc_id`` this is (ids are hashes of paths: at most one)."""
        rows = self._query("SELECT * FROM documents WHERE doc_id = ? AND state = 'ok'", (doc_id,))
        return _doc_row(rows[0]) if rows else None

    def errors(self) -> dict[str, FileError]:
        return {
            r["path"]: FileError(r["path"], r["reason"], r["stage"])
            for r in self._query("SELECT * FROM errors ORDER BY path")
        }

    def paths_with_rows(self) -> set[str]:
        """Every path that has rows of any kind (committed or not): what a prune must consider."""
        rows = self._query(
            "SELECT path FROM documents UNION SELECT doc_path FROM passages UNION SELECT doc_path FROM windows"
            " UNION SELECT doc_path FROM figures UNION SELECT doc_path FROM lexical_rows"
        )
        return {r[0] for r in rows}

    def passages(self, ids: Iterable[str]) -> dict[str, Passage]:
        return {r["id"]: _passage(r) for r in self._by_ids("passages", ids)}

    def windows(self, ids: Iterable[str]) -> dict[str, WindowRow]:
        return {r["id"]: _window_row(r) for r in self._by_ids("windows", ids)}

    def windows_of_doc(self, doc_path: str) -> list[WindowRow]:
        rows = self._query("SELECT * FROM windows WHERE doc_path = ? ORDER BY id", (doc_path,))
        return [_window_row(r) for r in rows]

    def figures(self, ids: Iterable[str]) -> dict[str, FigureRow]:
        return {r["id"]: _figure_row(r) for r in self._by_ids("figures", ids)}

    def figure_places(self, ids: Iterable[str]) -> dict[str, tuple[str, int]]:
        """(document path, first page) of each figure: what page support needs, without whole rows."""
        rows = self._by_ids("figures", ids, "id, doc_path, json_extract(pages, '$[0]')")
        return {r[0]: (r[1], int(r[2] or 0)) for r in rows}

    def figure_kinds(self, ids: Iterable[str]) -> dict[str, str]:
        """The kind of each figure (``raster``, ``vector``, ``scan``, ...), without whole rows."""
        return {r[0]: r[1] for r in self._by_ids("figures", ids, "id, kind")}

    def figures_on_page(self, doc_path: str, page: int) -> list[FigureRow]:
        """Figures of ``doc_path`` shown on ``page`` (any of their pages), in id order."""
        rows = self._query(
            "SELECT * FROM figures WHERE doc_path = ? AND EXISTS"
            " (SELECT 1 FROM json_each(figures.pages) WHERE json_each.value = ?) ORDER BY id",
            (doc_path, int(page)),
        )
        return [_figure_row(r) for r in rows]

    def passages_on_page(self, doc_path: str, page: int) -> list[Passage]:
        """The passages of ``doc_path`` on ``page``, in reading order (their order of extraction)."""
        rows = self._query(
            "SELECT * FROM passages WHERE doc_path = ? AND page = ? ORDER BY rowid", (doc_path, int(page))
        )
        return [_passage(r) for r in rows]

    def _figures_on_pages(self, pages: Iterable[tuple[str, int]], where: str = "") -> list[sqlite3.Row]:
        """Rows (id, doc_path, page, caption) of the non-boilerplate figures shown on these (doc path, page)
        pairs for which the SQL condition ``where`` (on ``f``, the figures table) holds too."""
        pairs = list(dict.fromkeys((str(d), int(p)) for d, p in pages))
        out: list[sqlite3.Row] = []
        for i in range(0, len(pairs), 200):
            part = pairs[i : i + 200]
            docs = list(dict.fromkeys(d for d, _ in part))
            # ``doc_path IN`` lets SQLite read only these documents' figures (index figures_doc): the
            # (doc, page) row-value test alone scanned every figure of the index, ~20 ms a query at 1M records
            out += self._query(
                "SELECT f.id, f.doc_path, j.value AS page, f.caption FROM figures AS f, json_each(f.pages) AS j"
                f" WHERE f.doc_path IN ({_marks(len(docs))}) AND f.boilerplate = 0{where}"
                f" AND (f.doc_path, j.value) IN (VALUES {','.join(['(?, ?)'] * len(part))})",
                [*docs, *(x for pair in part for x in pair)],
            )
        return out

    def captions_on_pages(self, pages: Iterable[tuple[str, int]]) -> list[tuple[str, str, int, str]]:
        """(figure id, doc path, page, caption) of the captioned, non-boilerplate figures shown on these
        (doc path, page) pairs."""
        rows = self._figures_on_pages(pages, " AND f.caption != ''")
        return [(r["id"], r["doc_path"], int(r["page"]), r["caption"]) for r in rows]

    def figures_on_pages(self, pages: Iterable[tuple[str, int]]) -> list[tuple[str, str, int]]:
        """(figure id, doc path, page) of the non-boilerplate figures shown on these (doc path, page) pairs."""
        return [(r["id"], r["doc_path"], int(r["page"])) for r in self._figures_on_pages(pages)]

    def figures_of_doc(self, doc_path: str) -> list[FigureRow]:
        return [
            _figure_row(r)
            for r in self._query("SELECT * FROM figures WHERE doc_path = ? ORDER BY id", (doc_path,))
        ]

    def match_lexical(self, match: str, limit: int) -> list[tuple[str, str, float]]:
        """BM25 over captions/headings, figure labels + OCR, and body text, for an FTS5 MATCH expression.

        Returns ``(ref_type, ref_id, score)`` best first; ref_type is "passage" or "figure"; score is
        ``-bm25`` (positive, larger is better). Scores every row a term matches: searches go through
        :meth:`match_lexical_phrases` (the same hits, bounded top-k); this is its reference (fuzzer).
        """
        if not match or limit <= 0:
            return []
        rows = self._query(
            "SELECT ref_type, ref_id, bm25(lexical, 0, 0, 0, 0, ?, ?, ?) AS s FROM lexical"
            " WHERE lexical MATCH ? ORDER BY s LIMIT ?",
            (W_CAPTION, W_LABELS, W_BODY, match, int(limit)),
        )
        return [(r["ref_type"], r["ref_id"], -float(r["s"])) for r in rows]

    def match_lexical_phrases(
        self, phrases: Sequence[str], limit: int, docs: Sequence[str] | None = None
    ) -> list[tuple[str, str, float]]:
        """The top ``limit`` rows of ``phrases`` (safe FTS5 phrase expressions) OR-ed, by BM25: exactly what
        :meth:`match_lexical` returns for their OR expression (ties by rowid), without scoring every row that
        matches a common word (see :mod:`manualrag.fts_topk`). ``docs``: only rows of these document paths
        (a source filter; their scores are the unfiltered query's)."""
        if not phrases or limit <= 0:
            return []
        with self._lock:
            rows = self._fts().search(phrases, int(limit), docs)
        return [(r[0], r[1], -float(r[2])) for r in rows]

    def lexical_holds(self, phrase: str) -> bool:
        """Whether any lexical row matches ``phrase`` (a safe FTS5 phrase expression)."""
        with self._lock:
            return (
                self.conn.execute("SELECT 1 FROM lexical WHERE lexical MATCH ? LIMIT 1", (phrase,)).fetchone()
                is not None
            )

    def _fts(self) -> Any:
        """The bounded top-k helper over the lexical table (made on first use; the caller holds the lock)."""
        if self._topk is None:
            from manualrag.fts_topk import FtsTopK

            self._topk = FtsTopK(
                self.conn, "lexical", LEXICAL_TOKENIZE, f"0, 0, 0, 0, {W_CAPTION}, {W_LABELS}, {W_BODY}"
            )
        return self._topk

    def stats(self) -> dict[str, Any]:
        def one(sql: str) -> int:
            return int(self._query(sql)[0][0] or 0)

        return {
            "documents": one("SELECT COUNT(*) FROM documents WHERE state = 'ok'"),
            "pages": one("SELECT SUM(n_pages) FROM documents WHERE state = 'ok'"),
            "passages": one("SELECT COUNT(*) FROM passages"),
            "suspect_passages": one("SELECT COUNT(*) FROM passages WHERE suspect IS NOT NULL"),
            "ocr_passages": one("SELECT COUNT(*) FROM passages WHERE ocr"),
            "windows": {ch: one(f"SELECT COUNT(*) FROM windows WHERE channel = '{ch}'") for ch in CHANNELS},
            "figures": {
                r["kind"]: int(r["n"])
                for r in self._query(
                    "SELECT kind, COUNT(*) AS n FROM figures WHERE boilerplate = 0 GROUP BY kind ORDER BY kind"
                )
            },
            "boilerplate": one("SELECT COUNT(*) FROM figures WHERE boilerplate"),
            "errors": one("SELECT COUNT(*) FROM errors"),
            "lexical_rows": one("SELECT COUNT(*) FROM lexical_rows"),
        }

    def crop_paths(self) -> set[str]:
        """Crop files (relative to the index folder) that some figure row still uses."""
        return {
            r[0] for r in self._query("SELECT DISTINCT crop_path FROM figures WHERE crop_path IS NOT NULL")
        }


class _TxCursor:
    """The connection inside a transaction (execute/executemany only)."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> sqlite3.Cursor:
        return self._conn.executemany(sql, rows)
