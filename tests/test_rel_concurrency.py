"""Concurrent use: one writer at a time (a second gets exit 2 and the holder's pid and start time), a stale
lock of a killed writer is recovered, and queries during an index run see every document whole: before or
after its update, never missing, never half of each."""

from __future__ import annotations

import json
import logging
import re
import signal
import sqlite3
import threading
import time
from collections import Counter

import pytest

from manualrag.indexer.worker import FAULT_ENV
from manualrag.manifest import Manifest
from manualrag.retriever.lexical import lexical_search
from tests import rel_helpers as rh

DOCS = ("alpha.pdf", "beta.pdf", "gamma.md")


def _write_library(lib, tag: str, size: int = 2) -> None:
    lib.mkdir(exist_ok=True)
    for name in DOCS:
        if name.endswith(".md"):
            data = rh.versioned_md(tag, sections=size * 4)
        else:
            data = rh.versioned_pdf(tag, pages=size, photo=tag == "rev1")
        (lib / name).write_bytes(data)


def _has_schema(idx) -> bool:
    try:
        with rh.sqlite_ro(idx) as db:
            return db.execute("SELECT 1 FROM meta WHERE key = 'schema'").fetchone() is not None
    except sqlite3.Error:
        return False


def test_second_writer_gets_exit_2_naming_the_holder_and_a_stale_lock_is_recovered(tmp_path, caplog):
    lib = tmp_path / "lib"
    _write_library(lib, "rev1")
    idx = tmp_path / "index"
    cfg = rh.write_cfg(
        tmp_path / "cfg.yaml", ocr={"enabled": False}, isolation={"workers": 1, "timeout_s": 120}
    )
    # the first writer holds the lock while one document "hangs" in its worker
    holder = rh.popen_cli(*rh.index_args(cfg, lib, idx, dense=False), env={FAULT_ENV: "hang:gamma.md"})
    try:
        assert rh.wait_for(lambda: (idx / "lock").exists(), 120), holder.communicate()
        assert rh.wait_for(lambda: _has_schema(idx), 120), "the holder creates its manifest"
        lock = json.loads((idx / "lock").read_text())
        assert lock["pid"] == holder.pid
        for args in (
            rh.index_args(cfg, lib, idx, dense=False),
            ["remove", "alpha.pdf", "--index-dir", str(idx)],
        ):
            rc, _, out = rh.cli(*args)
            assert rc == 2, out
            msg = next((line for line in out.splitlines() if line.startswith("error: ")), out)
            assert f"pid {holder.pid}" in msg and f"since {lock['started']}" in msg, out
            assert "Traceback" not in out
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock
        holder.communicate()
    assert (idx / "lock").exists(), "a killed writer leaves its lock behind"
    time.sleep(0.3)

    with caplog.at_level(logging.WARNING, logger="manualrag.lock"):
        rc, s, out = rh.cli(*rh.index_args(cfg, lib, idx, dense=False))
    assert rc == 0, out
    assert any("taking over the stale lock" in m and str(holder.pid) in m for m in caplog.messages), (
        caplog.messages
    )
    assert not (idx / "lock").exists()
    fresh = tmp_path / "fresh"
    assert rh.cli(*rh.index_args(cfg, lib, fresh, dense=False))[0] == 0
    rh.assert_same_index(rh.index_snapshot(idx), rh.index_snapshot(fresh), "index after a stale lock")


def test_read_snapshot_sees_one_state_while_a_writer_commits(tmp_path):
    """The retriever's SQLite reads of one query come from one snapshot: a document's rows switching in
    between is not seen half-way."""
    lib = tmp_path / "lib"
    _write_library(lib, "rev1")
    idx = tmp_path / "index"
    cfg = rh.write_cfg(tmp_path / "cfg.yaml", ocr={"enabled": False})
    assert rh.cli(*rh.index_args(cfg, lib, idx, dense=False))[0] == 0
    reader = Manifest(idx / "index.sqlite", readonly=True)
    writer = Manifest(idx / "index.sqlite")
    try:
        with reader.read_snapshot():
            hits = lexical_search(reader, "torque", 100)
            ids = [i for t, i, _ in hits if t == "passage"]
            assert ids
            writer.remove_document("alpha.pdf")  # commits while the reader is between two reads
            seen = reader.passages(ids)
            assert len(seen) == len(ids), "rows of the snapshot stay visible to its later reads"
        assert len(reader.passages(ids)) < len(ids), "a new snapshot sees the change"
    finally:
        reader.close()
        writer.close()


