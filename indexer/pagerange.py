"""Page-range extraction: one large PDF extracted by several isolated workers at once, same Document.

A PDF with more pages than ``isolation.split_pages`` is cut into page ranges. Extraction of a PDF has
per-page passes (MuPDF work, run by the workers, each range in its own worker with its own time and memory
limits) and document-level decisions between them (plain data, run here in the parent), in three rounds:

1. ``pages``   (workers, per range): text lines of every page (``extract._read_pages``), the outline and the
   metadata title;
2. the parent marks running headers/footers, the body font size and headings over ALL pages
   (``extract._plan_text``), then ``analyse`` (workers, per range): figure candidates and captions per page
   (they depend on those marks);
3. the parent joins captions that start the next page (across range borders too), de-duplicates figures and
   detects boilerplate across the whole document, builds text blocks and heading paths
   (``extract._plan_document``), then ``render`` (workers, per range): crops of the planned figures whose
   first page lies in the range and of its scanned pages, with their OCR; the parent puts them in plan order
   and finishes the Document exactly as one worker does (``extract._finish_pdf``).

Every piece of state that crosses a process boundary goes through JSON here (floats round-trip exactly), so
the Document equals the one-worker Document field for field (tests/test_pagerange.py checks it on real
PDFs). The parent never opens the PDF: it only runs the pure-Python planning on the workers' (checked) data.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path, PurePosixPath
from typing import Any

from manualrag.errors import ExtractionError
from manualrag.indexer import extract as ex
from manualrag.indexer import figures as fg
from manualrag.models import Document, Figure, TextBlock

MIN_RANGE_PAGES = 16  # below this a range costs more in round trips than it gains in balance


def plan_ranges(n_pages: int, split_pages: int, n_workers: int) -> list[tuple[int, int]]:
    """(first, last) 1-based page ranges: at most ``split_pages`` pages each, and about two ranges per
    worker so that one slow range does not leave the other workers idle at the end of a round."""
    size = min(split_pages, max(MIN_RANGE_PAGES, math.ceil(n_pages / (2 * max(1, n_workers)))))
    size = max(1, size)
    return [(a, min(a + size - 1, n_pages)) for a in range(1, n_pages + 1, size)]


# ------------------------------------------------------------------------------------------ serialisation
def _box(v: Any) -> fg.Box:
    if not isinstance(v, (list, tuple)) or len(v) != 4:
        raise ValueError("a box needs 4 numbers")
    return fg.as_box(v)


# every field of a TextLine, in a compact list (a 1,000-page manual has ~100k lines); new fields travel too
_LINE_FIELDS = [f.name for f in fields(fg.TextLine)]


def _line_out(ln: fg.TextLine) -> list[Any]:
    return [list(ln.bbox) if name == "bbox" else getattr(ln, name) for name in _LINE_FIELDS]


def _line_in(v: list[Any]) -> fg.TextLine:
    if not isinstance(v, list) or len(v) != len(_LINE_FIELDS):
        raise ValueError("a text line has other fields")
    ln = fg.TextLine(**dict(zip(_LINE_FIELDS, v, strict=True)))
    ln.bbox = _box(ln.bbox)
    if not isinstance(ln.text, str) or not (ln.suspect is None or isinstance(ln.suspect, str)):
        raise ValueError("a text line's text is not a string")
    return ln


_REGION_FIELDS = [f.name for f in fields(fg.Region)]


def _region_out(r: fg.Region) -> dict[str, Any]:
    d = {name: getattr(r, name) for name in _REGION_FIELDS}
    d["bbox"] = list(r.bbox)
    return d


def _region_in(d: dict[str, Any]) -> fg.Region:
    r = fg.Region(**{name: d[name] for name in _REGION_FIELDS})
    r.bbox = _box(r.bbox)
    r.raster_digests = [str(x) for x in r.raster_digests]
    r.labels = [str(x) for x in r.labels]
    return r


def _analysis_out(pa: fg.PageAnalysis | None) -> dict[str, Any] | None:
    if pa is None:
        return None
    return {
        "number": pa.number,
        "rect": list(pa.rect),
        "regions": [_region_out(r) for r in pa.regions],
        "scan_cover": pa.scan_cover,
        "is_scan": pa.is_scan,
    }


def _analysis_in(d: dict[str, Any] | None) -> fg.PageAnalysis | None:
    if d is None:
        return None
    return fg.PageAnalysis(
        number=int(d["number"]),
        rect=_box(d["rect"]),
        regions=[_region_in(r) for r in d["regions"]],
        scan_cover=float(d["scan_cover"]),
        is_scan=bool(d["is_scan"]),
    )


def _page_out(pg: ex._Page, analysis: bool = False) -> dict[str, Any]:
    return {
        "number": pg.number,
        "rect": list(pg.rect),
        "lines": [_line_out(ln) for ln in pg.lines],
        "visible_chars": pg.visible_chars,
        "failed": pg.failed,
        "analysis": _analysis_out(pg.analysis) if analysis else None,
    }


def _page_in(d: dict[str, Any]) -> ex._Page:
    return ex._Page(
        number=int(d["number"]),
        rect=_box(d["rect"]),
        lines=[_line_in(v) for v in d["lines"]],
        visible_chars=int(d["visible_chars"]),
        analysis=_analysis_in(d.get("analysis")),
        failed=bool(d["failed"]),
    )


def _planned_out(pf: fg.PlannedFigure) -> dict[str, Any]:
    return {
        "region": _region_out(pf.region),
        "pages": pf.pages,
        "kind": pf.kind,
        "boilerplate": pf.boilerplate,
    }


def _planned_in(d: dict[str, Any]) -> fg.PlannedFigure:
    return fg.PlannedFigure(
        region=_region_in(d["region"]),
        pages=[int(p) for p in d["pages"]],
        kind=str(d["kind"]),
        boilerplate=bool(d["boilerplate"]),
    )


def _block_in(d: dict[str, Any]) -> TextBlock:
    return TextBlock(**{**d, "bbox": _box(d["bbox"])})


# ------------------------------------------------------------------------------------------ worker side
def handle(
    req: dict[str, Any],
    cfg: dict[str, Any],
    ocr: Any,
    write_crops: Callable[[list[Figure]], None],
) -> dict[str, Any]:
    """One round of one page range, in an extraction worker. Raises ExtractionError like extract_file."""
    path, rel, op = Path(req["path"]), str(req["rel"]), req["op"]
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise ExtractionError(rel, f"cannot read the file: {exc.strerror or exc}") from None
    scratch = Document(path=rel, digest="", size=len(data), mtime=0.0, file_type="pdf")  # collects warnings
    out: dict[str, Any] = {
        "ok": True,
        "digest": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "mtime": st.st_mtime,
    }
    with ex._quiet_mupdf():
        pdf = ex._open_pdf(data, rel, cfg, scratch.warnings)
        try:
            out["open_warnings"] = list(scratch.warnings)
            scratch.warnings.clear()
            if op == "pages":
                first, last = int(req["first"]), int(req["last"])
                if not 1 <= first <= last <= pdf.page_count:
                    raise ExtractionError(rel, f"page range {first}-{last} is outside the document")
                pages = ex._read_pages(pdf, scratch, first, last)
                out.update(
                    pages=[_page_out(pg) for pg in pages],
                    toc=ex._raw_toc(pdf),
                    meta_title=ex._meta_title(pdf),
                    repaired=bool(pdf.is_repaired),
                    n_pages=pdf.page_count,
                )
            elif op == "analyse":
                pages = [_page_in(d) for d in req["pages"]]
                ex._analyse_pages(pdf, pages, scratch, rel, cfg)
                out["analyses"] = [_analysis_out(pg.analysis) for pg in pages]
            elif op == "render":
                by_number = {pg.number: pg for pg in (_page_in(d) for d in req["pages"])}
                planned = [(int(i), _planned_in(d)) for i, d in req["planned"]]
                timeline = ex._Timeline(ex._Heading(int(p), float(y), str(h)) for p, y, h in req["timeline"])
                scan_pages = [int(n) for n in req["scans"]]
                figs, scans = ex._render_range(pdf, by_number, planned, scan_pages, cfg, timeline, ocr)
                write_crops([f for f in figs.values() if f is not None] + [f for _, f, _ in scans])
                out["figures"] = [
                    [i, None if f is None else f.to_dict(with_png=False)] for i, f in figs.items()
                ]
                out["scans"] = [
                    [n, f.to_dict(with_png=False), None if b is None else [_block_out(x) for x in b]]
                    for n, f, b in scans
                ]
            else:
                raise ValueError(f"unknown page-range operation {op!r}")
        finally:
            pdf.close()
    out["warnings"] = list(scratch.warnings)
    return out


def _block_out(b: TextBlock) -> dict[str, Any]:
    return {
        "text": b.text,
        "page": b.page,
        "bbox": list(b.bbox),
        "heading": b.heading,
        "font_size": b.font_size,
        "bold": b.bold,
        "ocr": b.ocr,
        "suspect": b.suspect,
    }


# ------------------------------------------------------------------------------------------ parent side
Run = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


def extract_in_ranges(
    run: Run, path: Path, rel: str, cfg: dict[str, Any], ranges: list[tuple[int, int]]
) -> Document:
    """Extract one PDF in page ranges. ``run`` sends one request per range to the workers (in parallel) and
    returns their replies in request order, or raises ExtractionError naming the failed range.
    Raises ExtractionError (also for replies that do not fit together) like extract_file."""
    base = {"path": str(Path(path).absolute()), "rel": rel}
    digest: list[str] = []

    def round_(reqs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        replies = run([{**base, **r} for r in reqs])
        for rep in replies:
            if digest and rep["digest"] != digest[0]:
                raise ExtractionError(rel, "the file changed while it was read")
            digest[:1] = [rep["digest"]]
        return replies

    # round 1: lines of every page
    if (
        not ranges
        or ranges[0][0] != 1
        or any(b + 1 != a for (_, b), (a, _) in zip(ranges, ranges[1:], strict=False))
    ):
        raise ValueError(f"page ranges must cover the document from page 1 in order: {ranges}")
    replies = round_([{"op": "pages", "first": a, "last": b} for a, b in ranges])
    head = replies[0]
    if int(head["n_pages"]) != ranges[-1][1]:
        raise ExtractionError(rel, f"page ranges end at page {ranges[-1][1]}, the PDF has {head['n_pages']}")
    doc = Document(
        path=rel, digest=digest[0], size=int(head["size"]), mtime=float(head["mtime"]), file_type="pdf"
    )
    doc.warnings.extend(str(w) for w in head["open_warnings"])
    pages: list[ex._Page] = []
    for (a, b), rep in zip(ranges, replies, strict=True):
        got = [_page_in(d) for d in rep["pages"]]
        if [pg.number for pg in got] != list(range(a, b + 1)):
            raise ExtractionError(rel, f"pages {a}-{b}: a worker sent other pages")
        pages.extend(got)
        doc.warnings.extend(str(w) for w in rep["warnings"])
    ex._require_readable(pages, rel)
    toc, body = ex._plan_text(pages, [(int(lv), str(t), int(p)) for lv, t, p in head["toc"]])

    # round 2: figure candidates per page, with the document-level marks of the lines
    def in_range(a: int, b: int) -> list[ex._Page]:
        return pages[a - 1 : b]

    replies = round_(
        [
            {"op": "analyse", "first": a, "last": b, "pages": [_page_out(pg) for pg in in_range(a, b)]}
            for a, b in ranges
        ]
    )
    for (a, b), rep in zip(ranges, replies, strict=True):
        analyses = rep["analyses"]
        if len(analyses) != b - a + 1:
            raise ExtractionError(rel, f"pages {a}-{b}: a worker sent other pages")
        for pg, d in zip(in_range(a, b), analyses, strict=True):
            pg.analysis = _analysis_in(d)
            if pg.analysis is not None and pg.analysis.number != pg.number:
                raise ExtractionError(rel, f"pages {a}-{b}: a worker sent other pages")
        doc.warnings.extend(str(w) for w in rep["warnings"])
    planned, timeline = ex._plan_document(pages, toc, cfg, doc)

    # round 3: crops and OCR of the figures and scanned pages, in as many batches as there are ranges, each
    # batch a run of consecutive figures (pages in order) with about the same number of them: figures gather
    # in a few chapters, so batches by page range would leave most workers idle in this round
    items: list[tuple[int, int | None, fg.PlannedFigure | None]] = [
        (pf.region.page, i, pf) for i, pf in enumerate(planned)
    ]
    items += [(pg.number, None, None) for pg in pages if pg.analysis is not None and pg.analysis.is_scan]
    items.sort(key=lambda t: (t[0], t[1] is None, t[1] or 0))
    n_batches = min(len(ranges), len(items))
    reqs: list[dict[str, Any]] = []
    for k in range(n_batches):
        batch = items[k * len(items) // n_batches : (k + 1) * len(items) // n_batches]
        needed = sorted({n for n, _, _ in batch})
        reqs.append(
            {
                "op": "render",
                "first": needed[0],
                "last": needed[-1],
                "pages": [_page_out(pages[n - 1]) for n in needed],
                "planned": [[i, _planned_out(pf)] for _, i, pf in batch if pf is not None],
                "scans": [n for n, i, _ in batch if i is None],
                "timeline": [[h.page, h.y, h.path] for h in timeline if h.page <= needed[-1]],
            }
        )
    figs: dict[int, Figure | None] = {}
    scans: list[tuple[int, Figure, list[TextBlock] | None]] = []
    for req, rep in zip(reqs, round_(reqs) if reqs else [], strict=True):
        asked = {i for i, _ in req["planned"]}
        for i, d in rep["figures"]:
            if i not in asked:
                raise ExtractionError(rel, "a worker sent a figure it was not asked for")
            figs[int(i)] = None if d is None else Figure.from_dict(d)
        if [n for n, _, _ in rep["scans"]] != req["scans"]:
            raise ExtractionError(rel, "a worker sent other scanned pages than asked for")
        for n, d, blocks in rep["scans"]:
            scans.append(
                (int(n), Figure.from_dict(d), None if blocks is None else [_block_in(x) for x in blocks])
            )
    if len(figs) != len(planned):
        raise ExtractionError(rel, "a worker left out a figure it was asked for")
    ex._finish_pdf(
        doc, pages, planned, figs, scans, cfg, toc, body, timeline, head["meta_title"], head["repaired"], rel
    )
    if not doc.title:
        doc.title = PurePosixPath(rel).stem
    return doc
