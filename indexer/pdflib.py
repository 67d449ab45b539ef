"""pymupdf, imported lazily and without loading its layout model.

``import pymupdf`` also imports ``pymupdf.layout`` when that package is installed, which loads an ONNX model
(~0.6 s of CPU, more on a busy machine) in every process that imports pymupdf, although the model only runs
on the few pages that ``figures._keep_region`` cannot decide without it. Imported through this module,
pymupdf comes without it, and ``figures.page_layout_boxes`` imports ``pymupdf.layout`` (which activates the
model) on first use. The model's answers do not depend on when it was loaded, so extraction gives the same
result either way.

pymupdf4llm, which pymupdf's ``__init__`` also imports when it is installed (~0.2 s of CPU: numpy,
onnxruntime), is left out the same way: pymupdf's ``to_markdown`` wrappers are off in a process that loads
pymupdf through this module (import pymupdf4llm itself for them; extraction never uses them).

The layout model runs on onnxruntime, whose defaults suit one process alone on the machine: a thread per
core, spinning while it waits for work. Extraction runs one worker per core, so :func:`load_layout_model`
gives each worker's sessions its share of the cores (:data:`layout_threads`, set by the worker from the pool
size) and no spinning: on 2 cores, two workers' spinning threads burned ~2 s of CPU per 1,000-page manual
that the other worker needed.

pymupdf itself (~0.2-0.4 s of CPU) is loaded on first use of one of its attributes: the parent of page
ranges imports ``extract`` and ``figures`` for their document-level planning, which never touches MuPDF,
so it never pays for it. The extraction workers load it at start-up (:func:`load`).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Any

# what pymupdf's ``__init__`` imports when installed and extraction never uses: the layout model (loaded on
# first use instead) and pymupdf4llm (~0.2 s of CPU in every worker's start-up: numpy, onnxruntime,
# tabulate), whose markdown helpers pymupdf then offers; quality_bench imports pymupdf4llm itself
_BLOCKED = ("pymupdf.layout", "pymupdf4llm")


class _WithoutLayout(importlib.abc.Loader):
    """pymupdf's own loader, with the imports of ``_BLOCKED`` failing while pymupdf's ``__init__`` runs."""

    def __init__(self, inner: Any):
        self.inner = inner

    def create_module(self, spec: Any) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        blocked = [name for name in _BLOCKED if name not in sys.modules]
        for name in blocked:
            sys.modules[name] = None  # type: ignore[assignment]  # "import NAME" fails now
        try:
            self.inner.exec_module(module)
        finally:
            for name in blocked:
                del sys.modules[name]  # ... and works again later (pymupdf.layout: for page_layout_boxes)
        # what importing pymupdf4llm set for the whole process, and every index so far was extracted with:
        # text boxes without MuPDF's quad corrections (line boxes, and so figure crops, depend on it)
        module.TOOLS.unset_quad_corrections(True)
        module.TOOLS.mupdf_display_errors(False)
        module.TOOLS.mupdf_display_warnings(False)


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


# intra-op threads of the layout model's onnxruntime sessions; 0: onnxruntime's default (one per core)
layout_threads = 0


def load_layout_model() -> None:
    """Import ``pymupdf.layout`` (which loads its ONNX sessions and activates the model), its sessions on
    :data:`layout_threads` threads without spin-waiting. Every session is made during that import."""
    if "pymupdf.layout" in sys.modules:
        return
    import onnxruntime

    make = onnxruntime.InferenceSession

    def session(path: Any, sess_options: Any = None, *args: Any, **kwargs: Any) -> Any:
        opts = sess_options or onnxruntime.SessionOptions()
        if layout_threads:
            opts.intra_op_num_threads = layout_threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return make(path, opts, *args, **kwargs)

    onnxruntime.InferenceSession = session  # only while pymupdf.layout makes its sessions
    try:
        import pymupdf.layout  # noqa: F401
    finally:
        onnxruntime.InferenceSession = make


__all__ = ["load", "load_layout_model", "pymupdf"]
