"""Shared by the reliability tests (bad inputs, kill trials, state machine, concurrency, fuzzing): small
generated manuals with known versions, CLI runners, and a comparable snapshot of a whole index folder."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pymupdf
import yaml
from click.testing import CliRunner

from manualrag.cli import main
from tests import helpers_pdf as h

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = {"url": None, "collection": "manualrag", "headers": {}}
KINDS = ("text", "image", "image_text", "sem")


# ------------------------------------------------------------------------------------------ documents
def versioned_pdf(tag: str, pages: int = 2, figure: bool = True, photo: bool = False) -> bytes:
    """A small manual whose every passage and figure caption carries ``tag`` (e.g. "rev1"), so a reader can
    tell which version of the document it sees. Page 1 may hold a vector wiring diagram, page 2 a photo."""
    doc = pymupdf.open()
    for n in range(1, pages + 1):
        page = doc.new_page(width=h.A4[0], height=h.A4[1])
        page.insert_text((72, 90), f"{n} Torque settings {tag}", fontsize=16, fontname="hebo")
        y = h.body_text(
            page,
            110,
            f"Torque the flange bolts of the pump housing in a cross pattern, {tag}. Check the seal and "
            f"the coupling for wear on page {n} of this {tag} manual before the pressure test.",
        )
        h.body_text(
            page, y + 10, f"Service interval note {tag}: replace the filter cartridge every 500 hours."
        )
        if figure and n == 1:
            h.draw_wiring_diagram(page, (100, 400))
            page.insert_text((180, 540), f"Figure 1: Pump wiring torque {tag}", fontsize=10)
        if photo and n == 2:
            page.insert_image(pymupdf.Rect(150, 420, 390, 600), stream=h.photo_png(160, 120))
            page.insert_text((180, 620), f"Figure 2: Pump photo torque {tag}", fontsize=10)
    data = doc.tobytes()
    doc.close()
    return data


def md_library(folder: Path, *names: str) -> Path:
    """``folder`` holding a :func:`versioned_md` file per name (its first letter + "doc" as the tag)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(versioned_md(name[0] + "doc"))
    return folder


def versioned_md(tag: str, sections: int = 2) -> bytes:
    parts = [f"# Release notes torque {tag}\n"]
    for i in range(1, sections + 1):
        parts.append(
            f"## Section {i} {tag}\n\nTorque values for release {tag}, section {i}: 12 Nm on the coupling.\n"
        )
    return "\n".join(parts).encode()


# ------------------------------------------------------------------------------------------ images
def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(side: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0"))
        + png_chunk(b"IEND", b"")
    )


def text_chunk_png() -> bytes:
    """A real small picture with a zTXt chunk that inflates to 50 MB (a text-chunk decompression bomb)."""
    png = h.photo_png(120, 80)
    ztxt = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * (50 << 20), 9))
    return png[:33] + ztxt + png[33:]  # after the 8-byte signature and the 25-byte IHDR chunk


