"""Page-range extraction: one large PDF extracted by several isolated workers at once, same Document.

A PDF with more pages than ``isolation.split_pages`` is cut into page ranges. Extraction of a PDF has
per-page passes (MuPDF work, run by the workers, each range in its own worker with its own time and memory
limits) and document-level decisions between them (plain data, run here in the parent), in three rounds:

1. ``pages``   (workers, per part of a range): text lines of every page (``extract._read_pages``), the outline and the
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

A worker keeps the document between rounds (the bytes it read, the open PDF, the pages it read): rounds 2
and 3 send it only what the planning changed in the lines of its pages, and the pool gives each worker the
requests for the pages it holds first (``Task``). Rounds 2 and 3 are cut finer than the ranges (the cost of
a page's figure analysis varies 100-fold; render batches are cut by estimated pixels), so that both workers
stay busy to the end of each round.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import math
import operator
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
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


_LINE_GET = operator.attrgetter(*_LINE_FIELDS)  # a line's fields as a tuple, in the order of TextLine(...)
_BBOX = _LINE_FIELDS.index("bbox")


def _line_out(ln: fg.TextLine) -> list[Any]:
    v = list(_LINE_GET(ln))
    v[_BBOX] = list(ln.bbox)
    return v


def _line_in(v: list[Any]) -> fg.TextLine:
    if not isinstance(v, list) or len(v) != len(_LINE_FIELDS):
        raise ValueError("a text line has other fields")
    ln = fg.TextLine(*v)
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
class _Open:
    """The worker's state for the document of one ``extract_in_ranges`` call (its ``token``): the file as
    first read (its bytes, digest, stat), the open PDF, and the pages as read (``_Kept``), so that
    later rounds neither re-open and re-parse the PDF nor get the pages' lines sent again."""

    def __init__(self, token: str, path: Path, rel: str, cfg: dict[str, Any]):
        try:
            st = path.stat()
            data = path.read_bytes()
        except OSError as exc:
            raise ExtractionError(rel, f"cannot read the file: {exc.strerror or exc}") from None
        self.token, self.rel = token, rel
        self.digest, self.size, self.mtime = hashlib.sha256(data).hexdigest(), len(data), st.st_mtime
        self.open_warnings: list[str] = []
        self.pdf = ex._open_pdf(data, rel, cfg, self.open_warnings)
        self.read: dict[int, _Kept] = {}  # page number -> the page as read

    def close(self) -> None:
        self.pdf.close()

    def keep(self, pg: ex._Page) -> None:
        self.read[pg.number] = _Kept(pg.rect, [_LINE_GET(ln) for ln in pg.lines], pg.visible_chars, pg.failed)

    def page(self, entry: list[Any]) -> ex._Page:
        """A page of a request, ``[number, as_read, marks, whole]``. ``as_read``: the page as read (the
        parent sends it when this worker has not read it; kept for later rounds) or None: as this worker
        read it (read again, its warnings already sent by the first read, if this worker has served another
        document since). ``marks``: ``[line, field, value]``, what the parent's planning changed in its
        lines. ``whole``: the page as it is now instead (only when planning changed more than fields)."""
        number, sent, marks, whole = int(entry[0]), entry[1], entry[2], entry[3]
        if whole is not None:
            return _page_in(whole)
        if sent is not None:
            self.keep(_page_in(sent))
        elif number not in self.read:
            scratch = Document(path=self.rel, digest="", size=0, mtime=0.0, file_type="pdf")
            self.keep(ex._read_pages(self.pdf, scratch, number, number)[0])
        kept = self.read[number]
        pg = ex._Page(
            number=number,
            rect=kept.rect,
            lines=[fg.TextLine(*v) for v in kept.lines],
            visible_chars=kept.visible_chars,
            failed=kept.failed,
        )
        for i, j, value in marks:
            setattr(pg.lines[i], _LINE_FIELDS[j], _box(value) if j == _BBOX else value)
        return pg