def _versions_seen(retriever, channels) -> dict[str, set[str]]:
    res = retriever.search("torque settings pump coupling wiring", k=200, channels=channels)
    versions: dict[str, set[str]] = {}
    for hit in res.hits:
        tags = set(re.findall(r"\brev[12]\b", " ".join([hit.text, hit.heading, hit.caption])))
        versions.setdefault(hit.path, set()).update(tags)
    return versions


def _index_with_a_reader_at_every_write(monkeypatch, cfg_path, lib, idx, docs, channel_sets) -> list[str]:
    """Run the index over ``lib``, paused after every write it makes (each vector upsert or delete, each
    manifest transaction); at each pause a reader queries through each channel set and every document of
    ``docs`` must be there in exactly one version. Returns the problems seen."""
    from manualrag.config import load_config
    from manualrag.manifest import Manifest as M
    from manualrag.retriever.search import Retriever
    from manualrag.store import VectorStore

    retriever = Retriever.open(idx, load_config(str(cfg_path), overrides={"index_dir": str(idx)}))
    checks: list[str] = []
    problems: list[str] = []

    def check(after: str) -> None:
        for channels in channel_sets:
            seen = _versions_seen(retriever, channels)
            for doc in docs:
                if len(seen.get(doc, set())) != 1:
                    problems.append(
                        f"after {after}: {doc} seen as {sorted(seen.get(doc, set())) or 'missing'}"
                        f" ({channels or 'all channels'})"
                    )
        checks.append(after)

    def pause_after(cls, name):
        real = getattr(cls, name)

        def wrapper(self, *a, **kw):
            out = real(self, *a, **kw)
            if not getattr(self, "readonly", False):
                check(f"{cls.__name__}.{name}({a[0] if a and isinstance(a[0], str) else ''})")
            return out

        monkeypatch.setattr(cls, name, wrapper)

    for cls, names in (
        (VectorStore, ("upsert", "delete")),
        (M, ("begin_document", "replace_rows", "commit_document")),
    ):
        for name in names:
            pause_after(cls, name)
    try:
        rc, s, out = rh.cli(*rh.index_args(cfg_path, lib, idx, dense=True))
    finally:
        monkeypatch.undo()
        retriever.close()
    assert rc == 0, out
    assert len(checks) >= 4 * len(docs), checks
    return problems


def test_reader_sees_each_document_whole_at_every_write_of_an_index_run(tmp_path, tiny_clip_dir, monkeypatch):
    """Deterministic: a reader at every write of the run sees each document in exactly one version,
    through the vectors alone and through every channel."""
    lib, idx = tmp_path / "lib", tmp_path / "index"
    cfg_path = rh.write_cfg(tmp_path / "cfg.yaml", model=str(tiny_clip_dir), ocr={"enabled": False})
    _write_library(lib, "rev1", size=3)
    assert rh.cli(*rh.index_args(cfg_path, lib, idx, dense=True))[0] == 0
    _write_library(lib, "rev2", size=2)
    problems = _index_with_a_reader_at_every_write(monkeypatch, cfg_path, lib, idx, DOCS, (["dense"], None))
    assert not problems, problems[:10]


def _moved_pdf(tag: str, first_page: int) -> bytes:
    """Two pages of text about the query's words, starting at ``first_page`` (earlier pages blank): passage
    ids are positional, so two versions with different first pages share no vector id."""
    import pymupdf

    doc = pymupdf.open()
    for _ in range(first_page - 1):
        doc.new_page()
    for i in range(2):
        page = doc.new_page()
        page.insert_textbox(
            pymupdf.Rect(72, 72, 520, 700),
            f"Section {i} ({tag}). Torque settings for the pump coupling and the wiring of the motor "
            f"terminals ({tag}): tighten the coupling screws evenly, then check the wiring.",
            fontsize=11,
        )
    return doc.tobytes()


