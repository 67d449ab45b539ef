"""Figure finding on PDF pages: raster images, vector-drawn diagrams, symbols, boilerplate, captions.

Per page (``analyse_page``):
  * raster images from ``page.get_image_info(hashes=True, xrefs=True)`` (content digest, native size);
  * vector drawings from ``page.get_drawings()``, cleaned of page-background fills and full-page frames,
    grouped with ``page.cluster_drawings()``; hairline rules and specks are dropped;
  * candidates that touch or nearly touch are merged (image tiles, a photo with its call-out lines);
  * regions holding drawings grow over the short text lines (labels) that sit inside or right beside them;
  * drawings made only of axis-aligned lines/boxes around text are kept with a "Figure ..." caption;
    otherwise ruled tables (rules across the whole region) and frames/shadings around text are dropped,
    and only what is left (boxes around text, no grid) is put to pymupdf's layout model (pymupdf-layout,
    an ONNX GNN: 0.25-0.4 s per page on 2 idle cores, ~1.5 s for the first page of a process; too slow
    to run on every page, and it labels no raster screenshots as pictures at all);
  * small images (by area on the page, not pixels) need meaning to stay: a warning symbol (beside
    WARNING/CAUTION/..., or a warm-coloured triangle) or a pictogram in a numbered step.
Per document (``assemble``): de-duplication by content (the same image on many pages is one figure that
lists every page), boilerplate (small and repeated: one record), captions (also the top of the next
page), and the plan of what to render.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from manualrag.indexer.pdflib import load_layout_model, pymupdf

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]

CAPTION_RE = re.compile(
    r"^\s*(figure|fig\.?|illustration|table|abbildung|abb\.|diagram|bild)\s*"
    r"([\w.\-]*\d[\w.\-]*|[A-Z][.:]?)\s*([:.\-\u2013\u2014]|\s|$)",
    re.IGNORECASE,
)
# a caption that makes an ambiguous drawing (boxes and rules around text) a figure, not a table
FIGURE_CAPTION_RE = re.compile(
    r"^\s*(figure|fig\.?|illustration|abbildung|abb\.|diagram|bild)\b", re.IGNORECASE
)
WARNING_RE = re.compile(
    r"\b(WARNING|CAUTION|DANGER|NOTICE|ATTENTION|IMPORTANT|WARNUNG|VORSICHT|GEFAHR|ACHTUNG|HINWEIS|"
    r"AVERTISSEMENT|ADVERTENCIA|PRECAUCI[OÓ]N|PELIGRO|ATENCI[OÓ]N)\b"
)
WARNING_START_RE = re.compile(
    r"^\s*(warning|caution|danger|notice|attention|important|note|warnung|vorsicht|gefahr|achtung|hinweis)\b",
    re.IGNORECASE,
)
STEP_RE = re.compile(r"^\s*(\(?\d{1,2}[.)]\s+\S|step\s+\d{1,2}\b|schritt\s+\d{1,2}\b)", re.IGNORECASE)

_RASTER_TILE_GAP = 2.0  # images closer than this (pt) are tiles of one picture
_MERGE_GAP = 8.0  # drawings / drawings and images closer than this belong together
_BRIDGE_GAP = 20.0  # ... and up to this far apart when no text stands between them
_MAX_BRIDGE_REGIONS = 150  # bridging is cubic in the worst case: skip it beyond this many regions
_MAX_CLUSTER_PATHS = 2500  # beyond this many paths a page is treated as one drawing
_BACKGROUND_AREA = 0.6  # an image this large (share of the page) ...
_BACKGROUND_TEXT_CHARS = 200  # ... with this much PDF text on top of it is a page background
_RULE_THICKNESS = 4.0  # clusters thinner than this are rules, underlines, hairlines
_PAGE_SIZED = 0.8  # single items covering this share of the page are backgrounds or frames
_SCAN_COVER = 0.5  # share of the page an image (or drawing) must cover to make a text-less page a scan
_LABEL_MAX_CHARS = 48  # longer lines beside a drawing are body text, not labels
_MEANINGFUL = re.compile(r"[^\W_]")  # a label needs a letter or digit (not unmapped glyphs)
_STEP_REACH = 200.0  # pt along the row from a numbered step to its pictogram
_WARNING_REACH = 36.0  # pt between a small image and a WARNING/CAUTION word that explains it


@dataclass
class TextLine:
    """One line of PDF text (or a run of it with the same suspect status), page coordinates."""

    text: str
    bbox: Box
    size: float
    bold: bool
    block: int  # index of the MuPDF text block on the page
    suspect: str | None = None
    vertical: bool = False
    rotation: int = 0  # clockwise degrees (0/90/180/270) that turn the line to read left to right
    furniture: bool = False  # running header/footer
    heading: bool = False
    caption: bool = False  # "Figure 3: ..." (see mark_captions)


@dataclass
class Region:
    """A figure candidate on one page."""

    page: int
    bbox: Box
    raster_digests: list[str] = field(default_factory=list)  # content digests of images inside
    raster_area: float = 0.0  # summed area of those images on the page
    native_dpi: float | None = None  # lowest native resolution of those images (the quality flag)
    # highest native resolution of those images: what a render must reach to keep the finest image's own
    # pixels (a screenshot beside a small sketch, merged into one figure, is read by OCR at its own size)
    max_native_dpi: float | None = None
    n_paths: int = 0  # vector paths inside
    axis_only: bool = True  # every path is a horizontal/vertical line or a rectangle
    shape: str = ""  # hash of the vector geometry (relative to the bbox): identity of a drawing
    frame_only: bool = False  # every path lies on the region's outline (a box, a frame)
    grid: bool = False  # rules spanning the whole width/height at 3+ positions: a table's grid
    kind: str = ""  # raster | vector | symbol (set by classify)
    area_frac: float = 0.0
    caption: str = ""
    labels: list[str] = field(default_factory=list)
    nearby_text: str = ""
    grown: bool = False  # took in text labels

    @property
    def has_raster(self) -> bool:
        return bool(self.raster_digests)

    @property
    def has_vector(self) -> bool:
        return self.n_paths > 0

    def content_key(self) -> str:
        """Identity of what the region shows, to find the same figure on other pages."""
        if self.has_raster and not self.has_vector and len(self.raster_digests) == 1 and not self.grown:
            return "img:" + self.raster_digests[0]
        h = hashlib.sha256()
        h.update(
            ("|".join(sorted(self.raster_digests)) + "#" + self.shape + "#" + " ".join(self.labels)).encode()
        )
        return "mix:" + h.hexdigest()


@dataclass
class PageAnalysis:
    number: int  # 1-based
    rect: Box
    regions: list[Region]
    scan_cover: float  # largest share of the page covered by one image region or by one drawing
    is_scan: bool = False  # no usable text layer and covered by an image/drawing: render and OCR it


@dataclass
class PlannedFigure:
    """A figure after de-duplication: first occurrence + every page that shows it."""

    region: Region
    pages: list[int]
    kind: str
    boilerplate: bool = False
    occurrences: list[Region] = field(default_factory=list)  # the region on every page that shows it


# ------------------------------------------------------------------------------------------ geometry
def _area(b: Box) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def union(a: Box, b: Box) -> Box:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _inter(a: Box, b: Box) -> float:
    return _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def gap(a: Box, b: Box) -> float:
    """Distance between two boxes (0 when they touch or overlap)."""
    dx = max(0.0, max(a[0], b[0]) - min(a[2], b[2]))
    dy = max(0.0, max(a[1], b[1]) - min(a[3], b[3]))
    return (dx * dx + dy * dy) ** 0.5


def _clip(b: Box, page: Box) -> Box:
    return (max(b[0], page[0]), max(b[1], page[1]), min(b[2], page[2]), min(b[3], page[3]))


def as_box(r: Any) -> Box:
    return (float(r[0]), float(r[1]), float(r[2]), float(r[3]))


def inside_share(inner: Box, outer: Box) -> float:
    a = _area(inner)
    return _inter(inner, outer) / a if a > 0 else 0.0


# ------------------------------------------------------------------------------------------ page analysis
def analyse_page(
    page: pymupdf.Page,
    lines: list[TextLine],
    cfg: dict[str, Any],
    visible_chars: int,
) -> PageAnalysis:
    """Find the figure candidates of one page (no rendering yet)."""
    ex = cfg["extract"]
    prect = as_box(page.rect)
    parea = _area(prect) or 1.0
    rasters = _raster_regions(page, prect, parea)
    drawings = _visible_drawings(page, parea)
    vectors = _vector_regions(page, drawings, prect, parea)

    # a page without a usable text layer that an image (or drawing) covers is a scan: OCR it whole
    raster_groups = _merge(rasters, _RASTER_TILE_GAP)
    for r in raster_groups:
        r.area_frac = _area(r.bbox) / parea
    image_cover = max((_area(r.bbox) / parea for r in raster_groups), default=0.0)
    drawing_cover = max((_area(r.bbox) / parea for r in _merge(vectors, _MERGE_GAP)), default=0.0)
    scan_cover = max(image_cover, drawing_cover)
    if visible_chars < ex["min_text_chars"] and scan_cover >= _SCAN_COVER:
        # the page image becomes one "scan" figure; small images apart from it may still be boilerplate
        small = [r for r in raster_groups if r.area_frac < ex["small_figure_area"]]
        for r in small:
            r.kind = "raster"
        return PageAnalysis(page.number + 1, prect, small, scan_cover, is_scan=True)

    regions = _merge(raster_groups + vectors, _MERGE_GAP, rasters_apart=True)
    for _ in range(2):
        for r in regions:
            r.area_frac = _area(r.bbox) / parea
            if r.area_frac >= ex["small_figure_area"]:
                _grow_with_labels(r, lines)
        regions = _merge_bridged(regions, lines)
    for r in regions:
        r.area_frac = _area(r.bbox) / parea
    regions = [r for r in regions if _keep_region(page, r, regions, lines, cfg)]
    for r in regions:
        r.area_frac = _area(r.bbox) / parea
        r.kind = _classify(page, r, lines, cfg)
    regions = [r for r in regions if r.kind]
    return PageAnalysis(page.number + 1, prect, regions, scan_cover)


def _has_images(page: pymupdf.Page) -> bool:
    """Cheap pre-check: image XObjects in the resources, or an inline image operator in the content."""
    try:
        return bool(page.get_images(full=False)) or b"BI" in page.read_contents()
    except Exception:  # noqa: BLE001
        return True


def _raster_regions(page: pymupdf.Page, prect: Box, parea: float) -> list[Region]:
    out: list[Region] = []
    if not _has_images(page):
        return out  # get_image_info runs a device over the page (~10 ms): skip pages without images
    for info in page.get_image_info(hashes=True, xrefs=True):
        full = as_box(info["bbox"])
        bbox = _clip(full, prect)
        if bbox[2] - bbox[0] < 1 or bbox[3] - bbox[1] < 1:
            continue  # off the page or degenerate
        digest = info.get("digest")
        key = (
            digest.hex()
            if isinstance(digest, (bytes, bytearray))
            else f"xref{info.get('xref', 0)}-{info['number']}"
        )
        w_in = max(1e-6, (full[2] - full[0]) / 72.0)
        h_in = max(1e-6, (full[3] - full[1]) / 72.0)
        native = min(info["width"] / w_in, info["height"] / h_in)
        out.append(
            Region(
                page=page.number + 1,
                bbox=bbox,
                raster_digests=[key],
                raster_area=_area(bbox),
                native_dpi=native,
                max_native_dpi=native,
                n_paths=0,
                area_frac=_area(bbox) / parea,
            )
        )
    return out


def _visible_drawings(page: pymupdf.Page, parea: float) -> list[dict[str, Any]]:
    """Paths that paint something visible, without page backgrounds and full-page frames."""
    out = []
    for d in page.get_drawings():
        r = as_box(d["rect"])
        fill, color = d.get("fill"), d.get("color")
        filled = fill is not None and (d.get("fill_opacity") or 0) > 0.01
        stroked = color is not None and (d.get("stroke_opacity") or 0) > 0.01 and d["type"] != "f"
        if not filled and not stroked:
            continue
        if filled and not stroked and all(c >= 0.97 for c in fill):
            continue  # white fill: a background or an eraser, invisible on paper
        if _area(r) >= _PAGE_SIZED * parea:
            continue  # page background fill or full-page frame
        d["box"] = r
        out.append(d)
    return out


def _path_is_axis(d: dict[str, Any]) -> bool:
    for item in d["items"]:
        op = item[0]
        if op == "re" or op == "qu" and item[1].is_rectangular:
            continue
        if op == "l":
            p, q = item[1], item[2]
            if abs(p.x - q.x) < 0.5 or abs(p.y - q.y) < 0.5:
                continue
        return False
    return True


def _vector_regions(
    page: pymupdf.Page, drawings: list[dict[str, Any]], prect: Box, parea: float
) -> list[Region]:
    if not drawings:
        return []
    if len(drawings) > _MAX_CLUSTER_PATHS:
        # cluster_drawings is quadratic: a page this dense is one big drawing (a CAD sheet, a map)
        whole = _union_all(drawings, prect)
        return [
            Region(
                page=page.number + 1,
                bbox=whole,
                n_paths=len(drawings),
                axis_only=all(_path_is_axis(d) for d in drawings),
                shape=_shape_hash(drawings, whole),
                area_frac=_area(whole) / parea,
            )
        ]
    try:
        clusters = page.cluster_drawings(drawings=drawings, x_tolerance=3, y_tolerance=3)
    except Exception as exc:  # noqa: BLE001 - a malformed path must not lose the page
        log.debug("cluster_drawings failed on page %d: %s", page.number + 1, exc)
        return []
    out: list[Region] = []
    for c in clusters:
        cb = _clip(as_box(c), prect)
        if min(cb[2] - cb[0], cb[3] - cb[1]) < _RULE_THICKNESS:
            continue  # rules, underlines, table hairlines
        members = [d for d in drawings if inside_share(_grow(d["box"], 0.5), _grow(cb, 3.5)) > 0.99]
        if not members:
            continue
        out.append(
            Region(
                page=page.number + 1,
                bbox=cb,
                n_paths=len(members),
                axis_only=all(_path_is_axis(d) for d in members),
                shape=_shape_hash(members, cb),
                area_frac=_area(cb) / parea,
                frame_only=all(_on_outline(d["box"], cb) for d in members),
                grid=_has_table_grid(members, cb),
            )
        )
    return out


def _has_table_grid(members: list[dict[str, Any]], box: Box, tol: float = 1.5) -> bool:
    """Three or more rules (or cell edges, merged along their line) that run across the whole region:
    the grid of a table. Block diagrams have separate boxes joined by connectors instead."""
    rows: dict[int, list[tuple[float, float]]] = {}
    cols: dict[int, list[tuple[float, float]]] = {}

    def add_h(y: float, x0: float, x1: float) -> None:
        rows.setdefault(round(y / tol), []).append((min(x0, x1), max(x0, x1)))

    def add_v(x: float, y0: float, y1: float) -> None:
        cols.setdefault(round(x / tol), []).append((min(y0, y1), max(y0, y1)))

    for d in members:
        for item in d["items"]:
            if item[0] == "re":  # a rectangle: its four edges (cells, row bands, frames)
                r = item[1]
                add_h(r.y0, r.x0, r.x1)
                add_h(r.y1, r.x0, r.x1)
                add_v(r.x0, r.y0, r.y1)
                add_v(r.x1, r.y0, r.y1)
            elif item[0] == "l":  # a segment (a polyline's horizontal runs stay separate pieces)
                p, q = item[1], item[2]
                if abs(p.y - q.y) <= tol:
                    add_h((p.y + q.y) / 2, p.x, q.x)
                elif abs(p.x - q.x) <= tol:
                    add_v((p.x + q.x) / 2, p.y, q.y)

    def full(spans: list[tuple[float, float]], lo: float, hi: float) -> bool:
        covered, reach = 0.0, lo
        for a, b in sorted(spans):
            if a > reach + 2 * tol:
                return False  # a gap along the line
            if b > reach:
                covered += b - max(a, reach)
                reach = b
        return covered >= 0.9 * (hi - lo)

    n_rows = sum(full(v, box[0], box[2]) for v in rows.values())
    n_cols = sum(full(v, box[1], box[3]) for v in cols.values())
    return n_rows >= 3 or n_cols >= 3


def _on_outline(b: Box, outline: Box, tol: float = 3.0) -> bool:
    """The path lies along one edge of the outline, or is the outline itself."""
    along = (
        abs(b[0] - outline[0]) <= tol and b[2] - b[0] <= tol,
        abs(b[2] - outline[2]) <= tol and b[2] - b[0] <= tol,
        abs(b[1] - outline[1]) <= tol and b[3] - b[1] <= tol,
        abs(b[3] - outline[3]) <= tol and b[3] - b[1] <= tol,
    )
    whole = all(abs(p - q) <= tol for p, q in zip(b, outline, strict=True))
    return any(along) or whole


def _union_all(drawings: list[dict[str, Any]], prect: Box) -> Box:
    box = drawings[0]["box"]
    for d in drawings[1:]:
        box = union(box, d["box"])
    return _clip(box, prect)


def _grow(b: Box, d: float) -> Box:
    return (b[0] - d, b[1] - d, b[2] + d, b[3] + d)


def _shape_hash(members: list[dict[str, Any]], bbox: Box) -> str:
    """Geometry relative to the drawing's own corner: equal for the same drawing placed elsewhere."""
    h = hashlib.sha256()
    ox, oy = bbox[0], bbox[1]
    for d in members:
        r = d["box"]
        fill = tuple(round(c, 2) for c in d.get("fill") or ())
        color = tuple(round(c, 2) for c in d.get("color") or ())
        h.update(
            f"{d['type']}{len(d['items'])}:{r[0] - ox:.0f},{r[1] - oy:.0f},{r[2] - ox:.0f},{r[3] - oy:.0f}"
            f"{fill}{color};".encode()
        )
    return h.hexdigest()[:32]


