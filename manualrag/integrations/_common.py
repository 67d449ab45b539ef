"""What the integrations share: one open Retriever per index and config in a process, searched one query at
a time, and the figure image scaled to a size a multimodal model accepts.

LangChain and LlamaIndex build retrievers freely (one per chain, per request, per test); loading CLIP and the
text model for each would take seconds every time, so retrievers of the same index share one loaded
:class:`~manualrag.retriever.search.Retriever` for the life of the process.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from manualrag.errors import ManualragError
from manualrag.retriever.assets import Assets
from manualrag.retriever.search import Hit, Retriever, SearchResult

# the longest side of an image handed to a model: what the large multimodal models read without
# resizing on their side (Claude: 1568 px; GPT-4o tiles at 768/2048); a bigger crop costs tokens only
MAX_IMAGE_SIDE = 1568
MODALITIES = ("all", "text", "image")


def missing_extra(module: str, extra: str, package: str) -> ImportError:
    """The one-line error of an integration imported without its extra."""
    return ImportError(
        f"{module} needs the optional dependency {package!r}: pip install 'manualrag[{extra}]'"
    )


class SharedRetriever:
    """A Retriever and a lock: searches run one at a time (the encoders load lazily on first use and hold
    no per-thread state worth the risk of a race)."""

    def __init__(
        self,
        retriever: Retriever,
        assets: Assets | None = None,
        lock: threading.Lock | None = None,
        search: Callable[..., SearchResult] | None = None,
    ):
        """``search``: a host's own locked search (``manualrag serve``'s, which also follows index updates),
        called as ``search(text, k=, modality=, source=)`` instead of the Retriever's under ``lock``."""
        self.retriever = retriever
        self.lock = lock or threading.Lock()
        self._search = search
        # the index's files (crops, page renders), over the Retriever's read-only manifest
        self.assets = assets or Assets(
            retriever.index_dir, retriever.manifest, passwords=retriever.cfg.get("passwords") or []
        )

    def figure_png(self, figure_id: str) -> bytes | None:
        """A figure's crop as a PNG a model accepts (bounded size), or None when it has none."""
        from manualrag.retriever.assets import NotFound

        try:
            return bounded_png(self.assets.figure_png(figure_id))
        except NotFound:
            return None

    @property
    def index_dir(self) -> Path:
        return self.retriever.index_dir

    def search(
        self, query: str, k: int, modality: str | None = None, source: str | None = None
    ) -> SearchResult:
        query = check_query(query)
        k = check_k(k)
        modality = check_modality(modality)
        if self._search is not None:
            return self._search(query, k=k, modality=modality, source=source or None)
        with self.lock:
            return self.retriever.search(query, k=k, modality=modality, source=source or None)

    def warm(self) -> None:
        """Load the query encoders now (a server does this in the background at start-up)."""
        with self.lock:
            self.retriever._clip_encoder(required=False)
            self.retriever._text_encoder(required=False)


_SHARED: dict[tuple[str, str | None], SharedRetriever] = {}
_SHARED_LOCK = threading.Lock()


def shared_retriever(
    index_dir: str | os.PathLike[str] | None, config: str | os.PathLike[str] | None
) -> SharedRetriever:
    """The process's open Retriever for this index folder and config file (opened on first use).

    ``index_dir`` None: the config's (``MANUALRAG_INDEX_DIR``, else ``data/index``). ``config`` None:
    ``MANUALRAG_CONFIG`` or the built-in defaults, as for the CLI.
    """
    from manualrag.config import load_config

    cfg = load_config(config, overrides={"index_dir": str(index_dir) if index_dir is not None else None})
    idir = Path(cfg["index_dir"]).expanduser().resolve()
    key = (str(idir), str(Path(config).resolve()) if config else os.environ.get("MANUALRAG_CONFIG"))
    with _SHARED_LOCK:
        shared = _SHARED.get(key)
        if shared is None:
            shared = _SHARED[key] = SharedRetriever(Retriever.open(idir, cfg))
        return shared


def close_shared() -> None:
    """Close every shared Retriever (tests; a long-lived process that is done with its indexes)."""
    with _SHARED_LOCK:
        for shared in _SHARED.values():
            with shared.lock:
                shared.retriever.close()
        _SHARED.clear()


# ------------------------------------------------------------------------------------------ validation
def check_query(query: Any) -> str:
    if not isinstance(query, str) or not query.strip():
        raise ManualragError("query: give a non-empty question or keywords")
    if len(query) > 2000:
        raise ManualragError(f"query: {len(query)} characters; keep it under 2000")
    return query.strip()


def check_k(k: Any, most: int = 100) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= most:
        raise ManualragError(f"k: the number of hits must be a whole number from 1 to {most}, not {k!r}")
    return k


def check_modality(modality: Any) -> str:
    modality = modality or "all"
    if modality not in MODALITIES:
        raise ManualragError(f"modality: choose all, text or image, not {modality!r}")
    return modality


# ---------------------------------------------------------------------------------------------- hits
def hit_content(hit: Hit) -> str:
    """What a model reads for a hit: the parent passage, or a figure's caption, labels and OCR'd text."""
    if hit.kind != "image":
        return hit.text
    parts = []
    if hit.caption:
        parts.append(hit.caption)
    if hit.labels:
        parts.append("Labels: " + " ".join(hit.labels))
    if hit.ocr_text.strip():
        parts.append("Text in image: " + " ".join(hit.ocr_text.split()))
    if not parts:
        parts.append(f"{hit.figure_kind or 'image'} figure on page {hit.page} of {hit.path}")
    return "\n".join(parts)


def hit_metadata(hit: Hit) -> dict[str, Any]:
    """The metadata both retrievers attach (names as in the issue: path, page, pages, kind, …)."""
    meta: dict[str, Any] = {
        "source": hit.path,
        "path": hit.path,
        "page": hit.page,
        "pages": list(hit.pages),
        "kind": hit.kind,
        "id": hit.id,
        "heading": hit.heading,
        "score": hit.score,
        "rank": hit.rank,
        "channels": dict(hit.channels),
        "copies": list(hit.copies),
    }
    if hit.kind == "image":
        meta.update(
            figure_id=hit.id,
            figure_kind=hit.figure_kind,
            caption=hit.caption,
            labels=list(hit.labels),
            crop_path=hit.crop_path,
            quality=hit.quality,
        )
    else:
        meta.update(
            figure_kind=None,
            crop_path=None,
            suspect=hit.suspect,
            figures=[
                {"figure_id": f.figure_id, "page": f.page, "caption": f.caption, "crop_path": f.crop_path}
                for f in hit.figures
            ],
        )
    return meta


def bounded_png(data: bytes, max_side: int = MAX_IMAGE_SIDE) -> bytes:
    """``data`` (any image Pillow reads) as a PNG whose longer side is at most ``max_side`` pixels."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if max(im.size) <= max_side and im.format == "PNG":
            return data
        img = im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB")
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()