@dataclass
class _Kept:
    """A page as read, as a worker keeps it: each line's fields as a tuple (TextLine(*fields) again)."""

    rect: fg.Box
    lines: list[tuple[Any, ...]]
    visible_chars: int
    failed: bool


_OPEN: list[_Open] = []  # at most one: the document this worker serves page ranges of


def release() -> None:
    """Forget the document of the last page ranges (a request for another document came)."""
    while _OPEN:
        _OPEN.pop().close()


def handle(
    req: dict[str, Any],
    cfg: dict[str, Any],
    ocr: Any,
    write_crops: Callable[[list[Figure]], None],
) -> dict[str, Any]:
    """One round of one page range, in an extraction worker. Raises ExtractionError like extract_file."""
    path, rel, op, token = Path(req["path"]), str(req["rel"]), req["op"], str(req["token"])
    scratch = Document(path=rel, digest="", size=0, mtime=0.0, file_type="pdf")  # collects warnings
    with ex._quiet_mupdf():
        if not _OPEN or _OPEN[0].token != token:
            release()
            _OPEN.append(_Open(token, path, rel, cfg))
        od = _OPEN[0]
        pdf = od.pdf
        out: dict[str, Any] = {
            "ok": True,
            "digest": od.digest,
            "size": od.size,
            "mtime": od.mtime,
            "open_warnings": list(od.open_warnings),
        }
        if op == "pages":
            first, last = int(req["first"]), int(req["last"])
            if not 1 <= first <= last <= pdf.page_count:
                raise ExtractionError(rel, f"page range {first}-{last} is outside the document")
            got = ex._read_pages(pdf, scratch, first, last)
            for pg in got:
                od.keep(pg)
            out.update(
                pages=[_page_out(pg) for pg in got], repaired=bool(pdf.is_repaired), n_pages=pdf.page_count
            )
            if first == 1:  # the document's outline (~17 ms on 1,000 pages) and title: once, not per request
                out.update(toc=ex._raw_toc(pdf), meta_title=ex._meta_title(pdf))
        elif op == "analyse":
            pages = [od.page(e) for e in req["pages"]]
            ex._analyse_pages(pdf, pages, scratch, rel, cfg)
            out["analyses"] = [_analysis_out(pg.analysis) for pg in pages]
        elif op == "render":
            by_number = {pg.number: pg for pg in (od.page(e) for e in req["pages"])}
            planned = [(int(i), _planned_in(d)) for i, d in req["planned"]]
            timeline = ex._Timeline(ex._Heading(int(p), float(y), str(h)) for p, y, h in req["timeline"])
            scan_pages = [int(n) for n in req["scans"]]
            figs, scans = ex._render_range(pdf, by_number, planned, scan_pages, cfg, timeline, ocr)
            write_crops([f for f in figs.values() if f is not None] + [f for _, f, _ in scans])
            out["figures"] = [[i, None if f is None else f.to_dict(with_png=False)] for i, f in figs.items()]
            out["scans"] = [
                [n, f.to_dict(with_png=False), None if b is None else [_block_out(x) for x in b]]
                for n, f, b in scans
            ]
        else:
            raise ValueError(f"unknown page-range operation {op!r}")
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
@dataclass
class Task:
    """One request of a round: pages ``first``-``last`` (in messages and the test fault hook); ``pages``,
    those its worker reads or is sent (it keeps them for later rounds); ``build(held)`` makes the request for
    a worker that already holds the pages ``held`` of this document; ``cost``, its estimated work (the
    costliest go first, so that no long one is left for the end of a round); ``done(reply)``, called
    as soon as its reply is in (the parent reads it while the workers go on)."""

    first: int
    last: int
    pages: list[int]
    build: Callable[[set[int]], dict[str, Any]]
    cost: float = 1.0
    done: Callable[[dict[str, Any]], None] | None = None


