"""The files behind search hits: figure crops, rendered pages of indexed documents, a hit's box on its page,
the list of indexed documents. Shared by ``manualrag serve`` and the MCP server.

Only files the index names are ever read (a request is an id, never a path to follow):

* a figure id -> its row -> ``crops/<hex digest>.png`` inside the index folder, a regular file, not a link;
* a document (its ``doc_id`` or library-relative path, as the index has it) -> a committed documents row ->
  ``<library>/<path>``, whose real path (links resolved) must lie inside the library folder; a path with
  ``..``, an absolute path or a backslash is refused before any file-system call.

Anything else (unknown id, a page out of range, a text document's "page", a link out of the library, a
vanished file) raises :class:`NotFound`, whose message is safe to show to the client: it names the id
asked for, never a path on the server.

Pages are rendered with PyMuPDF at a bounded dpi (and a bounded pixel count), cached in memory by (file
identity, page, dpi). A loose image is a one-page document (a multi-frame TIFF/GIF: one page per frame)
whose "render" is the image itself as PNG. Box coordinates are those of the index: PDF points on the page
as displayed (rotation removed at extraction) or image pixels; :meth:`Assets.hit_box` gives the page size
in the same units, so a client places the box in percent of the page.

A passage's stored box is the union of its text blocks, which may sit above and below a figure (same page,
same heading) and so enclose the figure. For a text hit on a PDF page with a text layer,
:meth:`Assets.hit_box` also reads that page's text (one read) and gives ``boxes``: the lines inside the stored
box whose text is the passage's own, one box per run of adjacent lines. Where nothing matches (an OCR'd scan,
a loose image, a text file, a figure) ``boxes`` is ``[bbox]``.
"""

from __future__ import annotations

import io
import os
import re
import stat
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from manualrag.errors import ManualragError
from manualrag.index import CROPS_DIR
from manualrag.manifest import DocRow, Manifest

_CROP_NAME = re.compile(r"[0-9a-f]{32,64}\.png")
_DOC_ID = re.compile(r"[0-9a-f]{16}")

MIN_DPI, MAX_DPI, DEFAULT_DPI = 36, 300, 110
MAX_PAGE_PIXELS = 12_000_000  # a render larger than this is made at a lower dpi
MAX_SOURCE_BYTES = 512 * 1024 * 1024  # a library file larger than this is not opened for rendering
CACHE_BYTES = 96 * 1024 * 1024  # rendered pages kept in memory
# MuPDF is not thread-safe (PyMuPDF's documentation): one document operation at a time per process
_MUPDF_LOCK = threading.Lock()


class NotFound(ManualragError):  # noqa: N818 - the name the callers (HTTP 404, MCP) speak
    """The index names no such figure, document or page (or its file is gone, or lies outside the
    library). The message names what was asked for, never a server path."""


class BadRequest(ManualragError):  # noqa: N818
    """A parameter out of its allowed range (dpi, page number)."""


class FileChanged(ManualragError):
    """The library file of a document is no longer the one the index holds (replaced or edited since it was
    indexed): its pages would show another file's content under this document's hits (HTTP 409)."""


@dataclass(frozen=True)
class DocInfo:
    doc_id: str
    path: str  # relative to the library, POSIX
    file_type: str  # pdf | image | text
    pages: int
    title: str
    indexed_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HitBox:
    """Where a hit (passage or figure) sits: its page, its box, and the page size in the box's units."""

    id: str
    kind: str  # text | image
    doc_id: str
    path: str
    file_type: str
    page: int
    pages: list[int]
    bbox: list[float]
    page_width: float
    page_height: float
    # where the hit is drawn: a text hit's own lines on a PDF page, one box per run of lines; else [bbox]
    boxes: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def safe_relpath(rel: str) -> PurePosixPath:
    """A library-relative path as stored in the index, or :class:`NotFound` for anything that could point
    elsewhere (absolute, ``..``, backslashes, NUL, empty parts)."""
    if not rel or "\x00" in rel or "\\" in rel or rel.startswith("/") or re.match(r"^[A-Za-z]:", rel):
        raise NotFound(f"no indexed document {rel!r}")
    p = PurePosixPath(rel)
    if any(part in ("", ".", "..") for part in rel.split("/")):
        raise NotFound(f"no indexed document {rel!r}")
    return p


