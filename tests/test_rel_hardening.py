"""Hardening round 2 (issue 14): what a new user and a hostile library broke. Each test is the regression
test of one row of the table in docs/reliability.md ("Round 2"); the CLI runs as a real process where the
row is about the process (its working directory, its output lines, its exit code)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from manualrag.cli import main
from tests import helpers_pdf as h
from tests import rel_helpers as rh


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None):
    """``manualrag ARGS`` as a real process in ``cwd``; returns the CompletedProcess (text)."""
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "manualrag", *args],
        cwd=str(cwd),
        env=full_env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


# ------------------------------------------------------------------------------ row 1: relative paths
@pytest.mark.slow
def test_relative_paths_work_from_any_directory(tmp_path):
    """Extraction workers run in another working directory: a library, index or OCR cache given relative
    to the user's cwd must still be found (before: every file FAILED "No such file or directory", rc 1)."""
    (tmp_path / "work" / "lib").mkdir(parents=True)
    (tmp_path / "work" / "lib" / "r.md").write_bytes(rh.versioned_md("relpath"))
    (tmp_path / "work" / "sub").mkdir()
    cfg = rh.write_cfg(tmp_path / "cfg.yaml")
    env = {"MANUALRAG_OCR__CACHE": "cache/ocr.sqlite"}  # relative too: opened by the worker
    for cwd, lib, idx in (
        (tmp_path / "work", "lib", "i1"),
        (tmp_path / "work", "./lib", "./i2"),
        (tmp_path / "work" / "sub", "../lib", "../i3"),
    ):
        res = _run("--config", str(cfg), "index", lib, "--index-dir", idx, "--no-dense", cwd=cwd, env=env)
        assert res.returncode == 0, (lib, res.stdout, res.stderr)
        assert "1 indexed" in res.stdout and "FAILED" not in res.stderr, (lib, res.stdout, res.stderr)
        assert (cwd / idx / "index.sqlite").is_file()
        assert (cwd / "cache" / "ocr.sqlite").is_file(), "the OCR cache lands where the user said"
    q = _run("--config", str(cfg), "query", "torque relpath", "--index-dir", idx, cwd=cwd)
    assert q.returncode == 0 and "r.md" in q.stdout, (q.stdout, q.stderr)


# --------------------------------------------------------------- row 6: line breaks in untrusted strings
def test_line_breaks_in_names_and_text_cannot_forge_output_lines(tmp_path):
    """A file name or document text holding a newline, CR or U+2028 is shown on one line, escaped: it
    cannot forge a line of the summary (before: "FAILED ok.md: forged error line" printed as its own line)
    nor break the query table. JSON output keeps the real strings."""
    lib = tmp_path / "lib"
    lib.mkdir()
    forged = "x\nFAILED ok.md: forged error line\n.md"
    (lib / forged).write_bytes(b"")  # fails: empty file
    crname = "b\r\u2028\u2029c\x85.md"
    (lib / crname).write_text("# Pump\n\nThe pump relay X9\u2028FORGED 1 text\r\nis wired to the panel.\n")
    idx = tmp_path / "idx"
    res = _run("index", str(lib), "--index-dir", str(idx), "--no-dense", cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    for out in (res.stdout, res.stderr):
        assert not any(c in out for c in "\r\u2028\u2029\x85"), out
        assert not any(line.startswith("FAILED") for line in out.splitlines()), out
    failed = [line for line in res.stderr.splitlines() if "FAILED" in line]
    assert failed == ["  FAILED x\\nFAILED ok.md: forged error line\\n.md: empty file (0 bytes)"], res.stderr
    q = _run("query", "pump relay X9", "--index-dir", str(idx), cwd=tmp_path)
    assert q.returncode == 0, q.stderr
    lines = q.stdout.splitlines()
    assert not any(c in q.stdout for c in "\r\u2028\u2029\x85"), q.stdout
    assert any("b\\r\\u2028\\u2029c\\x85.md:1" in line for line in lines), q.stdout
    assert not any(line.lstrip().startswith("FORGED") for line in lines), q.stdout
    j = _run("query", "pump relay X9", "--index-dir", str(idx), "--json", cwd=tmp_path)
    assert json.loads(j.stdout)[0]["path"] == crname


# ------------------------------------------------------------------ a small dense index shared by rows
@pytest.fixture(scope="module")
def small_index(tmp_path_factory, tiny_clip_dir):
    """Two manuals and a photo, indexed with the tiny CLIP (no text model): (cfg, library, index)."""
    root = tmp_path_factory.mktemp("small")
    lib = root / "lib"
    lib.mkdir()
    (lib / "pump.md").write_bytes(rh.versioned_md("pumpdoc", sections=3))
    (lib / "valve.md").write_text("# Valve\n\nThe relief valve opens at 6 bar; replace the O-ring yearly.\n")
    (lib / "photo.png").write_bytes(h.photo_png(200, 150))
    cfg = rh.write_cfg(root / "cfg.yaml", model=str(tiny_clip_dir))
    idx = root / "idx"
    rc, s, out = rh.cli(*rh.index_args(cfg, lib, idx, dense=True))
    assert rc == 0, out
    return cfg, lib, idx


# ------------------------------------------------------------------------- row 8: ranges, usage errors
@pytest.mark.parametrize(
    "args, says",
    [
        (["query", "torque", "-k", "0"], "-k"),
        (["query", "torque", "-k", "-1"], "-k"),
        (["query", "torque", "--channels", ""], "--channels"),
        (["query", "torque", "--channels", "dense,bogus"], "bogus"),
        (["context", "torque", "--max-chars", "-5"], "--max-chars"),
        (["context", "torque", "--max-chars", "100"], "preamble"),
        (["context", "torque", "--max-chars", "300"], "no room for a source"),  # was an empty block, rc 0
        (["context", "   "], "give a question"),  # it said "give a query text or an image"
        (["context", "torque", "-k", "0"], "-k"),
        (["context", "torque", "--with-images"], "--format json"),
        (["eval", "QUERIES", "--k", "0"], "--k"),
        (["eval", "QUERIES", "-k", "0"], "-k"),
        (["query", "torque", "--k", "0"], "--k"),
    ],
)
def test_out_of_range_options_are_usage_errors(small_index, tmp_path, args, says):
    """Before: -k -1 gave 1 hit and -k 0 ten, eval --k 0 an all-zero report with rc 0, --max-chars 100 a
    268-character block (and -5 was accepted), --channels "" meant all channels, --with-images was ignored
    with markdown. Now each is a one-line usage error, rc 2."""
    cfg, _, idx = small_index
    queries = tmp_path / "q.jsonl"
    queries.write_text(
        json.dumps({"query": "torque", "file": "pump.md", "pages": [1], "kind": "text"}) + "\n"
    )
    args = [str(queries) if a == "QUERIES" else a for a in args]
    rc, _, out = rh.cli("--config", str(cfg), *args, "--index-dir", str(idx))
    assert rc == 2, out
    assert says in out and "Traceback" not in out, out


def test_k_is_spelled_the_same_in_query_context_and_eval(small_index, tmp_path):
    """``eval`` took ``--k`` and ``query``/``context`` only ``-k``: a user who had run ``eval --k 5`` got
    "No such option '--k'" from ``query --k 5`` (and the reverse). Each now takes both spellings."""
    cfg, _, idx = small_index
    base = ["--config", str(cfg)]
    rc, hits, out = rh.cli(*base, "query", "torque", "--k", "1", "--json", "--index-dir", str(idx))
    assert rc == 0 and len(hits) == 1, out
    rc, ctx, out = rh.cli(*base, "context", "torque", "--k", "1", "--format", "json", "--index-dir", str(idx))
    assert rc == 0 and len(ctx["sources"]) == 1, out
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"query": "torque", "file": "pump.md", "pages": [1]}) + "\n")
    rc, report, out = rh.cli(*base, "eval", str(queries), "-k", "1", "--json", "--index-dir", str(idx))
    assert rc == 0 and report["n"] == 1, out


