"""Re-indexing an edited or renamed manual: stored vectors reused (``index.reuse_vectors: true``, the default)
vs everything embedded again (``false``), side by side in one run (indexer/reuse.py).

The largest PDF of ../shared/corpus2 (by size; ``--pdf`` for another) is indexed once with a full-size
random-initialised CLIP (ViT-B/32 shapes, tests/bench/common.py ``bench_model``) and all-MiniLM-L6-v2. Then:

* edit: one page in the middle gets a revision note (PyMuPDF), the file is saved, and re-indexed;
* rename: the original file moved into a sub-folder under another name, and re-indexed.

Each re-index starts from a copy of the same base index folder (OCR cache included, so extraction costs the
same in both), once with reuse and once without, in alternating order; the wall times of the two runs are
compared, and every vector the reuse run stored is compared with the one the other run computed afresh
(lowest cosine over all of them).

    python -m tests.bench.update_bench [--pdf PATH] [--no-results]

Appends to tests/bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.bench.common import (
    REPO,
    append_results,
    bench_config,
    bench_model,
    index_run,
    log,
    machine_info,
    minilm_path,
    table,
)

CORPUS2 = REPO.parent / "shared" / "corpus2"


def edit_one_page(src: Path, dest: Path) -> int:
    """``src`` with a revision note added to its middle page, saved to ``dest``; the page number (1-based)."""
    import pymupdf

    with pymupdf.open(src) as doc:
        n = doc.page_count // 2
        page = doc[n]
        rect = pymupdf.Rect(60, 40, page.rect.width - 60, 110)
        page.insert_textbox(
            rect,
            "Revision note (2026-12): the calibration procedure on this page now uses the 2.5 V reference "
            "input; repeat it after every firmware update and record the offset in the service log.",
            fontsize=8,
        )
        doc.save(dest)
    return n + 1


def vectors_of(index_dir: Path, cfg: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    from manualrag.store import KINDS, VectorStore

    with VectorStore.open(index_dir, cfg) as st:
        return {k: st.vectors(k, st.all_ids(k)) for k in KINDS if st.get(k) is not None}


def lowest_cosine(
    a: dict[str, dict[str, np.ndarray]], b: dict[str, dict[str, np.ndarray]]
) -> tuple[float, int]:
    """The lowest cosine between the vectors of the same id in ``a`` and ``b`` (which must hold the same
    ids), and how many were compared."""
    worst, n = 1.0, 0
    for kind in b:
        if set(a.get(kind, {})) != set(b[kind]):
            raise SystemExit(f"the two indexes hold different {kind} ids")
        for rid, v in b[kind].items():
            worst = min(worst, float(a[kind][rid] @ v))
            n += 1
    return worst, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pdf", type=Path, default=None, help="the manual (default: corpus2's largest PDF)")
    ap.add_argument("--no-results", action="store_true", help="do not append to tests/bench/RESULTS.md")
    args = ap.parse_args()
    t_bench = time.perf_counter()
    info = machine_info()
    log(f"load average at start: {info['loadavg_start']}")
    pdf = args.pdf or max(CORPUS2.glob("*.pdf"), key=lambda p: p.stat().st_size)
    cfg = bench_config(str(bench_model("full")), minilm_path())
    work = Path(tempfile.mkdtemp(prefix="update_bench_"))
    rows: list[list[Any]] = []
    notes: list[str] = []
    try:
        lib = work / "lib"
        lib.mkdir()
        shutil.copy2(pdf, lib / pdf.name)
        pristine = work / "pristine"
        shutil.copytree(lib, pristine)
        base = work / "base"
        log(f"indexing {pdf.name} (full CLIP + MiniLM)")
        first = index_run(cfg, lib, base)
        log(f"  {first['bench_wall_s']:.1f} s, model inputs {first['embedded']}")
        pages = first["pages"]
        stored = sum(first["records"].get(k, 0) for k in ("text", "image", "image_text", "sem"))

        edited = work / "edited.pdf"
        page = edit_one_page(pdf, edited)

        def edit(lib: Path) -> None:
            shutil.copy2(edited, lib / pdf.name)

        def rename(lib: Path) -> None:
            (lib / "archive").mkdir()
            (lib / pdf.name).rename(lib / "archive" / f"old-{pdf.name}")

        changes = {"edit": (f"page {page} of {pages} edited", edit), "rename": ("renamed and moved", rename)}
        orders = {"edit": (False, True), "rename": (True, False)}
        for change, (what, apply) in changes.items():
            results: dict[bool, dict[str, Any]] = {}
            dirs: dict[bool, Path] = {}
            for reuse_on in orders[change]:
                shutil.rmtree(lib)  # the index's library, as it was, then changed
                shutil.copytree(pristine, lib)
                apply(lib)
                idx = work / f"index-{change}-{reuse_on}"
                shutil.copytree(base, idx)
                run_cfg = copy.deepcopy(cfg)
                run_cfg["index"]["reuse_vectors"] = reuse_on
                log(f"{change}: re-index with reuse {'on' if reuse_on else 'off'}")
                res = index_run(run_cfg, lib, idx)
                log(f"  {res['bench_wall_s']:.1f} s, reused {res['reused']}, embedded {res['embedded']}")
                results[reuse_on] = res
                dirs[reuse_on] = idx
            worst, compared = lowest_cosine(vectors_of(dirs[True], cfg), vectors_of(dirs[False], cfg))
            on, off = results[True], results[False]
            for reuse_on, res in ((False, off), (True, on)):
                t = res["timings_s"]
                rows.append(
                    [
                        what,
                        "on" if reuse_on else "off",
                        sum(res["reused"].values()),
                        sum(res["embedded"].values()),
                        res["bench_wall_s"],
                        round(t.get("embed_text", 0) + t.get("embed_image", 0) + t.get("embed_sem", 0), 2),
                        round(t.get("reuse", 0), 2),
                        round(t.get("extract", 0), 1),
                        round(t.get("load_models", 0), 1),
                    ]
                )
            notes.append(
                f"- {what}: re-index **{off['bench_wall_s'] / on['bench_wall_s']:.2f}x** faster with reuse "
                f"({off['bench_wall_s']:.1f} s -> {on['bench_wall_s']:.1f} s); lowest cosine between a reused "
                f"vector and the one computed afresh: **{worst:.6f}** ({compared} vectors compared)"
            )
            for d in dirs.values():
                shutil.rmtree(d, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    headers = [
        "change",
        "reuse",
        "vectors reused",
        "vectors embedded",
        "wall s",
        "embed s",
        "reuse lookup s",
        "extract s",
        "load models s",
    ]
    body = "\n".join(
        [
            "### Re-indexing an edited or renamed manual: stored vectors reused vs embedded again",
            "",
            table(headers, rows),
            "",
            f"Input: {pdf.name} ({pdf.stat().st_size / 2**20:.1f} MiB, {pages} pages, {first['figures']} figures, "
            f"{stored} vectors), full-size random CLIP (ViT-B/32 shapes) + all-MiniLM-L6-v2, dtype auto; the "
            f"first index took {first['bench_wall_s']:.1f} s. Each re-index starts from a copy of that index "
            "(OCR cache included), in the same process, reuse off/on alternating in order.",
            "",
            *notes,
            "",
            f"update_bench wall time: {(time.perf_counter() - t_bench) / 60:.1f} min",
        ]
    )
    print(body)
    if not args.no_results:
        append_results("update_bench", info, body)


if __name__ == "__main__":
    main()