def check_dpi(dpi: int | float | None) -> int:
    if dpi is None:
        return DEFAULT_DPI
    try:
        value = int(dpi)
    except (TypeError, ValueError):
        raise BadRequest(f"dpi must be a whole number from {MIN_DPI} to {MAX_DPI}, not {dpi!r}") from None
    if not MIN_DPI <= value <= MAX_DPI:
        raise BadRequest(f"dpi must be from {MIN_DPI} to {MAX_DPI}, not {value}")
    return value


class Assets:
    """Files of one index. ``manifest`` is read-only and may be shared with a Retriever (its reads are
    locked); ``library`` defaults to the folder the index was last built from."""

    def __init__(
        self,
        index_dir: Path | str,
        manifest: Manifest,
        library: Path | str | None = None,
        passwords: list[str] | None = None,
        cache_bytes: int = CACHE_BYTES,
    ):
        self.index_dir = Path(index_dir)
        self.manifest = manifest
        self._library = Path(library) if library is not None else None
        self.passwords = list(passwords or [])
        self._cache: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._cache_used = 0
        self._cache_max = cache_bytes
        self._sizes: dict[tuple[Any, ...], tuple[float, float]] = {}
        self._same: dict[tuple[Any, ...], bool] = {}  # (file, size, mtime) -> its bytes are the indexed ones
        self._lock = threading.Lock()

    @classmethod
    def open(cls, index_dir: Path | str, library: Path | str | None = None, **kw: Any) -> Assets:
        """With a read-only manifest of its own (close it with :meth:`close`)."""
        return cls(index_dir, Manifest.open(index_dir, readonly=True), library, **kw)

    def close(self) -> None:
        self.manifest.close()

    def __enter__(self) -> Assets:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------------------------------- documents
    def library(self) -> Path:
        """The library folder (real path): given, else the one the index was last built from."""
        lib = self._library
        if lib is None:
            stored = self.manifest.get_meta("library")
            if not stored:
                raise NotFound("the index does not record its library folder")
            lib = Path(stored)
        try:
            return Path(os.path.realpath(lib, strict=True))
        except OSError:
            raise NotFound(
                "the library folder this index was built from has moved or is gone: index the library "
                "again where it is now (figures, text and search still work; pages need the files)"
            ) from None

    def documents(self) -> list[DocInfo]:
        """The committed documents, by path."""
        return [_info(row) for row in self.manifest.documents().values()]

    def document(self, ref: str) -> DocInfo:
        """A committed document by its ``doc_id`` or its library-relative path."""
        return _info(self._row(ref))

    def _row(self, ref: str) -> DocRow:
        ref = str(ref)
        if _DOC_ID.fullmatch(ref):
            row = self.manifest.document_by_id(ref)
            if row is not None:
                return row
        safe_relpath(ref)
        row = self.manifest.document(ref)
        if row is None:
            raise NotFound(f"no indexed document {ref!r}")
        return row

    def source_file(self, ref: str) -> Path:
        """The library file of an indexed document: inside the library (links resolved), a regular file."""
        row = self._row(ref)
        rel = safe_relpath(row.path)
        lib = self.library()
        try:
            real = Path(os.path.realpath(lib.joinpath(*rel.parts), strict=True))
        except OSError:
            raise NotFound(f"the file {row.path!r} is gone from the library") from None
        if lib not in real.parents:
            raise NotFound(f"the file {row.path!r} lies outside the library")
        try:
            st = real.stat()
        except OSError:
            raise NotFound(f"the file {row.path!r} is gone from the library") from None
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(f"the file {row.path!r} is not a regular file")
        return real

    # -------------------------------------------------------------------------------------- figures
    def figure_crop(self, figure_id: str) -> Path:
        """The PNG crop of a figure: ``crops/<digest>.png`` in the index folder, nothing else."""
        figure_id = str(figure_id)
        if len(figure_id) > 200:
            raise NotFound("no such figure")
        row = self.manifest.figures([figure_id]).get(figure_id)
        if row is None or not row.crop_path:
            raise NotFound(f"no figure {figure_id!r} with an image in the index")
        rel = PurePosixPath(row.crop_path)
        if len(rel.parts) != 2 or rel.parts[0] != CROPS_DIR or not _CROP_NAME.fullmatch(rel.name):
            raise NotFound(f"figure {figure_id!r} has no crop file")
        path = self.index_dir / CROPS_DIR / rel.name
        try:
            st = path.lstat()
        except OSError:
            raise NotFound(
                f"the crop of figure {figure_id!r} is gone (the index is being updated?)"
            ) from None
        if not stat.S_ISREG(st.st_mode):  # a link or anything but a file
            raise NotFound(f"figure {figure_id!r} has no crop file")
        return path

    def figure_png(self, figure_id: str) -> bytes:
        return _read_nofollow(self.figure_crop(figure_id), f"figure {figure_id!r}")

    # -------------------------------------------------------------------------------------- pages
    def page_png(self, ref: str, page: int, dpi: int | float | None = None) -> bytes:
        """Page ``page`` (1-based) of an indexed PDF rendered at ``dpi`` (bounded), or frame ``page`` of an
        indexed image as PNG. Cached."""
        dpi = check_dpi(dpi)
        row, path, key = self._page_key(ref, page)
        ck = (*key, page, dpi if row.file_type == "pdf" else 0)
        with self._lock:
            png = self._cache.get(ck)
            if png is not None:
                self._cache.move_to_end(ck)
                return png
        data = _read_nofollow(path, f"document {row.doc_id}", MAX_SOURCE_BYTES)
        if row.file_type == "pdf":
            with _MUPDF_LOCK:
                png, size = self._render_pdf(data, row, page, dpi)
        else:
            png, size = _image_frame(data, row, page)
        with self._lock:
            self._sizes[(*key, page)] = size
            self._cache[ck] = png
            self._cache_used += len(png)
            while self._cache_used > self._cache_max and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cache_used -= len(old)
        return png

    def page_size(self, ref: str, page: int) -> tuple[float, float]:
        """The page's size in the units of its boxes (PDF points as displayed, or image pixels)."""
        row, path, key = self._page_key(ref, page)
        with self._lock:
            size = self._sizes.get((*key, page))
        if size is not None:
            return size
        data = _read_nofollow(path, f"document {row.doc_id}", MAX_SOURCE_BYTES)
        if row.file_type == "pdf":
            with _MUPDF_LOCK, self._open_pdf(data, row) as pdf:
                if page > pdf.page_count:
                    raise NotFound(f"document {row.doc_id} has no page {page}")
                r = pdf.load_page(page - 1).rect
                size = (float(r.width), float(r.height))
        else:
            size = _image_size(data, row, page)
        with self._lock:
            self._sizes[(*key, page)] = size
        return size

    def _page_key(self, ref: str, page: int) -> tuple[DocRow, Path, tuple[Any, ...]]:
        row = self._row(ref)
        if row.file_type not in ("pdf", "image"):
            raise NotFound(f"document {row.doc_id} is a {row.file_type} file: it has no page images")
        try:
            page = int(page)
        except (TypeError, ValueError):
            raise NotFound(f"no page {page!r} in document {row.doc_id}") from None
        if not 1 <= page <= max(1, row.n_pages):
            raise NotFound(f"document {row.doc_id} has no page {page} (it has {row.n_pages})")
        path = self.source_file(row.path)
        st = path.stat()
        self._check_unchanged(row, path, st)
        return row, path, (str(path), st.st_size, st.st_mtime_ns, row.digest)

    def _check_unchanged(self, row: DocRow, path: Path, st: os.stat_result) -> None:
        """:class:`FileChanged` unless the file is the one indexed: the size and mtime recorded, or (a copy, a
        checkout: same size, new mtime) the same digest, as ``manualrag index`` decides "unchanged"."""
        if st.st_size == row.size and abs(st.st_mtime - row.mtime) <= 1e-6:
            return
        if st.st_size == row.size:
            key = (str(path), st.st_size, st.st_mtime_ns)
            with self._lock:
                same = self._same.get(key)
            if same is None:
                from manualrag.ids import file_digest

                try:
                    same = file_digest(path) == row.digest
                except OSError:
                    raise NotFound(f"the file {row.path!r} cannot be read") from None
                with self._lock:
                    self._same[key] = same
            if same:
                return
        raise FileChanged(
            f"the file {row.path!r} changed since it was indexed: run `manualrag index` on the library to "
            "index it again (its pages would show the new file under the old one's hits)"
        )

    def _open_pdf(self, data: bytes, row: DocRow) -> Any:
        import pymupdf

        try:
            pdf = pymupdf.open(stream=data, filetype="pdf")
        except Exception:  # noqa: BLE001 - MuPDF raises plain errors on damaged files
            raise NotFound(f"document {row.doc_id} cannot be opened any more") from None
        if pdf.needs_pass and not any(pdf.authenticate(pw) for pw in self.passwords):
            pdf.close()
            raise NotFound(f"document {row.doc_id} is encrypted")
        return pdf

    def _render_pdf(self, data: bytes, row: DocRow, page: int, dpi: int) -> tuple[bytes, tuple[float, float]]:
        with self._open_pdf(data, row) as pdf:
            if page > pdf.page_count:
                raise NotFound(f"document {row.doc_id} has no page {page}")
            pg = pdf.load_page(page - 1)
            r = pg.rect
            pixels = (r.width * dpi / 72.0) * (r.height * dpi / 72.0)
            if pixels > MAX_PAGE_PIXELS:
                dpi = max(1, int(dpi * (MAX_PAGE_PIXELS / pixels) ** 0.5))
            pix = pg.get_pixmap(dpi=dpi, alpha=False)
            return pix.tobytes("png"), (float(r.width), float(r.height))

    # -------------------------------------------------------------------------------------- hits
    def hit_box(self, hit_id: str) -> HitBox:
        """A passage id or figure id -> its document, page, box and the page size (box units)."""
        hit_id = str(hit_id)
        if len(hit_id) > 200:
            raise NotFound("no such hit")
        with self.manifest.read_snapshot():
            fig = self.manifest.figures([hit_id]).get(hit_id)
            psg = None if fig is not None else self.manifest.passages([hit_id]).get(hit_id)
            if fig is not None:
                kind, path, pages, bbox = "image", fig.doc_path, list(fig.pages), list(fig.bbox)
            elif psg is not None:
                kind, path, pages, bbox = "text", psg.doc_path, [psg.page], list(psg.bbox)
            else:
                raise NotFound(f"no passage or figure {hit_id!r} in the index")
            row = self.manifest.document(path)
        if row is None:
            raise NotFound(f"the document of {hit_id!r} is being re-indexed; try again")
        page = pages[0] if pages else 1
        width = height = 0.0
        boxes: list[list[float]] = []
        if psg is not None and row.file_type == "pdf" and not psg.ocr and len(bbox) == 4:
            (width, height), lines = self._page_lines(row.doc_id, page)
            boxes = passage_boxes(lines, bbox, psg.text)
        elif row.file_type in ("pdf", "image"):
            width, height = self.page_size(row.doc_id, page)
        return HitBox(
            id=hit_id,
            kind=kind,
            doc_id=row.doc_id,
            path=row.path,
            file_type=row.file_type,
            page=page,
            pages=pages,
            bbox=bbox,
            page_width=width,
            page_height=height,
            boxes=boxes or [bbox],
        )

    def _page_lines(self, ref: str, page: int) -> tuple[tuple[float, float], list[_Line]]:
        """The page's size and its text lines (:func:`page_lines`): one read of the page."""
        row, path, key = self._page_key(ref, page)
        data = _read_nofollow(path, f"document {row.doc_id}", MAX_SOURCE_BYTES)
        with _MUPDF_LOCK, self._open_pdf(data, row) as pdf:
            if page > pdf.page_count:
                raise NotFound(f"document {row.doc_id} has no page {page}")
            pg = pdf.load_page(page - 1)
            r = pg.rect  # the page as displayed (the size page_size gives)
            size = (float(r.width), float(r.height))
            lines = page_lines(pg)
        with self._lock:
            self._sizes[(*key, page)] = size
        return size, lines


