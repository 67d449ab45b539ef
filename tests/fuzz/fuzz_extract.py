"""Fuzzing of extraction in the isolated workers: Hypothesis draws mutations of seed PDFs and images
(bit flips, byte overwrites, deletions, insertions of random bytes and of PDF/PNG syntax, duplications,
truncations, splices of two seeds, PNG chunks re-checksummed so decoders read past them, a wrong file
suffix), writes each input to a file and sends it through a real ``WorkerPool`` (subprocesses with a
timeout and a memory limit), then runs what the parent does with a document: checks it, chunks it
and writes its rows into a scratch manifest.

The property: the parent never fails. Every input ends as a Document or as a one-line FileError; a worker
crash, hang or memory blow-up is such an error, and the pool replaces the worker. Any exception in the
parent fails the run (Hypothesis then shrinks the input and reports it).

    python -m tests.fuzz.fuzz_extract --seconds 600 [--workers 2] [--ocr] [--report out.json] [--dump-slow DIR]

The report names the slowest batch: the parent has no time limit, so a slow batch is a finding too (a
run of 60,000 letters in a text file held the parent 31 s: a regex quadratic in the run's length).

or through pytest (tests/fuzz/test_fuzz_extract.py, MANUALRAG_FUZZ_SECONDS, default 30).
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import random
import shutil
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from manualrag.config import DEFAULTS  # noqa: E402
from manualrag.images import decode_first_frame  # noqa: E402
from manualrag.indexer.chunk import make_passages, make_windows  # noqa: E402
from manualrag.indexer.worker import WorkerPool  # noqa: E402
from manualrag.manifest import Manifest  # noqa: E402
from manualrag.models import Document, FileError  # noqa: E402
from manualrag.terminal import one_line  # noqa: E402

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".gif"}
# parts of hostile file names: line breaks that would forge output lines, escapes, a forged error line
HOSTILE_NAME_PARTS = ["\n", "\r", "\u2028", "\u2029", "\x85", "\x1b[2J", "\nFAILED x.pdf: forged", " \u202e"]

PDF_TOKENS = [
    b" 0 obj",
    b"endobj",
    b"<<",
    b">>",
    b"[",
    b"]",
    b"(",
    b")",
    b"<",
    b">",
    b"stream\n",
    b"\nendstream",
    b"xref\n",
    b"trailer",
    b"startxref\n",
    b"%%EOF",
    b"/Length 999999999",
    b"/Length -1",
    b"/Count 2147483647",
    b"/Count -5",
    b"/Width 100000 /Height 100000",
    b"/Width 0",
    b"/BitsPerComponent 16",
    b"/Filter /FlateDecode",
    b"/Filter /LZWDecode",
    b"/Filter /DCTDecode",
    b"/Filter /JPXDecode",
    b"/Filter /JBIG2Decode",
    b"/Filter /CCITTFaxDecode",
    b"/Filter /RunLengthDecode",
    b"/Filter [/ASCIIHexDecode /FlateDecode]",
    b"/DecodeParms << /Predictor 15 /Columns 100000 >>",
    b"/Type /Page",
    b"/Type /Pages",
    b"/Kids [1 0 R]",
    b"/Parent 1 0 R",
    b"/Contents 1 0 R",
    b"/Resources << /XObject << /Im1 1 0 R >> >>",
    b"/Type /ObjStm /N 99999",
    b"/Encrypt << /V 5 /R 6 >>",
    b"/MediaBox [0 0 1e30 1e30]",
    b"/MediaBox [0 0 0 0]",
    b"/Rotate 45",
    b"9999999999999999999",
    b"-2147483649",
    b"1e308",
    b"NaN",
    b"/Subtype /Image",
    b"/Subtype /Type3",
    b"/FontMatrix [1e30 0 0 1e30 0 0]",
    b"BT /F1 1e20 Tf (x) Tj ET",
    b"q q q q q q q q",
    b"1 0 0 1 0 0 cm",
    b"/SMask 1 0 R",
    b"/ColorSpace /DeviceN",
    b"/ColorSpace [/Indexed /DeviceRGB 255 <00>]",
    b"/Outlines 1 0 R",
    b"/First 1 0 R /Last 1 0 R /Next 1 0 R",
    b"\xfe\xff\xd8\x00",
    b"/Title (\xfe\xff\xd8\x00\xdc\x00)",
]
IMAGE_TOKENS = [
    b"IHDR",
    b"IDAT",
    b"IEND",
    b"PLTE",
    b"tRNS",
    b"zTXt",
    b"iTXt",
    b"tEXt",
    b"acTL",
    b"fcTL",
    b"\xff\xd8\xff",
    b"\xff\xc0",
    b"\xff\xc2",
    b"\xff\xda",
    b"\xff\xd9",
    b"II*\x00",
    b"MM\x00*",
    b"GIF89a",
    b"RIFF",
    b"WEBPVP8 ",
    b"WEBPVP8L",
    b"BM",
    b"\xff\xff\xff\x7f",
    b"\x00\x00\x00\x00",
    b"\x7f\xff\xff\xff",
]
SUFFIXES = [".pdf", ".png", ".jpg", ".tif", ".gif", ".webp", ".bmp", ".md", ".txt"]


# ------------------------------------------------------------------------------------------------ seeds
def seed_inputs() -> list[tuple[str, bytes]]:
    """Small valid files of every kind we ingest, built here (deterministic)."""
    import pymupdf
    from PIL import Image

    from tests import helpers_pdf as h
    from tests import rel_helpers as rh

    out: list[tuple[str, bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="manualrag-fuzz-seeds-"))
    try:
        out.append((".pdf", rh.versioned_pdf("seed", pages=2, photo=True)))
        out.append((".pdf", h.simple_pdf_bytes()))
        out.append((".pdf", rh.many_pages_pdf(4)))
        out.append((".pdf", h.suspect_text_pdf(tmp / "s.pdf").read_bytes()))
        out.append((".pdf", h.encrypted_pdf(tmp / "e.pdf", "pw").read_bytes()))
        out.append((".pdf", h.figure_cases_pdf(tmp / "f.pdf").read_bytes()))
        doc = pymupdf.open()  # a JPEG image, a PNG with alpha (soft mask), an outline, a rotated page
        page = doc.new_page()
        jpg = io.BytesIO()
        Image.open(io.BytesIO(h.photo_png(160, 120))).save(jpg, format="JPEG", progressive=True)
        page.insert_image(pymupdf.Rect(72, 72, 232, 192), stream=jpg.getvalue())
        rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 128))
        page.insert_image(pymupdf.Rect(300, 72, 364, 136), stream=h.png_bytes(rgba))
        page.insert_text((72, 260), "Figure 1: Photo of the unit", fontsize=10)
        page.set_rotation(90)
        doc.set_toc([[1, "Chapter", 1]])
        out.append((".pdf", doc.tobytes(deflate=True, garbage=3, use_objstms=True)))
        doc.close()
        photo = Image.open(io.BytesIO(h.photo_png(120, 90)))
        for fmt, suffix, kw in (
            ("PNG", ".png", {}),
            ("PNG", ".png", {"mode": "P"}),
            ("PNG", ".png", {"mode": "I;16"}),
            ("PNG", ".png", {"mode": "RGBA", "interlace": True}),
            ("JPEG", ".jpg", {"progressive": True}),
            ("TIFF", ".tif", {"compression": "tiff_lzw", "frames": 3}),
            ("GIF", ".gif", {"frames": 2}),
            ("WEBP", ".webp", {"lossless": True}),
            ("WEBP", ".webp", {}),
            ("BMP", ".bmp", {"mode": "P"}),
        ):
            kw = dict(kw)
            mode = kw.pop("mode", "RGB")
            frames = kw.pop("frames", 1)
            img = photo.convert(mode) if mode != "I;16" else photo.convert("L").convert("I;16")
            buf = io.BytesIO()
            if frames > 1:
                extra = [img.rotate(90 * i) for i in range(1, frames)]
                img.save(buf, format=fmt, save_all=True, append_images=extra, **kw)
            else:
                img.save(buf, format=fmt, **kw)
            out.append((suffix, buf.getvalue()))
        out.append((".png", h.warning_triangle_png()))
        out.append((".md", rh.versioned_md("seed", sections=3)))
        # pathological repetitive text: one huge line of a few repeated words (issue 14 row 2)
        out.append((".md", b"# R\n\n" + b"lorem ipsum zzyzx " * 12_000))
        out.append((".txt", b"Torque 12 Nm. " * 2_000 + b"\n" + b"A" * 60_000))
        out.append((".txt", "Plain text manual.\n\nTorque: 12 Nm.\n".encode("utf-16")))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ------------------------------------------------------------------------------------------- mutations
def _fix_png_crcs(data: bytes) -> bytes:
    """Recompute the CRC of every PNG chunk, so a decoder reads past a mutated chunk instead of stopping."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, i = bytearray(data[:8]), 8
    while i + 8 <= len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        end = i + 8 + length
        if end + 4 > len(data):
            out += data[i:]
            break
        kind_body = data[i + 4 : end]
        out += data[i:end] + struct.pack(">I", zlib.crc32(kind_body))
        i = end + 4
    else:
        out += data[i:]
    return bytes(out)


