"""Extraction of one file into a :class:`~manualrag.models.Document`: the orchestrator of this stage.

PDF: text blocks per page in reading order (bbox, heading path from the outline or from font sizes,
suspect text flagged), figures (``manualrag.indexer.figures``), scanned pages rendered and OCR'd. Loose images: one
page per frame, OCR words as text blocks, the image as a figure. ``.txt``/``.md``: blocks split by blank
lines, markdown headings give the heading path. All OCR of a document goes to the engine in one batch.

Every failure that makes a file unusable raises :class:`ExtractionError` (file + one-line reason).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import io
import itertools
import logging
import re
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageOps, ImageSequence

from manualrag.errors import ExtractionError
from manualrag.images import IMAGE_FORMATS, check_pixels, decode_problem, open_image
from manualrag.indexer import figures as fg
from manualrag.indexer.discover import file_type_for
from manualrag.indexer.ocr import denoise
from manualrag.indexer.pdflib import pymupdf
from manualrag.models import Document, Figure, PageInfo, TextBlock

if TYPE_CHECKING:
    from manualrag.indexer.ocr import OcrEngine, OcrResult

log = logging.getLogger(__name__)

# a config.yaml in the cwd is not read: say where a password goes (the env form is a YAML list)
PASSWORD_HINT = (
    "encrypted PDF needs a password (add it to 'passwords' in a config file given with --config, "
    "or set MANUALRAG_PASSWORDS='[\"...\"]')"
)

_FILLED = 16  # FZ_STEXT_FILLED
_STROKED = 32  # FZ_STEXT_STROKED
_CHAR_BOLD = 8  # FZ_STEXT_BOLD
_MAX_FRAMES = 500  # frames read from one multi-page TIFF
_HEADING_SIZE_RATIO = 1.15  # a line this much larger than the body font is a heading candidate
_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_MD_FENCE = re.compile(r"^\s*(```|~~~)")
_WS = re.compile(r"\s+")
_WORD = re.compile(r"[^\W_]+")


# ================================================================================================ entry
def extract_file(
    path: Path,
    rel: str,
    cfg: dict[str, Any],
    ocr: OcrEngine | None = None,
    split_pages: int | None = None,
) -> Document:
    """Extract one file. ``rel`` names it in errors and in the Document (library-relative POSIX path).
    ``split_pages``: a PDF with more pages than this raises :class:`TooManyPages` instead (after the checks
    that make a file unusable), for the caller to extract it in page ranges."""
    path = Path(path)
    ftype = file_type_for(path)
    if ftype is None:
        raise ExtractionError(rel, f"unsupported file type '{path.suffix or path.name}'")
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise ExtractionError(rel, f"cannot read the file: {exc.strerror or exc}") from None
    if not data:
        raise ExtractionError(rel, "empty file (0 bytes)")
    doc = Document(
        path=rel,
        digest=hashlib.sha256(data).hexdigest(),
        size=len(data),
        mtime=st.st_mtime,
        file_type=ftype,
    )
    if ftype == "pdf":
        _extract_pdf(data, doc, rel, cfg, ocr, split_pages)
    elif ftype == "image":
        _extract_image(data, doc, rel, cfg, ocr)
    else:
        _extract_text(data, doc, rel, markdown=path.suffix.lower() == ".md")
    if not doc.title:
        doc.title = PurePosixPath(rel).stem  # rel is valid UTF-8 (discover escapes undecodable names)
    return doc


# ================================================================================================ PDF
@dataclass
class _Page:
    """What pass 1 learned about one PDF page."""

    number: int
    rect: fg.Box
    lines: list[fg.TextLine] = field(default_factory=list)
    visible_chars: int = 0
    analysis: fg.PageAnalysis | None = None
    failed: bool = False


@contextlib.contextmanager
def _quiet_mupdf() -> Iterator[None]:
    """Collect MuPDF's messages instead of printing them to stderr."""
    errors = pymupdf.TOOLS.mupdf_display_errors()
    warns = pymupdf.TOOLS.mupdf_display_warnings()
    pymupdf.TOOLS.mupdf_display_errors(False)
    pymupdf.TOOLS.mupdf_display_warnings(False)
    try:
        yield
    finally:
        pymupdf.TOOLS.mupdf_display_errors(errors)
        pymupdf.TOOLS.mupdf_display_warnings(warns)


def _open_pdf(data: bytes, rel: str, cfg: dict[str, Any], warnings_out: list[str]) -> pymupdf.Document:
    if b"%PDF-" not in data[:1024]:
        raise ExtractionError(rel, "not a PDF file (no %PDF- header)")
    pymupdf.TOOLS.mupdf_warnings(reset=True)
    try:
        pdf = pymupdf.open(stream=data, filetype="pdf")
    except (pymupdf.FileDataError, RuntimeError, ValueError) as exc:
        raise ExtractionError(rel, f"corrupt PDF, MuPDF cannot open it ({_one_line(exc)})") from None
    messages = _mupdf_messages(pymupdf.TOOLS.mupdf_warnings(reset=True))
    if pdf.needs_pass:
        if not any(pdf.authenticate(pw) for pw in cfg.get("passwords", [])):
            pdf.close()
            n = len(cfg.get("passwords", []))
            raise ExtractionError(
                rel,
                "encrypted PDF: none of the configured passwords opens it" if n else PASSWORD_HINT,
            )
    if pdf.is_repaired:
        warnings_out.append(f"repaired: {messages or 'MuPDF rebuilt a broken cross-reference table'}")
    try:
        n_pages = pdf.page_count
    except RuntimeError as exc:  # a page tree MuPDF cannot count (e.g. a file cut short)
        pdf.close()
        raise ExtractionError(rel, f"corrupt PDF: cannot count its pages ({_one_line(exc)})") from None
    if n_pages == 0:
        repaired = pdf.is_repaired
        pdf.close()
        if not repaired:
            raise ExtractionError(rel, "PDF has no pages")
        raise ExtractionError(rel, "corrupt PDF: no readable pages" + (f" ({messages})" if messages else ""))
    return pdf


def _mupdf_messages(raw: str) -> str:
    """MuPDF's warnings (one per line, some repeated) as one line: "cannot find startxref; trying to repair
    broken xref; ..." rather than the lines run together."""
    return _one_line("; ".join(dict.fromkeys(m.strip() for m in raw.splitlines() if m.strip())))


def _one_line(x: object, n: int = 160) -> str:
    s = _WS.sub(" ", str(x)).strip()
    return s if len(s) <= n else s[: n - 1] + "…"


class TooManyPages(Exception):
    """Raised instead of extracting a PDF with more pages than the caller's ``split_pages``: the caller
    extracts it in page ranges instead (``manualrag.indexer.pagerange``)."""

    def __init__(self, n_pages: int):
        super().__init__(f"{n_pages} pages")
        self.n_pages = n_pages


