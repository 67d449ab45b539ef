"""The index folder (manualrag.index): its layout, opening it, and remove / reset / stats through the CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from manualrag.cli import main
from manualrag.config import load_config
from manualrag.errors import IndexNotFoundError
from manualrag.index import Index, IndexLayout


def _cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.output


@pytest.fixture
def indexed(tmp_path: Path) -> tuple[Path, Path]:
    lib, idx = tmp_path / "lib", tmp_path / "idx"
    (lib / "pumps").mkdir(parents=True)
    (lib / "pumps" / "p1.md").write_text("# Pump P1\n\nThe impeller of pump P1 turns clockwise.\n")
    (lib / "pumps" / "p2.md").write_text("# Pump P2\n\nPump P2 has a ceramic seal.\n")
    (lib / "valve.txt").write_text("The relief valve opens at 6 bar.\n")
    rc, out = _cli("index", str(lib), "--index-dir", str(idx), "--no-dense")
    assert rc == 0, out
    return lib, idx


def test_layout_names_every_part_of_the_folder(indexed):
    _, idx = indexed
    layout = IndexLayout(idx)
    assert layout.db.is_file() and layout.config.is_file() and layout.chroma.is_dir()
    assert IndexLayout.crop_rel("ab" * 16) == f"crops/{'ab' * 16}.png"
    written = {p.name for p in idx.iterdir()} - {"index.sqlite-wal", "index.sqlite-shm"}
    named = {p.name for p in layout.reset_files()} | {layout.lock.name}
    assert written <= named, f"files the layout does not name: {written - named}"


def test_a_run_with_nothing_to_do_does_not_read_as_an_empty_index(indexed):
    """A new user read "documents: 0 indexed, 3 unchanged ... pages: 0, figures: 0" as an empty index."""
    lib, idx = indexed
    rc, out = _cli("index", str(lib), "--index-dir", str(idx), "--no-dense")
    assert rc == 0 and "0 indexed, 3 unchanged" in out, out
    assert "read this run: 0 pages, 0 figures (unchanged documents are not read again;" in out, out
    (lib / "valve.txt").write_text("The relief valve opens at 7 bar.\n")
    rc, out = _cli("index", str(lib), "--index-dir", str(idx), "--no-dense")
    assert rc == 0 and "read this run: 1 page, 0 figures\n" in out, out


def test_index_of_one_file_says_to_give_its_folder_or_inspect_it(indexed):
    """``index manual.pdf`` said click's "Directory '...' is a file." with no way on."""
    lib, idx = indexed
    rc, out = _cli("index", str(lib / "valve.txt"), "--index-dir", str(idx))
    assert rc == 2 and "Traceback" not in out, out
    assert f"{lib / 'valve.txt'} is a file: give the folder of manuals it is in" in out, out
    assert f"manualrag inspect {lib / 'valve.txt'}" in out, out


def test_open_needs_an_index_and_says_how_to_build_one(tmp_path):
    with pytest.raises(IndexNotFoundError, match=r"no index in .*manualrag index LIBRARY --index-dir"):
        Index.open(tmp_path / "none", load_config())
    rc, out = _cli("stats", "--index-dir", str(tmp_path / "none"))
    assert rc == 2 and "no index in" in out and "Traceback" not in out
    rc, out = _cli("remove", "x.pdf", "--index-dir", str(tmp_path / "none"))
    assert rc == 2 and "no index in" in out
    assert not (tmp_path / "none" / "index.sqlite").exists(), "remove must not create an index"


