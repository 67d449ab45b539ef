"""Retrieval quality on every labelled corpus, every channel combination, beside page-level BM25 baselines.

    python -m tests.bench.quality_bench [--corpus DIR ...] [--cache DIR] [--reindex] [--no-results]

Each corpus (default ../shared/corpus and ../shared/corpus2) is indexed once (tiny random CLIP for the dense
channels, the real all-MiniLM-L6-v2 for ``text``; float32, so the figures do not depend on the machine's
bf16) into ``--cache`` (default /tmp/manualrag-quality/<corpus name>; an existing index of the same
commit's extraction is reused unless ``--reindex``). Then ``manualrag.retriever.evaluate`` measures, per
corpus and pooled over all queries, per query kind: recall@1/5/10, MRR, nDCG@10, and image-hit recall@10
for every channel combination. The baselines answer the same queries with one BM25 record per *page*
(SQLite FTS5's bm25, our query parsing): the PDF text layer per page, and pymupdf4llm's page markdown per
page (computed once in a child process and cached beside the index). They return pages, never figures.
Tables go to stdout and, unless ``--no-results``, to tests/bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.bench.common import (
    LIBRARY_SUFFIXES,
    REPO,
    append_results,
    bench_config,
    bench_model,
    clean_env,
    log,
    machine_info,
    minilm_path,
    table,
)

CORPORA = (REPO.parent / "shared" / "corpus", REPO.parent / "shared" / "corpus2")
CHANNELS = ("lexical", "text", "dense")
COMBOS = [list(c) for n in range(1, len(CHANNELS) + 1) for c in itertools.combinations(CHANNELS, n)]
METRICS = ("recall@1", "recall@5", "recall@10", "mrr", "ndcg@10")
# the targets for lexical,text on each corpus
TARGETS = {"recall@1": 0.85, "recall@5": 0.95, "recall@10": 0.98, "mrr": 0.90, "image_recall@10": 0.90}


# ----------------------------------------------------------------------------------------------- index
def library_of(corpus: Path, dest: Path) -> Path:
    """A library folder holding the corpus's manuals only: its README.md describes every labelled figure in
    words close to the queries' and would answer them itself; queries.jsonl is not a manual either."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(corpus.iterdir()):
        if f.suffix.lower() in LIBRARY_SUFFIXES and not (dest / f.name).exists():
            shutil.copy2(f, dest / f.name)
    return dest


def build_index(corpus: Path, index_dir: Path, reindex: bool) -> None:
    from manualrag.indexer.pipeline import Indexer

    cfg = bench_config(str(bench_model("tiny")), minilm_path(), dtype="float32")
    if reindex and index_dir.exists():
        import shutil

        shutil.rmtree(index_dir)
    t0 = time.perf_counter()
    summary = Indexer(cfg, index_dir).run(corpus)  # incremental: unchanged documents are kept
    log(
        f"{corpus.name}: {len(summary.indexed)} indexed, {summary.unchanged} unchanged, "
        f"{len(summary.failed)} failed in {time.perf_counter() - t0:.0f} s"
    )


def run_eval(corpus: Path, index_dir: Path) -> dict[str, dict[str, Any]]:
    from manualrag.retriever.evaluate import evaluate, load_queries
    from manualrag.retriever.search import Retriever

    cfg = bench_config(str(bench_model("tiny")), minilm_path(), dtype="float32")
    queries = load_queries(corpus / "queries.jsonl")
    out = {}
    with Retriever.open(index_dir, cfg) as r:
        for combo in COMBOS:
            out[",".join(combo)] = evaluate(r, queries, k=10, channels=combo)
    return out


def channel_factors(index_dir: Path) -> str:
    """The index's channel weight factors, as `stats` shows them (manualrag/channel_weights.py)."""
    from manualrag import channel_weights
    from manualrag.index import IndexLayout
    from manualrag.manifest import Manifest

    with Manifest(IndexLayout(index_dir).db, readonly=True) as m:
        return channel_weights.describe(channel_weights.channels_of(m.get_meta(channel_weights.META_KEY)))


