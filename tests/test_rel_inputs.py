"""Untrusted manuals: every bad input in one library gets its documented outcome (indexed, maybe with a
warning, or a one-line per-file error), the run exits 1 when any file failed, and every good file in the
same library is fully indexed. Native crashes, hangs and out-of-memory in the extraction workers (through
the test hook MANUALRAG_TEST_WORKER_FAULT, see indexer/worker.py) cost only their file.

Outcomes (the table in docs/reliability.md):

| input | outcome |
|---|---|
| truncated PDF (page objects intact) | indexed, warning "repaired: ..." |
| truncated PDF (page tree cut) | error "corrupt PDF: cannot count its pages (...)" |
| random bytes named .pdf | error "not a PDF file (no %PDF- header)" |
| random bytes after a %PDF- header | error "corrupt PDF, MuPDF cannot open it (...)" |
| broken xref | indexed, warning "repaired: ..." |
| encrypted, password in config | indexed |
| encrypted, password not in config | error "encrypted PDF: none of the configured passwords opens it" |
| 0-page PDF | error "PDF has no pages" |
| 0-byte file | error "empty file (0 bytes)" |
| PNG declaring 30000x30000 pixels | error "image too large (decompression-bomb guard): ..." |
| PNG with a 50 MB zTXt chunk | error "image refused: oversized PNG text chunk (...)" |
| 2000-page PDF | indexed, within a 1.5 GiB memory limit |
| file name not valid UTF-8 | indexed as the name with ``\\xNN`` escapes |
| page scanned sideways (a diagram turned 90 degrees) | indexed, read upright: its labels find it first |
| symlink loop / symlink out of the library | skipped (counted), outside file indexed with follow_symlinks |
| native crash / abort / out of memory in the worker | error "extraction crashed (SIGSEGV)" / "(SIGABRT)" / "out of memory (limit N MiB)" |
| hang | error "extraction timed out after N s" |
| file name with a newline, CR, U+2028/2029 or NEL | indexed; shown on one line with the break escaped |
| unreadable file | error "cannot read: Permission denied" |
| file that changes during the run | the version read is indexed; the next run is consistent |
| file that disappears during the run | error "cannot read ...: No such file or directory", old records removed |
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from manualrag.indexer.worker import FAULT_ENV
from tests import helpers_pdf as h
from tests import rel_helpers as rh

BIG_PAGES = 2000


def _bad_library(root: Path) -> tuple[Path, Path]:
    lib, outside = root / "lib", root / "outside"
    lib.mkdir()
    outside.mkdir()
    # good files, which must be indexed whatever happens around them
    (lib / "good.pdf").write_bytes(rh.versioned_pdf("good", pages=2, photo=True))
    (lib / "notes.md").write_bytes(rh.versioned_md("good"))
    (lib / "photo.png").write_bytes(h.photo_png(300, 200))
    # odd: the sample wiring diagram scanned sideways (the same bytes as tests/test_sideways.py: OCR cache)
    (lib / "sideways-scan.pdf").write_bytes(h.turned_scan_pdf_bytes(90))
    # bad inputs
    six = rh.versioned_pdf("cut", pages=6)
    (lib / "truncated.pdf").write_bytes(six[: len(six) // 2])
    tree = rh.many_pages_pdf(20)
    (lib / "truncated-tree.pdf").write_bytes(tree[: len(tree) * 3 // 10])  # cut inside the page tree
    (lib / "random.pdf").write_bytes(os.urandom(4096).replace(b"%PDF-", b"xxxxx"))
    (lib / "random-header.pdf").write_bytes(b"%PDF-1.7\n" + os.urandom(4096))
    (lib / "broken-xref.pdf").write_bytes(
        h.simple_pdf_bytes("A page whose cross-reference table was damaged in transit.").replace(
            b"startxref", b"startxxxx"
        )
    )
    h.encrypted_pdf(lib / "locked-known.pdf", "s3cret")
    h.encrypted_pdf(lib / "locked-unknown.pdf", "not-in-config")
    (lib / "zero-pages.pdf").write_bytes(rh.zero_page_pdf())
    (lib / "empty.pdf").write_bytes(b"")
    (lib / "bomb.png").write_bytes(rh.bomb_png(30_000))
    (lib / "text-chunk.png").write_bytes(rh.text_chunk_png())
    (lib / "big.pdf").write_bytes(rh.many_pages_pdf(BIG_PAGES))
    with open(os.path.join(os.fsencode(lib), b"caf\xe9-manual.pdf"), "wb") as f:
        f.write(h.simple_pdf_bytes("Manual with a Latin-1 file name: torque the lid screws to 3 Nm."))
    for name in rh.HOSTILE_NAMES:  # line breaks in names: indexed; shown escaped on one line
        (lib / name).write_bytes(rh.versioned_md("hostile"))
    (lib / "sub").mkdir()
    (lib / "sub" / "loop").symlink_to("..", target_is_directory=True)
    (outside / "outside.pdf").write_bytes(h.simple_pdf_bytes("A manual kept outside the library folder."))
    (lib / "outside.pdf").symlink_to(outside / "outside.pdf")
    for name in ("crash-segv.pdf", "crash-abort.pdf", "oom.pdf", "after-crash.pdf", "reserve.pdf"):
        (lib / name).write_bytes(rh.versioned_pdf(name.removesuffix(".pdf"), pages=1, figure=False))
    return lib, outside


INDEXED = {
    "good.pdf": None,
    "sideways-scan.pdf": None,
    "notes.md": None,
    "photo.png": None,
    "truncated.pdf": "repaired: ",
    "broken-xref.pdf": "repaired: ",
    "locked-known.pdf": None,
    "big.pdf": None,
    "caf\\xe9-manual.pdf": None,
    "after-crash.pdf": None,
    # reserves twice the limit in untouched address space (as onnxruntime's thread pools and malloc arenas do
    # on a many-core machine): the limit counts memory used, not address space, so it is indexed
    "reserve.pdf": None,
    **{name: None for name in rh.HOSTILE_NAMES},
}
# queries for the labels of the sideways scan's diagram (good.pdf's wiring diagram has a K1 too)
SIDEWAYS_QUERIES = ("K1 relay 24 V DC coil", "MAINS 230V 50/60 Hz PTC")
FAILED = {
    "truncated-tree.pdf": "corrupt PDF: cannot count its pages",
    "random.pdf": "not a PDF file (no %PDF- header)",
    "random-header.pdf": "corrupt PDF",
    "locked-unknown.pdf": "encrypted PDF: none of the configured passwords opens it",
    "zero-pages.pdf": "PDF has no pages",
    "empty.pdf": "empty file (0 bytes)",
    "bomb.png": "image too large (decompression-bomb guard)",
    "text-chunk.png": "image refused: oversized PNG text chunk",
    "crash-segv.pdf": "extraction crashed (SIGSEGV)",
    "crash-abort.pdf": "extraction crashed (SIGABRT)",
    "oom.pdf": "out of memory (limit 1536 MiB)",
}


def _fully_indexed(idx: Path, path: str) -> dict[str, int]:
    """The document's manifest row, rows and vectors: every window and figure has its vector."""
    db = sqlite3.connect(f"file:{idx / 'index.sqlite'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT n_pages FROM documents WHERE path = ? AND state = 'ok'", (path,)).fetchone()
        assert row is not None, f"{path} has no manifest row"
        windows = {
            r[0]
            for r in db.execute("SELECT id FROM windows WHERE doc_path = ? AND channel = 'clip'", (path,))
        }
        figures = {
            r[0] for r in db.execute("SELECT id FROM figures WHERE doc_path = ? AND boilerplate = 0", (path,))
        }
        passages = db.execute("SELECT count(*) FROM passages WHERE doc_path = ?", (path,)).fetchone()[0]
        lexical = db.execute("SELECT count(*) FROM lexical_rows WHERE doc_path = ?", (path,)).fetchone()[0]
    finally:
        db.close()
    vectors, _ = rh.vector_snapshot(idx, rh.EMBEDDED)
    assert windows <= set(vectors.get("text", {})), f"{path}: text windows without vectors"
    assert figures <= set(vectors.get("image", {})), f"{path}: figures without image vectors"
    assert passages + len(figures) > 0 and lexical == passages + len(figures), path
    return {"pages": row[0], "passages": passages, "windows": len(windows), "figures": len(figures)}


