"""The disk holding the twin: how much room is left on it (a base: the store keeps a floor of
free space with it, ``status`` shows it without unlocking anything)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

DB_FILES = ("twin.db", "twin.db-wal")  # the database and its write-ahead log


def disk_free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer can still use on the filesystem holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def disk_status(home: Path, min_free_mib: int) -> dict[str, int]:
    """The ``status`` view of the twin's disk: free and total bytes, what ``twin.db`` and
    its WAL take and how much of the database is free pages (room it reuses before it grows:
    the floor counts them), and the room floor; empty when the disk cannot be asked."""
    try:
        st = os.statvfs(home)
        db = sum(p.stat().st_size for p in (home / name for name in DB_FILES) if p.exists())
    except OSError:
        return {}
    out = {"free_bytes": st.f_bavail * st.f_frsize, "total_bytes": st.f_blocks * st.f_frsize,
           "twin_db_bytes": db, "min_free_bytes": min_free_mib * 2**20}
    free_pages = db_free_bytes(home / DB_FILES[0])
    if free_pages is not None:
        out["twin_db_free_bytes"] = free_pages
    return out


def db_free_bytes(path: Path) -> int | None:
    """Bytes of the free pages inside an SQLite file, read through a read-only connection (it
    sees the WAL; nothing in the file is decrypted or changed); None if it cannot be read."""
    if not path.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro",
                                                uri=True, timeout=0.5)) as conn:
            return freelist_bytes(conn)
    except sqlite3.Error:
        return None


def freelist_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of the free pages in ``conn``'s database: room it reuses before the file grows."""
    pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int(pages) * int(size)
