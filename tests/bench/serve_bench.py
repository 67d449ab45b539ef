"""HTTP benchmark of ``manualrag serve``: ``python -m tests.bench.serve_bench [--quick] [--sizes 10000,100000]``.

The index is query_bench's (the corpus indexed with the full-size random-init ViT-B/32 and the real
all-MiniLM-L6-v2, grown with its synthetic records to each size; ``--workdir`` shares one with
query_bench). At each size a real ``manualrag serve`` process is started on 127.0.0.1 (models loaded and
warmed once, as a user runs it) and measured from this process over keep-alive HTTP:

- search: ``GET /api/search?q=...&k=10`` over >= 100 queries after 10 warm-up ones, sequential; the whole
  request as the client sees it (p50/p95), and the server's own ``timings_ms.total``;
- page render: ``GET /api/pages/{doc_id}/{page}.png`` at the default dpi (110) for up to 40 pages of the real
  documents, first request (rendered) and second (cached);
- a figure crop: ``GET /api/figures/{id}.png``.

Prints a table and appends it to tests/bench/RESULTS.md. Not part of the CI test run.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.common import (  # noqa: E402
    REPO,
    append_results,
    bench_config,
    bench_model,
    clean_env,
    loadavg,
    log,
    machine_info,
    make_library,
    minilm_path,
    pct,
    run_child,
    table,
)
from tests.bench.query_bench import INDEX_MODULE, KINDS, QUICK_SUBSET, Grower, make_queries  # noqa: E402

N_PAGES = 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """``manualrag serve`` in a child process, until stop()."""

    def __init__(self, cfg_file: Path, index_dir: Path, log_file: Path):
        import httpx

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "manualrag", "--config", str(cfg_file), "serve"]
        cmd += ["--index-dir", str(index_dir), "--port", str(self.port)]
        t0 = time.perf_counter()
        with open(log_file, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=str(REPO), env=clean_env(), stdout=out, stderr=subprocess.STDOUT
            )
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"manualrag serve exited: {log_file.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - t0 > 600:
                raise RuntimeError("manualrag serve did not answer within 10 minutes")
            time.sleep(0.2)
        self.start_s = time.perf_counter() - t0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def measure(srv: Server, queries: list[str], warmup: int = 10) -> dict[str, Any]:
    import httpx

    out: dict[str, Any] = {"server_start_s": round(srv.start_s, 2)}
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        for q in queries[:warmup]:
            c.get("/api/search", params={"q": q, "k": 10}).raise_for_status()
        wall, server, figure_ids = [], [], []
        for q in queries[warmup:]:
            t0 = time.perf_counter()
            r = c.get("/api/search", params={"q": q, "k": 10})
            wall.append(_ms(t0))
            r.raise_for_status()
            body = r.json()
            server.append(body["timings_ms"]["total"])
            figure_ids += [h["urls"]["figure"] for h in body["hits"] if h["urls"].get("figure")]
        out["search"] = {"p50": pct(wall, 50), "p95": pct(wall, 95), "n": len(wall)}
        out["search_server"] = {"p50": pct(server, 50), "p95": pct(server, 95)}

        docs = [
            d
            for d in c.get("/api/documents").json()["documents"]
            if not d["path"].startswith("synthetic/") and d["file_type"] in ("pdf", "image")
        ]
        pages = [(d["doc_id"], p) for d in docs for p in range(1, d["pages"] + 1)]
        random.Random(5).shuffle(pages)
        first, cached = [], []
        for doc_id, p in pages[:N_PAGES]:
            url = f"/api/pages/{doc_id}/{p}.png"
            t0 = time.perf_counter()
            c.get(url).raise_for_status()
            first.append(_ms(t0))
            t0 = time.perf_counter()
            c.get(url).raise_for_status()
            cached.append(_ms(t0))
        out["page_first"] = {"p50": pct(first, 50), "p95": pct(first, 95), "n": len(first)}
        out["page_cached"] = {"p50": pct(cached, 50), "p95": pct(cached, 95)}
        crops = []
        for url in list(dict.fromkeys(figure_ids))[:40]:
            t0 = time.perf_counter()
            c.get(url).raise_for_status()
            crops.append(_ms(t0))
        out["figure"] = {"p50": pct(crops, 50), "p95": pct(crops, 95), "n": len(crops)} if crops else None
    out["rss_mb"] = round(_rss_mb(srv.proc.pid))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description="manualrag serve HTTP benchmark",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="3-file corpus subset, 10k records only, 60 queries")
    ap.add_argument("--sizes", default=None, help="comma list of total record counts (default 10000,100000)")
    ap.add_argument("--queries", type=int, default=None, help="measured queries per size (default 120)")
    ap.add_argument(
        "--workdir", default=None, help="keep the index here (reused when present; shared with query_bench)"
    )
    ap.add_argument("--no-results", action="store_true", help="do not append to tests/bench/RESULTS.md")
    args = ap.parse_args()

    import yaml

    sizes = [int(s) for s in (args.sizes or ("10000" if args.quick else "10000,100000")).split(",")]
    n_queries = args.queries or (60 if args.quick else 120)
    info = machine_info()
    log(f"machine: {info['cpu']}, {info['cores']} cores, load {info['loadavg_start']}; sizes {sizes}")
    model, text_model = str(bench_model("full")), minilm_path()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="manualrag-sbench-"))
    work.mkdir(parents=True, exist_ok=True)
    idx = work / "index"
    t_bench = time.perf_counter()
    if not (idx / "index.sqlite").exists():
        lib = make_library(work / "corpus", 1, QUICK_SUBSET if args.quick else None)
        log("indexing the corpus: full-size ViT-B/32 + all-MiniLM-L6-v2")
        run_child(
            INDEX_MODULE,
            {
                "task": "index",
                "model": model,
                "text_model": text_model,
                "library": str(lib),
                "index_dir": str(idx),
            },
        )
    cfg = bench_config(model, text_model, index_dir=str(idx))
    cfg_file = work / "serve-bench.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    rows, R = [], {"machine": info, "measure": {}}
    for size in sizes:
        g = Grower(idx, cfg)
        if g.total() < size:
            log(f"growing the index from {g.total()} to {size} records")
            g.grow(size)
        total, per_kind = g.total(), {k: g.count(k) for k in g.models}
        g.close()
        log(f"starting manualrag serve at {total} records")
        srv = Server(cfg_file, idx, work / f"serve-{size}.log")
        try:
            log(f"measuring {n_queries} HTTP searches + page renders (load {loadavg()})")
            m = measure(srv, make_queries(idx, n_queries + 10))
        finally:
            srv.stop()
        R["measure"][size] = m
        fig = m["figure"]
        rows.append(
            [
                f"{total:,}",
                " / ".join(f"{per_kind[k]:,}" for k in KINDS if k in per_kind),
                f"**{m['search']['p50']:.1f} / {m['search']['p95']:.1f}**",
                f"{m['search_server']['p50']:.1f} / {m['search_server']['p95']:.1f}",
                f"{m['page_first']['p50']:.0f} / {m['page_first']['p95']:.0f} (n={m['page_first']['n']})",
                f"{m['page_cached']['p50']:.1f} / {m['page_cached']['p95']:.1f}",
                f"{fig['p50']:.1f} / {fig['p95']:.1f}" if fig else "-",
                m["server_start_s"],
                m["rss_mb"],
            ]
        )
    txt = table(
        [
            "records",
            "text / image / image_text / sem",
            "**HTTP search, whole request** p50/p95 ms",
            "server-side total p50/p95 ms",
            "page render (first request, dpi 110) p50/p95 ms",
            "page (cached) p50/p95 ms",
            "figure crop p50/p95 ms",
            "server start to first answer s (models + warm-up)",
            "server RSS MB",
        ],
        rows,
    )
    last = R["measure"][sizes[-1]]
    txt += (
        f"\n\n{n_queries} sequential GET /api/search (k=10, every channel, query encoded by the server with"
        f" warm models) after 10 warm-up ones, keep-alive httpx client on the same machine. At"
        f" {sizes[-1]:,} records: p95 **{last['search']['p95']:.1f} ms** for the whole request (goal <= 60 ms"
        " at 100k records on 2 cores)."
    )
    body = (
        "### HTTP search and page renders\n\n"
        + txt
        + f"\n\nserve_bench wall time: {(time.perf_counter() - t_bench) / 60:.1f} min"
    )
    body += " (--quick)" if args.quick else ""
    print(body)
    if not args.no_results:
        append_results("serve_bench" + (" --quick" if args.quick else ""), info, body)
    (work / "serve_bench.json").write_text(json.dumps(R, indent=1, default=str))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
