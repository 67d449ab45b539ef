"""The authenticating nginx proxy of deploy/ in front of a real `chroma run`: what it lets through, what it
refuses, and how the VectorStore reports a refusal. Uses the session's ``store_server`` (the one .ci/run
started, or deploy/serve.sh started here); deploy/serve.sh's own checks and TLS run against fresh instances.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from manualrag.config import DEFAULTS
from manualrag.errors import StoreError
from manualrag.store import VectorStore
from tests.chroma_server import (
    ENV_TOKEN,
    SERVE_SH,
    chroma_cli,
    free_port,
    nginx_cli,
    unique_prefix,
)

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def proxy(store_server):
    if not store_server.proxied:
        pytest.skip(
            f"no authenticating proxy in front of the test server ({store_server.how}): install nginx"
        )
    return store_server


def get(url: str, auth: str | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url)
    if auth is not None:
        req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - local test server
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def cfg_for(srv, headers: dict[str, str] | None = None) -> dict:
    cfg = copy.deepcopy(DEFAULTS)
    cfg["store"]["url"] = srv.url
    cfg["store"]["collection"] = unique_prefix("p")
    cfg["store"]["headers"] = srv.store_cfg()["headers"] if headers is None else headers
    return cfg


# ------------------------------------------------------------------------------------------ raw HTTP
def test_heartbeat_needs_the_token(proxy):
    hb = f"{proxy.url}/api/v2/heartbeat"
    for auth in (
        None,
        "Bearer wrong-token-0123456789",
        f"Bearer {proxy.token.upper()}" if proxy.token.upper() != proxy.token else f"Bearer {proxy.token}x",
        f"bearer {proxy.token}",  # the scheme too is compared exactly
        proxy.token,  # no scheme
        f"Bearer {proxy.token}, Bearer {proxy.token}",
    ):
        status, headers, body = get(hb, auth)
        assert status == 401, auth
        assert headers.get("WWW-Authenticate", "").startswith("Bearer"), headers
        assert json.loads(body)["error"] == "AuthError"
        assert proxy.token.encode() not in body

    status, _, body = get(hb, f"Bearer {proxy.token}")
    assert status == 200
    assert "nanosecond heartbeat" in json.loads(body)
    # every path is behind the check, not only the heartbeat
    assert get(f"{proxy.url}/api/v2/tenants/default_tenant")[0] == 401
    assert get(f"{proxy.url}/api/v2/tenants/default_tenant", f"Bearer {proxy.token}")[0] == 200


def test_chroma_itself_listens_on_loopback_only(proxy):
    if proxy.chroma_url is None:
        pytest.skip("the direct Chroma URL is not known (MANUALRAG_TEST_CHROMA_URL unset)")
    assert proxy.chroma_url.startswith(("http://127.0.0.1:", "http://localhost:"))
    # no auth of its own (chromadb 1.5.9): the reason it must never listen beyond 127.0.0.1
    assert get(f"{proxy.chroma_url}/api/v2/heartbeat")[0] == 200


# -------------------------------------------------------------------------------------- VectorStore
def test_vector_store_through_the_proxy(proxy, tmp_path):
    assert os.environ.get(ENV_TOKEN) == proxy.token
    cfg = cfg_for(proxy)
    assert cfg["store"]["headers"] == {"Authorization": "Bearer ${MANUALRAG_TEST_STORE_TOKEN}"}
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((4096, 512)).astype(np.float32)  # one full batch: ~25 MB of JSON
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    with VectorStore.open(tmp_path, cfg) as st:
        try:
            st.ensure("image", "m", 512)
            ids = [f"r{i}" for i in range(len(vecs))]
            st.upsert("image", ids, vecs, [{"page": i, "path": "a.pdf"} for i in range(len(vecs))])
            assert st.count("image") == len(vecs)
            res = st.query("image", vecs[[7, 4000]], 3)
            assert [r[0][0] for r in res] == ["r7", "r4000"]
            assert res[0][0][1] == pytest.approx(1.0, abs=1e-5)
            st.delete("image", ids[:10])
            assert st.count("image") == len(vecs) - 10
        finally:
            st.drop_all()
    assert not (tmp_path / "chroma").exists()


def test_vector_store_without_the_token_is_refused(proxy, tmp_path, monkeypatch):
    with pytest.raises(StoreError) as ei:
        VectorStore.open(tmp_path, cfg_for(proxy, headers={}))
    msg = str(ei.value)
    assert "refused the credentials" in msg and "HTTP 401" in msg and "store.headers" in msg
    assert proxy.url in msg and "\n" not in msg and "no store.headers were sent" in msg

    monkeypatch.setenv("MR_WRONG_TOKEN", "wrong-but-secret-0123456789")
    with pytest.raises(StoreError) as ei:
        VectorStore.open(tmp_path, cfg_for(proxy, headers={"Authorization": "Bearer ${MR_WRONG_TOKEN}"}))
    msg = str(ei.value)
    assert "refused the credentials" in msg and "HTTP 401" in msg and "Authorization" in msg
    assert "wrong-but-secret" not in msg and proxy.token not in msg


def test_token_rejected_mid_run_is_one_line(proxy, tmp_path):
    """A token rotated on the proxy while an indexer runs: a StoreError, not a traceback."""
    with VectorStore.open(tmp_path, cfg_for(proxy)) as st:
        try:
            st.ensure("text", "m", 8)
            session = st.client._server._session
            good = session.headers["Authorization"]
            session.headers["Authorization"] = "Bearer rotated-away-0123456789"
            with pytest.raises(StoreError, match="refused the credentials") as ei:
                st.count("text")
            assert "\n" not in str(ei.value) and "rotated-away" not in str(ei.value)
            session.headers["Authorization"] = good
        finally:
            st.drop_all()


# ------------------------------------------------------------------------------------ deploy/serve.sh
needs_serve = pytest.mark.skipif(
    not (nginx_cli() and chroma_cli() and shutil.which("bash")), reason="needs nginx and chroma"
)


def serve(action: str, tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MANUALRAG_")},
        "MANUALRAG_SERVE_DATA": str(tmp / "data"),
        "MANUALRAG_SERVE_RUN": str(tmp / "run"),
        "MANUALRAG_SERVE_CHROMA_PORT": str(free_port()),
        "MANUALRAG_SERVE_PROXY_PORT": str(free_port()),
        "CHROMA": chroma_cli() or "",
        "NGINX": nginx_cli() or "",
        **env,
    }
    return subprocess.run(
        ["bash", str(SERVE_SH), action], env=full, capture_output=True, text=True, timeout=120
    )


@needs_serve
def test_serve_refuses_unsafe_settings(tmp_path):
    res = serve("start", tmp_path, MANUALRAG_SERVE_PROXY_HOST="0.0.0.0", MANUALRAG_TOKEN="a" * 32)
    assert res.returncode == 1 and "TLS" in res.stderr
    res = serve("start", tmp_path, MANUALRAG_TOKEN="short")
    assert res.returncode == 1 and "16-256 characters" in res.stderr
    res = serve("start", tmp_path, MANUALRAG_TOKEN='bad"token;0123456789')
    assert res.returncode == 1 and "16-256 characters" in res.stderr
    assert "bad" not in res.stderr  # a refused token is not echoed either
    assert not (tmp_path / "run" / "chroma.pid").exists()
    res = serve("status", tmp_path)
    assert res.returncode == 3 and "not running" in res.stdout
    assert serve("nonsense", tmp_path).returncode == 2


@needs_serve
def test_serve_generates_and_keeps_a_token(tmp_path):
    ports = {"MANUALRAG_SERVE_CHROMA_PORT": str(free_port()), "MANUALRAG_SERVE_PROXY_PORT": str(free_port())}
    try:
        res = serve("start", tmp_path, **ports)
        assert res.returncode == 0, res.stderr
        token_file = tmp_path / "run" / "token"
        token = token_file.read_text().strip()
        assert len(token) == 48 and token not in res.stdout + res.stderr  # told where, never shown
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"
        site = tmp_path / "run" / "manualrag-site.conf"
        assert oct(site.stat().st_mode & 0o777) == "0o600" and token in site.read_text()
        url = f"http://127.0.0.1:{ports['MANUALRAG_SERVE_PROXY_PORT']}/api/v2/heartbeat"
        assert get(url)[0] == 401 and get(url, f"Bearer {token}")[0] == 200
        status = serve("status", tmp_path, **ports)
        assert status.returncode == 0 and "with the token: 200" in status.stdout
        assert serve("start", tmp_path, **ports).returncode == 1  # already running
    finally:
        res = serve("stop", tmp_path, **ports)
    assert res.returncode == 0 and "stopped nginx" in res.stdout and "stopped chroma" in res.stdout
    assert not (tmp_path / "run" / "manualrag-site.conf").exists()  # the rendered token is gone
    assert (tmp_path / "run" / "token").exists()  # kept for the next start
    # the token never reaches a log
    for log in (tmp_path / "run").glob("*.log"):
        assert token not in log.read_text(errors="replace"), log
    assert serve("status", tmp_path, **ports).returncode == 3


@needs_serve
def test_serve_with_tls(tmp_path, monkeypatch):
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    crt, key = tmp_path / "proxy.crt", tmp_path / "proxy.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-sha256", "-days", "2", "-nodes",
         "-keyout", str(key), "-out", str(crt), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    ports = {"MANUALRAG_SERVE_PROXY_PORT": str(port), "MANUALRAG_SERVE_CHROMA_PORT": str(free_port())}
    token = "tls-" + "0123456789abcdef" * 2
    try:
        res = serve(
            "start",
            tmp_path,
            MANUALRAG_TOKEN=token,
            MANUALRAG_SERVE_TLS_CERT=str(crt),
            MANUALRAG_SERVE_TLS_KEY=str(key),
            **ports,
        )
        assert res.returncode == 0, res.stderr
        assert f"https://127.0.0.1:{port}" in res.stdout
        status = serve("status", tmp_path, MANUALRAG_TOKEN=token, **ports)  # knows it is https
        assert status.returncode == 0 and "with the token: 200" in status.stdout, status.stdout
        monkeypatch.setenv("MR_TLS_TOKEN", token)
        cfg = copy.deepcopy(DEFAULTS)
        cfg["store"].update(
            url=f"https://localhost:{port}",
            collection=unique_prefix("tls"),
            headers={"Authorization": "Bearer ${MR_TLS_TOKEN}"},
        )
        monkeypatch.delenv("CHROMA_SERVER_SSL_VERIFY", raising=False)
        with pytest.raises(StoreError, match="certificate .*CHROMA_SERVER_SSL_VERIFY"):
            VectorStore.open(tmp_path, cfg)
        monkeypatch.setenv("CHROMA_SERVER_SSL_VERIFY", str(crt))
        with VectorStore.open(tmp_path, cfg) as st:
            st.ensure("text", "m", 8)
            st.upsert("text", ["a"], np.ones((1, 8)), [{"page": 1}])
            assert st.query("text", np.ones(8), 1)[0][0][0] == "a"
        # plain http on the TLS port is refused by nginx
        assert get(f"http://127.0.0.1:{port}/api/v2/heartbeat", f"Bearer {token}")[0] == 400
    finally:
        serve("stop", tmp_path, **ports)
