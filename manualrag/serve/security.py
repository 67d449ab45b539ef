"""Who may talk to the server, and what the browser is allowed to do with its pages.

* Bound to a loopback address, no token is needed, but the ``Host`` header must name a loopback host: a
  web page elsewhere cannot reach the API through DNS rebinding (its requests carry its own host name).
* Bound beyond loopback, the server does not start without a token (read from an environment variable);
  every ``/api/`` request then needs ``Authorization: Bearer <token>``, compared in constant time. The one
  exception is ``/api/health``, so that a proxy's or orchestrator's probe keeps working: without the token it
  answers only ``{"status": "ok"}`` (the app reads ``scope[AUTHORIZED]``), with it the full answer.
* Every response carries a strict Content-Security-Policy (scripts, styles and images from this origin
  only, no inline script), ``nosniff``, no referrer and no framing: even text that slipped into the page
  as markup could not run.
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
# what needs no token: the page, its static files, the API description, the health probe (which then says
# only that the server is up: see AUTHORIZED)
PUBLIC_PREFIXES = ("/static/",)
PUBLIC_PATHS = frozenset({"/", "/docs", "/openapi.json", "/api/health", "/favicon.ico"})
# scope key: whether the request may see more than a public route shows (no token mode, or a valid token)
AUTHORIZED = "manualrag.authorized"


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The host part of a Host header ('127.0.0.1:8080', '[::1]:80', 'localhost')."""
    header = header.strip()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def token_ok(header: str | None, token: str) -> bool:
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


class Guard:
    """ASGI middleware: the Host check (loopback without a token), the token (with one), the headers."""

    def __init__(self, app: ASGIApp, token: str | None, loopback_only: bool):
        self.app = app
        self.token = token
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope.get("path", "")
        if self.loopback_only and not is_loopback(_host_name(headers.get("host", ""))):
            await _deny(send, 421, "this server answers only requests addressed to localhost / 127.0.0.1")
            return
        public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
        authorized = not self.token or token_ok(headers.get("authorization"), self.token)
        if not public and not authorized:
            await _deny(send, 401, "missing or wrong token: send Authorization: Bearer <token>", bearer=True)
            return
        scope[AUTHORIZED] = authorized

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _deny(send: Send, status: int, message: str, bearer: bool = False) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if bearer:
        headers.append((b"www-authenticate", b'Bearer realm="manualrag"'))
    await send({"type": "http.response.start", "status": status, "headers": headers + SECURITY_HEADERS})
    await send({"type": "http.response.body", "body": body})
