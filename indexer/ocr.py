"""OCR of figure crops and scanned pages with Tesseract (through pytesseract).

One tesseract process per image, several in parallel (a thread pool: each thread only waits for its
child process). Each tesseract process gets ``OMP_THREAD_LIMIT=1`` in its own environment (the Debian build
uses OpenMP and over-subscribes the cores 3-5x otherwise); our process's environment is left alone, since
torch's OpenMP runtime would read it too (see ``manualrag.encoder.align_threads_with_omp_limit``). The image
goes to tesseract on stdin and the TSV comes back on stdout: no temporary files. Results are cached by the sha256 of the image bytes, in memory
and optionally in a SQLite table (JSON values, never pickle).

Orientation (``ocr.orientation``): text turned 90/180/270 degrees (a page scanned sideways, a landscape
diagram on a portrait page) reads as garbage. Every image is read upright first; only a weak read
(few confident words) pays for tesseract's orientation detection (OSD, ``--psm 0``), and only when OSD
is unsure are the other three rotations read and the best kept. The chosen rotation is recorded and the
word boxes are mapped back to the pixels of the image as it was passed in.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import sqlite3
import subprocess
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from manualrag.errors import ManualragError

log = logging.getLogger(__name__)

WordBox = tuple[int, int, int, int]  # x0, y0, x1, y1 in the original image's pixels
# decoders allowed for the crops we OCR (our own renders: PNG; callers may pass JPEG or TIFF frames)
_IMAGE_FORMATS = ["PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP"]
# share of strongly coloured pixels above which an image is read with local (Sauvola) thresholding
_COLOURFUL_SHARE = 0.15
_CACHE_TABLE = "ocr_cache"
_SMALL_TEXT_PX = 16.0  # median word box height below which tesseract misreads (screenshots at 96 dpi)
_GOOD_TEXT_PX = 24.0  # ... and the height it reads best (capitals ~20-30 px)
_MAX_UPSCALE = 4.0
ROTATIONS = (0, 90, 180, 270)
# OSD's orientation_conf from which its answer is taken as it is. Measured on the sample manual's pages
# and wiring diagram (200 dpi, all four rotations): right answers scored 3.2-17 on pages and diagrams,
# while on small crops (a few labels) OSD either fails ("too few characters") or answers below ~1.5,
# sometimes 180 degrees wrong.
_OSD_SURE = 2.0
_OSD_AXIS = 0.5  # from this confidence OSD's axis (0/180 vs 90/270) is trusted, its direction not
_OSD_CONFIG = "--psm 0 -c min_characters_to_try=20"  # default 50: small crops fail; 20 halves page time
# an upright read this good needs no orientation check: most words confident and made of letters/digits
_UPRIGHT_CONF = 80.0
_UPRIGHT_SHARE = 0.6
# another rotation must read this much better than a (weak) upright read to be chosen: upside-down
# labels read as confident nonsense ("SNIVIN" for MAINS), 1.15x below the right read on a small crop
_TURN_MARGIN = 1.1


class OcrUnavailableError(ManualragError):
    """Tesseract (or a requested language pack) is not installed."""


@dataclass
class OcrResult:
    """Words read from one image. Boxes are in the pixels of the image that was passed in."""

    text: str  # lines joined by "\n", words by " "
    words: list[tuple[str, float, WordBox]] = field(default_factory=list)  # (word, confidence, box)
    mean_conf: float = 0.0
    # paragraphs: (text, box), grouped from tesseract's block/paragraph/line numbers and line geometry
    blocks: list[tuple[str, WordBox]] = field(default_factory=list)
    # degrees (0/90/180/270) the image was turned clockwise to read it upright; the text is in upright
    # reading order, the boxes are still in the pixels of the image as passed in
    rotation: int = 0

    def to_json(self) -> str:
        return json.dumps(
            {
                "text": self.text,
                "words": [[w, c, list(b)] for w, c, b in self.words],
                "mean_conf": self.mean_conf,
                "blocks": [[t, list(b)] for t, b in self.blocks],
                "rotation": self.rotation,
            }
        )

    @classmethod
    def from_json(cls, raw: str) -> OcrResult:
        d = json.loads(raw)
        return cls(
            text=d["text"],
            words=[(w, float(c), tuple(b)) for w, c, b in d["words"]],  # type: ignore[misc]
            mean_conf=float(d["mean_conf"]),
            blocks=[(t, tuple(b)) for t, b in d.get("blocks", [])],  # type: ignore[misc]
            rotation=int(d.get("rotation", 0)),
        )


class TesseractFailed(Exception):
    """A tesseract run exited non-zero (its stderr is the message)."""


def tesseract_env() -> dict[str, str]:
    """The environment of a tesseract process: ours plus OMP_THREAD_LIMIT=1 (one thread per process; we run
    one process per core). Given to the child only, never written into ``os.environ``."""
    return {**os.environ, "OMP_THREAD_LIMIT": "1"}


def _run(img: Image.Image, args: list[str], timeout_s: float) -> str:
    """``tesseract stdin stdout ARGS`` on ``img`` (sent as PNG), with our environment for the child; its
    stdout. Raises ``subprocess.TimeoutExpired`` (the process is killed) or :class:`TesseractFailed`."""
    import pytesseract

    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    cmd = [pytesseract.pytesseract.tesseract_cmd, "stdin", "stdout", *args]
    try:
        proc = subprocess.run(
            cmd, input=buf.getvalue(), capture_output=True, timeout=timeout_s, env=tesseract_env()
        )
    except OSError as exc:
        raise TesseractFailed(f"cannot run {cmd[0]}: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise TesseractFailed(f"exit {proc.returncode}: {err[-1] if err else 'no message'}")
    return proc.stdout.decode("utf-8", "replace")


def run_tesseract(
    img: Image.Image, languages: str, args: list[str], timeout_s: float
) -> dict[str, list[Any]]:
    """``tesseract stdin stdout -l LANG ARGS tsv`` on ``img``: pytesseract's
    ``image_to_data(output_type=DICT)`` result, without its temporary files (see :func:`_run`)."""
    import pytesseract

    out = _run(img, ["-l", languages, *args, "tsv"], timeout_s)
    return pytesseract.pytesseract.file_to_dict(out, "\t", -1)


def run_osd(img: Image.Image, timeout_s: float) -> dict[str, Any]:
    """tesseract's orientation and script detection (``-l osd`` + :data:`_OSD_CONFIG`) on ``img``:
    pytesseract's ``image_to_osd(output_type=DICT)`` result, in our child environment (see :func:`_run`)."""
    import pytesseract

    out = _run(img, ["-l", "osd", *_OSD_CONFIG.split()], timeout_s)
    return pytesseract.pytesseract.osd_to_dict(out)


