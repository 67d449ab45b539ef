"""Request bounds of the HTTP API, with one-line messages that name the parameter (HTTP 400/413)."""

from __future__ import annotations

import io
from dataclasses import dataclass

from manualrag.errors import ManualragError

MAX_QUERY_CHARS = 1000
MAX_K = 50
DEFAULT_K = 10
CONTEXT_K = 8  # hits a context block considers, as `manualrag context -k`
MAX_SOURCE_CHARS = 300
MIN_CONTEXT_CHARS, MAX_CONTEXT_CHARS, DEFAULT_CONTEXT_CHARS = 500, 50_000, 6000
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_UPLOAD_PIXELS = (
    40_000_000  # a larger image (or a small file that claims it: a decompression bomb) is refused
)
MAX_HIT_ID_CHARS = 200
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


class RequestError(ManualragError):
    """A request outside the API's bounds; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def check_query(q: str | None, required: bool = True) -> str | None:
    q = (q or "").strip()
    if not q:
        if required:
            raise RequestError("q: give a query text (e.g. ?q=wiring diagram)")
        return None
    if len(q) > MAX_QUERY_CHARS:
        raise RequestError(f"q: at most {MAX_QUERY_CHARS} characters (got {len(q)})")
    if "\x00" in q:
        raise RequestError("q: contains a NUL character")
    return q


def check_k(k: int | None, default: int = DEFAULT_K) -> int:
    """``k`` as given, or ``default`` when absent (``None`` only: ``k=0`` is out of range, not absent)."""
    if k is None:
        return default
    if not 1 <= k <= MAX_K:
        raise RequestError(f"k: from 1 to {MAX_K} (got {k})")
    return k


def check_modality(modality: str) -> str:
    if modality not in ("all", "text", "image"):
        raise RequestError(f"modality: all, text or image (got {modality[:40]!r})")
    return modality


def check_source(source: str | None) -> str | None:
    if not source:
        return None
    if len(source) > MAX_SOURCE_CHARS:
        raise RequestError(f"source: at most {MAX_SOURCE_CHARS} characters (got {len(source)})")
    return source


def check_channels(channels: str | None) -> list[str] | None:
    from manualrag.retriever.search import CHANNELS

    if not channels:
        return None
    out = [c.strip() for c in channels.split(",") if c.strip()]
    for c in out:
        if c.lower() not in CHANNELS:
            raise RequestError(f"channels: unknown channel {c[:40]!r} (choose from {', '.join(CHANNELS)})")
    return [c.lower() for c in out] or None


def check_context_chars(max_chars: int | None) -> int:
    if max_chars is None:
        return DEFAULT_CONTEXT_CHARS
    if not MIN_CONTEXT_CHARS <= max_chars <= MAX_CONTEXT_CHARS:
        raise RequestError(f"max_chars: from {MIN_CONTEXT_CHARS} to {MAX_CONTEXT_CHARS} (got {max_chars})")
    return max_chars


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    format: str
    width: int
    height: int


def check_image(data: bytes) -> CheckedImage:
    """An uploaded query image: an image format we read, within the pixel bound (checked from the header,
    before any decoding, so a small file claiming a huge canvas is refused cheaply), and decodable."""
    from PIL import Image

    if not data:
        raise RequestError("image: the uploaded file is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise RequestError(f"image: at most {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB", status=413)
    try:
        with Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as img:
            fmt, (w, h) = img.format or "?", img.size
            if w * h > MAX_UPLOAD_PIXELS:
                raise RequestError(
                    f"image: {w}x{h} pixels is more than the {MAX_UPLOAD_PIXELS // 1_000_000} megapixels allowed",
                    status=413,
                )
            img.load()
    except RequestError:
        raise
    except Image.DecompressionBombError:
        raise RequestError("image: too many pixels (decompression bomb guard)", status=413) from None
    except Exception:  # noqa: BLE001 - PIL raises many kinds on broken or unknown files
        raise RequestError(f"image: not a readable image (allowed: {', '.join(UPLOAD_FORMATS)})") from None
    return CheckedImage(data, fmt, w, h)


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body larger than ``max_bytes`` gets 413, checked from Content-Length
    up front and by counting while it streams (chunked uploads), before anything spools it to disk."""

    def __init__(self, app, max_bytes: int):  # type: ignore[no-untyped-def]
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        message = f"request body: at most {self.max_bytes // (1024 * 1024)} MiB"
        for k, v in scope["headers"]:
            if k.lower() == b"content-length":
                try:
                    too_big = int(v) > self.max_bytes
                except ValueError:
                    too_big = True
                if too_big:
                    await _send_json(send, 413, message)
                    return
        seen = 0
        started = False

        async def counted():  # type: ignore[no-untyped-def]
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return msg

        async def tracked(msg):  # type: ignore[no-untyped-def]
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await _send_json(send, 413, message)


async def _send_json(send, status: int, message: str) -> None:  # type: ignore[no-untyped-def]
    import json

    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
