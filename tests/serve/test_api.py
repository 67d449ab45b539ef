"""The HTTP API of `manualrag serve` through FastAPI's TestClient, on the shared index of data/manuals:
every endpoint, its error paths, path traversal attempts, the token beyond localhost, the live index."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from manualrag.cli import main
from manualrag.config import load_config
from manualrag.errors import ConfigError, ManualragError
from manualrag.serve import limits
from manualrag.serve.app import create_app
from manualrag.serve.server import check_port, read_token
from manualrag.serve.state import IndexState
from tests.serve.conftest import CARD, HOSTILE_NAME, NOTES, PUMP

LOCAL = "http://127.0.0.1"
TOKEN = "t0ken-for-the-tests-0123456789"
HIT_FIELDS = {
    "rank", "kind", "score", "path", "page", "pages", "channels", "id", "heading", "text", "snippet",
    "suspect", "figure_kind", "caption", "labels", "ocr_text", "nearby_text", "crop_path", "bbox",
    "quality", "rotation", "figures", "copies",
}  # fmt: skip


@pytest.fixture(scope="module")
def state(serve_index):
    st = IndexState(serve_index.index_dir, load_config(serve_index.config), refresh_s=0.0)
    yield st
    st.close()


@pytest.fixture(scope="module")
def client(state):
    with TestClient(create_app(state), base_url=LOCAL) as c:
        yield c


def _search(client, q="electric wiring layout", **params):
    r = client.get("/api/search", params={"q": q, **params})
    assert r.status_code == 200, r.text
    return r.json()


def _wiring_hit(client):
    hits = _search(client)["hits"]
    return next(h for h in hits if h["kind"] == "image" and h["caption"].startswith("Figure 2"))


def _error(r, status: int, fragment: str) -> None:
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"], r.json()


# ------------------------------------------------------------------------------------------ endpoints
def test_health_stats_documents(client, serve_index):
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["documents"] == 4 and h["models"]["clip"]
    stats = client.get("/api/stats").json()
    cli = CliRunner().invoke(
        main,
        ["--config", str(serve_index.config), "stats", "--index-dir", str(serve_index.index_dir), "--json"],
    )
    expected = json.loads(cli.stdout)
    assert set(stats) == set(expected)
    assert {k: stats[k] for k in ("documents", "pages", "figures", "vectors")} == {
        k: expected[k] for k in ("documents", "pages", "figures", "vectors")
    }
    docs = {d["path"]: d for d in client.get("/api/documents").json()["documents"]}
    assert set(docs) == {PUMP, CARD, NOTES, HOSTILE_NAME}


def test_search_has_the_fields_and_hits_of_query_json(client, serve_index):
    res = _search(client, k=5)
    first = res["hits"][0]
    assert first["kind"] == "image" and first["path"] == PUMP and first["page"] == 4
    assert first["caption"] == "Figure 2: Electric wiring layout"
    for h in res["hits"]:
        assert HIT_FIELDS <= set(h) and set(h) - HIT_FIELDS == {"doc_id", "urls"}
    assert res["timings_ms"]["total"] > 0 and "lexical" in res["channels_used"]
    cli = CliRunner().invoke(
        main,
        ["--config", str(serve_index.config), "query", "electric wiring layout", "-k", "5"]
        + ["--index-dir", str(serve_index.index_dir), "--json"],
    )
    assert [h["id"] for h in json.loads(cli.stdout)] == [h["id"] for h in res["hits"]]


def test_search_filters(client):
    assert {h["kind"] for h in _search(client, modality="image")["hits"]} == {"image"}
    assert {h["kind"] for h in _search(client, modality="text")["hits"]} == {"text"}
    assert {h["path"] for h in _search(client, q="quick start power", source="*.png")["hits"]} == {CARD}
    # "**/" also matches no folder: the card lies at the library root
    assert {h["path"] for h in _search(client, q="quick start power", source="**/*.png")["hits"]} == {CARD}
    hits = _search(client, q="GNYE BK/WH", channels="lexical")["hits"]
    assert hits and all(set(h["channels"]) == {"lexical"} for h in hits)


def test_the_page_answers_head_as_get(client):
    """Uptime checks and link checkers ask with HEAD: the page answered 405."""
    get, head = client.get("/"), client.head("/")
    assert get.status_code == head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]


def test_figure_crop_and_security_headers(client, serve_index):
    hit = _wiring_hit(client)
    r = client.get(hit["urls"]["figure"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == open(hit["crop_path"], "rb").read()
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"


def test_page_render_and_hit_box(client):
    hit = _wiring_hit(client)
    box = client.get(hit["urls"]["box"]).json()
    assert (box["page"], box["n_pages"], box["path"], box["kind"]) == (4, 8, PUMP, "image")
    assert box["bbox"] == hit["bbox"] and box["page_url"] == hit["urls"]["page"]
    r = client.get(box["page_url"], params={"dpi": 72})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(r.content)) as im:
        assert abs(im.width - box["page_width"]) <= 1 and abs(im.height - box["page_height"]) <= 1
    text_hit = next(h for h in _search(client, q="fuse", modality="text")["hits"])
    tbox = client.get(text_hit["urls"]["box"]).json()
    assert tbox["kind"] == "text" and tbox["page"] == text_hit["page"] and tbox["bbox"] == text_hit["bbox"]
    linked = [f for h in _search(client, q="fuse", modality="text")["hits"] for f in h["figures"]]
    assert linked and client.get(linked[0]["url"]).status_code == 200


def _overlap_share(a: list[float], b: list[float]) -> float:
    """The share of box ``b``'s area that box ``a`` covers (page units)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0) / ((b[2] - b[0]) * (b[3] - b[1]))