def test_eval_notes_queries_about_files_the_index_does_not_hold(small_index, tmp_path):
    """The README's ``eval ../shared/corpus/queries.jsonl`` against the sample index: queries about
    manuals that were never indexed scored 0 without a word, which reads as bad retrieval. The report
    now says how many name a file the index lacks; queries about indexed files add no such note."""
    cfg, _, idx = small_index
    queries = tmp_path / "q.jsonl"
    rows = [
        {"query": "torque", "file": "pump.md", "pages": [1]},
        {"query": "relief valve", "file": "sub/valve.md", "pages": [1]},  # matched by its name
        {"query": "print dialog", "file": "gutenprint-users-manual.pdf", "pages": [24]},
    ]
    queries.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["--config", str(cfg), "eval", str(queries), "--index-dir", str(idx)]
    rc, report, out = rh.cli(*base, "--json")
    assert rc == 0, out
    absent = [n for n in report["notes"] if "name a file the index does not hold" in n]
    assert absent == [
        "1 of 3 queries name a file the index does not hold (e.g. gutenprint-users-manual.pdf): "
        "is this the index of their library?"
    ], report["notes"]
    queries.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    rc, report, out = rh.cli(*base, "--json")
    assert rc == 0 and not any("does not hold" in n for n in report["notes"]), out


def test_context_block_fits_its_budget_and_library_calls_refuse_bad_values(small_index):
    cfg, _, idx = small_index
    rc, _, out = rh.cli(
        "--config", str(cfg), "context", "torque coupling", "--max-chars", "700", "--index-dir", str(idx)
    )
    assert rc == 0 and "BEGIN SOURCE [1]" in out, out
    assert len(out.rstrip("\n")) <= 700
    from manualrag.config import load_config
    from manualrag.errors import ManualragError
    from manualrag.retriever.evaluate import evaluate
    from manualrag.retriever.search import Retriever

    with Retriever.open(idx, load_config(cfg)) as r:
        for bad in ({"k": 0}, {"k": -1}, {"channels": []}):
            with pytest.raises(ManualragError):
                r.search("torque", **bad)
        with pytest.raises(ManualragError, match="cut-off"):
            evaluate(r, [], k=0)


def test_declining_reset_says_so_and_keeps_the_index(small_index, tmp_path):
    cfg, lib, _ = small_index
    idx = tmp_path / "idx"
    assert rh.cli(*rh.index_args(cfg, lib, idx, dense=False))[0] == 0
    res = CliRunner().invoke(main, ["--config", str(cfg), "reset", "--index-dir", str(idx)], input="n\n")
    assert res.exit_code == 2 and "not deleted" in res.output, res.output
    assert (idx / "index.sqlite").is_file()
    # no answer at all (stdin at its end: a script, a pipe, Ctrl-D) is a no too (before: "Aborted!", rc 1)
    res = _run("--config", str(cfg), "reset", "--index-dir", str(idx), cwd=tmp_path, stdin="")
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stderr.splitlines() == [f"not deleted: the index in {idx} is kept (--yes skips the question)"]
    assert "Aborted" not in res.stdout + res.stderr and (idx / "index.sqlite").is_file()


