"""The FastAPI app: the JSON API (hit fields named as in ``manualrag query --json``), the files behind
hits (figure crops, rendered pages, a hit's box), and the web page. ``create_app(state)`` builds it over
an open :class:`~manualrag.serve.state.IndexState`; the command in :mod:`.server` runs it with uvicorn."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from manualrag import __version__
from manualrag.errors import ManualragError, ModelUnavailableError
from manualrag.retriever.assets import MAX_DPI, MIN_DPI, BadRequest, FileChanged, NotFound
from manualrag.serve import limits
from manualrag.serve.limits import RequestError
from manualrag.serve.security import AUTHORIZED, Guard
from manualrag.serve.state import IndexState

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
IMAGE_CACHE = "private, max-age=300"


def _id_url(hit_id: str) -> str:
    return quote(hit_id, safe="")


def hit_json(h: Any) -> dict[str, Any]:
    """A hit as ``query --json`` prints it, plus ``doc_id`` and the ``urls`` of its files."""
    d = h.to_dict()
    doc_id = h.id.split(":", 1)[0]
    d["doc_id"] = doc_id
    urls = {"box": f"/api/hits/{_id_url(h.id)}", "page": f"/api/pages/{doc_id}/{h.page}.png"}
    if h.kind == "image" and h.crop_path:
        urls["figure"] = f"/api/figures/{_id_url(h.id)}.png"
    d["urls"] = urls
    for f in d["figures"]:
        f["url"] = f"/api/figures/{_id_url(f['figure_id'])}.png" if f.get("crop_path") else None
    return d


def _result_json(res: Any, started: float) -> dict[str, Any]:
    return {
        "query": res.query,
        "hits": [hit_json(h) for h in res.hits],
        "channels_used": res.channels_used,
        "timings_ms": {**res.timings_ms, "total": round((time.perf_counter() - started) * 1000, 2)},
        "notes": res.notes,
    }


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(state: IndexState, token: str | None = None, loopback_only: bool = True) -> FastAPI:
    app = FastAPI(
        title="manualrag",
        version=__version__,
        description=(
            "Search a manualrag index of technical manuals: text and figure hits (same fields as "
            "`manualrag query --json`), figure crops, pages rendered with the hit's box, an LLM context block."
            " When the server was started with a token, /api/ routes need `Authorization: Bearer <token>`."
        ),
        docs_url=None,  # /docs is an offline page (FastAPI's default loads Swagger UI from a CDN)
        redoc_url=None,
    )
    app.state.index = state

    # ---------------------------------------------------------------------------------------- errors
    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(FileChanged)
    async def _changed(_: Request, exc: FileChanged) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(BadRequest)
    async def _bad_request(_: Request, exc: BadRequest) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(ModelUnavailableError)
    async def _model(_: Request, exc: ModelUnavailableError) -> JSONResponse:
        return _error(503, str(exc).splitlines()[0])

    @app.exception_handler(ManualragError)
    async def _manualrag(_: Request, exc: ManualragError) -> JSONResponse:
        return _error(400, str(exc).splitlines()[0])

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors()[:3]:
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "path", "body"))
            parts.append(f"{where or 'request'}: {e.get('msg', 'invalid')}")
        return _error(400, "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(
            exc.status_code, "no such page or API route" if exc.status_code == 404 else str(exc.detail)
        )

    # ---------------------------------------------------------------------------------------- page
    # HEAD too: uptime checks and link checkers ask with HEAD (405 before)
    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html", headers={"cache-control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # ---------------------------------------------------------------------------------------- API
    @app.get(
        "/api/health",
        summary="Liveness: the server is up and its index open (with a token server, without the token: "
        'only {"status": "ok"})',
    )
    def health(request: Request) -> dict[str, Any]:
        if not request.scope.get(AUTHORIZED, False):  # a probe without the token learns nothing more
            return {"status": "ok"}
        r = state.retriever
        return {
            "status": "ok",
            "version": __version__,
            "documents": len(r.manifest.documents()),
            "models": r.models,
        }

    @app.get("/api/stats", summary="The index: documents, pages, records by kind, figures, models, size")
    def stats() -> dict[str, Any]:
        return state.stats()

    @app.get("/api/documents", summary="The indexed documents (doc_id, path, file_type, pages, title)")
    def documents() -> dict[str, Any]:
        return {"documents": [d.to_dict() for d in state.assets.documents()]}

    @app.get("/api/search", summary="Search by text: ranked text and figure hits")
    def search(
        q: Annotated[str, Query(description=f"query text, at most {limits.MAX_QUERY_CHARS} characters")] = "",
        k: Annotated[
            int | None, Query(description=f"hits, 1-{limits.MAX_K} (default {limits.DEFAULT_K})")
        ] = None,
        modality: Annotated[str, Query(description="all, text or image")] = "all",
        source: Annotated[str | None, Query(description="only files matching this glob, e.g. *.pdf")] = None,
        channels: Annotated[str | None, Query(description="comma list of dense,text,lexical")] = None,
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        res = state.search(
            limits.check_query(q),
            k=limits.check_k(k),
            modality=limits.check_modality(modality),
            source=limits.check_source(source),
            channels=limits.check_channels(channels),
        )
        return _result_json(res, t0)

    @app.post("/api/search", summary="Search by an uploaded image (query by example), with optional text")
    async def search_image(
        request: Request,
        image: Annotated[
            UploadFile,
            File(description=f"PNG/JPEG/WEBP/GIF/BMP/TIFF, at most {limits.MAX_UPLOAD_BYTES // 2**20} MiB"),
        ],
        q: Annotated[str, Form()] = "",
        k: Annotated[int | None, Form()] = None,
        modality: Annotated[str, Form()] = "all",
        source: Annotated[str | None, Form()] = None,
        channels: Annotated[str | None, Form()] = None,
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        in_url = [
            name for name in ("q", "k", "modality", "source", "channels") if name in request.query_params
        ]
        if in_url:  # GET's spelling; silently searching without them would answer another question
            raise RequestError(
                f"{', '.join(in_url)}: POST /api/search takes its options as multipart form fields "
                f"beside the image (curl -F {in_url[0]}=...), not in the URL"
            )
        data = await image.read(limits.MAX_UPLOAD_BYTES + 1)
        checked = limits.check_image(data)
        text = limits.check_query(q, required=False)
        kw = dict(
            k=limits.check_k(k),
            modality=limits.check_modality(modality),
            source=limits.check_source(source),
            channels=limits.check_channels(channels),
        )
        from starlette.concurrency import run_in_threadpool

        res = await run_in_threadpool(state.search, text, checked.data, **kw)
        return _result_json(res, t0)

    @app.get("/api/context", summary="A prompt-ready context block (numbered, fenced sources) for a query")
    def context(
        q: str = "",
        max_chars: Annotated[
            int | None, Query(description=f"{limits.MIN_CONTEXT_CHARS}-{limits.MAX_CONTEXT_CHARS}")
        ] = None,
        k: Annotated[
            int | None, Query(description=f"hits considered, 1-{limits.MAX_K} (default {limits.CONTEXT_K})")
        ] = None,
    ) -> dict[str, Any]:
        from manualrag.retriever.context import build_context

        text = limits.check_query(q)
        res = state.search(text, k=limits.check_k(k, default=limits.CONTEXT_K))
        return build_context(res, max_chars=limits.check_context_chars(max_chars), fmt="json")  # type: ignore[return-value]

    @app.get(
        "/api/figures/{figure_id}.png",
        summary="A figure's crop (PNG), by figure id",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    def figure(figure_id: str) -> Response:
        png = state.assets.figure_png(figure_id)
        return Response(png, media_type="image/png", headers={"cache-control": IMAGE_CACHE})

    @app.get(
        "/api/pages/{doc_id}/{page}.png",
        summary="A page of an indexed PDF rendered at dpi (or an indexed image), PNG",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    def page_png(
        doc_id: str,
        page: int,
        dpi: Annotated[int | None, Query(description=f"{MIN_DPI}-{MAX_DPI} (PDF pages)")] = None,
    ) -> Response:
        png = state.assets.page_png(doc_id, page, dpi=dpi)
        return Response(png, media_type="image/png", headers={"cache-control": IMAGE_CACHE})

    @app.get("/api/hits/{hit_id}", summary="Where a hit is: its document, page, boxes and the page size")
    def hit_box(hit_id: str) -> dict[str, Any]:
        if len(hit_id) > limits.MAX_HIT_ID_CHARS:
            raise RequestError(f"hit id: at most {limits.MAX_HIT_ID_CHARS} characters")
        box = state.assets.hit_box(hit_id)
        doc = state.assets.document(box.doc_id)
        out = box.to_dict()
        out["n_pages"] = doc.pages
        out["page_url"] = f"/api/pages/{box.doc_id}/{box.page}.png" if box.file_type != "text" else None
        return out

    _mount_mcp(app, state, loopback_only)
    app.add_middleware(limits.BodyLimit, max_bytes=limits.MAX_UPLOAD_BYTES + 64 * 1024)
    app.add_middleware(Guard, token=token, loopback_only=loopback_only)
    return app


def _mount_mcp(app: FastAPI, state: IndexState, loopback_only: bool) -> None:
    """The MCP tools of `manualrag mcp` over streamable HTTP at /api/mcp, behind the same Guard (token), with
    this server's Retriever and search (when the mcp extra is installed)."""
    try:
        from manualrag.integrations.mcp_server import create_server, mount_http
    except ImportError as exc:
        log.info("no MCP endpoint: %s", exc)
        return
    server = create_server(state.retriever, state.assets, search=state.search)
    # the Guard checks Host on loopback; the SDK's own Host/Origin check adds the Origin half there
    mount_http(app, server, path="/api/mcp", host="127.0.0.1" if loopback_only else "0.0.0.0")
