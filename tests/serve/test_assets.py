"""manualrag.retriever.assets: only files the index names, for ids only; pages rendered within bounds."""

from __future__ import annotations

import io
import os
import shutil

import pytest
from PIL import Image

from manualrag.retriever.assets import (
    MAX_DPI,
    MIN_DPI,
    Assets,
    BadRequest,
    NotFound,
    page_lines,
    passage_boxes,
)
from tests.serve.conftest import CARD, HOSTILE_NAME, NOTES, PUMP


@pytest.fixture(scope="module")
def assets(serve_index):
    a = Assets.open(serve_index.index_dir)
    yield a
    a.close()


def _wiring(assets: Assets):
    figs = assets.manifest.figures_of_doc(PUMP)
    return next(f for f in figs if "wiring" in f.caption.lower())


def test_documents_listed_with_ids_and_types(assets):
    docs = {d.path: d for d in assets.documents()}
    assert set(docs) == {PUMP, CARD, NOTES, HOSTILE_NAME}
    assert docs[PUMP].file_type == "pdf" and docs[PUMP].pages == 8
    assert docs[CARD].file_type == "image" and docs[CARD].pages == 1
    assert docs[NOTES].file_type == "text"
    for d in docs.values():
        assert assets.document(d.doc_id) == d == assets.document(d.path)


@pytest.mark.parametrize(
    "ref",
    [
        "../lib/" + PUMP,
        "/etc/passwd",
        "..",
        "a/../../" + PUMP,
        "./" + PUMP,
        "lib\\..\\x",
        "0123456789abcdef",
        "",
    ],
)
def test_unknown_or_escaping_document_refs_are_not_found(assets, ref):
    with pytest.raises(NotFound):
        assets.document(ref)
    with pytest.raises(NotFound):
        assets.page_png(ref, 1)


def test_figure_crop_is_the_index_png(assets, serve_index):
    fig = _wiring(assets)
    path = assets.figure_crop(fig.figure_id)
    assert path.parent == serve_index.index_dir / "crops"
    png = assets.figure_png(fig.figure_id)
    assert png == path.read_bytes() and png.startswith(b"\x89PNG")
    for bad in ("nope", "../index.sqlite", fig.figure_id + "/../x", "/etc/passwd", fig.figure_id[:-1]):
        with pytest.raises(NotFound):
            assets.figure_crop(bad)


def test_pdf_page_render_bounds_and_cache(assets):
    doc = assets.document(PUMP)
    png = assets.page_png(doc.doc_id, 4, dpi=72)
    w, h = assets.page_size(PUMP, 4)
    with Image.open(io.BytesIO(png)) as im:
        assert abs(im.width - w) <= 1 and abs(im.height - h) <= 1  # 72 dpi: one pixel per point
    assert assets.page_png(PUMP, 4, dpi=72) is png  # cached
    with Image.open(io.BytesIO(assets.page_png(PUMP, 4, dpi=144))) as im:
        assert abs(im.width - 2 * w) <= 2
    for dpi in (MIN_DPI - 1, MAX_DPI + 1, "x"):
        with pytest.raises(BadRequest):
            assets.page_png(PUMP, 4, dpi=dpi)
    for page in (0, 9, -1, "x"):
        with pytest.raises(NotFound):
            assets.page_png(PUMP, page)


def test_figure_box_is_where_the_drawing_is(assets):
    fig = _wiring(assets)
    box = assets.hit_box(fig.figure_id)
    assert (box.kind, box.path, box.page, box.file_type) == ("image", PUMP, 4, "pdf")
    x0, y0, x1, y1 = box.bbox
    assert 0 <= x0 < x1 <= box.page_width and 0 <= y0 < y1 <= box.page_height
    with Image.open(io.BytesIO(assets.page_png(PUMP, 4, dpi=72))) as im:
        gray = im.convert("L")
        inside = gray.crop((int(x0), int(y0), int(x1), int(y1)))
        dark_inside = sum(inside.histogram()[:128]) / (inside.width * inside.height)
    assert dark_inside > 0.01  # the drawing's lines and labels are inside the box


def test_passage_box_and_unknown_hit(assets):
    pid = next(iter(assets.manifest.passages([f"{assets.document(PUMP).doc_id}:p2:0"])))
    box = assets.hit_box(pid)
    assert box.kind == "text" and box.page == 2 and len(box.bbox) == 4
    for bad in ("nope", "", "x" * 500):
        with pytest.raises(NotFound):
            assets.hit_box(bad)


def test_passage_boxes_skip_the_figure_between_its_blocks(assets):
    """The '3.1 Fuses' passage (page 4): its blocks sit above and below the wiring diagram; its boxes are
    its text's runs of lines, none on the diagram; a figure's boxes are its bbox."""
    fig = _wiring(assets)
    fbox = assets.hit_box(fig.figure_id)
    assert fbox.boxes == [fbox.bbox]
    doc_id = assets.document(PUMP).doc_id
    psg = next(p for p in assets.manifest.passages_on_page(PUMP, 4) if p.text.startswith("3.1 Fuses"))
    box = assets.hit_box(psg.passage_id)
    assert box.doc_id == doc_id and box.bbox == list(psg.bbox) and len(box.boxes) >= 2
    fx0, fy0, fx1, fy1 = fbox.bbox
    for x0, y0, x1, y1 in box.boxes:
        overlap = max(min(x1, fx1) - max(x0, fx0), 0) * max(min(y1, fy1) - max(y0, fy0), 0)
        assert overlap < 0.02 * (fx1 - fx0) * (fy1 - fy0)
    # a passage whose text the page does not hold (an OCR'd scan, a changed text layer): the stored box
    assert passage_boxes([], box.bbox, psg.text) == []
    assert passage_boxes([], box.bbox, "") == []


