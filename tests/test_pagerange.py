"""Page-range extraction (issue 18): a PDF split into page ranges over several isolated workers gives the
same Document, and the same index, as one worker: figure de-duplication and boilerplate across ranges,
headings, captions that start the next page across a range border, OCR, ids."""

from __future__ import annotations

import copy
import gc
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pymupdf
import pytest

from manualrag.config import load_config
from manualrag.errors import ConfigError
from manualrag.indexer.pagerange import plan_ranges
from manualrag.indexer.pipeline import Indexer
from manualrag.indexer.worker import FAULT_ENV, WorkerPool
from manualrag.models import Document, FileError
from tests.helpers_pdf import manual_pdf, scanned_pdf

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
GUTENPRINT = CORPUS / "gutenprint-users-manual.pdf"  # 73 pages; figure p25 with its caption atop p26
NETGEN = CORPUS / "netgen-manual.pdf"  # 39 pages, 12 raster figures

needs_corpus = pytest.mark.skipif(not GUTENPRINT.is_file(), reason=f"corpus not found at {CORPUS}")
needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract is not installed")


@pytest.mark.parametrize(
    ("n_pages", "split", "workers"),
    [(1000, 100, 2), (1000, 100, 16), (150, 100, 2), (101, 100, 1), (7, 1, 2), (3000, 64, 8), (17, 5, 4)],
)
def test_plan_ranges_cover_every_page_once(n_pages: int, split: int, workers: int) -> None:
    ranges = plan_ranges(n_pages, split, workers)
    assert ranges[0][0] == 1 and ranges[-1][1] == n_pages
    assert all(b + 1 == a for (_, b), (a, _) in zip(ranges, ranges[1:], strict=False))
    assert all(1 <= b - a + 1 <= split for a, b in ranges)
    assert len(ranges) >= min(2 * workers, n_pages // split, n_pages // 16)  # work for every worker


def test_split_pages_is_validated() -> None:
    assert load_config(environ={})["isolation"]["split_pages"] == 100
    assert load_config(environ={"MANUALRAG_ISOLATION__SPLIT_PAGES": "0"})["isolation"]["split_pages"] == 0
    for bad in ("-5", "ten", "2.5", "true"):
        with pytest.raises(ConfigError, match="isolation.split_pages"):
            load_config(environ={"MANUALRAG_ISOLATION__SPLIT_PAGES": bad})


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> dict:
    c = load_config(environ={})
    # one OCR cache for every run of this module: the second extraction of an image reads the first's words
    c["ocr"]["cache"] = str(tmp_path_factory.mktemp("ocr") / "ocr_cache.sqlite")
    return c


def _one_and_ranged(
    cfg: dict, path: Path, ranges: list[tuple[int, int]], tmp: Path
) -> tuple[Document, Document]:
    one_cfg = copy.deepcopy(cfg)
    one_cfg["isolation"]["split_pages"] = 0
    pool = WorkerPool(one_cfg, tmp / "one", n=1)
    try:
        one = pool.extract(path, path.name)
    finally:
        pool.close()
    pool = WorkerPool(cfg, tmp / "ranged", n=2)
    try:
        ranged = pool.extract_ranges(path, path.name, ranges)
    finally:
        pool.close()
    assert isinstance(one, Document), one
    assert isinstance(ranged, Document), ranged
    return one, ranged


@needs_tesseract
def test_generated_manual_one_page_per_range(cfg: dict, tmp_path: Path) -> None:
    """Every page its own range: the logo on pages 1-4 is still one boilerplate record, the photo on
    pages 1-3 one figure, headings and the metadata title as one worker finds them; the scanned page 6
    is rendered and OCR'd once."""
    pdf = manual_pdf(tmp_path / "manual.pdf")
    with pymupdf.open(pdf) as doc, pymupdf.open(scanned_pdf(tmp_path / "scan.pdf")) as scan:
        doc.insert_pdf(scan)
        doc.save(tmp_path / "manual+scan.pdf")
    pdf = tmp_path / "manual+scan.pdf"
    one, ranged = _one_and_ranged(cfg, pdf, [(n, n) for n in range(1, 7)], tmp_path)
    assert ranged.to_dict() == one.to_dict()
    # the parent kept the lines out of the garbage collector's scans only while it planned
    assert gc.get_freeze_count() == 0
    assert [f.pages for f in ranged.figures if f.kind == "scan"] == [[6]]
    assert any(b.ocr for b in ranged.blocks if b.page == 6) and ranged.pages[5].ocr
    assert [b.pages for b in ranged.boilerplate] == [[1, 2, 3, 4]]
    assert [1, 2, 3] in [f.pages for f in ranged.figures]
    assert "symbol" in {f.kind for f in ranged.figures}
    assert ranged.title == "Pump Service Manual"
    assert any(b.heading.startswith("2 Pump Section 2") for b in ranged.blocks if b.page == 2)


@needs_corpus
@needs_tesseract
def test_corpus_pdfs_equal_one_worker(cfg: dict, tmp_path: Path) -> None:
    # gutenprint: a range ends on p25, whose screenshot's caption starts p26; outline headings, OCR
    one, ranged = _one_and_ranged(cfg, GUTENPRINT, [(1, 25), (26, 50), (51, 73)], tmp_path / "g")
    assert ranged.to_dict() == one.to_dict()
    (fig,) = [f for f in ranged.figures if f.pages[0] == 25]
    assert fig.caption == "Illustration 2: Color Adjustment dialog"
    assert sum(bool(f.ocr_text) for f in ranged.figures) >= 3
    # netgen: ragged ranges, 12 raster figures
    one, ranged = _one_and_ranged(cfg, NETGEN, [(1, 7), (8, 8), (9, 30), (31, 39)], tmp_path / "n")
    assert ranged.to_dict() == one.to_dict()
    assert len(ranged.figures) == 12


def _index_rows(index_dir: Path) -> dict[str, list[tuple]]:
    con = sqlite3.connect(index_dir / "index.sqlite")
    try:
        out = {
            t: con.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()  # noqa: S608 - our table names
            for t in ("passages", "windows", "figures", "lexical")
        }
        out["documents"] = con.execute(
            "SELECT path, doc_id, digest, size, mtime, config_fp, n_pages, title, warnings, state FROM documents ORDER BY path"
        ).fetchall()
    finally:
        con.close()
    out["crops"] = sorted((p.name, p.read_bytes()) for p in (index_dir / "crops").iterdir())
    return out


@needs_corpus
@needs_tesseract
@pytest.mark.slow
def test_index_built_in_page_ranges_is_identical(
    cfg: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy2(GUTENPRINT, lib / GUTENPRINT.name)
    shutil.copy2(NETGEN, lib / NETGEN.name)
    rows = {}
    for name, split in (("one", 0), ("ranged", 20)):
        c = copy.deepcopy(cfg)
        c["isolation"]["split_pages"] = split
        c["isolation"]["workers"] = 2
        with caplog.at_level(logging.INFO, logger="manualrag.indexer.worker"):
            caplog.clear()
            summary = Indexer(c, tmp_path / name, dense=False).run(lib)
        assert summary.exit_code == 0 and len(summary.indexed) == 2
        split_logs = [r.getMessage() for r in caplog.records if "page ranges" in r.getMessage()]
        assert len(split_logs) == (2 if split else 0), split_logs
        rows[name] = _index_rows(tmp_path / name)
    assert rows["ranged"] == rows["one"]
    assert len(rows["one"]["figures"]) >= 17 and len(rows["one"]["passages"]) > 300


def test_a_crash_in_one_range_is_the_files_error_naming_the_pages(
    cfg: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pdf = manual_pdf(tmp_path / "manual.pdf")
    monkeypatch.setenv(FAULT_ENV, "segv:manual.pdf@3")  # the workers' environment: only the range from p3
    c = copy.deepcopy(cfg)
    c["ocr"]["enabled"] = False
    pool = WorkerPool(c, tmp_path / "idx", n=2)
    try:
        res = pool.extract_ranges(pdf, "manual.pdf", [(1, 2), (3, 4)])
        again = pool.extract_ranges(pdf, "manual.pdf", [(1, 1), (2, 4)])  # the pool goes on
    finally:
        pool.close()
    assert isinstance(res, FileError) and res.reason == "pages 3-4: extraction crashed (SIGSEGV)"
    assert isinstance(again, Document) and len(again.pages) == 4


def test_timeline_lookup_equals_the_scan() -> None:
    """The indexed heading lookup (which made the document plan of a 1,000-page manual ~6x cheaper) gives the
    scan's answer for timelines in any order, with repeated pages, unfound headings (y=-1) and infinities."""
    import random

    from manualrag.indexer.extract import _Heading, _heading_at, _Timeline

    rnd = random.Random(5)
    ys = [-1.0, 0.0, 10.0, 50.5, 100.0, float("inf")]
    for _ in range(2000):
        entries = [_Heading(rnd.randint(1, 6), rnd.choice(ys), f"h{k}") for k in range(rnd.randint(0, 12))]
        indexed = _Timeline(entries)
        for _ in range(20):
            page, y = rnd.randint(0, 7), rnd.choice([*ys, 5.0, 99.0, 101.0, float("-inf")])
            assert _heading_at(indexed, page, y) == _heading_at(list(entries), page, y), (entries, page, y)


@needs_corpus
def test_worker_reads_pages_again_when_it_no_longer_holds_them(cfg: dict) -> None:
    """Later rounds send a worker only what planning changed in the lines of pages it read; a worker that
    has since served another document (its pages forgotten) reads them again: still the one-worker Document."""
    from manualrag.indexer import pagerange
    from manualrag.indexer.extract import extract_file

    c = copy.deepcopy(cfg)
    c["ocr"]["enabled"] = False
    held: set[int] = set()
    sent_whole: list[int] = []

    def run(tasks: list[pagerange.Task]) -> list[dict]:
        replies = []
        for t in tasks:
            req = t.build(held)  # as if this worker held every page read so far ...
            sent_whole.extend(e[0] for e in req.get("pages", []) if e[1] is not None)
            pagerange.release()  # ... but it served another document in between
            rep = pagerange.handle(json.loads(json.dumps(req)), c, None, lambda figs: None)
            rep = json.loads(json.dumps(rep))
            if t.done is not None:
                t.done(rep)
            replies.append(rep)
            held.update(t.pages)
        return replies

    try:
        ranged = pagerange.extract_in_ranges(run, NETGEN, NETGEN.name, c, [(1, 10), (11, 39)])
    finally:
        pagerange.release()
    one = extract_file(NETGEN, NETGEN.name, c)
    assert sent_whole == []  # nothing was sent again: every page was read again by the worker
    for d in (ranged, one):
        for f in d.figures + d.boilerplate:
            f.png = None
    assert ranged.to_dict() == one.to_dict()


def test_pymupdf_comes_without_the_layout_model_until_it_is_needed() -> None:
    """Extraction imports pymupdf without loading its layout model (~0.6 s of CPU in every worker and in the
    parent of page ranges); the model still loads and answers when a page needs it."""
    code = (
        "import sys; from manualrag.indexer import figures, pagerange, extract; import pymupdf; "
        "assert 'pymupdf.layout' not in sys.modules and pymupdf._get_layout is None; "
        "doc = pymupdf.open(sys.argv[1]); boxes = figures.page_layout_boxes(doc[13]); "
        "assert 'pymupdf.layout' in sys.modules and callable(pymupdf._get_layout); "
        "print(sum(c == 'picture' for c, _ in boxes))"
    )
    xfig = CORPUS / "xfig-howto.pdf"
    if not xfig.is_file():
        pytest.skip(f"corpus not found at {CORPUS}")
    out = subprocess.run([sys.executable, "-c", code, str(xfig)], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) >= 1


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: onnxruntime's default is one thread")
def test_layout_model_runs_on_the_workers_share_of_the_cores() -> None:
    """Each extraction worker runs the layout model on its share of the cores (pool size N: cores / N
    threads): onnxruntime's default (a thread per core in every worker, spinning while it waits) made N
    workers compete for the cores. The boxes are the same with either thread count."""
    code = (
        "import os, sys; from manualrag.indexer import figures, pdflib; "
        "pdflib.layout_threads = int(sys.argv[2]); doc = pdflib.pymupdf.open(sys.argv[1]); import onnxruntime; "
        "before = len(os.listdir('/proc/self/task')); boxes = figures.page_layout_boxes(doc[13]); "
        "print(len(os.listdir('/proc/self/task')) - before, sorted(boxes))"
    )
    xfig = CORPUS / "xfig-howto.pdf"
    if not xfig.is_file():
        pytest.skip(f"corpus not found at {CORPUS}")
    out = {}
    for threads in ("1", "0"):  # 1: one worker per core; 0: onnxruntime's default
        run = subprocess.run(
            [sys.executable, "-c", code, str(xfig), threads], capture_output=True, text=True, check=True
        )
        added, boxes = run.stdout.split(" ", 1)
        out[threads] = int(added), boxes
    assert out["1"][0] == 0  # no pool threads: each session runs on the calling thread
    assert out["0"][0] > 0
    assert out["1"][1] == out["0"][1]


def test_each_worker_runs_its_share_of_the_tesseract_processes(tmp_path) -> None:
    """ocr.workers 0 means one tesseract per core over ALL workers: a worker of a pool of N runs cores / N at
    once (each ran one per core: cores x cores processes on a big machine); a number set by the user stays."""
    from manualrag.indexer.ocr import OcrEngine
    from manualrag.indexer.worker import use_share

    cfg = load_config(environ={})
    use_share(cfg, 1)
    with OcrEngine(cfg, cache_path=tmp_path / "ocr.sqlite") as ocr:
        assert ocr.workers == 1
    cfg = load_config(environ={"MANUALRAG_OCR__WORKERS": "3"})
    use_share(cfg, 1)
    with OcrEngine(cfg, cache_path=tmp_path / "ocr.sqlite") as ocr:
        assert ocr.workers == 3


def test_pymupdf_without_pymupdf4llm_reads_the_same_line_boxes() -> None:
    """pdflib leaves pymupdf4llm out of pymupdf's import (~0.2 s of CPU in every worker's start-up) but keeps
    the process-wide MuPDF setting that importing it made (no quad corrections): every line box of a manual
    is the same as in a process that imported pymupdf4llm."""
    pdf = CORPUS.parent / "corpus2" / "expeyes-user-manual.pdf"  # its headings' boxes depend on the setting
    if not pdf.is_file():
        pytest.skip(f"corpus not found at {pdf.parent}")
    code = (
        "import sys, hashlib\n"
        "if sys.argv[2] == 'with':\n    import pymupdf, pymupdf4llm\n"
        "from manualrag.indexer import extract\nfrom manualrag.indexer.pdflib import pymupdf\n"
        "doc = pymupdf.open(sys.argv[1])\n"
        "boxes = [ln.bbox for n in range(1, doc.page_count + 1) for ln in extract._page_lines(extract._load_page(doc, n))]\n"
        "print('pymupdf4llm' in sys.modules, len(boxes), hashlib.sha256(repr(boxes).encode()).hexdigest())"
    )
    run = [sys.executable, "-c", code, str(pdf)]
    without = subprocess.run([*run, "without"], capture_output=True, text=True, check=True).stdout.split()
    with_it = subprocess.run([*run, "with"], capture_output=True, text=True, check=True).stdout.split()
    assert without[0] == "False" and with_it[0] == "True"
    assert without[1:] == with_it[1:] and int(without[1]) > 1000


def test_each_worker_takes_a_contiguous_part_and_its_own_pages_first() -> None:
    from manualrag.indexer.pagerange import Task, pick

    tasks = [Task(100 * k + 1, 100 * k + 100, [], lambda held: {}) for k in range(10)]
    pending = list(range(10))
    order: dict[str, list[int]] = {"a": [], "b": []}
    last: dict[str, int | None] = {"a": None, "b": None}
    for w in ["a", "b", "a", "b", "a", "b", "a", "b", "a", "b"]:  # the workers take turns
        k = pick(tasks, pending, set(), last[w])
        pending.remove(k)
        order[w].append(k)
        last[w] = k
    assert order["a"] == [0, 1, 2, 3, 4] and order["b"] == [6, 7, 8, 9, 5]  # page 1 on; the middle on
    # a later round: the costliest task on pages it holds first, then the middle of the others' run
    tasks = [
        Task(10 * k + 1, 10 * k + 10, [], lambda held: {}, cost=c) for k, c in enumerate([1, 5, 1, 1, 1, 1])
    ]
    held = set(range(1, 31))  # pages of tasks 0-2
    assert pick(tasks, [0, 1, 2, 3, 4, 5], held, None) == 1
    assert pick(tasks, [0, 2, 3, 4, 5], held, 1) == 0
    assert pick(tasks, [3, 4, 5], held, 2) == 3  # the next one after its last
    assert pick(tasks, [4, 5], held, 2) == 5  # the middle of what is left, by cost


def test_pool_counts_the_workers_at_work(cfg: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """busy(): how many workers are extracting now (the indexer runs a batch on fewer threads beside them)."""
    import threading

    pdf = manual_pdf(tmp_path / "manual.pdf")
    monkeypatch.setenv(FAULT_ENV, "slow:manual.pdf")  # each request sleeps 1.5 s first
    c = copy.deepcopy(cfg)
    c["ocr"]["enabled"] = False
    pool = WorkerPool(c, tmp_path / "idx", n=2)
    seen: list[int] = []
    try:
        assert pool.busy() == 0
        t = threading.Thread(target=lambda: pool.extract_ranges(pdf, "manual.pdf", [(1, 2), (3, 4)]))
        t.start()
        while t.is_alive():
            seen.append(pool.busy())
            t.join(0.05)
        assert pool.busy() == 0
    finally:
        pool.close()
    assert max(seen) == 2 and set(seen) <= {0, 1, 2}, seen
