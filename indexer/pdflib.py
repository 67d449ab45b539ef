"""pymupdf, imported without loading its layout model.

``import pymupdf`` also imports ``pymupdf.layout`` when that package is installed, which loads an ONNX model
(~0.6 s of CPU, more on a busy machine) in every process that imports pymupdf: each extraction worker and,
for page ranges, the parent, although the model only runs on the few pages that ``figures._keep_region``
cannot decide without it. Imported through this module, pymupdf comes without it, and
``figures.page_layout_boxes`` imports ``pymupdf.layout`` (which activates the model) on first use. The
model's answers do not depend on when it was loaded, so extraction gives the same result either way.
"""

from __future__ import annotations

import sys

if "pymupdf" not in sys.modules:
    sys.modules["pymupdf.layout"] = None  # type: ignore[assignment]  # "import pymupdf.layout" fails now
    try:
        import pymupdf
    finally:
        del sys.modules["pymupdf.layout"]  # ... and works again later, for page_layout_boxes

import pymupdf  # noqa: E402  (the same module object either way)

__all__ = ["pymupdf"]