def _extract_pdf(
    data: bytes,
    doc: Document,
    rel: str,
    cfg: dict[str, Any],
    ocr: OcrEngine | None,
    split_pages: int | None = None,
) -> None:
    with _quiet_mupdf():
        pdf = _open_pdf(data, rel, cfg, doc.warnings)
        try:
            if split_pages and pdf.page_count > split_pages:
                raise TooManyPages(pdf.page_count)
            _extract_open_pdf(pdf, doc, rel, cfg, ocr)
        finally:
            pdf.close()


# The PDF stages below are written so that page ranges can run in separate processes and give the same
# Document as one process (manualrag.indexer.pagerange): per-page work (_read_pages, _analyse_pages,
# _render_range) only ever looks at its own pages; document-level decisions (_plan_text, _plan_document,
# _finish_pdf) only ever look at plain data (lines, regions), never at MuPDF objects.
def _extract_open_pdf(
    pdf: pymupdf.Document, doc: Document, rel: str, cfg: dict[str, Any], ocr: OcrEngine | None
) -> None:
    pages = _read_pages(pdf, doc, 1, pdf.page_count)
    _require_readable(pages, rel)
    toc, body = _plan_text(pages, _raw_toc(pdf))
    _analyse_pages(pdf, pages, doc, rel, cfg)
    planned, timeline = _plan_document(pages, toc, cfg, doc)
    by_number = {pg.number: pg for pg in pages}
    scan_pages = [pg.number for pg in pages if pg.analysis is not None and pg.analysis.is_scan]
    figs, scans = _render_range(pdf, by_number, list(enumerate(planned)), scan_pages, cfg, timeline, ocr)
    _finish_pdf(
        doc, pages, planned, figs, scans, cfg, toc, body, timeline, _meta_title(pdf), pdf.is_repaired, rel
    )


def _raw_toc(pdf: pymupdf.Document) -> list[tuple[int, str, int]]:
    try:
        return [(int(lv), str(t), int(p)) for lv, t, p, *_ in pdf.get_toc(simple=True)]
    except Exception:  # noqa: BLE001
        return []


def _meta_title(pdf: pymupdf.Document) -> str:
    return str((pdf.metadata or {}).get("title") or "")


def _require_readable(pages: list[_Page], rel: str) -> None:
    if all(p.failed for p in pages):
        raise ExtractionError(rel, "corrupt PDF: no page could be read")


def _plan_text(pages: list[_Page], raw_toc: list[tuple[int, str, int]]) -> tuple[list[_TocEntry], float]:
    """Document level, text: running headers/footers, body font size, outline headings (or font headings)."""
    _mark_furniture(pages)
    body = _body_size(pages)
    toc = _toc_entries(raw_toc, pages, body)
    if not toc:
        _mark_font_headings(pages, body)
    return toc, body


def _load_page(pdf: pymupdf.Document, number: int) -> pymupdf.Page:
    """Page ``number`` (1-based) drawn as displayed: one coordinate system for text, images, paths."""
    page = pdf.load_page(number - 1)
    if page.rotation:
        page.remove_rotation()
    return page


def _plan_document(
    pages: list[_Page], toc: list[_TocEntry], cfg: dict[str, Any], doc: Document
) -> tuple[list[fg.PlannedFigure], list[_Heading]]:
    """Document level, figures and text: captions that start the next page, de-duplication and
    boilerplate across pages, text blocks with their heading paths. Returns the plan and the timeline."""
    _next_page_captions(pages)
    planned = fg.assemble([p.analysis for p in pages if p.analysis], cfg)
    timeline = _text_blocks(pages, planned, toc, doc)
    return planned, timeline


def _finish_pdf(
    doc: Document,
    pages: list[_Page],
    planned: list[fg.PlannedFigure],
    figs: dict[int, Figure | None],
    scans: list[tuple[int, Figure, list[TextBlock] | None]],
    cfg: dict[str, Any],
    toc: list[_TocEntry],
    body: float,
    timeline: list[_Heading],
    meta_title: str,
    repaired: bool,
    rel: str,
) -> None:
    """Document level, last: figures in plan order then scans in page order, OCR blocks, page infos, title."""
    for i, pf in enumerate(planned):
        fig = figs.get(i)
        if fig is not None:
            (doc.boilerplate if pf.boilerplate else doc.figures).append(fig)
    doc.figures.extend(fig for _, fig, _ in scans)
    rects = {pg.number: pg.rect for pg in pages}
    _drop_scan_furniture([(rects[n], blocks) for n, _, blocks in scans if blocks])
    _nest_scan_headings(scans)
    scan_pages: set[int] = set()
    for number, _, blocks in scans:
        if blocks is not None:
            doc.blocks.extend(blocks)
            scan_pages.add(number)
    doc.blocks.sort(key=lambda b: b.page)  # stable: keeps the reading order inside a page
    _merge_duplicate_figures(doc)
    doc.figures.sort(key=lambda f: (f.pages[0], f.bbox[1], f.bbox[0]))
    _figures_where_mentioned(doc)
    for pg in pages:
        doc.pages.append(
            PageInfo(
                number=pg.number,
                width=round(pg.rect[2] - pg.rect[0], 2),
                height=round(pg.rect[3] - pg.rect[1], 2),
                text_layer=pg.visible_chars >= cfg["extract"]["min_text_chars"],
                ocr=pg.number in scan_pages,
            )
        )
    doc.title = _pdf_title(meta_title, pages, toc, body, timeline)
    if repaired and not doc.blocks and not doc.figures:
        raise ExtractionError(rel, "damaged PDF: MuPDF repaired it but recovered no content")


def _read_pages(pdf: pymupdf.Document, doc: Document, first: int, last: int) -> list[_Page]:
    """Pass 1 (pages first..last, 1-based): text lines (a page MuPDF cannot read becomes a warning)."""
    pages: list[_Page] = []
    for number in range(first, last + 1):
        pg = _Page(number=number, rect=(0.0, 0.0, 0.0, 0.0))
        try:
            page = _load_page(pdf, number)
            pg.rect = fg.as_box(page.rect)
            pg.lines = _page_lines(page)
            fg.mark_captions(pg.lines)
            pg.visible_chars = sum(len(ln.text.strip()) for ln in pg.lines if not ln.suspect)
        except Exception as exc:  # noqa: BLE001 - MuPDF raises plain RuntimeErrors on damaged pages
            pg.failed = True
            doc.warnings.append(f"page {number}: cannot read it ({_one_line(exc)})")
        pages.append(pg)
    return pages


def _analyse_pages(
    pdf: pymupdf.Document, pages: list[_Page], doc: Document, rel: str, cfg: dict[str, Any]
) -> None:
    """Pass 2, per page (after the text marks of _plan_text): figure candidates and their captions."""
    for pg in pages:
        if pg.failed:
            continue
        try:
            page = _load_page(pdf, pg.number)
            pg.analysis = fg.analyse_page(page, pg.lines, cfg, pg.visible_chars)
            fg.assign_captions(pg.analysis.regions, pg.lines, cfg)
        except Exception as exc:  # noqa: BLE001
            doc.warnings.append(f"page {pg.number}: figure analysis failed ({_one_line(exc)})")
            log.debug("figure analysis failed on %s p%d", rel, pg.number, exc_info=True)