def test_remove_takes_library_paths_folders_and_paths_inside_the_library(indexed):
    lib, idx = indexed
    rc, out = _cli("remove", str(lib / "valve.txt"), "--index-dir", str(idx))  # an absolute path
    assert rc == 0 and "removed valve.txt" in out
    # a typo beside a good path is named, and the run is partial (before: silently ignored, rc 0)
    rc, out = _cli("remove", "pumps/p1.md", "pumps/p3.md", "--index-dir", str(idx))
    assert rc == 1 and "removed pumps/p1.md" in out, out
    assert f"nothing matched: pumps/p3.md (no indexed document or folder of the library {lib}" in out, out
    rc, out = _cli("remove", "pumps/", "--index-dir", str(idx))  # a folder of the library
    assert rc == 0 and "removed pumps/p2.md" in out and "nothing matched" not in out, out
    rc, out = _cli("remove", "nothing.pdf", "--index-dir", str(idx))
    assert rc == 1 and "nothing matched" in out
    with Index.open(idx, load_config()) as index:
        assert index.stats()["documents"] == 0


def test_remove_takes_dot_slash_and_doubled_separators_as_library_paths(indexed, tmp_path, monkeypatch):
    """`remove "./misc/t440p flash chips.jpg"` said `nothing matched` (rc 1) from a folder other than the
    library, where the same path without `./` was removed: `./` and `//` are now read away."""
    lib, idx = indexed
    monkeypatch.chdir(tmp_path)  # not the library: the paths name no file here
    rc, out = _cli("remove", "./pumps/p1.md", "pumps//./p2.md", ".//valve.txt", "--index-dir", str(idx))
    assert rc == 0 and "nothing matched" not in out, out
    assert {"removed pumps/p1.md", "removed pumps/p2.md", "removed valve.txt"} <= set(out.splitlines()), out


def test_suggested_commands_quote_folders_with_spaces(tmp_path, monkeypatch):
    """The commands that messages suggest were printed with bare paths (`--index-dir Manuals Library`), which
    a user pasting them runs with two arguments. Each path is now quoted for the shell where it needs it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.md").write_text("# Pump\n\nThe relief valve opens at 6 bar.\n")
    rc, out = _cli("index", "lib", "--index-dir", "Manuals Library", "--no-dense")
    assert rc == 0, out
    rc, out = _cli("stats", "--index-dir", "No Index")
    assert rc == 2 and "`manualrag index LIBRARY --index-dir 'No Index'`" in out, out
    (tmp_path / "Manuals Library" / "crops").mkdir(exist_ok=True)
    (tmp_path / "Manuals Library" / "crops" / f"{'ab' * 16}.png").write_bytes(b"unused")
    rc, out = _cli("check", "--index-dir", "Manuals Library")
    assert rc == 1 and "run `manualrag check --repair --index-dir 'Manuals Library'` to fix it" in out, out
    (tmp_path / "Broken Index").mkdir()
    (tmp_path / "Broken Index" / "index.sqlite").write_bytes(b"not a database" * 512)
    rc, out = _cli("stats", "--index-dir", "Broken Index")
    assert rc == 2, out
    assert "`manualrag check --repair --index-dir 'Broken Index'`" in out, out
    assert "`manualrag reset --index-dir 'Broken Index'`" in out, out


def test_stats_lines_up_every_value(indexed):
    """``stats`` printed keys right-aligned to 14 characters: ``suspect_passages`` pushed its value two
    columns right of the others, and a lexical-only index showed ``dim: None``."""
    _, idx = indexed
    rc, out = _cli("stats", "--index-dir", str(idx))
    assert rc == 0, out
    lines = out.splitlines()
    assert any(line.lstrip().startswith("suspect_passages: ") for line in lines), out
    assert len({line.index(": ") for line in lines}) == 1, out
    assert "None" not in out, out


def test_stats_names_the_files_not_indexed_and_why(indexed):
    """``stats`` said ``errors: 1`` and no more: which file, and why, was in the index run's output only."""
    lib, idx = indexed
    (lib / "broken.pdf").write_bytes(b"%PDF-1.4 not really a PDF")
    rc, out = _cli("index", str(lib), "--index-dir", str(idx), "--no-dense")
    assert rc == 1, out
    rc, out = _cli("stats", "--index-dir", str(idx))
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[-2].startswith("files not indexed") and lines[-1].startswith("  broken.pdf: "), out
    assert "errors: 1" in out
    rc, out = _cli("stats", "--index-dir", str(idx), "--json")
    failed = json.loads(out)["failed"]
    assert [f["path"] for f in failed] == ["broken.pdf"] and failed[0]["reason"] in lines[-1]
    # `remove` takes a failed file's entry away too (the next run tries the file again while it is there)
    rc, out = _cli("remove", "broken.pdf", "--index-dir", str(idx))
    assert rc == 0 and out.strip() == "removed broken.pdf", out
    assert json.loads(_cli("stats", "--index-dir", str(idx), "--json")[1])["failed"] == []
    rc, out = _cli("index", str(lib), "--index-dir", str(idx), "--no-dense")
    assert rc == 1 and "broken.pdf" in out, out
    (lib / "broken.pdf").unlink()
    rc, out = _cli("index", str(lib), "--index-dir", str(idx), "--no-dense")
    assert rc == 0 and json.loads(_cli("stats", "--index-dir", str(idx), "--json")[1])["failed"] == []


