"""Hardening round 2 (issue 14): what a new user and a hostile library broke. Each test is the regression
test of one row of the table in docs/reliability.md ("Round 2"); the CLI runs as a real process where the
row is about the process (its working directory, its output lines, its exit code)."""

from __future__ import annotations

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