def _text_blocks(
    pages: list[_Page], planned: list[fg.PlannedFigure], toc: list[_TocEntry], doc: Document
) -> list[_Heading]:
    """TextBlocks with heading paths; label lines inside figures go to the figure, not to the text."""
    in_figures: dict[int, list[fg.Box]] = {}
    for pf in planned:
        if not pf.boilerplate:
            for occ in pf.occurrences:
                in_figures.setdefault(occ.page, []).append(occ.bbox)
    blocks = {pg.number: _page_blocks(pg, in_figures.get(pg.number, [])) for pg in pages if not pg.failed}
    timeline = _assign_headings(pages, blocks, toc)
    for pg in pages:
        doc.blocks.extend(b for b, _ in blocks.get(pg.number, []))
    return timeline


def _render_range(
    pdf: pymupdf.Document,
    by_number: dict[int, _Page],
    planned: list[tuple[int, fg.PlannedFigure]],
    scan_pages: list[int],
    cfg: dict[str, Any],
    timeline: list[_Heading],
    ocr: OcrEngine | None,
) -> tuple[dict[int, Figure | None], list[tuple[int, Figure, list[TextBlock] | None]]]:
    """Pass 3, per figure: crops of the planned figures (index -> Figure, None when it cannot be rendered)
    and of the scanned pages ``scan_pages`` (in page order), then one OCR batch for all of them. A scanned
    page comes with its OCR text blocks (None when OCR read nothing). ``by_number``: at least the pages
    that these figures and scans are on."""
    figs: dict[int, Figure | None] = {}
    images: list[tuple[str, bytes]] = []
    to_read: list[tuple[Figure, str]] = []
    for i, pf in planned:
        fig = _render_figure(pdf, pf, by_number[pf.region.page].lines, cfg, timeline)
        figs[i] = fig
        # pixels of images and symbols; drawings only when their words are not real text
        if (
            fig is not None
            and not pf.boilerplate
            and fig.png
            and (fig.kind != "vector" or len(fig.labels) < 3)
        ):
            key = hashlib.sha256(fig.png).hexdigest()
            images.append((key, fig.png))
            to_read.append((fig, key))
    scan_jobs: list[tuple[int, Figure, str]] = []
    for number in scan_pages:
        pg = by_number[number]
        fig, scan_png = _render_scan(_load_page(pdf, number), pg, cfg, timeline, for_ocr=ocr is not None)
        key = ""  # no OCR: no result
        if scan_png is not None:
            key = hashlib.sha256(scan_png).hexdigest()
            images.append((key, scan_png))
        scan_jobs.append((number, fig, key))
    results = ocr.ocr(images) if ocr is not None and images else {}
    for fig, key in to_read:
        if key in results:
            fig.ocr_text = denoise(results[key].text)
            if not fig.rotation:
                _turn_upright(fig, results[key].rotation)
    scale = 72.0 / cfg["extract"]["scan_dpi"]
    scans: list[tuple[int, Figure, list[TextBlock] | None]] = []
    for number, fig, key in scan_jobs:
        res = results.get(key)
        blocks = None
        if res is not None and res.text.strip():
            fig.ocr_text = res.text
            _turn_upright(fig, res.rotation)
            blocks = _ocr_blocks(
                res, number, _heading_at(timeline, number, 0.0), res_scale=scale, find_headings=True
            )
        scans.append((number, fig, blocks))
    return figs, scans


# ------------------------------------------------------------------------------------------------ text
def _span_suspect(span: dict[str, Any], prect: fg.Box) -> str | None:
    cf = span.get("char_flags")
    if (
        "GlyphLess" in span.get("font", "")
        or span.get("alpha", 255) == 0
        or (cf is not None and not cf & (_FILLED | _STROKED))
    ):
        return "invisible"  # render mode 3 (neither filled nor stroked), transparent, OCR glyph-less font
    box = fg.as_box(span["bbox"])
    if fg.inside_share(box, prect) < 0.5:
        return "offpage"
    # nominal size < 3 pt, and drawn that small (Type 3 fonts may scale tiny sizes up by their matrix)
    if span.get("size", 10.0) < 3.0 and min(box[2] - box[0], box[3] - box[1]) < 3.0:
        return "tiny"
    return None


def _is_light(color: int) -> bool:
    r, g, b = (color >> 16) & 255, (color >> 8) & 255, color & 255
    return 0.2126 * r + 0.7152 * g + 0.0722 * b >= 215


def _same_as_background(page: pymupdf.Page, bbox: fg.Box, color: int) -> bool:
    """Render the span's area: if (nearly) every pixel has the text colour, nobody can read the text."""
    try:
        clip = pymupdf.Rect(bbox) & page.rect
        if clip.is_empty:
            return False
        pix = page.get_pixmap(clip=clip, dpi=72, alpha=False)
        share, top = pix.color_topusage()
    except Exception:  # noqa: BLE001
        return False
    rgb = ((color >> 16) & 255, (color >> 8) & 255, color & 255)
    if len(top) < 3:
        top = bytes([top[0]] * 3)
    # 3 pixels in 4 (not all: lines of a diagram drawn across hidden text must not make it "visible")
    return share >= 0.75 and all(abs(int(a) - b) <= 40 for a, b in zip(top[:3], rgb, strict=True))


# MuPDF's text flags: whitespace as it is, no mediabox clip (the INFINITE_RECT clip), and NOT
# TEXT_PRESERVE_LIGATURES (1): ligature glyphs come as their letters ("ﬁ" -> "fi"). LaTeX manuals set fi, fl,
# ff, ffi on most pages, and neither the lexical index (its tokenizer kept "ﬂight" as a word of its own, which
# a query for "flight" never matched) nor the text model's vocabulary knew them. A number, not
# pymupdf.TEXT_PRESERVE_WHITESPACE: importing this module does not load pymupdf.
TEXT_FLAGS = 2


def _page_lines(page: pymupdf.Page) -> list[fg.TextLine]:
    """Text lines (split where the suspect status changes within a line), MuPDF reading order."""
    prect = fg.as_box(page.rect)
    d = page.get_text("dict", flags=TEXT_FLAGS, clip=pymupdf.INFINITE_RECT())
    out: list[fg.TextLine] = []
    for bi, block in enumerate(d["blocks"]):
        if block.get("type") != 0:
            continue
        for line in block["lines"]:
            direction = line.get("dir", (1.0, 0.0))
            vertical = abs(direction[0]) < 0.5
            rotation = fg.line_rotation(direction)
            run: list[dict[str, Any]] = []
            run_suspect: str | None = None
            for span in line["spans"]:
                if not span["text"]:
                    continue
                sus = _span_suspect(span, prect)
                if sus is None and _is_light(span.get("color", 0)) and span["text"].strip():
                    if _same_as_background(page, fg.as_box(span["bbox"]), span["color"]):
                        sus = "white"
                if run and sus != run_suspect and span["text"].strip():
                    out.append(_make_line(run, bi, run_suspect, vertical, rotation))
                    run = []
                if not run:
                    run_suspect = sus
                run.append(span)
            if run:
                out.append(_make_line(run, bi, run_suspect, vertical, rotation))
    return [ln for ln in out if ln.text.strip()]


