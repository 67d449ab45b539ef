"""Sideways content reads as well as upright content (issue 15): scans fed in turned 90/180/270 degrees, a
wiring diagram printed landscape on a portrait page (vector drawing + PDF text), a /Rotate 90 page, and a
mixed page (upright prose around a sideways diagram).

All of it is the sample manual's real wiring diagram (data/manuals/pump-controller-manual.pdf, page 4),
rendered or re-drawn by PyMuPDF (tests/helpers_pdf.py). The reference is what OCR reads from the same
picture upright: a turned page must give back at least 80 % of those words, at the right place on the page.
Real tesseract throughout; each document is extracted once per module.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from manualrag.cli import main
from manualrag.config import load_config
from manualrag.indexer.extract import extract_file
from manualrag.indexer.ocr import OcrEngine
from manualrag.models import Document
from tests import helpers_pdf as h

pytestmark = pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract is not installed")

ROTATIONS = (90, 180, 270)
DIAGRAM_LABELS = {"MAINS", "230V", "X1", "X2", "X3", "K1", "PTC", "GNYE", "BK/WH"}  # PDF text of the drawing


def _words(text: str) -> set[str]:
    """Words of two or more letters/digits, case-folded."""
    return {w for w in re.findall(r"[a-z0-9/]+", text.lower()) if sum(c.isalnum() for c in w) >= 2}


@pytest.fixture(scope="module")
def cfg() -> dict:
    return load_config(environ={})


@pytest.fixture(scope="module")
def ocr(cfg: dict):
    # the session's OCR cache (tests/conftest.py): `inspect` and indexing below find these reads there
    cache = os.environ.get("MANUALRAG_OCR__CACHE")
    engine = OcrEngine(cfg, cache_path=Path(cache) if cache else None)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory, cfg: dict, ocr: OcrEngine) -> dict[int, Document]:
    """The turned scan page extracted at each rotation (0 is the upright reference)."""
    base = tmp_path_factory.mktemp("scans")
    out = {}
    for r in (0, *ROTATIONS):
        path = base / f"scan-{r}.pdf"
        path.write_bytes(h.turned_scan_pdf_bytes(r))
        out[r] = extract_file(path, path.name, cfg, ocr=ocr)
    return out


@pytest.fixture(scope="module")
def vector(tmp_path_factory: pytest.TempPathFactory, cfg: dict, ocr: OcrEngine) -> tuple[Document, int]:
    """The sideways vector pages, and how many orientation checks (OSD) extracting them ran."""
    path = h.sideways_vector_pdf(tmp_path_factory.mktemp("vector") / "sideways.pdf")
    before = ocr.osd_calls
    doc = extract_file(path, path.name, cfg, ocr=ocr)
    return doc, ocr.osd_calls - before


def _ocr_text(doc: Document) -> str:
    return "\n".join(b.text for b in doc.blocks if b.ocr)


def _page_point(x: float, y: float, rotation: int, size: tuple[float, float]) -> tuple[float, float]:
    """A point of the upright scan page, where it lies on the page turned ``rotation`` degrees (the picture
    turned counter-clockwise: a reader turns the page clockwise to read it). ``size``: upright picture."""
    m = h.SCAN_MARGIN
    u, v = x - m, y - m
    w, hh = size
    turned = {0: (u, v), 90: (v, w - u), 180: (w - u, hh - v), 270: (hh - v, u)}[rotation]
    return turned[0] + m, turned[1] + m


# ------------------------------------------------------------------------------------------ turned scans
def test_upright_reference_reads_the_diagram(scans: dict[int, Document]) -> None:
    doc = scans[0]
    assert doc.pages[0].ocr and doc.figures[0].kind == "scan" and doc.figures[0].rotation == 0
    words = _words(_ocr_text(doc))
    assert len(words) >= 20, words
    assert {"mains", "230v", "k1", "relay", "coil", "ptc"} <= words


@pytest.mark.parametrize("rotation", ROTATIONS)
def test_turned_scan_reads_as_well_as_upright(scans: dict[int, Document], rotation: int) -> None:
    want = _words(_ocr_text(scans[0]))
    doc = scans[rotation]
    assert doc.pages[0].ocr and not doc.pages[0].text_layer
    got = _words(_ocr_text(doc))
    share = len(want & got) / len(want)
    assert share >= 0.8, f"{rotation}: read {share:.0%} of the upright words; missing {sorted(want - got)}"
    fig = doc.figures[0]
    assert fig.kind == "scan" and fig.rotation == rotation
    assert _words(fig.ocr_text) >= {"k1", "relay", "coil"}
    # stored upright: the landscape diagram is wider than tall whatever way the page was turned
    assert fig.width > fig.height and (fig.width, fig.height) == (
        scans[0].figures[0].width,
        scans[0].figures[0].height,
    )
    assert fig.bbox == (0.0, 0.0, doc.pages[0].width, doc.pages[0].height), "the bbox stays the page's"


@pytest.mark.parametrize("rotation", ROTATIONS)
def test_turned_scan_boxes_map_back_to_the_page(scans: dict[int, Document], rotation: int) -> None:
    """Each OCR block lies where that text is on the turned page (the upright block's place, turned)."""
    up = scans[0]
    size = (up.pages[0].width - 2 * h.SCAN_MARGIN, up.pages[0].height - 2 * h.SCAN_MARGIN)
    turned = {b.text: b.bbox for b in scans[rotation].blocks if b.ocr}
    checked = 0
    for block in up.blocks:
        box = turned.get(block.text)
        if box is None or len(block.text) < 3:
            continue
        cx, cy = (block.bbox[0] + block.bbox[2]) / 2, (block.bbox[1] + block.bbox[3]) / 2
        ex, ey = _page_point(cx, cy, rotation, size)
        gx, gy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        assert abs(gx - ex) <= 4 and abs(gy - ey) <= 4, (block.text, (gx, gy), (ex, ey))
        tall = (box[3] - box[1]) > (box[2] - box[0])
        assert tall == (rotation in (90, 270)) or len(block.text) < 4, (block.text, box)
        checked += 1
    assert checked >= 6, f"only {checked} blocks read alike upright and turned"


@pytest.mark.skipif(not h.CORPUS2_SCAN.exists(), reason="../shared/corpus2 not found")
def test_real_scanned_page_turned_270_reads_as_upright(tmp_path: Path, cfg: dict, ocr: OcrEngine) -> None:
    """A real scanned page (corpus2's Pcb glossary, prose + a figure) fed in turned: OSD is sure here."""
    docs = {}
    for r in (0, 270):
        path = tmp_path / f"glossary-{r}.pdf"
        path.write_bytes(h.turned_corpus2_scan_bytes(r))
        docs[r] = extract_file(path, path.name, cfg, ocr=ocr)
    want, got = _words(_ocr_text(docs[0])), _words(_ocr_text(docs[270]))
    assert {"glossary", "footprint", "silkscreen"} <= want and len(want) >= 40
    assert len(want & got) >= 0.8 * len(want), sorted(want - got)
    fig = docs[270].figures[0]
    assert fig.rotation == 270 and fig.width > fig.height  # the top of a portrait page: wide once upright
    page = docs[270].pages[0]
    for b in docs[270].blocks:  # boxes on the turned page, lines running down it
        assert 0 <= b.bbox[0] < b.bbox[2] <= page.width + 1 and 0 <= b.bbox[1] < b.bbox[3] <= page.height + 1


def test_stored_crop_of_a_turned_scan_is_upright(scans: dict[int, Document], cfg: dict) -> None:
    """OCR of the stored crop (orientation handling off) reads the labels: the pixels are upright."""
    plain = OcrEngine({**cfg, "ocr": {**cfg["ocr"], "orientation": False}})
    try:
        fig = scans[90].figures[0]
        res = plain.ocr([("crop-90", fig.png)])["crop-90"]
    finally:
        plain.close()
    want = _words(scans[0].figures[0].ocr_text)
    assert len(want & _words(res.text)) >= 0.8 * len(want), res.text


# ------------------------------------------------------------------------------------------ vector drawings
def test_sideways_vector_diagram_is_stored_upright(vector: tuple[Document, int], ocr: OcrEngine) -> None:
    doc, osd_runs = vector
    figs = {f.pages[0]: f for f in doc.figures if f.kind == "vector"}
    assert [(f.kind, f.pages) for f in doc.figures if f.kind != "vector"] == [("raster", [4])]
    assert set(figs) == {1, 2, 3}, [(f.kind, f.pages) for f in doc.figures]
    assert [figs[p].rotation for p in (1, 2, 3)] == [90, 270, 0]
    for p, fig in figs.items():
        assert DIAGRAM_LABELS <= set(fig.labels), (p, fig.labels)
        assert fig.width > fig.height, f"page {p}: the crop is not landscape (upright)"
    # the bbox stays in page coordinates (as displayed): tall on the portrait pages, wide on the /Rotate one
    page = {pi.number: pi for pi in doc.pages}
    for p, fig in figs.items():
        x0, y0, x1, y1 = fig.bbox
        assert 0 <= x0 < x1 <= page[p].width and 0 <= y0 < y1 <= page[p].height, (p, fig.bbox)
        assert ((y1 - y0) > (x1 - x0)) == (p in (1, 2)), (p, fig.bbox)
    assert osd_runs <= 1, "orientation checks only for the raster picture, none for the drawings"
    # the stored crop reads upright
    res = ocr.ocr([("vector-crop-p1", figs[1].png)])["vector-crop-p1"]
    assert res.rotation == 0 and {"mains", "k1", "relay", "coil"} <= _words(res.text), res.text


def test_turned_raster_picture_is_read_and_stored_upright(
    vector: tuple[Document, int], scans: dict[int, Document]
) -> None:
    doc, _ = vector
    fig = next(f for f in doc.figures if f.kind == "raster")
    assert fig.rotation == 90 and fig.width > fig.height
    want = _words(scans[0].figures[0].ocr_text)
    got = _words(fig.ocr_text)
    assert len(want & got) >= 0.8 * len(want), sorted(want - got)
    assert not any(b.ocr for b in doc.blocks), "a figure's OCR stays with the figure"


def test_mixed_page_keeps_upright_prose(vector: tuple[Document, int]) -> None:
    doc, _ = vector
    prose = [b for b in doc.blocks if b.page == 1]
    text = " ".join(b.text for b in prose)
    assert "all-pole isolator" in text and "separate glands" in text
    assert not any(b.ocr for b in prose)
    assert not any(lbl in text.split() for lbl in ("MAINS", "PTC", "GNYE")), "labels stay with the figure"


def test_rotate_page_is_read_as_displayed(vector: tuple[Document, int]) -> None:
    doc, _ = vector
    page = next(p for p in doc.pages if p.number == 3)
    assert page.width > page.height, "a /Rotate 90 portrait page displays landscape"
    fig = next(f for f in doc.figures if f.pages == [3])
    assert fig.rotation == 0 and fig.width > fig.height


# ------------------------------------------------------------------------------------------ CLI
def test_inspect_lists_the_labels_of_a_turned_scan(tmp_path: Path) -> None:
    path = tmp_path / "turned.pdf"
    path.write_bytes(h.turned_scan_pdf_bytes(90))
    res = CliRunner().invoke(main, ["inspect", str(path)])
    assert res.exit_code == 0, res.output
    assert {"mains", "230v", "k1", "relay", "coil", "ptc"} <= _words(res.output), res.output
    assert "rotated 90" in res.output


# ------------------------------------------------------------------------------------------ index + query
@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory, tiny_clip_dir: Path, scans, vector) -> tuple[Path, Path]:
    """The scan turned 270 degrees, the sideways vector pages and a manual whose own wiring diagram also has
    a K1, indexed with the tiny CLIP (OCR comes from the session cache the fixtures above filled)."""
    from tests import rel_helpers as rh

    base = tmp_path_factory.mktemp("sideways-index")
    lib = base / "lib"
    lib.mkdir()
    (lib / "scan-270.pdf").write_bytes(h.turned_scan_pdf_bytes(270))
    h.sideways_vector_pdf(lib / "sideways.pdf")
    (lib / "good.pdf").write_bytes(rh.versioned_pdf("good", pages=2))
    cfg = rh.write_cfg(base / "cfg.yaml", model=str(tiny_clip_dir))
    idx = base / "index"
    rc, summary, out = rh.cli(*rh.index_args(cfg, lib, idx, dense=True))
    assert rc == 0 and sorted(summary["indexed"]) == ["good.pdf", "scan-270.pdf", "sideways.pdf"], out
    return idx, cfg