# -------------------------------------------------------------------------------------------- baselines
def page_texts_child(corpus: str, out: str) -> None:
    """In a child (OMP_THREAD_LIMIT=1 for pymupdf4llm's tesseract): {file: {"layer": {page: text},
    "md": {page: markdown}}} for the corpus PDFs."""
    import pymupdf
    import pymupdf4llm

    res: dict[str, Any] = {}
    for pdf in sorted(Path(corpus).glob("*.pdf")):
        layer = {}
        with pymupdf.open(pdf) as doc:
            for i, page in enumerate(doc, 1):
                layer[i] = page.get_text()
        md = {}
        for chunk in pymupdf4llm.to_markdown(str(pdf), page_chunks=True, show_progress=False):
            meta = chunk.get("metadata") or {}
            n = chunk.get("page_number") or meta.get("page_number") or meta.get("page")
            md[int(n)] = chunk.get("text") or ""
        res[pdf.name] = {"layer": layer, "md": md}
        log(f"  pages of {pdf.name}: {len(layer)}")
    Path(out).write_text(json.dumps(res))


def page_texts(corpus: Path, cache: Path) -> dict[str, Any]:
    path = cache / "page_texts.json"
    if not path.exists():
        log(f"{corpus.name}: page texts for the baselines (pymupdf4llm, once)")
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "tests.bench.quality_bench", "--pages-child", str(corpus), str(path)],
            check=True,
            cwd=REPO,
            env=clean_env(OMP_THREAD_LIMIT="1"),
        )
    return json.loads(path.read_text())


def page_bm25(corpus: Path, pages: dict[str, Any], source: str) -> dict[str, Any]:
    """Page-level BM25 (FTS5) over one page text source; evaluated like our hits (pages, no images)."""
    from manualrag.retriever.evaluate import Query, _mean, _metrics, load_queries
    from manualrag.retriever.lexical import fts_query

    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE p USING fts5(file UNINDEXED, page UNINDEXED, body)")
    db.executemany(
        "INSERT INTO p VALUES (?, ?, ?)",
        [(f, int(n), t) for f, d in pages.items() for n, t in d[source].items()],
    )

    class PageHit:  # what evaluate's metrics read from a hit
        def __init__(self, path: str, page: int):
            self.path, self.pages, self.kind = path, [page], "text"

    rows: list[dict[str, float]] = []
    by_kind: dict[str, list[dict[str, float]]] = {}
    queries: list[Query] = load_queries(corpus / "queries.jsonl")
    for q in queries:
        match = fts_query(q.query)
        hits = (
            [
                PageHit(f, int(n))
                for f, n, _ in db.execute(
                    "SELECT file, page, bm25(p) s FROM p WHERE p MATCH ? ORDER BY s LIMIT 10", (match,)
                )
            ]
            if match
            else []
        )
        m = _metrics(hits, q)  # type: ignore[arg-type]
        rows.append(m)
        by_kind.setdefault(q.kind, []).append(m)
    return {
        "overall": _mean(rows),
        "by_kind": {k: _mean(v) for k, v in sorted(by_kind.items())},
        "image_recall": {},
        "n": len(queries),
        "queries": [{"kind": q.kind, **m} for q, m in zip(queries, rows, strict=True)],
    }


