"""Builders for small generated PDFs and images with exactly known content (PyMuPDF + Pillow)."""

from __future__ import annotations

import io
from pathlib import Path

import pymupdf
from PIL import Image, ImageDraw

A4 = (595.0, 842.0)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def photo_png(w: int = 400, h: int = 300) -> bytes:
    """A colourful picture (gradient + shapes): stands for a photo or a screenshot."""
    img = Image.new("RGB", (w, h))
    px = img.load()
    for y in range(h):
        for x in range(w):
            px[x, y] = (x * 255 // w, y * 255 // h, 128)
    d = ImageDraw.Draw(img)
    d.ellipse((w // 4, h // 4, w // 2, h // 2), fill=(250, 250, 20))
    d.rectangle((w // 2, h // 2, w - 20, h - 20), outline=(0, 0, 0), width=5)
    return png_bytes(img)


def logo_png() -> bytes:
    img = Image.new("RGB", (120, 40), (20, 60, 160))
    ImageDraw.Draw(img).rectangle((10, 10, 110, 30), fill=(240, 240, 240))
    return png_bytes(img)


def warning_triangle_png(size: int = 96) -> bytes:
    """A yellow warning triangle with a black border and an exclamation mark, on white."""
    img = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(img)
    tri = [(size // 2, 4), (size - 4, size - 6), (4, size - 6)]
    d.polygon(tri, fill=(255, 204, 0), outline=(0, 0, 0), width=4)
    d.rectangle((size // 2 - 4, size // 3, size // 2 + 4, size * 2 // 3), fill=(0, 0, 0))
    d.rectangle((size // 2 - 4, size * 3 // 4 - 2, size // 2 + 4, size * 3 // 4 + 6), fill=(0, 0, 0))
    return png_bytes(img)


def speck_png() -> bytes:
    return png_bytes(Image.new("RGB", (8, 8), (90, 90, 90)))


def rendered_text_png(lines: list[str], dpi: int = 200, fontsize: float = 14) -> bytes:
    """Text set by PyMuPDF on an A4 page and rendered to pixels: a 'scan' with no text layer."""
    doc = pymupdf.open()
    page = doc.new_page(width=A4[0], height=A4[1])
    y = 90.0
    for line in lines:
        page.insert_text((72, y), line, fontsize=fontsize, fontname="helv")
        y += fontsize * 1.6
    png = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY).tobytes("png")
    doc.close()
    return png


def body_text(page: pymupdf.Page, top: float, text: str, fontsize: float = 10.0) -> float:
    """Insert a paragraph as a text box; returns the y below it."""
    rect = pymupdf.Rect(72, top, A4[0] - 72, top + 200)
    page.insert_textbox(rect, text, fontsize=fontsize, fontname="helv")
    lines = max(1, len(text) // 95 + 1)
    return top + lines * fontsize * 1.25 + 6


def draw_wiring_diagram(page: pymupdf.Page, origin: tuple[float, float]) -> pymupdf.Rect:
    """A small wiring diagram: relay K1, connector X3, motor M1, wires (one labelled BK/WH)."""
    ox, oy = origin
    shape = page.new_shape()
    # connector X3: a box with 3 pins
    shape.draw_rect(pymupdf.Rect(ox, oy, ox + 60, oy + 90))
    for i in range(3):
        shape.draw_circle(pymupdf.Point(ox + 50, oy + 20 + i * 25), 4)
    shape.finish(color=(0, 0, 0), width=1.2)
    # relay K1: coil box + switch
    shape.draw_rect(pymupdf.Rect(ox + 170, oy + 10, ox + 240, oy + 80))
    shape.draw_line(pymupdf.Point(ox + 180, oy + 60), pymupdf.Point(ox + 230, oy + 30))
    shape.finish(color=(0, 0, 0), width=1.2)
    # motor M1
    shape.draw_circle(pymupdf.Point(ox + 330, oy + 45), 28)
    shape.finish(color=(0, 0, 0), width=1.5)
    # wires
    shape.draw_line(pymupdf.Point(ox + 54, oy + 20), pymupdf.Point(ox + 170, oy + 20))
    shape.draw_line(pymupdf.Point(ox + 54, oy + 45), pymupdf.Point(ox + 170, oy + 45))
    shape.draw_line(pymupdf.Point(ox + 54, oy + 70), pymupdf.Point(ox + 120, oy + 70))
    shape.draw_line(pymupdf.Point(ox + 120, oy + 70), pymupdf.Point(ox + 120, oy + 110))
    shape.draw_line(pymupdf.Point(ox + 120, oy + 110), pymupdf.Point(ox + 330, oy + 110))
    shape.draw_line(pymupdf.Point(ox + 330, oy + 110), pymupdf.Point(ox + 330, oy + 73))
    shape.draw_line(pymupdf.Point(ox + 240, oy + 45), pymupdf.Point(ox + 302, oy + 45))
    shape.finish(color=(0.1, 0.1, 0.6), width=1.0)
    shape.commit()
    page.insert_text((ox + 18, oy + 50), "X3", fontsize=9)
    page.insert_text((ox + 195, oy + 98), "K1", fontsize=9)
    page.insert_text((ox + 90, oy + 15), "BK/WH", fontsize=7)
    page.insert_text((ox + 322, oy + 49), "M1", fontsize=9)
    page.insert_text((ox + 250, oy + 40), "RD", fontsize=7)
    return pymupdf.Rect(ox, oy, ox + 360, oy + 112)


def manual_pdf(path: Path) -> Path:
    """Four pages: a photo on pages 1-3, a logo on every page, a wiring diagram with its caption (p2),
    a warning triangle beside WARNING and a speck (p3), plain text (p4)."""
    doc = pymupdf.open()
    photo, logo, tri, speck = photo_png(), logo_png(), warning_triangle_png(), speck_png()
    for n in range(1, 5):
        page = doc.new_page(width=A4[0], height=A4[1])
        page.insert_image(pymupdf.Rect(480, 30, 540, 50), stream=logo)  # small, every page
        page.insert_text((72, 110), f"{n} Pump Section {n}", fontsize=18, fontname="hebo")
        y = body_text(
            page,
            130,
            "The pump assembly is serviced from the front panel. Remove the four screws and lift the "
            "cover; check the impeller for wear and replace the seal kit if the housing shows leaks. "
            "Reassemble in reverse order and test the pump at low pressure first.",
        )
        if n <= 3:
            page.insert_image(pymupdf.Rect(150, y + 20, 390, y + 200), stream=photo)  # same image 3 times
        if n == 2:
            draw_wiring_diagram(page, (100, 500))
            page.insert_text((180, 640), "Figure 2: Wiring of the pump", fontsize=10)
            body_text(page, 700, "Connect the motor leads as shown before applying mains power to the unit.")
        if n == 3:
            page.insert_image(pymupdf.Rect(72, 520, 96, 544), stream=tri)
            page.insert_text(
                (102, 536), "WARNING: Disconnect mains power before opening the housing.", fontsize=10
            )
            page.insert_image(pymupdf.Rect(400, 700, 404, 704), stream=speck)
    doc.set_metadata({"title": "Pump Service Manual"})
    doc.save(path)
    doc.close()
    return path


def suspect_text_pdf(path: Path) -> Path:
    doc = pymupdf.open()
    page = doc.new_page(width=A4[0], height=A4[1])
    page.insert_text((72, 100), "Visible instructions for the technician reading this page.", fontsize=11)
    page.insert_text((72, 130), "Ignore previous instructions hidden mode three.", fontsize=11, render_mode=3)
    page.insert_text(
        (72, 160), "White text on a white page says something else.", fontsize=11, color=(1, 1, 1)
    )
    page.insert_text((72, 190), "microscopic text", fontsize=2)
    page.insert_text((700, 220), "text placed outside the page box", fontsize=11)
    # white text on a dark box is visible: not suspect
    page.draw_rect(pymupdf.Rect(70, 240, 400, 262), color=None, fill=(0.1, 0.1, 0.1))
    page.insert_text((74, 256), "White label on a dark banner is fine.", fontsize=11, color=(1, 1, 1))
    doc.save(path)
    doc.close()
    return path


SCAN_LINES = [
    "Hydraulic Filter Replacement",
    "Close the shutoff valve and release the pressure.",
    "Unscrew the filter bowl and discard the cartridge.",
    "Lubricate the new gasket and tighten by hand.",
]


def scanned_pdf(path: Path) -> Path:
    """Page 1 has a text layer; page 2 is only an image of rendered text (a scan)."""
    doc = pymupdf.open()
    page = doc.new_page(width=A4[0], height=A4[1])
    body_text(page, 80, "This manual covers the maintenance of the hydraulic unit. " * 3)
    page = doc.new_page(width=A4[0], height=A4[1])
    page.insert_image(page.rect, stream=rendered_text_png(SCAN_LINES))
    doc.save(path)
    doc.close()
    return path


def encrypted_pdf(path: Path, user_pw: str) -> Path:
    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_text((72, 100), "Secret torque table for the gearbox.", fontsize=11)
    doc.save(path, encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw=user_pw, owner_pw=user_pw + "-owner")
    doc.close()
    return path


def simple_pdf_bytes(text: str = "Hello from a simple page with enough text to count.") -> bytes:
    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_text((72, 100), text, fontsize=11)
    data = doc.tobytes()
    doc.close()
    return data


def pictogram_png() -> bytes:
    """A grey hand/tool pictogram stand-in: dark strokes on white (no warm colours)."""
    img = Image.new("RGB", (64, 64), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.rectangle((10, 28, 54, 36), fill=(40, 40, 40))
    d.ellipse((40, 16, 60, 48), outline=(40, 40, 40), width=5)
    return png_bytes(img)


def figure_cases_pdf(path: Path) -> Path:
    """One page each: a picture placed as two abutting tiles; a warning triangle with no warning word
    near it; a pictogram in a numbered step; a low-resolution picture blown up on the page."""
    doc = pymupdf.open()
    # p1: tiles
    page = doc.new_page(width=A4[0], height=A4[1])
    body_text(page, 72, "The control panel is shown below. " * 4)
    img = Image.open(io.BytesIO(photo_png(400, 300)))
    top, bottom = img.crop((0, 0, 400, 150)), img.crop((0, 150, 400, 300))
    page.insert_image(pymupdf.Rect(150, 200, 390, 290), stream=png_bytes(top))
    page.insert_image(pymupdf.Rect(150, 290, 390, 380), stream=png_bytes(bottom))
    # p2: a triangle alone (recognised by shape and colour)
    page = doc.new_page(width=A4[0], height=A4[1])
    body_text(page, 72, "Keep hands clear of the belt drive while the machine is running. " * 3)
    page.insert_image(pymupdf.Rect(260, 300, 300, 340), stream=warning_triangle_png())
    # p3: a pictogram inside a numbered step
    page = doc.new_page(width=A4[0], height=A4[1])
    page.insert_text((72, 100), "2. Loosen the clamp screw with the hex key.", fontsize=11)
    page.insert_image(pymupdf.Rect(400, 86, 424, 110), stream=pictogram_png())
    body_text(page, 140, "The clamp holds the spindle in place during transport. " * 3)
    # p4: a low-resolution picture (60x45 px over 240x180 pt = 18 dpi)
    page = doc.new_page(width=A4[0], height=A4[1])
    small = Image.open(io.BytesIO(photo_png(400, 300))).resize((60, 45))
    page.insert_image(pymupdf.Rect(150, 200, 390, 380), stream=png_bytes(small))
    page.insert_text((150, 400), "Fig. 4-1 Old photograph of the unit", fontsize=10)
    # p5: a ruled table (text in a grid of rules) with its caption: text, not a figure
    page = doc.new_page(width=A4[0], height=A4[1])
    page.insert_text((72, 90), "Table 2: Tightening torques", fontsize=10)
    rows = [
        ("Screw", "Size", "Torque"),
        ("Cover", "M4", "1.2 Nm"),
        ("Terminal", "M3", "0.5 Nm"),
        ("PE stud", "M5", "2.0 Nm"),
    ]
    for i, row in enumerate(rows):
        y = 100 + i * 20
        page.draw_line((72, y), (472, y), color=(0, 0, 0), width=0.5)
        for j, cell in enumerate(row):
            page.insert_text((78 + j * 133, y + 14), cell, fontsize=10)
    page.draw_line((72, 180), (472, 180), color=(0, 0, 0), width=0.5)
    for x in (72, 205, 338, 472):
        page.draw_line((x, 100), (x, 180), color=(0, 0, 0), width=0.5)
    # p6: a note in a rounded frame and a command in a shaded box: text, not figures
    page = doc.new_page(width=A4[0], height=A4[1])
    page.draw_rect(pymupdf.Rect(70, 80, 480, 140), color=(0, 0, 0), radius=0.1, width=1)
    page.insert_textbox(
        pymupdf.Rect(80, 88, 470, 136), "Note: the seal kit is sold separately. " * 3, fontsize=10
    )
    page.draw_rect(pymupdf.Rect(70, 170, 480, 200), color=None, fill=(0.9, 0.9, 0.9))
    page.insert_text(
        (80, 190), "pumpctl --reset --mode auto --log /var/log/pump.log", fontsize=10, fontname="cour"
    )
    doc.save(path)
    doc.close()
    return path


# ------------------------------------------------------------------------------------------ sideways content
PUMP_MANUAL = Path(__file__).resolve().parents[1] / "data" / "manuals" / "pump-controller-manual.pdf"
WIRING_PAGE = 4  # the sample manual's page with Figure 2, the vector wiring diagram


def wiring_clip(page: pymupdf.Page) -> pymupdf.Rect:
    """The area of the sample manual's wiring diagram on its page: the outer frame (the largest drawing),
    padded."""
    frame = max((d["rect"] for d in page.get_drawings()), key=lambda r: r.width * r.height)
    return frame + (-4, -4, 4, 4)


def wiring_png(dpi: int = 150) -> bytes:
    """The sample manual's wiring diagram rendered to greyscale pixels, upright (landscape)."""
    with pymupdf.open(PUMP_MANUAL) as src:
        page = src[WIRING_PAGE - 1]
        pix = page.get_pixmap(clip=wiring_clip(page), dpi=dpi, colorspace=pymupdf.csGRAY)
        return pix.tobytes("png")


SCAN_MARGIN = 18.0  # pt of white around the picture on a turned scan page


def turned_scan_pdf_bytes(rotation: int, dpi: int = 150) -> bytes:
    """A scanned page (no text layer) showing the wiring diagram turned so that a reader must turn the page
    ``rotation`` degrees clockwise to read it (90: labels run bottom to top). The picture sits
    ``SCAN_MARGIN`` pt from the page's top-left corner, at ``dpi``."""
    img = Image.open(io.BytesIO(wiring_png(dpi)))
    turned = img.rotate(rotation, expand=True)  # Pillow turns counter-clockwise
    w, h = turned.width * 72.0 / dpi, turned.height * 72.0 / dpi
    doc = pymupdf.open()
    page = doc.new_page(width=w + 2 * SCAN_MARGIN, height=h + 2 * SCAN_MARGIN)
    page.insert_image(
        pymupdf.Rect(SCAN_MARGIN, SCAN_MARGIN, SCAN_MARGIN + w, SCAN_MARGIN + h), stream=png_bytes(turned)
    )
    data = doc.tobytes()
    doc.close()
    return data


def wiring_only() -> pymupdf.Document:
    """A one-page PDF holding only the wiring diagram (vector paths + PDF text) of the sample manual: page 4
    with everything outside the diagram redacted and the page cropped to it (``show_pdf_page`` with a clip
    would still carry the whole page's text, invisible but extractable)."""
    doc = pymupdf.open(PUMP_MANUAL)
    doc.select([WIRING_PAGE - 1])
    page = doc[0]
    clip, full = wiring_clip(page), page.rect
    for band in (
        pymupdf.Rect(full.x0, full.y0, full.x1, clip.y0),
        pymupdf.Rect(full.x0, clip.y1, full.x1, full.y1),
        pymupdf.Rect(full.x0, clip.y0, clip.x0, clip.y1),
        pymupdf.Rect(clip.x1, clip.y0, full.x1, clip.y1),
    ):
        page.add_redact_annot(band)
    page.apply_redactions(
        images=pymupdf.PDF_REDACT_IMAGE_REMOVE, graphics=pymupdf.PDF_REDACT_LINE_ART_REMOVE_IF_TOUCHED
    )
    page.set_cropbox(clip)
    return doc


def sideways_vector_pdf(path: Path) -> Path:
    """Three pages with the wiring diagram as vector drawing and PDF text:
    1. a mixed portrait page: upright prose above and below the diagram printed sideways (labels run bottom
       to top: turn the page 90 degrees clockwise to read it);
    2. the diagram alone, turned the other way (turn the page 270 degrees clockwise);
    3. a page stored sideways with /Rotate 90, so that it displays (and reads) upright;
    4. upright prose and a raster picture of the diagram turned 90 degrees (its words only in pixels)."""
    doc = pymupdf.open()
    with wiring_only() as src:
        cw, ch = src[0].rect.width, src[0].rect.height
        # 1: mixed page
        page = doc.new_page(width=A4[0], height=A4[1])
        body_text(
            page,
            60,
            "Connect the supply through an all-pole isolator and a residual current device. The wiring "
            "diagram below is printed landscape: turn the manual to read the terminal labels.",
        )
        x0 = (A4[0] - ch) / 2
        page.show_pdf_page(pymupdf.Rect(x0, 130, x0 + ch, 130 + cw), src, 0, rotate=90)
        body_text(
            page,
            150 + cw,
            "Route the mains and motor cables through separate glands and keep them apart inside the "
            "housing to avoid interference on the sensor signal.",
        )
        # 2: the diagram alone, turned the other way
        page = doc.new_page(width=ch + 40, height=cw + 40)
        page.show_pdf_page(pymupdf.Rect(20, 20, 20 + ch, 20 + cw), src, 0, rotate=270)
        # 3: drawn sideways on a portrait page that /Rotate 90 shows as an upright landscape page
        page = doc.new_page(width=ch + 40, height=cw + 40)
        page.show_pdf_page(pymupdf.Rect(20, 20, 20 + ch, 20 + cw), src, 0, rotate=90)
        page.set_rotation(90)
        # 4: a raster picture of it, turned, between upright paragraphs
        page = doc.new_page(width=A4[0], height=A4[1])
        body_text(page, 60, "The terminal assignment is shown in the picture below, printed landscape.")
        picture = Image.open(io.BytesIO(wiring_png(150))).rotate(90, expand=True)
        page.insert_image(pymupdf.Rect(x0, 100, x0 + ch, 100 + cw), stream=png_bytes(picture))
        body_text(page, 120 + cw, "Tighten the terminal screws to 0.5 Nm after fitting the ferrules.")
    doc.save(path)
    doc.close()
    return path


CORPUS2_SCAN = Path(__file__).resolve().parents[2] / "shared" / "corpus2" / "scan-pcb-manual-section.pdf"


def turned_corpus2_scan_bytes(rotation: int, page: int = 12, keep: float = 0.45) -> bytes:
    """The top ``keep`` of a real scanned page of ../shared/corpus2 (page 12: the Pcb manual's glossary,
    150 dpi greyscale JPEG) as a one-page scanned PDF, turned so that a reader must turn the page
    ``rotation`` degrees clockwise to read it."""
    with pymupdf.open(CORPUS2_SCAN) as src:
        pg = src[page - 1]
        info = pg.get_image_info(xrefs=True)[0]
        img = Image.open(io.BytesIO(src.extract_image(info["xref"])["image"]))
        scale = img.width / pg.rect.width  # pixels per point
    top = img.crop((0, 0, img.width, round(img.height * keep))).rotate(rotation, expand=True)
    buf = io.BytesIO()
    top.save(buf, format="JPEG", quality=85)
    doc = pymupdf.open()
    page_ = doc.new_page(width=top.width / scale, height=top.height / scale)
    page_.insert_image(page_.rect, stream=buf.getvalue())
    data = doc.tobytes()
    doc.close()
    return data


def screenshot_beside_sketch_pdf(path: Path) -> Path:
    """One figure of two images side by side, as manuals place a wiring sketch beside the program's window:
    a coarse sketch (60 px over 80 pt: 54 dpi) and a screenshot whose small status text (about 10 px high)
    is printed at 450 dpi; rendered at the sketch's resolution, that text is 3 px high."""
    doc = pymupdf.open()
    page = doc.new_page(width=A4[0], height=A4[1])
    body_text(page, 72, "Figure 5 shows the fit of the measured curve.")
    shot = Image.open(
        io.BytesIO(
            rendered_text_png(
                ["Fitted curve gave Rind = 546 Ohm", "Saved to tempcon.dat"], dpi=110, fontsize=9
            )
        )
    )
    shot = shot.crop((100, 120, 420, 175))
    page.insert_image(
        pymupdf.Rect(200, 150, 200 + shot.width * 72 / 450, 150 + shot.height * 72 / 450),
        stream=png_bytes(shot),
    )
    page.insert_image(pymupdf.Rect(120, 150, 200, 210), stream=photo_png(60, 45))
    doc.save(path)
    doc.close()
    return path