# MuPDF text flags as the indexer reads text (indexer/extract.py TEXT_FLAGS): whitespace as it is, ligatures
# as their letters (no TEXT_PRESERVE_LIGATURES)
_TEXT_FLAGS = 2
_SURE_CHARS = 12  # a line this long (letters and digits) whose text lies in the passage is the passage's


@dataclass(frozen=True)
class _Line:
    block: int
    text: str  # normalised: :func:`_norm`
    bbox: tuple[float, float, float, float]


def page_lines(pg: Any) -> list[_Line]:
    """The text lines of a PyMuPDF page (MuPDF order), read as the indexer reads them: rotation removed (the
    page as displayed), ligatures as letters, no clip to the mediabox. Empty where MuPDF cannot read it."""
    import pymupdf

    try:
        if pg.rotation:
            pg.remove_rotation()  # the indexer's coordinates: the page as displayed
        d = pg.get_text("dict", flags=_TEXT_FLAGS, clip=pymupdf.INFINITE_RECT())
    except Exception:  # noqa: BLE001 - a page MuPDF cannot read: the stored box alone
        return []
    lines: list[_Line] = []
    for bi, block in enumerate(d.get("blocks", ())):
        for line in block.get("lines", ()):
            spans = line.get("spans", ())
            text = "".join(str(sp.get("text", "")) for sp in spans)
            if spans and text.strip():
                x0, y0, x1, y1 = (float(v) for v in line["bbox"])
                lines.append(_Line(bi, _norm(text), (x0, y0, x1, y1)))
    return lines


