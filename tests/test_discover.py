from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from manualrag.config import load_config
from manualrag.ids import file_digest
from manualrag.indexer.discover import SourceFile, discover, file_type_for


@pytest.fixture()
def cfg() -> dict:
    return load_config(environ={})


def _touch(p: Path, data: bytes = b"x") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


@pytest.fixture()
def library(tmp_path: Path) -> Path:
    lib = tmp_path / "lib"
    _touch(lib / "b-manual.pdf", b"%PDF-1.7 b")
    _touch(lib / "a" / "wiring.PNG", b"png")
    _touch(lib / "a" / "notes.md", b"# Notes")
    _touch(lib / "a" / "z" / "scan.TIFF", b"tiff")
    _touch(lib / "readme.txt", b"read me")
    _touch(lib / "photo.jpeg", b"jpeg")
    _touch(lib / "sheet.docx", b"docx")  # unsupported
    _touch(lib / "archive.zip", b"zip")  # unsupported
    _touch(lib / ".hidden.pdf", b"%PDF")  # hidden file
    _touch(lib / ".cache" / "x.pdf", b"%PDF")  # hidden folder
    _touch(lib / "index" / "crops" / "c.png", b"crop")  # the index folder inside the library
    _touch(lib / "empty.pdf", b"")  # zero bytes: discovered, extraction reports it
    return lib


def test_supported_files_sorted_with_skip_reasons(library: Path, cfg: dict) -> None:
    files, skipped = discover(library, cfg, exclude=[library / "index"])
    assert [f.rel for f in files] == [
        "a/notes.md",
        "a/wiring.PNG",
        "a/z/scan.TIFF",
        "b-manual.pdf",
        "empty.pdf",
        "photo.jpeg",
        "readme.txt",
    ]
    assert {f.rel: f.file_type for f in files}["a/wiring.PNG"] == "image"
    assert {f.rel: f.file_type for f in files}["a/notes.md"] == "text"
    assert skipped == {"unsupported": 2, "hidden": 2, "own_index": 1}
    f = next(f for f in files if f.rel == "b-manual.pdf")
    assert isinstance(f, SourceFile)
    assert f.path == library / "b-manual.pdf"
    assert f.size == len(b"%PDF-1.7 b")
    assert f.mtime == pytest.approx(os.stat(f.path).st_mtime)


def test_order_is_stable_and_index_included_without_exclude(library: Path, cfg: dict) -> None:
    a, _ = discover(library, cfg, exclude=[library / "index"])
    b, _ = discover(library, cfg, exclude=[library / "index"])
    assert a == b
    files, _ = discover(library, cfg)
    assert "index/crops/c.png" in [f.rel for f in files]


def test_symlink_outside_library_needs_follow_symlinks(tmp_path: Path, library: Path, cfg: dict) -> None:
    outside = _touch(tmp_path / "elsewhere" / "vendor.pdf", b"%PDF-1.4 vendor")
    (library / "vendor-link.pdf").symlink_to(outside)
    (library / "vendor-dir").symlink_to(outside.parent, target_is_directory=True)
    files, skipped = discover(library, cfg, exclude=[library / "index"])
    rels = [f.rel for f in files]
    assert "vendor-link.pdf" not in rels and "vendor-dir/vendor.pdf" not in rels
    assert skipped["symlink"] == 2
    files, skipped = discover(library, {**cfg, "follow_symlinks": True}, exclude=[library / "index"])
    rels = [f.rel for f in files]
    # both links lead to the same file: indexed once
    assert ("vendor-link.pdf" in rels) != ("vendor-dir/vendor.pdf" in rels)
    assert skipped.get("duplicate") == 1


def test_symlink_loop_followed_once_and_inner_links_prefer_real_path(library: Path, cfg: dict) -> None:
    (library / "a" / "loop").symlink_to(library, target_is_directory=True)  # a/loop -> library root
    (library / "a" / "alias.pdf").symlink_to(library / "b-manual.pdf")  # same file, via a link
    (library / "broken.pdf").symlink_to(library / "missing.pdf")
    files, skipped = discover(library, cfg, exclude=[library / "index"])
    rels = [f.rel for f in files]
    assert rels.count("b-manual.pdf") == 1
    assert "a/alias.pdf" not in rels  # the real path wins
    assert not any(r.startswith("a/loop/") for r in rels)
    assert skipped["loop"] == 1
    assert skipped["duplicate"] == 1
    assert skipped["broken_link"] == 1