def _query(index: tuple[Path, Path], text: str, *extra: str) -> list[dict]:
    from tests import rel_helpers as rh

    idx, cfg = index
    rc, hits, out = rh.cli("--config", str(cfg), "query", text, "--index-dir", str(idx), "--json", *extra)
    assert rc == 0, out
    return hits  # type: ignore[return-value]


def test_label_query_finds_the_sideways_pages_first(index: tuple[Path, Path]) -> None:
    hits = _query(index, "K1 relay 24 V DC coil")
    assert hits[0]["path"] in ("scan-270.pdf", "sideways.pdf"), [(x["path"], x["kind"]) for x in hits[:3]]
    scan = _query(index, "K1 relay 24 V DC coil", "--source", "scan-270.pdf")
    assert scan[0]["page"] == 1
    fig = next(x for x in scan if x["kind"] == "image")
    assert fig["figure_kind"] == "scan" and fig["rotation"] == 270
    # the bbox stays the page's (portrait: the landscape diagram was turned onto it)
    x0, y0, x1, y1 = fig["bbox"]
    assert x0 == y0 == 0 and y1 > x1
    vec = _query(index, "MAINS 230V GNYE PTC", "--source", "sideways.pdf", "--channels", "lexical")
    assert vec[0]["kind"] == "image" and vec[0]["figure_kind"] == "vector"
    rotations = {x["page"]: x["rotation"] for x in vec if x["kind"] == "image"}
    assert rotations == {1: 90, 2: 270, 3: 0, 4: 90}, rotations  # 4: the raster picture (OCR)