def _check_tesseract(languages: str, key: str = "ocr.languages") -> None:
    import pytesseract

    try:
        version = pytesseract.get_tesseract_version()
        installed = set(pytesseract.get_languages(config=""))
    except (pytesseract.TesseractNotFoundError, OSError) as exc:
        raise OcrUnavailableError(
            "tesseract is not installed or not on PATH (install the tesseract-ocr package, "
            "or set ocr.enabled: false to index without OCR)"
        ) from exc
    missing = [lang for lang in languages.split("+") if lang and lang not in installed]
    if missing:
        raise OcrUnavailableError(
            f"tesseract {version} lacks the language data {', '.join(missing)} needed by {key} "
            f"(installed: {', '.join(sorted(installed)) or 'none'}; e.g. apt-get install "
            f"tesseract-ocr-{missing[0]})"
        )


class OcrEngine:
    """Runs tesseract on many images in parallel, with a digest-keyed cache."""

    def __init__(self, cfg: dict[str, Any], cache_path: Path | None = None):
        o = cfg["ocr"]
        self.languages: str = o["languages"]
        self.psm: int = int(o["psm"])
        self.min_conf: float = float(o["min_confidence"])
        self.min_side: int = int(o["min_side"])
        self.max_side: int = int(o["max_side"])
        self.binarize: str = o.get("binarize", "auto")
        self.timeout_s: int = int(o.get("timeout_s", 120))
        self.workers: int = int(o["workers"]) or (os.cpu_count() or 1)
        self.orientation: bool = bool(o.get("orientation", True))
        _check_tesseract(self.languages)
        if self.orientation:
            _check_tesseract("osd", "ocr.orientation (or set it to false)")
        settings = [self.languages, self.psm, self.min_conf, self.min_side, self.max_side, self.binarize]
        if self.orientation:
            settings.append("orient")
        self._settings_key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:12]
        self._memory: dict[str, OcrResult] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ocr")
        self._db: sqlite3.Connection | None = None
        if cache_path is not None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(cache_path), check_same_thread=False, timeout=30)
            with contextlib.suppress(sqlite3.Error):  # several extraction workers may share the file
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {_CACHE_TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            self._db.commit()
        self.calls = 0  # images read (cache misses)
        self.seconds = 0.0  # summed wall time of those reads, orientation work included
        self.osd_calls = 0  # orientation detections run (weak upright reads)
        self.osd_seconds = 0.0  # their wall time
        self.orient_seconds = 0.0  # all orientation work: OSD + reads of other rotations
        self.turned = 0  # images read at a rotation other than 0

    # ------------------------------------------------------------------------------------------- public
    def ocr(self, images: list[tuple[str, bytes]]) -> dict[str, OcrResult]:
        """OCR each ``(digest, image bytes)``; returns digest -> result. Cached digests are not re-read."""
        out: dict[str, OcrResult] = {}
        todo: dict[str, bytes] = {}
        names: dict[str, str] = {}
        for digest, data in images:
            if digest in out or digest in todo:
                continue
            names[digest] = self._cache_id(digest, data)
            hit = self._cached(names[digest])
            if hit is not None:
                out[digest] = hit
            else:
                todo[digest] = data
        if todo:
            futures = {d: self._pool.submit(self._run_one_safe, d, data) for d, data in todo.items()}
            for digest, fut in futures.items():
                res = fut.result()
                out[digest] = res
                self._store(names[digest], res)
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> OcrEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------- cache
    def _key(self, digest: str) -> str:
        return f"{digest}:{self._settings_key}"

    def _cached(self, digest: str) -> OcrResult | None:
        with self._lock:
            hit = self._memory.get(digest)
            if hit is not None or self._db is None:
                return hit
            row = self._db.execute(
                f"SELECT value FROM {_CACHE_TABLE} WHERE key = ?", (self._key(digest),)
            ).fetchone()
        if row is None:
            return None
        res = OcrResult.from_json(row[0])
        with self._lock:
            self._memory[digest] = res
        return res

    def _store(self, digest: str, res: OcrResult) -> None:
        with self._lock:
            self._memory[digest] = res
            if self._db is not None:
                self._db.execute(
                    f"INSERT OR REPLACE INTO {_CACHE_TABLE} (key, value) VALUES (?, ?)",
                    (self._key(digest), res.to_json()),
                )
                self._db.commit()

    # ------------------------------------------------------------------------------------------- work
    def _run_one_safe(self, digest: str, data: bytes) -> OcrResult:
        try:
            return self._run_one(digest, data)
        except Exception as exc:  # noqa: BLE001 - one bad image must not fail the document
            log.warning("OCR failed for image %s: %s", digest[:12], exc)
            return OcrResult(text="")

    def _run_one(self, digest: str, data: bytes) -> OcrResult:
        """OCR one image (upright, or turned the way its text reads: see the module doc)."""
        t0 = time.perf_counter()
        try:
            base, scale, size = self._prepare(data)
        except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            log.warning("OCR skipped for image %s: cannot decode it (%s)", digest[:12], exc)
            return OcrResult(text="")
        sauvola = self._use_sauvola(base)
        grey = base.convert("L")
        res = self._read(digest, grey, scale, sauvola)
        if self.orientation and not reads_upright(res):
            res = self._orient(digest, grey, scale, sauvola, res, size)
        with self._lock:
            self.calls += 1
            self.seconds += time.perf_counter() - t0
        return res

    def _read(self, digest: str, grey: Image.Image, scale: float, sauvola: bool) -> OcrResult:
        """One read; small text (median word height under ``_SMALL_TEXT_PX`` after the first scaling) is
        read a second time enlarged to about ``_GOOD_TEXT_PX``, and the better read kept."""
        res, median_h = self._tesseract(digest, grey, scale, sauvola)
        return self._enlarged(digest, grey, scale, sauvola, res, median_h)

    def _enlarged(
        self, digest: str, grey: Image.Image, scale: float, sauvola: bool, res: OcrResult, median_h: float
    ) -> OcrResult:
        """``res`` (a first read of ``grey``), or a read of ``grey`` enlarged when its text is small and the
        enlarged read is better."""
        if res.words and median_h < _SMALL_TEXT_PX:
            factor = min(_GOOD_TEXT_PX / max(median_h, 1.0), _MAX_UPSCALE / scale)
            if factor > 1.2 and max(grey.size) * factor <= 2 * self.max_side:
                size = (round(grey.width * factor), round(grey.height * factor))
                big = grey.resize(size, Image.Resampling.LANCZOS)
                res2, _ = self._tesseract(digest, big, scale * factor, sauvola)
                if _score(res2) > _score(res):
                    res = res2
        return res

    def _orient(
        self,
        digest: str,
        grey: Image.Image,
        scale: float,
        sauvola: bool,
        upright: OcrResult,
        size: tuple[int, int],
    ) -> OcrResult:
        """A weak upright read: ask OSD which way the text runs and read the image that way. When OSD is
        unsure, compare reads: of its answer and the opposite one (on small crops OSD's axis was right
        in every case measured from a confidence of ~0.5, its direction often 180 degrees off), or of
        all four rotations when it is less sure than that or finds too few characters. Another rotation
        replaces the upright read only when it reads clearly better. An image that read no word at all
        upright is taken as a picture without text (no OSD)."""
        if not upright.words:
            return upright
        t0 = time.perf_counter()
        rotation, conf = self._osd(digest, grey)
        reads = {0: upright}
        if rotation is not None and conf >= _OSD_SURE:
            candidates: tuple[int, ...] = (rotation,)
        elif rotation is not None and conf >= _OSD_AXIS:
            candidates = (rotation, (rotation + 180) % 360)
        else:
            candidates = ROTATIONS
        first: dict[int, tuple[OcrResult, float]] = {}  # quick reads (no enlarged retry) to compare
        for r in candidates:
            if r not in reads:
                first[r] = self._tesseract(digest, turn(grey, r), scale, sauvola)
                reads[r] = first[r][0]
        if len(candidates) == 1:
            chosen = candidates[0]
        else:
            chosen = max(reads, key=lambda r: (_quality(reads[r]), -r))
            best = reads[chosen]
            if _quality(best) < _TURN_MARGIN * _quality(upright) or best.mean_conf < upright.mean_conf:
                chosen = 0
        if chosen:
            turned = turn(grey, chosen)
            reads[chosen] = self._enlarged(digest, turned, scale, sauvola, *first[chosen])
        log.debug(
            "orientation of image %s: OSD %s (conf %.2f), read %s, chose %d",
            digest[:12],
            rotation,
            conf,
            sorted(reads),
            chosen,
        )
        with self._lock:
            self.orient_seconds += time.perf_counter() - t0
            self.turned += bool(chosen)
        if not chosen:
            return upright
        return unturn_boxes(reads[chosen], chosen, size)

    def _osd(self, digest: str, grey: Image.Image) -> tuple[int | None, float]:
        """tesseract OSD: (clockwise degrees that make the text upright, confidence), or (None, 0.0)
        when it finds too few characters (or fails)."""

        t0 = time.perf_counter()
        try:
            out = run_osd(grey, self.timeout_s)
            rotation, conf = int(out["rotate"]) % 360, float(out["orientation_conf"])
        except (subprocess.TimeoutExpired, TesseractFailed, KeyError, ValueError) as exc:
            log.debug("OSD found no orientation for image %s: %s", digest[:12], _last_line(exc))
            rotation, conf = None, 0.0
        with self._lock:
            self.osd_calls += 1
            self.osd_seconds += time.perf_counter() - t0
        if rotation not in ROTATIONS:
            return None, 0.0
        return rotation, conf

    def _tesseract(
        self, digest: str, img: Image.Image, scale: float, sauvola: bool
    ) -> tuple[OcrResult, float]:
        """One tesseract run; returns the result (boxes in original pixels) and the median word height in
        the pixels tesseract saw."""
        args = ["--psm", str(self.psm)] + (["-c", "thresholding_method=2"] if sauvola else [])
        try:
            out = run_tesseract(img, self.languages, args, self.timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("OCR of image %s gave up after %d s", digest[:12], self.timeout_s)
            return OcrResult(text=""), 0.0
        except TesseractFailed as exc:
            log.warning("tesseract failed on image %s: %s", digest[:12], exc)
            return OcrResult(text=""), 0.0
        res = _parse(out, scale, self.min_conf)
        heights = sorted(b[3] - b[1] for _, _, b in res.words)
        median = heights[len(heights) // 2] * scale if heights else 0.0
        return res, median

    def _prepare(self, data: bytes) -> tuple[Image.Image, float, tuple[int, int]]:
        """Decode, and scale so the longer side lies in [min_side, max_side] (a long strip is scaled down
        only as far as its shorter side stays min_side); returns (image, scale, the decoded image's size)."""
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data), formats=_IMAGE_FORMATS)
            img.load()
        if img.mode in ("RGBA", "LA", "P", "PA"):  # flatten transparency onto white
            rgba = img.convert("RGBA")
            bg = Image.new("RGB", rgba.size, (255, 255, 255))
            bg.paste(rgba, mask=rgba.getchannel("A"))
            img = bg
        elif img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        size = img.size
        scale = self._scale(size)
        if abs(scale - 1.0) > 0.01:
            scaled = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            img = img.resize(scaled, Image.Resampling.LANCZOS)
        return img, scale, size

    def _scale(self, size: tuple[int, int]) -> float:
        """The factor an image of ``size`` is scaled by before OCR (see :meth:`_prepare`)."""
        longer, shorter = max(size), max(1, min(size))
        if longer < self.min_side:
            return min(self.min_side / longer, 4.0)  # beyond 4x only blur is added
        if longer > self.max_side:
            # not below min_side on the shorter side (or its own size): a long strip (a terminal row, a
            # wiring strip 20000 x 200) scaled by its length alone leaves its text a few pixels tall; at most
            # 4 x max_side^2 pixels all the same (tesseract's time grows with them)
            scale = max(self.max_side / longer, min(1.0, self.min_side / shorter))
            cap = 2 * self.max_side / (longer * shorter) ** 0.5
            return min(scale, cap)
        return 1.0

    def _cache_id(self, digest: str, data: bytes) -> str:
        """The image's name in the cache: its digest, marked for a long strip (strips are read at a larger
        scale than the cache entries made before that rule, which are not reused)."""
        try:
            with Image.open(io.BytesIO(data), formats=_IMAGE_FORMATS) as im:  # the header only
                size = im.size
        except Exception:  # noqa: BLE001 - _prepare says why it cannot be read
            return digest
        longer = max(size)
        strip = longer > self.max_side and self._scale(size) > self.max_side / longer + 1e-9
        return f"{digest}:strip" if strip else digest

    def _use_sauvola(self, img: Image.Image) -> bool:
        if self.binarize == "sauvola":
            return True
        if self.binarize == "otsu" or img.mode != "RGB":
            return False
        return _colourful_share(img) >= _COLOURFUL_SHARE


def _colourful_share(img: Image.Image) -> float:
    """Share of pixels with strong saturation (text on coloured cells defeats global thresholding)."""
    import numpy as np

    small = img.copy()
    small.thumbnail((200, 200))
    hsv = np.asarray(small.convert("HSV"))
    if hsv.size == 0:
        return 0.0
    return float(((hsv[..., 1] > 90) & (hsv[..., 2] > 60)).mean())


# clockwise turns as Pillow transposes (Pillow's ROTATE_n turns counter-clockwise)
_TURN = {
    90: Image.Transpose.ROTATE_270,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_90,
}


def turn(img: Image.Image, rotation: int) -> Image.Image:
    """``img`` turned ``rotation`` degrees clockwise (0/90/180/270)."""
    return img.transpose(_TURN[rotation]) if rotation else img


def map_box_back(box: WordBox, rotation: int, size: tuple[int, int]) -> WordBox:
    """A box in the pixels of an image turned ``rotation`` degrees clockwise, in the pixels of the image
    before the turn (whose size is ``size``)."""
    x0, y0, x1, y1 = box
    w, h = size
    if rotation == 90:
        return (y0, h - x1, y1, h - x0)
    if rotation == 180:
        return (w - x1, h - y1, w - x0, h - y0)
    if rotation == 270:
        return (w - y1, x0, w - y0, x1)
    return box


def unturn_boxes(res: OcrResult, rotation: int, size: tuple[int, int]) -> OcrResult:
    """A read of the image turned ``rotation`` degrees clockwise, with its boxes in the pixels of the
    image before the turn (``size``)."""
    return OcrResult(
        text=res.text,
        words=[(w, c, map_box_back(b, rotation, size)) for w, c, b in res.words],
        mean_conf=res.mean_conf,
        blocks=[(t, map_box_back(b, rotation, size)) for t, b in res.blocks],
        rotation=rotation,
    )


def _alnum(word: str) -> int:
    return sum(ch.isalnum() for ch in word)


def _quality(res: OcrResult) -> float:
    """Confidence-weighted letters and digits of the words that have two or more: garbage read from
    turned text is mostly punctuation and single characters."""
    return sum(c * n for w, c, _ in res.words if (n := _alnum(w)) >= 2)


def reads_upright(res: OcrResult) -> bool:
    """A read that proves the text upright: three or more words, most of them confident words of letters
    or digits, and a high mean confidence (turned text reads as a few unsure fragments)."""
    words = [(w, c) for w, c, _ in res.words if _alnum(w) >= 2]
    if len(words) < 3:
        return False
    good = sum(1 for _, c in words if c >= _UPRIGHT_CONF)
    return good >= _UPRIGHT_SHARE * len(words) and res.mean_conf >= _UPRIGHT_CONF


def _last_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1][:160] if lines else type(exc).__name__