# ------------------------------------------------------------------------ row 5: bad query images
def test_bad_query_images_are_one_line_usage_errors_like_index(small_index, tmp_path):
    """``query --image`` with a file that is not a usable image: rc 2 and the same one-line reason that
    ``index`` gives for the same file (before: a traceback, UnidentifiedImageError or
    DecompressionBombError, rc 1)."""
    cfg, _, idx = small_index
    lib = tmp_path / "badimg"
    lib.mkdir()
    bad = rh.bad_images()
    for name, (data, _) in bad.items():
        (lib / name).write_bytes(data)
    rc, s, out = rh.cli(*rh.index_args(cfg, lib, tmp_path / "idx", dense=False))
    indexed_reasons = {f["path"]: f["reason"] for f in s["failed"]}
    assert set(indexed_reasons) == set(bad), out
    for name, (_, reason) in bad.items():
        assert indexed_reasons[name].startswith(reason), (name, indexed_reasons[name])
        rc, _, out = rh.cli(
            "--config", str(cfg), "query", "--image", str(lib / name), "--index-dir", str(idx)
        )
        assert rc == 2, (name, out)
        lines = out.strip().splitlines()
        assert lines == [f"error: query image {lib / name}: {indexed_reasons[name]}"], (name, out)
    (tmp_path / "ok.png").write_bytes(h.photo_png(200, 150))  # a good image still works
    rc, _, out = rh.cli(
        "--config", str(cfg), "query", "--image", str(tmp_path / "ok.png"), "--index-dir", str(idx)
    )
    assert rc == 0 and "photo.png" in out, out


# -------------------------------------------------------------- row 4: damaged index, manualrag check
@pytest.mark.slow
def test_check_finds_and_repairs_inconsistencies_and_a_damaged_manifest(small_index, tmp_path):
    """`manualrag check` verifies SQLite integrity and manifest <-> vector ids <-> crops; `--repair` fixes
    them from the library. A damaged index.sqlite makes every command say so in one line naming the file and
    the ways out, rc 2 (before: a raw sqlite3.DatabaseError traceback, rc 1)."""
    from manualrag.config import load_config
    from manualrag.store import VectorStore

    cfg, small_lib, _ = small_index
    lib = tmp_path / "lib"
    lib.mkdir()
    for f in small_lib.iterdir():
        (lib / f.name).write_bytes(f.read_bytes())
    (lib / "figs.pdf").write_bytes(rh.versioned_pdf("figs", pages=1))
    idx = tmp_path / "idx"
    base = ["--config", str(cfg)]
    assert rh.cli(*rh.index_args(cfg, lib, idx, dense=True))[0] == 0
    rc, rep, out = rh.cli(*base, "check", "--index-dir", str(idx), "--json")
    assert rc == 0 and rep["ok"], out

    # inconsistencies: an orphan vector, a missing vector, a missing crop, an unused crop
    with rh.sqlite_ro(idx) as db:
        victim = db.execute(
            "SELECT id FROM windows WHERE doc_path = 'valve.md' AND channel = 'clip'"
        ).fetchone()[0]
    store = VectorStore.open(idx, load_config(cfg))
    try:
        store.delete("text", [victim])
        dim = store.model_of("text")[1]
        v = np.ones((1, dim), dtype=np.float32) / np.sqrt(dim)
        store.upsert("text", ["orphan:w:0"], v, [{"path": "gone.md", "page": 1, "kind": "text", "ref": "x"}])
    finally:
        store.close()
    with rh.sqlite_ro(idx) as db:
        crop = db.execute("SELECT crop_path FROM figures WHERE doc_path = 'figs.pdf'").fetchone()[0]
    (idx / crop).unlink()
    (idx / "crops" / ("0" * 64 + ".png")).write_bytes(b"unused")
    rc, rep, out = rh.cli(*base, "check", "--index-dir", str(idx), "--json")
    assert rc == 1 and not rep["ok"], out
    assert rep["orphan_vectors"]["text"] == 1 and rep["missing_vectors"]["text"] == 1, rep
    assert rep["missing_crops"] == 1 and rep["unused_crops"] == 1, rep
    assert rep["redo"] == ["figs.pdf", "valve.md"], rep
    rc, rep, out = rh.cli(*base, "check", "--index-dir", str(idx), "--repair", "--json")
    assert rc == 0 and rep["after_repair"]["ok"], out
    assert sorted(rep["repair"]["indexed"]) == ["figs.pdf", "valve.md"], rep["repair"]

    # a damaged index.sqlite: every command says so in one line, rc 2; check --repair rebuilds it
    for how in ("truncated", "garbage"):
        rh.damage_sqlite(idx / "index.sqlite", how)
        for args in (
            ["query", "relief valve"],
            ["stats"],
            ["context", "relief valve"],
            ["remove", "valve.md"],
            ["index", str(lib), "--no-dense"],
        ):
            rc, _, out = rh.cli(*base, *args, "--index-dir", str(idx))
            assert rc == 2, (how, args, out)
            lines = out.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in out, (how, args, out)
            assert str(idx / "index.sqlite") in lines[0] and "damaged" in lines[0], lines
            assert "manualrag reset" in lines[0] and "check --repair" in lines[0], lines
        rc, rep, out = rh.cli(*base, "check", "--index-dir", str(idx), "--json")
        assert rc == 1 and rep["sqlite"] != "ok", out
        rc, rep, out = rh.cli(
            *base, "check", "--index-dir", str(idx), "--repair", "--library", str(lib), "--json"
        )
        assert rc == 0 and rep["after_repair"]["ok"], out
        assert len(rep["repair"]["indexed"]) == 4, rep["repair"]
        assert list(idx.glob("index.sqlite.damaged-*")), "the damaged file is kept aside"
        rc, _, out = rh.cli(*base, "query", "relief valve", "--index-dir", str(idx))
        assert rc == 0 and "valve.md" in out, out
        for f in idx.glob("index.sqlite*.damaged-*"):
            f.unlink()


