"""Where the collector keeps enrolled devices, releases and refusals: SQLite or PostgreSQL.

SQLite (a file path) suits one collector on one machine. A ``postgresql://`` URL lets
several stateless collector processes share one database: every write is a single
statement whose outcome the database decides (``ON CONFLICT DO NOTHING`` on the
release id), so two collectors racing on the same release store it once and both
answer a correct receipt.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from edgetwin.errors import UplinkError, UsageError

# One row of ``releases`` in column order: id, device, metric, unit, period, period_start,
# value, epsilon, scale, lower, upper, created, received_at, transport, payload.
ReleaseRow = tuple[str, str, str, str, str, float, float, float, float, float, float, float,
                   float, str, str]

_AGGREGATE_SQL = (
    "SELECT metric, unit, period, period_start, COUNT(*), COUNT(DISTINCT device), "
    "AVG(value), SUM(2 * scale * scale), AVG(epsilon), MIN(lower), MAX(upper) "
    "FROM releases GROUP BY metric, unit, period, period_start "
    "ORDER BY metric, period, period_start"
)


class Store(Protocol):
    """What the collector needs of a database; every method is blocking and thread-safe."""

    where: str

    def enroll(self, key: str, key_id: str, label: str | None, t: float) -> None: ...
    def is_enrolled(self, key: str) -> bool: ...
    def insert_release(self, row: ReleaseRow) -> str | None:
        """Store ``row`` unless its id exists; None if stored, else the id's owner device."""
        ...
    def event(self, t: float, transport: str, outcome: str, detail: str) -> None: ...
    def aggregate_rows(self) -> list[Sequence[Any]]: ...
    def counts(self) -> tuple[int, int, int, dict[str, int]]:
        """(releases, distinct devices, enrolled devices, events per outcome)."""
        ...
    def release_ids(self) -> list[str]: ...
    def close(self) -> None: ...


