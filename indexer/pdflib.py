"""pymupdf, imported lazily and without loading its layout model.

``import pymupdf`` also imports ``pymupdf.layout`` when that package is installed, which loads an ONNX model
(~0.6 s of CPU, more on a busy machine) in every process that imports pymupdf, although the model only runs
on the few pages that ``figures._keep_region`` cannot decide without it. Imported through this module,
pymupdf comes without it, and ``figures.page_layout_boxes`` imports ``pymupdf.layout`` (which activates the
model) on first use. The model's answers do not depend on when it was loaded, so extraction gives the same
result either way.

pymupdf itself (~0.2-0.4 s of CPU) is loaded on first use of one of its attributes: the parent of page
ranges imports ``extract`` and ``figures`` for their document-level planning, which never touches MuPDF,
so it never pays for it. The extraction workers load it at start-up (:func:`load`).
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any


class _WithoutLayout:
    """pymupdf's own loader, with ``import pymupdf.layout`` failing while pymupdf's ``__init__`` runs."""

    def __init__(self, inner: Any):
        self.inner = inner

    def create_module(self, spec: Any) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        had = "pymupdf.layout" in sys.modules
        if not had:
            sys.modules["pymupdf.layout"] = None  # type: ignore[assignment]  # "import pymupdf.layout" fails now
        try:
            self.inner.exec_module(module)
        finally:
            if not had:
                del sys.modules["pymupdf.layout"]  # ... and works again later, for page_layout_boxes


def _lazy_pymupdf() -> ModuleType:
    if "pymupdf" in sys.modules:
        return sys.modules["pymupdf"]
    spec = importlib.util.find_spec("pymupdf")
    if spec is None or spec.loader is None:
        import pymupdf  # raises the usual ImportError

        return pymupdf
    spec.loader = importlib.util.LazyLoader(_WithoutLayout(spec.loader))
    module = importlib.util.module_from_spec(spec)
    sys.modules["pymupdf"] = module
    spec.loader.exec_module(module)  # the real import runs on first attribute access
    return module


pymupdf: Any = _lazy_pymupdf()


def load() -> None:
    """Run pymupdf's import now (in a worker, before it says it is ready), not on first use."""
    _ = pymupdf.TOOLS


__all__ = ["load", "pymupdf"]