def _score(res: OcrResult) -> float:
    """How much was read, and how surely: confidence-weighted characters."""
    return sum(c * len(w) for w, c, _ in res.words)


def _parse(d: dict[str, list[Any]], scale: float, min_conf: float) -> OcrResult:
    """tesseract TSV (as dict) -> words (in original pixels), lines, paragraphs."""
    lines: dict[tuple[int, int, int], list[tuple[str, float, WordBox]]] = {}
    for i, raw in enumerate(d["text"]):
        word = (raw or "").strip()
        if not word:
            continue
        conf = float(d["conf"][i])
        if conf < min_conf:
            continue
        x, y, w, h = (int(d[k][i]) for k in ("left", "top", "width", "height"))
        box = (round(x / scale), round(y / scale), round((x + w) / scale), round((y + h) / scale))
        key = (int(d["block_num"][i]), int(d["par_num"][i]), int(d["line_num"][i]))
        lines.setdefault(key, []).append((word, conf, box))
    words = [w for ws in lines.values() for w in ws]
    if not words:
        return OcrResult(text="")
    line_list = [
        (" ".join(w for w, _, _ in ws), _union([b for _, _, b in ws]), key) for key, ws in lines.items()
    ]
    text = "\n".join(t for t, _, _ in line_list)
    mean_conf = sum(c for _, c, _ in words) / len(words)
    return OcrResult(text=text, words=words, mean_conf=round(mean_conf, 1), blocks=_paragraphs(line_list))


