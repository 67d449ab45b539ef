"""A lost or missing vector store is detected and said plainly (a new user's report): the store folder
deleted, a collection emptied, a figure's text-model vectors deleted, a server index opened without its
server. ``check`` counts every vector a row needs and ``--repair`` embeds them again; ``index`` embeds the
documents whose vectors are gone instead of calling them "unchanged"; ``query`` says the vectors are missing
and names ``check --repair``; an index whose vectors live on a Chroma server is never given an empty
embedded store. Real components: the real MiniLM text model, the embedded Chroma store, the CLI."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import rel_helpers as rh


@pytest.fixture(scope="module")
def text_index(tmp_path_factory, minilm_dir):
    """A manual with a captioned wiring diagram and a notes file, indexed with the text model alone
    (``--model none``, as the report's index): (cfg, library, index)."""
    root = tmp_path_factory.mktemp("lost")
    lib = root / "lib"
    lib.mkdir()
    (lib / "figs.pdf").write_bytes(rh.versioned_pdf("lostrev", pages=1))
    (lib / "notes.md").write_text("# Fuse\n\nThe main fuse F3 sits behind the relay panel; 10 A slow-blow.\n")
    cfg = rh.write_cfg(root / "cfg.yaml", model=None, text_model=str(minilm_dir))
    idx = root / "idx"
    rc, s, out = rh.cli(*rh.index_args(cfg, lib, idx, dense=True))
    assert rc == 0 and sorted(s["indexed"]) == ["figs.pdf", "notes.md"], out
    return cfg, lib, idx


def _copy(idx: Path, dest: Path) -> Path:
    shutil.copytree(idx, dest)
    return dest


@contextlib.contextmanager
def _sem(cfg: Path, idx: Path) -> Iterator[Any]:
    """The index's ``manualrag-sem`` collection (a Chroma collection handle), through the real store."""
    from manualrag.config import load_config
    from manualrag.store import VectorStore

    with VectorStore.open(idx, load_config(cfg)) as store:
        yield store.get("sem")


def test_check_counts_and_repairs_figures_text_model_vectors(text_index, tmp_path):
    """A figure's text-model vectors (``:s`` / ``:c``) deleted from the store: check names them as missing
    figure vectors and the document to redo, --repair embeds them again (before: "ok", rc 0)."""
    cfg, _, idx0 = text_index
    idx = _copy(idx0, tmp_path / "idx")
    with rh.sqlite_ro(idx) as db:
        q = "SELECT id FROM figures WHERE doc_path = 'figs.pdf' AND boilerplate = 0"
        fid = db.execute(q).fetchone()[0]
    with _sem(cfg, idx) as col:
        before = col.count()
        col.delete(where={"ref": fid})
        assert col.count() == before - 2, "the figure had its text and its caption vectors"
    base = ["--config", str(cfg), "check", "--index-dir", str(idx)]
    rc, rep, out = rh.cli(*base, "--json")
    assert rc == 1 and not rep["ok"], out
    assert rep["missing_vectors"]["sem"] == 2 and rep["redo"] == ["figs.pdf"], rep
    assert any("2 sem vector(s) missing" in p and "2 of figures" in p for p in rep["problems"]), rep
    rc, rep, out = rh.cli(*base, "--repair", "--json")
    assert rc == 0 and rep["after_repair"]["ok"], out
    with _sem(cfg, idx) as col:
        assert col.count() == before


def test_repair_says_which_documents_it_adds_back(text_index, tmp_path):
    """The repair is an index run, so a file `manualrag remove` dropped comes back with it: the line said
    "2 document(s) indexed again" after announcing one to redo. It now counts the redone ones and names
    what it added back."""
    cfg, _, idx0 = text_index
    idx = _copy(idx0, tmp_path / "idx")
    base = ["--config", str(cfg)]
    assert rh.cli(*base, "remove", "notes.md", "--index-dir", str(idx))[0] == 0
    with rh.sqlite_ro(idx) as db:
        fid = db.execute("SELECT id FROM figures WHERE doc_path = 'figs.pdf' AND boilerplate = 0").fetchone()[
            0
        ]
    with _sem(cfg, idx) as col:
        col.delete(where={"ref": fid})
    rc, _, out = rh.cli(*base, "check", "--repair", "--index-dir", str(idx))
    assert rc == 0, out
    assert (
        "repaired: 1 document(s) indexed again (and 1 file(s) of the library the index did not hold, e.g. "
        "notes.md: an index run adds back what `manualrag remove` dropped), 0 failed; the index is now sound"
    ) in out, out


def test_deleted_store_folder_is_detected_by_check_query_and_index(text_index, tmp_path):
    """The report's steps: the chroma/ folder deleted. query says the text-model vectors are missing and
    names check --repair (before: "the index has no text-model vectors" and a hint to re-index with a text
    model); check reports every vector missing (before: "ok"); index embeds both documents again (before:
    "0 indexed, 2 unchanged"), after which the text channel answers."""
    cfg, lib, idx0 = text_index
    idx = _copy(idx0, tmp_path / "idx")
    shutil.rmtree(idx / "chroma")
    base = ["--config", str(cfg)]

    rc, _, out = rh.cli(*base, "query", "main fuse relay", "--index-dir", str(idx))
    assert rc == 0 and "notes.md" in out, out  # the lexical channel still answers
    notes = [line for line in out.splitlines() if line.startswith("note: text channel off:")]
    assert len(notes) == 1, out  # (the dense channels are off too: the index was built without CLIP)
    assert "text-model vectors of the index in" in notes[0] and str(idx) in notes[0], notes
    assert "missing" in notes[0] and f"manualrag check --repair --index-dir {idx}" in notes[0], notes
    assert "has no text-model vectors" not in out and "--text-model" not in out, out
    rc, _, out = rh.cli(*base, "query", "main fuse relay", "--channels", "text", "--index-dir", str(idx))
    assert rc == 2 and "check --repair" in out and "Traceback" not in out, out

    rc, rep, out = rh.cli(*base, "check", "--index-dir", str(idx), "--json")
    assert rc == 1 and not rep["ok"], out
    assert rep["empty_collections"] == ["manualrag-sem"] and rep["missing_vectors"]["sem"] > 2, rep
    assert rep["redo"] == ["figs.pdf", "notes.md"], rep
    assert any(p.startswith("all ") and "manualrag-sem is absent or empty" in p for p in rep["problems"]), rep

    rc, s, out = rh.cli(*rh.index_args(cfg, lib, idx, dense=True))
    assert (
        rc == 0 and sorted(s["indexed"]) == ["figs.pdf", "notes.md"] and s["documents"]["unchanged"] == 0
    ), out
    assert any("has lost the sem vectors of 2 document(s)" in w for w in s["warnings"]), s["warnings"]
    rc, rep, out = rh.cli(*base, "check", "--index-dir", str(idx), "--json")
    assert rc == 0 and rep["ok"], out
    rc, _, out = rh.cli(*base, "query", "main fuse relay", "--channels", "text", "--index-dir", str(idx))
    assert rc == 0 and "notes.md" in out, out
    # a second run finds nothing lost: unchanged again
    rc, s, out = rh.cli(*rh.index_args(cfg, lib, idx, dense=True))
    assert rc == 0 and s["documents"]["unchanged"] == 2 and not s["warnings"], out


def test_emptied_collection_is_repaired_by_check(text_index, tmp_path):
    """The sem collection emptied (chroma/ kept): check --repair embeds every document again."""
    cfg, _, idx0 = text_index
    idx = _copy(idx0, tmp_path / "idx")
    with _sem(cfg, idx) as col:
        n = col.count()
        col.delete(ids=col.get(include=[])["ids"])
    base = ["--config", str(cfg), "check", "--index-dir", str(idx)]
    rc, rep, out = rh.cli(*base, "--json")
    assert rc == 1 and rep["missing_vectors"]["sem"] == n, rep
    assert rep["empty_collections"] == ["manualrag-sem"], rep
    rc, rep, out = rh.cli(*base, "--repair", "--json")
    assert rc == 0 and rep["after_repair"]["ok"], out
    with _sem(cfg, idx) as col:
        assert col.count() == n


def test_server_index_opened_without_store_is_refused(text_index, tmp_path):
    """An index whose config records a Chroma server, opened without --store: every command refuses in one
    line naming the folder, the server and --store, rc 2, and no embedded store is created in the folder
    (before: an empty chroma/ appeared, query answered lexical-only blaming the index, check said ok). A
    published copy holding only index.sqlite is refused the same way (the manifest records the config)."""
    cfg, lib, idx0 = text_index
    url = "http://127.0.0.1:9/chroma"
    idx = _copy(idx0, tmp_path / "team")
    shutil.rmtree(idx / "chroma")  # a server index has no embedded store
    saved = json.loads((idx / "config.json").read_text())
    saved["store"] = {**saved["store"], "url": url, "headers": {"Authorization": "***"}}
    (idx / "config.json").write_text(json.dumps(saved))
    with sqlite3.connect(idx / "index.sqlite") as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'config'", (json.dumps(saved),))
    db.close()
    base = ["--config", str(cfg)]
    for copy_kind in ("folder", "published"):
        if copy_kind == "published":
            (idx / "config.json").unlink()
        for args in (
            ["query", "main fuse relay"],
            ["check"],
            ["check", "--repair"],
            ["stats"],
            ["index", str(lib)],
            ["remove", "notes.md"],
        ):
            rc, _, out = rh.cli(*base, *args, "--index-dir", str(idx))
            lines = out.strip().splitlines()
            assert rc == 2 and len(lines) == 1 and "Traceback" not in out, (copy_kind, args, out)
            assert str(idx) in lines[0] and url in lines[0] and f"--store {url}" in lines[0], lines
            source = "config.json" if copy_kind == "folder" else "index.sqlite"
            assert f"(its {source} says so)" in lines[0], lines
            assert not (idx / "chroma").exists(), (copy_kind, args)


def test_a_read_only_store_says_why_and_what_to_do(text_index, tmp_path):
    """An index on read-only media (here an immutable copy): Chroma writes in its folder even to search, so
    queries fail; the error now says so and gives the ways out instead of only SQLite's 'attempt to write a
    readonly database'."""
    import os
    import subprocess

    cfg, _, idx0 = text_index
    if shutil.which("chattr") is None or os.geteuid() != 0:
        pytest.skip("a read-only folder for root needs chattr +i")
    idx = _copy(idx0, tmp_path / "idx")
    if subprocess.run(["chattr", "-R", "+i", str(idx)], capture_output=True).returncode != 0:
        pytest.skip("this file system has no immutable flag")
    try:
        rc, _, out = rh.cli("--config", str(cfg), "query", "main fuse", "--index-dir", str(idx))
    finally:
        subprocess.run(["chattr", "-R", "-i", str(idx)], check=True)
    assert rc == 2 and "Traceback" not in out, out
    assert "Chroma writes in its folder even to search: copy the index folder to a writable place" in out, out


def _repair_with_a_failing_file(cfg: Path, lib0: Path, idx0: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the index and its library with a corrupt PDF (it fails) and an unused crop (a problem)."""
    lib, idx = tmp_path / "lib", _copy(idx0, tmp_path / "idx")
    shutil.copytree(lib0, lib)
    (lib / "broken.pdf").write_bytes(b"%PDF-1.4 not really a PDF")
    (idx / "crops").mkdir(exist_ok=True)
    (idx / "crops" / "stray.png").write_bytes(b"x")
    return lib, idx


def test_repair_with_failed_files_says_they_are_not_indexed(text_index, tmp_path):
    """A trial's `check --repair` printed "4 failed; the index is now sound" and exited 1: the line read as
    a success. It now says the structure is sound again but the files could not be indexed."""
    from manualrag.check import check_index, repair_index, repair_outcome
    from manualrag.config import load_config

    cfg, lib0, idx0 = text_index
    lib, idx = _repair_with_a_failing_file(cfg, lib0, idx0, tmp_path)
    conf = {**load_config(cfg), "index_dir": str(idx)}
    report = check_index(idx, conf)
    assert not report.ok and report.unused_crops == ["crops/stray.png"]
    summary = repair_index(idx, conf, report, lib)
    after = check_index(idx, conf)
    assert after.ok and summary.exit_code == 1 and [f.path for f in summary.failed] == ["broken.pdf"]
    line = repair_outcome(summary.to_dict(), after.to_dict(), [])
    assert "1 file(s) could not be indexed" in line and "sound again" in line, line
    assert "now sound" not in line
    ok = repair_outcome({"documents": {"indexed": 2, "failed": 0}}, {"ok": True, "problems": []}, [])
    assert ok == "repaired: 2 document(s) indexed again, 0 failed; the index is now sound"


def test_check_repair_command_says_failed_files_are_not_indexed(text_index, tmp_path):
    cfg, lib0, idx0 = text_index
    lib, idx = _repair_with_a_failing_file(cfg, lib0, idx0, tmp_path)
    base = ["--config", str(cfg), "check", "--repair", "--index-dir", str(idx), "--library", str(lib)]
    rc, _, out = rh.cli(*base)
    assert rc == 1 and "1 file(s) could not be indexed" in out and "now sound" not in out, out
