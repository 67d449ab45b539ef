"""The tables of index.sqlite, with the passage and figure columns derived from their dataclasses.

A passage or figure field is declared once, in :mod:`manualrag.models` (``Passage``, ``Figure``); from the
dataclass come its SQL column (type, NOT NULL, DEFAULT), the INSERT, the decoding of a row, the manifest's
:class:`~manualrag.manifest.FigureRow` (a ``Figure`` subclass) and its ``to_figure``. The SQL type follows
the field's annotation (:data:`_TYPES`); the default follows the field's default.

To add a figure field (``rotation: int = 0`` came this way: migration 3):
  1. add it to ``models.Figure`` with a default (rows written before it get that default);
  2. add a migration to :data:`manualrag.migrations.MIGRATIONS`:
     ``Migration(LATEST + 1, "why", add_column(FIGURES, "rotation"))``;
  3. to show it in query results, add it to ``retriever.search.Hit`` and ``HIT_FIGURE_FIELDS`` there
     (tests/test_schema.py fails until the two agree).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, dataclass, fields
from typing import Any

from manualrag.models import Figure, Passage


def _json_list(v: Any) -> str:
    return json.dumps(list(v))


# annotation (as written in models.py) -> (SQL type, encode, decode); Optional types are nullable
_TYPES: dict[str, tuple[str, Callable[[Any], Any], Callable[[Any], Any]]] = {
    "str": ("TEXT", lambda v: "" if v is None else v, str),
    "int": ("INTEGER", int, int),
    "float": ("REAL", float, float),
    "bool": ("INTEGER", lambda v: int(bool(v)), bool),
    "list[int]": ("TEXT", _json_list, lambda s: [int(x) for x in json.loads(s)]),
    "list[str]": ("TEXT", _json_list, lambda s: [str(x) for x in json.loads(s)]),
    "BBox": ("TEXT", _json_list, lambda s: tuple(float(x) for x in json.loads(s))),
}


@dataclass(frozen=True)
class Column:
    name: str  # in SQL
    attr: str  # on the Python object
    sql: str  # type and constraints
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]

    def ddl(self) -> str:
        return f"{self.name} {self.sql}"


def _sql_literal(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def column(f: Field[Any], name: str | None = None, primary: bool = False) -> Column:
    """The column of a dataclass field."""
    ann = str(f.type).replace(" ", "")
    nullable = ann.endswith("|None")
    base = ann.removesuffix("|None")
    if base not in _TYPES:
        raise TypeError(f"field {f.name}: no SQL column type for {f.type!r} (add one to schema._TYPES)")
    sql_type, enc, dec = _TYPES[base]
    default: Any = MISSING
    if f.default is not MISSING:
        default = f.default
    elif f.default_factory is not MISSING:
        default = f.default_factory()
    if nullable:
        return Column(name or f.name, f.name, sql_type, _or_none(enc), _or_none(dec))
    sql, encode = f"{sql_type} NOT NULL", enc
    if primary:
        sql = f"{sql_type} PRIMARY KEY"
    elif default is not MISSING:
        sql += f" DEFAULT {_sql_literal(enc(default))}"
    if isinstance(default, str):  # an empty value means the default ("ok" for quality)
        encode = _or_default(default)
    return Column(name or f.name, f.name, sql, encode, dec)


def _or_none(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def code(v: Any) -> Any:
        return None if v is None else fn(v)

    return code


def _or_default(default: str) -> Callable[[Any], Any]:
    def code(v: Any) -> Any:
        return v or default

    return code


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    indexes: tuple[tuple[str, str], ...] = ()  # (index name, column)

    def ddl(self) -> list[str]:
        cols = ",\n    ".join(c.ddl() for c in self.columns)
        out = [f"CREATE TABLE IF NOT EXISTS {self.name} (\n    {cols}\n)"]
        out += [f"CREATE INDEX IF NOT EXISTS {ix} ON {self.name}({col})" for ix, col in self.indexes]
        return out

    @property
    def insert(self) -> str:
        names = ", ".join(c.name for c in self.columns)
        return f"INSERT INTO {self.name}({names}) VALUES ({','.join('?' * len(self.columns))})"

    def values(self, obj: Any, **given: Any) -> tuple[Any, ...]:
        """The INSERT parameters of ``obj``; ``given``: values of columns that are not attributes of it."""
        return tuple(
            c.encode(given[c.attr] if c.attr in given else getattr(obj, c.attr)) for c in self.columns
        )

    def decode(self, row: Any) -> dict[str, Any]:
        """A row as keyword arguments of its dataclass. A column the row lacks (a reader of an index whose
        schema is older, see manualrag.migrations) is left out: the dataclass default stands in."""
        keys = row.keys()
        return {c.attr: c.decode(row[c.name]) for c in self.columns if c.name in keys}

    def column(self, attr: str) -> Column:
        for c in self.columns:
            if c.attr == attr:
                return c
        raise KeyError(f"{self.name} has no column for {attr!r}")


def _model_columns(model: type, skip: Sequence[str] = (), id_field: str | None = None) -> list[Column]:
    """Columns of every field of ``model`` but ``skip``; ``id_field`` becomes the primary key ``id``."""
    return [
        column(f, "id", primary=True) if f.name == id_field else column(f)
        for f in fields(model)
        if f.name not in skip
    ]


PASSAGES = Table(
    "passages", tuple(_model_columns(Passage, id_field="passage_id")), (("passages_doc", "doc_path"),)
)
# figures: the row's id and document, then every Figure field but the in-memory crop bytes
FIGURES = Table(
    "figures",
    (
        Column("id", "figure_id", "TEXT PRIMARY KEY", str, str),
        Column("doc_path", "doc_path", "TEXT NOT NULL", str, str),
        *_model_columns(Figure, skip=("png",)),
    ),
    (("figures_doc", "doc_path"),),
)

# the lexical index's tokenizer (the query side tokenizes with it too: manualrag.fts_topk)
LEXICAL_TOKENIZE = "porter unicode61"

_SCHEMA = """
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
    state TEXT NOT NULL DEFAULT 'ok',
    vector_identity TEXT
);
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


# vectors superseded by a document's new version: deleted from the store only after the new version is
# committed (so a reader always finds the document), remembered here so a crash cannot orphan them
PENDING_DELETES_DDL = """CREATE TABLE IF NOT EXISTS pending_deletes (
    kind TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (kind, id)
) WITHOUT ROWID"""


# the version of a file (size, mtime, fingerprint of the extraction settings and worker limits) whose last
# run failed: an unchanged file is reported as still failing without being tried again (and without
# loading models) until --retry-failed
FAILED_VERSIONS_DDL = """CREATE TABLE IF NOT EXISTS failed_versions (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime REAL NOT NULL, config_fp TEXT NOT NULL
) WITHOUT ROWID"""


def split_sql(script: str) -> list[str]:
    """Statements of a schema script (no semicolons inside statements here); comments dropped."""
    lines = [ln for ln in script.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def create_statements() -> list[str]:
    """The statements that create every table of the current schema (a new index starts here; an older
    one gets there through :mod:`manualrag.migrations`)."""
    return [*split_sql(_SCHEMA), *PASSAGES.ddl(), *FIGURES.ddl(), PENDING_DELETES_DDL, FAILED_VERSIONS_DDL]
