"""The twin's SQLite file: where it lives, how it is opened, and SQLite errors in edgetwin terms.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from edgetwin.errors import DataCorrupt, EdgetwinError, HomeError, StoreFull

DB_FILE = "twin.db"


def make_home(home: Path) -> None:
    try:
        existed = home.exists()
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not existed or not any(home.iterdir()):
            home.chmod(0o700)
        probe = home / f".probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise HomeError(
            f"cannot use {home} as a twin home: {exc.strerror}",
            hint="choose a directory you can write (--home or EDGETWIN_HOME)",
        ) from exc


WAL_SIZE_LIMIT = 64 * 2**20


def connect(path: Path, *, create: bool) -> sqlite3.Connection:
    uri = path.absolute().as_uri() + ("?mode=rwc" if create else "?mode=rw")
    try:
        conn = sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False, timeout=10.0
        )
    except sqlite3.Error as exc:
        raise translate_error(exc, path, "opening the database") from exc
    try:
        if create:
            path.chmod(0o600)
        conn.execute("PRAGMA journal_mode = WAL").fetchone()
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA cell_size_check = ON")
        conn.execute("PRAGMA trusted_schema = OFF")
        conn.execute("PRAGMA foreign_keys = OFF")
        # Deleted rows are ciphertext under destroyed keys (crypto-shredding), so zero-filling
        # the pages they free (Debian's SQLite does it by default) protects nothing and costs a
        # write of everything deleted, through the WAL: a retention pass over a day at the
        # reference load would write ~16 GiB, and a delete meant to make room on a full disk
        # would need as much room first. FAST still clears freed cells on pages written anyway.
        conn.execute("PRAGMA secure_delete = FAST")
        # the WAL file keeps its largest size for good (a forget of a big day leaves GiBs);
        # truncated back to this at the checkpoint after
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
    except sqlite3.Error as exc:
        conn.close()
        raise translate_error(exc, path, "opening the database") from exc
    return conn


# primary SQLite result codes we translate
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN = 10, 11, 13, 14
_SQLITE_FORMAT, _SQLITE_NOTADB = 24, 26


def translate_error(exc: sqlite3.Error, path: Path, what: str) -> EdgetwinError:
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary == _SQLITE_FULL:
        return StoreFull(
            f"{path}: the disk is full while {what}",
            hint="free some space; committed data is intact and pending data is kept for a retry",
        )
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB, _SQLITE_FORMAT):
        return DataCorrupt(
            f"{path} is damaged ({exc}) while {what}",
            hint="run 'edgetwin verify'; restore from a backup or an export bundle",
        )
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return HomeError(
            f"{path} stayed locked by another process while {what}",
            hint="another edgetwin command holds the twin; retry in a moment",
        )
    if primary in (_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_CANTOPEN):
        return HomeError(
            f"cannot write {path} while {what} ({exc})",
            hint="check the permissions and free space of the twin home",
        )
    if primary == _SQLITE_IOERR:
        return HomeError(
            f"I/O error on {path} while {what} ({exc})",
            hint="check the disk; committed data is intact",
        )
    return DataCorrupt(
        f"{path}: unexpected database error while {what} ({exc})",
        hint="run 'edgetwin verify'",
    )
