"""`manualrag index`: discover -> extract -> chunk -> embed -> store -> manifest, incrementally.

Write order for one document (crash-safe, see DESIGN.md "Incremental and safe"):
  1. delete its manifest row (a crash from here on leaves it absent, so the next run redoes it);
  2. delete the vectors of its previous rows that the new version does not write again (their ids are
     read from the manifest's tables; ids the new version shares are overwritten in step 4 instead);
  3. replace its passage/window/figure rows and lexical rows (one SQLite transaction);
  4. upsert its vectors (deterministic ids);
  5. write its manifest row, last.
The manifest's tables always name every vector id that may exist for a document, so a redo removes
whatever a crashed run left behind, and ids never duplicate.

Readers see each document before or after its update, never without it: its rows switch in one SQLite
transaction (step 3), and the retriever maps every vector hit through the rows of one read snapshot, so a
vector the snapshot does not name is dropped and one it names shows that snapshot's text. Until step 3
the old rows are served (by lexical search and by the vectors they share with the new version); from step 3
on, the new rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from manualrag.config import extraction_fingerprint, public_config
from manualrag.errors import ManualragError, NonFiniteVectorsError
from manualrag.indexer.chunk import doc_id_for, make_passages, make_windows
from manualrag.indexer.discover import SourceFile, discover, file_digest
from manualrag.lock import IndexLock
from manualrag.manifest import DocRow, Manifest
from manualrag.models import Document, Figure, FileError, Passage, Window
from manualrag.store import VectorStore

log = logging.getLogger(__name__)

CROPS_DIR = "crops"


def in_shard(rel: str, shard: tuple[int, int]) -> bool:
    """Documents are partitioned across indexer machines by the sha256 of their library-relative path."""
    i, n = shard
    return n == 1 or int(hashlib.sha256(rel.encode()).hexdigest()[:12], 16) % n == i


def figure_id_for(doc_id: str, fig: Figure) -> str:
    return f"{doc_id}:f:{fig.digest[:16]}"


def figure_sem_text(fig: Figure) -> str:
    """What the text model reads for a figure: caption, labels, OCR, then heading and nearby text."""
    parts = [fig.caption, " ".join(fig.labels), fig.ocr_text, fig.heading, fig.nearby_text]
    return "\n".join(p.strip() for p in parts if p and p.strip())


@dataclass
class Summary:
    library: str
    index_dir: str
    indexed: list[str] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    failed: list[FileError] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    records: Counter = field(default_factory=Counter)  # written this run, by kind
    embedded: Counter = field(default_factory=Counter)  # model inputs this run: texts, images, sem
    pages: int = 0
    figures: int = 0
    timings: dict[str, float] = field(default_factory=lambda: Counter())
    # per model role ("clip", "text"): {"model", "dtype", "reason"} as resolved (or fallen back) this run
    precision: dict[str, dict[str, str]] = field(default_factory=dict)
    model: str | None = None
    text_model: str | None = None
    dense: bool = True
    warnings: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def exit_code(self) -> int:
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
            "pages": self.pages,
            "figures": self.figures,
            "records": dict(self.records),
            "embedded": dict(self.embedded),
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "wall_s": round(self.wall_s, 3),
            "model": self.model,
            "text_model": self.text_model,
            "precision": self.precision,
            "dense": self.dense,
            "warnings": self.warnings,
            "exit_code": self.exit_code,
        }


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
    ):
        self.cfg = cfg
        self.shard = shard
        self.index_dir = Path(index_dir)
        self.dense = dense
        self.progress = progress
        self._clip = None
        self._text = None
        from manualrag.encoder import model_id_for

        self._want_clip = model_id_for(cfg["model"])
        self._want_text = model_id_for(cfg["text_model"]) if cfg["text_model"] else None

    # ------------------------------------------------------------------------------------------ models
    def _load_models(self) -> None:
        from manualrag.encoder import ClipEncoder, TextEncoder

        c = self.cfg
        if self._clip is None:
            self._clip = ClipEncoder.load(
                c["model"], device=c["device"], dtype=c["dtype"], batch_size=c["batch_size"]
            )
        if self._text is None and c["text_model"]:
            self._text = TextEncoder.load(
                c["text_model"], device=c["device"], dtype=c["dtype"], batch_size=c["batch_size"]
            )

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
        self.index_dir.mkdir(parents=True, exist_ok=True)
        summary = Summary(library=str(library), index_dir=str(self.index_dir), dense=self.dense)
        with IndexLock(self.index_dir):
            manifest = Manifest(self.index_dir / "index.sqlite")
            store = VectorStore.open(self.index_dir, self.cfg)
            try:
                self._flush_pending(manifest, store)  # left by a run that stopped before deleting them
                self._run_locked(library, manifest, store, summary)
            finally:
                store.close()
                manifest.close()
        summary.wall_s = time.perf_counter() - t_start
        return summary

    def _run_locked(self, library: Path, manifest: Manifest, store: VectorStore, summary: Summary) -> None:
        cfg, timings = self.cfg, summary.timings
        with _Timer(timings, "discover"):
            files, skipped = discover(library, cfg, exclude=[self.index_dir])
            files = [f for f in files if in_shard(f.rel, self.shard)]
        summary.skipped = dict(skipped)
        known = manifest.documents()
        fp = extraction_fingerprint(cfg)

        # decide what to do with each file
        work: list[tuple[SourceFile, str]] = []
        with _Timer(timings, "fingerprint"):
            for src in files:
                row = known.get(src.rel)
                if row is not None and self._up_to_date(row, src, fp):
                    summary.unchanged += 1
                    continue
                try:
                    digest = file_digest(src.path)
                except OSError as exc:
                    summary.failed.append(
                        FileError(src.rel, f"cannot read: {exc.strerror or exc}", "discover")
                    )
                    if row is not None or src.rel in manifest.paths_with_rows():
                        self._remove_document(src.rel, manifest, store)
                    manifest.record_error(src.rel, f"cannot read: {exc.strerror or exc}", "discover")
                    continue
                if (
                    row is not None
                    and row.digest == digest
                    and self._up_to_date(row, src, fp, check_stat=False)
                ):
                    manifest.touch_document(src.rel, src.size, src.mtime)
                    summary.unchanged += 1
                    continue
                work.append((src, digest))

        # extraction starts first, in worker processes that write nothing but digest-named crops, so it
        # overlaps the model load. Models are loaded only when there is something to embed, and before
        # anything in the index changes, so an unavailable model or an encoder mismatch fails fast and
        # leaves the index as it was (the crops of this run are pruned)
        with self._extraction(work, timings) as (pool, extracted):
            if self.dense and work:
                try:
                    with _Timer(timings, "load_models"):
                        self._load_models()
                    self._check_store_models(store)
                except BaseException:
                    if pool is not None:
                        pool.close(kill=True)
                    self._prune_crops(manifest)
                    raise
            if self.dense:
                summary.model = self._want_clip
                summary.text_model = self._want_text

            # prune vanished documents
            present = {s.rel for s in files}
            # paths_with_rows also names documents whose run crashed before their manifest row was written
            for path in sorted((set(known) | manifest.paths_with_rows()) - present):
                if not in_shard(path, self.shard):
                    continue
                self._remove_document(path, manifest, store)
                summary.removed.append(path)
            for path in sorted(set(manifest.errors()) - present):  # errors of files no longer in the library
                if in_shard(path, self.shard):
                    manifest.clear_error(path)

            # extract, chunk, embed, store
            bar = self._progress_bar(len(work))
            try:
                for src, item in extracted:
                    if not isinstance(item, FileError):
                        try:
                            self._index_document(src, item, manifest, store, summary, fp)
                        except NonFiniteVectorsError as exc:  # this document only; the old version stays out
                            item = FileError(src.rel, str(exc), "embed")
                        else:
                            manifest.clear_error(src.rel)
                            summary.indexed.append(src.rel)
                    if isinstance(item, FileError):
                        summary.failed.append(item)
                        # the file changed (or the config did) and the new version cannot be read: the records
                        # of the old version would describe content that is no longer there
                        if item.path in known or item.path in manifest.paths_with_rows():
                            self._remove_document(item.path, manifest, store)
                        manifest.record_error(item.path, item.reason, item.stage)
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
                self._prune_crops(manifest)
            manifest.set_meta("library", str(library.resolve()))
            manifest.set_meta("config", public_config(cfg))
            if self.dense:
                manifest.set_meta("models", {"clip": summary.model, "text": summary.text_model})
                if summary.precision:
                    manifest.set_meta("precision", summary.precision)
            (self.index_dir / "config.json").write_text(
                json.dumps(public_config(cfg), indent=2, sort_keys=True)
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
        store.ensure("text", self._clip.model_id, self._clip.dim)
        store.ensure("image", self._clip.model_id, self._clip.dim)
        store.ensure("image_text", self._clip.model_id, self._clip.dim)
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
        n = min(len(work), self.cfg["isolation"]["workers"] or os.cpu_count() or 1)
        pool = WorkerPool(self.cfg, self.index_dir, n=n)
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
        manifest: Manifest,
        store: VectorStore,
        summary: Summary,
        fp: str,
    ) -> None:
        timings = summary.timings
        doc_id = doc_id_for(doc.path)
        with _Timer(timings, "chunk"):
            passages = make_passages(doc)
            windows: list[tuple[Window, str]] = []
            if self.dense:
                clip_w = make_windows(passages, self._clip.count_tokens, self._clip.max_tokens, tag="w")
                windows += [(w, "clip") for w in clip_w]
                if self._text is not None:
                    sem_w = make_windows(
                        passages, self._text.count_tokens, self._text.max_tokens, overlap_tokens=32, tag="s"
                    )
                    windows += [(w, "sem") for w in sem_w]
            figures = [(figure_id_for(doc_id, f), f) for f in doc.figures]
            boiler = [(figure_id_for(doc_id, f), f) for f in doc.boilerplate]

        with _Timer(timings, "crops"):
            for _, fig in figures + boiler:
                self._write_crop(fig)

        # embed before touching the store, so a model error leaves the old version intact
        vectors: dict[str, tuple[list[str], np.ndarray, list[dict[str, Any]], list[str]]] = {}
        if self.dense:
            vectors = self._embed(doc, passages, windows, figures, summary)

        # this order keeps the document findable through every channel at every moment, and a crash at any
        # point recoverable: mark it for redo, write the new vectors (ids it shares with the old version
        # are overwritten in place), swap its rows in one transaction (which records the old version's
        # other ids as pending deletes), commit, and only then delete the superseded vectors
        with _Timer(timings, "store"):
            manifest.begin_document(doc.path)
            for kind, (ids, embs, metas, docs) in vectors.items():
                if ids:
                    store.upsert(kind, ids, embs, metas, docs)
                    summary.records[kind] += len(ids)
            live = {kind: v[0] for kind, v in vectors.items()}
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
                    clip_model=self._clip.model_id if self.dense else None,
                    text_model=(self._text.model_id if self._text else None) if self.dense else None,
                    indexed_at=time.time(),
                )
            )
            self._flush_pending(manifest, store)
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
    ) -> dict[str, tuple[list[str], np.ndarray, list[dict[str, Any]], list[str]]]:
        timings = summary.timings
        by_pid = {p.passage_id: p for p in passages}
        out: dict[str, tuple[list[str], np.ndarray, list[dict[str, Any]], list[str]]] = {}

        def meta(page: int, kind: str, ref: str, suspect: str | None = None) -> dict[str, Any]:
            return {"path": doc.path, "page": page, "kind": kind, "ref": ref, "suspect": suspect or ""}

        clip_w = [w for w, ch in windows if ch == "clip"]
        sem_w = [w for w, ch in windows if ch == "sem"]
        with _Timer(timings, "embed_text"):
            if clip_w:
                embs = self._clip.embed_texts([w.text for w in clip_w])
                out["text"] = (
                    [w.window_id for w in clip_w],
                    embs,
                    [
                        meta(by_pid[w.passage_id].page, "text", w.passage_id, by_pid[w.passage_id].suspect)
                        for w in clip_w
                    ],
                    [w.text for w in clip_w],
                )
                summary.embedded["texts"] += len(clip_w)
            labelled = [(fid, f) for fid, f in figures if f.label_text.strip()]
            if labelled:
                texts = [self._clip.fit(f.label_text) for _, f in labelled]
                embs = self._clip.embed_texts(texts)
                out["image_text"] = (
                    [f"{fid}:t" for fid, _ in labelled],
                    embs,
                    [meta(f.pages[0], "image_text", fid) for fid, f in labelled],
                    texts,
                )
                summary.embedded["texts"] += len(labelled)
        if figures:
            with _Timer(timings, "embed_image"):
                embs = self._clip.embed_images([f.png or self._read_crop(f) for _, f in figures])
            out["image"] = (
                [fid for fid, _ in figures],
                embs,
                [meta(f.pages[0], "image", fid) for fid, f in figures],
                [f.caption for _, f in figures],
            )
            summary.embedded["images"] += len(figures)
        if self._text is not None:
            with _Timer(timings, "embed_sem"):
                fig_sem = [(fid, f, figure_sem_text(f)) for fid, f in figures]
                fig_sem = [(fid, f, self._text_fit(t)) for fid, f, t in fig_sem if t]
                texts = [w.text for w in sem_w] + [t for _, _, t in fig_sem]
                if texts:
                    embs = self._text.embed_texts(texts)
                    ids = [w.window_id for w in sem_w] + [f"{fid}:s" for fid, _, _ in fig_sem]
                    metas = [
                        meta(by_pid[w.passage_id].page, "text", w.passage_id, by_pid[w.passage_id].suspect)
                        for w in sem_w
                    ] + [meta(f.pages[0], "image_text", fid) for fid, f, _ in fig_sem]
                    out["sem"] = (ids, embs, metas, texts)
                    summary.embedded["sem"] += len(texts)
        return out

    def _text_fit(self, text: str) -> str:
        return self._text.fit(text) if hasattr(self._text, "fit") else text

    # ------------------------------------------------------------------------------------------ crops
    def _crop_rel(self, fig: Figure) -> str:
        return f"{CROPS_DIR}/{fig.digest}.png"

    def _write_crop(self, fig: Figure) -> None:
        rel = self._crop_rel(fig)
        fig.crop_path = rel
        dest = self.index_dir / rel
        if dest.exists() or fig.png is None:
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        tmp.write_bytes(fig.png)
        os.replace(tmp, dest)

    def _read_crop(self, fig: Figure) -> bytes:
        return (self.index_dir / self._crop_rel(fig)).read_bytes()

    def _prune_crops(self, manifest: Manifest) -> None:
        crops = self.index_dir / CROPS_DIR
        if not crops.is_dir():
            return
        keep = manifest.crop_paths()
        for f in crops.iterdir():
            rel = f"{CROPS_DIR}/{f.name}"
            if rel not in keep:
                f.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------ remove
    @staticmethod
    def _flush_pending(manifest: Manifest, store: VectorStore) -> None:
        """Delete superseded vectors from the store, then forget them (a crash in between only repeats a
        harmless delete on the next run)."""
        for kind, ids in manifest.pending_deletes().items():
            store.delete(kind, ids)
            manifest.clear_pending(kind, ids)

    def _remove_document(self, path: str, manifest: Manifest, store: VectorStore) -> None:
        manifest.begin_document(path)
        for kind, ids in manifest.vector_ids(path).items():
            if ids:
                store.delete(kind, ids)
        manifest.remove_document(path)

    def remove(self, paths: list[str]) -> list[str]:
        """Remove documents (library-relative paths, or prefixes of them) from the index."""
        removed: list[str] = []
        with IndexLock(self.index_dir):
            manifest = Manifest(self.index_dir / "index.sqlite")
            store = VectorStore.open(self.index_dir, self.cfg)
            try:
                self._flush_pending(manifest, store)
                known = manifest.documents()
                for p in paths:
                    p = p.strip("/")
                    hits = [k for k in known if k == p or k.startswith(p + "/")]
                    for k in hits:
                        if k not in removed:
                            self._remove_document(k, manifest, store)
                            removed.append(k)
                self._prune_crops(manifest)
            finally:
                store.close()
                manifest.close()
        return removed
