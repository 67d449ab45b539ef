"""Plain data passed between the indexer's stages (extract -> chunk -> embed -> store).

Everything here is JSON-serialisable through ``to_dict``/``from_dict`` so a document can travel
from an isolated extraction worker to the parent process without pickle.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field, fields
from typing import Any

BBox = tuple[float, float, float, float]  # x0, y0, x1, y1 in PDF points (pixels for loose images)

FIGURE_KINDS = ("raster", "vector", "scan", "symbol")


@dataclass
class TextBlock:
    """A block of text on one page, in reading order."""

    text: str
    page: int  # 1-based
    bbox: BBox
    heading: str = ""  # heading path, " > " joined ("3 Printing > 3.2 Setup")
    font_size: float = 0.0
    bold: bool = False
    ocr: bool = False  # text that came from OCR of a scanned page / loose image
    suspect: str | None = None  # why a reader cannot see it: invisible|white|offpage|tiny


@dataclass
class Figure:
    """A figure: an embedded image, a vector drawing, a symbol or a scanned page."""

    digest: str  # content identity, names the crop file: sha256 of the PNG crop, or MuPDF's MD5 of an embedded image
    kind: str  # raster | vector | scan | symbol
    pages: list[int]  # every page that shows it (1-based, sorted)
    bbox: BBox  # on the first page
    width: int  # crop size in pixels
    height: int
    dpi: float  # effective resolution on the page (pixels per inch of the page area)
    caption: str = ""  # "Figure 3: ..." line nearest above/below
    nearby_text: str = ""  # closest text blocks
    labels: list[str] = field(default_factory=list)  # PDF text inside the figure's area
    ocr_text: str = ""  # OCR of the pixels (words above the confidence threshold)
    heading: str = ""
    boilerplate: bool = False  # small image repeated on many pages (logo, bullet)
    quality: str = "ok"  # ok | low-res | tiny: why a hit may look poor
    # degrees (0/90/180/270) the crop was turned clockwise to make it upright (a landscape diagram on a
    # portrait page, a page scanned sideways); width/height are the upright crop's, bbox stays on the page
    rotation: int = 0
    png: bytes | None = None  # the crop, when kept in memory
    crop_path: str | None = None  # the crop, when written to disk (relative to the index dir)

    @property
    def label_text(self) -> str:
        """Everything written in or beside the figure, as one string (labels, OCR, caption)."""
        parts = [self.caption, " ".join(self.labels), self.ocr_text]
        return "\n".join(p for p in parts if p.strip())

    def to_dict(self, with_png: bool = True) -> dict[str, Any]:
        d = asdict(self)
        d["png"] = base64.b64encode(self.png).decode() if (with_png and self.png) else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Figure:
        d = dict(d)
        if d.get("png"):
            d["png"] = base64.b64decode(d["png"])
        d["bbox"] = tuple(d["bbox"])
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class PageInfo:
    number: int  # 1-based
    width: float
    height: float
    text_layer: bool  # has a usable (visible) text layer
    ocr: bool = False  # text came from OCR


@dataclass
class Document:
    """What extraction found in one file."""

    path: str  # relative to the library root, POSIX separators
    digest: str  # sha256 of the file bytes
    size: int
    mtime: float
    file_type: str  # pdf | image | text
    pages: list[PageInfo] = field(default_factory=list)
    blocks: list[TextBlock] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    boilerplate: list[Figure] = field(default_factory=list)  # one record each, not figures
    warnings: list[str] = field(default_factory=list)  # e.g. "repaired: broken xref"
    title: str = ""

    def to_dict(self, with_png: bool = True) -> dict[str, Any]:
        return {
            "path": self.path,
            "digest": self.digest,
            "size": self.size,
            "mtime": self.mtime,
            "file_type": self.file_type,
            "title": self.title,
            "pages": [asdict(p) for p in self.pages],
            "blocks": [asdict(b) for b in self.blocks],
            "figures": [f.to_dict(with_png) for f in self.figures],
            "boilerplate": [f.to_dict(with_png) for f in self.boilerplate],
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Document:
        return cls(
            path=d["path"],
            digest=d["digest"],
            size=d["size"],
            mtime=d["mtime"],
            file_type=d["file_type"],
            title=d.get("title", ""),
            pages=[PageInfo(**p) for p in d["pages"]],
            blocks=[TextBlock(**{**b, "bbox": tuple(b["bbox"])}) for b in d["blocks"]],
            figures=[Figure.from_dict(f) for f in d["figures"]],
            boilerplate=[Figure.from_dict(f) for f in d.get("boilerplate", [])],
            warnings=list(d.get("warnings", [])),
        )


@dataclass
class FileError:
    """A file that could not be (fully) processed: the run goes on without it."""

    path: str
    reason: str  # one line
    stage: str = "extract"


@dataclass
class Passage:
    """A parent passage (a text block or merged paragraph) that windows point to."""

    passage_id: str
    doc_path: str
    page: int
    bbox: BBox
    heading: str
    text: str
    suspect: str | None = None
    ocr: bool = False


@dataclass
class Window:
    """A short piece of a passage that fits the encoder's token limit."""

    window_id: str
    passage_id: str
    text: str
    n_tokens: int