def _set_png_size(data: bytes, width: int, height: int) -> bytes:
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or len(data) < 33:
        return data
    return _fix_png_crcs(data[:16] + struct.pack(">II", width, height) + data[24:])


class Case(tuple):
    """(suffix, bytes, ops) with a short repr: the seed index and the ops replay it."""

    def __repr__(self) -> str:
        import hashlib

        suffix, data, ops = self
        return f"Case(seed={ops[0]}, suffix={suffix!r}, ops={ops[1:]!r}, {len(data)} bytes sha256={hashlib.sha256(data).hexdigest()[:12]})"


@st.composite
def fuzz_case(draw, seeds: list[tuple[str, bytes]]) -> Case:
    """(suffix, bytes, the ops applied): one mutated seed."""
    idx = draw(st.integers(0, len(seeds) - 1))
    suffix, data = seeds[idx]
    buf = bytearray(data)
    ops: list[Any] = []
    pos = st.integers(0, 1 << 22)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(
            st.sampled_from(
                ["flip", "byte", "delete", "insert", "token", "dup", "truncate", "splice", "zero", "png_size"]
            )
        )
        n = len(buf) or 1
        if op == "flip":
            p, bit = draw(pos) % n, draw(st.integers(0, 7))
            if buf:
                buf[p] ^= 1 << bit
            ops.append((op, p, bit))
        elif op == "byte":
            p, v = (
                draw(pos) % n,
                draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0x20, 0x0A, 0x25, 0x28, 0x3C])),
            )
            if buf:
                buf[p] = v
            ops.append((op, p, v))
        elif op == "delete":
            p, ln = draw(pos) % n, draw(st.integers(1, 4096))
            del buf[p : p + ln]
            ops.append((op, p, ln))
        elif op == "insert":
            p, blob = draw(pos) % (n + 1), draw(st.binary(min_size=1, max_size=64))
            buf[p:p] = blob
            ops.append((op, p, len(blob)))
        elif op == "token":
            p = draw(pos) % (n + 1)
            tok = draw(st.sampled_from(PDF_TOKENS if suffix == ".pdf" else IMAGE_TOKENS + PDF_TOKENS[:8]))
            buf[p:p] = tok
            ops.append((op, p, tok))
        elif op == "dup":
            p, ln, dest = draw(pos) % n, draw(st.integers(1, 2048)), draw(pos) % (n + 1)
            buf[dest:dest] = buf[p : p + ln] * draw(st.integers(1, 4))
            ops.append((op, p, ln, dest))
        elif op == "truncate":
            p = draw(pos) % (n + 1)
            del buf[p:]
            ops.append((op, p))
        elif op == "splice":
            other = seeds[draw(st.integers(0, len(seeds) - 1))][1]
            p, q = draw(pos) % (n + 1), draw(pos) % (len(other) + 1)
            buf[p:] = other[q:]
            ops.append((op, p, q))
        elif op == "zero":
            p, ln = draw(pos) % n, draw(st.integers(1, 512))
            buf[p : p + ln] = bytes(len(buf[p : p + ln]))
            ops.append((op, p, ln))
        elif op == "png_size":
            w = draw(st.sampled_from([0, 1, 7, 65535, 1 << 16, 1 << 20, 1 << 31, 0xFFFFFFFF, 9500]))
            hgt = draw(st.sampled_from([0, 1, 7, 65535, 1 << 16, 1 << 20, 1 << 31, 0xFFFFFFFF, 9500]))
            buf = bytearray(_set_png_size(bytes(buf), w, hgt))
            ops.append((op, w, hgt))
    data = bytes(buf)
    if draw(st.booleans()):
        data = _fix_png_crcs(data)
    if draw(st.integers(0, 19)) == 0:
        suffix = draw(st.sampled_from(SUFFIXES))
        ops.append(("suffix", suffix))
    return Case((suffix, data, [idx, *ops]))