def test_indexing_another_library_into_the_index_is_refused_before_anything_is_removed(indexed, tmp_path):
    """One library per index. A user "adding" a second folder to the default index (or mistyping the
    library's path) lost the first library's documents, told only afterwards. Such a run is now refused
    before anything changes (rc 2, one line with both ways out); --replace-library replaces the library and
    says so; a moved library (every document still there) is indexed without a word."""
    lib, idx = indexed
    other = tmp_path / "other"
    other.mkdir()
    (other / "fan.md").write_text("# Fan\n\nThe fan runs at 1400 rpm.\n")
    for folder in (other, tmp_path / "empty"):
        folder.mkdir(exist_ok=True)
        rc, out = _cli("index", str(folder), "--index-dir", str(idx), "--no-dense")
        assert rc == 2, out
        assert out.strip().splitlines() == [
            f"error: {idx} holds the library {lib.resolve()}; {folder} lacks 3 of its 3 document(s) "
            "(e.g. pumps/p1.md), and indexing it there would remove them: index it into its own folder "
            "(--index-dir DIR), or pass --replace-library to replace that library"
        ], out
        rc, out = _cli("query", "ceramic seal", "--index-dir", str(idx), "--json")
        assert rc == 0 and '"pumps/p2.md"' in out, out  # nothing was removed
    rc, out = _cli("index", str(other), "--index-dir", str(idx), "--no-dense", "--replace-library")
    assert rc == 0, out
    assert "3 removed" in out
    assert (
        f"warning: this index was built from {lib.resolve()}; indexing {other} replaced that library: "
        "3 document(s) not in it were removed"
    ) in out, out
    rc, out = _cli("index", str(other), "--index-dir", str(idx), "--no-dense")
    assert rc == 0 and "warning" not in out, out
    moved = tmp_path / "moved"
    other.rename(moved)
    rc, out = _cli("index", str(moved), "--index-dir", str(idx), "--no-dense")
    assert rc == 0 and "warning" not in out and "removed" not in out.replace("0 removed", ""), out


def test_an_index_folder_that_is_a_file_or_cannot_be_written_is_one_line(indexed, tmp_path):
    """MANUALRAG_INDEX_DIR (or --index-dir) naming a file, and an index folder that cannot be written
    (read-only media, an immutable copy): index, remove and reset gave a traceback and rc 1 ("some files
    failed"). Each is now one line, rc 2."""
    import shutil
    import subprocess

    lib, idx = indexed
    afile = tmp_path / "afile"
    afile.write_text("hi")
    res = CliRunner().invoke(main, ["index", str(lib), "--no-dense"], env={"MANUALRAG_INDEX_DIR": str(afile)})
    assert res.exit_code == 2, res.output
    assert res.output.strip() == f"error: the index folder {afile} is a file: give a folder with --index-dir"
    if shutil.which("chattr") is None or os.geteuid() != 0:
        pytest.skip("an unwritable folder for root needs chattr +i")
    frozen = tmp_path / "frozen"
    shutil.copytree(idx, frozen)
    if subprocess.run(["chattr", "-R", "+i", str(frozen)], capture_output=True).returncode != 0:
        pytest.skip("this file system has no immutable flag")
    try:
        for args in (["index", str(lib), "--no-dense"], ["remove", "valve.txt"], ["reset", "--yes"]):
            rc, out = _cli(*args, "--index-dir", str(frozen))
            assert rc == 2, out
            assert out.strip().startswith(f"error: cannot write in the index folder {frozen}: "), out
    finally:
        subprocess.run(["chattr", "-R", "-i", str(frozen)], check=True)