def test_text_hit_boxes_keep_to_the_passage_text(client):
    """The '3.1 Fuses' passage on page 4 of the pump manual: its text sits above and below the wiring diagram
    (Figure 2), its stored bbox (the union of its blocks) encloses the diagram; its ``boxes`` outline the text
    alone, one box per run of lines. A figure hit's boxes are its bbox."""
    fig = _wiring_hit(client)
    fig_box = client.get(fig["urls"]["box"]).json()
    assert fig_box["kind"] == "image" and fig_box["boxes"] == [fig_box["bbox"]]
    hit = next(
        h
        for h in _search(client, q="fuse", modality="text", k=20)["hits"]
        if h["page"] == 4 and h["path"] == PUMP and h["text"].startswith("3.1 Fuses")
    )
    box = client.get(hit["urls"]["box"]).json()
    assert box["bbox"] == hit["bbox"] and _overlap_share(box["bbox"], fig_box["bbox"]) > 0.9  # the union
    assert len(box["boxes"]) >= 2
    x0, y0, x1, y1 = box["bbox"]
    for b in box["boxes"]:
        assert x0 - 1 <= b[0] < b[2] <= x1 + 1 and y0 - 1 <= b[1] < b[3] <= y1 + 1
        assert _overlap_share(b, fig_box["bbox"]) < 0.02, (b, fig_box["bbox"])
    tops = sorted(b[1] for b in box["boxes"])
    assert tops[0] < fig_box["bbox"][1] and tops[-1] > fig_box["bbox"][3] - 5  # above and below the diagram


def test_text_file_hit_boxes_are_its_bbox(client):
    hit = next(
        h for h in _search(client, q="release notes", modality="text", k=20)["hits"] if h["path"] == NOTES
    )
    box = client.get(hit["urls"]["box"]).json()
    assert box["file_type"] == "text" and box["boxes"] == [box["bbox"]]


def test_image_document_page_and_text_document(client):
    docs = {d["path"]: d for d in client.get("/api/documents").json()["documents"]}
    r = client.get(f"/api/pages/{docs[CARD]['doc_id']}/1.png")
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
    _error(client.get(f"/api/pages/{docs[NOTES]['doc_id']}/1.png"), 404, "no page images")


def test_context_block(client):
    r = client.get("/api/context", params={"q": "electric wiring layout", "max_chars": 2000})
    assert r.status_code == 200
    body = r.json()
    assert "BEGIN SOURCE [1]" in body["context"] and len(body["context"]) <= 2000
    assert body["sources"][0]["kind"] == "image"
    _error(client.get("/api/context", params={"q": "x", "max_chars": 10}), 400, "max_chars")
    _error(client.get("/api/context"), 400, "q:")


@pytest.mark.parametrize("k", [0, -1, limits.MAX_K + 1])
def test_context_k_out_of_range_is_refused_like_search(client, k):
    """``/api/context?k=0`` answered 200 with the default k (``k or 8``) while ``/api/search?k=0`` and
    ``/api/context?k=-1`` said 400 ``k: from 1 to 50``: the same value now gets the same answer."""
    for route in ("/api/search", "/api/context"):
        r = client.get(route, params={"q": "wiring", "k": k})
        assert r.status_code == 400 and r.json()["error"] == f"k: from 1 to {limits.MAX_K} (got {k})", r.text


