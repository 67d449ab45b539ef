"""Page-range parallelism (issue 18 item 1): one ~1,000-page manual, indexed with ``--no-dense`` by ONE
extraction worker (the whole document in one process, as before) and split into page ranges over the
machine's workers (``isolation.split_pages``), side by side in one run; the two indexes are compared row by
row (passages, windows, figures, lexical rows, documents, crop files).

The manual is built by concatenating the real manuals of ../shared/corpus2 and ../shared/corpus with PyMuPDF
(their outlines joined under one entry per part), cycling through them until it has ``--pages`` pages.

    python -m tests.bench.range_bench [--pages 1000] [--pairs 1] [--no-results]

Each run is a fresh child process with a fresh index folder (cold OCR cache). With ``--pairs 2`` the runs
alternate one-ranged-ranged-one and the ratio is taken over the sums. Appends to tests/bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.bench.common import (
    REPO,
    append_results,
    bench_cache,
    cpu_scaling,
    index_run,
    log,
    machine_info,
    run_child,
    table,
)

CORPORA = [REPO.parent / "shared" / "corpus2", REPO.parent / "shared" / "corpus"]


def build_manual(dest: Path, pages: int) -> Path:
    """One PDF of ``pages`` pages: the corpora's PDFs in name order, repeated (the last part cut short)."""
    import pymupdf

    parts = [p for c in CORPORA for p in sorted(c.glob("*.pdf"))]
    if not parts:
        raise SystemExit(f"no PDFs in {CORPORA}")
    out = pymupdf.open()
    toc: list[list[Any]] = []
    i = 0
    while out.page_count < pages:
        src = parts[i % len(parts)]
        i += 1
        with pymupdf.open(src) as part:
            take = min(part.page_count, pages - out.page_count)
            offset = out.page_count
            out.insert_pdf(part, from_page=0, to_page=take - 1)
            toc.append([1, f"Part {i}: {src.stem}", offset + 1])
            for level, title, page, *_ in part.get_toc(simple=True):
                if 1 <= page <= take:
                    toc.append([level + 1, title, offset + page])
    # a valid outline never jumps more than one level down
    fixed: list[list[Any]] = []
    for level, title, page in toc:
        level = min(level, (fixed[-1][0] + 1) if fixed else 1)
        fixed.append([level, title, page])
    out.set_toc(fixed)
    out.set_metadata({"title": f"Concatenated technical manual ({pages} pages)"})
    out.save(dest, garbage=3, deflate=True)
    out.close()
    return dest


def index_rows(index_dir: Path) -> dict[str, Any]:
    con = sqlite3.connect(index_dir / "index.sqlite")
    try:
        out: dict[str, Any] = {
            t: con.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()  # noqa: S608 - our table names
            for t in ("passages", "windows", "figures", "lexical")
        }
        out["documents"] = con.execute(
            "SELECT path, doc_id, digest, size, mtime, config_fp, n_pages, title, warnings, state FROM documents ORDER BY path"
        ).fetchall()
    finally:
        con.close()
    crops = index_dir / "crops"
    out["crops"] = sorted((p.name, p.stat().st_size) for p in crops.iterdir()) if crops.is_dir() else []
    return out


# ------------------------------------------------------------------------------------------------ child
def task_index(a: dict[str, Any]) -> dict[str, Any]:
    from manualrag.config import load_config

    cfg = load_config(None, environ={})
    cfg["isolation"].update(a["isolation"])
    cfg["ocr"]["enabled"] = a["ocr"]
    return index_run(cfg, Path(a["library"]), Path(a["index_dir"]), dense=False)


def child_main(arg: str) -> None:
    print(json.dumps(task_index(json.loads(arg)), default=str))