def test_a_document_rewritten_with_all_new_vector_ids_stays_findable_through_the_vectors(
    tmp_path, tiny_clip_dir, monkeypatch
):
    """The new version's vectors are written before its rows are swapped and the old version's vectors are
    deleted only after the commit: a query through the vectors alone finds the document at every write,
    even when the two versions share no vector id (nothing is overwritten in place)."""
    lib, idx = tmp_path / "lib", tmp_path / "index"
    lib.mkdir()
    cfg_path = rh.write_cfg(tmp_path / "cfg.yaml", model=str(tiny_clip_dir), ocr={"enabled": False})
    (lib / "moved.pdf").write_bytes(_moved_pdf("rev1", first_page=1))
    assert rh.cli(*rh.index_args(cfg_path, lib, idx, dense=True))[0] == 0
    with rh.sqlite_ro(idx) as db:
        old_ids = {r[0] for r in db.execute("SELECT id FROM windows")}
    (lib / "moved.pdf").write_bytes(_moved_pdf("rev2", first_page=4))
    problems = _index_with_a_reader_at_every_write(
        monkeypatch, cfg_path, lib, idx, ("moved.pdf",), (["dense"],)
    )
    assert not problems, problems[:10]
    with rh.sqlite_ro(idx) as db:
        new_ids = {r[0] for r in db.execute("SELECT id FROM windows")}
        assert db.execute("SELECT COUNT(*) FROM pending_deletes").fetchone()[0] == 0
    assert old_ids and new_ids and not old_ids & new_ids, "the versions share no id"
    # the superseded vectors are gone from the store
    from manualrag.config import load_config
    from manualrag.store import VectorStore

    store = VectorStore.open(idx, load_config(str(cfg_path), overrides={"index_dir": str(idx)}))
    try:
        assert store.count("text") == len([i for i in new_ids if ":w" in i])
    finally:
        store.close()


@pytest.mark.slow
def test_queries_during_an_index_run_see_each_document_before_or_after(tmp_path, tiny_clip_dir):
    from manualrag.config import load_config
    from manualrag.retriever.search import Retriever

    lib = tmp_path / "lib"
    idx = tmp_path / "index"
    cfg_path = rh.write_cfg(tmp_path / "cfg.yaml", model=str(tiny_clip_dir), ocr={"enabled": False})
    _write_library(lib, "rev1", size=6)
    assert rh.cli(*rh.index_args(cfg_path, lib, idx, dense=True))[0] == 0
    _write_library(lib, "rev2", size=5)  # every document changes: passages, windows, a figure goes

    cfg = load_config(str(cfg_path), overrides={"index_dir": str(idx)})
    retriever = Retriever.open(idx, cfg)
    observed: list[dict[str, str]] = []
    problems: list[str] = []
    stop = threading.Event()

    def read_loop() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            channels = ["dense"] if n % 2 else None  # vectors alone, then every channel fused
            try:
                seen = _versions_seen(retriever, channels)
            except Exception as exc:  # noqa: BLE001 - a reader error is a failure of the test
                problems.append(f"query failed: {type(exc).__name__}: {exc}")
                return
            for doc in DOCS:
                if len(seen.get(doc, set())) != 1:
                    problems.append(
                        f"{doc}: seen as {sorted(seen.get(doc, set())) or 'missing'} ({channels or 'all'})"
                    )
            observed.append({doc: "+".join(sorted(seen.get(doc, set()))) for doc in DOCS})
            stop.wait(0.03)  # leave the writer some CPU

    # each document's extraction takes 1.5 s more (test hook), so the run updates them one by one while
    # the reader queries
    writer = rh.popen_cli(
        *rh.index_args(cfg_path, lib, idx, dense=True), env={FAULT_ENV: ",".join(f"slow:{d}" for d in DOCS)}
    )
    thread = threading.Thread(target=read_loop)
    try:
        assert rh.wait_for(lambda: (idx / "lock").exists(), 120)
        thread.start()
        _, err = writer.communicate(timeout=600)
        assert writer.returncode == 0, err.decode()
        time.sleep(0.2)
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(timeout=120)
        rh.kill_hard(writer)
        retriever.close()
    states = Counter(tuple(sorted(s.values())) for s in observed)
    print(f"reader: {len(observed)} queries during the run; states {dict(states)}")
    assert not problems, problems[:10]
    assert len(observed) >= 10, f"only {len(observed)} queries during the run"
    before = {d: "rev1" for d in DOCS}
    mixed = [s for s in observed if len(set(s.values())) > 1]
    assert observed[0] == before, observed[0]
    assert mixed, f"no query saw the run in progress (states: {states})"

    # after the run: a fresh retriever sees only the new versions
    with Retriever.open(idx, cfg) as r:
        res = r.search("torque settings pump coupling wiring", k=200)
    assert {h.path for h in res.hits} == set(DOCS)
    assert all("rev1" not in h.text for h in res.hits)
