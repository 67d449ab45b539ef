"""Embed stage per precision: ``python -m tests.bench.dtype_bench [--subset]``.

The corpus indexed by the product, once per precision, in one run: the full-size random-init ViT-B/32 and
the real all-MiniLM-L6-v2, each run a fresh process and a fresh index folder (OCR included, the same in
every run). Precisions:

* ``float32``: today's default on a CPU without native bf16;
* ``auto``: what ``dtype: auto`` picks on this machine (bf16 where the CPU has it natively, per model only
  where faithful and faster);
* ``auto-no-bf16``: the same code with the bf16 detection answering no (what a CPU without
  AVX512-BF16/AMX gets: int8 is then the candidate, kept per model only where faithful and faster);
* ``bfloat16`` and ``int8`` forced for both models.

For each: the embed stage (CLIP text windows + figures + MiniLM texts, seconds inside the encoder calls),
model load (which includes auto's probe), wall time, the dtypes each model ended with, and ``manualrag eval``
on the corpus's labelled queries (all channels; queries encoded in float32, as ``auto`` does for queries).
The figures must match float32's within 0.01. The random-init CLIP makes the dense channels' figures
meaningless as quality, not as a comparison between precisions of the same weights.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.common import (  # noqa: E402
    CORPUS,
    REPO,
    append_results,
    bench_model,
    clean_env,
    loadavg,
    log,
    machine_info,
    make_library,
    minilm_path,
    run_child,
    table,
)

MODULE = "tests.bench.dtype_bench"
RUNS = (
    ("float32", "float32", False),
    ("auto", "auto", False),
    ("auto-no-bf16", "auto", True),
    ("bfloat16", "bfloat16", False),
    ("int8", "int8", False),
)
SUBSET = ("xfig-howto.pdf", "netgen-manual.pdf", "kicad-coldfire-schematic.png")
METRICS = ("recall@1", "recall@5", "recall@10", "mrr")


def task_index(a: dict[str, Any]) -> dict[str, Any]:
    """index_bench's index task, with the CPU's native-bf16 answer forced to no when asked."""
    if a.get("no_bf16"):
        import manualrag.encoder as encoder

        encoder.cpu_has_fast_bf16 = lambda cpuinfo=None: False  # type: ignore[assignment]
    from tests.bench.index_bench import task_index as index

    return index(a)


TASKS = {"index": task_index}


def evaluate(index_dir: Path) -> dict[str, Any]:
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "manualrag",
            "eval",
            str(CORPUS / "queries.jsonl"),
            "--index-dir",
            str(index_dir),
            "--json",
        ],
        cwd=str(REPO),
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        raise RuntimeError(f"eval failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description="embed stage per precision (float32 / auto / bf16 / int8)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--subset", action="store_true", help="3 files of the corpus (faster)")
    ap.add_argument("--runs", default=None, help="comma list of run names (default: all)")
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args()
    if args.child:
        a = json.loads(args.child)
        print(json.dumps(TASKS[a["task"]](a), default=str))
        return
    info = machine_info()
    t_bench = time.perf_counter()
    model, text_model = str(bench_model("full")), minilm_path()
    work = Path(tempfile.mkdtemp(prefix="manualrag-dtype-"))
    lib = make_library(work / "corpus", 1, SUBSET if args.subset else None)
    runs = [r for r in RUNS if not args.runs or r[0] in args.runs.split(",")]
    R: dict[str, Any] = {}
    for name, dtype, no_bf16 in runs:
        idx = work / f"idx-{len(R)}"
        log(f"indexing: {name} (load {loadavg()})")
        out = run_child(
            MODULE,
            {
                "task": "index",
                "model": model,
                "text_model": text_model,
                "library": str(lib),
                "index_dir": str(idx),
                "dtype": dtype,
                "no_bf16": no_bf16,
            },
        )["runs"][0]
        out["eval"] = evaluate(idx)
        R[name] = out
    base = R.get("float32")
    rows, notes = [], []
    for name, r in R.items():
        t = r["timings_s"]
        embed = t.get("embed_text", 0) + t.get("embed_image", 0) + t.get("embed_sem", 0)
        r["embed_s"] = embed
        ev = r["eval"]["overall"]
        prec = r.get("precision") or {}
        rows.append(
            [
                name,
                " / ".join(f"{role} {p['dtype']}" for role, p in prec.items()),
                round(embed, 1),
                f"{t.get('embed_text', 0):.1f} / {t.get('embed_image', 0):.1f} / {t.get('embed_sem', 0):.1f}",
                f"{base['embed_s'] / embed:.2f}x" if base and embed else "–",
                round(t.get("load_models", 0), 1),
                round(r["wall_s"], 1),
                " / ".join(f"{ev[m]:.3f}" for m in METRICS),
                "yes"
                if base and all(abs(ev[m] - base["eval"]["overall"][m]) <= 0.01 for m in METRICS)
                else ("–" if not base else "NO"),
                r.get("other_load_cores", "?"),
            ]
        )
        for role, p in prec.items():
            notes.append(f"- {name}, {role}: {p['reason']}")
    body = (
        "### Embed stage per precision (the corpus indexed once per precision)\n\n"
        + table(
            [
                "run",
                "dtypes (CLIP / MiniLM)",
                "embed s",
                "CLIP text / images / MiniLM s",
                "embed speed-up vs float32",
                "model load s (incl. auto's probe)",
                "wall s",
                "eval R@1 / R@5 / R@10 / MRR",
                "eval = float32 ± 0.01",
                "other processes' load (cores)",
            ],
            rows,
        )
        + "\n\nWhy each model ended in its dtype:\n"
        + "\n".join(notes)
        + f"\n\nInput: {'3 files of ' if args.subset else ''}../shared/corpus; full-size random-init ViT-B/32 +"
        " all-MiniLM-L6-v2; runs one after another (not alternated: the load average at each start is in the"
        " log, the other processes' load in the table). Goal (issue 18): embed >= 1.8x float32 with eval"
        f" identical ± 0.01.\n\ndtype_bench wall time: {(time.perf_counter() - t_bench) / 60:.1f} min"
    )
    print(body)
    (work / "results.json").write_text(json.dumps(R, indent=1, default=str))
    log(f"raw results: {work / 'results.json'}")
    if not args.no_results:
        append_results("dtype_bench" + (" --subset" if args.subset else ""), info, body)


if __name__ == "__main__":
    main()