# sends each task to a worker (those whose pages it holds first), several at once; the replies in task
# order, or raises ExtractionError naming the failed pages
Run = Callable[[list[Task]], list[dict[str, Any]]]


def pick(tasks: list[Task], pending: list[int], held: set[int], last: int | None) -> int:
    """The pending task (an index into ``tasks``) that a worker takes next. The costliest whose first page
    it holds (the first of equals: page order); else the one after its last; else the start of the costliest
    run of consecutive pending tasks when nothing before it was taken (the first worker starts at page 1),
    or the middle of that run (another worker works its way into it from the left). So each worker reads
    one contiguous part of the document (its fonts and images decoded by one worker, the layout model
    loaded once where such pages gather) and the last tasks of a round are split between the workers."""
    own = [k for k in pending if tasks[k].first in held]
    if own:
        return max(own, key=lambda k: (tasks[k].cost, -k))
    if last is not None and last + 1 in pending:
        return last + 1
    runs: list[list[int]] = []
    for k in sorted(pending):
        if runs and runs[-1][-1] == k - 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    run = max(runs, key=lambda r: sum(tasks[k].cost for k in r))  # the first of equals
    if run[0] == 0:
        return 0
    half, acc = sum(tasks[k].cost for k in run) / 2, 0.0
    for k in run:
        if acc >= half:
            return k
        acc += tasks[k].cost
    return run[-1]


# round 2 cuts each range into requests of about this many pages: figure analysis costs 0.002-1 s a page
# (drawings; the layout model on a few pages, often side by side), so that no long request is left at the
# end of the round for one worker while the other idles (a request costs a few ms more)
PART_PAGES = 10
# round 1 cuts each range into requests of about this many pages (~0.1 s of reading each): with whole
# ranges (~0.5 s) the last one often ran alone while the other worker idled
READ_PAGES = 25
RENDER_PER_RANGE = 3  # round 3: batches of figures per range, for the same reason


def _parts(a: int, b: int, size: int = PART_PAGES) -> list[tuple[int, int]]:
    n = b - a + 1
    k = max(1, round(n / size))
    return [(a + i * n // k, a + (i + 1) * n // k - 1) for i in range(k)]


def _render_cost(pg: ex._Page, pf: fg.PlannedFigure | None, cfg: dict[str, Any]) -> float:
    """Estimated cost of rendering a figure (its pixels: the PNG encoding is most of it) or a scanned page
    (two renders and OCR; one render without OCR), in megapixels plus a fixed part per item."""
    ex_cfg = cfg["extract"]
    if pf is None:
        box, dpis = pg.rect, [ex_cfg["figure_dpi"]]
        if cfg["ocr"]["enabled"]:
            dpis.append(ex_cfg["scan_dpi"])
    else:
        dpi = float(ex_cfg["figure_dpi"])
        if pf.region.max_native_dpi and pf.kind == "raster":
            dpi = max(dpi, min(pf.region.max_native_dpi, 2 * dpi))
        box, dpis = pf.region.bbox, [dpi]
    inches = max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]) / 72.0**2
    return 0.3 + sum(min(inches * d * d, ex_cfg["max_render_pixels"]) for d in dpis) / 1e6


def _batches(items: list[Any], costs: list[float], n: int) -> list[tuple[list[Any], float]]:
    """``items`` cut into at most ``n`` runs of consecutive items of about the same total cost."""
    n = min(n, len(items))
    total = sum(costs)
    out: list[tuple[list[Any], float]] = []
    start, acc = 0, 0.0
    for k, c in enumerate(costs):
        acc += c
        left = len(items) - k - 1
        if left == 0 or (acc >= total * (len(out) + 1) / n and left >= n - len(out) - 1):
            out.append((items[start : k + 1], sum(costs[start : k + 1])))
            start = k + 1
    return out


def _with_pages(
    req: dict[str, Any], numbers: list[int], entries: Callable[[list[int], set[int]], list[list[Any]]]
) -> Callable[[set[int]], dict[str, Any]]:
    return lambda held: {**req, "pages": entries(numbers, held)}