def test_query_by_uploaded_image(client):
    hit = _wiring_hit(client)
    png = client.get(hit["urls"]["figure"]).content
    r = client.post("/api/search", files={"image": ("wiring.png", png, "image/png")}, data={"k": "3"})
    assert r.status_code == 200, r.text
    first = r.json()["hits"][0]
    assert first["id"] == hit["id"] and "image_image" in first["channels"]
    assert len(r.json()["hits"]) == 3
    # GET's spelling (?k=3 in the URL) was ignored: 10 hits came back, as if k had been given
    r = client.post("/api/search?k=3", files={"image": ("wiring.png", png, "image/png")})
    _error(r, 400, "k: POST /api/search takes its options as multipart form fields")


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"q": ""}, "q:"),
        ({"q": "x" * (limits.MAX_QUERY_CHARS + 1)}, "at most 1000"),
        ({"q": "a", "k": 0}, "k:"),
        ({"q": "a", "k": limits.MAX_K + 1}, "k:"),
        ({"q": "a", "k": "many"}, "k:"),
        ({"q": "a", "modality": "video"}, "modality"),
        ({"q": "a", "channels": "dense,telepathy"}, "channels"),
        ({"q": "a", "source": "*" * 400}, "source"),
    ],
)
def test_search_limits(client, params, fragment):
    _error(client.get("/api/search", params=params), 400, fragment)


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (w, h)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_upload_limits(client):
    def post(data: bytes, name="q.png"):
        return client.post("/api/search", files={"image": (name, data, "application/octet-stream")})

    _error(post(b""), 400, "empty")
    _error(post(b"%PDF-1.7 not an image"), 400, "not a readable image")
    bomb = _png(8000, 6000)  # 48 Mpx in a few KiB: refused from the header, never decoded
    assert len(bomb) < 100_000
    _error(post(bomb), 413, "megapixels")
    _error(post(b"\x89PNG" + os.urandom(limits.MAX_UPLOAD_BYTES + 100_000)), 413, "at most")
    _error(client.post("/api/search", data={"q": "x"}), 400, "image")


def test_page_limits_and_unknown_ids(client):
    hit = _wiring_hit(client)
    doc = hit["doc_id"]
    for dpi in (limits_min := 35, 301, "big"):
        r = client.get(f"/api/pages/{doc}/4.png", params={"dpi": dpi})
        assert r.status_code == 400 and "dpi" in r.json()["error"], (limits_min, r.text)
    _error(client.get(f"/api/pages/{doc}/0.png"), 404, "no page 0")
    _error(client.get(f"/api/pages/{doc}/9.png"), 404, "no page 9")
    _error(client.get("/api/pages/0123456789abcdef/1.png"), 404, "no indexed document")
    _error(client.get("/api/figures/nope.png"), 404, "no figure")
    _error(client.get("/api/hits/nope"), 404, "no passage or figure")
    _error(client.get("/api/hits/" + "x" * 300), 400, "hit id")


@pytest.mark.parametrize(
    "path",
    [
        "/api/figures/..%2F..%2Findex.sqlite.png",
        "/api/figures/%2Fetc%2Fpasswd.png",
        "/api/figures/..%2Fcrops.png",
        "/api/pages/..%2F..%2Fetc%2Fpasswd/1.png",
        "/api/pages/%2Fetc%2Fpasswd/1.png",
        "/api/pages/..%2Flib%2F" + quote(PUMP) + "/1.png",
        "/api/pages/..%5C..%5Cx/1.png",
        "/api/pages/%2E%2E/1.png",
        "/static/..%2F..%2Fcli.py",
        "/static/../app.py",
        "/static/%2E%2E/state.py",
        "/api/hits/..%2F..%2Findex.sqlite",
    ],
)
def test_traversal_attempts_get_404_never_a_file(client, path):
    r = client.get(path)
    assert r.status_code == 404, (path, r.status_code, r.text[:200])
    assert b"SQLite" not in r.content and b"import" not in r.content and b"root:" not in r.content


def test_page_by_library_path_only_for_indexed_documents(client):
    assert client.get("/api/pages/" + quote(PUMP) + "/1.png", params={"dpi": 40}).status_code == 200
    _error(client.get("/api/pages/LICENSE-xfig-howto.txt/1.png"), 404, "no indexed document")


