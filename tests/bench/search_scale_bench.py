"""Whole-search scale benchmark to a million records: ``python -m tests.bench.search_scale_bench``.

Builds (once, cached under ``--workdir``, default /tmp/manualrag-scale) indexes of 10k / 100k / 1M records
and measures, in one run, query latency per channel and for the whole ``Retriever.search`` at each size.

* The seed: one real image of ../shared/corpus indexed by the product with the full-size random-init
  ViT-B/32 and the real all-MiniLM-L6-v2 (so the index names real models and its collections have their
  dimensions). Then grown with synthetic documents through the product's own APIs (``Manifest.replace_rows``
  + ``commit_document`` for rows and the FTS5 lexical index, ``VectorStore.upsert`` for vectors), by
  :class:`tests.bench.query_bench.Grower`, with two differences: the passages and headings are real text
  extracted from the PDFs of ../shared/corpus and ../shared/corpus2 (paragraphs, table-of-contents titles),
  reshuffled as the Grower does; and the vectors are random unit vectors (no model forward), in the real
  corpus index's proportions (CLIP text 68 %, image 1.3 %, image_text 1.3 %, MiniLM 30 %).
* A snapshot of the index is kept at each size (``idx-10000`` ...): a re-run measures without rebuilding.
* Measured in a fresh child process per size (its RSS is its own): 120 queries after 10 warm-up ones, half
  real headings of the corpora's tables of contents, half the corpora's labelled queries; p50/p95 of the
  dense channels (4 Chroma queries), the lexical channel (and, side by side, the plain FTS5 query it
  replaced: every match scored by bm25, ORDER BY, LIMIT), fusion + hits, the retrieval part (a whole search
  with the query already encoded) and the whole search (both encoders, warm).

Prints the tables with the 10k -> 100k -> 1M ratios and appends them to tests/bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from tests.bench.common import (  # noqa: E402
    CORPUS,
    RssSampler,
    append_results,
    bench_config,
    bench_model,
    dir_bytes,
    loadavg,
    log,
    machine_info,
    minilm_path,
    pct,
    run_child,
    table,
)

MODULE = "tests.bench.search_scale_bench"
INDEX_MODULE = "tests.bench.index_bench"
CORPUS2 = CORPUS.parent / "corpus2"
SEED_FILE = "kicad-pcb-calculator-color-code.png"
KINDS = ("text", "image", "image_text", "sem")
# per page, from the real corpus index (RESULTS.md, query_bench: 139 pages -> 453 passages, 27 figures,
# 1340 CLIP windows, 586 MiniLM records of which 27 figure labels)
PASSAGES_PER_PAGE = 453 / 139
FIGURES_PER_PAGE = 27 / 139
CLIP_W_PER_PASSAGE = 1340 / 453
SEM_W_PER_PASSAGE = (586 - 27) / 453


# ============================================================================================ real text
def corpus_text() -> tuple[list[str], list[str]]:
    """(paragraphs, headings) of the PDFs of both corpora: text blocks of 60+ characters, TOC titles."""
    import pymupdf

    paras: list[str] = []
    heads: list[str] = []
    for folder in (CORPUS, CORPUS2):
        for pdf in sorted(folder.glob("*.pdf")):
            with pymupdf.open(pdf) as doc:
                heads += [t[1].strip() for t in doc.get_toc() if len(t[1].strip()) >= 4]
                for page in doc:
                    for b in page.get_text("blocks"):
                        text = " ".join(str(b[4]).split())
                        if len(text) >= 60:
                            paras.append(text[:1200])
    return paras, list(dict.fromkeys(heads))


def queries(n: int, seed: int = 11) -> list[str]:
    """Half real headings (tables of contents of both corpora), half the corpora's labelled queries."""
    rng = random.Random(seed)
    _, heads = corpus_text()
    labelled = [
        json.loads(ln)["query"]
        for f in (CORPUS / "queries.jsonl", CORPUS2 / "queries.jsonl")
        if f.exists()
        for ln in f.read_text().splitlines()
        if ln.strip()
    ]
    rng.shuffle(heads)
    rng.shuffle(labelled)
    out: list[str] = []
    while len(out) < n:
        out.append(
            heads[len(out) // 2 % len(heads)]
            if len(out) % 2 == 0
            else labelled[len(out) // 2 % len(labelled)]
        )
    return out


# ============================================================================================= building
def make_grower(idx: Path, cfg: dict[str, Any]) -> Any:
    from tests.bench.query_bench import Grower

    class SyntheticGrower(Grower):
        def __init__(self) -> None:  # Grower.__init__ minus reading the real vectors back (none are used)
            from manualrag.manifest import Manifest
            from manualrag.store import VectorStore

            seed = 7 + sum(1 for _ in idx.parent.glob("idx-*"))
            self.index_dir = idx
            self.manifest = Manifest(idx / "index.sqlite")
            self.store = VectorStore.open(idx, cfg)
            self.rng, self.prng = np.random.default_rng(seed), random.Random(seed)
            self.models = {k: self.store.model_of(k) for k in KINDS if self.store.model_of(k)}
            clip = self.models["text"]
            for kind in ("image", "image_text"):  # the seed may lack a figure: the collections exist anyway
                if kind not in self.models:
                    self.store.ensure(kind, *clip)
                    self.models[kind] = clip
            self.passages, self.headings = corpus_text()
            self.passages_per_page = PASSAGES_PER_PAGE
            self.figures_per_page = FIGURES_PER_PAGE
            self.clip_w_per_passage = CLIP_W_PER_PASSAGE
            self.sem_w_per_passage = SEM_W_PER_PASSAGE if "sem" in self.models else 0.0
            q = "SELECT COUNT(*) FROM documents WHERE path LIKE 'synthetic/%'"
            self.n_docs = int(self.manifest._query(q)[0][0])

        def _vec(self, kind: str, n: int) -> np.ndarray:
            v = self.rng.standard_normal((n, self.models[kind][1]), dtype=np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    return SyntheticGrower()


def task_grow(a: dict[str, Any]) -> dict[str, Any]:
    """Grow the index at ``a['index_dir']`` to ``a['target']`` vectors (a child process: its RSS is its own)."""
    idx = Path(a["index_dir"])
    cfg = bench_config(a["model"], a["text_model"], index_dir=str(idx))
    with RssSampler() as rss:
        g = make_grower(idx, cfg)
        before = g.total()
        grown = (
            g.grow(a["target"], a.get("deadline")) if before < a["target"] else {"added": 0, "seconds": 0.0}
        )
        total, per_kind = g.total(), {k: g.count(k) for k in g.models}
        lex = int(g.manifest._query("SELECT COUNT(*) FROM lexical_rows")[0][0])
        g.close()
    return {
        **grown,
        "before": before,
        "total": total,
        "per_kind": per_kind,
        "lexical_rows": lex,
        "rss_mb": rss.mb(),
    }


def build(
    work: Path, sizes: list[int], model: str, text_model: str, deadline: float | None = None
) -> dict[int, dict[str, Any]]:
    """``work/idx-N`` for each size (grown in ``work/grow``, snapshot copied); what each step cost. Growth
    stops at ``deadline`` (time.time()) when given: the size is then what was reached (``partial``)."""
    grow = work / "grow"
    info: dict[int, dict[str, Any]] = {}
    done = {int(p.name[4:]): p for p in work.glob("idx-*") if (p / ".complete").exists()}
    todo = [s for s in sizes if s not in done]
    if not todo:
        return {s: json.loads((done[s] / ".complete").read_text()) for s in sizes}
    if not (grow / "index.sqlite").exists():
        shutil.rmtree(grow, ignore_errors=True)
        lib = work / "seed-lib"
        lib.mkdir(parents=True, exist_ok=True)
        shutil.copy2(CORPUS / SEED_FILE, lib / SEED_FILE)
        log(f"seed index: {SEED_FILE} with ViT-B/32 (random init) + all-MiniLM-L6-v2")
        run_child(
            INDEX_MODULE,
            {
                "task": "index",
                "model": model,
                "text_model": text_model,
                "library": str(lib),
                "index_dir": str(grow),
            },
        )
    for size in sorted(set(sizes)):
        if size in done:
            continue
        log(f"growing to {size:,} vectors (load {loadavg()})")
        r = run_child(
            MODULE,
            {
                "task": "grow",
                "index_dir": str(grow),
                "target": size,
                "model": model,
                "text_model": text_model,
                "deadline": deadline,
            },
        )
        r["partial"] = r["total"] < size
        r["index_bytes"] = dir_bytes(grow)
        log(
            f"  {r['total']:,} vectors, {r['lexical_rows']:,} lexical rows, {r['seconds']:.0f} s, {r['index_bytes'] / 2**30:.2f} GiB"
        )
        dest = work / f"idx-{size}"
        shutil.rmtree(dest, ignore_errors=True)
        if size == max(sizes):
            grow.rename(dest)
        else:
            shutil.copytree(grow, dest)
        (dest / ".complete").write_text(json.dumps(r))
        info[size] = r
    return {s: info.get(s) or json.loads((work / f"idx-{s}" / ".complete").read_text()) for s in sizes}


# ============================================================================================ measuring
def task_measure(a: dict[str, Any]) -> dict[str, Any]:
    """query_bench's measure() on one index, plus the plain FTS5 query side by side with the lexical channel."""
    from manualrag.manifest import W_BODY, W_CAPTION, W_LABELS, Manifest
    from manualrag.retriever.lexical import compound_phrases, fts_phrases, lexical_search
    from tests.bench.query_bench import measure

    idx = Path(a["index_dir"])
    cfg = bench_config(a["model"], a["text_model"], index_dir=str(idx))
    qs = a["queries"]
    # the lexical channel alone, alternated query by query with the plain FTS5 query (same connection)
    m = Manifest(idx / "index.sqlite", readonly=True)
    plain_sql = (
        "SELECT ref_type, ref_id, bm25(lexical, 0, 0, 0, 0, ?, ?, ?) AS s FROM lexical"
        " WHERE lexical MATCH ? ORDER BY s LIMIT ?"
    )
    n = max(cfg["retrieve"]["candidates"], 3 * cfg["retrieve"]["k"])
    lex_new, lex_old, same = [], [], 0
    for i, q in enumerate(qs[:10] + qs):
        # the same phrases the channel searches (its joined/split word variants too), as one plain OR query
        phrases = fts_phrases(q)
        match = " OR ".join(dict.fromkeys(phrases + compound_phrases(q, m))) if phrases else ""
        # which one runs first alternates: the second finds the first's FTS5 pages in SQLite's cache
        for first in ("new", "old") if i % 2 else ("old", "new"):
            t0 = time.perf_counter()
            if first == "new":
                new = lexical_search(m, q, n)
            else:
                old = m._query(plain_sql, (W_CAPTION, W_LABELS, W_BODY, match, n)) if match else []
            dt = (time.perf_counter() - t0) * 1000
            if i >= 10:
                (lex_new if first == "new" else lex_old).append(dt)
        if i >= 10:
            same += [(r["ref_type"], r["ref_id"]) for r in old] == [(t, r) for t, r, _ in new]
    m.close()
    out = measure(idx, cfg, qs)
    out["lexical_alone"] = {"p50": pct(lex_new, 50), "p95": pct(lex_new, 95)}
    out["lexical_plain_fts5"] = {"p50": pct(lex_old, 50), "p95": pct(lex_old, 95)}
    out["lexical_same_ranking"] = f"{same}/{len(qs)}"
    return out


TASKS = {"grow": task_grow, "measure": task_measure}


def main() -> None:
    ap = argparse.ArgumentParser(description="manualrag search scale benchmark (10k / 100k / 1M records)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--queries", type=int, default=120)
    ap.add_argument(
        "--workdir", default="/tmp/manualrag-scale", help="indexes are built here once and reused"
    )
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument(
        "--grow-until", default=None, help="HH:MM (UTC): stop growing then and measure the size reached"
    )
    ap.add_argument("--no-results", action="store_true", help="do not append to tests/bench/RESULTS.md")
    args = ap.parse_args()
    if args.child:
        a = json.loads(args.child)
        print(json.dumps(TASKS[a["task"]](a), default=str))
        return
    sizes = sorted(int(s) for s in args.sizes.split(","))
    info = machine_info()
    t_bench = time.perf_counter()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model, text_model = str(bench_model("full")), minilm_path()
    deadline = None
    if args.grow_until:
        hh, mm = (int(x) for x in args.grow_until.split(":"))
        now = time.gmtime()
        deadline = time.time() + ((hh * 60 + mm) - (now.tm_hour * 60 + now.tm_min)) * 60 - now.tm_sec
    built = build(work, sizes, model, text_model, deadline)
    if args.build_only:
        return
    qs = queries(args.queries)
    rows, lex_rows, M = [], [], {}
    for size in sizes:
        idx = work / f"idx-{size}"
        log(f"measuring {len(qs)} queries at {size:,} (load {loadavg()})")
        m = run_child(
            MODULE,
            {
                "task": "measure",
                "index_dir": str(idx),
                "queries": qs,
                "model": model,
                "text_model": text_model,
            },
        )
        m["load_end"] = loadavg()
        M[size] = m
        b = built[size]
        rows.append(
            [
                f"{b['total']:,}",
                " / ".join(f"{b['per_kind'].get(k, 0):,}" for k in KINDS),
                f"{b['lexical_rows']:,}",
                *(
                    f"{m[x]['p50']:.1f} / {m[x]['p95']:.1f}"
                    for x in ("dense", "lexical", "fusion", "retrieval", "encode", "search")
                ),
                round(m["rss_mb"]),
                f"{dir_bytes(idx) / 2**30:.2f}",
                f"{b['seconds']:.0f}" + ("" if b.get("before", 0) == 0 else f" (from {b['before']:,})"),
                round(b["rss_mb"]["parent"]),
                f"{m['other_load_cores']} ({m['load_end']})",
            ]
        )
        lex_rows.append(
            [
                f"{b['lexical_rows']:,}",
                f"{m['lexical_plain_fts5']['p50']:.1f} / {m['lexical_plain_fts5']['p95']:.1f}",
                f"{m['lexical_alone']['p50']:.1f} / {m['lexical_alone']['p95']:.1f}",
                f"{m['lexical_plain_fts5']['p95'] / m['lexical_alone']['p95']:.2f}x",
                m["lexical_same_ranking"],
            ]
        )
    out = [
        "### Search latency at "
        + " / ".join(f"{built[s]['total']:,}" for s in sizes)
        + " records (embedded Chroma)\n\n"
        + table(
            [
                "records",
                "text / image / image_text / sem",
                "lexical rows",
                "dense (4 Chroma queries) p50/p95 ms",
                "lexical p50/p95 ms",
                "fusion + hits p50/p95 ms",
                "**retrieval part** p50/p95 ms",
                "query encode (CLIP + MiniLM) p50/p95 ms",
                "**whole search()** p50/p95 ms",
                "query process RSS MB",
                "index GiB",
                "build s (synthetic growth)",
                "build RSS MB",
                "other processes' load, cores (load avg at end)",
            ],
            rows,
        ),
        "### The lexical channel: plain FTS5 query vs ours, same queries alternated\n\n"
        + table(
            [
                "lexical rows",
                "plain FTS5 (bm25 of every match, ORDER BY, LIMIT) p50/p95 ms",
                "ours p50/p95 ms",
                "p95 ratio",
                "same ranking (queries)",
            ],
            lex_rows,
        ),
    ]
    s0, s1 = sizes[0], sizes[-1]
    curve = []
    for key, name in (
        ("retrieval", "retrieval part"),
        ("search", "whole search"),
        ("lexical", "lexical"),
        ("dense", "dense"),
    ):
        curve.append(
            f"{name} p95 "
            + " -> ".join(f"{M[s][key]['p95']:.1f}" for s in sizes)
            + f" ms ({M[s1][key]['p95'] / M[s0][key]['p95']:.2f}x for"
            f" {built[s1]['total'] / built[s0]['total']:.0f}x the records)"
        )
    out.append(
        f"{len(qs)} queries per size after 10 warm-up ones (half real headings of both corpora's tables of contents,"
        " half their labelled queries); k=10, 50 candidates per channel; CLIP dtype float32, torch's default threads."
        " Curves: "
        + "; ".join(curve)
        + ". Goals: at 1M retrieval p95 <= 60 ms, whole search p95 <= 150 ms; at 100k"
        " retrieval p95 <= 50 ms.\n"
    )
    body = (
        "\n\n".join(out) + f"\nsearch_scale_bench wall time: {(time.perf_counter() - t_bench) / 60:.1f} min"
    )
    print(body)
    (work / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(
        json.dumps({"built": built, "measure": M}, default=str, indent=1)
    )
    if not args.no_results:
        append_results("search_scale_bench", info, body)


if __name__ == "__main__":
    main()