def test_image_document_passage_boxes_are_its_bbox(assets):
    passages = assets.manifest.passages_on_page(CARD, 1)
    assert passages
    box = assets.hit_box(passages[0].passage_id)
    assert box.file_type == "image" and box.boxes == [box.bbox]


def test_passage_boxes_on_a_rotated_page(tmp_path):
    """A page stored portrait with /Rotate 90, displayed landscape: the boxes are in the indexer's units (the
    page as displayed), around the two paragraphs, not on the drawing between them."""
    import pymupdf

    from manualrag.config import load_config
    from manualrag.indexer.chunk import make_passages
    from manualrag.indexer.extract import extract_file

    land = pymupdf.open()
    pg = land.new_page(width=842, height=595)
    pg.insert_text((60, 60), "2 Wiring", fontsize=16)
    text = [
        (90, "Connect the supply cable to the terminal block X1 and tighten the screws to the torque"),
        (104, "given in the table; the protective earth goes to the stud marked PE beside the block."),
        (400, "Figure 3: Terminal block wiring"),
        (425, "Route the sensor cable separately from the mains cable and keep the two apart inside"),
        (439, "the housing, so that the sensor signal is not disturbed by the motor current."),
    ]
    for y, line in text:
        pg.insert_text((60, y), line, fontsize=11)
    shape = pg.new_shape()
    for k in range(8):
        shape.draw_rect(pymupdf.Rect(120 + k * 70, 160, 170 + k * 70, 330))
        shape.draw_line((145 + k * 70, 330), (145 + k * 70, 380))
    shape.finish(color=(0, 0, 0), width=1.2)
    shape.commit()
    for k in range(8):
        pg.insert_text((130 + k * 70, 250), f"K{k}", fontsize=8)
    out = pymupdf.open()
    page = out.new_page(width=595, height=842)
    page.set_rotation(90)
    src = pymupdf.open("pdf", land.tobytes())
    page.show_pdf_page(pymupdf.Rect(0, 0, 842, 595) * page.derotation_matrix, src, 0, rotate=90)
    path = tmp_path / "rotated.pdf"
    out.save(path)

    doc = extract_file(path, path.name, load_config(None, {}))
    (psg,) = [p for p in make_passages(doc) if "Route the sensor" in p.text]
    (fig,) = doc.figures
    with pymupdf.open(path) as pdf:
        boxes = passage_boxes(page_lines(pdf.load_page(0)), list(psg.bbox), psg.text)
    assert len(boxes) == 2
    top, bottom = sorted(boxes, key=lambda b: b[1])
    assert top[3] < fig.bbox[1] < fig.bbox[3] < bottom[1]  # above and below the drawing, landscape units
    assert all(b[2] <= 842 and b[3] <= 595 for b in boxes)


def test_image_document_page_is_the_image(assets, serve_index):
    png = assets.page_png(CARD, 1)
    with Image.open(io.BytesIO(png)) as im, Image.open(serve_index.library / CARD) as orig:
        assert im.size == orig.size
    assert assets.page_size(CARD, 1) == tuple(float(v) for v in orig.size)
    with pytest.raises(NotFound):
        assets.page_png(CARD, 2)


def test_text_document_has_no_page_image(assets):
    with pytest.raises(NotFound, match="no page images"):
        assets.page_png(NOTES, 1)


def test_a_moved_library_says_what_to_do(serve_index, tmp_path):
    """A user who moved the library after indexing asked for a page and got "the library folder of this
    index is not available": true, but no way out. The answer says it moved and to index it again there
    (still without naming a server path)."""
    with Assets.open(serve_index.index_dir, library=tmp_path / "moved-away") as a:
        with pytest.raises(NotFound, match="has moved or is gone: index the library again") as err:
            a.page_png(PUMP, 1)
        assert str(tmp_path) not in str(err.value)
        assert a.figure_png(_wiring(a).figure_id).startswith(b"\x89PNG")  # figures still served


def test_links_out_of_the_library_and_vanished_files(serve_index, tmp_path):
    """The same index, read with a library folder where the PDF is a link to a file outside it, the image
    is a link inside the library (allowed), and a crop is a link: only the inside link is served."""
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(serve_index.library / PUMP, outside / PUMP)
    lib = tmp_path / "lib"
    (lib / "real").mkdir(parents=True)
    os.symlink(outside / PUMP, lib / PUMP)
    shutil.copy(serve_index.library / CARD, lib / "real" / CARD)
    os.symlink(lib / "real" / CARD, lib / CARD)
    idx = tmp_path / "index"
    shutil.copytree(serve_index.index_dir, idx)
    with Assets.open(idx, library=lib) as a:
        with pytest.raises(NotFound, match="outside the library"):
            a.page_png(PUMP, 1)
        assert a.page_png(CARD, 1).startswith(b"\x89PNG")
        with pytest.raises(NotFound, match=f"the file '{NOTES}' is gone from the library"):
            a.source_file(NOTES)  # its path, not an id the user never saw
        fig = _wiring(a)
        crop = a.figure_crop(fig.figure_id)
        crop.unlink()
        with pytest.raises(NotFound):
            a.figure_crop(fig.figure_id)
        os.symlink(outside / PUMP, crop)
        with pytest.raises(NotFound):
            a.figure_png(fig.figure_id)