def _norm(text: str) -> str:
    """Letters and digits only, case-folded (NFKC): line breaks, spacing and the hyphen of a word cut at a line
    end (written whole in a passage) do not count."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", text).casefold() if ch.isalnum())


def passage_boxes(lines: list[_Line], bbox: list[float], text: str) -> list[list[float]]:
    """The boxes of a passage's own text on its page: of ``lines`` (the page's, MuPDF order), those inside
    ``bbox`` whose text is the passage's (``text``: its blocks' lines joined by line breaks), one box per run of
    adjacent lines. A line counts when it is one of the passage's lines, or long enough (``_SURE_CHARS``) and
    part of its text, or the passage's first line ends it / its last line starts it (a block cut at a
    sentence end); a short line counts beside such a line of its block (the end of a cut word). Labels of a
    drawing inside the box, short and not lines of the passage, do not count. Empty when nothing matches."""
    whole = _norm(text)
    if not whole or len(bbox) != 4:
        return []
    own = [_norm(t) for t in text.splitlines()]
    own = [t for t in own if t]
    own_set = set(own)
    first, last = own[0], own[-1]
    x0, y0, x1, y1 = (float(v) for v in bbox)
    inside = [ln for ln in lines if ln.text and _mostly_inside(ln.bbox, (x0 - 1, y0 - 1, x1 + 1, y1 + 1))]

    def sure(t: str) -> bool:
        if t in own_set:
            return True
        if len(t) >= _SURE_CHARS and t in whole:
            return True
        return (len(first) >= _SURE_CHARS and t.endswith(first)) or (
            len(last) >= _SURE_CHARS and t.startswith(last)
        )

    matched = [sure(ln.text) for ln in inside]
    sure_blocks = {ln.block for ln, m in zip(inside, matched, strict=True) if m}
    matched = [
        m or (ln.block in sure_blocks and ln.text in whole) for ln, m in zip(inside, matched, strict=True)
    ]
    boxes: list[list[float]] = []
    prev: tuple[float, float, float, float] | None = None
    for ln, m in zip(inside, matched, strict=True):
        if not m:
            prev = None
            continue
        b = ln.bbox
        if prev is not None and _continues(boxes[-1], prev, b):
            cur = boxes[-1]
            boxes[-1] = [min(cur[0], b[0]), min(cur[1], b[1]), max(cur[2], b[2]), max(cur[3], b[3])]
        else:
            boxes.append(list(b))
        prev = b
    return [[round(v, 2) for v in box] for box in boxes]


def _mostly_inside(b: tuple[float, float, float, float], box: tuple[float, float, float, float]) -> bool:
    w = min(b[2], box[2]) - max(b[0], box[0])
    h = min(b[3], box[3]) - max(b[1], box[1])
    area = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    if area <= 0:
        return box[0] <= b[0] <= box[2] and box[1] <= b[1] <= box[3]
    return w > 0 and h > 0 and w * h >= 0.5 * area


def _continues(
    run: list[float], prev: tuple[float, float, float, float], b: tuple[float, float, float, float]
) -> bool:
    """Line ``b`` continues the run (box ``run``, last line ``prev``): on ``prev``'s band (the next cell of a
    table row), or below it by less than a line and a half (the next line, paragraph, row) across the run; not
    back up the page (a next column), not past a gap such as a picture."""
    height = max(prev[3] - prev[1], b[3] - b[1], 1.0)
    if abs(prev[1] - b[1]) < 0.5 * height:
        return True
    across = min(run[2], b[2]) - max(run[0], b[0]) > 0
    return across and b[1] >= prev[1] + 0.5 * height and b[1] - prev[3] <= 1.5 * height


def _info(row: DocRow) -> DocInfo:
    return DocInfo(row.doc_id, row.path, row.file_type, row.n_pages, row.title, row.indexed_at)


def _read_nofollow(path: Path, what: str, limit: int | None = None) -> bytes:
    """Read a file whose last path component must not be a link (swapped in after the checks)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        raise NotFound(f"the file of {what} cannot be read") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(f"the file of {what} is not a regular file")
        if limit is not None and st.st_size > limit:
            raise NotFound(f"the file of {what} is too large to render ({st.st_size} bytes)")
        return f.read()


