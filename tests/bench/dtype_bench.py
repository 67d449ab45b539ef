"""Embed stage per precision: ``python -m tests.bench.dtype_bench [--subset]``.

The corpus indexed by the product, once per precision, in one run: the full-size random-init ViT-B/32 and
the real all-MiniLM-L6-v2, each run a fresh process and a fresh index folder (OCR included, the same in
every run). Precisions:

* ``float32``: today's default on a CPU without native bf16;
* ``auto``: what ``dtype: auto`` picks on this machine (bf16 where the CPU has it natively, per model only
  where faithful and faster);
* ``auto-no-bf16``: the same code with the bf16 detection answering no (what a CPU without
  AVX512-BF16/AMX gets: int8 is then the candidate, kept per model only where faithful and faster);
* ``int8-where-faithful``: as ``auto-no-bf16`` with auto's speed check off (int8 for each model whose
  vectors stay faithful, whatever the 16-text probe's timing says): CLIP int8, MiniLM float32;
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
RUNS = (  # name, config dtype, CPU's native bf16 answered no, auto's speed check on
    ("float32", "float32", False, True),
    ("auto", "auto", False, True),
    ("auto-no-bf16", "auto", True, True),
    ("int8-where-faithful", "auto", True, False),
    ("bfloat16", "bfloat16", False, True),
    ("int8", "int8", False, True),
)
SUBSET = ("xfig-howto.pdf", "netgen-manual.pdf", "kicad-coldfire-schematic.png")
METRICS = ("recall@1", "recall@5", "recall@10", "mrr")


def task_index(a: dict[str, Any]) -> dict[str, Any]:
    """index_bench's index task, with the CPU's native-bf16 answer forced to no when asked."""
    import manualrag.encoder as encoder

    if a.get("no_bf16"):
        encoder.cpu_has_fast_bf16 = lambda cpuinfo=None: False  # type: ignore[assignment]
    if not a.get("speed_check", True):
        encoder.FASTER_MIN_SPEEDUP = 0.0
    from tests.bench.index_bench import task_index as index

    return index(a)


def task_alternate(a: dict[str, Any]) -> dict[str, Any]:
    """Side by side in one process: each model in float32, bfloat16 and int8 embeds the same real corpus
    passages (fitted to the model, batches of 32 as the indexer), rounds alternating the precisions, best
    round of each; the cosine of each vector to float32's."""
    import numpy as np
    import pymupdf

    from manualrag.encoder import ClipEncoder, TextEncoder

    blocks: list[str] = []
    for f in sorted(CORPUS.glob("*.pdf")):
        with pymupdf.open(f) as doc:
            blocks += [" ".join(str(b[4]).split()) for page in doc for b in page.get_text("blocks")]
    blocks = [b for b in blocks if len(b) >= 60][: a.get("n_texts", 128)]
    out: dict[str, Any] = {}
    for role, cls, path in (("clip", ClipEncoder, a["model"]), ("text", TextEncoder, a["text_model"])):
        encs = {d: cls.load(path, device="cpu", dtype=d) for d in ("float32", "bfloat16", "int8")}
        texts = [encs["float32"].fit(t) for t in blocks]
        ref = encs["float32"].embed_texts(texts[:32])  # warm-up (oneDNN builds its kernels on first use)
        for e in encs.values():
            e.embed_texts(texts[:32])
        best = {d: float("inf") for d in encs}
        vecs = {}
        for _ in range(a.get("rounds", 2)):
            for d, e in encs.items():
                t0 = time.perf_counter()
                vecs[d] = e.embed_texts(texts)
                best[d] = min(best[d], time.perf_counter() - t0)
        ref = vecs["float32"]
        out[role] = {
            d: {
                "seconds": best[d],
                "texts_per_s": len(texts) / best[d],
                "speedup": best["float32"] / best[d],
                "min_cos": float((ref * vecs[d]).sum(1).min()),
                "median_cos": float(np.median((ref * vecs[d]).sum(1))),
            }
            for d in encs
        }
        out[role]["n_texts"] = len(texts)
        del encs
    return out


TASKS = {"index": task_index, "alternate": task_alternate}


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
    ap.add_argument(
        "--alternate-only", action="store_true", help="only the side-by-side embed timing (no index runs)"
    )
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
    if args.alternate_only:
        runs = []
    R: dict[str, Any] = {}
    for name, dtype, no_bf16, speed_check in runs:
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
                "speed_check": speed_check,
            },
        )["runs"][0]
        out["eval"] = evaluate(idx)
        R[name] = out
    log(f"side by side: float32 / bfloat16 / int8 in one process (load {loadavg()})")
    alt = run_child(MODULE, {"task": "alternate", "model": model, "text_model": text_model})
    alt_rows = [
        [
            role,
            d,
            f"{x['texts_per_s']:.1f}",
            f"{x['speedup']:.2f}x",
            f"{x['min_cos']:.4f} / {x['median_cos']:.4f}",
        ]
        for role in ("clip", "text")
        for d, x in alt[role].items()
        if isinstance(x, dict)
    ]
    alt_body = (
        "### Side by side in one process (rounds alternating the precisions, best of 2)\n\n"
        + table(
            ["model", "dtype", "texts/s", "speed-up vs float32", "cosine to float32 min / median"], alt_rows
        )
        + f"\n\n{alt['clip']['n_texts']} real passages of ../shared/corpus's PDFs, fitted to each model,"
        f" batches of 32; other processes' load {alt.get('other_load_cores', '?')} cores.\n"
    )
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
        alt_body
        + (
            ""
            if not R
            else "\n### Embed stage per precision (the corpus indexed once per precision)\n\n"
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
            " identical ± 0.01.\n"
        )
        + f"\ndtype_bench wall time: {(time.perf_counter() - t_bench) / 60:.1f} min"
    )
    print(body)
    (work / "results.json").write_text(json.dumps(R, indent=1, default=str))
    log(f"raw results: {work / 'results.json'}")
    if not args.no_results:
        append_results("dtype_bench" + (" --subset" if args.subset else ""), info, body)


if __name__ == "__main__":
    main()
