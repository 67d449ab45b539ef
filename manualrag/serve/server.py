"""``manualrag serve``: the checks before binding (host, token, port, index), then uvicorn."""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

from manualrag.errors import ConfigError, ManualragError
from manualrag.serve.security import is_loopback

log = logging.getLogger(__name__)
MIN_TOKEN_CHARS = 16
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def read_token(host: str, token_env: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The API token from the environment variable ``token_env``; required when ``host`` is not loopback."""
    env = os.environ if environ is None else environ
    if token_env is None:
        if not is_loopback(host):
            raise ConfigError(
                f"--host {host} is reachable from other machines: give --token-env NAME, with a token of at "
                f"least {MIN_TOKEN_CHARS} characters in the environment variable NAME (clients send "
                "Authorization: Bearer <token>), or bind 127.0.0.1"
            )
        return None
    if not _ENV_NAME.fullmatch(token_env):
        raise ConfigError(f"--token-env: {token_env!r} is not an environment variable name")
    token = env.get(token_env, "").strip()
    if not token:
        raise ConfigError(
            f"--token-env {token_env}: the environment variable {token_env} is not set or empty"
        )
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"--token-env {token_env}: the token is {len(token)} characters; use at least {MIN_TOKEN_CHARS}"
            " (e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    return token


def check_port(host: str, port: int) -> None:
    """Fail with a clear message now, rather than with uvicorn's log line after the models loaded."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port must be from 1 to 65535, not {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host.strip("[]"), port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ManualragError(f"port {port} on {host} is in use: pick another with --port") from None
        raise ManualragError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def url_for(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def serve(
    cfg: dict[str, Any],
    host: str = "127.0.0.1",
    port: int = 8080,
    token_env: str | None = None,
    refresh_s: float = 2.0,
    access_log: bool = False,
) -> None:
    import uvicorn

    from manualrag.serve.app import create_app
    from manualrag.serve.state import IndexState

    token = read_token(host, token_env)
    check_port(host, port)
    index_dir = Path(cfg["index_dir"])
    state = IndexState(index_dir, cfg, refresh_s=refresh_s)
    try:
        state.warm_up()
        n_docs = len(state.assets.documents())
        app = create_app(state, token=token, loopback_only=is_loopback(host) and token is None)
        url = url_for(host, port)
        print(
            f"manualrag serve: {n_docs} document(s) from {index_dir}\n"
            f"  open {url} in a browser (API description: {url}docs, {url}openapi.json)"
            + ("\n  API requests need: Authorization: Bearer $" + str(token_env) if token else "")
            + "\n  Ctrl+C stops",
            flush=True,
        )
        config = uvicorn.Config(
            app,
            host=host.strip("[]"),
            port=port,
            log_level="warning",
            access_log=access_log,
            server_header=False,
            lifespan="on",  # runs the MCP endpoint's session manager
        )
        server = uvicorn.Server(config)
        server.run()
        if not server.started:
            raise ManualragError(f"could not start the server on {host}:{port}")
    finally:
        state.close()
        sys.stdout.flush()
