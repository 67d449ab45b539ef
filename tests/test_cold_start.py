"""Cold start of `manualrag query` (issue 18 item 4): a lexical-only query imports neither chromadb nor
torch/transformers, and `--timings` says where a cold query's time went (store open, imports, model load)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from manualrag.cli import main

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "manuals"

PROBE = """
import json, sys
from manualrag.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code
heavy = sorted(m for m in ("chromadb", "torch", "transformers", "pymupdf", "onnxruntime") if m in sys.modules)
print(json.dumps({"rc": rc, "heavy": heavy}))
"""


@pytest.fixture(scope="module")
def index(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip_dir: Path, minilm_dir: Path
) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("cold")
    lib = base / "lib"
    lib.mkdir()
    shutil.copy(SAMPLE / "release-notes.md", lib / "release-notes.md")
    cfg_path = base / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({"model": str(tiny_clip_dir), "text_model": str(minilm_dir)}))
    idx = base / "index"
    res = CliRunner().invoke(
        main, ["--config", str(cfg_path), "index", str(lib), "--index-dir", str(idx), "-q"]
    )
    assert res.exit_code == 0, res.output
    return idx, cfg_path


def _probe(*args: str, cwd: Path) -> tuple[dict, str]:
    p = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(cwd)},
        timeout=300,
    )
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith('{"rc"')]
    assert lines, p.stdout + p.stderr
    return json.loads(lines[-1]), p.stdout + p.stderr


def test_lexical_query_imports_no_vector_store_and_no_model(index: tuple[Path, Path], tmp_path: Path) -> None:
    idx, cfg_path = index
    words = (SAMPLE / "release-notes.md").read_text().split()
    term = next(w for w in words if len(w) > 6 and w.isalpha())
    res, out = _probe(
        "--config",
        str(cfg_path),
        "query",
        term,
        "--channels",
        "lexical",
        "--index-dir",
        str(idx),
        cwd=tmp_path,
    )
    assert res["rc"] in (0, None), out
    assert "release-notes.md" in out  # it did search and find
    assert not {"chromadb", "torch", "transformers"} & set(res["heavy"]), res["heavy"]


def test_timings_show_store_open_imports_and_model_load(index: tuple[Path, Path]) -> None:
    idx, cfg_path = index
    res = CliRunner().invoke(
        main, ["--config", str(cfg_path), "query", "release notes", "--index-dir", str(idx), "--timings"]
    )
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("timings (ms):"))
    got = dict(re.findall(r"(\w+) ([0-9.]+)", line))
    assert {"open_store", "import", "load_models", "encode", "search", "fusion", "total"} <= set(got), line
    assert float(got["load_models"]) > 0 and float(got["total"]) >= float(got["load_models"])
