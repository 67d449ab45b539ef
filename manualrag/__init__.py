"""manualrag: multimodal RAG indexer for technical manuals."""

__version__ = "0.1.0"