def _make_line(
    spans: list[dict[str, Any]], block: int, suspect: str | None, vertical: bool, rotation: int
) -> fg.TextLine:
    text = "".join(s["text"] for s in spans)
    box = fg.as_box(spans[0]["bbox"])
    for s in spans[1:]:
        box = fg.union(box, fg.as_box(s["bbox"]))
    inked = [s for s in spans if s["text"].strip()] or spans
    main = max(inked, key=lambda s: len(s["text"]))
    bold = all(
        (s.get("flags", 0) & pymupdf.TEXT_FONT_BOLD)
        or (s.get("char_flags", 0) & _CHAR_BOLD)
        or "Bold" in s.get("font", "")
        for s in inked
    )
    return fg.TextLine(
        text=text.strip(),
        bbox=box,
        size=round(float(main.get("size", 0.0)), 2),
        bold=bool(bold),
        block=block,
        suspect=suspect,
        vertical=vertical,
        rotation=rotation,
    )


def _mark_furniture(pages: list[_Page]) -> None:
    """Running headers/footers: the same text (digits aside) at the same height near the page edge."""
    live = [p for p in pages if not p.failed]
    if len(live) < 3:
        return
    counts: Counter[tuple[str, int]] = Counter()
    keyed: list[tuple[fg.TextLine, tuple[str, int]]] = []
    for p in live:
        h = p.rect[3] - p.rect[1]
        seen: set[tuple[str, int]] = set()
        for ln in p.lines:
            if p.rect[1] + 0.1 * h < ln.bbox[1] and ln.bbox[3] < p.rect[3] - 0.1 * h:
                continue
            key = (re.sub(r"\d+", "#", ln.text.lower()).strip(), round(ln.bbox[1] / 4))
            keyed.append((ln, key))
            if key not in seen:
                seen.add(key)
                counts[key] += 1
    need = max(3, int(0.3 * len(live)))
    for ln, key in keyed:
        if counts[key] >= need:
            ln.furniture = True


def _body_size(pages: list[_Page]) -> float:
    sizes: Counter[float] = Counter()
    for p in pages:
        for ln in p.lines:
            if not ln.suspect and not ln.furniture:
                sizes[round(ln.size * 2) / 2] += len(ln.text)
    return sizes.most_common(1)[0][0] if sizes else 10.0


def _norm(s: str) -> str:
    """A title or line as its words, lower-cased: an outline writes ``stubsnets'' where the page prints
    “stubsnets”, and drops or adds a final period."""
    return " ".join(_WORD.findall(s.lower()))


@dataclass
class _TocEntry:
    level: int
    title: str
    page: int
    y: float


def _toc_entries(raw_toc: list[tuple[int, str, int]], pages: list[_Page], body: float) -> list[_TocEntry]:
    """Outline entries placed on their page by finding the heading text there (destinations are
    unreliable: some producers give top-down, others bottom-up coordinates).

    The title is looked for whole in one line, then whole across a line and the next (a title that wraps:
    "4.3 What is the minimum signal power level that can be detected by" / "HackRF?"), then as a line that
    is part of it; a line set like a heading (larger or bold) wins over a mention of the title in prose."""
    out: list[_TocEntry] = []
    candidates: dict[int, list[tuple[fg.TextLine, str, tuple[str, ...]]]] = {}  # per page, see _title_lines
    for level, title, pno in raw_toc:
        title = _WS.sub(" ", str(title)).strip()
        if not title or not 1 <= pno <= len(pages):
            continue
        y = _UNPLACED
        nt = _norm(title)
        if pno not in candidates:
            candidates[pno] = _title_lines(pages[pno - 1])
        lines = candidates[pno]
        tiers = (
            [ln for ln, n, _ in lines if nt in n],
            [ln for ln, _, joined in lines if any(nt in j for j in joined)],
            [ln for ln, n, _ in lines if n in nt and len(n) >= min(len(nt), 8)],
        )
        styled = [ln for tier in tiers for ln in tier if ln.size >= 1.05 * body or ln.bold]
        hit = next(iter(styled or [ln for tier in tiers for ln in tier]), None)
        if hit is not None:
            y = hit.bbox[1]
            hit.heading = True
        out.append(_TocEntry(level, title, pno, y))
    return _place_unfound(out)


def _title_lines(pg: _Page) -> list[tuple[fg.TextLine, str, tuple[str, ...]]]:
    """The page's lines that may hold an outline title: (line, its words (see _norm), its words joined with
    the line that continues it). A line continues the one before in the same block, or set in the same size
    right below it (some producers make each line a block); after a hyphen both joins are kept ("full-" /
    "duplex" is "full-duplex", "FP-" / "GAs" is "FPGAs")."""
    usable = [(ln, ln.text.strip()) for ln in pg.lines if not ln.suspect and not ln.furniture]
    out = []
    for i, (ln, text) in enumerate(usable):
        joined: tuple[str, ...] = ()
        nxt = usable[i + 1] if i + 1 < len(usable) else None
        if nxt is not None and (
            nxt[0].block == ln.block
            or (
                abs(nxt[0].size - ln.size) < 0.5
                and 0 <= nxt[0].bbox[1] - ln.bbox[1] <= 2 * (ln.bbox[3] - ln.bbox[1])
            )
        ):
            joined = (_norm(text + " " + nxt[1]),)
            if text.endswith("-"):
                joined += (_norm(text[:-1] + nxt[1]),)
        n = _norm(text)
        if len(n) >= 3:
            out.append((ln, n, joined))
    return out


_UNPLACED = float("-inf")  # an outline entry whose title was not found on its page


def _place_unfound(entries: list[_TocEntry]) -> list[_TocEntry]:
    """Outline entries whose title was not found on their page keep the outline's (reading) order there:
    just above the next entry found on that page, else just below the previous one, else at the top of the
    page. (All at the top, an entry listed after others on its page took the whole page from them: every
    block of it was named by that last heading.)"""
    on_page: dict[int, list[_TocEntry]] = {}  # a page's entries in outline order (was: every entry per entry)
    for e in entries:
        on_page.setdefault(e.page, []).append(e)
    for group in on_page.values():
        for i, e in enumerate(group):
            if e.y != _UNPLACED:
                continue
            after = next((f.y for f in group[i + 1 :] if f.y != _UNPLACED), None)
            before = next((f.y for f in reversed(group[:i]) if f.y != _UNPLACED), None)
            e.y = after - 0.5 if after is not None else before + 0.5 if before is not None else -1.0
    return entries


def _mark_font_headings(pages: list[_Page], body: float) -> None:
    """Without an outline: short lines noticeably larger than the body font, or short bold lines."""
    for p in pages:
        by_block: dict[int, list[fg.TextLine]] = {}
        for ln in p.lines:
            by_block.setdefault(ln.block, []).append(ln)
        for lines in by_block.values():
            text = " ".join(ln.text for ln in lines)
            if (
                len(lines) > 3
                or len(text) > 150
                or any(ln.suspect or ln.furniture or ln.vertical for ln in lines)
                or not re.search(r"[A-Za-z]{2}", text)
                or any(ln.caption for ln in lines)
            ):
                continue
            size = max(ln.size for ln in lines)
            big = size >= _HEADING_SIZE_RATIO * body
            bold = all(ln.bold for ln in lines) and size >= 0.95 * body and len(text) <= 80
            if (big or bold) and not text.rstrip().endswith((".", ",", ";")):
                for ln in lines:
                    ln.heading = True


