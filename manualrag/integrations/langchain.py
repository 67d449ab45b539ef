"""A LangChain retriever over a manualrag index: text passages and figures as ``Document``s.

    from manualrag.integrations.langchain import ManualragRetriever

    retriever = ManualragRetriever(index_dir="data/index", k=8)
    docs = retriever.invoke("electric wiring layout")
    docs[0].metadata["kind"], docs[0].metadata["crop_path"]     # "image", ".../crops/<digest>.png"

``page_content`` is the passage text, or a figure's caption + labels + OCR'd text; ``metadata`` holds path
(also as ``source``), page, pages, kind ("text" | "image"), figure_kind, heading, score, channels and
crop_path; ``include_images=True`` adds the figure as a base64 PNG (``image_base64``, longer side at most
1568 px). ``invoke(query, k=3)`` overrides ``k`` for one call. Retrievers of the same index share one
loaded set of models in the process.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

try:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from pydantic import ConfigDict, Field, PrivateAttr
except ImportError:  # pragma: no cover - exercised by a test that hides the package
    from manualrag.integrations._common import missing_extra

    raise missing_extra("manualrag.integrations.langchain", "langchain", "langchain-core") from None

from manualrag.integrations._common import (
    SharedRetriever,
    hit_content,
    hit_metadata,
    shared_retriever,
)
from manualrag.retriever.search import Hit


class ManualragRetriever(BaseRetriever):
    """Ranked passages and figures of the technical manuals in a manualrag index.

    Args:
        index_dir: the index folder (default: ``MANUALRAG_INDEX_DIR`` or the config's, ``data/index``).
        k: documents returned (``invoke(query, k=...)`` overrides it per call).
        modality: ``"text"`` or ``"image"`` to return only passages or only figures (default: both).
        include_images: add each figure's PNG as base64 in ``metadata["image_base64"]``.
        source: only files matching this glob (``"*.pdf"``, ``"vendor/*"``).
        config: a manualrag YAML config file (default: ``MANUALRAG_CONFIG`` or the built-in defaults).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index_dir: str | None = None
    k: int = Field(default=8, ge=1, le=100)
    modality: Literal["all", "text", "image"] | None = None
    include_images: bool = False
    source: str | None = None
    config: str | None = None

    _shared: SharedRetriever | None = PrivateAttr(default=None)

    def model_post_init(self, __context: Any) -> None:
        # open now, so a wrong index folder fails at construction with manualrag's message
        self._shared = shared_retriever(self.index_dir, self.config)

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        modality: str | None = None,
        source: str | None = None,
    ) -> list[Document]:
        assert self._shared is not None
        result = self._shared.search(
            query,
            k=self.k if k is None else k,  # k=0 is a bad value, not "the default"
            modality=modality or self.modality,
            source=source or self.source,
        )
        return [self._document(h) for h in result.hits]

    def _document(self, hit: Hit) -> Document:
        meta = hit_metadata(hit)
        if self.include_images and hit.kind == "image":
            assert self._shared is not None
            png = self._shared.figure_png(hit.id)
            if png is not None:
                meta["image_base64"] = base64.b64encode(png).decode()
                meta["image_mime_type"] = "image/png"
        return Document(id=hit.id, page_content=hit_content(hit), metadata=meta)