@contextlib.contextmanager
def _collector_skips_kept() -> Iterator[Callable[[], None]]:
    """Yields ``keep()``: what this process holds when it is called is left out of the garbage collector's
    full collections until the block ends. The parent holds every line of the document (~45k lines, ~200k
    objects on 1,000 pages) while it decodes replies and plans: each full collection scanned them all again
    (0.2-0.3 s of the parent's CPU per 1,000 pages, part of it while the workers waited for the planning).
    What is kept this way is still freed as usual when nothing refers to it (it holds no cycles)."""
    mine = gc.get_freeze_count() == 0  # (when another caller froze first, it unfreezes)
    try:
        yield gc.freeze
    finally:
        if mine:
            gc.unfreeze()


def extract_in_ranges(
    run: Run, path: Path, rel: str, cfg: dict[str, Any], ranges: list[tuple[int, int]]
) -> Document:
    """Extract one PDF in page ranges. ``run`` sends the requests of a round to the workers (in parallel) and
    returns their replies in request order, or raises ExtractionError naming the failed range.
    Raises ExtractionError (also for replies that do not fit together) like extract_file."""
    with _collector_skips_kept() as keep:
        keep()
        return _extract_in_ranges(run, path, rel, cfg, ranges, keep)


def _extract_in_ranges(
    run: Run,
    path: Path,
    rel: str,
    cfg: dict[str, Any],
    ranges: list[tuple[int, int]],
    keep: Callable[[], None],
) -> Document:
    base = {"path": str(Path(path).absolute()), "rel": rel, "token": secrets.token_hex(16)}
    digest: list[str] = []

    def round_(tasks: list[Task]) -> list[dict[str, Any]]:
        replies = run(tasks)
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

    read: dict[int, list[ex._Page]] = {}
    orig: dict[int, tuple[fg.Box, int, bool, list[tuple[Any, ...]]]] = {}

    def read_task(a: int, b: int) -> Task:
        def done(rep: dict[str, Any]) -> None:
            read[a] = [_page_in(d) for d in rep["pages"]]
            for pg in read[a]:  # as read, before the planning marks its lines
                orig[pg.number] = (pg.rect, pg.visible_chars, pg.failed, [_LINE_GET(ln) for ln in pg.lines])
            keep()

        return Task(
            a,
            b,
            list(range(a, b + 1)),
            lambda held: {**base, "op": "pages", "first": a, "last": b},
            done=done,
        )

    reads = [p for a, b in ranges for p in _parts(a, b, READ_PAGES)]
    replies = round_([read_task(a, b) for a, b in reads])
    head = replies[0]
    if int(head["n_pages"]) != ranges[-1][1]:
        raise ExtractionError(rel, f"page ranges end at page {ranges[-1][1]}, the PDF has {head['n_pages']}")
    doc = Document(
        path=rel, digest=digest[0], size=int(head["size"]), mtime=float(head["mtime"]), file_type="pdf"
    )
    doc.warnings.extend(str(w) for w in head["open_warnings"])
    pages: list[ex._Page] = []
    as_read: list[dict[str, Any]] = []  # the pages as the workers read them: what later requests refer to
    for (a, b), rep in zip(reads, replies, strict=True):
        got = read[a]
        if [pg.number for pg in got] != list(range(a, b + 1)):
            raise ExtractionError(rel, f"pages {a}-{b}: a worker sent other pages")
        pages.extend(got)
        as_read.extend(rep["pages"])
        doc.warnings.extend(str(w) for w in rep["warnings"])
    ex._require_readable(pages, rel)
    toc, body = ex._plan_text(pages, [(int(lv), str(t), int(p)) for lv, t, p in head["toc"]])

    def entries(numbers: list[int], held: set[int]) -> list[list[Any]]:
        """The pages of a request as the planning left them: what changed since they were read."""
        out: list[list[Any]] = []
        for n in numbers:
            pg = pages[n - 1]
            rect, visible_chars, failed, lines = orig[n]
            now = (pg.rect, pg.visible_chars, pg.failed, len(pg.lines))
            if now != (rect, visible_chars, failed, len(lines)):
                # never so far: planning only changes fields of lines
                out.append([n, None, [], _page_out(pg)])
                continue
            marks: list[list[Any]] = []
            for i, (ln, old) in enumerate(zip(pg.lines, lines, strict=True)):
                new = _LINE_GET(ln)
                if new != old:
                    marks.extend([i, j, v] for j, v in enumerate(new) if v != old[j])
            out.append([n, None if n in held else as_read[n - 1], marks, None])
        return out

    # round 2: figure candidates per page, with the document-level marks of the lines
    def analyse_task(a: int, b: int) -> Task:
        numbers = list(range(a, b + 1))

        def done(rep: dict[str, Any]) -> None:
            analyses = rep["analyses"]
            if len(analyses) != b - a + 1:
                raise ExtractionError(rel, f"pages {a}-{b}: a worker sent other pages")
            for pg, d in zip(pages[a - 1 : b], analyses, strict=True):
                pg.analysis = _analysis_in(d)
                if pg.analysis is not None and pg.analysis.number != pg.number:
                    raise ExtractionError(rel, f"pages {a}-{b}: a worker sent other pages")

        return Task(
            a,
            b,
            numbers,
            lambda held: {**base, "op": "analyse", "first": a, "last": b, "pages": entries(numbers, held)},
            done=done,
        )

    parts = [p for a, b in ranges for p in _parts(a, b)]
    for rep in round_([analyse_task(a, b) for a, b in parts]):
        doc.warnings.extend(str(w) for w in rep["warnings"])
    planned, timeline = ex._plan_document(pages, toc, cfg, doc)
    keep()

    # round 3: crops and OCR of the figures and scanned pages, in batches of consecutive figures (pages in
    # order) of about the same estimated cost: figures gather in a few chapters, so batches by page range
    # would leave most workers idle in this round
    items: list[tuple[int, int | None, fg.PlannedFigure | None]] = [
        (pf.region.page, i, pf) for i, pf in enumerate(planned)
    ]
    items += [(pg.number, None, None) for pg in pages if pg.analysis is not None and pg.analysis.is_scan]
    items.sort(key=lambda t: (t[0], t[1] is None, t[1] or 0))
    costs = [_render_cost(pages[n - 1], pf, cfg) for n, _, pf in items]
    heads = [[h.page, h.y, h.path] for h in timeline]
    tasks: list[Task] = []
    asks: list[tuple[set[int], list[int]]] = []
    for batch, cost in _batches(items, costs, RENDER_PER_RANGE * len(ranges)):
        needed = sorted({n for n, _, _ in batch})
        req = {
            **base,
            "op": "render",
            "first": needed[0],
            "last": needed[-1],
            "planned": [[i, _planned_out(pf)] for _, i, pf in batch if pf is not None],
            "scans": [n for n, i, _ in batch if i is None],
            "timeline": [h for h in heads if h[0] <= needed[-1]],
        }
        asks.append(({i for i, _ in req["planned"]}, req["scans"]))
        tasks.append(Task(needed[0], needed[-1], needed, _with_pages(req, needed, entries), cost=cost))
    figs: dict[int, Figure | None] = {}
    scans: list[tuple[int, Figure, list[TextBlock] | None]] = []
    for (asked, asked_scans), rep in zip(asks, round_(tasks) if tasks else [], strict=True):
        for i, d in rep["figures"]:
            if i not in asked:
                raise ExtractionError(rel, "a worker sent a figure it was not asked for")
            figs[int(i)] = None if d is None else Figure.from_dict(d)
        if [n for n, _, _ in rep["scans"]] != asked_scans:
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