@dataclass
class _Heading:
    page: int
    y: float
    path: str


def _assign_headings(
    pages: list[_Page], blocks: dict[int, list[tuple[TextBlock, bool]]], toc: list[_TocEntry]
) -> list[_Heading]:
    """Give every block its heading path; return the timeline of headings (page, y, path)."""
    timeline: list[_Heading] = _Timeline()
    if toc:
        stack: list[tuple[int, str]] = []
        for e in toc:
            while stack and stack[-1][0] >= e.level:
                stack.pop()
            stack.append((e.level, e.title))
            timeline.append(_Heading(e.page, e.y, " > ".join(t for _, t in stack)))
    else:
        sizes = sorted(
            {round(b.font_size * 2) / 2 for bl in blocks.values() for b, is_h in bl if is_h}, reverse=True
        )
        level_of = {s: i + 1 for i, s in enumerate(sizes[:5])}
        stack2: list[tuple[int, str]] = []
        for p in pages:
            for b, is_heading in blocks.get(p.number, []):
                if not is_heading:
                    continue
                level = level_of.get(round(b.font_size * 2) / 2, len(level_of) + 1)
                while stack2 and stack2[-1][0] >= level:
                    stack2.pop()
                stack2.append((level, _WS.sub(" ", b.text).strip()[:120]))
                timeline.append(_Heading(p.number, b.bbox[1], " > ".join(t for _, t in stack2)))
    for p in pages:
        for b, _ in blocks.get(p.number, []):
            b.heading = _heading_at(timeline, p.number, b.bbox[1] + 1.0)
    return timeline


def _heading_at(timeline: list[_Heading], page: int, y: float) -> str:
    """The heading path in force at (page, y): the last timeline entry at or before it, scanning in timeline
    order and stopping at the first entry on a later page (a _Timeline answers the same without the scan)."""
    if isinstance(timeline, _Timeline) and y == y:  # a NaN position keeps the scan's own rules
        return timeline.lookup(page, y)
    path = ""
    for h in timeline:
        if (h.page, h.y) <= (page, y):
            path = h.path
        elif h.page > page:
            break
    return path


class _Timeline(list):  # type: ignore[type-arg]
    """The headings in document order, indexed so that _heading_at needs no scan (a 1,000-page manual has
    ~16k blocks and ~1k headings: the scan per block was most of the document plan). Exact for any order
    of entries (outlines are not always in page order)."""

    _n = -1
    _prefix_max: list[int]
    _on_page: dict[int, list[int]]

    def _index(self) -> None:
        if self._n == len(self):
            return
        self._prefix_max = list(itertools.accumulate((h.page for h in self), max))
        self._on_page = {}
        for i, h in enumerate(self):
            self._on_page.setdefault(h.page, []).append(i)
        self._n = len(self)

    def lookup(self, page: int, y: float) -> str:
        self._index()
        # the scan stops at the first entry on a later page: the first whose running maximum page exceeds
        stop = bisect.bisect_right(self._prefix_max, page)
        # before it every entry is on this page or an earlier one; the last on an earlier page counts...
        best = stop - 1
        while best >= 0 and self[best].page == page:
            best -= 1
        # ...unless a later entry on this page sits at or above y
        for i in self._on_page.get(page, ()):
            if i >= stop:
                break
            if i > best and self[i].y <= y:
                best = i
        return self[best].path if best >= 0 else ""


def _page_blocks(pg: _Page, figure_boxes: list[fg.Box]) -> list[tuple[TextBlock, bool]]:
    """Consecutive lines of one MuPDF block with the same suspect status form a TextBlock. Short label
    lines inside a figure are left out (they are the figure's labels), and so are running headers and
    footers (``_mark_furniture``: a passage of its own that read "HackRF", a page number ending a
    passage); hidden text is always kept."""
    prose_blocks = {ln.block for ln in pg.lines if len(ln.text) > 60}
    # a page whose every line looks like a running header (one line of text per page, at the same place,
    # its numbers aside) keeps them: that is the page's content, not its furniture
    drop_furniture = any(not ln.furniture and not ln.suspect for ln in pg.lines)
    out: list[tuple[TextBlock, bool]] = []
    cur: list[fg.TextLine] = []

    def flush() -> None:
        if not cur:
            return
        box = cur[0].bbox
        for ln in cur[1:]:
            box = fg.union(box, ln.bbox)
        main = max(cur, key=lambda ln: len(ln.text))
        block = TextBlock(
            text="\n".join(ln.text for ln in cur),
            page=pg.number,
            bbox=tuple(round(v, 2) for v in box),  # type: ignore[arg-type]
            font_size=main.size,
            bold=all(ln.bold for ln in cur),
            suspect=cur[0].suspect,
        )
        out.append((block, all(ln.heading for ln in cur)))
        cur.clear()

    for ln in pg.lines:
        if ln.furniture and not ln.suspect and drop_furniture:
            continue
        if (
            not ln.suspect
            and ln.block not in prose_blocks
            and not ln.caption
            and any(fg.inside_share(ln.bbox, fb) > 0.8 for fb in figure_boxes)
        ):
            continue
        if cur and (
            ln.block != cur[-1].block or ln.suspect != cur[-1].suspect or ln.heading != cur[-1].heading
        ):
            flush()
        cur.append(ln)
    flush()
    return out


def _pdf_title(
    meta: str, pages: list[_Page], toc: list[_TocEntry], body: float, timeline: list[_Heading]
) -> str:
    if meta.strip():
        return _WS.sub(" ", meta).strip()
    first = next((p for p in pages if not p.failed and p.lines), None)
    if first is not None:
        cands = [
            ln
            for ln in first.lines
            if not ln.suspect and not ln.furniture and re.search(r"[A-Za-z]", ln.text)
        ]
        if cands:
            biggest = max(cands, key=lambda ln: ln.size)
            if biggest.size >= 1.25 * body:
                same = [
                    ln.text for ln in cands if abs(ln.size - biggest.size) < 0.5 and ln.block == biggest.block
                ]
                return _WS.sub(" ", " ".join(same)).strip()[:200]
    if toc:
        return toc[0].title
    if timeline:
        return timeline[0].path.split(" > ")[0]
    return ""


# ------------------------------------------------------------------------------------------------ figures
def _next_page_captions(pages: list[_Page]) -> None:
    for i, pg in enumerate(pages[:-1]):
        nxt = pages[i + 1]
        if pg.analysis is None or nxt.analysis is None:
            continue
        used_next = {
            j
            for j, ln in enumerate(nxt.lines)
            for r in nxt.analysis.regions
            if r.caption and ln.text in r.caption
        }
        for r in pg.analysis.regions:
            if not r.caption:
                r.caption = fg.next_page_caption(r, pg.rect, pg.lines, nxt.lines, used_next)


