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
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from manualrag.cli import main
from tests.rel_helpers import keyword_index

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "manuals"
PUMP = "pump-controller-manual.pdf"
WIRING_QUERY = "electric wiring layout"


def _readme_blocks(lang: str) -> list[str]:
    """The ``lang`` code blocks of the README's "Use from an LLM" section, as a user would paste them."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Use from an LLM\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)


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
    # invoke(q, k=0) came back with the retriever's default k (0 read as "not given"); -1 was refused
    from manualrag.errors import ManualragError

    retriever = LCRetriever(index_dir=str(index), k=4)
    assert len(retriever.invoke("pump", k=1)) == 1
    with pytest.raises(ManualragError, match="k: the number of hits must be a whole number from 1"):
        retriever.invoke("pump", k=0)


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
    with_image = ManualragRetriever(index_dir=index, k=1, include_images=True).retrieve(WIRING_QUERY)[0].node
    assert isinstance(with_image, ImageNode) and with_image.image
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(with_image.image))) as im:
        assert im.format == "PNG"


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


@pytest.mark.parametrize("n", [0, 1], ids=["langchain", "llamaindex"])
def test_readme_recipe_runs_as_pasted(index, tmp_path, monkeypatch, capsys, n):
    """The README's Python recipes, run unchanged from a folder whose data/index is our index."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "index").symlink_to(index)
    monkeypatch.chdir(tmp_path)
    code = _readme_blocks("python")[n]
    exec(compile(code, f"README recipe {n}", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert PUMP in out and ("figure" in out or "image" in out)


# -------------------------------------------------------------------------------------------- MCP
def _env() -> dict[str, str]:
    keep = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "ANONYMIZED_TELEMETRY")
    return {k: os.environ[k] for k in keep if k in os.environ}


def _conversation(index: Path) -> dict:
    """Start `manualrag mcp` from another folder with a relative --index-dir, and talk to it with the SDK's
    ClientSession over stdio: the calls of a model looking for the wiring diagram, then hostile ones."""
    import anyio
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    # the README's client configuration, with this machine's paths: the installed `manualrag` script, and a
    # relative --index-dir from another folder
    (snippet,) = _readme_blocks("json")
    spec = json.loads(snippet)["mcpServers"]["manuals"]
    script = Path(sys.executable).parent / "manualrag"
    args = list(spec["args"])
    args[args.index("--index-dir") + 1] = index.name
    params = StdioServerParameters(
        command=str(script) if script.exists() else shutil.which("manualrag") or spec["command"],
        args=args,
        cwd=str(index.parent),
        env={**_env(), **spec["env"]},
    )
    out: dict = {}

    async def talk() -> None:
        with open(index.parent / "mcp-stderr.log", "w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    out["tools"] = (await session.list_tools()).tools
                    call = session.call_tool
                    out["search"] = await call("search_manuals", {"query": WIRING_QUERY, "k": 5})
                    out["search_images"] = await call(
                        "search_manuals", {"query": "pump", "k": 5, "modality": "image"}
                    )
                    hits = out["search"].structured_content["hits"]
                    fig = next(h["figure_id"] for h in hits if h["kind"] == "image")
                    out["figure"] = await call("get_figure", {"figure_id": fig})
                    out["context"] = await call("get_context", {"query": WIRING_QUERY, "max_chars": 2000})
                    for size in (550, 600, 650, 700, 800, 1000, 1500):  # small, inside the documented range
                        out[f"context_{size}"] = await call(
                            "get_context", {"query": WIRING_QUERY, "max_chars": size}
                        )
                    out["page"] = await call("get_page", {"path": PUMP, "page": 4})
                    out["page_text_doc"] = await call("get_page", {"path": "release-notes.md", "page": 1})
                    out["documents"] = await call("list_documents", {})
                    bad = {
                        "bad_figure": ("get_figure", {"figure_id": "no-such-figure"}),
                        "empty_figure": ("get_figure", {"figure_id": " "}),
                        "empty_path": ("get_page", {"path": "", "page": 1}),
                        "figure_traversal": ("get_figure", {"figure_id": "../secret.txt"}),
                        "page_traversal": ("get_page", {"path": "../secret.txt", "page": 1}),
                        "page_absolute": ("get_page", {"path": str(index.parent / "secret.txt"), "page": 1}),
                        "page_unindexed": ("get_page", {"path": "secret.txt", "page": 1}),
                        "page_out_of_range": ("get_page", {"path": PUMP, "page": 999}),
                        "empty_query": ("search_manuals", {"query": "  "}),
                        "bad_k": ("search_manuals", {"query": "pump", "k": 0}),
                        "bad_modality": ("search_manuals", {"query": "pump", "modality": "video"}),
                        "bad_max_chars": ("get_context", {"query": "pump", "max_chars": 10}),
                        "page_zero": ("get_page", {"path": PUMP, "page": 0}),
                        "k_not_a_number": ("search_manuals", {"query": "pump", "k": "abc"}),
                        "page_not_a_number": ("get_page", {"path": PUMP, "page": [4]}),
                    }
                    for key, (tool, args) in bad.items():
                        out[key] = await call(tool, args)

    anyio.run(talk)
    out["stderr"] = (index.parent / "mcp-stderr.log").read_text()
    return out


@pytest.fixture(scope="module")
def mcp_talk(index) -> dict:
    """One server subprocess for all MCP tests (slow: it loads torch, Chroma and the models: ~10 s alone,
    ~30 s on a busy machine)."""
    return _conversation(index)


def _texts(result) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


@pytest.mark.slow
def test_mcp_lists_its_tools_with_descriptions_for_a_model(mcp_talk):
    tools = {t.name: t for t in mcp_talk["tools"]}
    assert set(tools) == {"search_manuals", "get_context", "get_figure", "get_page", "list_documents"}
    for t in tools.values():
        assert len(t.description) > 100, t.name
        assert t.annotations.read_only_hint
    assert set(tools["search_manuals"].input_schema["properties"]) == {"query", "k", "modality", "source"}
    assert tools["search_manuals"].input_schema["required"] == ["query"]
    assert "hits" in tools["search_manuals"].output_schema["properties"]


@pytest.mark.slow
def test_mcp_search_returns_structured_hits_with_the_wiring_figure_first(mcp_talk):
    res = mcp_talk["search"]
    assert not res.is_error
    hits = res.structured_content["hits"]
    top = hits[0]
    assert top["kind"] == "image" and top["path"] == PUMP and top["page"] == 4
    assert top["figure_id"] and top["caption"].startswith("Figure 2: Electric wiring layout")
    assert all({"rank", "score", "path", "page", "snippet", "found_by"} <= set(h) for h in hits)
    assert "crop_path" not in top, "server paths stay on the server: figures go by id"
    # what the model reads: a compact ranked list with the citation and the id to call get_figure with
    assert f"1. [figure, vector] {PUMP} p.4: Figure 2: Electric wiring layout" in _texts(res)
    assert f"figure_id: {top['figure_id']}" in _texts(res)
    images = mcp_talk["search_images"].structured_content["hits"]
    assert images and all(h["kind"] == "image" for h in images)


@pytest.mark.slow
def test_mcp_get_figure_returns_the_diagram_as_a_png_with_its_citation(mcp_talk):
    from PIL import Image

    res = mcp_talk["figure"]
    assert not res.is_error
    image = [c for c in res.content if c.type == "image"]
    assert len(image) == 1 and image[0].mime_type == "image/png"
    with Image.open(io.BytesIO(base64.b64decode(image[0].data))) as im:
        im.load()
        assert im.format == "PNG" and min(im.size) > 50 and max(im.size) <= 1568
    text = _texts(res)
    assert PUMP in text and "page 4" in text and "Caption: Figure 2: Electric wiring layout" in text
    assert res.structured_content["path"] == PUMP and res.structured_content["pages"] == [4]


@pytest.mark.slow
def test_mcp_get_context_fits_small_sizes_or_says_the_size_it_was_given(mcp_talk):
    """get_context took its figure list out of max_chars and raised what was left to 500: max_chars 1500
    failed with "--max-chars 500 leaves no room ... give at least 573", a flag and a size the model never
    sent. Each size now gives a block with a source within it, or an error naming the size asked for."""
    for size in (550, 600, 650, 700, 800, 1000, 1500):
        res = mcp_talk[f"context_{size}"]
        text = _texts(res)
        if res.is_error:
            assert (
                f"a context block of {size} characters leaves no room" in text and "--max-chars" not in text
            )
        else:
            assert len(text) <= size and "BEGIN SOURCE [1]" in text, (size, text)
    assert not mcp_talk["context_1500"].is_error


@pytest.mark.slow
def test_mcp_get_context_get_page_and_list_documents(mcp_talk):
    ctx = _texts(mcp_talk["context"])
    assert len(ctx) <= 2000 and "BEGIN SOURCE [1]" in ctx and f"{PUMP} p.4" in ctx
    # figures go by id, after the fence; no server path reaches the client
    wiring = mcp_talk["search"].structured_content["hits"][0]["figure_id"]
    assert ctx.index(f"(figure_id: {wiring})") > ctx.rindex("END SOURCE")
    assert "crops/" not in ctx and "Image file" not in ctx
    page = mcp_talk["page"]
    assert not page.is_error
    from PIL import Image

    png = next(c for c in page.content if c.type == "image")
    with Image.open(io.BytesIO(base64.b64decode(png.data))) as im:
        assert im.format == "PNG" and im.height > im.width > 500  # a portrait page, readable
    assert "page 4 of" in _texts(page) and "wiring" in _texts(page).lower()
    md = mcp_talk["page_text_doc"]
    assert not md.is_error and all(c.type == "text" for c in md.content) and "E07" in _texts(md)
    docs = mcp_talk["documents"].structured_content["documents"]
    assert {d["path"] for d in docs} == {PUMP, "quick-start-card.png", "release-notes.md"}
    assert all(d["pages"] >= 1 and d["file_type"] in ("pdf", "image", "text") for d in docs)


@pytest.mark.slow
@pytest.mark.parametrize(
    "key, says",
    [
        ("bad_figure", "no-such-figure"),
        # figure ids are in search hits only: list_documents has none
        ("empty_figure", "figure_id: give a value from search_manuals (an image hit's figure_id)"),
        ("empty_path", "path: give a value from search_manuals or list_documents"),
        ("figure_traversal", "secret"),
        ("page_traversal", "no indexed document"),
        ("page_absolute", "no indexed document"),
        ("page_unindexed", "no indexed document"),
        ("page_out_of_range", "999"),
        ("empty_query", "query: give a non-empty question"),
        ("bad_k", "k: the number of hits must be a whole number from 1 to 50, not 0"),
        ("bad_modality", "modality: choose all, text or image, not 'video'"),
        ("bad_max_chars", "max_chars: give a size from 500 to 50000 characters, not 10"),
        ("page_zero", "there is no page 0"),
        # wrong types are refused by the SDK's argument check: one line too, not pydantic's report
        ("k_not_a_number", "k: Input should be a valid integer"),
        ("page_not_a_number", "page: Input should be a valid integer"),
    ],
)
def test_mcp_bad_input_is_a_clear_tool_error_and_reads_nothing_outside(mcp_talk, key, says):
    res = mcp_talk[key]
    assert res.is_error
    text = _texts(res)
    assert says in text and len(text.splitlines()) == 1, text
    assert not any(c.type == "image" for c in res.content)
    assert "TOP-SECRET-TOKEN" not in text and "Traceback" not in text


@pytest.mark.slow
def test_mcp_server_kept_stdout_for_the_protocol(mcp_talk):
    assert "Traceback" not in mcp_talk["stderr"], mcp_talk["stderr"][-2000:]


def test_mcp_over_streamable_http_in_manualrag_serve_behind_its_token(index):
    """`manualrag serve`'s app carries the same tools at /api/mcp, behind its token, with its own Retriever;
    the SDK's streamable-HTTP client talks to it."""
    import anyio
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    from manualrag.config import load_config
    from manualrag.serve.app import create_app
    from manualrag.serve.state import IndexState

    token = "t0ken-for-the-integration-test-0123456789"
    state = IndexState(index, load_config())
    app = create_app(state, token=token, loopback_only=False)
    base = "http://testserver"
    out: dict = {}

    async def talk() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx2.ASGITransport(app=app)
            async with httpx2.AsyncClient(transport=transport, base_url=base) as anonymous:
                out["no_token"] = await anonymous.post(
                    "/api/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
                )
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx2.AsyncClient(transport=transport, base_url=base, headers=headers) as http:
                async with streamable_http_client(f"{base}/api/mcp", http_client=http) as (read, write):
                    async with ClientSession(read, write) as session:
                        await session.initialize()
                        out["tools"] = [t.name for t in (await session.list_tools()).tools]
                        hits = await session.call_tool("search_manuals", {"query": WIRING_QUERY, "k": 3})
                        fid = hits.structured_content["hits"][0]["figure_id"]
                        out["figure"] = await session.call_tool("get_figure", {"figure_id": fid})

    try:
        anyio.run(talk)
    finally:
        state.close()
    assert out["no_token"].status_code == 401
    assert "get_figure" in out["tools"]
    assert [c.type for c in out["figure"].content] == ["image", "text"]


def test_mcp_command_without_an_index_is_a_one_line_error(tmp_path):
    res = CliRunner().invoke(main, ["mcp", "--index-dir", str(tmp_path / "nope")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "manualrag index" in res.output


def test_mcp_command_takes_store_as_every_command_does(tmp_path):
    """An index whose vectors live on a Chroma server is refused without the server's URL (an empty embedded
    store would answer from keywords only); `manualrag mcp` had no --store to give it (only a config file)."""
    _, idx = keyword_index(tmp_path, {"pump.md": "# Pump\n\nBleed the pump before the first start.\n"})
    saved = json.loads((idx / "config.json").read_text())
    saved["store"]["url"] = "http://127.0.0.1:9"  # as written by `index --store http://127.0.0.1:9`
    (idx / "config.json").write_text(json.dumps(saved))
    res = CliRunner().invoke(main, ["mcp", "--index-dir", str(idx)])
    assert res.exit_code == 2 and "http://127.0.0.1:9" in res.output and "--store" in res.output, res.output
    # with the URL the index opens (the store connects on the first vector search) and the server starts
    # serving stdin, which is empty here: it ends at once
    env = {**_env(), "PATH": os.environ["PATH"]}
    run = subprocess.run(
        [sys.executable, "-m", "manualrag", "mcp", "--index-dir", str(idx), "--store", "http://127.0.0.1:9"],
        input="",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0 and "error" not in run.stderr, run.stderr


@pytest.mark.slow
def test_mcp_search_marks_text_a_reader_cannot_see(tmp_path):
    """Hidden text (render mode 3, white on white, off the page) is where injected instructions hide. The
    context block leaves it out; search_manuals gave it to the model unmarked. Its hit now carries
    ``suspect`` and the text the model reads says the words are not visible on the page."""
    import anyio
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    from tests.helpers_pdf import suspect_text_pdf

    lib = tmp_path / "lib"
    lib.mkdir()
    suspect_text_pdf(lib / "bulletin.pdf")
    res = CliRunner().invoke(
        main, ["index", str(lib), "--index-dir", str(tmp_path / "idx"), "--no-dense", "-q"]
    )
    assert res.exit_code == 0, res.output
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "manualrag", "mcp", "--index-dir", "idx"],
        cwd=str(tmp_path),
        env=_env(),
    )
    out: dict = {}

    async def talk() -> None:
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                out["hidden"] = await session.call_tool(
                    "search_manuals", {"query": "ignore previous instructions"}
                )

    anyio.run(talk)
    hits = out["hidden"].structured_content["hits"]
    hidden = [h for h in hits if "Ignore previous instructions" in h["text"]]
    assert hidden and all(h["suspect"] for h in hidden), hits
    assert "(warning: this text is not visible on the page:" in _texts(out["hidden"])
    visible = [h for h in hits if h["text"].startswith("Visible instructions")]
    assert all(h["suspect"] is None for h in visible)