def _merge(regions: list[Region], max_gap: float, rasters_apart: bool = False) -> list[Region]:
    """Union regions that overlap or lie within ``max_gap`` of each other (transitively).

    ``rasters_apart``: two regions that hold only images merge only when touching (tiles), so two
    screenshots side by side stay two figures."""
    regs = [replace(r, raster_digests=list(r.raster_digests), labels=list(r.labels)) for r in regions]
    changed = True
    while changed and len(regs) > 1:
        changed = False
        out: list[Region] = []
        for r in sorted(regs, key=lambda x: (x.bbox[1], x.bbox[0])):
            for o in out:
                limit = max_gap
                if rasters_apart and not r.has_vector and not o.has_vector:
                    limit = _RASTER_TILE_GAP
                if gap(r.bbox, o.bbox) <= limit:
                    _absorb(o, r)
                    changed = True
                    break
            else:
                out.append(r)
        regs = out
    return regs


def _merge_bridged(regions: list[Region], lines: list[TextLine]) -> list[Region]:
    """Parts of one drawing a little further apart (a title block under a schematic, a dimension line
    beside a board): merged when within ``_BRIDGE_GAP`` and no text line stands between them."""
    regs = _merge(regions, 0.0)
    changed = len(regs) <= _MAX_BRIDGE_REGIONS  # pathological pages: plain merging only
    while changed and len(regs) > 1:
        changed = False
        for i, a in enumerate(regs):
            for b in regs[i + 1 :]:
                if not (a.has_vector or b.has_vector) or gap(a.bbox, b.bbox) > _BRIDGE_GAP:
                    continue
                bridge = _bridge(a.bbox, b.bbox)
                if any(
                    _inter(ln.bbox, bridge) > 0
                    and inside_share(ln.bbox, a.bbox) < 0.5
                    and inside_share(ln.bbox, b.bbox) < 0.5
                    for ln in lines
                ):
                    continue
                _absorb(a, b)
                regs.remove(b)
                changed = True
                break
            if changed:
                break
    return _merge(regs, 0.0)