def _render_figure(
    pdf: pymupdf.Document,
    pf: fg.PlannedFigure,
    lines: list[fg.TextLine],
    cfg: dict[str, Any],
    timeline: list[_Heading],
) -> Figure | None:
    ex = cfg["extract"]
    r = pf.region
    page = _load_page(pdf, r.page)
    dpi = float(ex["figure_dpi"])
    if r.max_native_dpi and pf.kind == "raster":
        # keep the finest image's own pixels for OCR (up to 2x): a screenshot merged with a small sketch
        # into one figure would otherwise be read at the sketch's resolution, its status lines unreadable
        dpi = max(dpi, min(r.max_native_dpi, 2 * dpi))
    try:
        png, w, h, eff = fg.render(page, r.bbox, dpi, ex["max_render_pixels"])
    except Exception as exc:  # noqa: BLE001
        log.warning("cannot render a figure on page %d: %s", r.page, _one_line(exc))
        return None
    key = r.content_key()
    digest = key[4:] if key.startswith("img:") else hashlib.sha256(png).hexdigest()
    # words drawn invisibly (hidden, white-on-white, off-page, tiny) never become a figure's labels
    hidden = [ln.bbox for ln in lines if ln.suspect]
    # ligatures as letters, as in _page_lines
    flags = pymupdf.TEXTFLAGS_WORDS & ~pymupdf.TEXT_PRESERVE_LIGATURES
    words = page.get_text("words", flags=flags, clip=pymupdf.INFINITE_RECT())
    labels = fg.words_inside(words, r.bbox, hidden)
    rotation = fg.text_rotation(lines, r.bbox)  # a drawing printed sideways: its labels run vertically
    quality = "ok"
    if r.native_dpi is not None and r.native_dpi < ex["low_res_dpi"] and pf.kind in ("raster", "symbol"):
        quality = "low-res"
    elif max(w, h) < 100 or r.area_frac < ex["small_figure_area"]:
        quality = "tiny"
    fig = Figure(
        digest=digest,
        kind=pf.kind,
        pages=pf.pages,
        bbox=tuple(round(v, 2) for v in r.bbox),  # type: ignore[arg-type]
        width=w,
        height=h,
        dpi=round(eff, 1),
        caption=r.caption,
        nearby_text=fg.nearby_text(r, lines),
        labels=[w_ for w_ in labels if w_.strip()],
        heading=_heading_at(timeline, r.page, r.bbox[1]),
        boilerplate=pf.boilerplate,
        quality=quality,
        png=png,
    )
    if rotation:
        _turn_upright(fig, rotation)
    return fig


def _turn_upright(fig: Figure, rotation: int) -> None:
    """Store the figure's crop upright: turned ``rotation`` degrees clockwise (its bbox stays on the page).
    A digest that named the pixels names the turned pixels; an embedded image's digest stays."""
    if not rotation or fig.png is None:
        return
    old = fig.png
    fig.png, fig.width, fig.height = fg.turn_png(old, rotation)
    fig.rotation = rotation
    if fig.digest == hashlib.sha256(old).hexdigest():
        fig.digest = hashlib.sha256(fig.png).hexdigest()


def _render_scan(
    page: pymupdf.Page, pg: _Page, cfg: dict[str, Any], timeline: list[_Heading], for_ocr: bool = True
) -> tuple[Figure, bytes | None]:
    """A page without a text layer: a figure of kind scan (figure_dpi) + a scan_dpi render for OCR
    (``for_ocr``; else None: that render is the costlier of the two)."""
    ex = cfg["extract"]
    png, w, h, eff = fg.render(page, pg.rect, ex["figure_dpi"], ex["max_render_pixels"], pad=0.0)
    scan_png = None
    if for_ocr:
        scan_png, *_ = fg.render(page, pg.rect, ex["scan_dpi"], ex["max_render_pixels"], pad=0.0)
    fig = Figure(
        digest=hashlib.sha256(png).hexdigest(),
        kind="scan",
        pages=[pg.number],
        bbox=tuple(round(v, 2) for v in pg.rect),  # type: ignore[arg-type]
        width=w,
        height=h,
        dpi=round(eff, 1),
        heading=_heading_at(timeline, pg.number, 0.0),
        quality="ok",
        png=png,
    )
    return fig, scan_png


