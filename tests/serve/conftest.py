"""One index of the sample manuals for the asset, API and browser tests of ``manualrag serve`` (built once
per session, only when one of these tests runs), plus a hostile Markdown manual whose text and file name
carry markup that must render as text."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "manuals"
PUMP = "pump-controller-manual.pdf"
CARD = "quick-start-card.png"
NOTES = "release-notes.md"
# a file name and a text that would run script if a page inserted them as HTML
HOSTILE_NAME = "<img src=x onerror=window.__pwned_name=1>.md"
HOSTILE_TEXT = """# Hostile service note <script>window.__pwned=1</script>

Pressure switch calibration: <img src=x onerror="window.__pwned=2"> set the hostile calibration
to 3.2 bar. <b>bold</b> &amp; <a href="javascript:window.__pwned=3">link</a> \x1b[2J terminal escape.
"""


@dataclass(frozen=True)
class ServeIndex:
    index_dir: Path
    library: Path
    config: Path


@pytest.fixture(scope="session")
def serve_index(tmp_path_factory, tiny_clip_dir, minilm_dir) -> ServeIndex:
    from manualrag.cli import main

    base = tmp_path_factory.mktemp("serve")
    lib = base / "lib"
    lib.mkdir()
    for name in (PUMP, CARD, NOTES):
        shutil.copy(SAMPLE / name, lib / name)
    (lib / HOSTILE_NAME).write_text(HOSTILE_TEXT, encoding="utf-8")
    cfg = base / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(tiny_clip_dir), "text_model": str(minilm_dir)}))
    idx = base / "index"
    res = CliRunner().invoke(main, ["--config", str(cfg), "index", str(lib), "--index-dir", str(idx), "-q"])
    assert res.exit_code == 0, res.output
    return ServeIndex(idx, lib, cfg)
