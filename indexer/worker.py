"""Isolated extraction: each document is parsed in a worker process with a time and memory limit.

MuPDF, Pillow and tesseract parse untrusted files; a native crash (SIGSEGV/abort), a hang or a memory blow-up
in one of them must cost only that file. The parent keeps the model and the store; workers only extract.

Protocol (JSON lines, never pickle): the parent writes the config once, then one request per document
``{"path": ..., "rel": ...}``; the worker answers ``{"ok": true, "doc": {...}}`` or
``{"ok": false, "reason": "..."}``. Figure crops are written by the worker into ``<index>/crops/<digest>.png``
(names are content digests, never taken from the document), so large images do not travel through the pipe.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import gc
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from manualrag.index import IndexLayout
from manualrag.models import Document, Figure, FileError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- worker side
def _write_crops(doc: Document, index_dir: Path) -> None:
    _write_figure_crops(doc.figures + doc.boilerplate, index_dir)


def _write_figure_crops(figs: list[Figure], index_dir: Path) -> None:
    layout = IndexLayout(index_dir)
    crops = layout.crops
    crops.mkdir(parents=True, exist_ok=True)
    for fig in figs:
        if fig.png is None:
            continue
        if not all(c in "0123456789abcdef" for c in fig.digest) or not 32 <= len(fig.digest) <= 64:
            raise ValueError("figure digest is not a hex digest")  # never let document content name a file
        dest = crops / f"{fig.digest}.png"
        if not dest.exists():
            tmp = crops / f".{fig.digest}.{os.getpid()}.tmp"
            tmp.write_bytes(fig.png)
            os.replace(tmp, dest)
        fig.crop_path = layout.crop_rel(fig.digest)
        fig.png = None


FAULT_ENV = "MANUALRAG_TEST_WORKER_FAULT"
_RESERVED: list[Any] = []  # the ``reserve`` fault's mappings, kept alive for the worker's life
_LIMIT_MB = [3072]  # this worker's isolation.memory_mb


def _test_fault(rel: str, first_page: int | None = None) -> None:
    """Test hook, for the reliability tests only: ``MANUALRAG_TEST_WORKER_FAULT="KIND:REL[,KIND:REL...]"``
    (an environment variable of the indexing process, never read from a config file or a document) makes
    this worker fail on the document whose library-relative path is REL the way a broken parser would:
    KIND is ``segv`` (a real SIGSEGV), ``abort`` (SIGABRT), ``hang`` (sleeps past the timeout), ``oom``
    (allocates until the memory limit stops it), ``reserve`` (reserves twice the memory limit of address space
    that it never touches, as thread stacks and malloc arenas do on a many-core machine, then extracts
    normally) or ``slow`` (sleeps 1.5 s, then extracts normally). ``KIND:REL@N`` fails only the page-range
    requests of REL for the range that starts at page N (``first_page``)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    for item in spec.split(","):
        kind, _, name = item.partition(":")
        name, at, page = name.partition("@")
        if name != rel or (at and str(first_page) != page):
            continue
        if kind == "segv":
            import ctypes

            ctypes.string_at(0)  # reads address 0: SIGSEGV
        elif kind == "abort":
            os.abort()
        elif kind == "hang":
            while True:
                time.sleep(1)
        elif kind == "oom":
            hog = []
            while True:
                hog.append(bytearray(64 << 20))
        elif kind == "reserve":
            import mmap

            _RESERVED.append(
                mmap.mmap(-1, 2 * _LIMIT_MB[0] << 20, flags=mmap.MAP_PRIVATE, prot=0)
            )  # PROT_NONE
        elif kind == "slow":
            time.sleep(1.5)


