#!/usr/bin/env python3
"""Generate the sample manual library in data/manuals/ (deterministic).

Run from the repository root:

    .venv/bin/python data/make_sample.py            # writes data/manuals/
    .venv/bin/python data/make_sample.py --out DIR  # writes somewhere else

What it writes (see data/README.md for the features each file exercises):

* ``pump-controller-manual.pdf`` - an 8-page service manual for the fictional
  "AquaFlow PC-200 pump controller": born-digital prose with an outline, a raster
  screenshot (Figure 1), a vector wiring diagram whose labels are real PDF text
  (Figure 2), a hydraulic schematic whose labels exist only as pixels (Figure 3),
  warning-triangle symbols beside WARNING/CAUTION paragraphs, a logo in the header
  of every born-digital page (one image xref), two text tables and one scanned page
  (an image only, no text layer).
* ``quick-start-card.png`` - a loose, scan-like greyscale quick-start card.
* ``release-notes.md`` - short firmware release notes in Markdown.
* ``xfig-howto.pdf`` + ``LICENSE-xfig-howto.txt`` - a real, freely licensed manual
  copied unchanged from ../shared/corpus (skipped with a message when absent).

Determinism: no clocks, no random ids. PDF metadata dates are fixed, the PDF is
saved with ``no_new_id``, noise comes from ``random.Random`` with fixed seeds and
images are encoded by Pillow with fixed settings. Identical bytes are expected for
the same PyMuPDF/Pillow/FreeType versions and the same DejaVu font files; other
versions may render pixels or compress streams slightly differently.

Needs only PyMuPDF and Pillow (both project dependencies).
"""

from __future__ import annotations

import argparse
import io
import itertools
import random
import shutil
import sys
from pathlib import Path

import pymupdf
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont, ImageOps

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "manuals"
XFIG_SRC = HERE.parent.parent / "shared" / "corpus" / "xfig-howto.pdf"

# --------------------------------------------------------------------------- fonts
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")


def pil_font(size: int, bold: bool = False, mono: bool = False) -> ImageFont.FreeTypeFont:
    """DejaVu when installed, else Pillow's bundled scalable default font."""
    name = "DejaVuSansMono" if mono else "DejaVuSans"
    if bold:
        name += "-Bold"
    path = FONT_DIR / f"{name}.ttf"
    if path.exists():
        return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def jpeg_bytes(img: Image.Image, quality: int = 80) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