# "Figure 2.6: Power line pickup" -> "2.6"; "Fig. 4 ..." -> "4"
_FIGURE_LABEL = re.compile(r"^\s*(?:figure|fig\.?)\s*(\d+(?:[.\-]\d+)*)", re.IGNORECASE)
# "shown in figure 2.6", "figure2.6" (LaTeX without a space), "see Fig. 4", "Figs. 3-1"; not "figure 2.61"
_FIGURE_MENTION = re.compile(r"\b(?:figures?|figs?\.?)\s*(\d+(?:[.\-]\d+)*)(?![.\-]?\d)", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
MENTION_PAGES = 1  # a mention places a figure when it is at most this many pages from it


def _figures_where_mentioned(doc: Document) -> None:
    """A numbered figure belongs to the text that refers to it ("The observed waveform is shown in figure
    2.6."): the first such sentence within MENTION_PAGES pages of the figure gives the figure its heading
    and leads its nearby text. Typesetters float figures to the top of a page, above the heading of the
    section that shows them, where the page position alone gave them the previous section's heading and
    text (corpus2: "Figure 2.6: Power line pickup" sat under "2.8 Alternating current > Discussion"). A label
    that two figures of the document share, or a mention in a caption, places nothing.

    Measured (lexical,text): corpus R@1 1.000 -> 1.000; corpus2 R@5 0.967 -> 0.983, R@10 0.967 -> 0.983,
    MRR 0.888 -> 0.896, image-hit R@10 0.950 -> 0.975. The mentioning sentence alone beat it with the next
    sentence (MRR 0.894) or the whole paragraph (0.892)."""
    by_label: dict[str, list[Figure]] = {}
    for f in doc.figures:
        m = _FIGURE_LABEL.match(f.caption or "")
        if m:
            by_label.setdefault(m.group(1), []).append(f)
    # the figures' own captions (a caption block mentions its figure); a body sentence may begin with the
    # label too ("Figure 4.1 shows the simplified data flow")
    captions = {_norm(f.caption) for f in doc.figures if f.caption}
    placed: set[str] = set()
    for b in doc.blocks:
        if b.suspect or (_FIGURE_LABEL.match(b.text) and any(_norm(b.text).startswith(c) for c in captions)):
            continue
        for m in _FIGURE_MENTION.finditer(b.text):
            label = m.group(1)
            figs = by_label.get(label, [])
            if len(figs) != 1 or label in placed or abs(b.page - figs[0].pages[0]) > MENTION_PAGES:
                continue
            placed.add(label)
            figs[0].heading = b.heading
            figs[0].nearby_text = (
                _sentence_at(b.text, m.start(), m.end()) + " " + figs[0].nearby_text
            ).strip()


def _sentence_at(text: str, start: int, end: int, limit: int = 300) -> str:
    """The sentence of ``text`` that holds ``text[start:end]``, whitespace collapsed, at most ``limit``
    characters around it."""
    s = max((e.end() for e in _SENTENCE_END.finditer(text, 0, start)), default=0)
    e = next((e.start() for e in _SENTENCE_END.finditer(text, end)), len(text))
    s = max(s, start - limit // 2)
    return " ".join(text[s : min(e, s + limit)].split())


def _merge_duplicate_figures(doc: Document) -> None:
    """Figures that rendered to identical pixels (same drawing on several pages) become one."""
    by_digest: dict[str, Figure] = {}
    kept: list[Figure] = []
    for fig in doc.figures:
        first = by_digest.get(fig.digest)
        if first is None:
            by_digest[fig.digest] = fig
            kept.append(fig)
        else:
            first.pages = sorted(set(first.pages) | set(fig.pages))
    doc.figures = kept


def _ocr_blocks(
    res: OcrResult, page: int, heading: str, res_scale: float, find_headings: bool = False
) -> list[TextBlock]:
    """OCR paragraphs -> TextBlocks under ``heading``; boxes scaled from image pixels to page units.

    ``find_headings`` (a scanned page): a line that reads as a numbered section heading ("3.9.2 G-code
    (gcode)", "H.1.27 djopt") starts a new block, which :func:`_nest_scan_headings` later puts under it."""
    out = []
    for text, box in res.blocks:
        if not text.strip():
            continue
        parts: list[list[str]] = []
        for line in text.split("\n"):
            if not parts or (find_headings and _ocr_heading_depth(line)):
                parts.append([line])
            else:
                parts[-1].append(line)
        for lines in parts:
            out.append(
                TextBlock(
                    text="\n".join(lines),
                    page=page,
                    bbox=tuple(round(v * res_scale, 2) for v in box),  # type: ignore[arg-type]
                    heading=heading,
                    ocr=True,
                )
            )
    return out


def _nest_scan_headings(scans: list[tuple[int, Figure, list[TextBlock] | None]]) -> None:
    """Scanned pages' text under the numbered section headings that OCR read on them (a scan has no fonts
    or outline to give headings): a block that starts with one ("3.9.2 G-code (gcode)") and the blocks
    after it get it, nested by the depth of its number ("3.9 Exporting a layout > 3.9.2 G-code (gcode)"),
    below the heading the page has from the document (``TextBlock.heading`` as ``_ocr_blocks`` set it).
    Sections run on over consecutive scanned pages, and so does the scanned page's figure's heading (the
    section in force at the top of the page). Without this a page's sections ran together into one
    passage, and a page that continues a section had no heading at all."""
    stack: list[tuple[int, str]] = []  # (depth of the section number, heading line)
    last: tuple[int, str] | None = None  # (page, its heading from the document) of the previous scan
    for number, fig, blocks in sorted(scans, key=lambda s: s[0]):
        base = fig.heading
        if last is None or last != (number - 1, base):
            stack = []
        last = (number, base)
        fig.heading = _path(base, stack)
        for b in blocks or []:
            first = b.text.split("\n", 1)[0]
            depth = _ocr_heading_depth(first)
            if depth:
                stack = [(d, t) for d, t in stack if d < depth] + [(depth, first.strip())]
            b.heading = _path(base, stack)


def _path(base: str, stack: list[tuple[int, str]]) -> str:
    return " > ".join([base] * bool(base) + [t for _, t in stack])


_FURNITURE_LINES = 3  # a running header/footer read by OCR spans at most this many lines ("Chapter 3:" /
# "Getting Started" / "29"), in one block or several


def _drop_scan_furniture(pages: list[tuple[fg.Box, list[TextBlock]]]) -> None:
    """Running headers and footers of scanned pages (OCR text: no line positions or fonts to mark them as
    ``_mark_furniture`` does for a text layer), taken out of the pages' text blocks in place.

    A page's first lines (in blocks that start in the top tenth of the page) or last lines (in blocks that
    end in the bottom tenth) are a running header/footer when their letters, digits and punctuation aside
    ("Chapter 3: Getting Started 29" and "Chapter 3 / Getting Started / 28" read alike), recur on at least 3
    scanned pages and 30% of them, as for a text layer. The lines go, with a page number right after them; a
    block left empty goes too."""
    if len(pages) < 3:
        return
    need = max(3, int(0.3 * len(pages)))

    def key(lines: list[str]) -> str:
        return re.sub(r"[^a-z]", "", " ".join(lines).lower())

    for top in (True, False):
        edges = [_edge_lines(rect, blocks, top) for rect, blocks in pages]
        counts: Counter[str] = Counter()
        for lines in edges:
            counts.update({key([t for _, _, t in lines[:k]]) for k in range(1, len(lines) + 1)})
        for (_, blocks), lines in zip(pages, edges, strict=True):
            texts = [t for _, _, t in lines]
            cut = max(
                (
                    k
                    for k in range(1, len(lines) + 1)
                    if len(key(texts[:k])) >= 4 and counts[key(texts[:k])] >= need
                ),
                default=0,
            )
            if not cut:
                continue
            drop = lines[:cut]
            for line in [*lines[cut:], *_edge_lines_after(blocks, lines, top)]:
                if not line[2].strip().isdigit():  # the page number after it goes too
                    break
                drop.append(line)
            gone: dict[int, set[int]] = {}
            for i, j, _ in drop:
                gone.setdefault(i, set()).add(j)
            for i in sorted(gone, reverse=True):
                kept = [t for j, t in enumerate(blocks[i].text.split("\n")) if j not in gone[i]]
                if any(t.strip() for t in kept):
                    blocks[i].text = "\n".join(kept)
                else:
                    del blocks[i]


def _edge_lines(rect: fg.Box, blocks: list[TextBlock], top: bool) -> list[tuple[int, int, str]]:
    """(block, line, text) of a scanned page's first (``top``) or last lines, nearest the edge first, at
    most ``_FURNITURE_LINES``, from blocks in the page's top (bottom) tenth."""
    h = rect[3] - rect[1]
    out: list[tuple[int, int, str]] = []
    for i in range(len(blocks)) if top else range(len(blocks) - 1, -1, -1):
        b = blocks[i]
        if not (b.bbox[1] <= rect[1] + 0.1 * h if top else b.bbox[3] >= rect[3] - 0.1 * h):
            break
        lines = b.text.split("\n")
        for j in range(len(lines)) if top else range(len(lines) - 1, -1, -1):
            out.append((i, j, lines[j]))
            if len(out) == _FURNITURE_LINES:
                return out
    return out


def _edge_lines_after(
    blocks: list[TextBlock], lines: list[tuple[int, int, str]], top: bool
) -> list[tuple[int, int, str]]:
    """The next two lines inward after ``lines`` (a page number may follow a running header)."""
    if not lines:
        return []
    flat = [(i, j, t) for i, b in enumerate(blocks) for j, t in enumerate(b.text.split("\n"))]
    if not top:
        flat.reverse()
    at = flat.index(lines[-1]) + 1
    return flat[at : at + 2]


# "3.9 Exporting a layout", "3.9.2 G-code (gcode)", "H.1.27 djopt": a dotted section number, a short title
_OCR_HEADING = re.compile(r"^\s*((?:\d{1,3}|[A-Z])(?:\.\d{1,3})+)\.?\s+([A-Za-z][^.:;!?]{0,60})$")


def _ocr_heading_depth(line: str) -> int:
    """The depth of a numbered section heading line (the parts of its number), 0 for any other line."""
    m = _OCR_HEADING.match(line)
    if not m or len(m.group(2).split()) > 8 or m.group(2).rstrip().endswith(","):
        return 0
    return m.group(1).count(".") + 1


# ================================================================================================ images
def _decode_frames(data: bytes, rel: str, max_pixels: int) -> list[Image.Image]:
    """The frames we index: every frame of a (multi-page) TIFF, the first frame otherwise."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = open_image(data)
            frames: list[Image.Image] = []
            multi = img.format == "TIFF" and getattr(img, "n_frames", 1) > 1
            for i, frame in enumerate(ImageSequence.Iterator(img)):
                if i >= (_MAX_FRAMES if multi else 1):
                    break
                check_pixels(frame, f"frame {i + 1}")
                # a phone's photo is stored sideways with an EXIF orientation that viewers apply
                frames.append(_normalise(ImageOps.exif_transpose(frame)))
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises TypeError, IndexError, zlib.error... on broken files
        raise ExtractionError(rel, decode_problem(exc)) from None
    if not frames:
        raise ExtractionError(rel, "image has no frames")
    return [_fit(f, max_pixels) for f in frames]


def _normalise(frame: Image.Image) -> Image.Image:
    """RGB or L, transparency flattened onto white (loads the pixels: truncation errors surface here)."""
    frame.load()
    if frame.mode in ("RGBA", "LA", "PA", "P") or (frame.mode == "P" and "transparency" in frame.info):
        rgba = frame.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if frame.mode in ("1", "I;16", "I;16B", "I", "F"):
        return frame.convert("L")
    if frame.mode not in ("RGB", "L"):
        return frame.convert("RGB")
    return frame.copy()


def _fit(img: Image.Image, max_pixels: int) -> Image.Image:
    if img.width * img.height <= max_pixels:
        return img
    s = (max_pixels / (img.width * img.height)) ** 0.5
    return img.resize((max(1, int(img.width * s)), max(1, int(img.height * s))), Image.Resampling.LANCZOS)


def _mostly_text(res: OcrResult | None, width: int, height: int) -> bool:
    """A scanned page rather than a picture: confident words covering a good share of it, set in lines
    of prose (a screenshot or a schematic has as many words, but one or two per line)."""
    if res is None or len(res.words) < 30:
        return False
    covered = sum((b[2] - b[0]) * (b[3] - b[1]) for _, _, b in res.words)
    n_lines = res.text.count("\n") + 1
    return covered / max(1, width * height) >= 0.08 and len(res.words) / n_lines >= 4.0


def name_heading(rel: str) -> str:
    """A loose image's file name as words ("t440p_all-flash.chips.jpg" -> "t440p all flash chips"): the only
    title such a file has, and often the only words that say what a photo shows. It serves as the heading
    of the image's figure and OCR text, as a section title does for a figure in a PDF."""
    return " ".join(re.findall(r"[^\W_]+", PurePosixPath(rel).stem))


def _extract_image(data: bytes, doc: Document, rel: str, cfg: dict[str, Any], ocr: OcrEngine | None) -> None:
    ex = cfg["extract"]
    heading = name_heading(rel)
    frames = _decode_frames(data, rel, ex["max_render_pixels"])
    dpi_info = 0.0
    with contextlib.suppress(Exception), Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as probe:
        dpi_info = float((probe.info.get("dpi") or (0, 0))[0] or 0.0)
    pngs = []
    for frame in frames:
        buf = io.BytesIO()
        frame.save(buf, format="PNG")
        pngs.append(buf.getvalue())
    digests = [hashlib.sha256(p).hexdigest() for p in pngs]
    results = ocr.ocr(list(zip(digests, pngs, strict=True))) if ocr is not None else {}
    for i, (frame, png, digest) in enumerate(zip(frames, pngs, digests, strict=True), start=1):
        res = results.get(digest)
        has_text = res is not None and bool(res.text.strip())
        doc.pages.append(
            PageInfo(number=i, width=frame.width, height=frame.height, text_layer=False, ocr=has_text)
        )
        text_page = _mostly_text(res, frame.width, frame.height)
        if res is not None and has_text:
            blocks = _ocr_blocks(res, i, heading, res_scale=1.0)
            if not text_page:  # a picture: its texture's noise is no text
                for b in blocks:
                    b.text = denoise(b.text)
                blocks = [b for b in blocks if b.text]
            doc.blocks.extend(blocks)
        quality = "ok"
        if max(frame.width, frame.height) < 100:
            quality = "tiny"
        elif dpi_info and dpi_info < ex["low_res_dpi"]:
            quality = "low-res"
        fig = Figure(
            digest=digest,
            kind="scan" if text_page else "raster",
            pages=[i],
            bbox=(0.0, 0.0, float(frame.width), float(frame.height)),
            width=frame.width,
            height=frame.height,
            dpi=round(dpi_info, 1),
            ocr_text="" if res is None else res.text if text_page else denoise(res.text),
            heading=heading,
            quality=quality,
            png=png,
        )
        _turn_upright(fig, res.rotation if res is not None else 0)
        doc.figures.append(fig)
    _merge_duplicate_figures(doc)


# ================================================================================================ text
def _decode_text(data: bytes, doc: Document) -> str:
    for enc in ("utf-8-sig", "utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ("utf-8-sig",):
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    doc.warnings.append("not valid UTF-8: decoded as Latin-1")
    return data.decode("latin-1")


def _extract_text(data: bytes, doc: Document, rel: str, markdown: bool) -> None:
    if b"\x00" in data[:4096] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ExtractionError(rel, "binary data in a text file")
    text = _decode_text(data, doc).replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    stack: list[tuple[int, str]] = []
    first_heading = ""
    cur: list[str] = []
    start = 0
    in_fence = False

    def flush(end: int) -> None:
        body = "\n".join(cur).strip("\n")
        if body.strip():
            heading = " > ".join(t for _, t in stack)
            doc.blocks.append(
                TextBlock(text=body, page=1, bbox=(0.0, float(start + 1), 0.0, float(end)), heading=heading)
            )
        cur.clear()

    for i, line in enumerate(lines):
        if markdown and _MD_FENCE.match(line):
            in_fence = not in_fence
        m = _MD_HEADING.match(line) if markdown and not in_fence else None
        if m:
            flush(i)
            level, title = len(m.group(1)), m.group(2).strip()
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, title))
            first_heading = first_heading or title
            start = i
            cur.append(line)
            flush(i + 1)
            start = i + 1
            continue
        if not line.strip() and not in_fence:
            flush(i)
            start = i + 1
            continue
        if not cur:
            start = i
        cur.append(line)
    flush(len(lines))
    doc.pages.append(PageInfo(number=1, width=0.0, height=float(len(lines)), text_layer=True))
    doc.title = first_heading
