"""The index folder: its layout (the one place that names its files) and the operations on it as a whole.

Layout of an index folder::

    index.sqlite (+ -wal, -shm)   the manifest: documents, passages, windows, figures, lexical index
    chroma/                       the embedded vector store (absent with a Chroma server)
    crops/<digest>.png            figure crops, named by content digest
    ocr_cache.sqlite              OCR results by image digest (unless ``ocr.cache`` points elsewhere)
    config.json                   the public config of the last index run
    lock                          the writer lock (:mod:`manualrag.lock`)

:class:`Index` opens the manifest and the store together (or the store on first use, ``open_store=False``:
an index run that writes no vectors never imports chromadb): read-only for queries, or as the one writer
(the lock held for as long as it is open). The write order that keeps the index consistent through a
crash is stated in docs/reliability.md ("Write order"); :meth:`Index.remove_document` and
:meth:`Index.flush_pending` are its delete half.

Heavy modules (chromadb) are imported only when a store is opened, so the worker processes and
``manualrag --help`` can import this module cheaply.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import json
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from manualrag.errors import IndexNotFoundError, StoreError, shell_arg
from manualrag.ids import printable_name
from manualrag.lock import LOCK_NAME, IndexLock

if TYPE_CHECKING:
    from manualrag.manifest import Manifest
    from manualrag.store import LazyStore, VectorStore

DB_NAME = "index.sqlite"
CHROMA_DIR = "chroma"
CROPS_DIR = "crops"
OCR_CACHE_NAME = "ocr_cache.sqlite"
CONFIG_NAME = "config.json"
VECTOR_KINDS = ("text", "image", "image_text", "sem")


@dataclass(frozen=True)
class IndexLayout:
    """Where each part of an index folder lives."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / DB_NAME

    @property
    def chroma(self) -> Path:
        return self.root / CHROMA_DIR

    @property
    def crops(self) -> Path:
        return self.root / CROPS_DIR

    @property
    def ocr_cache(self) -> Path:
        return self.root / OCR_CACHE_NAME

    @property
    def config(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def lock(self) -> Path:
        return self.root / LOCK_NAME

    @staticmethod
    def holds_index(folder: Path | str) -> bool:
        """True when ``folder`` is an index folder: it holds a manifest (an SQLite file named as ours).

        Discovery skips such folders wherever they lie in a library: their crops are not manuals."""
        try:
            with open(Path(folder) / DB_NAME, "rb") as f:
                return f.read(16) == b"SQLite format 3\x00"
        except OSError:
            return False

    @staticmethod
    def crop_rel(digest: str) -> str:
        """A crop's path relative to the index folder (what figure rows store)."""
        return f"{CROPS_DIR}/{digest}.png"

    def ocr_cache_files(self) -> list[Path]:
        """The OCR cache database and its SQLite side files (WAL mode leaves ``-wal`` and ``-shm``)."""
        cache = self.ocr_cache
        return [cache, cache.with_name(cache.name + "-wal"), cache.with_name(cache.name + "-shm")]

    def reset_files(self) -> list[Path]:
        """Files and folders ``reset`` deletes (never the lock, never anything else in the folder)."""
        db = self.db
        return [
            db,
            db.with_name(db.name + "-wal"),
            db.with_name(db.name + "-shm"),
            self.config,
            *self.ocr_cache_files(),
            self.crops,
            self.chroma,
        ]


def _read_meta(db: Path, key: str) -> Any:
    """One value of the manifest's meta table, read without opening the manifest (None if not there)."""
    if not db.is_file():
        return None
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        finally:
            conn.close()
        return json.loads(row[0]) if row else None
    except (sqlite3.Error, ValueError, TypeError):
        return None


def recorded_models(root: Path | str) -> dict[str, str | None] | None:
    """The models the index in ``root`` was built with, ``{"clip": id or None, "text": id or None}`` (None:
    built without that model), or None when there is no such index (yet)."""
    models = _read_meta(IndexLayout(Path(root)).db, "models")
    if not isinstance(models, dict):
        return None
    return {
        role: (v if isinstance(v, str) and v else None)
        for role, v in models.items()
        if role in ("clip", "text")
    }


def recorded_config(root: Path | str) -> tuple[dict[str, Any] | None, str]:
    """The config the last index run in ``root`` saved (secrets masked) and the file that holds it: its
    ``config.json``, else the config its manifest records (a published copy may hold only
    ``index.sqlite``); None when neither has one."""
    layout = IndexLayout(Path(root))
    try:
        saved = json.loads(layout.config.read_text(encoding="utf-8"))
        source = CONFIG_NAME
    except (OSError, ValueError):
        saved, source = _read_meta(layout.db, "config"), DB_NAME
    return (saved if isinstance(saved, dict) else None), source


def recorded_store_url(root: Path | str) -> tuple[str, str] | None:
    """The Chroma server URL the index in ``root`` was last built against and the file that says so (see
    ``recorded_config``), or None (embedded)."""
    saved, source = recorded_config(root)
    store = saved.get("store") if isinstance(saved, dict) else None
    url = store.get("url") if isinstance(store, dict) else None
    return (url, source) if isinstance(url, str) and url.strip() else None


def require_same_store(root: Path | str, cfg: dict[str, Any]) -> None:
    """Refuse to open the index in ``root`` with the embedded store when it was built against a Chroma
    server: its vectors are there, and an embedded store would be created empty inside the folder (a
    query would quietly answer from keywords only, ``check`` would find nothing wrong)."""
    if cfg["store"].get("url"):
        return
    recorded = recorded_store_url(root)
    if recorded:
        url, source = recorded
        raise StoreError(
            f"the vectors of the index in {root} live on the Chroma server {url} (its {source} says so): "
            f"pass --store {shell_arg(url)} (or a --config whose store.url names it, with its store.headers)"
        )


class Index:
    """An open index: its manifest and vector store, read-only or as the one writer.

    ``Index.open(root, cfg)`` for reading (the folder must hold an index), ``Index.open(root, cfg,
    write=True)`` for writing (creates the folder, takes the lock, and first deletes the vectors a stopped
    run left pending). Use as a context manager or call :meth:`close`.
    """

    def __init__(self, root: Path | str, cfg: dict[str, Any], manifest: Manifest, store: LazyStore):
        self.layout = IndexLayout(Path(root))
        self.cfg = cfg
        self.manifest = manifest
        self._store = store
        self._lock: IndexLock | None = None

    @property
    def store(self) -> VectorStore:
        """The vector store, opened on first use when the index was opened with ``open_store=False``."""
        return self._store.open()

    def close_store(self) -> None:
        """Close the vector store if it was opened (never opens it)."""
        self._store.close()

    @property
    def root(self) -> Path:
        return self.layout.root

    # ------------------------------------------------------------------------------------------ opening
    @staticmethod
    def require(root: Path | str) -> IndexLayout:
        """The layout of ``root``, which must hold an index (else IndexNotFoundError)."""
        layout = IndexLayout(Path(root))
        if not layout.db.is_file():
            # a relative default (data/index) is read from the current folder: say which folder that was
            where = "" if layout.root.is_absolute() else f", that is {layout.root.absolute()}"
            raise IndexNotFoundError(
                f"no index in {layout.root} (missing {DB_NAME}{where}); build one with "
                f"`manualrag index LIBRARY --index-dir {shell_arg(layout.root)}`, or name an existing index "
                "with --index-dir or MANUALRAG_INDEX_DIR"
            )
        return layout

    @classmethod
    def open(
        cls, root: Path | str, cfg: dict[str, Any], write: bool = False, open_store: bool = True
    ) -> Index:
        """``open_store=False``: the vector store (``chromadb``, ~1-1.6 s to import) is opened on first use of
        :attr:`store` instead, so a run that writes and deletes no vectors (``--no-dense`` on an index
        without vectors) never imports it, and one that does can open it while its workers extract."""
        from manualrag.manifest import Manifest
        from manualrag.store import LazyStore

        layout = IndexLayout(Path(root))
        require_same_store(layout.root, cfg)
        lock: IndexLock | None = None
        if write:
            layout.root.mkdir(parents=True, exist_ok=True)
            lock = IndexLock(layout.root).acquire()
        else:
            cls.require(layout.root)
        manifest: Manifest | None = None
        store = LazyStore(layout.root, cfg, create=write)
        try:
            manifest = Manifest(layout.db, readonly=not write)
            if open_store:
                store.open()
            elif write and not cfg["store"]["url"]:
                layout.chroma.mkdir(exist_ok=True)  # the folder's layout does not depend on when it opens
        except BaseException:
            if manifest is not None:
                manifest.close()
            if lock is not None:
                lock.release()
            raise
        index = cls(layout.root, cfg, manifest, store)
        index._lock = lock
        if write:
            try:
                index.flush_pending()  # left by a run that stopped before deleting them
            except BaseException:
                index.close()
                raise
        return index

    def close(self) -> None:
        try:
            self.close_store()
        finally:
            try:
                self.manifest.close()
            finally:
                if self._lock is not None:
                    self._lock.release()
                    self._lock = None

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------------------------- read
    def stats(self) -> dict[str, Any]:
        """What ``manualrag stats`` shows: documents, pages, records by kind, models, size on disk."""
        return describe(self.root, self.cfg, self.manifest, self.store, folder_size(self.root))

    # -------------------------------------------------------------------------------------------- write
    def flush_pending(self) -> None:
        """Delete superseded vectors from the store, then forget them (a crash in between only repeats a
        harmless delete on the next run)."""
        for kind, vids in self.manifest.pending_deletes().items():
            self.store.delete(kind, vids)
            self.manifest.clear_pending(kind, vids)

    def remove_document(self, path: str) -> None:
        """Forget one document: its documents row first (so a crash means "redo"), then its vectors, then
        its other rows."""
        self.manifest.begin_document(path)
        for kind, vids in self.manifest.vector_ids(path).items():
            if vids:
                self.store.delete(kind, vids)
        self.manifest.remove_document(path)

    def prune_crops(self) -> None:
        """Delete crop files no figure row uses."""
        crops = self.layout.crops
        if not crops.is_dir():
            return
        keep = self.manifest.crop_paths()
        for f in crops.iterdir():
            if f"{CROPS_DIR}/{f.name}" not in keep:
                f.unlink(missing_ok=True)

    def remove(self, paths: list[str], unmatched: list[str] | None = None) -> list[str]:
        """Remove documents (library-relative paths or folders, or paths inside the indexed library) and
        their crops; returns the removed library-relative paths. The given paths that name no indexed
        document are appended to ``unmatched`` when one is passed."""
        library = self.manifest.get_meta("library")
        removed: list[str] = []
        known = self.manifest.documents()
        failed = self.manifest.errors()  # a file that failed: its entry goes (stats lists it no more)
        for p in paths:
            rel = printable_name(library_relative(p, library).strip("/"))  # as the shell gives it
            hits = [k for k in [*known, *failed] if k == rel or k.startswith(rel + "/")]
            if not hits and unmatched is not None:
                unmatched.append(p)
            for k in hits:
                if k not in removed:
                    if k in known:
                        self.remove_document(k)
                    else:
                        self.manifest.clear_error(k)
                    removed.append(k)
        self.prune_crops()
        self.drop_precision_without_vectors()
        return removed

    def drop_precision_without_vectors(self) -> None:
        """The ``precision`` and ``channel_weights`` metas describe the index's vectors: they go with the
        last of them, so an index emptied by updates or ``remove`` equals a fresh index of what it holds."""
        if not self.manifest.has_vector_records():
            self.manifest.delete_meta("precision")
            self.manifest.delete_meta("channel_weights")
            self.manifest.delete_meta("vector_identity")  # indexer/reuse.py

    @staticmethod
    def reset(root: Path | str, cfg: dict[str, Any]) -> bool:
        """Delete the whole index (vectors, manifest, lexical index, crops, OCR cache) under the lock;
        False, deleting nothing, when ``root`` holds no index (no such folder, or a folder without a
        manifest: a user's folder named by mistake keeps its ``config.json`` and ``crops/``).

        An OCR cache that ``ocr.cache`` names is the user's, kept even when it lies in the folder."""
        from manualrag.store import VectorStore

        layout = IndexLayout(Path(root))
        if not IndexLayout.holds_index(layout.root):
            return False
        keep: set[Path] = set()
        if cfg["ocr"]["cache"] and Path(cfg["ocr"]["cache"]).resolve() == layout.ocr_cache.resolve():
            keep = set(layout.ocr_cache_files())
        with IndexLock(layout.root):
            if not IndexLayout.holds_index(layout.root):  # deleted meanwhile by another reset
                return False
            store = VectorStore.open(layout.root, cfg)
            try:
                store.drop_all()
            finally:
                store.close()
            for p in layout.reset_files():
                if p in keep:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # left empty: it goes too (a user's own files in it keep it)
            layout.root.rmdir()
        return True


def describe(
    root: Path, cfg: dict[str, Any], manifest: Manifest, store: VectorStore, size_bytes: int
) -> dict[str, Any]:
    """The stats of an open index (``manualrag stats --json``, the server's /api/stats)."""
    with manifest.read_snapshot():
        st = manifest.stats()
        models = manifest.get_meta("models") or {}
        precision = manifest.get_meta("precision") or {}
        channel_weights = (manifest.get_meta("channel_weights") or {}).get("channels") or {}
        library = manifest.get_meta("library")
        failed = [{"path": e.path, "reason": e.reason} for e in manifest.errors().values()]
    vectors = {kind: store.count(kind) for kind in VECTOR_KINDS}
    dims = {kind: store.model_of(kind) for kind in ("text", "sem")}
    return {
        "index_dir": str(root),
        "library": library,
        **st,
        "vectors": vectors,
        "model": models.get("clip"),
        "dim": (dims["text"] or (None, None))[1],
        "text_model": models.get("text"),
        "text_dim": (dims["sem"] or (None, None))[1],
        # the dtype each model resolved to when the index was last written (dtype: auto may pick bf16)
        "precision": {role: p.get("dtype") for role, p in precision.items()},
        # each vector channel's test on the library: its weight factor (manualrag/channel_weights.py)
        "channel_weights": channel_weights,
        "store": cfg["store"]["url"] or "embedded",
        "size_bytes": size_bytes,
        # the files the last index runs could not read, and why (``errors`` counts them)
        "failed": failed,
    }


def folder_size(folder: Path) -> int:
    """Bytes of the files under ``folder`` (a file an index run removes meanwhile is skipped)."""
    total = 0
    for f in folder.rglob("*"):
        try:
            if f.is_file():
                total += f.stat().st_size
        except OSError:
            continue
    return total


def library_relative(path: str, library: str | None) -> str:
    """A path the user gave, as the library-relative POSIX path the manifest uses: absolute paths and
    paths that exist inside the library are made relative to it; anything else is taken as relative to the
    library, without its ``.`` parts and empty ones (``./a//b.pdf`` is ``a/b.pdf``)."""
    p = Path(path)
    if library and (p.is_absolute() or (p.exists() and Path(library) in p.resolve().parents)):
        try:
            return p.resolve().relative_to(Path(library)).as_posix()
        except ValueError:
            pass
    return "/".join(part for part in path.split("/") if part not in ("", "."))


def glob_match(path: str, pattern: str) -> bool:
    """``path`` (relative, POSIX) matches the glob ``pattern``, or its file name does. As in the usual glob
    convention, ``**/`` also stands for no folder at all: ``**/*.pdf`` matches ``pump.pdf`` at the library
    root as well as ``a/b/pump.pdf`` (fnmatch alone requires a ``/`` there). A folder (``drafts``,
    ``drafts/``, ``./old/scans``) matches every file under it; a leading ``./`` is the library itself."""
    pattern = pattern.strip()
    while pattern.startswith("./"):
        pattern = pattern[2:]
    folder = pattern.rstrip("/")
    if folder and not any(c in folder for c in "*?[") and path.startswith(folder + "/"):
        return True
    if pattern.endswith("/"):
        pattern += "**"
    name = Path(path).name
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(name, p) for p in _zero_folder_variants(pattern))


@functools.lru_cache(maxsize=64)
def _zero_folder_variants(pattern: str, limit: int = 64) -> tuple[str, ...]:
    """``pattern`` and the patterns where any of its ``**/`` match no folder (each dropped or kept)."""
    out, todo = [pattern], [pattern]
    while todo and len(out) < limit:
        p = todo.pop()
        start = 0
        while (i := p.find("**/", start)) >= 0:
            q = p[:i] + p[i + 3 :]
            if q not in out:
                out.append(q)
                todo.append(q)
            start = i + 3
    return tuple(out)