def test_bad_inputs_library(tmp_path, tiny_clip_dir, monkeypatch):
    lib, _ = _bad_library(tmp_path)
    idx = tmp_path / "index"
    cfg = rh.write_cfg(
        tmp_path / "cfg.yaml",
        model=str(tiny_clip_dir),
        passwords=["wrong-one", "s3cret"],
        isolation={"workers": 2, "memory_mb": 1536, "timeout_s": 300},
    )
    monkeypatch.setenv(FAULT_ENV, "segv:crash-segv.pdf,abort:crash-abort.pdf,oom:oom.pdf,reserve:reserve.pdf")
    rc, s, out = rh.cli(*rh.index_args(cfg, lib, idx, dense=True))
    assert rc == 1, out
    assert "Traceback" not in out
    failed = {f["path"]: f["reason"] for f in s["failed"]}
    assert set(failed) == set(FAILED), failed
    for path, reason in failed.items():
        assert reason.startswith(FAILED[path]) or FAILED[path] in reason, (path, reason)
        assert "\n" not in reason and 0 < len(reason) <= 400, (path, reason)
    assert sorted(s["indexed"]) == sorted(INDEXED)
    assert s["skipped"] == {"loop": 1, "symlink": 1}, s["skipped"]
    for path, warning in INDEXED.items():
        got = [w for w in s["warnings"] if w.startswith(f"{path}: ")]
        if warning:
            assert any(w.startswith(f"{path}: {warning}") for w in got), (path, s["warnings"])
        _fully_indexed(idx, path)
    assert _fully_indexed(idx, "big.pdf")["pages"] == BIG_PAGES
    assert _fully_indexed(idx, "good.pdf")["figures"] == 2
    with rh.sqlite_ro(idx) as db:
        errors = dict(db.execute("SELECT path, reason FROM errors").fetchall())
        assert errors == failed, "each failure is recorded in the manifest"
        text = " ".join(
            r[0] for r in db.execute("SELECT text FROM passages WHERE doc_path = 'locked-known.pdf'")
        )
        assert "Secret torque table" in text
    for query in SIDEWAYS_QUERIES:
        rc, hits, out = rh.cli("--config", str(cfg), "query", query, "--index-dir", str(idx), "--json")
        assert rc == 0, out
        assert hits[0]["path"] == "sideways-scan.pdf", (query, [(x["path"], x["kind"]) for x in hits[:3]])
        scan = next(x for x in hits if x["path"] == "sideways-scan.pdf" and x["kind"] == "image")
        assert scan["figure_kind"] == "scan" and scan.get("rotation") == 90, scan

    # follow_symlinks: the link out of the library is indexed; nothing else changes; the bad files fail again
    cfg2 = rh.write_cfg(
        tmp_path / "cfg2.yaml",
        model=str(tiny_clip_dir),
        passwords=["wrong-one", "s3cret"],
        follow_symlinks=True,
        isolation={"workers": 2, "memory_mb": 1536, "timeout_s": 300},
    )
    rc, s2, out = rh.cli(*rh.index_args(cfg2, lib, idx, dense=True))
    assert rc == 1, out
    assert s2["indexed"] == ["outside.pdf"] and s2["documents"]["unchanged"] == len(INDEXED)
    assert {f["path"] for f in s2["failed"]} == set(FAILED)
    assert s2["skipped"] == {"loop": 1}
    _fully_indexed(idx, "outside.pdf")