def test_a_loop_of_links_is_a_loop_not_a_broken_link(library: Path, cfg: dict) -> None:
    """Two links to each other (a.pdf -> b.pdf -> a.pdf) were reported as `broken_link`, where the docs
    (and the user) call that a symlink loop; a link to a missing file stays `broken_link`."""
    (library / "x.pdf").symlink_to(library / "y.pdf")
    (library / "y.pdf").symlink_to(library / "x.pdf")
    (library / "self").symlink_to(library / "self", target_is_directory=True)
    (library / "broken.pdf").symlink_to(library / "missing.pdf")
    _, skipped = discover(library, cfg, exclude=[library / "index"])
    assert skipped["loop"] == 3 and skipped["broken_link"] == 1, skipped


def test_file_digest_streams_sha256(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)
    p = _touch(tmp_path / "big.bin", data)
    assert file_digest(p) == hashlib.sha256(data).hexdigest()
    assert file_digest(p, chunk=1000) == hashlib.sha256(data).hexdigest()


def test_file_type_for() -> None:
    assert file_type_for("x.PDF") == "pdf"
    assert file_type_for("x.webp") == "image"
    assert file_type_for("x.gif") == "image"
    assert file_type_for("x.bmp") == "image"
    assert file_type_for("x.tif") == "image"
    assert file_type_for("x.MD") == "text"
    assert file_type_for("x.docx") is None
    assert file_type_for("Makefile") is None


def test_missing_library_is_an_error(tmp_path: Path, cfg: dict) -> None:
    with pytest.raises(FileNotFoundError):
        discover(tmp_path / "nope", cfg)


def _fake_index(folder: Path) -> None:
    """An index folder as ``index`` leaves it: a SQLite manifest and digest-named crops."""
    import sqlite3

    folder.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(folder / "index.sqlite") as db:
        db.execute("CREATE TABLE meta (key TEXT)")
    _touch(folder / "crops" / "0123abcd.png", b"crop")


def test_any_index_folder_in_the_library_is_skipped(library: Path, cfg: dict) -> None:
    _fake_index(library / "data" / "index")  # built by `index .` from inside the library
    _touch(library / "notes" / "index.sqlite", b"not a database")  # a stray file of that name is no index
    _touch(library / "notes" / "pump.md", b"# Pump")
    found: list[str] = []
    files, skipped = discover(library, cfg, exclude=[library / "index"], indexes=found)
    rels = [f.rel for f in files]
    assert not any(r.startswith("data/") for r in rels), rels
    assert "notes/pump.md" in rels
    assert skipped["index_folder"] == 1 and skipped["own_index"] == 1
    assert found == ["data/index"]


def test_index_into_another_dir_leaves_the_librarys_own_index_out(tmp_path: Path) -> None:
    """A library once indexed from inside itself (lib/data/index), then indexed into another --index-dir:
    the first index's crops are not manuals, and the run says why that folder was left out."""
    from tests import helpers_pdf as h
    from tests import rel_helpers as rh

    lib = tmp_path / "lib8"
    lib.mkdir()
    (lib / "pump.md").write_bytes(rh.versioned_md("rev1"))
    (lib / "photo.png").write_bytes(h.photo_png(160, 120))
    cfg = rh.write_cfg(tmp_path / "cfg.yaml", ocr={"enabled": False})
    rc, first, out = rh.cli(*rh.index_args(cfg, lib, lib / "data" / "index", dense=False))
    assert rc == 0, out
    assert sorted(first["indexed"]) == ["photo.png", "pump.md"]
    assert list((lib / "data" / "index" / "crops").glob("*.png")), "the first run left crops to be skipped"
    rc, s, out = rh.cli(*rh.index_args(cfg, lib, tmp_path / "ix_l", dense=False))
    assert rc == 0, out
    assert sorted(s["indexed"]) == ["photo.png", "pump.md"]
    assert s["skipped"].get("index_folder") == 1
    assert any("data/index" in w and "manualrag index" in w for w in s["warnings"]), s["warnings"]