def _bridge(a: Box, b: Box) -> Box:
    """The gap between two boxes (the band between them where they face each other)."""
    x0, x1 = sorted((max(a[0], b[0]), min(a[2], b[2])))
    y0, y1 = sorted((max(a[1], b[1]), min(a[3], b[3])))
    return (x0, y0, x1, y1)


def _absorb(into: Region, r: Region) -> None:
    into.bbox = union(into.bbox, r.bbox)
    into.raster_digests += [d for d in r.raster_digests if d not in into.raster_digests]
    into.raster_area += r.raster_area
    dpis = [d for d in (into.native_dpi, r.native_dpi) if d]
    into.native_dpi = min(dpis) if dpis else None
    highs = [d for d in (into.max_native_dpi, r.max_native_dpi) if d]
    into.max_native_dpi = max(highs) if highs else None
    into.n_paths += r.n_paths
    into.axis_only = into.axis_only and r.axis_only
    into.frame_only = False  # parts of a larger drawing
    into.grid = into.grid or r.grid
    into.shape = hashlib.sha256((into.shape + r.shape).encode()).hexdigest()[:32] if r.shape else into.shape
    into.labels += r.labels
    into.grown = into.grown or r.grown


def _keep_region(
    page: pymupdf.Page, r: Region, others: list[Region], lines: list[TextLine], cfg: dict[str, Any]
) -> bool:
    """Drop page backgrounds, and vector-only regions that are tables or text boxes, not figures."""
    if r.has_raster:
        if r.has_vector or r.area_frac < _BACKGROUND_AREA:
            return True
        on_it = sum(len(ln.text) for ln in lines if not ln.suspect and inside_share(ln.bbox, r.bbox) > 0.5)
        return on_it < _BACKGROUND_TEXT_CHARS  # an image under a page of text is its background
    inside = [ln for ln in lines if inside_share(ln.bbox, r.bbox) > 0.6 and not ln.suspect]
    n_words = len(" ".join(ln.text for ln in inside).split())
    if r.axis_only and not inside and r.frame_only:
        return False  # an empty box or rule frame: decoration (or a table whose text is missing)
    text_box = r.frame_only and n_words >= 4  # a frame or a shading around text
    if not text_box and (not r.axis_only or (n_words < 4 and len(inside) < 3)):
        return True  # a drawing with curves or slants, or boxes and lines without much text
    # boxes/rules around text: a table, a code listing or a shaded note, unless captioned as a figure
    for g, i in _caption_candidates(r, lines, cfg, FIGURE_CAPTION_RE):
        if all(gap(lines[i].bbox, o.bbox) >= g for o in others if o is not r):
            return True  # the nearest region to a "Figure ..." caption is that figure
    if r.grid or text_box:
        return False  # a ruled table, or a frame/shading around text
    return _layout_says_picture(page, r, cfg)  # boxes around text, no grid: ask the layout model


