"""`manualrag index`: discover -> extract -> chunk -> embed -> store -> manifest, incrementally.

Per document: extract (in worker processes), chunk, embed (before anything in the index changes, so a model
error leaves the old version intact), then write in the order of the write-order contract in
docs/reliability.md ("Write order"): documents row out, vectors upserted, rows swapped in one transaction
(recording the superseded vector ids as pending deletes), documents row in, superseded vectors deleted.
Readers see each document whole, before or after its rows switch. The index folder, its lock and the
delete half of the contract belong to :class:`manualrag.index.Index`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from manualrag import channel_weights, ids
from manualrag.config import extraction_fingerprint, public_config, settings_changes
from manualrag.errors import ManualragError, NonFiniteVectorsError
from manualrag.ids import file_digest
from manualrag.index import Index, IndexLayout
from manualrag.indexer import budget, reuse
from manualrag.indexer.chunk import make_passages, make_windows
from manualrag.indexer.discover import (
    IMAGE_SUFFIXES,
    PDF_SUFFIXES,
    TEXT_SUFFIXES,
    SourceFile,
    discover,
)
from manualrag.indexer.reuse import figure_sem_text  # (check.py imports it from here)
from manualrag.lock import IndexLock, make_index_folder
from manualrag.manifest import DocRow, Manifest
from manualrag.models import Document, Figure, FileError, Passage, Window
from manualrag.store import VectorStore, embedded_may_hold

if TYPE_CHECKING:
    from manualrag.encoder import ClipEncoder, TextEncoder

log = logging.getLogger(__name__)

TMP_DIR = ".tmp"  # the run's private temporary files (workers' TMPDIR)
# appended to the failure line of a document whose indexed version was removed because the file as it now
# is cannot be read (else "0 removed, 1 failed" leaves the user thinking the old version is still searchable)
PREVIOUS_REMOVED = "; its previous version was removed from the index"


def in_shard(rel: str, shard: tuple[int, int]) -> bool:
    """Documents are partitioned across indexer machines by the sha256 of their library-relative path."""
    i, n = shard
    return n == 1 or int(hashlib.sha256(rel.encode()).hexdigest()[:12], 16) % n == i


def _dtypes(meta: dict[str, str] | None) -> set[str]:
    """The dtypes a stored precision entry names ("bfloat16 + float32" -> both)."""
    return set(str((meta or {}).get("dtype") or "").split(" + ")) - {""}


def _stored_precision(
    precision: dict[str, dict[str, str]], before: dict[str, dict[str, str]] | None = None
) -> dict[str, dict[str, str]]:
    """The index's ``precision`` meta: each model's id and dtype (the reasons carry timings: shown, not
    stored). ``before``: the meta of vectors the index keeps beside this run's; a model's vectors in two
    float dtypes are stored as both ("bfloat16 + float32"), so ``stats`` does not name only the last."""
    out = {}
    for role, p in precision.items():
        dtypes = {p["dtype"]}
        old = (before or {}).get(role)
        if old and old.get("model") == p["model"]:
            dtypes |= _dtypes(old)
        out[role] = {"model": p["model"], "dtype": " + ".join(sorted(dtypes))}
    return out


def _kept_precision(
    kept: list[DocRow], meta: dict[str, dict[str, str]] | None
) -> dict[str, dict[str, str]] | None:
    """The precision of the vectors of the documents a run keeps, as the ``precision`` meta writes it: from
    the documents' own records (DocRow.vector_identity names each model and dtype), so a dtype no document
    has any more is no longer named; ``meta``, the index's record, when one of them has none (indexed
    before documents recorded it, or without vectors)."""
    if not kept:
        return None
    found: dict[str, tuple[str, set[str]]] = {}
    for row in kept:
        if row.vector_identity is None:
            return meta
        for role, idents in row.vector_identity.items():
            for ident in idents:
                made = json.loads(ident)
                found.setdefault(role, (made["model"], set()))[1].add(made["dtype"])
    return {role: {"model": model, "dtype": " + ".join(sorted(d))} for role, (model, d) in found.items()}


def _check_precision(precision: dict[str, dict[str, str]], before: dict[str, dict[str, str]] | None) -> None:
    """An index keeps one precision per model where int8 is involved: an int8 vector depends on the texts
    batched with it and drifts from float32 (all-MiniLM-L6-v2: cosine 0.81), so int8 vectors and float ones
    would rank against each other unfairly. float32, bfloat16 and float16 vectors of one model may mix
    (``auto`` keeps bfloat16 only where it stays within cosine 0.995 of float32)."""
    for role, p in precision.items():
        old = (before or {}).get(role)
        if not old or old.get("model") != p["model"]:
            continue
        had = _dtypes(old)
        if had and had != {p["dtype"]} and "int8" in had | {p["dtype"]}:
            raise ManualragError(
                f"this index's {role} vectors ({p['model']}) are {' + '.join(sorted(had))} and this run would"
                f" embed in {p['dtype']}: int8 vectors do not mix with others; update it with"
                f" --dtype {' + '.join(sorted(had))}, or build a new index (--index-dir) in {p['dtype']}"
            )


@dataclass
class Summary:
    library: str
    index_dir: str
    indexed: list[str] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    failed: list[FileError] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)  # the first few paths per reason
    records: Counter = field(default_factory=Counter)  # written this run, by kind
    embedded: Counter = field(default_factory=Counter)  # model inputs this run: texts, images, sem
    # vectors taken from the index instead (a document's old version: indexer/reuse.py), by the same keys
    reused: Counter = field(default_factory=Counter)
    pages: int = 0
    figures: int = 0
    timings: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))  # s per stage
    # per model role ("clip", "text"): {"model", "dtype", "reason"} as resolved (or fallen back) this run
    precision: dict[str, dict[str, str]] = field(default_factory=dict)
    # each vector channel's test on the library (manualrag/channel_weights.py) as the index now stands
    channel_weights: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: str | None = None
    text_model: str | None = None
    dense: bool = True
    warnings: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    interrupted: str | None = None  # "SIGINT" / "SIGTERM": the run stopped there (what it committed is kept)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 143 if self.interrupted == "SIGTERM" else 130
        return 1 if self.failed else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "library": self.library,
            "index_dir": self.index_dir,
            "documents": {
                "indexed": len(self.indexed),
                "unchanged": self.unchanged,
                "removed": len(self.removed),
                "failed": len(self.failed),
            },
            "indexed": self.indexed,
            "removed": self.removed,
            "failed": [{"path": f.path, "reason": f.reason, "stage": f.stage} for f in self.failed],
            "skipped": dict(self.skipped),
            "skipped_examples": dict(self.skipped_examples),
            "pages": self.pages,
            "figures": self.figures,
            "records": dict(self.records),
            "embedded": dict(self.embedded),
            "reused": dict(self.reused),
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "wall_s": round(self.wall_s, 3),
            "model": self.model,
            "text_model": self.text_model,
            "precision": self.precision,
            "channel_weights": self.channel_weights,
            "dense": self.dense,
            "warnings": self.warnings,
            "interrupted": self.interrupted,
            "exit_code": self.exit_code,
        }


@dataclass
class Records:
    """What the store gets for one kind of a document: ids, vectors, metadata and texts, aligned."""

    ids: list[str]
    embeddings: np.ndarray
    metas: list[dict[str, Any]]
    docs: list[str]


class _Timer:
    def __init__(self, timings: dict[str, float], stage: str):
        self.timings, self.stage = timings, stage

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.stage] += time.perf_counter() - self.t0


class Indexer:
    """Builds or updates an index folder from a library folder."""

    def __init__(
        self,
        cfg: dict[str, Any],
        index_dir: Path | str,
        dense: bool = True,
        progress: bool = False,
        shard: tuple[int, int] = (0, 1),
        retry_failed: bool = False,
        replace_library: bool = False,
    ):
        self.cfg = cfg
        self.retry_failed = retry_failed
        # one library per index: a run over another folder that lacks some of the index's documents is
        # refused (they would be removed) unless this says to replace the library
        self.replace_library = replace_library
        self.shard = shard
        self.index_dir = Path(index_dir)
        # dense: this run makes vectors. Which: the CLIP/SigLIP ones unless ``model`` is null (then the text
        # model alone embeds passages and figure texts), the text model's unless ``text_model`` is null
        self.dense = dense and bool(cfg["model"] or cfg["text_model"])
        self.progress = progress
        self._tmp_dir: Path | None = None
        self._clip: ClipEncoder | None = None
        self._text: TextEncoder | None = None
        from manualrag.encoder import model_id_for

        self._want_clip = model_id_for(cfg["model"]) if cfg["model"] else None
        self._want_text = model_id_for(cfg["text_model"]) if cfg["text_model"] else None
        # stored vectors of a document's old version are reused for its unchanged inputs (indexer/reuse.py)
        self.reuse_vectors = bool((cfg.get("index") or {}).get("reuse_vectors", True))
        # role -> this run's vector identity, when its vectors may be reused (reuse.reusable)
        self._reuse_from: dict[str, str] = {}
        # role -> the one identity of the index's vectors as the index recorded it before this run (None:
        # mixed or unknown): what a document indexed before documents recorded their own goes by
        self._index_identity: dict[str, str | None] = {}
        self._reuse_ahead: dict[str, dict[reuse.Key, np.ndarray]] = {}  # renamed document -> its old vectors
        # documents committed when the run began: only their rows name the vectors the store holds for them
        # (a document whose write was cut short may have new vectors under its old rows' ids)
        self._committed: set[str] = set()

    # ------------------------------------------------------------------------------------------ models
    @property
    def clip(self) -> ClipEncoder:
        """The CLIP/SigLIP encoder (loaded by ``_load_models`` before anything is embedded)."""
        if self._clip is None:
            raise ManualragError("internal error: the CLIP model is used before it was loaded")
        return self._clip

    def _load_models(self, built_with: dict[str, Any] | None = None) -> None:
        """Load the encoders this run embeds with. ``built_with``: the models the index was built with; a
        model that cannot be loaded for an index built without it says how to go on without it."""
        from manualrag.encoder import ClipEncoder, TextEncoder

        c = self.cfg
        for role, flag, key in (("clip", "--model", "model"), ("text", "--text-model", "text_model")):
            if getattr(self, f"_{role}") is not None or not c[key]:
                continue
            cls = ClipEncoder if role == "clip" else TextEncoder
            try:
                enc = cls.load(c[key], device=c["device"], dtype=c["dtype"], batch_size=c["batch_size"])
            except ManualragError as exc:
                if built_with is None or built_with.get(role):
                    raise
                raise ManualragError(
                    f"this index was built without a {'CLIP' if role == 'clip' else 'text'} model: add {flag}"
                    f" none (or {key}: null in the config) to update it the same way. {exc}"
                ) from None
            setattr(self, f"_{role}", enc)

    def _identities(self) -> dict[str, str]:
        """Each loaded model's vector identity (indexer/reuse.py) as it is now."""
        return {
            role: reuse.identity(enc)
            for role, enc in (("clip", self._clip), ("text", self._text))
            if enc is not None
        }

    def _precision(self) -> dict[str, dict[str, str]]:
        """Each loaded model's dtype as it ended the run (a float32 fallback after NaN shows here)."""
        return {
            role: {"model": enc.model_id, "dtype": enc.dtype_name, "reason": enc.dtype_reason}
            for role, enc in (("clip", self._clip), ("text", self._text))
            if enc is not None
        }

    # --------------------------------------------------------------------------------------------- run
    def run(self, library: Path | str) -> Summary:
        library = Path(library)
        if not library.is_dir():
            raise ManualragError(f"library folder not found: {library}")
        t_start = time.perf_counter()
        existed = self.index_dir.exists()
        fresh = not IndexLayout(self.index_dir).db.exists()
        make_index_folder(self.index_dir)
        summary = Summary(library=str(library), index_dir=str(self.index_dir), dense=self.dense)
        skeleton_removed = False
        try:
            try:
                # the vector store opens once the workers extract (dense), or when vectors must go (--no-dense)
                index = Index.open(self.index_dir, self.cfg, write=True, open_store=False)
            except BaseException:
                if fresh:  # e.g. a dead store: what the attempt created goes, under the lock
                    with contextlib.suppress(ManualragError), IndexLock(self.index_dir):
                        if not self._has_records():
                            self._remove_skeleton()
                            skeleton_removed = True
                raise
            try:
                with self._private_tmp():
                    self._run_locked(library, index, summary)
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):  # Ctrl-C / SIGTERM: the CLI says what is kept
                    exc.indexed = len(summary.indexed)  # type: ignore[attr-defined]
                    summary.wall_s = time.perf_counter() - t_start
                    exc.summary = summary  # type: ignore[attr-defined]  # for `index --json`
                    # crops the workers wrote for documents not committed (the pool is closed by now):
                    # else `check` calls the index inconsistent until the next run
                    with contextlib.suppress(Exception):
                        index.prune_crops()
                # a first run that fails before it records anything (a model that cannot load, a device
                # that is not there) leaves nothing behind: no index skeleton
                if fresh and not (summary.indexed or summary.failed or summary.removed):
                    index.close_store()
                    index.manifest.close()
                    self._remove_skeleton()  # still under the lock: index.close() releases it below
                    skeleton_removed = True
                raise
            finally:
                with contextlib.suppress(ManualragError):
                    if not skeleton_removed:
                        index.manifest.delete_meta("run")  # readers stop saying "being built"
                index.close()
        finally:
            if skeleton_removed and not existed:
                with contextlib.suppress(OSError):
                    self.index_dir.rmdir()  # only when empty: nothing of anyone else's is removed
        summary.wall_s = time.perf_counter() - t_start
        return summary

    def _has_records(self) -> bool:
        """Whether the index folder's manifest names any document or error (False when there is none)."""
        db = IndexLayout(self.index_dir).db
        if not db.is_file():
            return False
        try:
            with Manifest(db, readonly=True) as m:
                return bool(m.documents() or m.errors())
        except ManualragError:
            return True  # cannot tell: keep it

    def _remove_skeleton(self) -> None:
        """Delete what a first run created in the index folder (the caller holds the lock)."""
        layout = IndexLayout(self.index_dir)
        for p in layout.reset_files() + [self.index_dir / TMP_DIR]:
            if p in layout.ocr_cache_files() and self.cfg["ocr"]["cache"]:
                continue
            if p == layout.chroma and self.cfg["store"]["url"]:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
                for suffix in ("-wal", "-shm"):
                    Path(f"{p}{suffix}").unlink(missing_ok=True)

    @contextlib.contextmanager
    def _private_tmp(self) -> Iterator[None]:
        """A private (0700) temporary folder for this run's workers (tesseract writes renders of the
        manual's pages there), removed at the end; what a killed run left behind is swept here first (the
        caller holds the index lock, so no other run is using it)."""
        root = self.index_dir / TMP_DIR
        shutil.rmtree(root, ignore_errors=True)
        self._tmp_dir = root / f"run-{os.getpid()}"
        self._tmp_dir.mkdir(parents=True, mode=0o700)
        os.chmod(root, 0o700)
        os.chmod(self._tmp_dir, 0o700)
        try:
            yield
        finally:
            shutil.rmtree(root, ignore_errors=True)
            self._tmp_dir = None

    def _check_same_library(self, manifest: Manifest, library: Path, present: set[str]) -> None:
        """Refuse, before anything changes, a run over another folder than the index's library that lacks
        some of its documents: they would be removed (a user "adding" a folder to the default index, or a
        mistyped library path). A moved library (every document still there) goes on."""
        before = manifest.get_meta("library")
        if self.replace_library or not before or Path(before) == library.resolve():
            return
        held = {p for p in set(manifest.documents()) | manifest.paths_with_rows() if in_shard(p, self.shard)}
        gone = sorted(held - present)
        if gone:
            raise ManualragError(
                f"{self.index_dir} holds the library {before}; {library} lacks {len(gone)} of its "
                f"{len(held)} document(s) (e.g. {gone[0]}), and indexing it there would remove them: index "
                "it into its own folder (--index-dir DIR), or pass --replace-library to replace that library"
            )

    def _check_excludes(
        self,
        manifest: Manifest,
        library: Path,
        found: list[SourceFile],
        excluded_by: dict[str, int],
        summary: Summary,
    ) -> None:
        """A glob of ``exclude`` that leaves out nothing is named (a typo, a path given from elsewhere than
        the library); globs that leave out every file of the library are said so, and refused before
        anything is removed while the index holds documents (``manualrag reset`` empties an index)."""
        for pattern in self.cfg["exclude"]:
            if not excluded_by.get(pattern):
                summary.warnings.append(
                    f"exclude {pattern!r} matches no file of {library} (globs and folders are paths inside "
                    "the library, or file names)"
                )
        if not excluded_by or found:
            return
        held = len(manifest.document_paths())
        if held:
            raise ManualragError(
                f"the exclude globs ({', '.join(repr(p) for p in excluded_by)}) leave out every file of "
                f"{library}: indexing would remove all {held} document(s) of the index; `manualrag reset` "
                "empties an index"
            )
        summary.warnings.append(f"no manuals in {library}: the exclude globs leave out every file")

    def _run_locked(self, library: Path, index: Index, summary: Summary) -> None:
        cfg, timings = self.cfg, summary.timings
        self._reuse_from, self._reuse_ahead, self._committed = {}, {}, set()
        self._index_identity = {}
        manifest = index.manifest
        with _Timer(timings, "discover"):
            other_indexes: list[str] = []
            excluded_by: dict[str, int] = {}
            found, skipped = discover(
                library,
                cfg,
                exclude=[self.index_dir],
                indexes=other_indexes,
                examples=summary.skipped_examples,
                excluded_by=excluded_by,
            )
            files = [f for f in found if in_shard(f.rel, self.shard)]
        summary.skipped = dict(skipped)
        self._check_excludes(manifest, library, found, excluded_by, summary)
        if other_indexes:  # say once why a folder of PNGs inside the library was left out
            summary.warnings.append(
                f"skipped {len(other_indexes)} folder(s) in the library that hold a manualrag index "
                f"({', '.join(other_indexes[:3])}{', ...' if len(other_indexes) > 3 else ''}): "
                "their crops are not manuals"
            )
        self._check_same_library(manifest, library, {f.rel for f in files})
        if not manifest.get_meta("library"):
            # a first run records its library now, not only at its end: one interrupted after some documents
            # leaves an index whose pages can be served and that `check --repair` can rebuild
            manifest.set_meta("library", str(library.resolve()))
        if not found and not excluded_by:  # an empty or wrong folder: say so rather than a quiet "0 indexed"
            suffixes = [*sorted(PDF_SUFFIXES), *sorted(IMAGE_SUFFIXES), *sorted(TEXT_SUFFIXES)]
            summary.warnings.append(
                f"no manuals in {library}: no file with a supported suffix ({' '.join(suffixes)})"
                + ("; see the skipped files" if skipped else "")
            )
        # what a reader says while this run goes on: "the index is being built (N of M documents so far)"
        # ("clip": whether this run makes CLIP vectors, so a reader does not promise them "yet")
        manifest.set_meta(
            "run",
            {
                "pid": os.getpid(),
                "total": len(files),
                "started": time.time(),
                "clip": bool(self.dense and self._want_clip),
            },
        )
        known = manifest.documents()
        self._committed = set(known)
        fp = extraction_fingerprint(cfg)
        # a failure is worth retrying when the file, the extraction settings, the worker's limits or the
        # passwords (an encrypted file) change
        limits = {k: cfg["isolation"][k] for k in ("timeout_s", "memory_mb")}
        retry_when = json.dumps([limits, cfg["passwords"]], sort_keys=True)
        fail_fp = hashlib.sha256(f"{fp}:{retry_when}".encode()).hexdigest()[:16]
        failed_before = {} if self.retry_failed else manifest.failed_versions()
        errors_before = manifest.errors() if failed_before else {}

        lost = self._lost_vectors(index, known, summary)

        # decide what to do with each file
        work: list[tuple[SourceFile, str]] = []
        with _Timer(timings, "fingerprint"):
            for src in files:
                row = known.get(src.rel)
                if row is not None and src.rel not in lost and self._up_to_date(row, src, fp):
                    summary.unchanged += 1
                    continue
                failed = failed_before.get(src.rel)
                if row is None and failed is not None and src.rel in errors_before:
                    size, mtime, failed_fp = failed
                    if size == src.size and abs(mtime - src.mtime) <= 1e-6 and failed_fp == fail_fp:
                        err = errors_before[src.rel]
                        summary.failed.append(
                            FileError(
                                src.rel,
                                f"{err.reason} (unchanged since; --retry-failed tries again)",
                                err.stage,
                            )
                        )
                        continue
                try:
                    digest = file_digest(src.path)
                except OSError as exc:
                    reason = f"cannot read: {exc.strerror or exc}"
                    summary.failed.append(
                        FileError(src.rel, reason + (PREVIOUS_REMOVED if row is not None else ""), "discover")
                    )
                    if row is not None or src.rel in manifest.paths_with_rows():
                        index.remove_document(src.rel)
                    manifest.record_error(src.rel, reason, "discover")
                    continue
                if (
                    row is not None
                    and src.rel not in lost
                    and row.digest == digest
                    and self._up_to_date(row, src, fp, check_stat=False)
                ):
                    manifest.touch_document(src.rel, src.size, src.mtime)
                    summary.unchanged += 1
                    continue
                work.append((src, digest))
        self._say_why_redone(
            [src.rel for src, _ in work if src.rel in known and known[src.rel].config_fp != fp],
            manifest.get_meta("config"),
            summary,
        )

        # extraction starts first, in worker processes that write nothing but digest-named crops, so it
        # overlaps the model load. Models are loaded only when there is something to embed, and before
        # anything in the index changes, so an unavailable model or an encoder mismatch fails fast and
        # leaves the index as it was (the crops of this run are pruned)
        kept_precision: dict[str, dict[str, str]] | None = None  # of the vectors this run keeps
        with self._extraction(work, timings) as (pool, extracted):
            if self.dense and work:
                try:
                    with _Timer(timings, "open_store"):
                        store = index.store  # chromadb's import overlaps the workers' start
                    with _Timer(timings, "load_models"):
                        self._load_models(manifest.get_meta("models"))
                    for enc in (self._clip, self._text):
                        if enc is not None and pool is not None:
                            enc.busy = pool.busy  # a batch leaves the extraction workers their cores
                    self._check_store_models(store)
                    # vectors of documents this run does not redo stay beside the new ones
                    kept = set(known) - {s.rel for s, _ in work}
                    kept_precision = _kept_precision([known[p] for p in kept], manifest.get_meta("precision"))
                    _check_precision(self._precision(), kept_precision)
                    # recorded now, not at the end, so a reader can search a first run's documents by
                    # their vectors as they are committed
                    manifest.set_meta("models", {"clip": self._want_clip, "text": self._want_text})
                    manifest.set_meta("precision", _stored_precision(self._precision(), kept_precision))
                    before = manifest.get_meta(reuse.META_KEY)
                    if self.reuse_vectors:
                        self._reuse_from = {
                            role: ident for role, ident in self._identities().items() if reuse.reusable(ident)
                        }
                        self._index_identity = {
                            role: reuse.stored_identity(before, role) for role in self._reuse_from
                        }
                    manifest.set_meta(
                        reuse.META_KEY, reuse.merged_identities(self._identities(), before, bool(kept))
                    )
                except BaseException:
                    if pool is not None:
                        pool.close(kill=True)
                    index.prune_crops()
                    raise
            if self.dense:
                summary.model = self._want_clip
                summary.text_model = self._want_text

            # prune vanished documents
            present = {s.rel for s in files}
            if self._reuse_from:
                with _Timer(timings, "reuse"):
                    self._read_renamed(index, known, present, work)
            # paths_with_rows also names documents whose run crashed before their manifest row was written
            for path in sorted((set(known) | manifest.paths_with_rows()) - present):
                if not in_shard(path, self.shard):
                    continue
                index.remove_document(path)
                summary.removed.append(path)
            before = manifest.get_meta("library")
            if summary.removed and before and Path(before) != library.resolve():  # --replace-library
                summary.warnings.append(
                    f"this index was built from {before}; indexing {library} replaced that library: "
                    f"{len(summary.removed)} document(s) not in it were removed"
                )
            for path in sorted(set(manifest.errors()) - present):  # errors of files no longer in the library
                if in_shard(path, self.shard):
                    manifest.clear_error(path)

            # extract, chunk, embed, store
            bar = self._progress_bar(len(work))
            try:
                for src, item in extracted:
                    if not isinstance(item, FileError):
                        try:
                            self._index_document(src, item, index, summary, fp)
                        except NonFiniteVectorsError as exc:  # this document only; the old version stays out
                            item = FileError(src.rel, str(exc), "embed")
                        else:
                            manifest.clear_error(src.rel)
                            summary.indexed.append(src.rel)
                    if isinstance(item, FileError):
                        # the file changed (or the config did) and the new version cannot be read: the records
                        # of the old version would describe content that is no longer there. The failure line
                        # says so (the run's "removed" counts the files gone from the library)
                        summary.failed.append(
                            FileError(item.path, item.reason + PREVIOUS_REMOVED, item.stage)
                            if item.path in known
                            else item
                        )
                        if item.path in known or item.path in manifest.paths_with_rows():
                            index.remove_document(item.path)
                        manifest.record_error(
                            item.path, item.reason, item.stage, version=(src.size, src.mtime, fail_fp)
                        )
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(
                            pages=summary.pages,
                            figures=summary.figures,
                            records=sum(summary.records.values()),
                        )
            finally:
                if bar is not None:
                    bar.close()
                summary.precision = self._precision()

            with _Timer(timings, "prune"):
                index.prune_crops()
            manifest.set_meta("library", str(library.resolve()))
            manifest.set_meta("config", public_config(cfg))
            if self.dense:
                manifest.set_meta("models", {"clip": summary.model, "text": summary.text_model})
                # the dtypes this run's vectors were embedded in, as they ended the run (a float32 fallback
                # after NaN shows here); recorded at model load too, so a crash after a commit keeps it
                if summary.precision and sum(summary.embedded.values()) + sum(summary.reused.values()):
                    manifest.set_meta("precision", _stored_precision(summary.precision, kept_precision))
                    # with the identity recorded at model load (a float32 fallback after NaN adds one)
                    before = manifest.get_meta(reuse.META_KEY)
                    manifest.set_meta(
                        reuse.META_KEY, reuse.merged_identities(self._identities(), before, True)
                    )
                index.drop_precision_without_vectors()
                with _Timer(timings, "weigh_channels"):
                    self._weigh_channels(index, summary)
            index.layout.config.write_text(json.dumps(public_config(cfg), indent=2, sort_keys=True))

    def _old_vectors(self, index: Index, path: str) -> dict[reuse.Key, np.ndarray]:
        """The stored vectors of ``path``'s records that this run may reuse (reuse.old_vectors): those of
        each model whose identity, as the document recorded it, is this run's."""
        row = index.manifest.document(path)
        recorded = row.vector_identity if row is not None else None
        idents = reuse.reusable_identities(self._reuse_from, recorded, self._index_identity)
        return reuse.old_vectors(index.manifest, index.store, path, idents)

    def _read_renamed(
        self, index: Index, known: dict[str, DocRow], present: set[str], work: list[tuple[SourceFile, str]]
    ) -> None:
        """The old vectors of documents renamed or moved (a new path whose content digest a vanished
        document had), read before the vanished ones are pruned, up to :data:`reuse.MAX_VECTORS` vectors."""
        vanished: dict[str, str] = {}  # digest -> vanished path
        for path in sorted(set(known) - present):
            if in_shard(path, self.shard):
                vanished.setdefault(known[path].digest, path)
        room = reuse.MAX_VECTORS
        for src, digest in work:
            old = vanished.pop(digest, None) if src.rel not in known else None
            if old is None:
                continue
            n = reuse.count_vectors(index.manifest, old)
            if n > room:
                log.info(
                    "%s: not reusing the vectors of %s (over %d read ahead)", src.rel, old, reuse.MAX_VECTORS
                )
                continue
            room -= n
            self._reuse_ahead[src.rel] = self._old_vectors(index, old)

    def _weigh_channels(self, index: Index, summary: Summary) -> None:
        """Test each vector channel on the library (manualrag/channel_weights.py) when the index holds other
        documents than the last test saw; a model that cannot be loaded for it leaves the channels
        unweighed (a warning says so), the index itself is complete."""
        manifest = index.manifest
        key = channel_weights.content_key(manifest)
        meta = manifest.get_meta(channel_weights.META_KEY)
        if manifest.has_vector_records() and (meta or {}).get("of") != key:

            def encoder(role: str) -> ClipEncoder | TextEncoder | None:
                if (manifest.get_meta("models") or {}).get(role) is None:
                    return None
                self._load_models(manifest.get_meta("models"))
                return self._clip if role == "clip" else self._text

            try:
                meta = {"of": key, "channels": channel_weights.measure(manifest, index.store, encoder)}
                manifest.set_meta(channel_weights.META_KEY, meta)
            except ManualragError as exc:
                manifest.delete_meta(channel_weights.META_KEY)
                meta = None
                summary.warnings.append(f"channels not weighed: {str(exc).splitlines()[0]}")
        summary.channel_weights = channel_weights.channels_of(meta)

    def _lost_vectors(self, index: Index, known: dict[str, DocRow], summary: Summary) -> set[str]:
        """The documents whose vectors the store has lost (its folder deleted, a collection emptied, a
        server reset) while the manifest says they were embedded with this run's models: they are embedded
        again rather than counted "unchanged". A few vectors missing here and there is `check`'s job."""
        if not self.dense:
            return set()
        roles = {"clip": ("text", "image"), "text": ("sem",)}
        docs = {
            role: {p for p, r in known.items() if want and getattr(r, f"{role}_model") == want}
            for role, want in (("clip", self._want_clip), ("text", self._want_text))
        }
        if not (docs["clip"] or docs["text"]):
            return set()
        manifest = index.manifest
        gone: dict[str, str] = {}  # kind -> why
        needed = [k for role, ks in roles.items() if docs[role] for k in ks if manifest.needs_vectors(k)]
        if not needed:
            return set()
        prefix = self.cfg["store"]["collection"]
        embedded = not self.cfg["store"]["url"]
        folder_gone = embedded and not (index.layout.chroma / "chroma.sqlite3").is_file()
        # an embedded store is read as a SQLite file: opening it here (importing chromadb, ~1 s) would
        # delay every run, one with nothing to do too; a server store is asked
        held = (
            embedded_may_hold(index.layout.chroma, [f"{prefix}-{k}" for k in needed])
            if embedded and not folder_gone
            else None
        )
        for kind in needed:
            if folder_gone:
                gone[kind] = f"the store folder {index.layout.chroma} is gone"
            elif held is not None:
                if not held[f"{prefix}-{kind}"]:
                    gone[kind] = f"collection {prefix}-{kind} is absent or empty"
            elif index.store.count(kind) == 0:
                gone[kind] = f"collection {index.store.name(kind)} is absent or empty"
        lost: set[str] = set()
        for role, kinds in roles.items():
            if any(k in gone for k in kinds):
                lost |= docs[role]
        if lost:
            why = "; ".join(dict.fromkeys(gone.values()))
            summary.warnings.append(
                f"the vector store of {self.index_dir} has lost the {', '.join(sorted(gone))} vectors of "
                f"{len(lost)} document(s) ({why}): embedding them again"
            )
        return lost

    def _say_why_redone(self, paths: list[str], last: Any, summary: Summary) -> None:
        """A warning when documents are extracted again because the extraction settings (or this release's
        extraction) differ from those they were indexed with: else a run that redoes the whole library
        looks like any other ("23 indexed")."""
        if not paths:
            return
        changes = settings_changes(last, self.cfg) if isinstance(last, dict) else []
        why = (
            f"the extraction settings differ from the last run's ({'; '.join(changes)})"
            if changes
            else "this release of manualrag extracts them differently"
        )
        summary.warnings.append(
            f"{len(paths)} document(s) extracted again: {why}"
            + ("; pass the --config they were indexed with to keep them" if changes else "")
        )

    def _up_to_date(self, row: DocRow, src: SourceFile, fp: str, check_stat: bool = True) -> bool:
        if check_stat and (row.size != src.size or abs(row.mtime - src.mtime) > 1e-6):
            return False
        if row.config_fp != fp:
            return False
        if self.dense and (row.clip_model != self._want_clip or row.text_model != self._want_text):
            return False
        return True

    def _check_store_models(self, store: VectorStore) -> None:
        """Refuse to mix encoders in one index (raises EncoderMismatchError)."""
        if self._clip is not None:
            for kind in ("text", "image", "image_text"):
                store.ensure(kind, self._clip.model_id, self._clip.dim)
        if self._text is not None:
            store.ensure("sem", self._text.model_id, self._text.dim)

    def _progress_bar(self, total: int):
        if not self.progress or total == 0:
            return None
        from tqdm import tqdm

        return tqdm(total=total, unit="doc", desc="indexing", file=sys.stderr, dynamic_ncols=True)

    # ------------------------------------------------------------------------------------- extraction
    @contextlib.contextmanager
    def _extraction(
        self, work: list[tuple[SourceFile, str]], timings: dict[str, float]
    ) -> Iterator[tuple[Any, Iterator[tuple[SourceFile, Document | FileError]]]]:
        """Extract documents (OCR included) in isolated worker processes, started at once and several in
        flight while the parent loads models and embeds. Yields the pool (None when there is no work) and
        an iterator of (source, document or its one-line error) in the order they finish; closes the pool."""
        from manualrag.indexer.worker import WorkerPool

        if not work:
            yield None, iter(())
            return
        n = self.cfg["isolation"]["workers"] or os.cpu_count() or 1
        if not self.cfg["isolation"]["split_pages"]:  # page ranges of one large PDF may use every worker
            n = min(len(work), n)
        pool = WorkerPool(self.cfg, self.index_dir, n=n, tmp_dir=self._tmp_dir)
        results = pool.imap(((s, d), s.path, s.rel) for s, d in work)

        def extracted() -> Iterator[tuple[SourceFile, Document | FileError]]:
            for (src, digest), result, seconds in results:
                timings["extract"] += seconds
                if isinstance(result, Document) and result.digest != digest:
                    log.info("%s changed while it was read; indexing the version read", src.rel)
                yield src, result

        try:
            yield pool, extracted()
        finally:
            pool.close()

    # --------------------------------------------------------------------------------------- indexing
    def _index_document(
        self,
        src: SourceFile,
        doc: Document,
        index: Index,
        summary: Summary,
        fp: str,
    ) -> None:
        timings = summary.timings
        manifest = index.manifest
        doc_id = ids.doc_id(doc.path)
        with _Timer(timings, "chunk"):
            limits = self.cfg["limits"]
            notes: list[str | None] = []
            passages, note = budget.cap(
                make_passages(doc), limits["max_passages"], "passages", "limits.max_passages"
            )
            notes.append(note)
            doc.figures, note = budget.cap(
                doc.figures, limits["max_figures"], "figures", "limits.max_figures"
            )
            notes.append(note)
            # identical passages are cut into identical windows: each distinct text is cut once
            sources = budget.unique(passages, lambda p: p.text)
            notes.append(budget.duplicates_note(len(passages), len(sources), "passages"))
            windows: list[tuple[Window, str]] = []
            if self.dense:
                channels: list[tuple[str, Any, int, str, str]] = []
                if self._clip is not None:  # None: no CLIP vectors (model: null)
                    channels.append(("clip", self._clip, 12, ids.CLIP_TAG, "CLIP windows"))
                if self._text is not None:
                    channels.append(("sem", self._text, 32, ids.SEM_TAG, "text-model windows"))
                for channel, enc, overlap, tag, what in channels:
                    cut = make_windows(
                        sources, enc.count_tokens, enc.max_tokens, overlap_tokens=overlap, tag=tag
                    )
                    kept = budget.unique(cut, lambda w: w.text)  # content-addressed: stored once
                    notes.append(budget.duplicates_note(len(cut), len(kept), what))
                    kept, note = budget.cap(kept, limits["max_windows"], what, "limits.max_windows")
                    notes.append(note)
                    windows += [(w, channel) for w in kept]
            for note in notes:
                if note:
                    doc.warnings.append(note)
            figures = [(ids.figure_id(doc_id, f.digest), f) for f in doc.figures]
            boiler = [(ids.figure_id(doc_id, f.digest), f) for f in doc.boilerplate]

        with _Timer(timings, "crops"):
            for _, fig in figures + boiler:
                self._write_crop(fig)

        # embed before touching the store, so a model error leaves the old version intact
        vectors: dict[str, Records] = {}
        made_by: dict[str, list[str]] | None = None  # the identities of its vectors (indexer/reuse.py)
        if self.dense:
            old = self._reuse_ahead.pop(doc.path, None)
            if old is None and self._reuse_from and doc.path in self._committed:
                with _Timer(timings, "reuse"):  # the old version of an edited file: its rows are still in
                    old = self._old_vectors(index, doc.path)
            before = self._identities()
            vectors = self._embed(doc, passages, windows, figures, summary, old, before)
            made_by = reuse.doc_identities(before, self._identities())  # (a float32 fallback adds one)

        # this order keeps the document findable through every channel at every moment, and a crash at any
        # point recoverable: mark it for redo, write the new vectors (ids it shares with the old version
        # are overwritten in place), swap its rows in one transaction (which records the old version's
        # other ids as pending deletes), commit, and only then delete the superseded vectors
        with _Timer(timings, "store"):
            manifest.begin_document(doc.path)
            for kind, rec in vectors.items():
                if rec.ids:
                    index.store.upsert(kind, rec.ids, rec.embeddings, rec.metas, rec.docs)
                    summary.records[kind] += len(rec.ids)
            live = {kind: rec.ids for kind, rec in vectors.items()}
            manifest.replace_rows(doc.path, passages, windows, figures + boiler, live=live)
            manifest.commit_document(
                DocRow(
                    path=doc.path,
                    doc_id=doc_id,
                    digest=doc.digest,
                    size=src.size,
                    mtime=src.mtime,
                    config_fp=fp,
                    file_type=doc.file_type,
                    n_pages=len(doc.pages),
                    title=doc.title,
                    warnings=list(doc.warnings),
                    clip_model=(self._clip.model_id if self._clip else None) if self.dense else None,
                    text_model=(self._text.model_id if self._text else None) if self.dense else None,
                    vector_identity=made_by,
                )
            )
            index.flush_pending()
        summary.records["passage"] += len(passages)
        summary.records["figure"] += len(figures)
        summary.pages += len(doc.pages)
        summary.figures += len(figures)
        for w in doc.warnings:
            summary.warnings.append(f"{doc.path}: {w}")

    def _embed(
        self,
        doc: Document,
        passages: list[Passage],
        windows: list[tuple[Window, str]],
        figures: list[tuple[str, Figure]],
        summary: Summary,
        old: dict[reuse.Key, np.ndarray] | None = None,
        idents: dict[str, str] | None = None,
    ) -> dict[str, Records]:
        """The vector records of a document, by store kind. ``old``: vectors of the document's old version
        by reuse key (indexer/reuse.py), ``idents`` the models' identities those keys name (Indexer
        ._identities()); an input found there is not embedded again."""
        timings = summary.timings
        clip = self._clip  # None: an index without CLIP vectors (model: null)
        by_pid = {p.passage_id: p for p in passages}
        out: dict[str, Records] = {}
        old = old or {}

        def meta(page: int, kind: str, ref: str, suspect: str | None = None) -> dict[str, Any]:
            return {"path": doc.path, "page": page, "kind": kind, "ref": ref, "suspect": suspect or ""}

        def vectors(enc: Any, keys: list[reuse.Key], embed: Any, n_inputs: str) -> np.ndarray:
            """One vector per key: the stored one where ``old`` has it, else ``embed(indexes)``'s."""
            found = [old.get(k) for k in keys]
            todo = [i for i, v in enumerate(found) if v is None]
            embs = np.zeros((len(keys), enc.dim), dtype=np.float32)
            for i, v in enumerate(found):
                if v is not None:
                    embs[i] = v
            if todo:
                embs[todo] = embed(todo)
                summary.embedded[n_inputs] += len(todo)
            if len(keys) > len(todo):
                summary.reused[n_inputs] += len(keys) - len(todo)
            return embs

        clip_id, text_id = (idents or {}).get("clip", ""), (idents or {}).get("text", "")
        clip_w = [w for w, ch in windows if ch == "clip"]
        sem_w = [w for w, ch in windows if ch == "sem"]
        with _Timer(timings, "embed_text"):
            if clip is not None and clip_w:
                embs = vectors(
                    clip,
                    [reuse.window_key(clip_id, "text", w.text) for w in clip_w],
                    lambda todo: clip.embed_texts([clip_w[i].text for i in todo]),
                    "texts",
                )
                out["text"] = Records(
                    [w.window_id for w in clip_w],
                    embs,
                    [
                        meta(by_pid[w.passage_id].page, "text", w.passage_id, by_pid[w.passage_id].suspect)
                        for w in clip_w
                    ],
                    [w.text for w in clip_w],
                )
            labelled = [(fid, f) for fid, f in figures if f.label_text.strip()]
            if clip is not None and labelled:
                texts = [clip.fit(f.label_text) for _, f in labelled]
                embs = vectors(
                    clip,
                    [reuse.label_key(clip_id, f) for _, f in labelled],
                    lambda todo: clip.embed_texts([texts[i] for i in todo]),
                    "texts",
                )
                out["image_text"] = Records(
                    [ids.figure_label_id(fid) for fid, _ in labelled],
                    embs,
                    [meta(f.pages[0], "image_text", fid) for fid, f in labelled],
                    texts,
                )
        if clip is not None and figures:
            with _Timer(timings, "embed_image"):
                embs = vectors(
                    clip,
                    [reuse.image_key(clip_id, f) for _, f in figures],
                    lambda todo: clip.embed_images(
                        [figures[i][1].png or self._read_crop(figures[i][1]) for i in todo]
                    ),
                    "images",
                )
            out["image"] = Records(
                [fid for fid, _ in figures],
                embs,
                [meta(f.pages[0], "image", fid) for fid, f in figures],
                [f.caption for _, f in figures],
            )
        text_enc = self._text
        if text_enc is not None:
            with _Timer(timings, "embed_sem"):
                # (vector id, figure id, figure, text): each figure's texts, and its caption alone as well: a
                # figure's many labels and OCR words (a wiring diagram's terminal names) dilute its full
                # text's vector; a question in the caption's words finds the figure through this one
                fig_sem = [(ids.figure_sem_id(fid), fid, f, figure_sem_text(f)) for fid, f in figures]
                fig_sem += [(ids.figure_caption_id(fid), fid, f, f.caption.strip()) for fid, f in figures]
                fig_sem = [x for x in fig_sem if x[3]]
                # keyed by the text before fit() (indexer/reuse.py: the cut is the model's, fixed by its key)
                keys = [reuse.sem_key(text_id, w.text) for w in sem_w]
                keys += [reuse.sem_key(text_id, t) for *_, t in fig_sem]
                texts = [w.text for w in sem_w] + [text_enc.fit(t) for *_, t in fig_sem]
                if texts:
                    embs = vectors(
                        text_enc, keys, lambda todo: text_enc.embed_texts([texts[i] for i in todo]), "sem"
                    )
                    vids = [w.window_id for w in sem_w] + [vid for vid, *_ in fig_sem]
                    metas = [
                        meta(by_pid[w.passage_id].page, "text", w.passage_id, by_pid[w.passage_id].suspect)
                        for w in sem_w
                    ] + [meta(f.pages[0], "image_text", fid) for _, fid, f, _ in fig_sem]
                    out["sem"] = Records(vids, embs, metas, texts)
        return out

    # ------------------------------------------------------------------------------------------ crops
    def _write_crop(self, fig: Figure) -> None:
        rel = IndexLayout.crop_rel(fig.digest)
        fig.crop_path = rel
        dest = self.index_dir / rel
        if dest.exists() or fig.png is None:
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        tmp.write_bytes(fig.png)
        os.replace(tmp, dest)

    def _read_crop(self, fig: Figure) -> bytes:
        return (self.index_dir / IndexLayout.crop_rel(fig.digest)).read_bytes()