# ------------------------------------------------------------------------------------------ who may ask
def test_token_required_beyond_localhost(state):
    app = create_app(state, token=TOKEN, loopback_only=False)
    with TestClient(app, base_url="http://192.0.2.10:8080") as c:
        r = c.get("/api/search", params={"q": "fuse"})
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        for bad in ("Bearer wrong", "Basic " + TOKEN, TOKEN, "Bearer " + TOKEN[:-1]):
            assert (
                c.get("/api/search", params={"q": "fuse"}, headers={"Authorization": bad}).status_code == 401
            )
        ok = {"Authorization": "Bearer " + TOKEN}
        assert c.get("/api/search", params={"q": "fuse"}, headers=ok).status_code == 200
        assert c.get("/api/documents").status_code == 401
        assert c.get("/api/figures/x.png").status_code == 401  # before any lookup
        for public in ("/", "/api/health", "/docs", "/openapi.json", "/static/app.js"):
            assert c.get(public).status_code == 200, public


def test_health_without_the_token_says_only_ok(state, serve_index):
    """A trial user's `serve --token-env`: /api/health answered anyone with the version, the document count
    and the models' local folders. Without a valid token it now says only that the server is up (a proxy's
    or orchestrator's probe keeps working); with the token, the full answer; without token mode, unchanged."""
    app = create_app(state, token=TOKEN, loopback_only=False)
    with TestClient(app, base_url="http://192.0.2.10:8080") as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic " + TOKEN}):
            r = c.get("/api/health", headers=headers)
            assert r.status_code == 200 and r.json() == {"status": "ok"}, (headers, r.text)
            assert str(serve_index.index_dir.parent) not in r.text
        full = c.get("/api/health", headers={"Authorization": "Bearer " + TOKEN}).json()
        assert full["documents"] == 4 and full["models"]["clip"] and full["version"]
    with TestClient(create_app(state), base_url=LOCAL) as c:  # no token mode: as before
        assert set(c.get("/api/health").json()) == {"status", "version", "documents", "models"}