def _layout_says_picture(page: pymupdf.Page, r: Region, cfg: dict[str, Any]) -> bool:
    if not cfg["extract"].get("layout_model", True):
        return False
    boxes = page_layout_boxes(page)
    for cls, b in boxes:
        if cls == "picture" and _inter(b, r.bbox) >= 0.5 * min(_area(b), _area(r.bbox)):
            return True
    return False


def page_layout_boxes(page: pymupdf.Page) -> list[tuple[str, Box]]:
    """pymupdf's layout model (pymupdf-layout, an ONNX GNN; ~0.3 s per page on 2 cores): class + box."""
    cached = getattr(page, "_manualrag_layout", None)
    if cached is not None:
        return cached
    out: list[tuple[str, Box]] = []
    try:
        load_layout_model()
        page.get_layout(return_raw=True)
        boxes: list[dict[str, Any]] = page.layout_information or []
        for b in boxes:
            out.append((str(b["class_name"]), as_box(b["group_bbox"])))
    except Exception as exc:  # noqa: BLE001 - optional signal; fall back to the heuristics
        log.debug("layout model unavailable on page %d: %s", page.number + 1, exc)
    page._manualrag_layout = out  # type: ignore[attr-defined]
    return out


def _grow_with_labels(r: Region, lines: list[TextLine]) -> None:
    """Take in the text that sits inside the drawing's area or right beside it (labels, callouts).

    Around a drawing: lines overlapping it, and short lines within about a line height of it. Around a
    plain image (a screenshot, a toolbox picture): only short lines at its left or right side, and
    only when there are at least two of them (a labelled picture, not a sentence that wraps past it).
    """
    prose = {ln.block for ln in lines if len(ln.text) > _LABEL_MAX_CHARS + 12 and not ln.vertical}
    sides_only = not r.has_vector
    box = r.bbox
    taken = 0
    for _ in range(3):
        grew = False
        for ln in lines:
            if ln.suspect or ln.furniture or ln.heading or ln.caption:
                continue
            if inside_share(ln.bbox, box) > 0.99:
                continue
            lb = ln.bbox
            height = max(4.0, (lb[2] - lb[0]) if ln.vertical else (lb[3] - lb[1]))
            short = len(ln.text) <= _LABEL_MAX_CHARS and ln.block not in prose
            cy = (lb[1] + lb[3]) / 2
            at_side = box[1] <= cy <= box[3] and (lb[2] <= box[0] + 1 or lb[0] >= box[2] - 1)
            if sides_only:
                ok = short and at_side and gap(lb, box) <= max(6.0, 1.5 * height)
            else:
                near = gap(lb, box) <= (max(6.0, 1.5 * height) if at_side else max(6.0, 0.8 * height))
                ok = inside_share(lb, box) > 0.5 or (near and short)
            if ok:
                box = union(box, lb)
                taken += 1
                grew = True
        if not grew:
            break
    if taken and (not sides_only or taken >= 2):
        r.bbox = box
        r.grown = True


