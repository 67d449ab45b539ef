"""Crash safety: `manualrag index` killed with SIGKILL at random points, then run again, ends with exactly the
index an uninterrupted run builds (same record ids and contents, same manifest, no orphan crops, no
duplicates).

Each trial starts either from an empty index folder ("fresh") or from a finished index of library A
("update": one manual changed with a figure gone, one shrunk from 4 to 2 pages, one note deleted, one file
added, one unchanged, one corrupt file in both), runs `manualrag index` on library B as a real process, kills
it and re-runs it (in this process, through the same CLI). The kill point is random: either a random time
inside the run (stratified over the measured length of an uninterrupted run, from the moment the run takes
the index lock), or right after a random number of documents were committed plus a random delay, or in the
middle of a document's store stage (rows written, manifest row not yet). Most trials are --no-dense; every
fifth uses the tiny CLIP, so vectors are being upserted and deleted when the kill lands.

MANUALRAG_KILL_TRIALS (default 20) sets the number of kills; MANUALRAG_KILL_SEED the random seed.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from tests import rel_helpers as rh

TRIALS = int(os.environ.get("MANUALRAG_KILL_TRIALS", "20"))
SEED = int(os.environ.get("MANUALRAG_KILL_SEED", str(random.SystemRandom().randrange(1 << 30))))

pytestmark = pytest.mark.slow


def _libraries(root: Path) -> tuple[Path, Path]:
    a, b = root / "libA", root / "libB"
    a.mkdir()
    b.mkdir()
    (a / "manual.pdf").write_bytes(rh.versioned_pdf("rev1", pages=3, photo=True))
    (b / "manual.pdf").write_bytes(rh.versioned_pdf("rev2", pages=3, photo=False))
    for lib in (a, b):
        (lib / "parts.pdf").write_bytes(rh.versioned_pdf("parts", pages=2, figure=False))
        (lib / "bad.pdf").write_bytes(rh.corrupt_pdf())
        (lib / "sub").mkdir()
        (lib / "sub" / "card.md").write_bytes(rh.versioned_md("card", sections=3))
    (a / "shrink.pdf").write_bytes(rh.versioned_pdf("rev1", pages=4))
    (b / "shrink.pdf").write_bytes(rh.versioned_pdf("rev2", pages=2))
    (a / "notes.md").write_bytes(rh.versioned_md("rev1"))
    (b / "new.txt").write_bytes(
        b"Added later: torque the drain plug to 25 Nm.\n\nSecond paragraph about torque.\n"
    )
    return a, b


def _committed(db_path: Path) -> set[tuple[str, str]]:
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=0.05)
        try:
            return {(r[0], r[1]) for r in db.execute("SELECT path, digest FROM documents")}
        finally:
            db.close()
    except sqlite3.Error:
        return set()


def _mid_store(db_path: Path) -> bool:
    """Inside a document's store stage: it has rows but no manifest row (an updated document from the moment
    its manifest row goes out, while its new vectors are written, until its manifest row is back), or its
    superseded vectors are still to be deleted."""
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=0.05)
        try:
            if db.execute(
                "SELECT 1 FROM passages WHERE doc_path NOT IN (SELECT path FROM documents) LIMIT 1"
            ).fetchone():
                return True
            # committed, its superseded vectors not yet deleted: the store stage's last step
            return db.execute("SELECT 1 FROM pending_deletes LIMIT 1").fetchone() is not None
        finally:
            db.close()
    except sqlite3.Error:
        return False


def _wait_for_kill_point(
    proc, idx: Path, trigger: str, targets: set, rng: random.Random, delay: float
) -> float:
    """Wait until the run holds the lock, then until the trial's kill point; returns when the lock appeared."""
    db = idx / "index.sqlite"

    def ended() -> bool:
        return proc.poll() is not None

    assert rh.wait_for(lambda: (idx / "lock").exists() or ended(), 120)
    t_lock = time.monotonic()
    if trigger == "time":  # a random moment of the run (stratified over an uninterrupted run's length)
        time.sleep(delay)
    elif trigger == "commits":  # a random number of documents committed, plus a random delay
        k = rng.randrange(0, max(1, len(targets)))
        rh.wait_for(lambda: len(_committed(db) & targets) >= k or ended(), 120, 0.002)
        time.sleep(rng.random() * 0.3)
    else:  # inside a document's store stage
        rh.wait_for(lambda: _mid_store(db) or ended(), 120, 0.002)
    return t_lock


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_clip_dir):
    root = tmp_path_factory.mktemp("kill")
    lib_a, lib_b = _libraries(root)
    out = {"lib_b": lib_b, "root": root}
    for dense in (False, True):
        tag = "dense" if dense else "lexical"
        cfg = rh.write_cfg(root / f"cfg-{tag}.yaml", model=str(tiny_clip_dir), ocr={"enabled": False})
        # the reference: an uninterrupted run on library B; the lexical one as a real process, timed from
        # taking the lock, for the "time" kill points (the dense trials use progress-based kill points)
        ref = root / f"ref-{tag}"
        window = 0.0
        if dense:
            assert rh.cli(*rh.index_args(cfg, lib_b, ref, dense))[0] == 1
        else:
            proc = rh.popen_cli(*rh.index_args(cfg, lib_b, ref, dense))
            assert rh.wait_for(lambda ref=ref: (ref / "lock").exists(), 120), proc.communicate()
            t0 = time.monotonic()
            _, err = proc.communicate(timeout=300)
            window = time.monotonic() - t0
            assert proc.returncode == 1, err.decode()  # bad.pdf fails, alone
        # library A's finished index: the starting point of the "update" trials
        template = root / f"A-{tag}"
        assert rh.cli(*rh.index_args(cfg, lib_a, template, dense))[0] == 1
        out[dense] = {
            "cfg": cfg,
            "snapshot": rh.index_snapshot(ref),
            "window": window,
            "template": template,
            "targets": _committed(ref / "index.sqlite"),
        }
    return out


