"""Hardening round 2 (issue 14): what a new user and a hostile library broke. Each test is the regression
test of one row of the table in docs/reliability.md ("Round 2"); the CLI runs as a real process where the
row is about the process (its working directory, its output lines, its exit code)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