def test_a_closed_output_pipe_exits_141_without_a_word(indexed):
    """`manualrag query ... | head -1`: the reader leaves early. query and stats exited 1 ("some files
    failed") without a word; every command now exits 141 (128 + SIGPIPE, what a shell reports for such a
    program), with nothing on stderr."""
    import subprocess
    import sys

    lib, idx = indexed
    for args in (["stats"], ["query", "relief valve"], ["index", str(lib), "--no-dense"]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "manualrag", *args, "--index-dir", str(idx)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        assert proc.stdout is not None
        proc.stdout.close()  # the reader is gone before the first line
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 141, (args, proc.returncode, err)
        assert b"Traceback" not in err and b"error" not in err, err


def test_reading_a_copy_without_its_vectors_writes_nothing_into_it(indexed, tmp_path):
    """A copy of index.sqlite alone (a published copy whose vectors live elsewhere, a backup): stats, query
    and check read it as having no vectors. They created an empty chroma/ store in it (and check then counted
    the vectors missing from that), writing into a folder a reader should leave alone."""
    _, idx = indexed
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy2(idx / "index.sqlite", copy / "index.sqlite")
    before = sorted(p.name for p in copy.iterdir())
    rc, out = _cli("stats", "--index-dir", str(copy))
    assert rc == 0, out
    rc, out = _cli("query", "relief valve", "--index-dir", str(copy))
    assert rc == 0 and "valve" in out.lower(), out
    rc, out = _cli("check", "--index-dir", str(copy))
    assert rc == 0, out  # an index built without vectors: none are missing
    sqlite_own = {"index.sqlite-wal", "index.sqlite-shm"}  # SQLite's readers of a WAL database make these
    assert sorted(p.name for p in copy.iterdir() if p.name not in sqlite_own) == before


def test_reset_deletes_the_index_and_nothing_else(indexed):
    _, idx = indexed
    (idx / "notes.txt").write_text("mine")
    rc, out = _cli("reset", "--yes", "--index-dir", str(idx))
    assert rc == 0 and "deleted" in out
    assert {p.name for p in idx.iterdir()} <= {"notes.txt", "lock"}
    assert (idx / "notes.txt").read_text() == "mine"
    (idx / "notes.txt").unlink()
    lib, _ = indexed
    rc, out = _cli("index", str(lib), "--index-dir", str(idx), "--no-dense")
    assert rc == 0, out
    rc, out = _cli("reset", "--yes", "--index-dir", str(idx))
    assert rc == 0 and "deleted" in out
    assert not idx.exists()  # nothing of the user's in it: the folder goes too (it stayed, empty)


def test_reset_of_a_folder_that_is_not_an_index_deletes_nothing(tmp_path):
    """``reset --index-dir DIR`` on a user's folder (a typo, the library itself) deleted its ``config.json``
    and ``crops/`` and said "index in DIR deleted". A folder without a manifest now gets the answer a missing
    folder gets, before any question, and keeps every file."""
    folder = tmp_path / "scratch"
    (folder / "crops").mkdir(parents=True)
    (folder / "config.json").write_text('{"my": "settings"}')
    (folder / "crops" / "photo.png").write_bytes(b"x")
    (folder / "notes.txt").write_text("keep")
    before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    missing_rc, missing_out = _cli("reset", "--yes", "--index-dir", str(tmp_path / "none"))
    assert missing_out.strip() == f"no index in {tmp_path / 'none'}", missing_out
    for args in (["--yes"], []):  # without --yes: no question about an index that is not there
        res = CliRunner().invoke(main, ["reset", *args, "--index-dir", str(folder)], input="y\n")
        assert res.exit_code == missing_rc and res.output.strip() == f"no index in {folder}", res.output
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == before
    assert (folder / "config.json").read_text() == '{"my": "settings"}'


def test_reset_deletes_the_ocr_cache_side_files_but_not_a_configured_cache(indexed, tmp_path, monkeypatch):
    """The OCR cache's ``-wal`` and ``-shm`` were left behind without their database (the tests' own
    ``ocr.cache`` lies elsewhere: those in the folder are the index's); a cache that ``ocr.cache`` names
    (here: the file in the folder itself) is the user's and stays."""
    _, idx = indexed
    side = ("ocr_cache.sqlite", "ocr_cache.sqlite-wal", "ocr_cache.sqlite-shm")
    for name in side:
        (idx / name).write_bytes(b"")
    rc, out = _cli("reset", "--yes", "--index-dir", str(idx))
    assert rc == 0 and "deleted" in out, out
    assert not idx.exists(), sorted(p.name for p in idx.iterdir())  # nothing left: the folder went too
    lib = tmp_path / "lib"
    rc, out = _cli("index", str(lib), "--index-dir", str(idx), "--no-dense")
    assert rc == 0, out
    for name in side:
        (idx / name).write_bytes(b"")
    monkeypatch.setenv("MANUALRAG_OCR__CACHE", str(idx / "ocr_cache.sqlite"))
    rc, out = _cli("reset", "--yes", "--index-dir", str(idx))
    assert rc == 0 and "deleted" in out, out
    assert {p.name for p in idx.iterdir()} - {"lock"} == set(side), out


def test_the_summary_names_the_first_skipped_files_of_each_reason(tmp_path):
    """ "skipped files: 1 excluded" left the user to guess which file; the line now names up to three per
    reason, and ``--json`` adds them under ``skipped_examples`` beside the unchanged counts."""
    import json

    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "valve.txt").write_text("The relief valve opens at 6 bar.\n")
    for name in ("b.docx", "c.xlsx", "d.zip", "e.exe"):
        (lib / name).write_text("not a manual")
    idx = lib / "data" / "index"
    rc, out = _cli("index", str(lib), "--index-dir", str(idx), "--no-dense")
    assert rc == 0, out
    # the index folder is a folder of the library, not a skipped file: named on a line of its own
    assert (
        "  skipped: data/index (the index folder)\n  skipped files: 4 unsupported (b.docx, c.xlsx, d.zip, ...)"
        in out
    ), out
    rc, out = _cli("index", str(lib), "--index-dir", str(idx), "--no-dense", "--json")
    assert rc == 0, out
    summary = json.loads(out)
    # (its own reason: not among the files the exclude globs left out, as it was counted before)
    assert summary["skipped"] == {"own_index": 1, "unsupported": 4}
    assert summary["skipped_examples"] == {
        "own_index": ["data/index"],
        "unsupported": ["b.docx", "c.xlsx", "d.zip"],
    }