# ----------------------------------------------------------------------------------------------- parent
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--pages", type=int, default=1000)
    ap.add_argument("--pairs", type=int, default=1, help="1: one, ranged; 2: one, ranged, ranged, one")
    ap.add_argument("--split-pages", type=int, default=100)
    ap.add_argument("--workers", type=int, default=0, help="extraction workers (0: one per core)")
    ap.add_argument(
        "--ocr",
        choices=("on", "off", "both"),
        default="both",
        help="OCR of figures and scans (default config: on); both: a pair with OCR, then a pair without",
    )
    ap.add_argument(
        "--no-side-by-side",
        action="store_true",
        help="skip the two one-worker runs at once (the machine's ceiling on this work, OCR off only)",
    )
    ap.add_argument("--no-results", action="store_true", help="do not append to tests/bench/RESULTS.md")
    args = ap.parse_args()
    if args.child:
        child_main(args.child)
        return
    t_bench = time.perf_counter()
    info = machine_info()
    log(f"load average at start: {info['loadavg_start']}")
    manual_dir = bench_cache() / f"range-manual-{args.pages}"
    manual = manual_dir / "manual.pdf"
    if not manual.exists():
        manual_dir.mkdir(parents=True, exist_ok=True)
        log(f"building a {args.pages}-page manual in {manual}")
        build_manual(manual_dir / "tmp.pdf", args.pages)
        os.replace(manual_dir / "tmp.pdf", manual)
    workers = args.workers or os.cpu_count() or 1
    ceiling = cpu_scaling(rounds=1)
    log(f"machine: 2 CPU-bound processes run at {ceiling:.2f}x one")
    work = Path(tempfile.mkdtemp(prefix="range_bench_"))
    lib = work / "lib"
    lib.mkdir()
    shutil.copy2(manual, lib / manual.name)
    modes = {
        "one": {"workers": workers, "split_pages": 0, "timeout_s": 7200},
        "ranged": {"workers": workers, "split_pages": args.split_pages, "timeout_s": 7200},
    }
    order = ["one", "ranged"] if args.pairs == 1 else ["one", "ranged", "ranged", "one"]
    ocr_modes = {"on": [True], "off": [False], "both": [True, False]}[args.ocr]
    runs: list[tuple[str, bool, dict[str, Any]]] = []
    rows: dict[tuple[str, bool], Any] = {}
    try:
        for ocr in ocr_modes:
            for k, mode in enumerate(order):
                index_dir = work / f"index-{mode}-{k}-{ocr}"
                log(f"OCR {ocr}, run {k + 1}/{len(order)}: {mode} (load {os.getloadavg()[0]:.2f})")
                res = run_child(
                    "tests.bench.range_bench",
                    {"library": str(lib), "index_dir": str(index_dir), "isolation": modes[mode], "ocr": ocr},
                )
                log(
                    f"  {mode}: {res['process_wall_s']:.1f} s, extract {res['timings_s'].get('extract', 0):.1f} s"
                )
                runs.append((mode, ocr, res))
                rows.setdefault((mode, ocr), index_rows(index_dir))
                shutil.rmtree(index_dir, ignore_errors=True)
        # the machine's ceiling on this very work: two one-worker runs at once (two index folders), against
        # one alone; no split of one manual into 2 parts can beat it (it would need no serial part at all)
        pair: dict[str, Any] = {}
        if not args.no_side_by_side and False in ocr_modes:
            log(f"side by side: two one-worker runs at once (load {os.getloadavg()[0]:.2f})")
            dirs = [work / f"index-pair-{k}" for k in range(2)]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(2) as pool:
                futures = [
                    pool.submit(
                        run_child,
                        "tests.bench.range_bench",
                        {"library": str(lib), "index_dir": str(d), "isolation": modes["one"], "ocr": False},
                    )
                    for d in dirs
                ]
                pair["walls"] = [f.result()["process_wall_s"] for f in futures]
            pair["wall"] = time.perf_counter() - t0
            log(f"  side by side: {pair['wall']:.1f} s for both")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    identical = {ocr: rows[("one", ocr)] == rows[("ranged", ocr)] for ocr in ocr_modes}
    ratio: dict[bool, float] = {}
    for ocr in ocr_modes:
        wall = {m: sum(r["process_wall_s"] for mm, o, r in runs if mm == m and o == ocr) for m in modes}
        ratio[ocr] = wall["one"] / wall["ranged"]
    first = runs[0][2]
    headers = [
        "run",
        "OCR",
        "pages",
        "figures",
        "passages",
        "wall s (process)",
        "pages/s",
        "index wall s",
        "extract s",
        "store s",
        "CPU s (process tree)",
        "peak RSS tree MB",
        "other processes' load (cores)",
    ]
    body_rows = []
    for mode, ocr, r in runs:
        label = (
            "one worker (whole document)"
            if mode == "one"
            else f"page ranges (split_pages {args.split_pages})"
        )
        body_rows.append(
            [
                label,
                "on" if ocr else "off",
                r["pages"],
                r["figures"],
                r["records"].get("passage", 0),
                r["process_wall_s"],
                r["pages"] / r["process_wall_s"],
                r["wall_s"],
                r["timings_s"].get("extract", 0.0),
                r["timings_s"].get("store", 0.0),
                r["tree_cpu_s"],
                r["rss_mb"]["tree"],
                r["other_load_cores"],
            ]
        )
    lines = [
        f"OCR {'on (the default config)' if ocr else 'off'}: page ranges vs one worker **{ratio[ocr]:.2f}x** the "
        "wall speed (target >= 1.7x); indexes identical (passages, windows, figures, lexical rows, documents, "
        f"crop files): **{'yes' if identical[ocr] else 'NO'}**."
        for ocr in ocr_modes
    ]
    if pair:
        alone = [r["process_wall_s"] for m, o, r in runs if m == "one" and not o]
        mean_alone = sum(alone) / len(alone)
        lines.append(
            f"This machine's ceiling on this work: two one-worker runs at once took {pair['wall']:.1f} s for both "
            f"({' and '.join(f'{w:.1f}' for w in pair['walls'])} s each), one alone {mean_alone:.1f} s (mean): "
            f"2 cores did **{2 * mean_alone / pair['wall']:.2f}x** the work of one. Page ranges split one "
            "manual into parts that run on both cores; with no serial part and no cost of splitting they "
            "would reach that figure, no more."
        )
    text = (
        "### One large manual: one extraction worker vs page ranges (`--no-dense`)\n\n"
        + table(headers, body_rows)
        + f"\n\nInput: one {first['pages']}-page PDF ({manual.stat().st_size / 2**20:.1f} MiB) concatenated from "
        "the PDFs of ../shared/corpus2 and ../shared/corpus (outlines joined), "
        f"{workers} extraction workers allowed in both runs (one worker can only use one of them, plus its "
        "OCR threads); fresh index folder and OCR cache per run.\n\n"
        + "\n".join(f"- {ln}" for ln in lines)
        + "\n\nOne worker already runs its OCR on every core (ocr.workers: one tesseract per core), so with OCR "
        "the gain is bounded by the share of the work that is not OCR. "
        f"Machine at the start: 2 CPU-bound processes ran at {ceiling:.2f}x one (the ceiling of any 2-worker "
        "speed-up at that moment).\n"
    )
    print(text)
    log(f"bench wall {time.perf_counter() - t_bench:.0f} s")
    if not args.no_results:
        minutes = (time.perf_counter() - t_bench) / 60
        append_results("range_bench", info, text + f"\nrange_bench wall time: {minutes:.1f} min\n")
        log("appended to tests/bench/RESULTS.md")
    for ocr in ocr_modes:
        for key in rows[("one", ocr)]:
            if rows[("one", ocr)][key] != rows[("ranged", ocr)][key]:
                log(f"OCR {ocr}: differs: {key}")
    if not all(identical.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