def open_store(db: Path | str, *, durable: bool = True) -> Store:
    """SQLite for a path, PostgreSQL for a ``postgresql://`` (or ``postgres://``) URL."""
    text = str(db)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresStore(text)
    return SqliteStore(Path(db), durable=durable)


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    key TEXT PRIMARY KEY, key_id TEXT NOT NULL, label TEXT, enrolled_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS releases (
    id TEXT PRIMARY KEY, device TEXT NOT NULL, metric TEXT NOT NULL, unit TEXT NOT NULL,
    period TEXT NOT NULL, period_start REAL NOT NULL, value REAL NOT NULL,
    epsilon REAL NOT NULL, scale REAL NOT NULL, lower REAL NOT NULL, upper REAL NOT NULL,
    created REAL NOT NULL, received_at REAL NOT NULL, transport TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS releases_by_metric ON releases (metric, period, period_start);
CREATE TABLE IF NOT EXISTS events (
    t REAL NOT NULL, transport TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT
);
"""


class SqliteStore:
    """One SQLite file in WAL mode; one connection behind a lock (SQLite has one writer anyway)."""

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        self.where = str(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            # durable: fsync every stored release before its receipt (a device deletes nothing,
            # but it stops retrying once it holds a receipt). Off for simulations only.
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.executescript(_SQLITE_SCHEMA)
        except sqlite3.Error as exc:
            raise UsageError(f"collector database {path}: {exc}",
                             hint="pass a writable file path or a postgresql:// URL") from exc

    def enroll(self, key: str, key_id: str, label: str | None, t: float) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO devices (key, key_id, label, enrolled_at) VALUES (?,?,?,?)",
                (key, key_id, label, t))

    def is_enrolled(self, key: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM devices WHERE key = ?", (key,)).fetchone() \
                is not None

    def insert_release(self, row: ReleaseRow) -> str | None:
        with self._lock:
            # INSERT OR IGNORE decides in one statement, so two processes on one file cannot
            # both store a release (a SELECT-then-INSERT would race).
            cur = self._db.execute(
                "INSERT OR IGNORE INTO releases VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
            if cur.rowcount == 1:
                return None
            owner = self._db.execute("SELECT device FROM releases WHERE id = ?",
                                     (row[0],)).fetchone()
        return str(owner[0])

    def event(self, t: float, transport: str, outcome: str, detail: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO events VALUES (?,?,?,?)", (t, transport, outcome, detail))

    def aggregate_rows(self) -> list[Sequence[Any]]:
        with self._lock:
            return list(self._db.execute(_AGGREGATE_SQL).fetchall())

    def counts(self) -> tuple[int, int, int, dict[str, int]]:
        with self._lock:
            releases, devices = self._db.execute(
                "SELECT COUNT(*), COUNT(DISTINCT device) FROM releases").fetchone()
            events = dict(self._db.execute(
                "SELECT outcome, COUNT(*) FROM events GROUP BY outcome").fetchall())
            enrolled = self._db.execute("SELECT COUNT(*) FROM devices").fetchone()[0]
        return int(releases), int(devices), int(enrolled), events

    def release_ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM releases ORDER BY id")]

    def close(self) -> None:
        with self._lock:
            self._db.close()


_PG_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS devices (
        key TEXT PRIMARY KEY, key_id TEXT NOT NULL, label TEXT,
        enrolled_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS releases (
        id TEXT PRIMARY KEY, device TEXT NOT NULL, metric TEXT NOT NULL, unit TEXT NOT NULL,
        period TEXT NOT NULL, period_start DOUBLE PRECISION NOT NULL,
        value DOUBLE PRECISION NOT NULL, epsilon DOUBLE PRECISION NOT NULL,
        scale DOUBLE PRECISION NOT NULL, lower DOUBLE PRECISION NOT NULL,
        upper DOUBLE PRECISION NOT NULL, created DOUBLE PRECISION NOT NULL,
        received_at DOUBLE PRECISION NOT NULL, transport TEXT NOT NULL, payload TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS releases_by_metric ON releases (metric, period, period_start)",
    """CREATE TABLE IF NOT EXISTS events (
        t DOUBLE PRECISION NOT NULL, transport TEXT NOT NULL, outcome TEXT NOT NULL,
        detail TEXT)""",
]
# Any constant: collectors starting together create the schema one at a time
# (concurrent CREATE TABLE IF NOT EXISTS can fail on PostgreSQL's catalog).
_SCHEMA_LOCK = 0x6564677477696E


class PostgresStore:
    """A PostgreSQL database shared by any number of collectors; one connection per thread.

    Each statement autocommits (durable at commit with PostgreSQL's default
    ``synchronous_commit``) before the collector answers a receipt.
    """

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise UsageError("a postgresql:// collector database needs psycopg",
                             hint="pip install 'edgetwin[collector]'") from exc
        self._psycopg = psycopg
        self._url = url
        self.where = _redact(url)
        self._local = threading.local()
        self._all: list[Any] = []
        self._all_lock = threading.Lock()
        conn = self._conn()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for stmt in _PG_SCHEMA:
                conn.execute(stmt)

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed:
            return conn
        try:
            conn = self._psycopg.connect(self._url, autocommit=True, connect_timeout=10)
        except self._psycopg.Error as exc:
            why = " ".join(str(exc).split())  # libpq's message spans lines
            raise UplinkError(f"collector database {self.where} unreachable: {why}",
                              hint="check the postgresql:// URL and that the server runs") from exc
        self._local.conn = conn
        with self._all_lock:
            self._all.append(conn)
        return conn

    def _run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        conn = self._conn()
        try:
            return conn.execute(sql, params)
        except self._psycopg.OperationalError:
            # The server restarted or dropped us: one fresh connection, one retry. Every
            # statement here is idempotent or decided by a constraint, so a retry is safe.
            conn.close()
            return self._conn().execute(sql, params)

    def enroll(self, key: str, key_id: str, label: str | None, t: float) -> None:
        self._run("INSERT INTO devices (key, key_id, label, enrolled_at) VALUES (%s,%s,%s,%s) "
                  "ON CONFLICT (key) DO NOTHING", (key, key_id, label, t))

    def is_enrolled(self, key: str) -> bool:
        return self._run("SELECT 1 FROM devices WHERE key = %s", (key,)).fetchone() is not None

    def insert_release(self, row: ReleaseRow) -> str | None:
        stored = self._run(
            "INSERT INTO releases VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
            "ON CONFLICT (id) DO NOTHING RETURNING id", row).fetchone()
        if stored is not None:
            return None
        owner = self._run("SELECT device FROM releases WHERE id = %s", (row[0],)).fetchone()
        return str(owner[0])

    def event(self, t: float, transport: str, outcome: str, detail: str) -> None:
        self._run("INSERT INTO events VALUES (%s,%s,%s,%s)", (t, transport, outcome, detail))

    def aggregate_rows(self) -> list[Sequence[Any]]:
        return list(self._run(_AGGREGATE_SQL).fetchall())

    def counts(self) -> tuple[int, int, int, dict[str, int]]:
        releases, devices = self._run(
            "SELECT COUNT(*), COUNT(DISTINCT device) FROM releases").fetchone()
        events = {k: int(v) for k, v in self._run(
            "SELECT outcome, COUNT(*) FROM events GROUP BY outcome").fetchall()}
        enrolled = self._run("SELECT COUNT(*) FROM devices").fetchone()[0]
        return int(releases), int(devices), int(enrolled), events

    def release_ids(self) -> list[str]:
        return [r[0] for r in self._run("SELECT id FROM releases ORDER BY id").fetchall()]

    def close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()


def _redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
