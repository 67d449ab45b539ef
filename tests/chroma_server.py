"""A real Chroma server for tests, normally behind the authenticating nginx proxy of ``deploy/``.

:func:`store_server` (a context manager, used by the session fixture ``store_server`` in conftest.py) yields
a :class:`StoreServer`, from the first of:

1. ``MANUALRAG_TEST_STORE_URL`` (+ ``MANUALRAG_TEST_STORE_TOKEN`` when it is a proxy wanting a bearer token,
   ``MANUALRAG_TEST_CHROMA_URL`` for the Chroma server behind it): servers started by ``.ci/run``;
2. ``deploy/serve.sh start`` into a temporary folder, on free ports, with a random token, when nginx is
   installed (so ``make test`` on a developer machine exercises the proxy too);
3. a bare ``chroma run`` on a free port (no proxy, no token).

Give every test its own collection prefix (:func:`unique_prefix`) so tests sharing the server stay isolated.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ENV_URL = "MANUALRAG_TEST_STORE_URL"
ENV_TOKEN = "MANUALRAG_TEST_STORE_TOKEN"
ENV_CHROMA_URL = "MANUALRAG_TEST_CHROMA_URL"
READY_TIMEOUT_S = 15.0
REPO = Path(__file__).resolve().parents[1]
SERVE_SH = REPO / "deploy" / "serve.sh"

# measured by the last start in this process (seconds), for reports
last_start_s: float | None = None


def chroma_cli() -> str | None:
    """The ``chroma`` command that ships with chromadb: next to this Python first, then on PATH."""
    here = Path(sys.executable).parent / "chroma"
    if here.exists():
        return str(here)
    return shutil.which("chroma")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nginx_cli() -> str | None:
    """nginx (Debian installs it in /usr/sbin, which a normal user's PATH may lack)."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


@dataclass(frozen=True)
class StoreServer:
    """Where server-mode tests send their requests."""

    url: str  # what clients use: the proxy when there is one
    token: str | None  # the bearer token the proxy wants (None: no proxy in front)
    chroma_url: str | None  # the Chroma server itself, unauthenticated (None: not known)
    how: str  # "env", "serve.sh" or "chroma run": for messages

    @property
    def proxied(self) -> bool:
        return self.token is not None

    def store_cfg(self) -> dict[str, object]:
        """The ``store`` config keys that reach this server: url, and the token header as ``${VAR}``."""
        headers = {"Authorization": f"Bearer ${{{ENV_TOKEN}}}"} if self.token else {}
        return {"url": self.url, "headers": headers}


def _heartbeat(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1.0) as resp:  # noqa: S310 - local
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def chroma_server_url() -> Iterator[str]:
    """Yield the URL of a running Chroma server; a server started here is terminated afterwards."""
    global last_start_s
    url = os.environ.get(ENV_URL)
    if url:
        yield url.rstrip("/")
        return
    cli = chroma_cli()
    if cli is None:
        raise RuntimeError("the `chroma` command (installed with chromadb) was not found")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="manualrag-chroma-") as tmp:
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log_file:
            t0 = time.monotonic()
            proc = subprocess.Popen(
                [cli, "run", "--path", str(Path(tmp) / "data"), "--host", "127.0.0.1", "--port", str(port)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
            )
            try:
                while not _heartbeat(url):
                    if proc.poll() is not None:
                        raise RuntimeError(
                            f"chroma run exited with code {proc.returncode}: {log_path.read_text()[-2000:]}"
                        )
                    if time.monotonic() - t0 > READY_TIMEOUT_S:
                        raise RuntimeError(
                            f"chroma run did not answer on {url} within {READY_TIMEOUT_S:.0f} s"
                        )
                    time.sleep(0.05)
                last_start_s = time.monotonic() - t0
                yield url
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


def unique_prefix(base: str = "t") -> str:
    """A collection prefix no other test uses (valid Chroma name characters)."""
    return f"{base}{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def serve_sh(token: str) -> Iterator[StoreServer]:
    """``deploy/serve.sh start`` in a temporary folder on free ports; ``stop`` afterwards (also on failure)."""
    chroma_port = free_port()
    proxy_port = free_port()
    while proxy_port == chroma_port:
        proxy_port = free_port()
    with tempfile.TemporaryDirectory(prefix="manualrag-serve-") as tmp:
        env = {
            **os.environ,
            "MANUALRAG_TOKEN": token,
            "MANUALRAG_SERVE_DATA": str(Path(tmp) / "data"),
            "MANUALRAG_SERVE_RUN": str(Path(tmp) / "run"),
            "MANUALRAG_SERVE_CHROMA_PORT": str(chroma_port),
            "MANUALRAG_SERVE_PROXY_PORT": str(proxy_port),
            "MANUALRAG_SERVE_PROXY_HOST": "127.0.0.1",
            "CHROMA": chroma_cli() or "",
            "NGINX": nginx_cli() or "",
        }
        for var in ("MANUALRAG_TOKEN_FILE", "MANUALRAG_SERVE_TLS_CERT", "MANUALRAG_SERVE_TLS_KEY"):
            env.pop(var, None)

        def run(action: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["bash", str(SERVE_SH), action], env=env, capture_output=True, text=True, timeout=120
            )

        try:
            res = run("start")
            if res.returncode != 0:
                raise RuntimeError(f"deploy/serve.sh start failed ({res.returncode}): {res.stderr[-3000:]}")
            yield StoreServer(
                url=f"http://127.0.0.1:{proxy_port}",
                token=token,
                chroma_url=f"http://127.0.0.1:{chroma_port}",
                how="serve.sh",
            )
        finally:
            run("stop")


@contextlib.contextmanager
def store_server() -> Iterator[StoreServer]:
    """The server for server-mode tests (see the module docstring for the order tried).

    While it runs, ``MANUALRAG_TEST_STORE_TOKEN`` holds its token (store configs name it as
    ``${MANUALRAG_TEST_STORE_TOKEN}``), and is restored afterwards.
    """
    url = os.environ.get(ENV_URL)
    if url:
        yield StoreServer(
            url=url.rstrip("/"),
            token=os.environ.get(ENV_TOKEN) or None,
            chroma_url=(os.environ.get(ENV_CHROMA_URL) or "").rstrip("/") or None,
            how="env",
        )
        return
    if nginx_cli() and chroma_cli() and SERVE_SH.exists() and shutil.which("bash"):
        token = secrets.token_hex(24)
        old = os.environ.get(ENV_TOKEN)
        os.environ[ENV_TOKEN] = token
        try:
            with serve_sh(token) as srv:
                yield srv
        finally:
            if old is None:
                os.environ.pop(ENV_TOKEN, None)
            else:
                os.environ[ENV_TOKEN] = old
        return
    with chroma_server_url() as direct:
        yield StoreServer(url=direct, token=None, chroma_url=direct, how="chroma run")