# ------------------------------------------------------------------ row 7: a worker memory limit too low
@pytest.mark.parametrize("mb", [1, 20, 200])
def test_memory_limit_too_low_to_start_a_worker_is_a_config_error(tmp_path, mb):
    """Before: memory_mb 1 printed nothing (rc 1); 20 or 200 failed every file "worker did not start"."""
    from manualrag.config import MIN_WORKER_MB, load_config
    from manualrag.errors import ConfigError

    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "r.md").write_bytes(rh.versioned_md("mem"))
    cfg = rh.write_cfg(tmp_path / "cfg.yaml", isolation={"workers": 1, "memory_mb": mb})
    rc, _, out = rh.cli(
        "--config", str(cfg), "index", str(lib), "--index-dir", str(tmp_path / "i"), "--no-dense"
    )
    assert rc == 2, out
    assert out.strip().splitlines() == [
        f"error: config file {cfg}: config key 'isolation.memory_mb' must be at least {MIN_WORKER_MB} "
        f"(MiB: an extraction worker needs about 300 MiB just to start), got {mb}"
    ], out
    assert not (tmp_path / "i").exists()
    with pytest.raises(ConfigError, match="isolation.memory_mb"):
        load_config(environ={"MANUALRAG_ISOLATION__MEMORY_MB": str(mb)})
    load_config(environ={"MANUALRAG_ISOLATION__MEMORY_MB": str(MIN_WORKER_MB)})