def _frames(data: bytes, row: DocRow) -> Any:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - PIL raises many kinds on broken files
        raise NotFound(f"document {row.doc_id} cannot be decoded any more") from None
    return img


def _image_size(data: bytes, row: DocRow, page: int) -> tuple[float, float]:
    with _frames(data, row) as img:
        try:
            img.seek(page - 1)
        except EOFError:
            raise NotFound(f"document {row.doc_id} has no page {page}") from None
        return float(img.width), float(img.height)


def _image_frame(data: bytes, row: DocRow, page: int) -> tuple[bytes, tuple[float, float]]:
    """Frame ``page`` of an image as PNG (downscaled to the pixel bound; the size is the original's)."""
    from PIL import Image

    with _frames(data, row) as img:
        try:
            img.seek(page - 1)
        except EOFError:
            raise NotFound(f"document {row.doc_id} has no page {page}") from None
        size = (float(img.width), float(img.height))
        if img.width * img.height > 4 * MAX_PAGE_PIXELS:
            img.draft("RGB", (img.width // 2, img.height // 2))  # JPEG: decode at a lower scale
        frame = img.convert("RGB") if img.mode not in ("RGB", "L", "RGBA", "LA") else img.copy()
    if frame.width * frame.height > MAX_PAGE_PIXELS:
        scale = (MAX_PAGE_PIXELS / (frame.width * frame.height)) ** 0.5
        frame = frame.resize(
            (max(1, int(frame.width * scale)), max(1, int(frame.height * scale))), Image.Resampling.LANCZOS
        )
    buf = io.BytesIO()
    frame.save(buf, format="PNG")
    return buf.getvalue(), size