@pytest.mark.slow
def test_served_health_reveals_nothing_without_the_token(serve_index, tmp_path):
    """The same through a real `manualrag serve --token-env` subprocess, as a probe would ask it."""
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "manualrag", "--config", str(serve_index.config), "serve"]
    cmd += ["--index-dir", str(serve_index.index_dir), "--port", str(port), "--token-env", "TOK"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOK": TOKEN}
    url = f"http://127.0.0.1:{port}/api/health"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                r = httpx.get(url, timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.3)
        assert r.status_code == 200 and r.json() == {"status": "ok"}, r.text
        full = httpx.get(url, headers={"Authorization": "Bearer " + TOKEN}, timeout=10).json()
        assert full["documents"] == 4 and set(full["models"]) >= {"clip"}
        assert httpx.get(url.replace("health", "stats"), timeout=10).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_loopback_server_refuses_other_host_names(client):
    """DNS rebinding: a page served from evil.example whose name resolves to 127.0.0.1."""
    _error(
        client.get("/api/search", params={"q": "fuse"}, headers={"host": "evil.example:8080"}),
        421,
        "localhost",
    )
    assert client.get("/api/health", headers={"host": "localhost:8080"}).status_code == 200
    assert client.get("/api/health", headers={"host": "[::1]:8080"}).status_code == 200


def test_token_rules():
    assert read_token("127.0.0.1", None) is None and read_token("localhost", None) is None
    with pytest.raises(ConfigError, match="--token-env"):
        read_token("0.0.0.0", None)
    with pytest.raises(ConfigError, match="not set"):
        read_token("0.0.0.0", "MANUALRAG_NO_SUCH_TOKEN", environ={})
    with pytest.raises(ConfigError, match="at least 16"):
        read_token("0.0.0.0", "T", environ={"T": "short"})
    with pytest.raises(ConfigError, match="not an environment variable name"):
        read_token("0.0.0.0", "A B", environ={})
    assert read_token("0.0.0.0", "T", environ={"T": TOKEN}) == TOKEN


def test_serve_command_refuses_public_host_without_token(serve_index):
    res = CliRunner().invoke(
        main, ["serve", "--index-dir", str(serve_index.index_dir), "--host", "0.0.0.0", "--port", "1"]
    )
    assert res.exit_code == 2 and "--token-env" in res.output and "Traceback" not in res.output


def test_port_in_use_and_missing_index(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ManualragError, match="in use"):
            check_port("127.0.0.1", s.getsockname()[1])
        free = s.getsockname()[1]
    res = CliRunner().invoke(main, ["serve", "--index-dir", str(tmp_path / "none"), "--port", str(free)])
    assert res.exit_code == 2 and "no index" in res.output
    res = CliRunner().invoke(main, ["serve", "--index-dir", str(tmp_path / "none"), "--port", "0"])
    assert res.exit_code == 2 and "--port must be from 1 to 65535" in res.output


# ------------------------------------------------------------------------------------------ live index
@pytest.mark.slow
def test_live_index_update_is_seen_without_restart(serve_index, tmp_path):
    """A running app answers for a document that another process indexed after it started, through the
    vector channels too (the embedded store is reopened), not only the lexical one."""
    lib, idx = tmp_path / "lib", tmp_path / "index"
    shutil.copytree(serve_index.library, lib)
    shutil.copytree(serve_index.index_dir, idx)
    st = IndexState(idx, load_config(serve_index.config), refresh_s=0.0)
    try:
        with TestClient(create_app(st), base_url=LOCAL) as c:
            q = {"q": "zeolite dehumidifier cartridge replacement", "k": 3}
            assert not any("dehumidifier" in h["text"] for h in c.get("/api/search", params=q).json()["hits"])
            (lib / "dryer.md").write_text(
                "# Dryer\n\nReplace the zeolite dehumidifier cartridge every 2000 operating hours.\n"
            )
            run = subprocess.run(
                [sys.executable, "-m", "manualrag", "--config", str(serve_index.config), "index", str(lib)]
                + ["--index-dir", str(idx), "-q"],
                capture_output=True,
                text=True,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
                timeout=300,
            )
            assert run.returncode == 0, run.stderr
            hits = c.get("/api/search", params=q).json()["hits"]
            assert hits and hits[0]["path"] == "dryer.md"
            assert "text" in hits[0]["channels"] and "lexical" in hits[0]["channels"]
            assert st.reopened >= 1
            assert any(d["path"] == "dryer.md" for d in c.get("/api/documents").json()["documents"])
    finally:
        st.close()


# ------------------------------------------------------------------------------------------ changed files
def test_a_file_replaced_since_indexing_is_refused_not_rendered(tmp_path):
    """A user replaced an indexed 8-page PDF with another PDF and did not index again: page 5 came back 200
    with the other file's page under the old document's hits. The page (web API and MCP get_page alike)
    now answers 409 saying the file changed and to run `manualrag index`; a file only touched (same bytes,
    new mtime: a copy, a checkout) is still served."""
    import anyio
    from mcp.server.mcpserver.exceptions import ToolError

    from manualrag.integrations.mcp_server import create_server
    from tests.rel_helpers import versioned_pdf

    lib, idx = tmp_path / "lib", tmp_path / "idx"
    lib.mkdir()
    (lib / "pump.pdf").write_bytes(versioned_pdf("rev1", pages=8))
    res = CliRunner().invoke(main, ["index", str(lib), "--index-dir", str(idx), "--no-dense", "-q"])
    assert res.exit_code == 0, res.output
    st = IndexState(idx, load_config(), refresh_s=0.0)
    try:
        doc_id = st.assets.document("pump.pdf").doc_id
        server = create_server(st.retriever, st.assets)
        with TestClient(create_app(st), base_url=LOCAL) as c:
            os.utime(lib / "pump.pdf", (1e9, 1e9))  # touched: same bytes
            assert c.get(f"/api/pages/{doc_id}/5.png").status_code == 200
            (lib / "pump.pdf").write_bytes(versioned_pdf("rev2", pages=8))
            r = c.get(f"/api/pages/{doc_id}/5.png")
            assert r.headers["content-type"] == "application/json"  # not the other file's page
            _error(r, 409, "the file 'pump.pdf' changed since it was indexed: run `manualrag index`")
            hit = f"{doc_id}:p5:0"
            _error(c.get(f"/api/hits/{quote(hit, safe='')}"), 409, "changed since it was indexed")
        with pytest.raises(ToolError, match="changed since it was indexed: run `manualrag index`"):
            anyio.run(server.call_tool, "get_page", {"path": "pump.pdf", "page": 5})
    finally:
        st.close()