def _exit_with_parent() -> None:
    """A worker whose parent died (killed, crashed) stops at once, with its tesseract children, instead of
    finishing its document and writing crops into an index that a later run may already be cleaning."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.2)
            if os.getppid() != parent:
                if os.getpgid(0) == os.getpid():  # our own process group (setsid in the parent's preexec)
                    os.killpg(0, signal.SIGKILL)
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def use_share(cfg: dict[str, Any], share: int) -> None:
    """A worker's share of the cores (``cores // pool size``): the layout model's threads and, unless
    ``ocr.workers`` says otherwise, its parallel tesseract processes. "One tesseract per core" counts all
    workers' together: n workers each running one per core started up to cores x cores tesseract processes
    (256 on 16 cores, ~50 MB each)."""
    from manualrag.indexer import pdflib

    pdflib.layout_threads = share
    if not cfg["ocr"]["workers"]:
        cfg["ocr"]["workers"] = share


def worker_main() -> None:
    # keep the protocol channel private: anything a library prints to stdout goes to stderr instead
    proto = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    os.environ["OMP_THREAD_LIMIT"] = "1"
    _exit_with_parent()
    from manualrag.errors import ExtractionError, ManualragError
    from manualrag.indexer import pagerange, pdflib
    from manualrag.indexer.extract import TooManyPages, extract_file

    pdflib.load()  # now, before the worker says it is ready (the parent of page ranges never loads it)
    # the ~50k objects of these imports live as long as the worker: out of the collector's reach, every
    # full collection (several while a large document's pages are read and analysed) scans the
    # document's objects only
    gc.freeze()

    cfg: dict[str, Any] = json.loads(sys.stdin.readline())
    _LIMIT_MB[0] = cfg["isolation"]["memory_mb"]
    index_dir = Path(cfg.pop("__index_dir"))
    use_share(cfg, cfg.pop("__threads"))
    ocr = None
    try:
        if cfg["ocr"]["enabled"]:
            from manualrag.indexer.ocr import OcrEngine

            ocr = OcrEngine(cfg, cache_path=Path(cfg["ocr"]["cache"] or IndexLayout(index_dir).ocr_cache))
    except ManualragError as exc:
        proto.write(json.dumps({"ready": False, "reason": str(exc), "fatal": True}).encode() + b"\n")
        proto.flush()
        return
    # ready: the parent starts a document's clock only now (imports take seconds on a busy machine)
    proto.write(b'{"ready": true}\n')
    proto.flush()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            _test_fault(req["rel"], req.get("first"))
            if "op" in req:  # one round of a page range (manualrag.indexer.pagerange)
                resp: dict[str, Any] = pagerange.handle(
                    req, cfg, ocr, lambda figs: _write_figure_crops(figs, index_dir)
                )
            else:
                pagerange.release()  # the pages of a previous document's ranges are not needed any more
                doc = extract_file(
                    Path(req["path"]), req["rel"], cfg, ocr=ocr, split_pages=req.get("split_pages")
                )
                _write_crops(doc, index_dir)
                resp = {"ok": True, "doc": doc.to_dict(with_png=False)}
        except TooManyPages as exc:
            resp = {"ok": True, "split": exc.n_pages}  # the parent extracts it in page ranges
        except ExtractionError as exc:
            resp = {"ok": False, "reason": exc.reason}
        except ManualragError as exc:
            resp = {"ok": False, "reason": str(exc), "fatal": True}
        except MemoryError:
            resp = {"ok": False, "reason": f"out of memory (limit {cfg['isolation']['memory_mb']} MiB)"}
        except RecursionError:
            resp = {"ok": False, "reason": "document structure too deeply nested"}
        except Exception as exc:  # any other library error: this file fails, the worker goes on
            resp = {"ok": False, "reason": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
        # text from a document may hold lone surrogates (broken UTF-16 in a PDF): they become "?" here, so
        # the parent only ever receives valid UTF-8 (SQLite and Chroma refuse anything else)
        proto.write(json.dumps(resp, ensure_ascii=False).encode("utf-8", "replace") + b"\n")
        proto.flush()
    # the input ended: nothing more will be asked. Leave without the interpreter's teardown (freeing the
    # pages held, MuPDF's and onnxruntime's state: ~0.1-0.2 s of CPU), which would compete with the parent
    # storing the last document; what this worker wrote (crops, OCR cache rows) is written and committed
    if ocr is not None:
        ocr.close()
    proto.close()
    sys.stderr.flush()
    os._exit(0)


# ---------------------------------------------------------------------------------------- parent side
def _limits(memory_mb: int):
    def apply() -> None:
        import resource

        os.setsid()  # own process group: a kill reaches tesseract children too
        limit = memory_mb * 1024 * 1024
        # RLIMIT_DATA (heap and private writable mappings: what a decompression bomb or a runaway parser
        # allocates), not RLIMIT_AS: address space grows with the core count (onnxruntime's thread pools,
        # their stacks and malloc arenas) and a 3 GiB address-space limit killed every worker at start-up
        # on a 16-core machine
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


PIPE_BYTES = 1 << 20  # Linux's default pipe-max-size


def _widen_pipe(stream: Any) -> None:
    """Let the worker write a whole reply (the text lines of 25 pages are ~0.2 MB) into the pipe and go on
    with its next request, instead of waiting in 64 KiB steps for the parent's thread to read it (the
    parent's threads share one interpreter: a reply waits while another worker's is parsed)."""
    import fcntl

    op = getattr(fcntl, "F_SETPIPE_SZ", None)
    if op is None or stream is None:
        return
    try:
        fcntl.fcntl(stream.fileno(), op, PIPE_BYTES)
    except OSError:  # a lower limit on this machine: the default size works, only slower
        pass


STARTUP_TIMEOUT_S = 120.0  # a worker's imports and OCR set-up; the per-document timeout starts after them


class _Worker:
    def __init__(
        self,
        cfg: dict[str, Any],
        index_dir: Path,
        tmp_dir: Path | None = None,
        on_spawn: Callable[[_Worker], None] | None = None,
        threads: int = 0,
    ):
        env = dict(
            os.environ,
            OMP_THREAD_LIMIT="1",
            PYTHONFAULTHANDLER="0",
            MALLOC_ARENA_MAX="2",  # fewer glibc arenas per thread: less memory held on many-core machines
        )
        if tmp_dir is not None:  # tesseract's input renders of the manual's pages go here, not to /tmp
            env.update(
                TMPDIR=str(tmp_dir.absolute()), TEMP=str(tmp_dir.absolute()), TMP=str(tmp_dir.absolute())
            )
        quiet = not log.isEnabledFor(logging.DEBUG)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "manualrag.indexer.worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL if quiet else None,
                preexec_fn=_limits(cfg["isolation"]["memory_mb"]),
                env=env,
                cwd=str(Path(__file__).resolve().parents[1]),
            )
        except (OSError, subprocess.SubprocessError) as exc:  # the limits or the exec itself failed
            from manualrag.errors import ManualragError

            raise ManualragError(
                f"cannot start an extraction worker ({exc}); check config key 'isolation.memory_mb'"
                f" (now {cfg['isolation']['memory_mb']})"
            ) from None
        _widen_pipe(self.proc.stdout)
        if on_spawn is not None:  # the pool can kill it from now on, also while it starts
            on_spawn(self)
        # the worker runs in another working directory (the package's, so that a module in the user's cwd
        # cannot shadow an import): every path it is sent must be absolute
        cache = cfg["ocr"]["cache"]
        ocr = {**cfg["ocr"], "cache": str(Path(cache).absolute()) if cache else None}
        try:
            self.send({**cfg, "ocr": ocr, "__index_dir": str(index_dir.absolute()), "__threads": threads})
        except OSError:  # it died at once: _await_ready reads the end of its output and says why
            pass
        self.start_error = self._await_ready(cfg["isolation"]["memory_mb"])

    def _await_ready(self, memory_mb: int) -> str | None:
        """Wait for the worker's ready line; None when it is ready, else why it did not start."""
        timer = threading.Timer(STARTUP_TIMEOUT_S, self.kill)
        timer.start()
        try:
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
        except OSError:
            line = b""
        finally:
            timer.cancel()
        try:
            resp = json.loads(line) if line else {}
        except ValueError:
            resp = {}
        if not isinstance(resp, dict):
            resp = {}
        if resp.get("ready"):
            return None
        if resp.get("fatal"):
            from manualrag.errors import ManualragError

            raise ManualragError(resp["reason"])
        self.kill()
        return f"extraction worker did not start: {_death_reason(self.proc.returncode, memory_mb)}"

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()

    def close(self) -> None:
        self.finish()
        self.wait_closed()

    def finish(self) -> None:
        """Tell the worker to stop after its current request (it exits when its input ends)."""
        if self.alive():
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except OSError:
                self.kill()

    def wait_closed(self) -> None:
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()


