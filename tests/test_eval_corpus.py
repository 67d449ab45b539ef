"""Retrieval quality on the real manuals in ../shared/corpus, measured by `manualrag eval` (issue targets).

One index of the corpus with the tiny CLIP (random weights: its channels are not measured) and the real
all-MiniLM-L6-v2 text model; the lexical and text channels are measured alone and together.
"""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from manualrag.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus_index(tmp_path_factory, corpus_dir, tiny_clip_dir, minilm_dir):
    base = tmp_path_factory.mktemp("corpus-eval")
    cfg = base / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(tiny_clip_dir), "text_model": str(minilm_dir)}))
    idx = base / "index"
    res = CliRunner().invoke(
        main, ["--config", str(cfg), "index", str(corpus_dir), "--index-dir", str(idx), "-q"]
    )
    assert res.exit_code == 0, res.output
    return cfg, idx, corpus_dir / "queries.jsonl"


def run_eval(corpus_index, channels: str) -> dict:
    cfg, idx, queries = corpus_index
    res = CliRunner().invoke(
        main,
        [
            "--config",
            str(cfg),
            "eval",
            str(queries),
            "--index-dir",
            str(idx),
            "--channels",
            channels,
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_lexical_channel_meets_targets(corpus_index):
    r = run_eval(corpus_index, "lexical")
    assert r["n"] == 23
    assert set(r["overall"]) == {"recall@1", "recall@5", "recall@10", "mrr", "ndcg@10"}
    assert set(r["by_kind"]) == {"text", "image", "ocr"}
    assert r["overall"]["recall@1"] >= 0.75
    assert r["overall"]["recall@10"] >= 0.95
    assert r["by_kind"]["ocr"]["recall@10"] >= 0.85
    assert r["image_recall"]["recall@10"] >= 0.85


def test_text_channel_adds_to_lexical_and_never_lowers_the_top(corpus_index):
    lex = run_eval(corpus_index, "lexical")
    both = run_eval(corpus_index, "lexical,text")
    assert both["overall"]["recall@1"] >= 0.80 and both["overall"]["recall@10"] >= 0.95
    assert both["overall"]["recall@1"] >= lex["overall"]["recall@1"], "adding a channel never lowers recall@1"
    assert both["by_kind"]["text"]["recall@1"] > lex["by_kind"]["text"]["recall@1"]
    assert both["by_kind"]["text"]["mrr"] > lex["by_kind"]["text"]["mrr"]
    assert both["by_kind"]["image"]["mrr"] >= lex["by_kind"]["image"]["mrr"]


def test_every_channel_combination_runs(corpus_index):
    for channels in ("text", "dense", "dense,lexical", "dense,text,lexical"):
        r = run_eval(corpus_index, channels)
        assert r["channels"] == channels.split(",") and r["n"] == 23
