"""One writer per index: ``index_dir/lock``, created atomically, holding JSON {pid, started, host}.

A lock held by a live process on this host is refused with :class:`IndexLockedError`; a lock left by a
dead process on this host (or by a process whose pid has since been reused) is taken over with a warning.
A lock from another host is never taken over: its owner cannot be checked from here.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from manualrag.errors import IndexLockedError, ManualragError

log = logging.getLogger(__name__)

LOCK_NAME = "lock"
_PARTIAL_WAIT_S = 1.0  # a lock file is written right after it is created: wait this long for its content
_REUSE_MARGIN_S = 60.0  # a pid whose process began this long after the lock was written is a reused pid
_HELD: set[str] = set()  # lock files held by this process (a lock naming our pid but not here is stale)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError as exc:
        return exc.errno != errno.ESRCH
    return True


def _process_start(pid: int) -> float | None:
    """Start time (epoch seconds) of ``pid`` from /proc, or None where that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = int(fields[19])  # field 22 of stat: starttime, in clock ticks after boot
        btime = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _parse_time(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def _holder_alive(info: dict[str, Any]) -> bool:
    """Whether the lock's owner (on this host) still runs. A reused pid (started after the lock) is dead."""
    try:
        pid = int(info.get("pid", -1))
    except (TypeError, ValueError):
        return False
    if not _pid_alive(pid):
        return False
    if pid == os.getpid():
        return True  # the caller checks _HELD for its own pid
    started, proc_start = _parse_time(info.get("started")), _process_start(pid)
    if started is not None and proc_start is not None and proc_start > started + _REUSE_MARGIN_S:
        return False  # this pid belongs to a process that began well after the lock was written
    return True


@contextlib.contextmanager
def _dir_guard(index_dir: Path) -> Iterator[None]:
    """Serialise stale-lock take-overs between processes (flock on the folder; released if we die)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no guard (take-over races are then possible but harmless-ish)
        yield
        return
    fd = os.open(index_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def live_holder(index_dir: Path | str) -> dict[str, Any] | None:
    """The content of ``index_dir``'s lock while a live process holds it (a lock of another host counts as
    live: its owner cannot be checked from here); None when there is no lock or its holder is gone."""
    try:
        info = json.loads((Path(index_dir) / LOCK_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    if info.get("host") == socket.gethostname() and not _holder_alive(info):
        return None
    return info


def make_index_folder(path: Path) -> None:
    """Create the index folder (and its parents) if needed; a file in its place or a folder that cannot be
    created is a one-line error."""
    if path.exists() and not path.is_dir():
        raise ManualragError(f"the index folder {path} is a file: give a folder with --index-dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ManualragError(f"cannot create the index folder {path}: {exc.strerror or exc}") from None


class IndexLock:
    """``with IndexLock(index_dir): ...`` — one writer at a time; released on exit, also on an exception."""

    def __init__(self, index_dir: Path | str):
        self.index_dir = Path(index_dir)
        self.path = self.index_dir / LOCK_NAME
        self.info: dict[str, Any] | None = None

    # ---------------------------------------------------------------------------------------- acquire
    def acquire(self) -> IndexLock:
        make_index_folder(self.index_dir)
        host = socket.gethostname()
        while True:
            info = {
                "pid": os.getpid(),
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
                "host": host,
            }
            if self._create(info):
                self.info = info
                _HELD.add(self._key())
                return self
            held = self._read()
            if held is None:  # vanished meanwhile (released): try again
                continue
            if held.get("host") == host and self._stale(held):
                self._take_over(held)
                continue
            raise IndexLockedError(
                f"index {self.index_dir} is being written by pid {held.get('pid', '?')}"
                + (f" on {held['host']}" if held.get("host") not in (None, host) else "")
                + f" since {held.get('started', '?')} (lock file {self.path}; delete it only if that process"
                " is gone)"
            )

    def _stale(self, held: dict[str, Any]) -> bool:
        if held.get("pid") == os.getpid():  # ours only if this process holds it (else an earlier life's)
            return self._key() not in _HELD
        return not _holder_alive(held)

    def _key(self) -> str:
        return str(self.path.resolve())

    def _create(self, info: dict[str, Any]) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:  # a read-only or immutable folder, a full disk
            raise ManualragError(
                f"cannot write in the index folder {self.index_dir}: {exc.strerror or exc}"
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(info))
            f.flush()
            os.fsync(f.fileno())
        return True

    def _read(self) -> dict[str, Any] | None:
        """The lock's content; None when the file is gone. An unreadable file after a short wait reads as
        an ownerless lock on this host (its writer died between creating and writing it)."""
        deadline = time.monotonic() + _PARTIAL_WAIT_S
        while True:
            try:
                text = self.path.read_text(encoding="utf-8")
            except FileNotFoundError:
                return None
            try:
                data = json.loads(text)
                if isinstance(data, dict) and "pid" in data:
                    return data
            except ValueError:
                pass
            if time.monotonic() > deadline:
                return {"pid": -1, "host": socket.gethostname(), "started": "?", "_raw": text}
            time.sleep(0.05)

    def _take_over(self, stale: dict[str, Any]) -> None:
        with _dir_guard(self.index_dir):
            current = self._read()
            if current != stale:  # someone else took it over or released it: decide again
                return
            log.warning(
                "taking over the stale lock of index %s (pid %s on %s since %s is gone)",
                self.index_dir,
                stale.get("pid"),
                stale.get("host"),
                stale.get("started"),
            )
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    # ---------------------------------------------------------------------------------------- release
    def release(self) -> None:
        if self.info is None:
            return
        try:
            current = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            current = None
        if current == self.info:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        else:
            log.warning("the lock file %s no longer names this process; left in place", self.path)
        _HELD.discard(self._key())
        self.info = None

    @property
    def held(self) -> bool:
        return self.info is not None

    def __enter__(self) -> IndexLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