def _death_reason(rc: int | None, memory_mb: int) -> str:
    if rc is None:
        return "extraction worker stopped"
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        if name == "SIGKILL":
            return f"extraction worker was killed (out of memory? limit {memory_mb} MiB)"
        return f"extraction crashed ({name})"
    return f"extraction worker exited with code {rc}"


def _is_digest(text: object) -> bool:
    return isinstance(text, str) and 32 <= len(text) <= 64 and all(c in "0123456789abcdef" for c in text)


def _invalid(doc: Document, rel: str) -> str | None:
    """Why a worker's document cannot be used (None when it can): it must describe the file asked for, and
    figure digests, which name crop files, must be hex digests."""
    if doc.path != rel:
        return "document path differs from the file requested"
    for fig in doc.figures + doc.boilerplate:
        if not _is_digest(fig.digest):
            return "figure digest is not a hex digest"
        if fig.crop_path not in (None, IndexLayout.crop_rel(fig.digest)):
            return "figure crop path is not crops/<digest>.png"
    return None


class _Invalid(Exception):
    """A worker's reply that parses but cannot be used (its message says why)."""


def _accept_document(resp: dict[str, Any], rel: str) -> Document | int:
    """A document reply -> Document; a split reply -> the PDF's page count."""
    if "split" in resp:
        n = resp["split"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise _Invalid("page count is not a positive integer")
        return n
    try:
        doc = Document.from_dict(resp["doc"])
        problem = _invalid(doc, rel)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        problem = f"malformed document ({type(exc).__name__})"
    if problem:
        raise _Invalid(problem)
    return doc


def _accept_reply(resp: dict[str, Any]) -> dict[str, Any]:
    if not _is_digest(resp.get("digest")):
        raise _Invalid("file digest is not a hex digest")
    return resp


# page ranges: a worker's next request is queued behind the one it works on (hiding the round trip, a few
# ms) only while at least this many requests per worker are left in the round. A request queued behind a
# slow one (a part whose pages need the layout model: ~1 s) cannot be taken by a worker that falls idle;
# with 1 a second worker idled ~1 s at the end of round 2 in 3 of 4 runs of range_bench, with 4 ~0.1 s
AHEAD_UNTIL = 4
PRESTART_BYTES_PER_PAGE = 4096  # a PDF this size per page of split_pages or more is probably split


def _likely_split(path: Path, split_pages: int) -> bool:
    try:
        return (
            Path(path).suffix.lower() == ".pdf"
            and Path(path).stat().st_size >= PRESTART_BYTES_PER_PAGE * split_pages
        )
    except OSError:
        return False


def _import_pagerange() -> None:
    from manualrag.indexer import pagerange  # noqa: F401


class WorkerPool:
    """N extraction workers; documents go to whichever is free; a dead or hung worker is replaced."""

    def __init__(
        self, cfg: dict[str, Any], index_dir: Path, n: int | None = None, tmp_dir: Path | None = None
    ):
        self.cfg = cfg
        self.index_dir = index_dir
        self.tmp_dir = tmp_dir
        self.n = n or cfg["isolation"]["workers"] or os.cpu_count() or 1
        self.timeout = cfg["isolation"]["timeout_s"]
        self.memory_mb = cfg["isolation"]["memory_mb"]
        self.split_pages = int(cfg["isolation"].get("split_pages") or 0)
        self._slots = threading.BoundedSemaphore(self.n)  # requests in flight: documents and page ranges
        self._busy = 0  # slots taken now (see busy)
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self._ever_started = False
        self._executors: list[ThreadPoolExecutor] = []
        self._starting = 0  # workers being started ahead (prestart)

    def busy(self) -> int:
        """How many workers are at work now (documents or page ranges in flight): processes competing for
        the cores with the parent's embedding (see :func:`manualrag.encoder.run_batches`)."""
        return self._busy

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        with self._slots:
            with self._lock:
                self._busy += 1
            try:
                yield
            finally:
                with self._lock:
                    self._busy -= 1

    def _get(self, prefer: _Worker | None = None) -> _Worker:
        """An idle worker (``prefer`` if it is idle), a worker being started ahead (``prestart``) once it is
        ready, or a new one."""
        if prefer is not None:
            with self._idle.mutex:
                if prefer in self._idle.queue:
                    self._idle.queue.remove(prefer)
                    if prefer.alive():
                        return prefer
        while True:
            try:
                w = self._idle.get_nowait()
            except queue.Empty:
                with self._lock:
                    starting = self._starting
                if not starting:
                    break
                try:
                    w = self._idle.get(timeout=0.05)
                except queue.Empty:
                    continue
            if w.alive():
                return w
        return self._get_new()

    def _get_new(self) -> _Worker:
        def spawned(w: _Worker) -> None:
            with self._lock:
                self._all.append(w)
                closed = self._closed
            if closed:  # the pool was closed (killed) while this worker was being started
                w.kill()

        threads = max(1, (os.cpu_count() or 1) // self.n)  # each worker's share of the cores
        return _Worker(self.cfg, self.index_dir, self.tmp_dir, on_spawn=spawned, threads=threads)

    def extract(self, path: Path, rel: str) -> Document | FileError:
        req: dict[str, Any] = {"path": str(Path(path).absolute()), "rel": rel}  # the worker's cwd is not ours
        if self.split_pages:
            req["split_pages"] = self.split_pages
            if Path(rel).suffix.lower() == ".pdf" and "manualrag.indexer.pagerange" not in sys.modules:
                # the parent side of page ranges imports extract and figures: while the worker opens the PDF
                threading.Thread(target=_import_pagerange, name="import-pagerange", daemon=True).start()
        res = self._call(req, rel, lambda resp: _accept_document(resp, rel))
        if isinstance(res, int):  # a PDF with more pages than split_pages: extract it in page ranges
            from manualrag.indexer.pagerange import plan_ranges

            ranges = plan_ranges(res, self.split_pages, self.n)
            self._prestart(min(self.n, len(ranges)))
            log.info("%s: %d pages, extracted in %d page ranges", rel, res, len(ranges))
            return self.extract_ranges(path, rel, ranges)
        return res

    def _prestart(self, want: int) -> None:
        """Start workers (in the background) until ``want`` are alive or starting: the page ranges of a
        large PDF are about to need them, and a worker's imports take about a second."""
        with self._lock:
            if self._closed:
                return
            missing = want - sum(w.alive() for w in self._all) - self._starting
            self._starting += max(0, missing)

        def start() -> None:
            try:
                w = self._get_new()
            except Exception:  # noqa: BLE001 - the request that needs a worker starts one and says why not
                w = None
            with self._lock:
                if w is not None:
                    self._idle.put(w)  # before the count drops: _get waits while workers are starting
                self._starting -= 1

        for _ in range(max(0, missing)):
            threading.Thread(target=start, name="worker-prestart", daemon=True).start()

    def _call(self, req: dict[str, Any], rel: str, accept: Callable[[dict[str, Any]], Any]) -> Any:
        """Send one request to a free worker (at most n at once) and wait for its reply, under the time
        limit. Returns ``accept(reply)`` for a good reply, else the one-line FileError; ``accept`` raises
        _Invalid for a reply that cannot be used (the worker is killed: it may be in any state)."""
        return self._call_with(lambda w: req, rel, accept)[0]

    def _call_with(
        self,
        build: Callable[[_Worker], dict[str, Any] | None],
        rel: str,
        accept: Callable[[dict[str, Any]], Any],
        prefer: _Worker | None = None,
    ) -> tuple[Any, _Worker | None]:
        """``_call`` of the request ``build(worker)`` makes for the worker it gets (``prefer`` if that one is
        idle); ``build`` returns None when there is nothing left to send (the result is then None).
        Returns the result and the worker."""
        with self._slot():
            w = self._get(prefer)
            if w.start_error:
                return self._start_failed(w, rel), None
            self._ever_started = True
            req = build(w)
            if req is None:
                self._idle.put(w)
                return None, w
            result, answered = self._receive(w, rel, accept, self._send(w, req))
            if answered:
                self._idle.put(w)
            return result, w

    def _start_failed(self, w: _Worker, rel: str) -> FileError:
        assert w.start_error is not None
        if not self._ever_started:
            # no worker of this run has ever started: every file would fail the same way, so it is a
            # run-level error (a limit too low, a broken installation), not this file's
            from manualrag.errors import ManualragError

            raise ManualragError(
                f"{w.start_error}; no extraction worker could start, so no file can be read (if the "
                f"limit is the cause, raise config key 'isolation.memory_mb', now {self.memory_mb})"
            )
        return FileError(rel, w.start_error)

    @staticmethod
    def _send(w: _Worker, req: dict[str, Any]) -> bool:
        try:
            w.send(req)
        except OSError:  # (BrokenPipeError) it died: _receive says why
            return False
        return True

    def _receive(
        self, w: _Worker, rel: str, accept: Callable[[dict[str, Any]], Any], sent: bool = True
    ) -> tuple[Any, bool]:
        """The reply to the oldest request ``w`` has not answered yet, under the time limit:
        ``accept(reply)`` for a good reply, else the one-line FileError (a worker that died, timed out or
        sent something unusable is killed); and whether the worker answered (it can take more requests).
        ``accept`` raises _Invalid for a reply that cannot be used."""
        timed_out = threading.Event()

        def on_timeout() -> None:
            timed_out.set()
            w.kill()

        timer = threading.Timer(self.timeout, on_timeout)
        timer.start()
        try:
            try:
                assert w.proc.stdout is not None
                line = w.proc.stdout.readline() if sent else b""
            except OSError:
                line = b""
        finally:
            timer.cancel()
        if not line:
            if not sent:
                w.kill()  # (the pipe broke: make sure it is gone)
            rc = w.proc.wait()
            if timed_out.is_set():
                return FileError(rel, f"extraction timed out after {self.timeout} s"), False
            return FileError(rel, _death_reason(rc, self.memory_mb)), False
        # the worker parses untrusted files: what it sends back is checked like any untrusted input
        try:
            resp = json.loads(line)
            if not isinstance(resp, dict):
                raise ValueError("not an object")
        except ValueError:  # never happens with our worker; a garbled reply costs the file, not the run
            w.kill()
            return FileError(rel, "extraction worker sent an unreadable reply"), False
        if not resp.get("ok"):
            if resp.get("fatal"):
                self._idle.put(w)
                from manualrag.errors import ManualragError

                raise ManualragError(str(resp.get("reason")))
            return FileError(
                rel, " ".join(str(resp.get("reason") or "extraction failed").split())[:400]
            ), True
        try:
            result = accept(resp)
        except _Invalid as exc:
            w.kill()
            return FileError(rel, f"extraction worker sent an invalid result: {exc}"), False
        return result, True

    def _stream(
        self,
        take: Callable[[_Worker], tuple[int, dict[str, Any]] | None],
        rel: str,
        accept: Callable[[dict[str, Any]], Any],
        ahead: Callable[[], bool],
    ) -> Iterator[tuple[int, Any]]:
        """Requests on one worker (one slot) for as long as ``take(worker)`` gives (key, request) (None: no
        more); yields (key, ``accept(reply)`` or the FileError), and stops after a FileError. While
        ``ahead()`` says so, the next request is written before the reply to the current one is read, so
        the worker goes on to it at once instead of waiting while its reply travels and the parent reads
        it (a worker with a request still queued when one fails is killed, not reused)."""
        with self._slot():
            w = self._get()
            if w.start_error:
                err = self._start_failed(w, rel)
                got = take(w)
                yield (got[0] if got else -1), err
                return
            self._ever_started = True
            queued: collections.deque[tuple[int, bool]] = collections.deque()  # (key, written) unanswered
            failure: tuple[int, FileError, bool] | None = None
            try:
                while True:
                    while len(queued) < (2 if ahead() else 1) and not (queued and not queued[-1][1]):
                        got = take(w)
                        if got is None:
                            break
                        queued.append((got[0], self._send(w, got[1])))
                    if not queued:
                        break
                    key, sent = queued.popleft()
                    result, answered = self._receive(w, rel, accept, sent)
                    if isinstance(result, FileError):
                        failure = (key, result, answered)
                        break
                    yield key, result
            except GeneratorExit:  # the caller stopped reading (an error in its own work)
                if queued:
                    w.kill()
                else:
                    self._idle.put(w)
                raise
            if failure is None:
                self._idle.put(w)
                return
            key, err, answered = failure
            if answered and queued:
                w.kill()  # it would answer a request nobody reads
            elif answered:
                self._idle.put(w)
            yield key, err

    def extract_ranges(self, path: Path, rel: str, ranges: list[tuple[int, int]]) -> Document | FileError:
        """One PDF in page ranges ((first, last), 1-based, covering every page in order), each round's
        ranges on several workers at once (pagerange.py): the same Document as ``extract``."""
        from manualrag.errors import ExtractionError
        from manualrag.indexer import pagerange

        held: dict[_Worker, set[int]] = {}  # pages of this document that each worker has read or was sent

        def run(tasks: list[pagerange.Task]) -> list[dict[str, Any]]:
            """Each worker takes tasks as ``pagerange.pick`` says (those whose pages it holds first); a task's
            ``done`` runs in its worker's thread."""
            results: list[Any] = [None] * len(tasks)
            pending = list(range(len(tasks)))
            lock = threading.Lock()
            failed: list[tuple[pagerange.Task, FileError]] = []
            last: dict[_Worker, int] = {}  # the task each worker took last in this round

            owner: dict[int, _Worker] = {}  # task -> the worker it was sent to
            n_threads = min(self.n, len(tasks))

            def take(w: _Worker) -> tuple[int, dict[str, Any]] | None:
                with lock:
                    if failed or not pending:
                        return None
                    mine = held.setdefault(w, set())
                    k = pagerange.pick(tasks, pending, mine, last.get(w))
                    pending.remove(k)
                    last[w] = k
                    owner[k] = w
                return k, tasks[k].build(mine)

            def ahead() -> bool:
                """Queue a worker's next request while it works: not for the last tasks of the round, which
                go to whichever worker is free first (see AHEAD_UNTIL)."""
                with lock:
                    return not failed and len(pending) >= AHEAD_UNTIL * n_threads

            def loop() -> None:
                try:
                    for k, res in self._stream(take, rel, _accept_reply, ahead):
                        if isinstance(res, FileError):
                            with lock:  # a worker that did not start fails the next task
                                if k < 0:
                                    k = pending.pop(0) if pending else 0
                                failed.append((tasks[k], res))
                            return
                        done = tasks[k].done
                        if done is not None:
                            done(res)
                        results[k] = res
                        with lock:
                            held.setdefault(owner[k], set()).update(tasks[k].pages)
                except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
                    with lock:
                        errors.append(exc)

            errors: list[BaseException] = []
            threads = [threading.Thread(target=loop, daemon=True) for _ in range(n_threads)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
            if failed:
                task, err = min(failed, key=lambda f: f[0].first)
                raise ExtractionError(rel, f"pages {task.first}-{task.last}: {err.reason}")
            return results

        try:
            doc = pagerange.extract_in_ranges(run, path, rel, self.cfg, ranges)
        except ExtractionError as exc:
            return FileError(rel, exc.reason)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            return FileError(
                rel, f"extraction worker sent an invalid result: malformed range ({type(exc).__name__})"
            )
        problem = _invalid(doc, rel)
        if problem:
            return FileError(rel, f"extraction worker sent an invalid result: {problem}")
        return doc

    def imap(
        self, items: Iterable[tuple[Any, Path, str]]
    ) -> Iterator[tuple[Any, Document | FileError, float]]:
        """Extract items (key, path, rel) with N in flight; yields (key, result, seconds) as they finish.

        Workers never wait for the consumer: when one finishes, the next item goes to it at once (from the
        completion callback), so extraction and OCR go on while the parent embeds. Up to 2N finished
        results may wait to be consumed (a bound on memory when the parent is the slower side)."""
        items = list(items)
        it = iter(items)
        lock = threading.RLock()  # a callback can run in the submitting thread when its future is done
        done_q: queue.Queue[tuple[Any, Future, float]] = queue.Queue()
        # "closed": this call's consumer stopped; the pool itself may serve later calls (the fuzz harness)
        state = {"in_flight": 0, "waiting": 0, "closed": 0}
        ex = ThreadPoolExecutor(max_workers=self.n)
        self._executors.append(ex)

        def submit_more() -> None:
            with lock:
                while (
                    not (state["closed"] or self._closed)
                    and state["in_flight"] < self.n
                    and state["in_flight"] + state["waiting"] < 3 * self.n
                ):
                    try:
                        key, path, rel = next(it)
                    except StopIteration:
                        return
                    state["in_flight"] += 1
                    t0 = time.perf_counter()
                    fut = ex.submit(self.extract, path, rel)
                    fut.add_done_callback(functools.partial(finished, key=key, t0=t0))

        def finished(fut: Future, key: Any, t0: float) -> None:
            with lock:
                state["in_flight"] -= 1
                state["waiting"] += 1
            done_q.put((key, fut, time.perf_counter() - t0))
            if not fut.cancelled():
                submit_more()

        def results() -> Iterator[tuple[Any, Document | FileError, float]]:
            try:
                for k in range(len(items)):
                    key, fut, seconds = done_q.get()
                    with lock:
                        state["waiting"] -= 1
                    submit_more()
                    if k == len(items) - 1:
                        self._finish_idle()  # the workers exit while the caller stores the last document
                    yield key, fut.result(), seconds
            finally:
                with lock:
                    early = state["closed"] == 0 and (state["in_flight"] or state["waiting"])
                    state["closed"] = 1  # the consumer stopped early (an error): submit nothing more
                if early:  # (Ctrl-C, SIGTERM, an error) nobody wants the documents in flight: stop them
                    self._kill_busy()
                    ex.shutdown(wait=False, cancel_futures=True)
                    # a request that took its (then idle) worker after that kill would run on to its time
                    # limit (a hanging file: minutes): kill busy workers until every request has ended
                    while True:
                        with lock:
                            if not state["in_flight"]:
                                break
                        time.sleep(0.02)
                        self._kill_busy()
                ex.shutdown(wait=True, cancel_futures=True)

        if (
            self.split_pages
            and len(items) < self.n
            and any(_likely_split(p, self.split_pages) for _, p, _ in items)
        ):
            # fewer documents than workers, one of them probably extracted in page ranges: start the workers
            # that its ranges will need now, not once the first worker has counted its pages
            self._prestart(self.n)
        submit_more()  # the workers start now, before the caller asks for the first result
        return results()

    def _finish_idle(self) -> None:
        """Let the idle workers exit now (their input ends); a later request starts new ones. A worker
        takes a few tenths of a second to exit: after the last document, that overlaps the caller's work
        on it instead of waiting in ``close``."""
        while True:
            try:
                w = self._idle.get_nowait()
            except queue.Empty:
                return
            w.finish()

    def _kill_busy(self) -> None:
        """Kill the workers that are extracting a document (their callers get a FileError at once)."""
        idle = set(map(id, list(self._idle.queue)))
        for w in list(self._all):
            if id(w) not in idle and w.alive():
                w.kill()

    def close(self, kill: bool = False) -> None:
        """Stop the workers: let each finish its document (``kill``: at once, e.g. when the run failed)."""
        with self._lock:
            self._closed = True
            workers = list(self._all)
        for w in workers:
            if kill:
                w.kill()
            else:
                w.finish()  # every worker at once: each takes a few tenths of a second to exit
        for w in workers:
            if not kill:
                w.wait_closed()
        # the threads that feed workers: none is left writing crops or caches once close() returns
        for ex in self._executors:
            ex.shutdown(wait=True, cancel_futures=True)


if __name__ == "__main__":
    worker_main()