# ------------------------------------------------------------------------------------------------ runner
@dataclass
class Report:
    inputs: int = 0
    seconds: float = 0.0
    outcomes: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    examples: dict[str, str] = field(default_factory=dict)  # one full reason per class
    slowest: tuple[float, str] = (0.0, "")  # the slowest batch: seconds, its cases' ops

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "seconds": round(self.seconds, 1),
            "outcomes": dict(self.outcomes),
            "top_reasons": dict(self.reasons.most_common(25)),
            "failures": self.failures,
            "examples": self.examples,
            "slowest_batch": {"seconds": round(self.slowest[0], 1), "ops": self.slowest[1]},
        }


def _reason_class(reason: str) -> str:
    for key in ("timed out", "crashed", "killed", "out of memory", "did not start", "invalid result"):
        if key in reason:
            return key
    return reason.split(":")[0].split("(")[0].strip()[:60]


def _count_tokens(texts: list[str]) -> list[int]:
    return [len(t.split()) + 2 for t in texts]


SLOW_BATCH_S = 5.0  # a batch of small inputs takes well under a second


class Fuzzer:
    def __init__(
        self,
        workdir: Path,
        workers: int = 2,
        ocr: bool = False,
        timeout_s: int = 20,
        memory_mb: int = 1536,
        dump_slow: Path | None = None,
    ):
        self.workdir = workdir
        self.dump_slow = dump_slow
        self.index_dir = workdir / "index"
        self.inputs_dir = workdir / "inputs"
        self.index_dir.mkdir(parents=True, exist_ok=True)
        self.inputs_dir.mkdir(exist_ok=True)
        cfg = copy.deepcopy(DEFAULTS)
        cfg["ocr"]["enabled"] = ocr
        cfg["ocr"]["cache"] = str(workdir / "ocr.sqlite")
        cfg["passwords"] = ["pw"]
        cfg["isolation"].update(workers=workers, timeout_s=timeout_s, memory_mb=memory_mb)
        self.pool = WorkerPool(cfg, self.index_dir, n=workers)
        self.manifest = Manifest(self.index_dir / "index.sqlite")
        self.report = Report()
        self.seeds = seed_inputs()
        self._n = 0

    def close(self) -> None:
        self.pool.close()
        self.manifest.close()

    def check_batch(self, cases: list[tuple[str, bytes, list[Any]]]) -> None:
        """Extract a batch in the pool (several workers busy) and check every result in the parent."""
        items = []
        for suffix, data, ops in cases:
            self._n += 1
            # every fourth file name carries a hostile part (line breaks, escapes: issue 14 row 6)
            part = HOSTILE_NAME_PARTS[(self._n // 4) % len(HOSTILE_NAME_PARTS)] if self._n % 4 == 0 else ""
            rel = f"case{self._n % 64}{part}{suffix}"
            path = self.inputs_dir / rel
            path.write_bytes(data)
            items.append(((rel, ops), path, rel))
        t0 = time.monotonic()
        try:
            for (rel, ops), result, _ in self.pool.imap(items):
                self.report.inputs += 1
                self._check(rel, result, ops)
        except Exception as exc:  # the parent failed: this is what the fuzzer looks for
            msg = f"parent failed: {type(exc).__name__}: {exc}"
            self.report.failures.append(msg)
            raise AssertionError(msg) from exc
        took = time.monotonic() - t0
        if took > self.report.slowest[0]:
            self.report.slowest = (took, repr([ops for _, _, ops in cases])[:2000])
        if took > SLOW_BATCH_S and self.dump_slow:  # to run them again: the ops alone do not rebuild them
            d = self.dump_slow / f"batch{self._n}"
            d.mkdir(parents=True, exist_ok=True)
            for i, (suffix, data, _) in enumerate(cases):
                (d / f"{i}{suffix}").write_bytes(data)
        self.check_damaged_manifest(cases[0][2])
        if self._n % 512 < len(cases):  # keep the scratch folders small
            shutil.rmtree(self.index_dir / "crops", ignore_errors=True)

    def check_damaged_manifest(self, ops: list[Any]) -> None:
        """A copy of the scratch index.sqlite, damaged where the case's ops say (bytes zeroed, flipped or
        cut): reading it gives rows or an IndexCorruptError / ManualragError, never a raw sqlite3 error."""
        from manualrag.errors import ManualragError

        src = self.index_dir / "index.sqlite"
        self.manifest.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        data = bytearray(src.read_bytes())
        rnd = random.Random(repr(ops))
        for _ in range(rnd.randint(1, 4)):
            p = rnd.randrange(len(data))
            kind = rnd.choice(["zero", "flip", "cut", "garbage"])
            if kind == "zero":
                data[p : p + 512] = bytes(len(data[p : p + 512]))
            elif kind == "flip":
                data[p] ^= 1 << rnd.randrange(8)
            elif kind == "cut":
                del data[max(p, 100) :]
            else:
                data[p : p + 64] = rnd.randbytes(len(data[p : p + 64]))
        damaged = self.workdir / "damaged" / "index.sqlite"
        damaged.parent.mkdir(exist_ok=True)
        damaged.write_bytes(bytes(data))
        try:
            with Manifest(damaged, readonly=True) as m:
                m.documents()
                m.stats()
                m.match_lexical('"torque"', 5)
                self.report.outcomes["damaged manifest read"] += 1
        except ManualragError as exc:
            assert "\n" not in str(exc), exc
            self.report.outcomes["damaged manifest refused"] += 1

    def _check(self, rel: str, result: Any, ops: list[Any]) -> None:
        assert not any(c in one_line(rel) for c in "\n\r\u2028\u2029"), rel
        if Path(rel).suffix in IMAGE_SUFFIXES:  # what query --image does with the same bytes, in the parent
            try:
                decode_first_frame((self.inputs_dir / rel).read_bytes())
            except ValueError as exc:
                assert "\n" not in str(exc) and str(exc), exc
        if isinstance(result, FileError):
            assert result.path == rel and isinstance(result.reason, str) and result.reason.strip(), result
            assert "\n" not in result.reason and len(result.reason) <= 400, result.reason
            self.report.outcomes["error"] += 1
            cls = _reason_class(result.reason)
            self.report.reasons[cls] += 1
            self.report.examples.setdefault(cls, f"{result.reason} <- {ops}")
            return
        assert isinstance(result, Document), f"{rel}: {type(result).__name__} from the pool ({ops})"
        assert result.path == rel
        self.report.outcomes["indexed"] += 1
        if result.warnings and any(w.startswith("repaired") for w in result.warnings):
            self.report.outcomes["indexed, repaired"] += 1
        # what the parent does next: chunking and the manifest's rows (valid UTF-8 text, finite numbers)
        json.dumps(result.to_dict(with_png=False), ensure_ascii=False).encode("utf-8")
        passages = make_passages(result)
        windows = make_windows(passages, _count_tokens, 60)
        figures = [(f"{rel}:f:{f.digest[:16]}", f) for f in result.figures + result.boilerplate]
        for _, f in figures:
            assert (
                f.crop_path is None
                or (self.index_dir / f.crop_path).resolve().parent == (self.index_dir / "crops").resolve()
            )
        self.manifest.replace_rows(rel, passages, [(w, "clip") for w in windows], figures)

    def run(
        self, seconds: float, batch: int = 4, examples_per_round: int = 25, rng_seed: int | None = None
    ) -> Report:
        rng = random.Random(rng_seed)
        t0 = time.monotonic()
        deadline = t0 + seconds
        strategy = st.lists(fuzz_case(self.seeds), min_size=batch, max_size=batch)

        def body(cases: list[tuple[str, bytes, list[Any]]]) -> None:
            if (
                time.monotonic() < deadline or self.report.failures
            ):  # after a failure: shrink it, whatever the time
                self.check_batch(cases)

        try:
            while time.monotonic() < deadline:
                test = settings(
                    max_examples=examples_per_round,
                    deadline=None,
                    database=None,
                    phases=[Phase.generate, Phase.shrink],
                    suppress_health_check=list(HealthCheck),
                )(seed(rng.getrandbits(64))(given(strategy)(body)))
                test()
        finally:
            self.report.seconds = time.monotonic() - t0
        return self.report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ocr", action="store_true", help="OCR figures and images too (slower)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--report", type=Path, default=None, help="write the report as JSON here")
    ap.add_argument(
        "--dump-slow",
        type=Path,
        default=None,
        help=f"write the inputs of batches over {SLOW_BATCH_S:g} s here",
    )
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    workdir = Path(tempfile.mkdtemp(prefix="manualrag-fuzz-"))
    fuzzer = Fuzzer(workdir, workers=args.workers, ocr=args.ocr, dump_slow=args.dump_slow)
    try:
        report = fuzzer.run(args.seconds, rng_seed=args.seed)
        rc = 0
    except AssertionError:
        report, rc = fuzzer.report, 1
    finally:
        fuzzer.close()
        shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(report.to_dict(), indent=2)
    print(text)
    if args.report:
        args.report.write_text(text)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