def bad_images() -> dict[str, tuple[bytes, str]]:
    """Files that are not usable images, by name: (bytes, the one-line reason both ``index`` and
    ``query --image`` give for them)."""
    png = h.photo_png(120, 80)
    return {
        "text-as.png": (b"# Not an image\n\nJust some markdown.\n", "not a readable image"),
        "bomb.png": (bomb_png(30_000), "image too large (decompression-bomb guard)"),
        "truncated.png": (png[: len(png) // 2], "corrupt or truncated image"),
        "text-chunk.png": (text_chunk_png(), "image refused: oversized PNG text chunk"),
        "empty.png": (b"", "empty file (0 bytes)"),
    }


# file names that would forge or break lines of human output if printed raw (issue 14 row 6)
HOSTILE_NAMES = (
    "x\nFAILED ok.md: forged error line\n.md",
    "cr\rover.md",
    "ls\u2028ps\u2029nel\x85.md",
)


def damage_sqlite(db: Path, how: str) -> None:
    """Damage an index.sqlite as a disk or a careless copy would: ``truncated`` to 8 KiB, or ``garbage``
    over its header and first pages (its -wal/-shm files are dropped)."""
    data = db.read_bytes()
    if how == "truncated":
        db.write_bytes(data[:8192])
    else:
        db.write_bytes(os.urandom(100) + data[100:4096] + os.urandom(8192) + data[12288:])
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def repetitive_line_md(n_bytes: int, words: str = "lorem ipsum zzyzx ") -> bytes:
    """A pathological manual: one huge line of a few words repeated (issue 14 row 2)."""
    return b"# Notes\n\n" + (words.encode() * (n_bytes // len(words) + 1))[:n_bytes] + b"\n"


def corrupt_pdf() -> bytes:
    return b"%PDF-1.7\n" + bytes(range(256)) * 8


# ------------------------------------------------------------------------------------------ configs
def write_cfg(path: Path, **cfg: Any) -> Path:
    """A YAML config: no text model (tests use the tiny CLIP or --no-dense), one extraction worker."""
    base: dict[str, Any] = {"text_model": None, "isolation": {"workers": 1}}
    for key, value in cfg.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    path.write_text(yaml.safe_dump(base))
    return path


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict, str]:
    """Run ``manualrag ARGS`` in this process (CliRunner); returns (exit code, JSON stdout or {}, output)."""
    res = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    try:
        data = json.loads(res.stdout)
    except (json.JSONDecodeError, ValueError):
        data = {}
    return res.exit_code, data, res.output


def keyword_index(tmp_path: Path, files: dict[str, str]) -> tuple[Path, Path]:
    """A library of text ``files`` (name -> content) under ``tmp_path/lib``, indexed ``--no-dense`` into
    ``tmp_path/idx`` (in-process): (library, index folder)."""
    from click.testing import CliRunner

    from manualrag.cli import main

    lib, idx = tmp_path / "lib", tmp_path / "idx"
    lib.mkdir()
    for name, text in files.items():
        (lib / name).write_text(text)
    res = CliRunner().invoke(main, ["index", str(lib), "--index-dir", str(idx), "--no-dense", "-q"])
    assert res.exit_code == 0, res.output
    return lib, idx


def index_args(cfg: Path, lib: Path, idx: Path, dense: bool) -> list[str]:
    return ["--config", str(cfg), "index", str(lib), "--index-dir", str(idx), "--json", "--quiet"] + (
        [] if dense else ["--no-dense"]
    )


# `python -m manualrag ARGS` with Ctrl-C handled as in a terminal: a process started in the background by
# a non-interactive shell (nohup, `&`, some CI runners) inherits SIGINT ignored, and Python keeps it so
_INTERRUPTIBLE = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('manualrag', run_name='__main__', alter_sys=True)"
)


def popen_cli(
    *args: str, env: dict[str, str] | None = None, interruptible: bool = False, **kw: Any
) -> subprocess.Popen:
    """``manualrag ARGS`` as a real process (python -m manualrag), offline; ``interruptible``: SIGINT acts
    as Ctrl-C in it whatever this process inherited."""
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **(env or {}))
    cmd = [sys.executable, "-c", _INTERRUPTIBLE] if interruptible else [sys.executable, "-m", "manualrag"]
    return subprocess.Popen(
        [*cmd, *args],
        cwd=str(ROOT),
        env=full_env,
        stdout=kw.pop("stdout", subprocess.PIPE),
        stderr=kw.pop("stderr", subprocess.PIPE),
        **kw,
    )


def kill_hard(proc: subprocess.Popen) -> None:
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


# ------------------------------------------------------------------------------------------ snapshots
def _rows(db: sqlite3.Connection, sql: str) -> list[tuple]:
    return [tuple(r) for r in db.execute(sql).fetchall()]


def _without_index_dir(value: Any) -> Any:
    if isinstance(value, dict) and "index_dir" in value:
        return {k: v for k, v in value.items() if k != "index_dir"}
    return value


def index_snapshot(index_dir: Path, store_cfg: dict | None = None) -> dict[str, Any]:
    """Everything that makes up an index, in a comparable form (times and the library's absolute path left
    out; embeddings rounded). Also checks the index's own invariants: every vector is named by the
    manifest, every crop file is used and every used crop exists, no half-written document is left."""
    db = sqlite3.connect(f"file:{index_dir / 'index.sqlite'}?mode=ro", uri=True)
    try:
        snap: dict[str, Any] = {
            "documents": _rows(
                db,
                "SELECT path, doc_id, digest, size, config_fp, file_type, n_pages, title, warnings, clip_model,"
                " text_model, state FROM documents ORDER BY path",
            ),
            "passages": _rows(db, "SELECT * FROM passages ORDER BY id"),
            "windows": _rows(db, "SELECT * FROM windows ORDER BY id"),
            "figures": _rows(db, "SELECT * FROM figures ORDER BY id"),
            "lexical": sorted(
                _rows(db, "SELECT ref_id, ref_type, doc_path, page, caption, labels, body FROM lexical")
            ),
            "errors": _rows(db, "SELECT path, reason, stage FROM errors ORDER BY path"),
            "meta": [
                (k, _without_index_dir(json.loads(v)))
                for k, v in _rows(db, "SELECT key, value FROM meta WHERE key != 'library' ORDER BY key")
            ],
        }
        owners = _rows(
            db,
            "SELECT count(*) FROM lexical_rows r JOIN lexical l ON l.rowid = r.rowid WHERE l.doc_path = r.doc_path",
        )[0][0]
        assert owners == len(snap["lexical"]) == _rows(db, "SELECT count(*) FROM lexical_rows")[0][0], (
            "every lexical row has exactly one owner row"
        )
        committed = {r[0] for r in snap["documents"]}
        with_rows = {
            r[0]
            for r in _rows(
                db,
                "SELECT doc_path FROM passages UNION SELECT doc_path FROM figures"
                " UNION SELECT doc_path FROM windows",
            )
        }
        assert with_rows <= committed, f"rows of uncommitted documents left behind: {with_rows - committed}"
        named: dict[str, set[str]] = {k: set() for k in KINDS}
        for wid, ch in _rows(db, "SELECT id, channel FROM windows"):
            named["text" if ch == "clip" else "sem"].add(wid)
        for (fid,) in _rows(db, "SELECT id FROM figures"):
            named["image"].add(fid)
            named["image_text"].add(f"{fid}:t")
            named["sem"].add(f"{fid}:s")
            named["sem"].add(f"{fid}:c")
        used_crops = {r[0] for r in _rows(db, "SELECT crop_path FROM figures WHERE crop_path IS NOT NULL")}
    finally:
        db.close()

    crops_dir = index_dir / "crops"
    files = sorted(f"crops/{p.name}" for p in crops_dir.iterdir()) if crops_dir.is_dir() else []
    assert set(files) == used_crops, (
        f"orphan crops: {sorted(set(files) - used_crops)}; missing crops: {sorted(used_crops - set(files))}"
    )
    snap["crops"] = files
    cfg_file = index_dir / "config.json"
    snap["config.json"] = _without_index_dir(json.loads(cfg_file.read_text())) if cfg_file.exists() else None
    snap["vectors"], snap["_embeddings"] = vector_snapshot(index_dir, store_cfg or EMBEDDED)
    for kind, records in snap["vectors"].items():
        stray = set(records) - named[kind]
        assert not stray, f"{kind} vectors that no manifest row names: {sorted(stray)[:5]}"
    assert not (index_dir / "lock").exists(), "a finished run leaves no lock"
    return snap


def vector_snapshot(index_dir: Path, store_cfg: dict) -> tuple[dict[str, dict], dict[str, dict]]:
    from manualrag.store import VectorStore

    records: dict[str, dict] = {}
    embeddings: dict[str, dict] = {}
    if store_cfg.get("url") is None and not (index_dir / "chroma").exists():
        return records, embeddings
    with VectorStore.open(index_dir, {"store": store_cfg}) as st:
        for kind in KINDS:
            col = st.get(kind)
            if col is None:
                continue
            got = col.get(include=["metadatas", "documents", "embeddings"])
            ids = list(got["ids"])
            if not ids:  # an empty collection holds what no collection holds
                continue
            assert len(ids) == len(set(ids)), f"duplicate ids in {kind}"
            records[kind] = {
                i: (json.dumps(m, sort_keys=True), d)
                for i, m, d in zip(ids, got["metadatas"], got["documents"], strict=True)
            }
            embeddings[kind] = {
                i: np.asarray(e, dtype=np.float32) for i, e in zip(ids, got["embeddings"], strict=True)
            }
    return records, embeddings


def assert_same_index(got: dict[str, Any], want: dict[str, Any], what: str = "index") -> None:
    for key in want:
        if key == "_embeddings":
            continue
        if got[key] != want[key]:
            extra = [r for r in got[key] if r not in want[key]] if isinstance(want[key], list) else got[key]
            missing = (
                [r for r in want[key] if r not in got[key]] if isinstance(want[key], list) else want[key]
            )
            raise AssertionError(
                f"{what}: '{key}' differs: unexpected {str(extra)[:600]}; missing {str(missing)[:600]}"
            )
    for kind, vecs in want["_embeddings"].items():
        other = got["_embeddings"].get(kind, {})
        assert set(other) == set(vecs), f"{what}: {kind} vector ids differ"
        for i, v in vecs.items():
            assert np.allclose(other[i], v, atol=1e-4), f"{what}: vector {i} differs"


@contextlib.contextmanager
def sqlite_ro(index_dir: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(f"file:{index_dir / 'index.sqlite'}?mode=ro", uri=True)
    try:
        yield db
    finally:
        db.close()


def wait_for(cond, timeout: float, interval: float = 0.005) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(interval)
    return cond()


def many_pages_pdf(n: int) -> bytes:
    """An n-page PDF written directly (PyMuPDF takes ~4 ms a page to make one): one line of text per page,
    one shared base-14 font, a valid cross-reference table."""
    objs: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",  # the page tree, filled below
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    kids = []
    for i in range(n):
        text = f"BT /F1 10 Tf 36 360 Td (Page {i + 1}: torque table entry {i} for the pump housing.) Tj ET".encode()
        objs.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(text), text))
        content = len(objs)
        objs.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 400] /Resources << /Font << /F1 3 0 R >> >>"
            b" /Contents %d 0 R >>" % content
        )
        kids.append(b"%d 0 R" % len(objs))
    objs[1] = b"<< /Type /Pages /Count %d /Kids [%s] >>" % (n, b" ".join(kids))
    return _pdf_file(objs)


def zero_page_pdf() -> bytes:
    """A well-formed PDF whose page tree is empty."""
    return _pdf_file([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Count 0 /Kids [] >>"])


def _pdf_file(objs: list[bytes]) -> bytes:
    """Objects 1..n (object 1 the catalog) written as a PDF file with a valid cross-reference table."""
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for num, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (num, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)