# ---------------------------------------------------------------------------------------------- tables
def pooled(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the queries of several corpora (each query counts once)."""
    from manualrag.retriever.evaluate import _mean

    rows = [q for r in reports for q in r["queries"]]
    by_kind: dict[str, list[dict[str, float]]] = {}
    for q in rows:
        by_kind.setdefault(q["kind"], []).append({m: q[m] for m in METRICS})
    images = [{"recall@10": q["image_recall@10"]} for q in rows if "image_recall@10" in q]
    return {
        "overall": _mean([{m: q[m] for m in METRICS} for q in rows]),
        "by_kind": {k: _mean(v) for k, v in sorted(by_kind.items())},
        "image_recall": _mean(images),
        "n": len(rows),
        "queries": rows,
    }


def report_rows(name: str, r: dict[str, Any]) -> list[list[Any]]:
    im = r["image_recall"].get("recall@10") if r["image_recall"] else None
    out = [
        [
            name,
            "all",
            r["n"],
            *(f"{r['overall'][m]:.3f}" for m in METRICS),
            "-" if im is None else f"{im:.3f}",
        ]
    ]
    counts: dict[str, int] = {}
    for q in r["queries"]:
        counts[q["kind"]] = counts.get(q["kind"], 0) + 1
    for kind, m in r["by_kind"].items():
        out.append(["", kind, counts.get(kind, 0), *(f"{m[k]:.3f}" for k in METRICS), ""])
    return out


def corpus_table(reports: dict[str, dict[str, Any]]) -> str:
    rows: list[list[Any]] = []
    for name, r in reports.items():
        rows += report_rows(name, r)
    return table(["channels / baseline", "kind", "n", *METRICS, "image-hit R@10"], rows)


def target_lines(name: str, r: dict[str, Any]) -> str:
    got = {**r["overall"], "image_recall@10": r["image_recall"].get("recall@10", 0.0)}
    parts = [f"{k} {got[k]:.3f} {'ok' if got[k] >= t else 'MISS'} (>= {t})" for k, t in TARGETS.items()]
    return f"- {name} lexical,text: " + "; ".join(parts)


def monotone_lines(name: str, reports: dict[str, dict[str, Any]]) -> list[str]:
    base = reports["lexical"]["overall"]
    out = []
    for combo, r in reports.items():
        if combo.startswith("lexical,") and "BM25" not in combo:
            for m in ("recall@1", "recall@10"):
                if r["overall"][m] < base[m]:
                    out.append(
                        f"- {name}: adding {combo[8:]} to lexical LOWERS {m}: {base[m]:.3f} -> {r['overall'][m]:.3f}"
                    )
    return out or [f"- {name}: no channel added to lexical lowers recall@1 or recall@10"]


# ------------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", action="append", type=Path, help="corpus folder (repeatable)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/manualrag-quality"))
    ap.add_argument("--reindex", action="store_true")
    ap.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    ap.add_argument("--pages-child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.pages_child:
        page_texts_child(*a.pages_child)
        return
    info = machine_info()
    corpora = a.corpus or [c for c in CORPORA if c.is_dir()]
    all_reports: dict[str, dict[str, dict[str, Any]]] = {}
    body: list[str] = []
    for corpus in corpora:
        cache = a.cache / corpus.name
        build_index(library_of(corpus, cache / "library"), cache / "index", a.reindex)
        reports = run_eval(corpus, cache / "index")
        pages = page_texts(corpus, cache)
        reports["BM25 page: PDF text layer"] = page_bm25(corpus, pages, "layer")
        reports["BM25 page: pymupdf4llm markdown"] = page_bm25(corpus, pages, "md")
        all_reports[corpus.name] = reports
        n = reports["lexical"]["n"]
        section = [f"### {corpus.name} ({n} queries)", "", corpus_table(reports), ""]
        section += [
            f"- {corpus.name} channel weight factors (tested on the library): {channel_factors(cache / 'index')}",
            target_lines(corpus.name, reports["lexical,text"]),
            *monotone_lines(corpus.name, reports),
            "",
        ]
        body += section
        print("\n".join(section), flush=True)
    if len(all_reports) > 1:
        names = list(all_reports)
        pooled_reports = {key: pooled([all_reports[c][key] for c in names]) for key in all_reports[names[0]]}
        section = [f"### pooled ({' + '.join(names)}, {pooled_reports['lexical']['n']} queries)", ""]
        section += [corpus_table(pooled_reports), ""]
        body += section
        print("\n".join(section), flush=True)
    if not a.no_results:
        intro = (
            "Tiny random CLIP for the dense channels (its numbers measure nothing but wiring), the real "
            "all-MiniLM-L6-v2 for text, float32. Baselines: one BM25 record per page (FTS5, our query "
            "parsing); they return pages, never figures."
        )
        append_results("Retrieval quality per corpus (quality_bench)", info, intro + "\n\n" + "\n".join(body))


if __name__ == "__main__":
    main()
