"""The disk holding the twin: how much room is left on it (a base: the store keeps a floor of
free space with it, ``status`` shows it without unlocking anything)."""

from __future__ import annotations

import os
from pathlib import Path

DB_FILES = ("twin.db", "twin.db-wal")  # the database and its write-ahead log


def disk_free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer can still use on the filesystem holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def disk_status(home: Path, min_free_mib: int) -> dict[str, int]:
    """The ``status`` view of the twin's disk: free and total bytes, what ``twin.db`` and
    its WAL take, and the room floor; empty when the disk cannot be asked."""
    try:
        st = os.statvfs(home)
        db = sum(p.stat().st_size for p in (home / name for name in DB_FILES) if p.exists())
    except OSError:
        return {}
    return {"free_bytes": st.f_bavail * st.f_frsize, "total_bytes": st.f_blocks * st.f_frsize,
            "twin_db_bytes": db, "min_free_bytes": min_free_mib * 2**20}