# --------------------------------------------------------------------- raster art
def make_logo() -> bytes:
    """Company logo (header boilerplate): 360x96 px, shown at 90x24 pt."""
    img = Image.new("RGB", (360, 96), "white")
    d = ImageDraw.Draw(img)
    d.rounded_rectangle((4, 4, 92, 92), radius=16, fill=(0, 84, 166))
    for i, y in enumerate((34, 52, 70)):
        pts = [(14 + k * 6, y + (6 if (k // 2) % 2 else -6) * (1 - i * 0.2)) for k in range(13)]
        d.line(pts, fill="white", width=6, joint="curve")
    d.text((104, 8), "AquaFlow", font=pil_font(44, bold=True), fill=(0, 84, 166))
    d.text((106, 64), "PUMP CONTROLS", font=pil_font(20), fill=(90, 90, 90))
    return png_bytes(img)


def make_warning_triangle() -> bytes:
    """ISO 7010 W001-style general warning sign, RGBA, 128x128 px (shown at 24x24 pt)."""
    s = 128
    img = Image.new("RGBA", (s, s), (255, 255, 255, 0))
    d = ImageDraw.Draw(img)
    outer = [(s / 2, 6), (s - 4, s - 10), (4, s - 10)]
    d.polygon(outer, fill=(20, 20, 20, 255))
    inner = [(s / 2, 22), (s - 18, s - 18), (18, s - 18)]
    d.polygon(inner, fill=(255, 210, 0, 255))
    d.rounded_rectangle((s / 2 - 6, 44, s / 2 + 6, 86), radius=5, fill=(20, 20, 20, 255))
    d.ellipse((s / 2 - 7, 91, s / 2 + 7, 105), fill=(20, 20, 20, 255))
    return png_bytes(img)


def make_front_panel_screenshot() -> bytes:
    """Figure 1: a screenshot of the PC-200 service tool showing the front panel."""
    w, h = 960, 600
    img = Image.new("RGB", (w, h), (236, 236, 236))
    d = ImageDraw.Draw(img)
    # window chrome
    d.rectangle((0, 0, w - 1, 40), fill=(45, 80, 130))
    d.text((16, 8), "PC-200 Service Tool 3.2 - Front panel", font=pil_font(20, bold=True), fill="white")
    for i, c in enumerate(((230, 80, 70), (240, 190, 60), (90, 180, 90))):
        d.ellipse((w - 100 + i * 30, 12, w - 82 + i * 30, 30), fill=c)
    d.rectangle((0, 41, w - 1, 72), fill=(250, 250, 250))
    x = 16
    for item in ("File", "View", "Device", "Logging", "Help"):
        d.text((x, 47), item, font=pil_font(17), fill=(30, 30, 30))
        x += 90
    d.line((0, 72, w, 72), fill=(180, 180, 180), width=1)
    # controller housing
    d.rounded_rectangle((40, 96, 920, 540), radius=22, fill=(214, 218, 224), outline=(120, 124, 130), width=3)
    # LCD
    d.rounded_rectangle((80, 130, 560, 380), radius=10, fill=(40, 46, 40))
    d.rectangle((96, 146, 544, 364), fill=(170, 205, 120))
    lcd = pil_font(34, mono=True)
    lcd_b = pil_font(40, bold=True, mono=True)
    d.text((116, 158), "FLOW  12.5 L/min", font=lcd_b, fill=(25, 40, 20))
    d.text((116, 214), "PRESS  3.4 bar", font=lcd, fill=(25, 40, 20))
    d.text((116, 262), "MOTOR  4.2 A", font=lcd, fill=(25, 40, 20))
    d.text((116, 310), "MODE   AUTO", font=lcd, fill=(25, 40, 20))
    # LEDs
    led_font = pil_font(20, bold=True)
    for i, (label, col) in enumerate(
        (("POWER", (60, 200, 70)), ("RUN", (60, 200, 70)), ("FAULT", (120, 60, 60)))
    ):
        y = 150 + i * 70
        d.ellipse((610, y, 642, y + 32), fill=col, outline=(50, 50, 50), width=2)
        d.text((660, y + 3), label, font=led_font, fill=(30, 30, 30))
    # keys
    key_font = pil_font(24, bold=True)
    keys = (
        ("START", (70, 150, 80)),
        ("STOP", (200, 60, 55)),
        ("MODE", (90, 98, 110)),
        ("RESET", (90, 98, 110)),
    )
    for i, (label, col) in enumerate(keys):
        x0 = 80 + i * 160
        d.rounded_rectangle((x0, 420, x0 + 140, 490), radius=12, fill=col, outline=(40, 40, 40), width=2)
        tw = d.textlength(label, font=key_font)
        d.text((x0 + 70 - tw / 2, 440), label, font=key_font, fill="white")
    for i, arrow in enumerate(("up", "down")):
        x0 = 740 + i * 80
        d.rounded_rectangle(
            (x0, 420, x0 + 64, 490), radius=12, fill=(90, 98, 110), outline=(40, 40, 40), width=2
        )
        cx = x0 + 32
        tri = (
            [(cx, 436), (cx + 16, 472), (cx - 16, 472)]
            if arrow == "up"
            else [(cx, 474), (cx + 16, 438), (cx - 16, 438)]
        )
        d.polygon(tri, fill="white")
    d.text((780, 110), "PC-200", font=pil_font(26, bold=True), fill=(60, 64, 70))
    # status bar
    d.rectangle((0, h - 34, w - 1, h - 1), fill=(220, 220, 220))
    d.text(
        (16, h - 28),
        "Connected: COM3  9600 baud   Firmware 3.2.0   Serial 200-04711",
        font=pil_font(16),
        fill=(40, 40, 40),
    )
    return png_bytes(img)


def make_hydraulic_schematic() -> bytes:
    """Figure 3: hydraulic circuit. Every label here exists ONLY as pixels."""
    w, h = 1400, 760
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    ink = (20, 20, 20)
    pipe = (20, 70, 160)
    lab = pil_font(30)
    lab_b = pil_font(30, bold=True)
    pw = 6  # pipe width

    def label(xy, text, font=lab, anchor="la"):
        d.text(xy, text, font=font, fill=ink, anchor=anchor)

    # TANK (open reservoir) bottom left
    d.line([(60, 520), (60, 700), (330, 700), (330, 520)], fill=ink, width=6)
    for y in (585, 600):
        d.line([(70, y), (320, y)], fill=pipe, width=3)
    label((76, 630), "TANK", font=lab_b)
    # suction pipe with foot valve V1 inside the tank
    d.line([(240, 640), (240, 420)], fill=pipe, width=pw)  # up out of the tank
    d.polygon([(222, 660), (258, 660), (240, 630)], outline=ink, width=4)
    d.ellipse((228, 660, 252, 684), outline=ink, width=4)
    label((355, 640), "V1 foot valve")
    d.line([(340, 655), (262, 668)], fill=ink, width=2)
    d.line([(240, 420), (420, 420)], fill=pipe, width=pw)
    # motor M1 coupled to pump P1
    d.ellipse((430, 160, 530, 260), outline=ink, width=5)
    label((480, 210), "M", font=pil_font(44, bold=True), anchor="mm")
    d.line([(480, 260), (480, 360)], fill=ink, width=4)
    d.line([(492, 260), (492, 360)], fill=ink, width=4)
    label((545, 170), "M1")
    # pump P1 (circle with outward triangle)
    d.ellipse((420, 360, 540, 480), outline=ink, width=5)
    d.polygon([(480, 368), (512, 412), (448, 412)], fill=ink)
    label((480, 500), "P1 pump", anchor="ma")
    d.line([(540, 420), (640, 420)], fill=pipe, width=pw)
    # check valve V2: ball against a seat
    d.line([(640, 395), (640, 445)], fill=ink, width=5)
    d.line([(640, 395), (690, 420)], fill=ink, width=5)
    d.line([(640, 445), (690, 420)], fill=ink, width=5)
    d.ellipse((676, 402, 712, 438), outline=ink, width=5)
    d.line([(712, 420), (820, 420)], fill=pipe, width=pw)
    label((676, 460), "V2 check valve", anchor="ma")
    # tee to the pressure sensor PS-4
    d.line([(820, 420), (820, 300)], fill=pipe, width=pw)
    d.ellipse((790, 240, 850, 300), outline=ink, width=5)
    d.line([(800, 290), (842, 248)], fill=ink, width=4)
    d.polygon([(842, 248), (826, 254), (836, 264)], fill=ink)
    label((820, 150), "PS-4 pressure sensor", anchor="ma")
    label((820, 186), "0-10 bar, 4-20 mA", font=pil_font(24), anchor="ma")
    # accumulator ACC1 below the main line
    d.line([(920, 420), (920, 520)], fill=pipe, width=pw)
    d.rounded_rectangle((885, 520, 955, 660), radius=34, outline=ink, width=5)
    d.line([(885, 585), (955, 585)], fill=ink, width=3)
    label((975, 570), "ACC1 accumulator")
    label((975, 606), "8 L, pre-charge 2.3 bar", font=pil_font(24))
    # shut-off valve V3 (bow tie) and outlet
    d.line([(820, 420), (1040, 420)], fill=pipe, width=pw)
    d.polygon([(1040, 395), (1040, 445), (1110, 395), (1110, 445)], outline=ink, width=5)
    d.line([(1075, 420), (1075, 370)], fill=ink, width=4)
    d.line([(1055, 370), (1095, 370)], fill=ink, width=5)
    label((1075, 300), "V3 shut-off", anchor="ma")
    label((1075, 334), "valve", anchor="ma")
    d.line([(1110, 420), (1300, 420)], fill=pipe, width=pw)
    d.polygon([(1300, 402), (1336, 420), (1300, 438)], fill=pipe)
    label((1300, 460), "to consumers", anchor="ma")
    # title block
    d.rectangle((1000, 660, 1380, 740), outline=ink, width=3)
    label((1012, 668), "Drawing HC-200-03", font=pil_font(26, bold=True))
    label((1012, 704), "Max. pressure 8 bar", font=pil_font(24))
    # crop to the drawing plus a margin (deterministic: depends on the pixels only)
    x0, y0, x1, y1 = ImageOps.invert(img.convert("L")).getbbox()
    return png_bytes(img.crop((max(0, x0 - 24), max(0, y0 - 24), min(w, x1 + 24), min(h, y1 + 24))))


def make_quick_start_card(seed: int = 4711) -> Image.Image:
    """A scan-like greyscale quick-start card (A6 landscape at 200 dpi)."""
    w, h = 1169, 827
    img = Image.new("L", (w, h), 255)
    d = ImageDraw.Draw(img)
    d.rectangle((30, 30, w - 31, h - 31), outline=40, width=4)
    d.text((60, 52), "AquaFlow PC-200", font=pil_font(40, bold=True), fill=20)
    d.text((60, 104), "Quick start card", font=pil_font(32), fill=40)
    d.line((60, 152, w - 60, 152), fill=60, width=3)
    steps = [
        "Mount the controller upright on a wall, cable glands facing down.",
        "Connect mains to X1: brown = L, blue = N, green/yellow = PE.",
        "Connect the pump motor to X2 and its thermistor to X2 pins 4 and 5.",
        "Switch on. Press MODE until the display shows AUTO.",
        "Press START. Check FLOW and PRESS on the display.",
    ]
    font = pil_font(27)
    num_font = pil_font(30, bold=True)
    y = 186
    for i, text in enumerate(steps, 1):
        d.text((64, y), f"{i}.", font=num_font, fill=20)
        d.text((124, y + 2), text, font=font, fill=25)
        y += 74
    # pictogram: a plug and a "power" symbol in a box at the bottom right
    bx, by = w - 250, h - 210
    d.rounded_rectangle((bx, by, bx + 180, by + 150), radius=14, outline=30, width=4)
    d.arc((bx + 40, by + 25, bx + 140, by + 125), start=-50, end=230, fill=20, width=9)
    d.line((bx + 90, by + 18, bx + 90, by + 78), fill=20, width=9)
    d.text(
        (60, h - 118),
        "Full manual: AF-SM-200-EN. Keep this card with the controller.",
        font=pil_font(22),
        fill=60,
    )
    tx, ty = 60, h - 92  # small warning pictogram before the safety line
    d.polygon([(tx + 22, ty), (tx + 44, ty + 38), (tx, ty + 38)], fill=200, outline=20, width=4)
    d.line((tx + 22, ty + 12, tx + 22, ty + 26), fill=20, width=5)
    d.ellipse((tx + 19, ty + 29, tx + 25, ty + 35), fill=20)
    d.text(
        (tx + 58, ty + 8),
        "Never open the housing while mains power is connected.",
        font=pil_font(22, bold=True),
        fill=30,
    )
    return scan_effect(img, seed=seed, angle=-0.4)


def scan_effect(img: Image.Image, seed: int, angle: float) -> Image.Image:
    """Make a clean greyscale page look scanned: paper tone, tilt, blur, noise."""
    rng = random.Random(seed)
    w, h = img.size
    img = img.point(lambda v: 18 + v * 218 // 255)  # ink is not black, paper not white
    img = img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=236)
    img = img.filter(ImageFilter.GaussianBlur(0.7))
    noise = Image.frombytes("L", (w, h), rng.randbytes(w * h)).point(lambda v: (v * 23) // 255)
    img = ImageChops.subtract(img, noise, scale=1.0, offset=0)
    # a few dust specks
    d = ImageDraw.Draw(img)
    for _ in range(60):
        x, y, r = rng.randrange(w), rng.randrange(h), rng.choice((1, 1, 2))
        d.ellipse((x - r, y - r, x + r, y + r), fill=rng.randrange(60, 140))
    return img


# ------------------------------------------------------------------ PDF helpers
PAGE = pymupdf.paper_rect("a4")  # 595 x 842 pt
LEFT, RIGHT = 62.0, PAGE.width - 62.0
TOP, BOTTOM = 86.0, PAGE.height - 62.0
DOC_NO = "AF-SM-200-EN Rev. C"
INK = (0.1, 0.1, 0.1)
ACCENT = (0.0, 0.33, 0.65)


def tlen(text: str, font: str, size: float) -> float:
    """Width of ``text`` in a base-14 font.

    Measured per character: pymupdf.get_text_length() under-counts strings that
    contain non-ASCII characters such as the degree sign."""
    return sum(pymupdf.get_text_length(ch, font, size) for ch in text)


class Overflow(RuntimeError):
    pass


class Writer:
    """Tiny flow layout: wraps text into lines with base-14 fonts."""

    def __init__(self, page: pymupdf.Page, y: float = TOP) -> None:
        self.page = page
        self.y = y

    @staticmethod
    def wrap(text: str, font: str, size: float, width: float) -> list[str]:
        lines: list[str] = []
        for para in text.split("\n"):
            cur = ""
            for word in para.split():
                trial = f"{cur} {word}" if cur else word
                if tlen(trial, font, size) <= width:
                    cur = trial
                else:
                    lines.append(cur)
                    cur = word
            lines.append(cur)
        return lines

    def _check(self, need: float) -> None:
        if self.y + need > BOTTOM:
            raise Overflow(f"page {self.page.number + 1}: content overflows at y={self.y + need:.0f}")

    def text(
        self,
        text: str,
        size: float = 9.5,
        font: str = "helv",
        indent: float = 0.0,
        color=INK,
        gap: float = 6.0,
        leading: float = 1.38,
        right: float = RIGHT,
    ) -> None:
        lines = self.wrap(text, font, size, right - LEFT - indent)
        self._check(len(lines) * size * leading)
        for line in lines:
            self.y += size * leading
            self.page.insert_text(
                (LEFT + indent, self.y - size * (leading - 1.0) - 1),
                line,
                fontname=font,
                fontsize=size,
                color=color,
            )
        self.y += gap

    def heading(self, text: str, level: int = 1) -> None:
        size = {1: 15.0, 2: 11.5}[level]
        self.y += 8 if level == 1 else 4
        self._check(size * 1.5 + 20)
        self.text(text, size=size, font="hebo", color=ACCENT if level == 1 else INK, gap=4)
        if level == 1:
            self.page.draw_line((LEFT, self.y - 2), (RIGHT, self.y - 2), color=ACCENT, width=0.8)
            self.y += 6

    def bullets(self, items: list[str], size: float = 9.5) -> None:
        for item in items:
            y0 = self.y
            self.text(item, size=size, indent=14, gap=2)
            self.page.insert_text(
                (LEFT + 4, y0 + size * 1.38 - size * 0.38 - 1), "-", fontname="helv", fontsize=size, color=INK
            )
        self.y += 4

    def symbol_paragraph(self, image: int | bytes, text: str, size: float = 9.5) -> int:
        """A paragraph with a 24x24 pt warning sign immediately to its left; returns the image xref.

        ``image`` is PNG bytes (first use) or the xref of the already embedded sign."""
        lines = self.wrap(text, "helv", size, RIGHT - LEFT - 34)
        height = max(26.0, len(lines) * size * 1.38)
        self._check(height + 8)
        icon = pymupdf.Rect(LEFT, self.y + 3, LEFT + 24, self.y + 27)
        if isinstance(image, int):
            xref = image
            self.page.insert_image(icon, xref=xref)
        else:
            xref = self.page.insert_image(icon, stream=image)
        # bold lead-in ("WARNING:"), rest regular, wrapped as one paragraph
        lead = text.split(" ", 1)[0]
        y = self.y
        first = True
        for line in lines:
            y += size * 1.38
            base = (LEFT + 34, y - size * 0.38 - 1)
            if first and line.startswith(lead):
                self.page.insert_text(base, lead, fontname="hebo", fontsize=size, color=INK)
                off = tlen(lead + " ", "hebo", size)
                self.page.insert_text(
                    (base[0] + off, base[1]), line[len(lead) + 1 :], fontname="helv", fontsize=size, color=INK
                )
            else:
                self.page.insert_text(base, line, fontname="helv", fontsize=size, color=INK)
            first = False
        self.y += height + 8
        return xref

    def table(
        self,
        headers: list[str],
        rows: list[list[str]],
        widths: list[float],
        size: float = 8.5,
        caption: str | None = None,
    ) -> None:
        lead = size * 1.3
        if caption:
            self.text(caption, size=9, font="hebo", gap=3)
        x_pos = [LEFT]
        for wdt in widths:
            x_pos.append(x_pos[-1] + wdt)
        all_rows = [headers, *rows]
        wrapped = [
            [self.wrap(cell, "hebo" if r == 0 else "helv", size, widths[c] - 8) for c, cell in enumerate(row)]
            for r, row in enumerate(all_rows)
        ]
        heights = [max(len(cell) for cell in row) * lead + 6 for row in wrapped]
        self._check(sum(heights) + 6)
        y = self.y
        for r, row in enumerate(wrapped):
            h = heights[r]
            if r == 0:
                self.page.draw_rect(
                    pymupdf.Rect(x_pos[0], y, x_pos[-1], y + h), color=None, fill=(0.86, 0.9, 0.95), width=0
                )
            for c, cell in enumerate(row):
                ty = y + 3
                for line in cell:
                    ty += lead
                    self.page.insert_text(
                        (x_pos[c] + 4, ty - size * 0.3 - 1),
                        line,
                        fontname="hebo" if r == 0 else "helv",
                        fontsize=size,
                        color=INK,
                    )
            self.page.draw_line((x_pos[0], y), (x_pos[-1], y), color=(0.4, 0.4, 0.4), width=0.5)
            y += h
        self.page.draw_line((x_pos[0], y), (x_pos[-1], y), color=(0.4, 0.4, 0.4), width=0.5)
        for x in x_pos:
            self.page.draw_line((x, self.y), (x, y), color=(0.4, 0.4, 0.4), width=0.5)
        self.y = y + 10

    def image(self, stream: bytes, width: float, caption: str) -> pymupdf.Rect:
        px_w, px_h = Image.open(io.BytesIO(stream)).size
        height = width * px_h / px_w
        self._check(height + 26)
        x0 = LEFT + (RIGHT - LEFT - width) / 2
        rect = pymupdf.Rect(x0, self.y + 4, x0 + width, self.y + 4 + height)
        self.page.insert_image(rect, stream=stream)
        self.y = rect.y1
        self.caption(caption)
        return rect

    def caption(self, text: str) -> None:
        self.y += 4
        w = tlen(text, "hebo", 9)
        self.y += 12
        self.page.insert_text(
            ((LEFT + RIGHT - w) / 2, self.y - 3), text, fontname="hebo", fontsize=9, color=INK
        )
        self.y += 10


def header_footer(page: pymupdf.Page, logo_xref: int, page_no: int, n_pages: int) -> int:
    """Running header with the logo (same image xref on every page) and footer."""
    rect = pymupdf.Rect(LEFT, 30, LEFT + 90, 54)
    if logo_xref:
        page.insert_image(rect, xref=logo_xref)
        xref = logo_xref
    else:
        xref = page.insert_image(rect, stream=LOGO)
    title = "PC-200 Pump Controller - Service Manual"
    w = tlen(title, "helv", 8.5)
    page.insert_text((RIGHT - w, 48), title, fontname="helv", fontsize=8.5, color=(0.35, 0.35, 0.35))
    page.draw_line((LEFT, 62), (RIGHT, 62), color=ACCENT, width=1.2)
    page.draw_line((LEFT, PAGE.height - 46), (RIGHT, PAGE.height - 46), color=(0.6, 0.6, 0.6), width=0.5)
    page.insert_text((LEFT, PAGE.height - 34), DOC_NO, fontname="helv", fontsize=8, color=(0.35, 0.35, 0.35))
    folio = f"Page {page_no} of {n_pages}"
    w = tlen(folio, "helv", 8)
    page.insert_text(
        (RIGHT - w, PAGE.height - 34), folio, fontname="helv", fontsize=8, color=(0.35, 0.35, 0.35)
    )
    return xref


# ------------------------------------------------------------- vector drawing
BROWN = (0.55, 0.3, 0.1)
BLUE = (0.1, 0.3, 0.8)
GREEN = (0.1, 0.6, 0.2)
YELLOW = (0.95, 0.85, 0.1)
BLACK = (0, 0, 0)


def draw_wiring_diagram(page: pymupdf.Page, frame: pymupdf.Rect) -> None:
    """Figure 2: vector wiring diagram; every label is real PDF text.

    Coordinates below are local to ``frame`` (about 467 x 214 pt)."""
    x0, y0 = frame.x0, frame.y0 - 44
    labels: list[tuple[pymupdf.Point, str, float, str, tuple]] = []

    def P(x: float, y: float) -> pymupdf.Point:
        return pymupdf.Point(x0 + x, y0 + y)

    def label(x, y, text, size=8.0, font="helv", color=INK, center=False):
        if center:
            x -= tlen(text, font, size) / 2
        labels.append((P(x, y), text, size, font, color))

    sh = page.new_shape()

    def wire(points, color, width=1.4, dashes=None):
        for a, b in itertools.pairwise(points):
            sh.draw_line(P(*a), P(*b))
        sh.finish(color=color, width=width, dashes=dashes, closePath=False)

    def pe_wire(points):  # green/yellow: a green line with yellow dashes on top
        wire(points, GREEN, 2.0)
        wire(points, YELLOW, 2.0, dashes="[4 4] 0")

    def strip(x, ys, name, top):  # terminal strip with numbered screw terminals
        sh.draw_rect(pymupdf.Rect(P(x - 6, top), P(x + 6, ys[-1] + 10)))
        sh.finish(color=INK, width=0.9, fill=(0.88, 0.88, 0.88))
        for i, y in enumerate(ys, 1):
            sh.draw_circle(P(x, y), 3.2)
            sh.finish(color=INK, width=0.8, fill=(1, 1, 1))
            label(x + 8, y - 3, str(i), 6)
        label(x, top - 4, name, 8.5, "hebo", center=True)

    # outer frame
    sh.draw_rect(frame)
    sh.finish(color=(0.55, 0.55, 0.55), width=0.6)

    # MAINS supply
    sh.draw_rect(pymupdf.Rect(P(14, 60), P(94, 146)))
    sh.finish(color=INK, width=1.2, fill=(0.95, 0.95, 0.95))
    label(52, 74, "MAINS 230V", 8, "hebo", center=True)
    label(52, 84, "50/60 Hz", 7, center=True)
    for y, t in ((86, "L"), (110, "N"), (134, "PE")):
        label(90 - tlen(t, "helv", 7), y - 3, t, 7)

    # X1 and the supply wires
    x1, x2 = 130, 364
    wire([(94, 86), (x1, 86)], BROWN)
    wire([(94, 110), (x1, 110)], BLUE)
    pe_wire([(94, 134), (x1, 134)])
    strip(x1, [86, 110, 134], "X1", 74)

    # F1 fuse on L
    wire([(x1, 86), (172, 86)], BROWN)
    sh.draw_rect(pymupdf.Rect(P(172, 80), P(204, 92)))
    sh.finish(color=INK, width=1.0, fill=(1, 1, 1))
    sh.draw_line(P(172, 86), P(204, 86))
    sh.finish(color=INK, width=0.8)
    label(188, 75, "F1 10A", 8, "hebo", center=True)
    wire([(204, 86), (250, 86)], BROWN)

    # K1 contact (normally open) on L
    sh.draw_circle(P(252, 86), 2)
    sh.draw_circle(P(282, 86), 2)
    sh.finish(color=INK, width=1.0, fill=INK)
    sh.draw_line(P(252, 86), P(278, 74))
    sh.finish(color=INK, width=1.4)
    label(267, 66, "K1", 8, "hebo", center=True)
    wire([(282, 86), (x2, 86)], BROWN)
    label(318, 82, "BN", 7.5, "hebo", BROWN)

    # N and PE straight through to X2
    wire([(x1, 110), (x2, 110)], BLUE)
    label(318, 106, "BU", 7.5, "hebo", BLUE)
    pe_wire([(x1, 134), (x2, 134)])
    label(312, 130, "GNYE", 7.5, "hebo", GREEN)

    # K1 coil on the control board, dashed mechanical link to the contact
    sh.draw_rect(pymupdf.Rect(P(256, 164), P(280, 178)))
    sh.finish(color=INK, width=1.0, fill=(1, 1, 1))
    sh.draw_line(P(268, 164), P(268, 80))
    sh.finish(color=INK, width=0.7, dashes="[2 2] 0")
    label(285, 171, "K1 relay", 7.5)
    label(285, 180, "24 V DC coil", 6.5)

    # A1 control board
    sh.draw_rect(pymupdf.Rect(P(150, 196), P(330, 244)))
    sh.finish(color=INK, width=1.2, fill=(0.92, 0.95, 1.0))
    label(240, 216, "A1 control board", 8, "hebo", center=True)
    label(240, 228, "F2 T315mA", 7, center=True)
    wire([(262, 178), (262, 196)], INK, 0.9)
    wire([(274, 178), (274, 196)], INK, 0.9)

    # X2 terminal strip (motor + thermistor)
    strip(x2, [86, 110, 134, 206, 226], "X2", 74)

    # M1: motor with its winding thermistor (PTC) in one dashed enclosure
    sh.draw_rect(pymupdf.Rect(P(398, 76), P(460, 200)))
    sh.finish(color=(0.3, 0.3, 0.3), width=0.7, dashes="[3 2] 0")
    label(429, 70, "M1 pump motor", 8, "hebo", center=True)
    mc = (429, 110)
    sh.draw_circle(P(*mc), 22)
    sh.finish(color=INK, width=1.4, fill=(1, 1, 1))
    label(mc[0], mc[1] + 2, "M", 14, "hebo", center=True)
    label(mc[0], mc[1] + 13, "1~", 7, center=True)
    wire([(x2, 86), (414, 86), (416, 93)], BROWN)
    wire([(x2, 110), (407, 110)], BLUE)
    pe_wire([(x2, 134), (410, 134), (416, 127)])
    sh.draw_rect(pymupdf.Rect(P(423, 156), P(435, 184)))
    sh.finish(color=INK, width=1.0, fill=(1, 1, 1))
    sh.draw_line(P(419, 186), P(439, 154))
    sh.finish(color=INK, width=0.8)
    label(440, 174, "PTC", 7)
    wire([(429, 156), (429, 148), (410, 148), (410, 206), (x2, 206)], BLACK, 1.2)
    wire([(429, 184), (429, 226), (x2, 226)], BLACK, 1.2, "[3 2] 0")
    label(434, 217, "BK/WH", 7.5, "hebo")
    wire([(330, 206), (x2, 206)], INK, 0.9)
    wire([(330, 226), (x2, 226)], INK, 0.9)

    # X3 sensor input
    x3 = 124
    strip(x3, [206, 220, 234], "X3", 194)
    for y in (206, 220, 234):
        wire([(x3, y), (150, y)], INK, 0.9)
    wire([(40, 206), (x3, 206)], BROWN, 1.2)
    wire([(40, 220), (x3, 220)], BLACK, 1.2)
    wire([(40, 234), (x3, 234)], BLUE, 1.2)
    label(92, 203, "BN", 6.5, "hebo", BROWN)
    label(92, 217, "BK", 6.5, "hebo", BLACK)
    label(92, 231, "BU", 6.5, "hebo", BLUE)
    label(14, 184, "to pressure", 7)
    label(14, 193, "sensor", 7)
    sh.commit()
    for point, text, size, font, color in labels:  # text last, so fills never hide it
        page.insert_text(point, text, fontname=font, fontsize=size, color=color)


# ------------------------------------------------------------- scanned page
ERROR_ROWS = [
    [
        "E01",
        "Dry run",
        "No flow for 30 s while running (flow below 0.5 L/min).",
        "Prime the pump; check suction pipe, foot valve and water level.",
    ],
    [
        "E02",
        "Overpressure",
        "Pressure above 8.0 bar for 2 s.",
        "Open the outlet; check that the check valve V2 is fitted the right way round.",
    ],
    [
        "E03",
        "Low pressure / leak",
        "Pressure below 0.5 bar after 60 s of running.",
        "Look for leaks in the discharge pipe; check the accumulator pre-charge.",
    ],
    [
        "E04",
        "Sensor fault",
        "Sensor signal below 3.6 mA or above 21 mA.",
        "Check the X3 wiring (BN, BK, BU). Replace sensor PS-4 (PC-200-PS4).",
    ],
    [
        "E05",
        "Mains undervoltage",
        "Supply below 195 V for 5 s.",
        "Measure the supply at X1; check the cable length and cross-section.",
    ],
    [
        "E06",
        "Mains overvoltage",
        "Supply above 253 V for 5 s.",
        "Have the supply checked by the utility; the pump stays off until normal.",
    ],
    [
        "E07",
        "Motor overtemperature",
        "Motor thermistor above 3.6 kohm (thermal shutdown).",
        "Let the motor cool for 20 min; clean the fan cover; check for a blocked impeller.",
    ],
    [
        "E08",
        "Overcurrent",
        "Motor current above 9.5 A for 2 s.",
        "Free the impeller; check relay K1 contacts; replace F1 (PC-200-F3).",
    ],
    [
        "E09",
        "Internal fault",
        "EEPROM checksum error or relay K1 welded.",
        "Reset to factory settings (hold RESET 10 s). If it returns, replace PC-200-MB.",
    ],
]


def make_scanned_page(logo: bytes, seed: int = 2024) -> bytes:
    """Render a printed service sheet to a noisy, slightly tilted 150 dpi greyscale JPEG."""
    tmp = pymupdf.open()
    page = tmp.new_page(width=PAGE.width, height=PAGE.height)
    page.insert_image(pymupdf.Rect(LEFT, 30, LEFT + 90, 54), stream=logo)
    page.insert_text((RIGHT - 150, 48), "Service bulletin SB-200-14", fontname="helv", fontsize=9)
    page.draw_line((LEFT, 62), (RIGHT, 62), color=INK, width=1.0)
    w = Writer(page, 84)
    w.heading("6.2 Error codes", 1)
    w.text(
        "The display shows the code and the FAULT lamp lights. Codes E01 to E06 reset themselves once "
        "the cause is gone; E07 to E09 need RESET. After three E07 trips within one hour the "
        "controller locks out until it is switched off and on again.",
        size=10,
    )
    w.table(["Code", "Meaning", "Cause", "Remedy"], ERROR_ROWS, [40, 88, 155, 188], size=9.5)
    w.text(
        "If a code cannot be cleared, note the code, the firmware version and the serial number "
        "from the rating plate before calling service.",
        size=10,
    )
    w.text("Checked: J. Berger, 12.03.2024", size=10, font="heit")
    page.draw_line((LEFT, PAGE.height - 46), (RIGHT, PAGE.height - 46), color=INK, width=0.5)
    page.insert_text(
        (LEFT, PAGE.height - 34), "SB-200-14  (inserted in " + DOC_NO + ")", fontname="helv", fontsize=8
    )
    page.insert_text((RIGHT - 60, PAGE.height - 34), "Page 8 of 8", fontname="helv", fontsize=8)
    pix = page.get_pixmap(dpi=150, colorspace=pymupdf.csGRAY)
    img = Image.frombytes("L", (pix.width, pix.height), pix.samples)
    img = scan_effect(img, seed=seed, angle=0.35)
    return jpeg_bytes(img, quality=72)


# ------------------------------------------------------------- the manual
LOGO = make_logo()


def build_manual() -> bytes:
    warn = make_warning_triangle()
    doc = pymupdf.open()
    n_pages = 8
    for _ in range(n_pages):
        doc.new_page(width=PAGE.width, height=PAGE.height)
    pages = [doc[i] for i in range(n_pages)]
    logo_xref = 0
    for i, page in enumerate(pages[:-1]):  # the last page is a scan: no header, no text layer
        logo_xref = header_footer(page, logo_xref, i + 1, n_pages)

    # ---- page 1: title page
    p = pages[0]
    w = Writer(p, 150)
    w.text("AquaFlow PC-200", size=30, font="hebo", color=ACCENT, gap=2)
    w.text("Pump Controller", size=22, font="helv", color=ACCENT, gap=14)
    w.text("Service, Installation and Maintenance Manual", size=14, font="hebo", gap=4)
    w.text("For controllers with firmware 3.2 or later", size=11, gap=30)
    w.table(
        ["Item", "Value"],
        [
            ["Document number", DOC_NO],
            ["Issue date", "March 2024"],
            ["Applies to", "PC-200 (order no. PC-200-230), PC-200 with display option PC-200-DSP"],
            ["Supply", "230 V AC +/-10 %, 50/60 Hz, single phase"],
            ["Motor output", "single-phase pump motor up to 1.1 kW, 8 A rated current"],
            ["Protection", "IP54, ambient 0 to 40 °C"],
        ],
        [140, 331],
        size=9.5,
    )
    w.y += 10
    w.heading("Contents", 2)
    for line in (
        "1  Safety",
        "2  Installation",
        "3  Electrical connection",
        "4  Operation",
        "5  Maintenance",
        "6  Troubleshooting",
    ):
        w.text(line, size=10.5, gap=0, indent=8)
    w.y += 16
    w.text(
        "About this manual. Read this manual completely before installing the controller. It is "
        "written for qualified electricians and service technicians. Keep it with the unit for the "
        "lifetime of the installation. Figures in this manual may show optional equipment.",
        size=9.5,
    )
    w.text(
        "AquaFlow and PC-200 are fictional; this document is a generated sample for the manualrag "
        "project and describes no real product.",
        size=8,
        font="heit",
        color=(0.4, 0.4, 0.4),
    )

    # ---- page 2: safety
    p = pages[1]
    w = Writer(p)
    w.heading("1 Safety", 1)
    w.text(
        "The PC-200 switches mains voltage to a pump motor. Installation, electrical connection and "
        "maintenance must only be carried out by a qualified electrician who has read this manual. "
        "Observe local wiring regulations. The symbols below mark hazards in this manual and on the unit."
    )
    w.heading("1.1 Warnings used in this manual", 2)
    w_text = (
        "WARNING: Disconnect mains power before opening the housing. Terminals X1 and X2 and the "
        "relay K1 carry 230 V and stay live while the supply isolator is on, even when the display is "
        "dark or the pump is stopped. Wait at least 3 minutes after switching off: the supply "
        "capacitors on the control board discharge slowly. Touching live parts can kill."
    )
    warn_xref = w.symbol_paragraph(warn, w_text)  # first use embeds the PNG; later uses reuse its xref
    c_text = (
        "CAUTION: Hot surfaces. After long operation the motor housing and the heat sink of the "
        "controller can exceed 70 °C. Let them cool down before touching them or the cable glands."
    )
    w.symbol_paragraph(warn_xref, c_text)
    w.text("NOTE: Notes give advice for efficient operation. They do not mark a hazard.", size=9.5, gap=8)
    w.heading("1.2 Motor overheating protection (thermal shutdown)", 2)
    w.text(
        "The pump motor has a PTC thermistor embedded in its winding. Its two leads (black and white "
        "pair, BK/WH) are connected to terminals X2:4 and X2:5. At normal temperature the thermistor "
        "measures 100 to 750 ohm. When the winding reaches about 130 °C its resistance rises above "
        "3.6 kohm: the controller opens relay K1 at once, lights the FAULT lamp and shows error code E07 "
        "(motor overtemperature). This thermal shutdown also trips when the thermistor wires are broken."
    )
    w.text(
        "The controller restarts the pump automatically when the resistance falls below 1.8 kohm and "
        "at least 20 minutes have passed. After three E07 trips within one hour it locks out until it is "
        "switched off and on again. Frequent E07 trips mean the motor is overloaded, poorly ventilated or "
        "the impeller is blocked; do not bridge X2:4 and X2:5, as this removes the overheating protection "
        "and voids the warranty."
    )
    w.text(
        "The control board monitors its own heat sink as well. Above 85 °C the output is derated; above "
        "95 °C the controller stops the pump and shows E07 with the dot of the display flashing."
    )
    w.heading("1.3 Intended use", 2)
    w.text(
        "The PC-200 controls one single-phase centrifugal or submersible pump in clean-water pressure "
        "boosting systems. It is not approved for flammable liquids or explosive atmospheres."
    )

    # ---- page 3: installation + Figure 1
    p = pages[2]
    w = Writer(p)
    w.heading("2 Installation", 1)
    w.heading("2.1 Mounting", 2)
    w.text(
        "Mount the controller upright on a vertical, non-combustible wall with the cable glands facing "
        "down, at least 100 mm away from other equipment so that air can circulate. Use the four M5 "
        "mounting holes (pitch 180 x 240 mm). Protect the unit from direct sun and dripping water."
    )
    w.table(
        ["Screw / terminal", "Size", "Tightening torque"],
        [
            ["Housing cover screws", "M4", "1.2 N·m"],
            ["Mains and motor terminals X1, X2", "2.5 mm² screw terminal", "0.5 to 0.6 N·m"],
            ["Sensor terminal X3", "1.5 mm² spring terminal", "(no screw)"],
            ["Protective earth stud", "M5", "2.0 N·m"],
            ["Cable glands", "M20 x 1.5", "3.5 N·m"],
        ],
        [190, 140, 141],
        caption="Table 1: Tightening torques",
    )
    w.heading("2.2 Front panel", 2)
    w.text(
        "Figure 1 shows the front panel as displayed by the PC-200 Service Tool. The display shows the "
        "measured flow, the pressure, the motor current and the operating mode. The three lamps show "
        "supply present, pump running and fault. Use START and STOP to run the pump by hand, MODE to change "
        "the operating mode and RESET to acknowledge an error."
    )
    w.image(make_front_panel_screenshot(), width=360, caption="Figure 1: Front panel of the PC-200")

    # ---- page 4: electrical connection + Figure 2 (vector)
    p = pages[3]
    w = Writer(p)
    w.heading("3 Electrical connection", 1)
    w.text(
        "Connect the supply through an all-pole isolator with at least 3 mm contact gap and a residual "
        "current device (RCD, 30 mA). Use cable with a cross-section of 1.5 mm² for up to 16 A. Strip 8 mm "
        "of insulation and fit ferrules on stranded wires. Figure 2 shows the complete wiring."
    )
    w.heading("3.1 Fuses", 2)
    w.text(
        "Fuse F1 protects the motor circuit: 10 A time-lag, ceramic, 6.3 x 32 mm (T10A H 250V). Fuse F2 "
        "on the control board protects the electronics: T315mA L 250V, 5 x 20 mm. Both are in the spare fuse "
        "kit PC-200-F3. Never fit a fuse with a higher rating: K1 is rated 16 A, but the terminals and the "
        "board tracks are designed for 10 A."
    )
    frame = pymupdf.Rect(LEFT + 2, w.y + 6, RIGHT - 2, w.y + 6 + 214)
    draw_wiring_diagram(p, frame)
    w.y = frame.y1
    w.caption("Figure 2: Electric wiring layout")
    w.text(
        "Route the mains and motor cables (X1, X2) and the sensor cable (X3) through separate glands and "
        "keep them apart inside the housing to avoid interference on the 4-20 mA signal."
    )

    # ---- page 5: terminal assignment + operation
    p = pages[4]
    w = Writer(p)
    w.heading("3.2 Terminal assignment", 2)
    w.table(
        ["Terminal", "Pin", "Signal", "Wire colour", "Notes"],
        [
            ["X1", "1", "L (mains in)", "BN brown", "via F1 10A"],
            ["X1", "2", "N", "BU blue", ""],
            ["X1", "3", "PE", "GNYE green/yellow", "also to earth stud"],
            ["X2", "1", "L switched (motor)", "BN brown", "via K1"],
            ["X2", "2", "N (motor)", "BU blue", ""],
            ["X2", "3", "PE (motor)", "GNYE green/yellow", ""],
            ["X2", "4, 5", "motor thermistor", "BK/WH black/white", "PTC, see 1.2"],
            ["X3", "1", "+24 V sensor supply", "BN brown", "max. 50 mA"],
            ["X3", "2", "4-20 mA signal", "BK black", "input 120 ohm"],
            ["X3", "3", "0 V", "BU blue", "screen to gland"],
        ],
        [60, 42, 125, 124, 120],
        caption="Table 2: Connector pinout of X1, X2 and X3",
    )
    w.heading("4 Operation", 1)
    w.heading("4.1 Operating modes", 2)
    w.text(
        "Press MODE to step through the modes; the active mode is shown in the bottom line of the display."
    )
    w.bullets(
        [
            "AUTO: the pump runs on demand, controlled by the pressure (see 4.2). This is the normal mode.",
            "MAN: the pump runs while START has been pressed and stops with STOP. Protection stays active.",
            "OFF: the output is off; settings can be changed.",
            "SERVICE: reached by holding MODE and STOP for 5 s; shows operating hours, starts and the last "
            "ten error codes.",
        ]
    )
    w.heading("4.2 Pressure control", 2)
    w.text(
        "In AUTO the controller starts the pump when the system pressure falls below the cut-in pressure "
        "and stops it when the cut-out pressure is reached and the flow has dropped below 0.5 L/min. "
        "Defaults: cut-in 2.5 bar, cut-out 4.0 bar; both can be set from 0.5 to 7.5 bar in 0.1 bar steps. "
        "The minimum run time is 10 s and at most 30 starts per hour are allowed, which protects the motor "
        "from overheating. Figure 3 on the next page shows the hydraulic circuit."
    )

    # ---- page 6: Figure 3 (pixel-only labels)
    p = pages[5]
    w = Writer(p)
    w.text(
        "The pressure measured on the discharge side is the controlled value. The signal comes from the "
        "pressure transmitter on terminal X3 (4-20 mA over 0-10 bar). The diaphragm vessel on the discharge "
        "side reduces the number of starts; its pre-charge pressure must be about 0.2 bar below the cut-in "
        "pressure. Check it with the system drained."
    )
    w.image(make_hydraulic_schematic(), width=460, caption="Figure 3: Hydraulic circuit")
    w.heading("4.3 Settings", 2)
    w.table(
        ["Parameter", "Default", "Range"],
        [
            ["Cut-in pressure", "2.5 bar", "0.5 to 7.5 bar"],
            ["Cut-out pressure", "4.0 bar", "cut-in + 0.5 to 8.0 bar"],
            ["Dry-run delay", "30 s", "5 to 120 s"],
            ["Maximum starts per hour", "30", "5 to 60"],
            ["Restart delay after E07", "20 min", "fixed"],
        ],
        [200, 120, 151],
        caption="Table 3: Control parameters",
    )

    # ---- page 7: maintenance + troubleshooting intro
    p = pages[6]
    w = Writer(p)
    w.heading("5 Maintenance", 1)
    w.symbol_paragraph(
        warn_xref,
        "WARNING: Disconnect mains power before opening the housing and lock the "
        "isolator in the off position. Check that X1 is dead with a two-pole voltage tester.",
    )
    w.text(
        "Every 12 months: check the terminal screws for tightness (torques in Table 1), check the cable "
        "glands and the housing seal, clean the fan cover of the motor and read the error log in SERVICE "
        "mode. Every 5 years or 50 000 starts: replace relay K1 (part number PC-200-K1)."
    )
    w.table(
        ["Part number", "Description", "Qty"],
        [
            ["PC-200-F3", "Spare fuse kit: 2 x F1 T10A 6.3x32 mm, 2 x F2 T315mA 5x20 mm", "1"],
            ["PC-200-K1", "Power relay K1, 16 A, 24 V DC coil", "1"],
            ["PC-200-PS4", "Pressure transmitter 0-10 bar, 4-20 mA, G1/4", "1"],
            ["PC-200-GK", "Housing gasket and gland seal kit", "1"],
            ["PC-200-MB", "Control board A1, firmware 3.2 pre-loaded", "1"],
            ["PC-200-DSP", "Display and keypad module", "1"],
        ],
        [90, 330, 51],
        caption="Table 4: Spare parts",
    )
    w.heading("6 Troubleshooting", 1)
    w.heading("6.1 Reading and resetting errors", 2)
    w.text(
        "When the controller detects a fault it stops the pump, lights the FAULT lamp and shows an error "
        "code such as E07. Note the code, remove the cause and press RESET for 2 s. The last ten codes "
        "are stored in the error log. Motor overheating (E07) is the most common fault in the field: check "
        "the motor ventilation and the pump for a blocked impeller before resetting."
    )
    w.text(
        "The complete error code table (service bulletin SB-200-14) is reproduced on the next page as "
        "it was issued to service partners."
    )

    # ---- page 8: scanned page, image only
    p = pages[7]
    p.insert_image(p.rect, stream=make_scanned_page(LOGO))

    # ---- outline and metadata
    doc.set_toc(
        [
            [1, "1 Safety", 2],
            [2, "1.1 Warnings used in this manual", 2],
            [2, "1.2 Motor overheating protection (thermal shutdown)", 2],
            [2, "1.3 Intended use", 2],
            [1, "2 Installation", 3],
            [2, "2.1 Mounting", 3],
            [2, "2.2 Front panel", 3],
            [1, "3 Electrical connection", 4],
            [2, "3.1 Fuses", 4],
            [2, "3.2 Terminal assignment", 5],
            [1, "4 Operation", 5],
            [2, "4.1 Operating modes", 5],
            [2, "4.2 Pressure control", 5],
            [2, "4.3 Settings", 6],
            [1, "5 Maintenance", 7],
            [1, "6 Troubleshooting", 7],
            [2, "6.1 Reading and resetting errors", 7],
            [2, "6.2 Error codes (scanned service bulletin)", 8],
        ]
    )
    doc.set_metadata(
        {
            "title": "AquaFlow PC-200 Pump Controller - Service Manual",
            "author": "manualrag sample generator",
            "subject": "Installation, wiring, operation, maintenance and troubleshooting of the PC-200",
            "keywords": "PC-200, pump controller, wiring, E07, thermal shutdown, fuse",
            "creator": "data/make_sample.py",
            "producer": "PyMuPDF",
            "creationDate": "D:20240312090000Z",
            "modDate": "D:20240312090000Z",
        }
    )
    return doc.tobytes(garbage=4, deflate=True, no_new_id=True)


# ------------------------------------------------------------- other files
RELEASE_NOTES = """\
# AquaFlow PC-200 firmware release notes

Firmware for the PC-200 pump controller (control board PC-200-MB). Update with the
PC-200 Service Tool over the service port; settings are kept.

## 3.2.0 (2024-03-04)

### New
- Dry-run delay (E01) adjustable from 5 to 120 s (was fixed at 30 s).
- SERVICE mode shows the number of starts in the last hour.

### Fixed
- E07 (motor overtemperature) was not shown when the thermistor wires on X2:4/X2:5 were
  broken; an open circuit now trips the thermal shutdown as documented.
- E04 (sensor fault) could appear for 1 s at power-up while the 24 V sensor supply settled.
- The FLOW reading froze at the last value after a STOP in MAN mode.

## 3.1.4 (2023-10-17)

### Fixed
- E08 (overcurrent) tripped on motors with a high starting current; the first 500 ms
  after switching K1 are now ignored.
- After three E07 trips within one hour the lock-out was not cleared by switching off
  and on again.

## 3.1.0 (2023-05-22)

### New
- Restart delay of 20 min after E07, so that the motor winding can cool down.
- Error log of the last ten codes (E01 to E09).

### Known issues
- Controllers with board revision B may show E09 after a firmware update; press RESET
  for 10 s to restore the factory settings.
"""

XFIG_LICENSE = """\
xfig-howto.pdf - source and licence note
========================================

File:    xfig-howto.pdf (24 pages, 163855 bytes), copied byte for byte from
         ../shared/corpus/xfig-howto.pdf (sha256 807fa165ab27848bcf29b7869729af40
         0d5fa8e669f8ce92c34be8a0532cddb5)
Title:   "Using XFig"
Author:  Peter Hiscocks, Department of Electrical and Computer Engineering,
         Ryerson Polytechnic University, phiscock@ee.ryerson.ca (August 17, 2001)
Source:  Debian package xfig-doc 1:3.2.8b-2 (bookworm), file
         usr/share/doc/xfig/xfig-howto.pdf. Upstream it is part of the xfig
         distribution (Doc/xfig-howto.pdf), https://sourceforge.net/projects/mcj/

What the PDF itself says
------------------------
Nothing about licensing. Checked with PyMuPDF: no page contains "copyright",
"licence"/"license" or "permission"; the metadata names only the producer
(GPL Ghostscript 9.27). The schematic on page 14 has the title block
"Ryerson Polytechnic University ... Motor Speed Controller ... Peter Hiscocks,
October 30, 1997".

Licence
-------
The document is distributed with xfig under the xfig licence, a permissive,
MIT-like licence. This is what the project's corpus README
(../shared/corpus/README.md) records for this file, citing Debian's
debian/copyright for xfig. The xfig files carry the notice below (quoted verbatim
from an xfig 3.2.x source file header; the copyright lines differ from file to
file):

    FIG : Facility for Interactive Generation of figures
    Copyright (c) 1985-1988 by Supoj Sutanthavibul
    Parts Copyright (c) 1989-2002 by Brian V. Smith
    Parts Copyright (c) 1991 by Paul King
    Parts Copyright (c) 1995 by C. Blanc and C. Schlick

    Any party obtaining a copy of these files is granted, free of charge, a
    full and unrestricted irrevocable, world-wide, paid up, royalty-free,
    nonexclusive right and license to deal in this software and documentation
    files (the "Software"), including without limitation the rights to use,
    copy, modify, merge, publish distribute, sublicense and/or sell copies of
    the Software, and to permit persons who receive copies from any such
    party to do so, with the only requirement being that the above copyright
    and this permission notice remain intact.

Not verified offline: the exact wording of Debian's debian/copyright for xfig,
and whether it names Peter Hiscocks as copyright holder of the howto. Before
the library is published outside the project, compare this note with
/usr/share/doc/xfig-doc/copyright from the xfig-doc package.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: data/manuals)")
    ap.add_argument("--no-xfig", action="store_true", help="do not copy the real xfig-howto.pdf")
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    (out / "pump-controller-manual.pdf").write_bytes(build_manual())
    (out / "quick-start-card.png").write_bytes(png_bytes(make_quick_start_card()))
    (out / "release-notes.md").write_text(RELEASE_NOTES, encoding="utf-8")
    if not args.no_xfig:
        if XFIG_SRC.exists():
            shutil.copyfile(XFIG_SRC, out / "xfig-howto.pdf")
            (out / "LICENSE-xfig-howto.txt").write_text(XFIG_LICENSE, encoding="utf-8")
        else:
            print(f"note: {XFIG_SRC} not found; xfig-howto.pdf not copied", file=sys.stderr)
    for f in sorted(out.iterdir()):
        print(f"{f.stat().st_size:>9}  {f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
