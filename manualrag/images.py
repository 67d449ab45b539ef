"""Decoding untrusted images: the one place that says why an image cannot be used.

Loose images in the library (``index``) and query images (``query --image``) are decoded with the same
decoders and the same guards, so they fail with the same one-line reasons: a decompression bomb (Pillow's
warning is an error here), a file that is not an image, a corrupt or truncated one, an oversized PNG text
chunk."""

from __future__ import annotations

import io
import re
import warnings

from PIL import Image, ImageOps

# Pillow decoders for the image types we ingest (JPEG also opens camera multi-picture files)
IMAGE_FORMATS = ["PNG", "JPEG", "TIFF", "WEBP", "BMP", "GIF"]

_WS = re.compile(r"\s+")


def _short(x: object, n: int = 160) -> str:
    s = _WS.sub(" ", str(x)).strip()
    return s if len(s) <= n else s[: n - 1] + "…"


class ImageTooLarge(Image.DecompressionBombError):
    """A frame over Pillow's pixel limit (a multi-frame file is checked frame by frame)."""


def check_pixels(frame: Image.Image, what: str = "image") -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit and frame.width * frame.height > limit:
        raise ImageTooLarge(f"{what} has {frame.width * frame.height} pixels, over the limit of {limit}")


def decode_problem(exc: BaseException) -> str:
    """The one-line reason an image could not be decoded, from what Pillow (or a guard) raised."""
    if isinstance(exc, (Image.DecompressionBombWarning, Image.DecompressionBombError)):
        return f"image too large (decompression-bomb guard): {_short(exc)}"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not a readable image (unknown or corrupt format)"
    if isinstance(exc, ValueError):
        if "MAX_TEXT" in str(exc):  # a zTXt/iTXt bomb or too much text metadata: refused, like a pixel bomb
            return f"image refused: oversized PNG text chunk ({_short(exc)})"
        return f"corrupt or truncated image: {_short(exc)}"
    if isinstance(exc, (OSError, SyntaxError, EOFError)):
        return f"corrupt or truncated image: {_short(exc)}"
    return f"corrupt image ({type(exc).__name__}: {_short(exc)})"


def open_image(data: bytes) -> Image.Image:
    """Open ``data`` with our decoders; a decompression-bomb warning raises. Pixels are not loaded yet."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)


def decode_first_frame(data: bytes) -> Image.Image:
    """The first frame, loaded; raises ValueError(reason) with ``decode_problem``'s one-line reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = open_image(data)
            check_pixels(img)
            img.load()
            img = ImageOps.exif_transpose(img)  # a phone's photo is stored sideways, with an EXIF turn
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises TypeError, IndexError, zlib.error... on broken files
        raise ValueError(decode_problem(exc)) from None
    return img
