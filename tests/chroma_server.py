"""A real Chroma server for tests: ``MANUALRAG_TEST_STORE_URL`` when set, else ``chroma run`` on a free port.

Use :func:`chroma_server_url` (a context manager) from a session-scoped fixture; give every test its own
collection prefix (:func:`unique_prefix`) so tests sharing the server stay isolated.
"""

from __future__ import annotations

import contextlib
import os
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
from pathlib import Path

ENV_URL = "MANUALRAG_TEST_STORE_URL"
READY_TIMEOUT_S = 15.0

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
