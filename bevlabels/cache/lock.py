"""The store's run lock: one writing run per store at a time, across processes and machines.

The lock is the file ``<store>/.bevlabels.lock``, created exclusively (written to a temporary file,
then hard-linked into place, so it never exists half-written; ``O_CREAT | O_EXCL`` where the
filesystem has no hard links). It holds JSON: ``host``, ``pid``, ``proc_start`` (the process's start
time, to tell a reused pid apart), ``started`` and a random ``token``. The driver of a run holds it;
the run's worker tasks do not take it.

A lock whose holder is on this host and no longer alive (or whose pid now belongs to another
process) is stale: it is taken over with a warning. A lock held from another host is never taken
over automatically: the error says which host and pid hold it and which file to delete if that run
is known to be dead.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from pathlib import Path

from bevlabels.cache._store import StoreLockedError, now_iso

log = logging.getLogger(__name__)

LOCK_NAME = ".bevlabels.lock"


def _proc_start(pid: int) -> float | None:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # no psutil, or no such process
        return None


def _pid_alive(pid: int) -> bool:
    try:
        import psutil

        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    except ImportError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class StoreLock:
    """The exclusive lock of the store at ``store_path``; a context manager (released on exit, errors too)."""

    def __init__(self, store_path: str | Path):
        self.store_path = Path(store_path)
        self.path = self.store_path / LOCK_NAME
        self._token: str | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._token is not None

    def holder(self) -> dict | None:
        """What the lock file says (host, pid, started, ...), ``None`` when unlocked or unreadable."""
        return _read(self.path)

    def acquire(self) -> StoreLock:
        """Take the lock and return ``self``; raises :class:`StoreLockedError` naming the holder."""
        if self.held:
            return self
        self.store_path.mkdir(parents=True, exist_ok=True)
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "proc_start": _proc_start(os.getpid()),
            "started": now_iso(),
            "token": uuid.uuid4().hex,
        }
        for _ in range(5):
            if self._create(json.dumps(me)):
                self._token = me["token"]
                return self
            holder = _read(self.path)
            if holder is None:
                if not self.path.exists():
                    continue  # released meanwhile
                raise StoreLockedError(
                    f"{self.store_path} is locked by {self.path}, which cannot be read; "
                    f"if no run is writing this store, delete {self.path}",
                )
            if not self._is_stale(holder):
                raise StoreLockedError(
                    f"{self.store_path} is in use by another run: host {holder.get('host')}, "
                    f"pid {holder.get('pid')}, started {holder.get('started')}. Wait for it to finish; "
                    f"if that run is dead, delete {self.path}",
                    holder,
                )
            self._take_over(holder)
        raise StoreLockedError(f"could not take the lock {self.path}: other runs keep taking it")

    def release(self) -> None:
        """Give the lock back (only if the lock file is still ours)."""
        if not self.held:
            return
        holder = _read(self.path)
        if holder is not None and holder.get("token") == self._token:
            self.path.unlink(missing_ok=True)
        else:
            log.warning("lock %s was taken over by another run (%s); left in place", self.path, holder)
        self._token = None

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- internals -------------------------------------------------------------------------------
    def _create(self, text: str) -> bool:
        tmp = self.path.with_name(f"{LOCK_NAME}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(text)
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links on this filesystem
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _is_stale(holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return False
        pid = int(holder.get("pid", -1))
        if pid <= 0 or not _pid_alive(pid):
            return True
        recorded, actual = holder.get("proc_start"), _proc_start(pid)
        return recorded is not None and actual is not None and abs(actual - recorded) > 1.0

    def _take_over(self, holder: dict) -> None:
        moved = self.path.with_name(f"{LOCK_NAME}.stale-{uuid.uuid4().hex}")
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return  # someone else removed it; try again
        try:
            if _read(moved) != holder:  # a new lock appeared between reading and moving: put it back
                try:
                    os.link(moved, self.path)
                except FileExistsError:
                    pass
                raise StoreLockedError(f"{self.store_path} was just locked by another run", _read(moved))
        finally:
            moved.unlink(missing_ok=True)
        msg = (
            f"took over the stale lock of {self.store_path}: pid {holder.get('pid')} on "
            f"{holder.get('host')} (started {holder.get('started')}) is no longer running"
        )
        log.warning(msg)
