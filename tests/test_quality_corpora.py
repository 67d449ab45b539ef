"""Retrieval quality on both labelled corpora, as whole sets (issue 13's targets), through `manualrag eval`.

One index per corpus for the module: the corpus's manuals only (its README.md describes the labelled figures
in words close to the queries and is not a manual), the tiny random CLIP for the dense channels, the real
all-MiniLM-L6-v2 for text, float32. ``MANUALRAG_QUALITY_CACHE=/tmp/manualrag-quality`` reuses the indexes
that ``python -m tests.bench.quality_bench`` builds (same layout), for quick local runs.

What the sets reach today is asserted (a regression fails); the issue's targets not yet met on corpus2 are
strict xfails with the gap in the reason, so meeting one turns the suite red until it becomes an assertion.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from manualrag.cli import main

pytestmark = pytest.mark.slow

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MANUAL_SUFFIXES = (".pdf", ".png", ".jpg", ".jpeg")


@pytest.fixture(scope="module", params=["corpus", "corpus2"])
def corpus_index(request, tmp_path_factory, tiny_clip_dir, minilm_dir):
    corpus = SHARED / request.param
    if not (corpus / "queries.jsonl").is_file():
        pytest.skip(f"corpus not found at {corpus}")
    cache = os.environ.get("MANUALRAG_QUALITY_CACHE")
    base = Path(cache) / request.param if cache else tmp_path_factory.mktemp(request.param)
    lib = base / "library"
    lib.mkdir(parents=True, exist_ok=True)
    for f in sorted(corpus.iterdir()):
        if f.suffix.lower() in MANUAL_SUFFIXES and not (lib / f.name).exists():
            shutil.copy2(f, lib / f.name)
    model = Path.home() / ".cache" / "manualrag-bench" / "clip-tiny" if cache else tiny_clip_dir
    cfg = tmp_path_factory.mktemp("cfg") / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(model), "text_model": str(minilm_dir), "dtype": "float32"}))
    idx = base / "index"
    res = CliRunner().invoke(main, ["--config", str(cfg), "index", str(lib), "--index-dir", str(idx), "-q"])
    assert res.exit_code == 0, res.output
    return request.param, cfg, idx, corpus / "queries.jsonl"


def run_eval(corpus_index, channels: str) -> dict:
    _, cfg, idx, queries = corpus_index
    args = [
        "--config",
        str(cfg),
        "eval",
        str(queries),
        "--index-dir",
        str(idx),
        "--channels",
        channels,
        "--json",
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def known_gap_on_corpus2(corpus_index, request, reason: str) -> None:
    """A target corpus2 does not reach yet: a strict xfail there (meeting it turns the suite red until the
    xfail becomes an assertion); an ordinary assertion on corpus."""
    if corpus_index[0] == "corpus2":
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


def summary(r: dict) -> dict[str, float]:
    return {**r["overall"], "image@10": r["image_recall"].get("recall@10", 0.0)}


# what each corpus's lexical,text reaches now (measured 2026-12-01 with page support, OCR headings on scans,
# joined/split words, ligatures read as letters, words cut at line ends written whole, outline titles
# found where they wrap, figures placed by the sentence that refers to them and pictures preferred when a
# query asks for one: corpus2 R@1 0.867, R@5 0.967-0.983, R@10 0.983, MRR 0.904-0.905, image-hit R@10
# 0.975; c2-010 ranks 5th or 6th by a 0.3% score gap, depending on the build's vector graph)
FLOOR = {
    "corpus": {"recall@1": 1.0, "recall@5": 1.0, "recall@10": 1.0, "mrr": 1.0, "image@10": 1.0},
    "corpus2": {"recall@1": 0.86, "recall@5": 0.96, "recall@10": 0.98, "mrr": 0.90, "image@10": 0.97},
}
TARGET = {"recall@1": 0.85, "recall@5": 0.95, "recall@10": 0.98, "mrr": 0.90, "image@10": 0.90}


def test_eval_report_shape_and_every_channel_combination(corpus_index):
    n = sum(1 for line in corpus_index[3].read_text().splitlines() if line.strip())
    for channels in ("lexical", "text", "dense", "dense,text,lexical"):
        r = run_eval(corpus_index, channels)
        assert r["channels"] == channels.split(",") and r["n"] == n
        assert set(r["overall"]) == {"recall@1", "recall@5", "recall@10", "mrr", "ndcg@10"}
        assert set(r["by_kind"]) == {"text", "image", "ocr"}


def test_text_channel_helps_text_queries(corpus_index, request):
    known_gap_on_corpus2(
        corpus_index, request, "corpus2: the text channel lowers text-kind MRR 0.958 -> 0.929"
    )
    lex = run_eval(corpus_index, "lexical")["by_kind"]["text"]
    both = run_eval(corpus_index, "lexical,text")["by_kind"]["text"]
    assert both["mrr"] >= lex["mrr"], f"{corpus_index[0]}: text-kind MRR {both['mrr']:.3f} < {lex['mrr']:.3f}"


def test_lexical_text_holds_what_it_reaches(corpus_index):
    got = summary(run_eval(corpus_index, "lexical,text"))
    floor = FLOOR[corpus_index[0]]
    missed = {m: (round(got[m], 3), v) for m, v in floor.items() if got[m] < v}
    assert not missed, f"{corpus_index[0]} lexical,text fell below (got, floor): {missed}"


def test_lexical_text_meets_the_issue_targets(corpus_index):
    got = summary(run_eval(corpus_index, "lexical,text"))
    missed = {m: (round(got[m], 3), v) for m, v in TARGET.items() if got[m] < v}
    assert not missed, f"{corpus_index[0]} lexical,text below target (got, target): {missed}"


@pytest.mark.parametrize("added", ["text", "dense", "text,dense"])
def test_adding_a_channel_never_lowers_recall_at_1_or_10(corpus_index, added):
    """With the random test CLIP too: its channels are weighed by their test on the library (without that,
    corpus2 lexical,dense recall@10 was 0.950 against lexical's 0.967)."""
    lex = summary(run_eval(corpus_index, "lexical"))
    more = summary(run_eval(corpus_index, f"lexical,{added}"))
    for m in ("recall@1", "recall@10"):
        assert more[m] >= lex[m], (
            f"{corpus_index[0]}: lexical,{added} {m} {more[m]:.3f} < lexical {lex[m]:.3f}"
        )


def test_each_vector_channel_is_weighed_by_its_test_on_the_library(corpus_index):
    """The index run tests each vector channel on the library's own headings and captions: the real text
    model reads them (factor near 1), the random CLIP's text and image towers do not agree on a caption
    (factor near 0, where the library has enough captions to tell); stats shows the factors."""
    name, cfg, idx, _ = corpus_index
    res = CliRunner().invoke(main, ["--config", str(cfg), "stats", "--index-dir", str(idx), "--json"])
    assert res.exit_code == 0, res.output
    weights = json.loads(res.stdout)["channel_weights"]
    assert set(weights) == {"text", "dense_text", "dense_label", "dense_image"}, weights
    for channel, m in weights.items():
        assert m["n"] > 0 and ("factor" not in m or 0.0 <= m["factor"] <= 1.0), (channel, m)
    assert weights["text"]["factor"] >= 0.75, weights["text"]
    assert "factor" not in weights["dense_image"] or weights["dense_image"]["factor"] <= 0.15, weights
    assert weights["dense_text"]["factor"] < weights["text"]["factor"], weights
    text = CliRunner().invoke(main, ["--config", str(cfg), "stats", "--index-dir", str(idx)]).output
    assert f"text {weights['text']['factor']:.2f}" in text, text


def test_asking_for_more_hits_keeps_the_first_ones(corpus_index):
    """A query asking for 30 hits searches 90 candidates per channel instead of 50; standardised against all
    of them, the first hits' scores moved and the top 5 of half the queries changed with k alone (the web
    page's hit count, the API's k). The scale now comes from each channel's first ``retrieve.candidates``
    (measured on both sets: 52% / 50% of the queries -> 17% / 10%; what is left comes from page support and
    the vector search's wider beam)."""
    from manualrag.config import load_config
    from manualrag.retriever.evaluate import load_queries
    from manualrag.retriever.search import Retriever

    name, cfg_path, idx, queries = corpus_index
    moved = []
    with Retriever.open(idx, load_config(cfg_path)) as r:
        for q in load_queries(queries):
            few = [(h.path, h.page, h.kind) for h in r.search(q.query, k=5).hits]
            more = [(h.path, h.page, h.kind) for h in r.search(q.query, k=30).hits[:5]]
            if few != more:
                moved.append(q.id)
    assert len(moved) <= 0.25 * len(load_queries(queries)), f"{name}: top 5 changed with k for {moved}"