def _classify(page: pymupdf.Page, r: Region, lines: list[TextLine], cfg: dict[str, Any]) -> str:
    """raster | vector | symbol, or "" to drop the region."""
    ex = cfg["extract"]
    if r.area_frac < ex["small_figure_area"] and _is_symbol(page, r, lines):
        return "symbol"
    if r.area_frac < ex["min_figure_area"]:
        return ""  # a speck
    if r.area_frac < ex["small_figure_area"]:
        # small and meaningless on this page: kept for now if raster (it may repeat: boilerplate),
        # dropped at document level when it does not
        return "raster" if r.has_raster and not r.has_vector else ("vector" if r.shape else "")
    if r.has_raster and (not r.has_vector and not r.grown or r.raster_area >= 0.5 * _area(r.bbox)):
        return "raster"
    return "vector"


def _is_symbol(page: pymupdf.Page, r: Region, lines: list[TextLine]) -> bool:
    size = max(r.bbox[2] - r.bbox[0], r.bbox[3] - r.bbox[1])
    reach = max(_WARNING_REACH, 1.5 * size)
    for ln in lines:
        if ln.suspect:
            continue
        g = gap(ln.bbox, r.bbox)
        if g <= reach and (WARNING_RE.search(ln.text) or WARNING_START_RE.match(ln.text)):
            return True
        same_row = min(ln.bbox[3], r.bbox[3]) - max(ln.bbox[1], r.bbox[1]) > 0
        if same_row and g <= _STEP_REACH and STEP_RE.match(ln.text):
            return True  # a pictogram in a numbered step (on the step's row)
    return _looks_like_warning_sign(page, r.bbox)


