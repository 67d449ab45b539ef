"""The open index of a running server: one Retriever (models loaded once) and one Assets over the same
read-only manifest, kept current while ``manualrag index`` updates the index.

Rows need no refreshing: each query reads the manifest in one snapshot (WAL), so it sees every document
before or after an update, whole. The embedded Chroma store does: a client keeps the vector index it
loaded, so vectors another process wrote later are invisible to it (measured with chromadb 1.5.9). When
the manifest's ``data_version`` says another connection committed, the next search reopens the store
(at most once per ``refresh_s``, so a long index run does not reopen it for every query; the first
query after a quiet spell reopens it at once); the models
stay loaded unless the index now names other ones.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from manualrag.index import describe, folder_size
from manualrag.retriever.assets import Assets
from manualrag.retriever.search import Retriever, SearchResult

log = logging.getLogger(__name__)


class IndexState:
    def __init__(self, index_dir: Path | str, cfg: dict[str, Any], refresh_s: float = 2.0):
        self.index_dir = Path(index_dir)
        self.cfg = cfg
        self.refresh_s = refresh_s
        self.retriever = Retriever.open(self.index_dir, cfg)
        self.assets = Assets(self.index_dir, self.retriever.manifest, passwords=cfg.get("passwords") or [])
        self._search_lock = threading.Lock()  # one search at a time: tokenizers and torch models are shared
        self._version = self._data_version()
        self._reopened_at = 0.0
        self.reopened = 0
        self._size: tuple[int, float] | None = None

    def close(self) -> None:
        self.retriever.close()

    def _data_version(self) -> int:
        with self.retriever.manifest._lock:  # noqa: SLF001 - the manifest's own connection lock
            return int(self.retriever.manifest.conn.execute("PRAGMA data_version").fetchone()[0])

    def warm_up(self) -> None:
        """Load the models and the vector indexes now, so the first request costs a search, not a start."""
        try:
            import pymupdf  # noqa: F401 - imported now rather than by the first page request

            self.search("warm up", k=1)
        except Exception as exc:  # noqa: BLE001 - a model that cannot load says so on the first real query
            log.warning("warm-up search failed: %s", str(exc).splitlines()[0] if str(exc) else exc)

    def _refresh(self) -> None:
        """Reopen the vector store if another process committed to the index since it was opened."""
        if self.cfg["store"].get("url"):  # a Chroma server answers from its current state
            return
        version = self._data_version()
        now = time.monotonic()
        if version == self._version or now - self._reopened_at < self.refresh_s:
            return
        self._reopened_at = now
        from manualrag.store import VectorStore

        r = self.retriever
        old = r.store
        old.close()
        r.store = VectorStore.open(self.index_dir, self.cfg, create=False)
        self._version = version
        self.reopened += 1
        r.reset_models(r.manifest.get_meta("models") or {})  # other models: loaded on the next query
        log.info("index changed: vector store reopened")

    def search(self, text: str | None, image: bytes | None = None, **kw: Any) -> SearchResult:
        with self._search_lock:
            self._refresh()
            return self.retriever.search(text, image=image, **kw)

    def stats(self) -> dict[str, Any]:
        """What ``manualrag stats --json`` prints (the size on disk cached for a minute)."""
        r = self.retriever
        now = time.monotonic()
        if self._size is None or now - self._size[1] > 60:
            self._size = (folder_size(self.index_dir), now)
        with self._search_lock:
            return describe(self.index_dir, self.cfg, r.manifest, r.store, self._size[0])
