"""One daemon per twin home: an advisory ``flock`` on ``daemon.lock``.

The kernel drops a ``flock`` when its process dies, even on SIGKILL, so a
lock file left by a crash is simply taken over: "stale" needs no guessing
from pids.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from edgetwin.errors import DaemonAlreadyRunning, HomeError

LOCK_FILE = "daemon.lock"


class DaemonLock:
    """Held for the daemon's lifetime; ``holder_pid`` reads who holds it."""

    def __init__(self, home: Path) -> None:
        self.path = home / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise HomeError(
                f"cannot create {self.path}: {exc.strerror}",
                hint="check that the twin home is writable by this user",
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = holder_pid(self.path.parent)
            raise DaemonAlreadyRunning(
                f"a daemon (pid {pid or '?'}) already runs on {self.path.parent}",
                hint="stop it first, or use another --home",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing drops the flock
        self._fd = None


def holder_pid(home: Path) -> int | None:
    """The pid written by the daemon holding the lock, if any daemon holds it."""
    path = home / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = path.read_text().strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)  # nobody holds it: no daemon
        return None
    finally:
        os.close(fd)
