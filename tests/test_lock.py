"""IndexLock: one writer per index folder, stale locks taken over, refusals name the holder."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from manualrag.errors import IndexLockedError
from manualrag.lock import IndexLock

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import sys, time
from manualrag.errors import IndexLockedError
from manualrag.lock import IndexLock
try:
    with IndexLock(sys.argv[1]):
        print("ACQUIRED", flush=True)
        time.sleep(float(sys.argv[2]))
except IndexLockedError as exc:
    print("REFUSED", exc, flush=True)
    sys.exit(exc.exit_code)
"""


def run_child(index_dir: Path, hold_s: float = 0.0, wait: bool = True):
    cmd = [sys.executable, "-c", CHILD, str(index_dir), str(hold_s)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, cwd=REPO)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def write_lock(index_dir: Path, pid: int, started: datetime | None = None, host: str | None = None) -> None:
    index_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "pid": pid,
        "started": (started or datetime.now(UTC)).isoformat(timespec="seconds"),
        "host": host or socket.gethostname(),
    }
    (index_dir / "lock").write_text(json.dumps(info))


def test_lock_file_content_and_release(tmp_path):
    d = tmp_path / "index"
    with IndexLock(d) as lock:
        info = json.loads((d / "lock").read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        assert datetime.fromisoformat(info["started"]) <= datetime.now(UTC)
        assert lock.held
    assert not (d / "lock").exists()


def test_released_on_exception(tmp_path):
    with pytest.raises(RuntimeError), IndexLock(tmp_path):
        raise RuntimeError("boom")
    assert not (tmp_path / "lock").exists()
    with IndexLock(tmp_path):  # can be taken again
        pass


def test_second_writer_in_a_child_process_is_refused(tmp_path):
    with IndexLock(tmp_path):
        res = run_child(tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stdout.startswith("REFUSED")
    msg = res.stdout
    assert (
        f"pid {os.getpid()}" in msg
        and str(tmp_path) in msg
        and str(tmp_path / "lock") in msg
        and "since" in msg
    )
    assert run_child(tmp_path).stdout.startswith("ACQUIRED")  # free again once released


def test_lock_held_by_a_child_is_refused_here(tmp_path):
    child = run_child(tmp_path, hold_s=30, wait=False)
    try:
        assert child.stdout.readline().startswith("ACQUIRED")
        with pytest.raises(IndexLockedError, match=f"pid {child.pid} since"):
            IndexLock(tmp_path).acquire()
    finally:
        child.kill()
        child.wait()
    with IndexLock(tmp_path):  # the killed child left its lock behind: stale, taken over
        assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path, caplog):
    pid = dead_pid()
    write_lock(tmp_path, pid)
    with caplog.at_level(logging.WARNING, logger="manualrag.lock"), IndexLock(tmp_path):
        assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
    assert any("stale lock" in r.getMessage() and str(pid) in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "lock").exists()


def test_the_cli_tells_a_lock_take_over_as_its_other_warnings(tmp_path):
    """A trial user saw `WARNING manualrag.lock: taking over ...` among the CLI's `warning: ...` lines: the
    CLI now prints logged warnings the same way (one line, no logger name, no traceback); -q keeps them
    quiet as before."""
    lib, idx = tmp_path / "lib", tmp_path / "idx"
    lib.mkdir()
    (lib / "notes.md").write_text("# Notes\n\nReplace the fuse F2 with a 5 A slow-blow fuse.\n")

    def index(*extra: str) -> subprocess.CompletedProcess[str]:
        write_lock(idx, dead_pid())
        cmd = [sys.executable, "-m", "manualrag", "index", str(lib), "--index-dir", str(idx), "--no-dense"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        return subprocess.run(
            cmd + list(extra), capture_output=True, text=True, env=env, timeout=120, cwd=REPO
        )

    r = index()
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if "stale lock" in line]
    assert len(lines) == 1 and lines[0].startswith(f"warning: taking over the stale lock of index {idx} ("), (
        r.stderr
    )
    assert "WARNING" not in r.stderr and "Traceback" not in r.stderr
    r = index("-q")
    assert r.returncode == 0 and "stale lock" not in r.stderr, r.stderr


def test_same_process_cannot_lock_twice_but_an_earlier_life_is_stale(tmp_path):
    with IndexLock(tmp_path), pytest.raises(IndexLockedError):
        IndexLock(tmp_path).acquire()
    write_lock(tmp_path, os.getpid())  # e.g. a container restarted with the same pid
    with IndexLock(tmp_path):
        pass


def test_reused_pid_is_stale_but_a_live_holder_is_not(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        write_lock(tmp_path, sleeper.pid, started=datetime.now(UTC) - timedelta(hours=2))
        with IndexLock(tmp_path):  # the pid's process began long after the lock: not the writer
            pass
        write_lock(tmp_path, sleeper.pid)
        with pytest.raises(IndexLockedError, match=str(sleeper.pid)):
            IndexLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_lock_from_another_host_is_never_taken_over(tmp_path):
    write_lock(tmp_path, dead_pid(), host="some-other-host")
    with pytest.raises(IndexLockedError, match="on some-other-host"):
        IndexLock(tmp_path).acquire()


def test_unreadable_lock_file_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr("manualrag.lock._PARTIAL_WAIT_S", 0.2)
    (tmp_path / "lock").write_text("")  # the writer died between creating and writing it
    t0 = time.monotonic()
    with IndexLock(tmp_path):
        pass
    assert time.monotonic() - t0 < 5


def test_racing_processes_take_a_stale_lock_once(tmp_path):
    write_lock(tmp_path, dead_pid())
    children = [run_child(tmp_path, hold_s=3, wait=False) for _ in range(4)]
    outs = [c.communicate(timeout=60)[0] for c in children]
    assert sum(o.startswith("ACQUIRED") for o in outs) == 1, outs
    assert sum(o.startswith("REFUSED") for o in outs) == 3, outs
