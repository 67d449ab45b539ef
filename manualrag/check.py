"""`manualrag check [--repair]`: verify an index folder, and rebuild what can be rebuilt from the library.

Checks, in order (a damaged SQLite file stops the rest: nothing it says can be trusted):
  1. ``index.sqlite``: SQLite's ``PRAGMA integrity_check`` (pages, b-trees and indexes, the lexical
     index's shadow tables included);
  2. manifest <-> vector store: every vector a row needs exists (text windows, semantic windows, figure
     pixels, figure labels, figures' text-model vectors: as the models each document was embedded with
     make them; an absent or empty collection counts as all of its vectors missing), and every vector in
     the store is named by a row (no orphans);
  3. manifest <-> crops: every figure's crop file exists; no crop file is unused.

Repair (under the index lock, then an ordinary incremental ``index`` run of the library):
  * a damaged ``index.sqlite`` is moved aside (``index.sqlite.damaged-<UTC time>``), this index's
    collections are dropped, and the whole library is indexed again;
  * otherwise orphan vectors and unused crops are deleted, and each document with a missing vector or crop
    is removed from the index so that the run indexes it again.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from manualrag import ids
from manualrag.config import with_extraction_settings
from manualrag.errors import ManualragError
from manualrag.index import CROPS_DIR, DB_NAME, Index, IndexLayout, recorded_config
from manualrag.manifest import Manifest, _figure_row, is_corruption

KINDS = ("text", "image", "image_text", "sem")


@dataclass
class CheckReport:
    index_dir: str
    sqlite_problem: str | None = None  # None: integrity_check says ok
    orphan_vectors: dict[str, list[str]] = field(default_factory=dict)  # by kind
    missing_vectors: dict[str, list[str]] = field(default_factory=dict)  # by kind: ids a row needs
    missing_crops: list[str] = field(default_factory=list)
    unused_crops: list[str] = field(default_factory=list)
    redo: list[str] = field(default_factory=list)  # documents that must be indexed again
    library: str | None = None
    # kind -> collection name, for kinds whose vectors are all missing (absent or empty collection)
    empty_collections: dict[str, str] = field(default_factory=dict)
    store: str = ""  # "embedded store PATH" or "server URL"
    dense: bool = True  # the index has vectors (CLIP, text model or both)
    clip: bool = True  # ... CLIP/SigLIP ones among them (an index built with `model: null` has not)

    @property
    def ok(self) -> bool:
        return not (
            self.sqlite_problem
            or any(self.orphan_vectors.values())
            or any(self.missing_vectors.values())
            or self.missing_crops
            or self.unused_crops
        )

    def problems(self) -> list[str]:
        out = []
        if self.sqlite_problem:
            out.append(f"{DB_NAME} is damaged: {self.sqlite_problem}")
        for kind, vids in sorted(self.orphan_vectors.items()):
            if vids:
                out.append(f"{len(vids)} {kind} vector(s) in the store that no row names (orphans)")
        for kind, vids in sorted(self.missing_vectors.items()):
            if not vids:
                continue
            refs = [ids.ref_of(kind, v)[0] for v in vids]
            parts = [f"{refs.count(t)} of {t}s" for t in ("passage", "figure") if t in refs]
            where = f" {self.store}" if self.store else " store"
            if kind in self.empty_collections:
                out.append(
                    f"all {len(vids)} {kind} vector(s) missing ({', '.join(parts)}): collection "
                    f"{self.empty_collections[kind]} is absent or empty in the{where}"
                )
            else:
                out.append(f"{len(vids)} {kind} vector(s) missing from the{where} ({', '.join(parts)})")
        if self.missing_crops:
            out.append(f"{len(self.missing_crops)} figure crop file(s) missing")
        if self.unused_crops:
            out.append(f"{len(self.unused_crops)} crop file(s) that no figure uses")
        if self.redo:
            out.append(f"{len(self.redo)} document(s) to index again: {', '.join(self.redo[:5])}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "index_dir": self.index_dir,
            "ok": self.ok,
            "sqlite": self.sqlite_problem or "ok",
            "orphan_vectors": {k: len(v) for k, v in self.orphan_vectors.items()},
            "missing_vectors": {k: len(v) for k, v in self.missing_vectors.items()},
            "empty_collections": sorted(self.empty_collections.values()),
            "missing_crops": len(self.missing_crops),
            "unused_crops": len(self.unused_crops),
            "redo": self.redo,
            "problems": self.problems(),
        }


def _sqlite_problem(db: Path) -> str | None:
    """None when SQLite and FTS5 find the file sound, else the first problem they report (one line)."""
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise ManualragError(f"cannot open {db}: {exc}") from None
    try:
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check(20)").fetchall()]
        if rows != ["ok"]:
            return "; ".join(rows[:3])
        return None
    except sqlite3.DatabaseError as exc:
        if not is_corruption(exc):
            raise ManualragError(f"cannot check {db}: {str(exc).splitlines()[0]}") from None
        return str(exc).splitlines()[0]
    finally:
        conn.close()


def _salvage_meta(db: Path) -> tuple[str | None, dict[str, Any] | None]:
    """The library path and the models the index was built with, read from a damaged file where its meta
    table can still be read (else None: unknown)."""
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        finally:
            conn.close()
        library = json.loads(meta["library"]) if "library" in meta else None
        models = json.loads(meta.get("models", "null")) or {}
        return (library if isinstance(library, str) else None), (models if "models" in meta else None)
    except (sqlite3.Error, ValueError, TypeError, AttributeError):
        return None, None


def check_index(index_dir: Path | str, cfg: dict[str, Any]) -> CheckReport:
    from manualrag.store import VectorStore

    idir = Path(index_dir)
    db = Index.require(idir).db
    report = CheckReport(index_dir=str(idir))
    report.sqlite_problem = _sqlite_problem(db)
    if report.sqlite_problem:
        report.library, models = _salvage_meta(db)
        if models is not None:
            report.clip = bool(models.get("clip"))
            report.dense = report.clip or bool(models.get("text"))
            return report
        store = VectorStore.open(idir, cfg, create=False)
        try:  # the store still tells whether the index had CLIP vectors
            report.dense = report.clip = store.get("text") is not None
        finally:
            store.close()
        return report
    from manualrag.indexer.pipeline import figure_sem_text

    with Manifest(db, readonly=True) as m:
        report.library = m.get_meta("library")
        models = m.get_meta("models") or {}
        report.clip = bool(models.get("clip"))
        report.dense = report.clip or bool(models.get("text"))
        need: dict[str, dict[str, str]] = {k: {} for k in KINDS}  # kind -> id -> document
        allowed = m.all_vector_ids()
        with m.read_snapshot():
            # the models each document was embedded with (a document without a row: the index's models)
            built = {
                r["path"]: (r["clip_model"], r["text_model"])
                for r in m._query("SELECT path, clip_model, text_model FROM documents")
            }
            for r in m._query("SELECT id, doc_path, channel FROM windows"):
                need["text" if r["channel"] == "clip" else "sem"][r["id"]] = r["doc_path"]
            figures = [_figure_row(r) for r in m._query("SELECT * FROM figures")]
    default = (models.get("clip"), models.get("text"))
    for f in figures:  # the vectors the index run makes of a figure (indexer.pipeline: Indexer._embed)
        if f.boilerplate:
            continue
        clip_model, text_model = built.get(f.doc_path, default)
        if clip_model:
            need["image"][f.figure_id] = f.doc_path
            if f.label_text.strip():
                need["image_text"][ids.figure_label_id(f.figure_id)] = f.doc_path
        if text_model:
            if figure_sem_text(f):
                need["sem"][ids.figure_sem_id(f.figure_id)] = f.doc_path
            if f.caption.strip():
                need["sem"][ids.figure_caption_id(f.figure_id)] = f.doc_path
    store = VectorStore.open(idir, cfg, create=False)
    try:
        present = {kind: set(store.all_ids(kind)) for kind in KINDS}
        report.store = store.where
        names = {kind: store.name(kind) for kind in KINDS}
    finally:
        store.close()
    redo: set[str] = set()
    for kind in KINDS:
        report.orphan_vectors[kind] = sorted(present[kind] - allowed[kind])
        # every vector a row needs, whether or not its collection exists: a deleted store folder, an
        # emptied collection or a reset server leaves all of them missing
        missing = sorted(set(need[kind]) - present[kind])
        report.missing_vectors[kind] = missing
        if missing and not present[kind]:
            report.empty_collections[kind] = names[kind]
        redo.update(need[kind][i] for i in missing)
    used = set()
    for f in figures:
        if f.crop_path:
            used.add(f.crop_path)
            if not (idir / f.crop_path).is_file():
                report.missing_crops.append(f.crop_path)
                redo.add(f.doc_path)
    crops = IndexLayout(idir).crops
    if crops.is_dir():
        report.unused_crops = sorted(
            f"{CROPS_DIR}/{f.name}"
            for f in crops.iterdir()
            if f.is_file() and f"{CROPS_DIR}/{f.name}" not in used
        )
    report.redo = sorted(redo)
    return report


def repair_index(
    index_dir: Path | str,
    cfg: dict[str, Any],
    report: CheckReport,
    library: Path | None,
    dense: bool | None = None,
    progress: bool = False,
) -> Any:
    """Fix what ``report`` found, then index the library (returns the index run's Summary)."""
    from manualrag.indexer.pipeline import Indexer
    from manualrag.lock import IndexLock
    from manualrag.store import VectorStore

    idir = Path(index_dir)
    lib = library or (Path(report.library) if report.library else None)
    if lib is None:
        raise ManualragError(
            f"cannot tell which library {idir} was built from ({DB_NAME} is unreadable): "
            "give it with --library PATH"
        )
    if not lib.is_dir():
        raise ManualragError(f"library folder not found: {lib} (give the right one with --library PATH)")
    dense = report.dense if dense is None else dense
    if dense and not report.clip:  # rebuilt as it was built: without CLIP vectors
        cfg = {**cfg, "model": None}
    # ...and with the extraction settings it was built with: only what is broken is extracted again
    recorded, _ = recorded_config(idir)
    if recorded is not None:
        cfg = with_extraction_settings(cfg, recorded)
    # the library it was built from, or the one --library names: rebuilt from it as it is now
    indexer = Indexer(cfg, idir, dense=dense, progress=progress, replace_library=True)
    if dense:
        indexer._load_models()  # an unavailable model fails here, before anything is moved or deleted
    if report.sqlite_problem:
        with IndexLock(idir):
            db = IndexLayout(idir).db
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            for suffix in ("", "-wal", "-shm"):
                src = db.with_name(db.name + suffix)
                if src.exists():
                    src.rename(src.with_name(f"{src.name}.damaged-{stamp}"))
            store = VectorStore.open(idir, cfg)
            try:
                store.drop_all()  # which vectors are whose is unknown now: all are rebuilt
            finally:
                store.close()
    else:
        with Index.open(idir, cfg, write=True) as index:
            for kind, vids in report.orphan_vectors.items():
                if vids:
                    index.store.delete(kind, vids)
            for path in report.redo:
                index.remove_document(path)
            for rel in report.unused_crops:
                (idir / rel).unlink(missing_ok=True)
    return indexer.run(lib)


def repair_outcome(repair: dict[str, Any], after: dict[str, Any], added: list[str]) -> str:
    """The line ``check --repair`` prints after its index run: ``repair`` is the run's summary as a dict,
    ``after`` the check made after it, ``added`` the library files the run indexed that the index did not
    hold before. Files that failed leave the index's structure sound but are not in it (exit code 1): the
    line says both, where it said "N failed; the index is now sound" and read as a success."""
    docs = repair["documents"]
    also = (
        f" (and {len(added)} file(s) of the library the index did not hold, e.g. {added[0]}: an index"
        " run adds back what `manualrag remove` dropped)"
        if added
        else ""
    )
    done = f"repaired: {docs['indexed'] - len(added)} document(s) indexed again{also}"
    failed = docs["failed"]
    if not after["ok"]:
        return f"{done}, {failed} failed; the index is still inconsistent: " + "; ".join(after["problems"])
    if not failed:
        return f"{done}, 0 failed; the index is now sound"
    return (
        f"{done}, {failed} failed: the index structure is sound again, but {failed} file(s) could not be"
        " indexed (each listed below with its reason; the next `manualrag index` retries one when it"
        " changes, or with --retry-failed)"
    )