def test_sigkill_at_random_points_then_rerun_equals_uninterrupted_run(setup, capsys):
    rng = random.Random(SEED)
    lib_b = setup["lib_b"]
    kills: list[dict] = []
    attempts = 0
    while len(kills) < TRIALS and attempts < 3 * TRIALS:
        i = attempts
        attempts += 1
        dense = i % 5 == 4
        start = "update" if i % 2 else "fresh"
        ref = setup[dense]
        if dense:
            trigger = ["mid-store", "commits"][(i // 5) % 2]
            if trigger == "mid-store":
                # an updated document's store stage is visible from outside (its manifest row is out, its
                # old rows are still in) while its new vectors are written; a new document's only for the
                # instant between its rows and its manifest row
                start = "update"
        else:
            trigger = ["time", "commits", "mid-store", "commits"][(i // 2) % 4]
        idx = setup["root"] / f"trial{i}"
        if start == "update":
            shutil.copytree(ref["template"], idx)
        db = idx / "index.sqlite"
        before = _committed(db)
        targets = ref["targets"] - before

        # library B stands for library A as it is later, in another folder: the run replaces the library
        args = [*rh.index_args(ref["cfg"], lib_b, idx, dense), "--replace-library"]
        proc = rh.popen_cli(*args)
        stratum = len([k for k in kills if k["trigger"] == "time"]) % 4
        t_lock = _wait_for_kill_point(
            proc, idx, trigger, targets, rng, (stratum + rng.random()) / 4 * ref["window"]
        )
        if proc.poll() is not None:  # the run finished before the kill point: not a kill, try again
            proc.communicate()
            shutil.rmtree(idx, ignore_errors=True)
            continue
        rh.kill_hard(proc)
        elapsed = time.monotonic() - t_lock
        done = len(_committed(db) & targets)
        where = (
            "mid-store"
            if _mid_store(db)
            else "before any commit"
            if done == 0
            else "after the last commit"
            if done == len(targets)
            else "between documents"
        )
        kills.append(
            {
                "trial": i,
                "dense": dense,
                "start": start,
                "trigger": trigger,
                "at_s": round(elapsed, 3),
                "where": where,
                "committed": f"{done}/{len(targets)}",
            }
        )
        time.sleep(0.3)  # orphaned extraction workers notice their parent is gone (0.2 s watch)

        rc, summary, out = rh.cli(*args)
        assert rc == 1, out
        assert [f["path"] for f in summary["failed"]] == ["bad.pdf"], summary["failed"]
        rh.assert_same_index(rh.index_snapshot(idx), ref["snapshot"], f"trial {i} ({kills[-1]})")
        shutil.rmtree(idx, ignore_errors=True)

    with capsys.disabled():
        print(
            f"\nkill trials (seed {SEED}): {len(kills)} kills in {attempts} attempts; "
            f"{sum(k['dense'] for k in kills)} with vectors (tiny CLIP)"
        )
        for key in ("where", "trigger", "start"):
            print(f"  by {key}: {dict(Counter(k[key] for k in kills))}")
    assert len(kills) >= TRIALS, f"only {len(kills)} kills landed in {attempts} attempts"
    wheres = Counter(k["where"] for k in kills)
    assert wheres["mid-store"] + wheres["between documents"] > 0, wheres
    assert any(k["dense"] and k["where"] in ("mid-store", "between documents") for k in kills), kills