def _looks_like_warning_sign(page: pymupdf.Page, bbox: Box) -> bool:
    """A yellow/orange/red triangle: warm, saturated pixels whose rows widen from top to bottom."""
    w, h = bbox[2] - bbox[0], bbox[3] - bbox[1]
    if w <= 0 or h <= 0 or not 0.6 <= w / h <= 1.7:
        return False
    zoom = 32.0 / max(w, h)
    try:
        pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), clip=pymupdf.Rect(bbox), alpha=False)
    except Exception:  # noqa: BLE001
        return False
    if pix.n < 3 or pix.width < 8 or pix.height < 8:
        return False
    s, n, rows = pix.samples, pix.n, []
    warm_total = 0
    for y in range(pix.height):
        row = 0
        for x in range(pix.width):
            i = (y * pix.width + x) * n
            red, blue = s[i], s[i + 2]
            if red > 170 and blue < 110 and red - blue > 90:  # yellow, orange, red
                row += 1
        rows.append(row)
        warm_total += row
    share = warm_total / (pix.width * pix.height)
    if not 0.2 <= share <= 0.75:
        return False
    third = len(rows) // 3
    top, bottom = sum(rows[:third]), sum(rows[-third:])
    return bottom > 1.6 * max(1, top)


# ------------------------------------------------------------------------------------------ captions, labels
def mark_captions(lines: list[TextLine]) -> None:
    """Flag caption lines: "Figure 3: ...", "Fig. 4-1 ...", "Table 2. ...", as the first line of a short
    text block, the label followed by punctuation or the line short; a paragraph that starts with
    "Figure 1 shows ..." is prose, not a caption."""
    per_block: dict[int, list[TextLine]] = {}
    for ln in lines:
        per_block.setdefault(ln.block, []).append(ln)
    for block in per_block.values():
        text_len = sum(len(ln.text) for ln in block)
        if len(block) > 3 or text_len > 300:
            continue
        for ln in block:
            m = CAPTION_RE.match(ln.text)
            if m and not ln.suspect and (m.group(3).strip() or len(ln.text) <= 80):
                ln.caption = True
                break