# ---------------------------------------------------------- new-user walk-through: eval query files
@pytest.mark.parametrize(
    "text, says",
    [
        ("[1, 2]\n", "q.jsonl:1: not a valid query line (a JSON object is needed, not list)"),
        ('{"query": "fuse"}\n', "q.jsonl:1: not a valid query line (missing 'file', 'pages')"),
        ('{"query": "fuse", "file": "a.pdf", "pages": "12"}\n', "'pages' must be a list of page numbers"),
        ('{"query": "", "file": "a.pdf", "pages": [1]}\n', "'query' must be a non-empty string"),
        ("\n\n", "q.jsonl: no queries"),
    ],
)
def test_eval_query_file_errors_are_one_line_usage_errors(tmp_path, text, says):
    """A queries file a user wrote by hand: a line that is a JSON list was a traceback (AttributeError,
    rc 1), a missing key said only "('file')", ``"pages": "12"`` was read as pages 1 and 2, and an empty
    file gave an all-zero report with rc 0. Each is now rc 2 and one line naming the file and the line,
    before any index or model is opened."""
    (tmp_path / "q.jsonl").write_text(text)
    res = _run("eval", "q.jsonl", "--index-dir", "no-index-here", cwd=tmp_path)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_a_library_without_manuals_says_so(tmp_path):
    """An empty folder, or one holding only unsupported files (a user's .docx exports), indexed as
    "0 indexed ... 0 failed" and rc 0 with nothing else said: it looked like success, and ``query`` then
    answered "no hits" with hints about models. The summary (and ``--json``) now warns, naming the
    folder and the suffixes that are indexed, and ``query`` says the index holds no documents; a
    library with a manual gets no such warning."""
    for name, files in (("empty", {}), ("docs", {"notes.docx": b"PK", "sheet.xlsx": b"PK"})):
        lib = tmp_path / name
        lib.mkdir()
        for fname, data in files.items():
            (lib / fname).write_bytes(data)
        res = _run("index", name, "--index-dir", f"{name}-idx", "--no-dense", cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        warning = [line for line in res.stdout.splitlines() if "warning:" in line]
        assert len(warning) == 1 and f"no manuals in {name}: no file with a supported suffix" in warning[0]
        assert ".pdf" in warning[0] and ".png" in warning[0] and ".md" in warning[0], warning
        assert ("see the skipped files" in warning[0]) == bool(files), warning
        # querying it says the index is empty, not that models or vectors are missing
        q = _run("query", "pump", "--index-dir", f"{name}-idx", cwd=tmp_path)
        assert q.returncode == 0 and q.stdout == "no hits\n", (q.stdout, q.stderr)
        assert q.stderr.splitlines() == [
            f"note: the index in {name}-idx holds no documents: index a folder of manuals first "
            "(`manualrag index LIBRARY`: PDFs, images, .txt, .md)"
        ], q.stderr
    (tmp_path / "docs" / "pump.md").write_bytes(rh.versioned_md("nowarn"))
    rc, s, out = rh.cli(
        "index", str(tmp_path / "docs"), "--index-dir", str(tmp_path / "i2"), "--no-dense", "--json"
    )
    assert rc == 0 and s["indexed"] == ["pump.md"] and s["warnings"] == [], out


def test_inspect_of_a_loose_image_shows_no_made_up_resolution(tmp_path):
    """``inspect photo.png`` printed ``1169x827px 0dpi`` for a loose image (it has no physical size, so
    no resolution): now the pixel size alone. PDF figures keep their dpi."""
    (tmp_path / "photo.png").write_bytes(h.photo_png(200, 150))
    rc, _, out = rh.cli("inspect", str(tmp_path / "photo.png"), "--no-ocr")
    assert rc == 0, out
    line = next(x for x in out.splitlines() if x.lstrip().startswith("[1]"))
    assert line.endswith("200x150px") or " 200x150px [" in line, line
    assert "dpi" not in line, line


def test_inspect_names_ocr_pages_as_pages_not_a_count():
    """``OCR'd pages (no text layer): 8`` read as "8 pages" to a new user: it is page 8 of the sample
    manual (a scan with no text layer), read by real tesseract."""
    pdf = rh.ROOT / "data" / "manuals" / "pump-controller-manual.pdf"
    rc, _, out = rh.cli("inspect", str(pdf))
    assert rc == 0, out
    assert "  OCR'd pages (no text layer): p.8\n" in out, out


def test_inspect_names_the_path_given_and_refuses_an_unsupported_type(tmp_path):
    """``inspect`` named a failing file by its bare name and exited 1 (\"some files failed\") for a type no
    command reads: the path as given, and exit 2 for the unsupported type."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "zero.pdf").write_bytes(b"")
    rc, _, out = rh.cli("inspect", str(tmp_path / "sub" / "zero.pdf"), "--no-ocr")
    assert rc == 1 and f"error: {tmp_path / 'sub' / 'zero.pdf'}: " in out, out
    (tmp_path / "notes.docx").write_bytes(b"PK\x03\x04")
    rc, _, out = rh.cli("inspect", str(tmp_path / "notes.docx"))
    assert rc == 2 and out.strip().endswith("unsupported file type '.docx' (PDFs, images, .txt and .md)"), out
    assert "Traceback" not in out


# ------------------------------------------------------------------------ row 9: non-UTF-8 file names
def test_remove_accepts_a_non_utf8_name_as_the_shell_gives_it(tmp_path):
    """A file name that is not UTF-8 is indexed as ``caf\\xe9-manual.md``; ``remove`` with the real name
    (bytes on the command line, relative or absolute) removes it (before: "nothing matched", rc 1)."""
    lib = tmp_path / "lib"
    lib.mkdir()
    raw = b"caf\xe9-manual.md"
    for sub in (b"", b"sub/"):
        os.makedirs(os.path.join(os.fsencode(lib), sub), exist_ok=True)
        with open(os.path.join(os.fsencode(lib), sub + raw), "wb") as f:
            f.write(rh.versioned_md("latin"))
    idx = tmp_path / "idx"
    rc, s, out = rh.cli("index", str(lib), "--index-dir", str(idx), "--no-dense", "--json")
    assert rc == 0 and sorted(s["indexed"]) == ["caf\\xe9-manual.md", "sub/caf\\xe9-manual.md"], out
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "manualrag",
            "remove",
            raw,
            os.path.join(os.fsencode(lib), b"sub/" + raw),
            "--index-dir",
            str(idx),
        ],
        capture_output=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().splitlines() == [
        "removed caf\\xe9-manual.md",
        "removed sub/caf\\xe9-manual.md",
    ]


# ---------------------------------------------------------------- row 10: query during a first index run
@pytest.mark.slow
def test_query_during_a_first_run_says_the_index_is_being_built(tmp_path, tiny_clip_dir):
    """While a first index run goes on, a query finds the documents committed so far (dense channels
    included) and says "the index is being built (N of M documents so far)" (before: "no hits" and the false
    "the index has no CLIP vectors (built with --no-dense)"). Once the run is gone, the note is too."""
    from manualrag.indexer.worker import FAULT_ENV

    lib = rh.md_library(tmp_path / "lib", "a.md", "b.md", "c.md")
    cfg = rh.write_cfg(
        tmp_path / "cfg.yaml", model=str(tiny_clip_dir), isolation={"workers": 1, "timeout_s": 300}
    )
    idx = tmp_path / "idx"
    proc = rh.popen_cli(*rh.index_args(cfg, lib, idx, dense=True), env={FAULT_ENV: "hang:c.md"})
    try:

        def committed() -> int:
            if not (idx / "index.sqlite").exists():
                return 0
            try:
                with rh.sqlite_ro(idx) as db:
                    return db.execute("SELECT count(*) FROM documents WHERE state = 'ok'").fetchone()[0]
            except Exception:  # noqa: BLE001 - the file is being created
                return 0

        assert rh.wait_for(lambda: committed() == 2, timeout=180, interval=0.2), proc.stderr
        rc, hits, out = rh.cli(
            "--config", str(cfg), "query", "torque adoc", "--index-dir", str(idx), "--json"
        )
        assert rc == 0 and hits and hits[0]["path"] == "a.md", out
        assert "the index is being built (2 of 3 documents so far)" in out, out
        assert "--no-dense" not in out
        assert any(c.startswith("dense") for h in hits for c in h["channels"]), hits
        # the library is recorded from the start (before: only at the end, so a first run interrupted
        # here left "library: None": no pages to serve, and check --repair needed --library)
        rc, st, out = rh.cli("--config", str(cfg), "stats", "--json", "--index-dir", str(idx))
        assert rc == 0 and st["library"] == str(lib.resolve()), out
    finally:
        rh.kill_hard(proc)
    rc, _, out = rh.cli("--config", str(cfg), "query", "torque adoc", "--index-dir", str(idx))
    assert rc == 0 and "being built" not in out, out


@pytest.mark.slow
def test_query_during_a_run_without_clip_does_not_promise_clip_vectors(tmp_path):
    """A run with `--model none` never makes CLIP vectors: a query meanwhile says the index has none
    (before: "no CLIP vectors yet: the index is being built", as if they were coming)."""
    from manualrag.indexer.worker import FAULT_ENV

    lib = rh.md_library(tmp_path / "lib", "a.md", "b.md")
    cfg = rh.write_cfg(tmp_path / "cfg.yaml", isolation={"workers": 1, "timeout_s": 300})
    idx = tmp_path / "idx"
    proc = rh.popen_cli(*rh.index_args(cfg, lib, idx, dense=False), env={FAULT_ENV: "hang:b.md"})
    try:
        assert rh.wait_for(lambda: (idx / "index.sqlite").exists() and rh.cli(
            "--config", str(cfg), "stats", "--json", "--index-dir", str(idx))[1].get("documents") == 1,
            timeout=180, interval=0.3), proc.stderr  # fmt: skip
        rc, _, out = rh.cli("--config", str(cfg), "query", "torque adoc", "--index-dir", str(idx))
        assert rc == 0 and "the index is being built (1 of 2 documents so far)" in out, out
        assert "no CLIP vectors yet" not in out and "has no CLIP vectors" in out, out
    finally:
        rh.kill_hard(proc)


# ------------------------------------------------------------- row 11: temporary files, SIGTERM and the lock
def _children(pid: int) -> list[int]:
    out: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2 :].split()[1]) == pid:  # field 4: the parent's pid
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
def test_temporary_files_are_private_and_swept_and_sigterm_releases_the_lock(tmp_path):
    """Workers get a private (0700) TMPDIR inside the index (tesseract writes renders of the manual's pages
    there: before, /tmp/tess_*_input.PNG, mode 0644, stayed after SIGKILL/SIGINT); it is removed at exit and
    what a killed run left is swept by the next. SIGTERM releases the lock like SIGINT (before: the lock file
    stayed)."""
    import signal

    from manualrag.indexer.worker import FAULT_ENV

    lib = rh.md_library(tmp_path / "lib", "a.md", "b.md", "c.md")
    cfg = rh.write_cfg(tmp_path / "cfg.yaml", isolation={"workers": 1, "timeout_s": 300})
    idx = tmp_path / "idx"
    args = rh.index_args(cfg, lib, idx, dense=False)

    def hung_run() -> tuple[subprocess.Popen, Path]:
        """An index run whose worker hangs on c.md, a.md and b.md committed."""
        proc = rh.popen_cli(*args, env={FAULT_ENV: "hang:c.md"})
        try:
            run_tmp = idx / ".tmp" / f"run-{proc.pid}"

            def on_c() -> bool:
                try:
                    with rh.sqlite_ro(idx) as db:
                        done = db.execute("SELECT count(*) FROM documents WHERE state = 'ok'").fetchone()[0]
                except sqlite3.Error:  # being created
                    return False
                return done == 2 and bool(_children(proc.pid))

            assert rh.wait_for(on_c, 120, 0.2)
            worker = _children(proc.pid)[0]
            environ = Path(f"/proc/{worker}/environ").read_text().split("\0")
            env = dict(kv.split("=", 1) for kv in environ if "=" in kv)
            assert env["TMPDIR"] == str(run_tmp.absolute()), env.get("TMPDIR")
            assert run_tmp.stat().st_mode & 0o777 == 0o700 and (idx / ".tmp").stat().st_mode & 0o777 == 0o700
        except BaseException:
            rh.kill_hard(proc)
            raise
        return proc, run_tmp

    proc, run_tmp = hung_run()
    # a crop a worker wrote for a document the run did not commit (a PDF's figures are written before it is)
    orphan = idx / "crops" / ("ab" * 32 + ".png")
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"\x89PNG\r\n\x1a\n")
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            rh.kill_hard(proc)
    assert proc.returncode == 143 and b"Traceback" not in err, err
    assert (
        err.decode()
        .strip()
        .endswith(
            "terminated: 2 document(s) indexed by this run are kept; the same command goes on from there"
        )
    ), err
    assert not (idx / "lock").exists(), "SIGTERM released the lock"
    assert not (idx / ".tmp").exists(), "the run's temporary folder is removed at exit"
    # no crop is left that no figure uses: `check` found the interrupted index inconsistent until a rerun
    assert not orphan.exists()
    rc, rep, out = rh.cli("--config", str(cfg), "check", "--index-dir", str(idx), "--json")
    assert rc == 0 and rep["ok"], out

    proc, run_tmp = hung_run()
    (run_tmp / "tess_abc_input.PNG").write_bytes(b"a render of a page")  # what tesseract leaves on SIGKILL
    rh.kill_hard(proc)
    assert (run_tmp / "tess_abc_input.PNG").exists()
    rc, s, out = rh.cli(*args)
    assert rc == 0 and s["indexed"] == ["c.md"], out
    assert not (idx / ".tmp").exists(), "the next run swept what the killed one left"


def test_index_json_interrupted_still_prints_its_summary(tmp_path):
    """`index --json` stopped with Ctrl-C printed nothing on stdout (rc 130): a script got no JSON to read.
    It now prints the summary of what the run committed, which says it was interrupted, beside the
    stderr line that the text mode prints."""
    import signal

    from manualrag.indexer.worker import FAULT_ENV

    lib = rh.md_library(tmp_path / "lib", "a.md", "b.md", "c.md")
    cfg = rh.write_cfg(tmp_path / "cfg.yaml", isolation={"workers": 1, "timeout_s": 300})
    idx = tmp_path / "idx"
    proc = rh.popen_cli(
        "--config", str(cfg), "index", str(lib), "--index-dir", str(idx), "--no-dense", "--json",
        env={FAULT_ENV: "hang:c.md"}, interruptible=True,
    )  # fmt: skip
    try:

        def two_done() -> bool:
            try:
                with rh.sqlite_ro(idx) as db:
                    return db.execute("SELECT count(*) FROM documents WHERE state = 'ok'").fetchone()[0] == 2
            except sqlite3.Error:  # being created
                return False

        assert rh.wait_for(two_done, 120, 0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            rh.kill_hard(proc)
    assert proc.returncode == 130 and b"Traceback" not in err, err
    summary = json.loads(out)
    assert summary["interrupted"] == "SIGINT" and summary["exit_code"] == 130, summary
    assert summary["indexed"] == ["a.md", "b.md"] and summary["documents"]["indexed"] == 2, summary
    kept = "interrupted: 2 document(s) indexed by this run are kept; the same command goes on from there"
    assert err.decode().strip().endswith(kept), err


# ------------------------------------------------------------ row 12: a file that always fails, re-runs
@pytest.mark.slow
def test_an_unchanged_failing_file_is_not_retried_and_loads_no_model(small_index, tmp_path):
    """Before: one file that always fails made every re-run reload both models (5-11 s) though nothing
    changed. Now it is reported as still failing without extraction or model load; --retry-failed, a change
    of the file or of the settings tries it again."""
    cfg, _, _ = small_index
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "good.md").write_bytes(rh.versioned_md("good"))
    (lib / "random.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 4)
    idx = tmp_path / "idx"
    args = rh.index_args(cfg, lib, idx, dense=True)

    def run(*extra: str) -> dict:
        rc, s, out = rh.cli(*args, *extra)
        assert rc == 1 and [f["path"] for f in s["failed"]] == ["random.pdf"], out
        return s

    first = run()
    assert "load_models" in first["timings_s"] and first["indexed"] == ["good.md"]
    again = run()
    assert again["documents"]["unchanged"] == 1 and again["indexed"] == []
    assert "load_models" not in again["timings_s"] and "extract" not in again["timings_s"], again["timings_s"]
    reason = again["failed"][0]["reason"]
    assert reason.startswith(first["failed"][0]["reason"]) and "--retry-failed" in reason, reason
    forced = run("--retry-failed")
    assert (
        "load_models" in forced["timings_s"] and forced["failed"][0]["reason"] == first["failed"][0]["reason"]
    )
    cfg2 = rh.write_cfg(
        tmp_path / "cfg2.yaml",
        **{**yaml.safe_load(cfg.read_text()), "isolation": {"workers": 1, "timeout_s": 99}},
    )
    rc, s, out = rh.cli(*rh.index_args(cfg2, lib, idx, dense=True))
    assert rc == 1 and "extract" in s["timings_s"], "a new worker limit is worth a new try"
    (lib / "random.pdf").write_bytes(rh.versioned_pdf("fixed", pages=1, figure=False))
    rc, s, out = rh.cli(*args)
    assert rc == 0 and s["indexed"] == ["random.pdf"], out


# ------------------------------------------------- row 13: failed first runs leave nothing; store errors
def test_a_first_run_that_fails_creates_nothing_and_store_errors_are_plain(
    tmp_path, tiny_clip_dir, monkeypatch
):
    """Before: an offline model, --device cuda on a CPU machine or a dead store left index.sqlite and
    chroma/ behind; an unroutable store said "refused the connection: ValueError (check store.tenant...)"."""
    import http.server
    import socket
    import threading

    import torch

    from manualrag import store as store_mod

    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "r.md").write_bytes(rh.versioned_md("skel"))
    (lib / "p.pdf").write_bytes(rh.versioned_pdf("skel", pages=1))  # a figure: its worker writes a crop
    cfg = rh.write_cfg(tmp_path / "cfg.yaml", model=str(tiny_clip_dir), isolation={"workers": 1})
    idx = tmp_path / "parent" / "idx"

    def fails(*extra: str, says: str) -> None:
        rc, _, out = rh.cli("--config", str(cfg), "index", str(lib), "--index-dir", str(idx), *extra)
        assert rc == 2 and says in out and "Traceback" not in out, out
        assert len(out.strip().splitlines()) == 1, out
        assert not idx.exists(), sorted(p.name for p in idx.rglob("*"))

    fails("--model", str(tmp_path / "no-such-model"), says="error: ")
    if not torch.cuda.is_available():
        fails("--device", "cuda", says="cuda")

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fails("--store", f"http://127.0.0.1:{port}", says="refused the connection (nothing listens on")
    fails("--store", "http://no-such-host.invalid:8000", says="does not resolve")

    class NotChroma(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_error(404)

        def log_message(self, *a):
            pass

    web = http.server.HTTPServer(("127.0.0.1", 0), NotChroma)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (the kernel does) and never answers
    monkeypatch.setattr(store_mod, "CONNECT_TIMEOUT_S", 1.0)
    try:
        fails("--store", f"http://127.0.0.1:{web.server_port}", says="it is not a Chroma (1.x) server")
        fails(
            "--store", f"http://127.0.0.1:{silent.getsockname()[1]}", says="timed out after 1 s waiting for"
        )
    finally:
        web.shutdown()
        silent.close()

    # an existing index is never removed by a failed run
    rc, _, out = rh.cli("--config", str(cfg), "index", str(lib), "--index-dir", str(idx), "--no-dense")
    assert rc == 0, out
    rc, _, out = rh.cli(
        "--config", str(cfg), "index", str(lib), "--index-dir", str(idx), "--model", str(tmp_path / "nope")
    )
    assert rc == 2 and (idx / "index.sqlite").is_file(), out


# ------------------------------------------------------- row 2: a pathological repetitive file, budgets
@pytest.mark.slow
def test_a_pathological_repetitive_file_is_bounded_and_leaves_other_results_unchanged(
    tmp_path, tiny_clip_dir
):
    """A 1.5 MB single line of three repeated words beside normal manuals: its identical windows are
    embedded and stored once (before: one vector per window, 29k of 70 distinct for 5 MB, which broke HNSW
    search for every other document, and 862 s), the run is bounded, and the other documents' top hits
    are the same with and without it."""
    import resource
    import time

    lib_a, lib_b = tmp_path / "a", tmp_path / "b"
    for lib in (lib_a, lib_b):
        lib.mkdir()
        (lib / "pump.pdf").write_bytes(rh.versioned_pdf("pumpdoc", pages=2, photo=True))
        (lib / "notes.md").write_bytes(rh.versioned_md("notesdoc", sections=4))
        (lib / "valve.md").write_text(
            "# Valve\n\nThe relief valve opens at 6 bar; replace the O-ring yearly.\n"
        )
    (lib_b / "lorem.md").write_bytes(rh.repetitive_line_md(1_500_000))
    cfg = rh.write_cfg(tmp_path / "cfg.yaml", model=str(tiny_clip_dir), isolation={"workers": 2})

    def index(lib: Path) -> tuple[dict, float]:
        t0 = time.perf_counter()
        res = _run(*rh.index_args(cfg, lib, tmp_path / f"idx-{lib.name}", dense=True), cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout), time.perf_counter() - t0

    index(lib_a)
    s, wall = index(lib_b)
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\nindex with a 1.5 MB repetitive line: {wall:.1f} s, peak RSS of a child {rss_mb:.0f} MiB")
    assert "lorem.md" in s["indexed"]
    assert any(w.startswith("lorem.md: repetitive text:") for w in s["warnings"]), s["warnings"]
    with rh.sqlite_ro(tmp_path / "idx-b") as db:
        windows = db.execute("SELECT count(*) FROM windows WHERE doc_path = 'lorem.md'").fetchone()[0]
        passages = db.execute("SELECT count(*) FROM passages WHERE doc_path = 'lorem.md'").fetchone()[0]
    assert passages > 1000 and windows <= 100, (passages, windows)  # stored once per distinct text
    from manualrag import ids

    lorem_doc = ids.doc_id("lorem.md")
    vectors, _ = rh.vector_snapshot(tmp_path / "idx-b", rh.EMBEDDED)
    texts = [d for m, d in vectors["text"].values() if json.loads(m)["path"] == "lorem.md"]
    assert len(texts) == windows and len(set(texts)) == len(texts), "no two records of one text"

    # the other documents' nearest neighbours in each CLIP collection (what HNSW returns) and their top
    # fused hit are the same with the file present (fusion standardises each channel over its candidates,
    # so lower ranks may move when any document is added)
    from manualrag.encoder import ClipEncoder
    from manualrag.store import VectorStore

    clip = ClipEncoder.load(str(tiny_clip_dir), device="cpu", dtype="float32")
    queries = ("torque flange bolts pumpdoc", "relief valve O-ring", "release notes notesdoc section 3")
    qv = clip.embed_texts([clip.fit(q) for q in queries])
    for kind in ("text", "image"):
        near = []
        for name in ("a", "b"):
            with VectorStore.open(tmp_path / f"idx-{name}", {"store": rh.EMBEDDED}) as st:
                near.append(
                    [
                        [i for i, _ in hits if not i.startswith(lorem_doc)][:5]
                        for hits in st.query(kind, qv, 40)
                    ]
                )
        assert near[0] == near[1], (kind, near)
    for q in queries:
        tops = []
        for name in ("a", "b"):
            rc, hits, out = rh.cli(
                "--config", str(cfg), "query", q, "--index-dir", str(tmp_path / f"idx-{name}"), "--json"
            )
            assert rc == 0, out
            tops.append([(h["path"], h["page"], h["kind"]) for h in hits if h["path"] != "lorem.md"][0])
        assert tops[0] == tops[1], (q, tops)


def test_per_document_budgets_cap_with_a_warning(small_index, tmp_path):
    cfg, _, _ = small_index
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "notes.md").write_bytes(rh.versioned_md("budget", sections=6))
    cfg2 = rh.write_cfg(
        tmp_path / "c.yaml",
        **{**yaml.safe_load(cfg.read_text()), "limits": {"max_windows": 2, "max_passages": 4}},
    )
    rc, s, out = rh.cli(*rh.index_args(cfg2, lib, tmp_path / "idx", dense=True))
    assert rc == 0, out
    warnings = [w for w in s["warnings"] if w.startswith("notes.md: budget exceeded:")]
    assert any("passages, only the first 4" in w and "limits.max_passages" in w for w in warnings), s[
        "warnings"
    ]
    assert any("CLIP windows, only the first 2" in w and "limits.max_windows" in w for w in warnings), (
        warnings
    )
    with rh.sqlite_ro(tmp_path / "idx") as db:
        assert db.execute("SELECT count(*) FROM passages").fetchone()[0] == 4
        assert db.execute("SELECT count(*) FROM windows WHERE channel = 'clip'").fetchone()[0] == 2


def test_a_signal_after_the_work_is_done_does_not_change_the_exit_code():
    """Ctrl-C just after `index` printed its summary (all documents indexed, "exit_code": 0 in the JSON)
    made the process exit 130: the summary and the exit code disagreed. Once the work is committed the
    command ignores SIGINT and SIGTERM (only as the program: in-process callers keep their handlers)."""
    code = (
        "import os, signal, manualrag.cli as c\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # whatever this test inherited
        "c._work_done()\n"  # not the program: the handlers stay
        "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
        "c._AS_PROGRAM = True\n"
        "c._work_done()\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "print('still here')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "still here", p.stderr
