"""Numbered schema migrations of index.sqlite: an index written by an older manualrag is upgraded in place.

The version is ``meta.schema_version`` (indexes before version 2 have only the legacy key ``schema``, which
is kept equal so an older manualrag refuses a newer index with its own clear message). A new index is
created at :data:`LATEST` directly (:func:`manualrag.schema.create_statements`); an older one runs the
migrations above its version, in order, all in ONE transaction together with the version bump: a crash or
an error leaves the index at its old version, untouched.

Who upgrades: the writer (``manualrag index`` / ``remove``, which hold the index lock). A read-only opener
(query, stats, serve) never writes: when every pending migration is ``additive`` (new tables, or new
columns whose values the reader fills with the dataclass default) it reads the older schema as it is and
the next index run upgrades it; otherwise it stops with a message saying to run ``manualrag index`` once.

To add a migration: append ``Migration(LATEST + 1, "why", [statements...])`` to :data:`MIGRATIONS`; for a
new passage or figure field, the statements are ``add_column(FIGURES, "field")`` (see manualrag.schema).
Never edit a released migration; the previous release's DDL is kept verbatim in tests/test_migrations.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from manualrag.schema import FAILED_VERSIONS_DDL, FIGURES, PENDING_DELETES_DDL, Table

LEGACY_KEY = "schema"  # the only version key before version 2
VERSION_KEY = "schema_version"


@dataclass(frozen=True)
class Migration:
    version: int  # the schema version it produces
    why: str
    statements: tuple[str, ...]
    additive: bool = True  # a reader of this code can still read the schema before it


def add_column(table: Table, attr: str) -> tuple[str, ...]:
    """The statement that adds the column of field ``attr`` (it needs a default if NOT NULL)."""
    col = table.column(attr)
    return (f"ALTER TABLE {table.name} ADD COLUMN {col.ddl()}",)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        2,
        "pending_deletes: vectors superseded by a document's new version, deleted after its commit "
        "(indexes of version 1 made before 2026-11-27 lack the table)",
        (PENDING_DELETES_DDL,),
    ),
    Migration(
        3,
        "figures.rotation: the degrees a crop was turned to read upright (models.Figure.rotation)",
        add_column(FIGURES, "rotation"),
    ),
    Migration(
        4,
        "failed_versions: the version of a file whose last run failed, so an unchanged failing file is "
        "not retried (and loads no model) on every run",
        (FAILED_VERSIONS_DDL,),
    ),
    Migration(
        5,
        "documents.vector_identity: what made each document's vectors (model checkpoint, dtype: "
        "indexer/reuse.py), so that one run in another dtype does not stop every later run from reusing them",
        ("ALTER TABLE documents ADD COLUMN vector_identity TEXT",),
    ),
)

LATEST = MIGRATIONS[-1].version if MIGRATIONS else 1


def pending(version: int) -> list[Migration]:
    """The migrations an index at ``version`` needs, in order."""
    return [m for m in MIGRATIONS if m.version > version]