def _caption_candidates(
    r: Region, lines: list[TextLine], cfg: dict[str, Any], pattern: re.Pattern[str] = CAPTION_RE
) -> list[tuple[float, int]]:
    """(distance, line index) of caption lines within reach of the region, nearest first."""
    reach = float(cfg["extract"]["caption_max_distance"])
    out = []
    for i, ln in enumerate(lines):
        if not ln.caption or not pattern.match(ln.text):
            continue
        g = gap(ln.bbox, r.bbox)
        if g > reach or inside_share(ln.bbox, r.bbox) > 0.5:
            continue
        if ln.vertical:
            aligned = min(ln.bbox[3], r.bbox[3]) - max(ln.bbox[1], r.bbox[1]) > 0
        else:
            cx = (ln.bbox[0] + ln.bbox[2]) / 2
            aligned = (
                r.bbox[0] - 0.25 * (r.bbox[2] - r.bbox[0]) <= cx <= r.bbox[2] + 0.25 * (r.bbox[2] - r.bbox[0])
            )
        if aligned:
            out.append((g, i))
    return sorted(out)


def caption_text(lines: list[TextLine], i: int) -> str:
    """The caption line plus the lines that continue it in the same text block (max ~200 chars)."""
    first = lines[i]
    parts = [first.text.strip()]
    for ln in lines[i + 1 :]:
        if ln.block != first.block or len(" ".join(parts)) > 200:
            break
        parts.append(ln.text.strip())
    return " ".join(p for p in parts if p)


def assign_captions(regions: list[Region], lines: list[TextLine], cfg: dict[str, Any]) -> set[int]:
    """Nearest caption per figure, each caption used once. Returns the caption line indexes used."""
    pairs = []
    small = cfg["extract"]["small_figure_area"]
    for ri, r in enumerate(regions):
        if r.area_frac < small and r.kind != "symbol":
            continue  # an icon that may yet be dropped must not take a figure's caption
        for g, li in _caption_candidates(r, lines, cfg):
            pairs.append((g, ri, li))
    used_r: set[int] = set()
    used_l: set[int] = set()
    for _, ri, li in sorted(pairs):
        if ri in used_r or li in used_l:
            continue
        regions[ri].caption = caption_text(lines, li)
        used_r.add(ri)
        used_l.add(li)
    return used_l


def next_page_caption(
    r: Region, page_rect: Box, lines: list[TextLine], next_lines: list[TextLine], used_next: set[int]
) -> str:
    """A figure at the bottom of a page whose caption starts the next page (nothing below it here)."""
    below = [ln for ln in lines if ln.bbox[1] >= r.bbox[3] - 1 and not ln.furniture and ln.text.strip()]
    if below or r.bbox[3] < page_rect[1] + 0.6 * (page_rect[3] - page_rect[1]):
        return ""
    for i, ln in enumerate(next_lines):
        if ln.furniture or not ln.text.strip():
            continue
        if i not in used_next and ln.caption:
            used_next.add(i)
            return caption_text(next_lines, i)
        return ""  # the next page starts with something else
    return ""


def line_rotation(direction: tuple[float, float]) -> int:
    """A text line's writing direction (MuPDF's ``dir``: cosine, -sine, y down) as the clockwise turn
    (0/90/180/270) that makes it read left to right: (0, -1) runs bottom to top, turned 90."""
    import math

    angle = math.degrees(math.atan2(-direction[1], direction[0]))
    return round(angle / 90.0) % 4 * 90


def text_rotation(lines: list[TextLine], bbox: Box) -> int:
    """The turn that makes a figure's labels upright: the direction of most of the characters of the
    visible lines inside it (0 when they run left to right, or when fewer than 60 % agree)."""
    chars: dict[int, int] = {}
    for ln in lines:
        if ln.suspect or inside_share(ln.bbox, bbox) < 0.5:
            continue
        n = len(_MEANINGFUL.findall(ln.text))
        chars[ln.rotation] = chars.get(ln.rotation, 0) + n
    total = sum(chars.values())
    if total < 4:
        return 0
    rotation, n = max(chars.items(), key=lambda kv: kv[1])
    return rotation if rotation and n >= 0.6 * total else 0


