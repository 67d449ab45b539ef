"""Scaling benchmark of the vector store: memory and query latency at 100k..1M records, for docs/scaling.md.

Synthetic 512-d unit float32 vectors (the CLIP ViT-B size) with 4 scalar metadata fields (path, page, kind,
ref: what the indexer stores), added in batches of 5000, into one cosine collection made by VectorStore.

* server mode: a real ``chroma run`` behind the nginx proxy, both started by ``deploy/serve.sh`` in a
  temporary folder. At each checkpoint: the Chroma process's RSS, the data folder's size, query latency
  p50/p95 (``VectorStore.query``, n=20, 200 queries, after 10 warm-up ones) straight to Chroma and through
  the proxy, and, after a restart of the server, the time to the first answer and the RSS once it serves.
* embedded mode (``--embedded N``, run in a child process so its RSS is its own): the RSS of a Python
  process holding a PersistentClient with N records, and its query latency.

Stops early, saying so, when the machine's available memory drops under ``--min-free-gb`` or the adds take
longer than ``--max-minutes``. Usage::

    python -m tests.bench.scale_bench --sizes 100000,1000000 --out /tmp/scale.json
    python -m tests.bench.scale_bench --embedded 100000
    python -m tests.bench.scale_bench --report /tmp/scale.json     # the tables for docs/scaling.md
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from manualrag.config import DEFAULTS  # noqa: E402
from manualrag.store import VectorStore  # noqa: E402
from tests.chroma_server import SERVE_SH, chroma_cli, free_port, nginx_cli  # noqa: E402

DIM = 512
BATCH = 5000
N_QUERIES = 200
N_RESULTS = 20
KIND = "image"
MODEL = "synthetic-512"


# ------------------------------------------------------------------------------------------------ helpers
def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def mem_available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024 / 1024
    return float("nan")


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def metas(start: int, n: int) -> list[dict[str, Any]]:
    return [
        {"path": f"vendor/manual-{(start + i) // 400:05d}.pdf", "page": (start + i) % 400 + 1,
         "kind": "image", "ref": f"{(start + i):012x}:f:{(start + i) * 2654435761 % 2**32:08x}"}
        for i in range(n)
    ]  # fmt: skip


def latency(store: VectorStore, rng: np.random.Generator, n_queries: int = N_QUERIES) -> dict[str, float]:
    qs = unit(rng, n_queries + 10)
    for q in qs[:10]:
        store.query(KIND, q, N_RESULTS)
    times = []
    for q in qs[10:]:
        t0 = time.perf_counter()
        res = store.query(KIND, q, N_RESULTS)
        times.append((time.perf_counter() - t0) * 1000)
        assert len(res[0]) == N_RESULTS
    arr = np.array(times)
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p95_ms": round(float(np.percentile(arr, 95)), 2),
        "mean_ms": round(float(arr.mean()), 2),
    }


def machine() -> dict[str, Any]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    import chromadb

    return {
        "cpu": cpu,
        "vcpus": os.cpu_count(),
        "mem_gib": round(int(mem) / 1024 / 1024, 1),
        "python": platform.python_version(),
        "chromadb": chromadb.__version__,
        "kernel": platform.release(),
    }


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------- server
class Served:
    """deploy/serve.sh in a temporary folder: chroma run + the nginx proxy."""

    def __init__(self, root: Path):
        self.root = root
        self.token = secrets.token_hex(24)
        self.chroma_port = free_port()
        self.proxy_port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MANUALRAG_")},
            "MANUALRAG_TOKEN": self.token,
            "MANUALRAG_SERVE_DATA": str(root / "data"),
            "MANUALRAG_SERVE_RUN": str(root / "run"),
            "MANUALRAG_SERVE_CHROMA_PORT": str(self.chroma_port),
            "MANUALRAG_SERVE_PROXY_PORT": str(self.proxy_port),
            "MANUALRAG_SERVE_TIMEOUT": "600",
            "CHROMA": chroma_cli() or "",
            "NGINX": nginx_cli() or "",
        }

    def run(self, action: str) -> None:
        res = subprocess.run(["bash", str(SERVE_SH), action], env=self.env, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"serve.sh {action}: {res.stderr[-2000:]}")

    @property
    def chroma_pid(self) -> int:
        return int((self.root / "run" / "chroma.pid").read_text())

    def cfg(self, proxied: bool) -> dict[str, Any]:
        cfg = copy.deepcopy(DEFAULTS)
        cfg["store"]["collection"] = "bench"
        if proxied:
            os.environ["BENCH_PROXY_TOKEN"] = self.token
            cfg["store"]["url"] = f"http://127.0.0.1:{self.proxy_port}"
            cfg["store"]["headers"] = {"Authorization": "Bearer ${BENCH_PROXY_TOKEN}"}
        else:
            cfg["store"]["url"] = f"http://127.0.0.1:{self.chroma_port}"
        return cfg


def bench_server(sizes: list[int], max_minutes: float, min_free_gb: float, seed: int) -> dict[str, Any]:
    if not (nginx_cli() and chroma_cli()):
        raise SystemExit("needs nginx and the chroma command")
    out: dict[str, Any] = {"checkpoints": [], "stopped_early": None}
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="manualrag-scale-", dir=os.environ.get("BENCH_TMP")) as tmp:
        srv = Served(Path(tmp))
        srv.run("start")
        try:
            out["idle_rss_mb"] = round(rss_mb(srv.chroma_pid), 1)
            store = VectorStore.open(Path(tmp), srv.cfg(proxied=False))
            store.ensure(KIND, MODEL, DIM)
            col = store.get(KIND)
            t_start = time.monotonic()
            adds_s = 0.0  # time spent in add() alone
            n = 0
            target = max(sizes)
            peak_rss = 0.0
            while n < target:
                if (time.monotonic() - t_start) / 60 > max_minutes:
                    out["stopped_early"] = f"adds exceeded {max_minutes} minutes at {n} records"
                    break
                if mem_available_gb() < min_free_gb:
                    out["stopped_early"] = f"available memory under {min_free_gb} GiB at {n} records"
                    break
                b = min(BATCH, target - n)
                ids = [f"r{i:09d}" for i in range(n, n + b)]
                t0 = time.perf_counter()
                col.add(ids=ids, embeddings=unit(rng, b), metadatas=metas(n, b))
                dt = time.perf_counter() - t0
                adds_s += dt
                n += b
                rss = rss_mb(srv.chroma_pid)
                peak_rss = max(peak_rss, rss)
                if n % 50_000 == 0:
                    log(
                        f"{n:>9,} records  {b / dt:6.0f}/s now, {n / adds_s:6.0f}/s overall  "
                        f"chroma RSS {rss:7.0f} MB  available {mem_available_gb():5.1f} GiB"
                    )
                if n in sizes:
                    out["checkpoints"].append(checkpoint(srv, store, n, adds_s, peak_rss, rng))
                    store = VectorStore.open(Path(tmp), srv.cfg(proxied=False))  # after the restart
                    col = store.get(KIND)
            if out["stopped_early"] and n not in sizes and n > 0:
                out["checkpoints"].append(checkpoint(srv, store, n, adds_s, peak_rss, rng))
                store = VectorStore.open(Path(tmp), srv.cfg(proxied=False))
            store.close()
        finally:
            srv.run("stop")
    return out


def checkpoint(
    srv: Served, store: VectorStore, n: int, elapsed_s: float, peak_rss: float, rng: np.random.Generator
) -> dict[str, Any]:
    log(f"checkpoint at {n:,} records")
    assert store.count(KIND) == n
    cp: dict[str, Any] = {
        "records": n,
        "adds_elapsed_s": round(elapsed_s, 1),
        "adds_per_s": round(n / elapsed_s) if elapsed_s else None,
        "rss_live_mb": round(rss_mb(srv.chroma_pid), 1),
        "rss_peak_during_adds_mb": round(peak_rss, 1),
        "disk_mb": round(dir_mb(srv.root / "data"), 1),
        "loadavg_1m": round(os.getloadavg()[0], 2),  # other work on the machine skews the figures
    }
    cp["direct"] = latency(store, rng)
    with VectorStore.open(srv.root, srv.cfg(proxied=True)) as proxied:
        cp["proxy"] = latency(proxied, rng)
    cp["rss_after_queries_mb"] = round(rss_mb(srv.chroma_pid), 1)
    # a restarted server: what it takes to load the collection and what it holds while serving
    store.close()
    srv.run("stop")
    t0 = time.perf_counter()
    srv.run("start")
    cp["restart_s"] = round(time.perf_counter() - t0, 2)
    cp["rss_restarted_idle_mb"] = round(rss_mb(srv.chroma_pid), 1)
    with VectorStore.open(srv.root, srv.cfg(proxied=False)) as fresh:
        t0 = time.perf_counter()
        fresh.query(KIND, unit(rng, 1)[0], N_RESULTS)
        cp["first_query_after_restart_s"] = round(time.perf_counter() - t0, 3)
        cp["direct_after_restart"] = latency(fresh, rng)
    cp["rss_restarted_serving_mb"] = round(rss_mb(srv.chroma_pid), 1)
    log(json.dumps(cp))
    return cp


# ------------------------------------------------------------------------------------------- embedded
def bench_embedded(n: int, seed: int) -> dict[str, Any]:
    import chromadb  # noqa: F401 - counted in the baseline

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="manualrag-scale-emb-", dir=os.environ.get("BENCH_TMP")) as tmp:
        cfg = copy.deepcopy(DEFAULTS)
        cfg["store"]["collection"] = "bench"
        store = VectorStore.open(Path(tmp), cfg)
        store.ensure(KIND, MODEL, DIM)
        col = store.get(KIND)
        out: dict[str, Any] = {"records": n, "rss_baseline_mb": round(rss_mb(os.getpid()), 1)}
        t0 = time.monotonic()
        for start in range(0, n, BATCH):
            b = min(BATCH, n - start)
            col.add(
                ids=[f"r{i:09d}" for i in range(start, start + b)],
                embeddings=unit(rng, b),
                metadatas=metas(start, b),
            )
        out["adds_elapsed_s"] = round(time.monotonic() - t0, 1)
        out["loadavg_1m"] = round(os.getloadavg()[0], 2)
        out["rss_after_adds_mb"] = round(rss_mb(os.getpid()), 1)
        out["query"] = latency(store, rng)
        out["rss_after_queries_mb"] = round(rss_mb(os.getpid()), 1)
        out["disk_mb"] = round(dir_mb(Path(tmp) / "chroma"), 1)
        store.close()
    return out


def markdown(results: dict[str, Any]) -> str:
    """The results as the tables of docs/scaling.md."""
    m = results["machine"]
    lines = [
        f"Machine: {m['vcpus']} vCPU {m['cpu']}, {m['mem_gib']} GiB RAM; chromadb {m['chromadb']}, "
        f"Python {m['python']}. {results['dim']}-d unit float32 vectors, 4 scalar metadata fields, adds in "
        f"batches of {results['batch']}, queries n={results['n_results']} (200 timed after 10 warm-up).",
        "",
        "| mode | records | adds/s | RSS while adding | RSS serving (restarted) | disk | query p50 / p95 direct"
        " | through the proxy | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    e = results.get("embedded")
    if e:
        lines.append(
            f"| embedded | {e['records']:,} | {e['records'] / e['adds_elapsed_s']:.0f} | "
            f"{e['rss_after_adds_mb']:.0f} MB (process; {e['rss_baseline_mb']:.0f} MB before) | - | "
            f"{e['disk_mb']:.0f} MB | {e['query']['p50_ms']} / {e['query']['p95_ms']} ms | - | "
            f"{e.get('loadavg_1m', '-')} |"
        )
    srv = results["server"]
    for c in srv["checkpoints"]:
        lines.append(
            f"| server | {c['records']:,} | {c['records'] / c['adds_elapsed_s']:.0f} | {c['rss_live_mb']:.0f} MB | "
            f"{c['rss_restarted_serving_mb']:.0f} MB | {c['disk_mb']:.0f} MB | "
            f"{c['direct']['p50_ms']} / {c['direct']['p95_ms']} ms | "
            f"{c['proxy']['p50_ms']} / {c['proxy']['p95_ms']} ms | {c.get('loadavg_1m', '-')} |"
        )
    lines.append("")
    lines.append(f"Idle `chroma run` RSS: {srv['idle_rss_mb']:.0f} MB.")
    for c in srv["checkpoints"]:
        lines.append(
            f"At {c['records']:,}: restart {c['restart_s']} s, first query after it "
            f"{c['first_query_after_restart_s'] * 1000:.0f} ms, then p50/p95 "
            f"{c['direct_after_restart']['p50_ms']} / {c['direct_after_restart']['p95_ms']} ms."
        )
    if srv.get("stopped_early"):
        lines.append(f"Stopped early: {srv['stopped_early']}.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000", help="checkpoints (records), comma-separated")
    ap.add_argument("--embedded", type=int, default=0, help="only: embedded mode with this many records")
    ap.add_argument("--with-embedded", type=int, default=100_000, help="also embedded at this size (0: no)")
    ap.add_argument("--max-minutes", type=float, default=40.0, help="stop adding after this long (wall)")
    ap.add_argument("--min-free-gb", type=float, default=3.0, help="stop adding when less memory is left")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument(
        "--report", metavar="JSON", help="only: print the tables for docs/scaling.md from a results file"
    )
    args = ap.parse_args()
    os.environ["ANONYMIZED_TELEMETRY"] = "False"

    if args.report:
        print(markdown(json.loads(Path(args.report).read_text())))
        return

    if args.embedded:
        print(json.dumps(bench_embedded(args.embedded, args.seed)))
        return

    results: dict[str, Any] = {"machine": machine(), "dim": DIM, "batch": BATCH, "n_results": N_RESULTS}
    if args.with_embedded:
        log(f"embedded mode, {args.with_embedded:,} records (child process)")
        res = subprocess.run(
            [sys.executable, "-m", "tests.bench.scale_bench", "--embedded", str(args.with_embedded)],
            cwd=REPO, capture_output=True, text=True, check=True,
        )  # fmt: skip
        results["embedded"] = json.loads(res.stdout.strip().splitlines()[-1])
        log(json.dumps(results["embedded"]))
    sizes = sorted(int(s) for s in args.sizes.split(","))
    log(f"server mode, checkpoints {sizes}")
    results["server"] = bench_server(sizes, args.max_minutes, args.min_free_gb, args.seed)
    text = json.dumps(results, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
