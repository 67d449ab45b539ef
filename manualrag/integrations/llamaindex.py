"""A LlamaIndex retriever over a manualrag index: ``TextNode``s for passages, ``ImageNode``s for figures.

    from manualrag.integrations.llamaindex import ManualragRetriever

    retriever = ManualragRetriever(index_dir="data/index", k=8)
    for n in retriever.retrieve("electric wiring layout"):
        print(type(n.node).__name__, n.score, n.node.metadata["path"], n.node.metadata["page"])

An ``ImageNode`` carries the figure's crop as ``image_path`` (and, with ``include_images=True``, as base64
``image``, longer side at most 1568 px), its caption + labels + OCR'd text as ``text``; both kinds carry the
same metadata as the LangChain retriever's documents (path, page, pages, kind, figure_kind, heading, score,
channels, crop_path). Use it with any query engine, e.g. ``RetrieverQueryEngine.from_args(retriever, llm=...)``.
"""

from __future__ import annotations

import base64
import os
from typing import Any

try:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle, TextNode
except ImportError:  # pragma: no cover - exercised by a test that hides the package
    from manualrag.integrations._common import missing_extra

    raise missing_extra("manualrag.integrations.llamaindex", "llamaindex", "llama-index-core") from None

from manualrag.integrations._common import (
    check_k,
    check_modality,
    hit_content,
    hit_metadata,
    shared_retriever,
)
from manualrag.retriever.search import Hit

# metadata a model or an embedder need not read in the node's text (LlamaIndex prepends metadata to it)
_HIDDEN = [
    "channels",
    "score",
    "rank",
    "crop_path",
    "figures",
    "id",
    "figure_id",
    "labels",
    "source",
    "quality",
    "copies",
]


class ManualragRetriever(BaseRetriever):
    """Ranked passages and figures of the technical manuals in a manualrag index.

    Takes the same arguments as :class:`manualrag.integrations.langchain.ManualragRetriever`.
    """

    def __init__(
        self,
        index_dir: str | os.PathLike[str] | None = None,
        k: int = 8,
        modality: str | None = None,
        include_images: bool = False,
        source: str | None = None,
        config: str | os.PathLike[str] | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        self.k = check_k(k)
        self.modality = check_modality(modality)
        self.include_images = include_images
        self.source = source
        self._shared = shared_retriever(index_dir, config)
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        result = self._shared.search(
            query_bundle.query_str, k=self.k, modality=self.modality, source=self.source
        )
        return [NodeWithScore(node=self._node(h), score=h.score) for h in result.hits]

    def _node(self, hit: Hit) -> TextNode:
        meta = hit_metadata(hit)
        common: dict[str, Any] = {
            "id_": hit.id,
            "text": hit_content(hit),
            "metadata": meta,
            "excluded_llm_metadata_keys": [k for k in _HIDDEN if k in meta],
            "excluded_embed_metadata_keys": list(meta),
        }
        if hit.kind != "image":
            return TextNode(**common)
        image: str | None = None
        if self.include_images:
            png = self._shared.figure_png(hit.id)
            if png is not None:
                image = base64.b64encode(png).decode()
        return ImageNode(image_path=hit.crop_path, image=image, image_mimetype="image/png", **common)