def words_inside(words: list[tuple[Any, ...]], bbox: Box, hidden: Sequence[Box] = ()) -> list[str]:
    """PDF words whose centre lies inside the box, in reading order (``page.get_text("words")``), except
    words mostly inside one of the ``hidden`` boxes (only the words inside the box are checked: a page's
    words times its hidden lines was most of the cost of rendering a figure on a busy page)."""
    out = []
    for w in words:
        cx, cy = (w[0] + w[2]) / 2, (w[1] + w[3]) / 2
        text = str(w[4]).strip()
        if bbox[0] <= cx <= bbox[2] and bbox[1] <= cy <= bbox[3] and _MEANINGFUL.search(text):
            if hidden and any(inside_share(as_box(w[:4]), hb) > 0.5 for hb in hidden):
                continue
            out.append(text)
    return out


def nearby_text(r: Region, lines: list[TextLine], limit: int = 300) -> str:
    """Text of the closest lines outside the figure (not captions, running headers or hidden text)."""
    cands = []
    for ln in lines:
        if ln.suspect or ln.furniture or not ln.text.strip() or inside_share(ln.bbox, r.bbox) > 0.5:
            continue
        if r.caption and ln.text.strip() and ln.text.strip() in r.caption:
            continue
        cands.append((gap(ln.bbox, r.bbox), ln.bbox[1], ln.text.strip()))
    out: list[str] = []
    total = 0
    for _, _, text in sorted(cands)[:12]:
        if total >= limit:
            break
        out.append(text)
        total += len(text) + 1
    return " ".join(out)[:limit]


# ------------------------------------------------------------------------------------------ document level
def assemble(analyses: list[PageAnalysis], cfg: dict[str, Any]) -> list[PlannedFigure]:
    """De-duplicate across pages and decide boilerplate: returns figures and boilerplate records."""
    ex = cfg["extract"]
    groups: dict[str, list[Region]] = {}
    for pa in analyses:
        for r in pa.regions:
            groups.setdefault(r.content_key(), []).append(r)
    planned: list[PlannedFigure] = []
    for regs in groups.values():
        first = regs[0]
        pages = sorted({r.page for r in regs})
        small = first.area_frac < ex["small_figure_area"]
        # a symbol where it mostly appears beside warning words (a logo near one WARNING stays a logo)
        symbol = 2 * sum(r.kind == "symbol" for r in regs) >= len(regs)
        repeated = len(pages) >= ex["boilerplate_min_pages"]
        if symbol:
            sym = next(r for r in regs if r.kind == "symbol")
            planned.append(PlannedFigure(sym, pages, "symbol", occurrences=regs))
        elif repeated and (small or _in_margin(regs, analyses)):
            kind = "raster" if first.has_raster else "vector"
            planned.append(PlannedFigure(first, pages, kind, boilerplate=True, occurrences=regs))
        elif small:
            continue  # a small image without meaning, not repeated enough to be boilerplate
        else:
            planned.append(PlannedFigure(first, pages, first.kind, occurrences=regs))
    planned.sort(key=lambda p: (p.pages[0], p.region.bbox[1], p.region.bbox[0]))
    return planned


def _in_margin(regs: list[Region], analyses: list[PageAnalysis]) -> bool:
    """Every occurrence sits in the top or bottom 12 % of its page (a letterhead or footer banner)."""
    rects = {pa.number: pa.rect for pa in analyses}
    for r in regs:
        pr = rects[r.page]
        h = pr[3] - pr[1]
        if not (r.bbox[3] <= pr[1] + 0.12 * h or r.bbox[1] >= pr[3] - 0.12 * h):
            return False
    return True


# ------------------------------------------------------------------------------------------ rendering
def render(
    page: pymupdf.Page, bbox: Box, dpi: float, max_pixels: int, pad: float = 2.0
) -> tuple[bytes, int, int, float]:
    """Render a page region to PNG: (png, width px, height px, effective dpi)."""
    clip = _clip(_grow(bbox, pad), as_box(page.rect))
    w_in = max(1e-3, (clip[2] - clip[0]) / 72.0)
    h_in = max(1e-3, (clip[3] - clip[1]) / 72.0)
    if w_in * dpi * h_in * dpi > max_pixels:
        dpi = (max_pixels / (w_in * h_in)) ** 0.5
    pix = page.get_pixmap(clip=pymupdf.Rect(clip), dpi=max(1, int(dpi)), alpha=False)
    return pix.tobytes("png"), pix.width, pix.height, pix.width / w_in


def turn_png(png: bytes, rotation: int) -> tuple[bytes, int, int]:
    """A PNG turned ``rotation`` degrees clockwise: (png, width, height)."""
    import io

    from PIL import Image

    from manualrag.indexer.ocr import turn

    with Image.open(io.BytesIO(png), formats=["PNG"]) as img:
        img.load()
        out = turn(img, rotation)
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue(), out.width, out.height
