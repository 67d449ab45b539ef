"""The LLM integrations over one index of the sample manuals: the MCP server (a `manualrag mcp` subprocess
spoken to by the SDK's own client over stdio), the LangChain retriever (LangChain's standard retriever suite)
and the LlamaIndex retriever.

Tiny CLIP (random weights) makes the dense channels real but meaningless; the wiring figure is found by its
caption through the lexical and text channels, as in test_query.
"""

from __future__ import annotations

import base64
import importlib
import io
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from manualrag.cli import main

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "manuals"
PUMP = "pump-controller-manual.pdf"
WIRING_QUERY = "electric wiring layout"


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_clip_dir, minilm_dir) -> Path:
    base = tmp_path_factory.mktemp("integrations")
    lib = base / "lib"
    lib.mkdir()
    for name in (PUMP, "quick-start-card.png", "release-notes.md"):
        shutil.copy(SAMPLE / name, lib / name)
    # a file beside the library and the index, which no tool may ever read
    (base / "secret.txt").write_text("TOP-SECRET-TOKEN\n")
    cfg_path = base / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({"model": str(tiny_clip_dir), "text_model": str(minilm_dir)}))
    idx = base / "index"
    res = CliRunner().invoke(
        main, ["--config", str(cfg_path), "index", str(lib), "--index-dir", str(idx), "-q"]
    )
    assert res.exit_code == 0, res.output
    return idx


@pytest.fixture(scope="module", autouse=True)
def _close_shared_retrievers():
    yield
    from manualrag.integrations._common import close_shared

    close_shared()


# -------------------------------------------------------------------------------------------- LangChain
from langchain_tests.integration_tests import RetrieversIntegrationTests  # noqa: E402

from manualrag.integrations.langchain import ManualragRetriever as LCRetriever  # noqa: E402


# the suite's one async test needs the asyncio mark; its sync tests, which get it too, may ignore it
@pytest.mark.asyncio
@pytest.mark.filterwarnings("ignore:.*is marked with '@pytest.mark.asyncio' but it is not an async function")
class TestLangchainStandard(RetrieversIntegrationTests):
    """LangChain's own standard retriever tests, unchanged."""

    index_dir = ""

    @pytest.fixture(autouse=True)
    def _index_dir(self, index):
        type(self).index_dir = str(index)

    @property
    def retriever_constructor(self) -> type[LCRetriever]:
        return LCRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"index_dir": self.index_dir}

    @property
    def retriever_query_example(self) -> str:
        return "how do I reset error E07 after thermal shutdown"


def test_langchain_wiring_figure_first_with_its_crop(index):
    docs = LCRetriever(index_dir=str(index), k=5, include_images=True).invoke(WIRING_QUERY)
    top = docs[0]
    assert top.metadata["kind"] == "image" and top.metadata["figure_kind"] == "vector"
    assert top.metadata["path"] == PUMP and top.metadata["page"] == 4
    assert top.page_content.startswith("Figure 2: Electric wiring layout")
    crop = Path(top.metadata["crop_path"])
    assert crop.is_file() and crop.parent.name == "crops" and crop.is_relative_to(index.resolve())
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(top.metadata["image_base64"]))) as im:
        assert im.format == "PNG" and max(im.size) <= 1568
    texts = [d for d in docs if d.metadata["kind"] == "text"]
    assert texts and all(d.metadata["crop_path"] is None and d.page_content for d in texts)


def test_langchain_modality_and_bad_arguments(index):
    docs = LCRetriever(index_dir=str(index), k=4, modality="text").invoke("pump")
    assert docs and all(d.metadata["kind"] == "text" for d in docs)
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        LCRetriever(index_dir=str(index), modality="video")
    from manualrag.errors import IndexNotFoundError

    with pytest.raises(IndexNotFoundError, match="manualrag index"):
        LCRetriever(index_dir=str(index.parent / "nope"))


# -------------------------------------------------------------------------------------------- LlamaIndex
def test_llamaindex_figure_query_returns_an_image_node(index):
    from llama_index.core.schema import ImageNode, MetadataMode, TextNode

    from manualrag.integrations.llamaindex import ManualragRetriever

    nodes = ManualragRetriever(index_dir=index, k=5).retrieve(WIRING_QUERY)
    top = nodes[0]
    assert isinstance(top.node, ImageNode)
    assert top.node.metadata["page"] == 4 and top.node.metadata["path"] == PUMP
    assert Path(top.node.image_path).is_file() and top.node.image_mimetype == "image/png"
    assert top.score == pytest.approx(top.node.metadata["score"])
    # what an LLM reads of the node: its citation and caption, not the bookkeeping
    llm_text = top.node.get_content(metadata_mode=MetadataMode.LLM)
    assert "Electric wiring layout" in llm_text and PUMP in llm_text and "channels" not in llm_text
    texts = [n for n in nodes if not isinstance(n.node, ImageNode)]
    assert texts and all(isinstance(n.node, TextNode) for n in texts)


@pytest.mark.parametrize(
    "module, extra",
    [
        ("langchain", "langchain"),
        ("llamaindex", "llamaindex"),
        ("mcp_server", "mcp"),
    ],
)
def test_integration_without_its_extra_names_the_extra(monkeypatch, module, extra):
    blocked = {"langchain": "langchain_core", "llamaindex": "llama_index", "mcp_server": "mcp"}[module]
    for name in list(sys.modules):
        if name == blocked or name.startswith(blocked + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, blocked, None)  # `import blocked` now raises ImportError
    full = f"manualrag.integrations.{module}"
    if full in sys.modules:
        monkeypatch.delitem(sys.modules, full)
    with pytest.raises(ImportError) as err:
        importlib.import_module(full)
    msg = str(err.value)
    assert "\n" not in msg and f"manualrag[{extra}]" in msg


# -------------------------------------------------------------------------------------------- MCP
def _env() -> dict[str, str]:
    keep = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "ANONYMIZED_TELEMETRY")
    return {k: os.environ[k] for k in keep if k in os.environ}