def test_exclude_leaves_files_out_and_takes_an_indexed_one_out(indexed, tmp_path):
    """Known-bad or unwanted files: `index --exclude GLOB` (or config key exclude) leaves them out, counted
    as skipped `excluded`; one indexed before leaves the index; without the glob it comes back."""
    lib, idx = indexed

    def run(*args: str) -> tuple[int, Any]:
        res = CliRunner().invoke(main, [*args, "--json"])
        return res.exit_code, json.loads(res.stdout)

    def documents() -> int:
        return run("stats", "--index-dir", str(idx))[1]["documents"]

    (lib / "drafts").mkdir()
    (lib / "drafts" / "d1.md").write_text("# Draft\n\nThe draft pump has a paper seal.\n")
    rc, summary = run("index", str(lib), "--index-dir", str(idx), "--no-dense", "--exclude", "drafts/*")
    assert rc == 0 and summary["skipped"] == {"excluded": 1}, summary
    rc, summary = run("index", str(lib), "--index-dir", str(idx), "--no-dense", "--exclude", "p2.md")
    assert rc == 0 and summary["skipped"] == {"excluded": 1} and summary["removed"] == ["pumps/p2.md"], (
        summary
    )
    assert documents() == 3  # p1.md, valve.txt, drafts/d1.md; pumps/p2.md left the index
    rc, hits = run("query", "ceramic seal", "--index-dir", str(idx))
    assert "pumps/p2.md" not in {h["path"] for h in hits}
    rc, out = _cli("index", str(lib), "--index-dir", str(idx), "--no-dense", "--exclude", "p1.md")
    assert rc == 0 and "  removed: pumps/p1.md" in out, out  # the text summary names what left
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("exclude: ['**/p*.md', 'drafts/*']\n")
    rc, summary = run("--config", str(cfg), "index", str(lib), "--index-dir", str(idx), "--no-dense")
    assert rc == 0 and summary["skipped"] == {"excluded": 3} and documents() == 1, summary
    rc, summary = run("index", str(lib), "--index-dir", str(idx), "--no-dense")
    assert rc == 0 and summary["skipped"] == {} and documents() == 4, summary
    # a folder by its name; a glob that leaves out nothing is named in a warning
    rc, summary = run("index", str(lib), "--index-dir", str(idx), "--no-dense", "--exclude", "./drafts/")
    assert rc == 0 and summary["skipped"] == {"excluded": 1} and documents() == 3, summary
    rc, summary = run("index", str(lib), "--index-dir", str(idx), "--no-dense", "--exclude", "lib/pumps/*")
    assert rc == 0 and summary["skipped"] == {} and documents() == 4, summary
    assert any(w.startswith("exclude 'lib/pumps/*' matches no file of") for w in summary["warnings"]), summary
    # globs that leave out every file would empty the index: refused, nothing removed
    rc, out = _cli("index", str(lib), "--index-dir", str(idx), "--no-dense", "--exclude", "*")
    assert rc == 2 and "leave out every file of" in out and "`manualrag reset` empties an index" in out, out
    assert documents() == 4
    (tmp_path / "empty.yaml").write_text("exclude:\n")  # no items
    rc, summary = run(
        "--config", str(tmp_path / "empty.yaml"), "index", str(lib), "--index-dir", str(idx), "--no-dense"
    )
    assert rc == 0 and summary["skipped"] == {}, summary
    (tmp_path / "bad.yaml").write_text("exclude: drafts/*\n")
    rc, out = _cli("--config", str(tmp_path / "bad.yaml"), "index", str(lib), "--index-dir", str(idx))
    assert rc == 2 and "config key 'exclude' must be a list of strings" in out, out


@pytest.mark.parametrize(
    "path, pattern, matches",
    [
        ("drafts/d1.md", "drafts", True),  # a folder, written as a user would
        ("drafts/d1.md", "drafts/", True),
        ("drafts/x/d1.md", "./drafts", True),
        ("draftsx/d1.md", "drafts", False),
        ("a/drafts/d1.md", "drafts", False),  # folders are paths inside the library
        ("a/drafts/d1.md", "**/drafts/", True),
        ("p.md", "./p.md", True),
        ("old/a.pdf", "a.pdf", True),  # a file name matches in any folder
        ("a.pdf", "", False),
    ],
)
def test_library_globs_take_folders_and_file_names(path, pattern, matches):
    """The globs of --source and exclude (manualrag.index.glob_match)."""
    from manualrag.index import glob_match

    assert glob_match(path, pattern) is matches