def test_hang_times_out_and_the_next_document_gets_a_new_worker(tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("a.md", "hang.md", "z.md"):
        (lib / name).write_bytes(rh.versioned_md(name))
    cfg = rh.write_cfg(
        tmp_path / "cfg.yaml", ocr={"enabled": False}, isolation={"workers": 1, "timeout_s": 2}
    )
    monkeypatch.setenv(FAULT_ENV, "hang:hang.md")
    rc, s, out = rh.cli(*rh.index_args(cfg, lib, tmp_path / "index", dense=False))
    assert rc == 1, out
    assert s["failed"] == [
        {"path": "hang.md", "reason": "extraction timed out after 2 s", "stage": "extract"}
    ]
    assert sorted(s["indexed"]) == ["a.md", "z.md"]


def _without_dac_override() -> None:
    """In the child, before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so a
    process running as root is refused a mode-000 file like anyone else (root otherwise reads everything)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP failed")


def test_unreadable_file_is_a_one_line_error(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "ok.md").write_bytes(rh.versioned_md("ok"))
    (lib / "secret.pdf").write_bytes(h.simple_pdf_bytes("Nobody may read this page of the manual."))
    (lib / "secret.pdf").chmod(0o000)
    cfg = rh.write_cfg(tmp_path / "cfg.yaml", ocr={"enabled": False})
    preexec = _without_dac_override if os.geteuid() == 0 else None
    try:  # can this process be refused the file at all? (root whose capabilities cannot be dropped: no)
        probe = subprocess.run(["cat", str(lib / "secret.pdf")], preexec_fn=preexec, capture_output=True)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot drop CAP_DAC_OVERRIDE here: {exc}")
    if probe.returncode == 0:
        pytest.skip("a mode-000 file is readable here: no way to make an unreadable file")
    proc = rh.popen_cli(*rh.index_args(cfg, lib, tmp_path / "index", dense=False), preexec_fn=preexec)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err.decode()
    s = json.loads(out)
    assert s["failed"] == [
        {"path": "secret.pdf", "reason": "cannot read: Permission denied", "stage": "discover"}
    ]
    assert s["indexed"] == ["ok.md"]


def test_file_that_changes_or_vanishes_during_the_run(tmp_path, monkeypatch):
    import manualrag.indexer.pipeline as pipeline

    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "changes.md").write_bytes(rh.versioned_md("rev1"))
    (lib / "vanishes-early.md").write_bytes(rh.versioned_md("early"))
    (lib / "vanishes-late.md").write_bytes(rh.versioned_md("late"))
    (lib / "stays.md").write_bytes(rh.versioned_md("stays"))
    idx = tmp_path / "index"
    cfg = rh.write_cfg(tmp_path / "cfg.yaml", ocr={"enabled": False})
    assert rh.cli(*rh.index_args(cfg, lib, idx, dense=False))[0] == 0
    for name in ("changes.md", "vanishes-early.md", "vanishes-late.md"):  # all three need re-indexing
        (lib / name).write_bytes((lib / name).read_bytes() + b"\nOne more line.\n")

    real_discover, real_digest = pipeline.discover, pipeline.file_digest

    def discover(*a, **kw):  # listed, then gone before it is read
        found = real_discover(*a, **kw)
        (lib / "vanishes-early.md").unlink()
        return found

    def file_digest(path):  # fingerprinted, then changed or gone before the worker reads it
        digest = real_digest(path)
        if path.name == "changes.md":
            path.write_bytes(rh.versioned_md("rev2"))
        elif path.name == "vanishes-late.md":
            path.unlink()
        return digest

    monkeypatch.setattr(pipeline, "discover", discover)
    monkeypatch.setattr(pipeline, "file_digest", file_digest)
    rc, s, out = rh.cli(*rh.index_args(cfg, lib, idx, dense=False))
    assert rc == 1, out
    failed = {f["path"]: f["reason"] for f in s["failed"]}
    gone = "; its previous version was removed from the index"  # both had been indexed
    assert failed == {
        "vanishes-early.md": "cannot read: No such file or directory" + gone,
        "vanishes-late.md": "cannot read the file: No such file or directory" + gone,
    }
    assert s["indexed"] == ["changes.md"]
    with rh.sqlite_ro(idx) as db:
        text = " ".join(r[0] for r in db.execute("SELECT text FROM passages WHERE doc_path = 'changes.md'"))
        assert "rev2" in text and "rev1" not in text, "the version read is the version indexed"
        gone = db.execute(
            "SELECT count(*) FROM passages WHERE doc_path IN ('vanishes-early.md', 'vanishes-late.md')"
        ).fetchone()[0]
        assert gone == 0, "records of a file that is gone are removed, not kept as if current"

    monkeypatch.undo()
    rc, s, out = rh.cli(*rh.index_args(cfg, lib, idx, dense=False))
    assert rc == 0, out
    assert s["documents"]["unchanged"] == 2 and s["documents"]["indexed"] == 0
    assert s["removed"] == [] and s["failed"] == []
    fresh = tmp_path / "fresh"
    assert rh.cli(*rh.index_args(cfg, lib, fresh, dense=False))[0] == 0
    rh.assert_same_index(rh.index_snapshot(idx), rh.index_snapshot(fresh), "index after the changes")


def test_indexed_file_that_turns_unreadable_says_its_old_version_left_the_index(tmp_path):
    """A manual indexed once, then cut short: the next run removes its old records (they describe content
    no longer there) and its failure line says so, since the run's "0 removed" counts vanished files only.
    A later run repeats the failure without claiming a second removal."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "ok.md").write_bytes(rh.versioned_md("ok"))
    (lib / "pump.pdf").write_bytes(rh.versioned_pdf("rev1", figure=False))
    idx = tmp_path / "index"
    cfg = rh.write_cfg(tmp_path / "cfg.yaml", ocr={"enabled": False})
    rc, s, out = rh.cli(*rh.index_args(cfg, lib, idx, dense=False))
    assert rc == 0 and sorted(s["indexed"]) == ["ok.md", "pump.pdf"], out
    (lib / "pump.pdf").write_bytes((lib / "pump.pdf").read_bytes()[:300])  # truncated in a copy

    rc, s, out = rh.cli(*rh.index_args(cfg, lib, idx, dense=False))
    assert rc == 1, out
    assert s["documents"] == {"indexed": 0, "unchanged": 1, "removed": 0, "failed": 1}
    [f] = s["failed"]
    assert f["path"] == "pump.pdf" and f["reason"].endswith(
        "; its previous version was removed from the index"
    )
    assert "\n" not in f["reason"]
    with rh.sqlite_ro(idx) as db:
        assert db.execute("SELECT count(*) FROM passages WHERE doc_path = 'pump.pdf'").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM documents WHERE path = 'pump.pdf'").fetchone()[0] == 0

    rc, s, out = rh.cli(*rh.index_args(cfg, lib, idx, dense=False))
    assert rc == 1, out
    [f] = s["failed"]
    assert "previous version" not in f["reason"] and "--retry-failed" in f["reason"], f["reason"]