_NOISE_SHARE = 0.35  # a read with fewer word-like tokens than this share is mostly noise (a photo's texture)


def _core(token: str) -> str:
    """The token's letters and digits, or "" when they are not most of it ("=P", "c=", "\\S")."""
    core = "".join(ch for ch in token if ch.isalnum())
    return core if len(core) >= 0.6 * len(token) else ""


def _wordlike(token: str) -> bool:
    """A token that may be a word, a number or a label: 3+ letters/digits, or any digit ("1", "A0")."""
    core = _core(token)
    return len(core) >= 3 or any(ch.isdigit() for ch in core)


def _word(token: str) -> bool:
    """What is kept of a noisy read: 3+ letters/digits, or 2+ with a digit ("U07", "24")."""
    core = _core(token)
    return len(core) >= 3 or (len(core) >= 2 and any(ch.isdigit() for ch in core))


def denoise(text: str) -> str:
    """OCR text of a picture without the noise tesseract reads in its texture: when fewer than
    ``_NOISE_SHARE`` of the tokens are word-like (a photo, mostly), only words and numbers are kept (a
    board's printed "VILT2 U07" stays, "Za \\= i, | hy" goes); a read that is mostly words (a diagram's
    labels, its short ones such as "L N PE" included) is returned as it is."""
    tokens = text.split()
    if not tokens or sum(map(_wordlike, tokens)) >= _NOISE_SHARE * len(tokens):
        return text
    lines = (" ".join(t for t in line.split() if _word(t)) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def _union(boxes: list[WordBox]) -> WordBox:
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def _paragraphs(lines: list[tuple[str, WordBox, tuple[int, int, int]]]) -> list[tuple[str, WordBox]]:
    """Group lines into paragraphs: same tesseract paragraph, or (sparse modes, where every line is its
    own paragraph) the next line directly below with overlapping horizontal extent."""
    paras: list[tuple[list[str], WordBox, WordBox, tuple[int, int]]] = []  # texts, box, last line, key
    for text, box, (blk, par, _) in sorted(lines, key=lambda t: (t[1][1], t[1][0])):
        height = max(1, box[3] - box[1])
        for i in range(len(paras) - 1, max(-1, len(paras) - 12), -1):  # open paragraphs, newest first
            texts, pbox, last, pkey = paras[i]
            gap = box[1] - last[3]
            overlap = min(box[2], last[2]) - max(box[0], last[0])
            if overlap > 0 and (pkey == (blk, par) or -height // 2 <= gap <= 0.9 * height):
                texts.append(text)
                paras[i] = (texts, _union([pbox, box]), box, (blk, par))
                break
        else:
            paras.append(([text], box, box, (blk, par)))
    return [("\n".join(t), b) for t, b, _, _ in paras]
