"""SQLite schema of ``twin.db`` as versioned migrations (``PRAGMA user_version``).

What is stored in clear (the threat model in the README lists it too):

- ``meta``: the twin id, an authenticated check value and the audit head (a MAC);
- ``dek``: data-key ids, the opaque scope each key serves (a keyed hash) and
  its UTC day number, and whether it is the active key for new writes;
- ``series``: a small integer and the opaque 16-byte keyed hash of each
  stream (or of the frames / predictions series);
- ``chunk``: series number, sequence number, key id and the first and last
  *hour* (Unix hours) the chunk covers;
- ``record``: opaque keyed hashes of the record kind and key;
- ``audit``: sequence numbers and MACs;
- ``marker`` (version 3): a row number, the opaque keyed hash of the marker
  source and the UTC *day* of the markers the row seals.

Everything else — names, channels, units, values, timestamps, counts, record
contents, audit details — is inside AES-256-GCM blobs.

Columns (version 2 spelled out the short names of version 1 given in brackets):

=====================  ======================  ==============================================
column                 table(s)                meaning
=====================  ======================  ==============================================
series_no (sn)         series, chunk           the local integer id of a series
series_id (sid)        series                  16-byte keyed hash of (kind, name)
seq                    chunk                   chunk number within its series, from 0
first_hour (b0),       chunk                   first and last Unix *hour* of the chunk's
last_hour (b1)                                 timestamps, ``floor(t / 3600)``: the clear
                                               time index (the code keeps ``b0``/``b1``)
key_id                 series, chunk, record   ``dek.id`` of the data key that sealed the row
sealed                 every data table        ``nonce | AES-256-GCM ciphertext | tag``
scope                  dek                     what a key serves: a series_id or a record kh
period                 dek                     UTC day number of the data it seals (-1: none)
rid                    record                  record id: keyed hash of (kind, key)
kh                     record                  keyed hash of the record kind
source_id              marker                  16-byte keyed hash of the marker source
day                    marker                  UTC day number of the markers in the row
=====================  ======================  ==============================================
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from edgetwin.errors import SchemaTooNew

SCHEMA_VERSION = 4


def _v1(conn: sqlite3.Connection) -> None:
    for statement in (
        "CREATE TABLE meta (k TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID",
        "CREATE TABLE dek ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " scope BLOB NOT NULL,"
        " period INTEGER NOT NULL,"
        " active INTEGER NOT NULL DEFAULT 1)",
        "CREATE UNIQUE INDEX dek_active ON dek(scope, period) WHERE active = 1",
        "CREATE INDEX dek_scope ON dek(scope, period)",
        "CREATE TABLE series ("
        " sn INTEGER PRIMARY KEY,"
        " sid BLOB NOT NULL UNIQUE,"
        " key_id INTEGER NOT NULL,"
        " sealed BLOB NOT NULL)",
        "CREATE TABLE chunk ("
        " sn INTEGER NOT NULL,"
        " seq INTEGER NOT NULL,"
        " key_id INTEGER NOT NULL,"
        " b0 INTEGER NOT NULL,"
        " b1 INTEGER NOT NULL,"
        " sealed BLOB NOT NULL,"
        " PRIMARY KEY (sn, seq))",
        "CREATE INDEX chunk_time ON chunk(sn, b0, seq)",
        "CREATE TABLE record ("
        " rid BLOB PRIMARY KEY,"
        " kh BLOB NOT NULL,"
        " key_id INTEGER NOT NULL,"
        " sealed BLOB NOT NULL)",
        "CREATE INDEX record_kind ON record(kh)",
        "CREATE TABLE audit (seq INTEGER PRIMARY KEY, sealed BLOB NOT NULL, mac BLOB NOT NULL)",
    ):
        conn.execute(statement)


def _v2(conn: sqlite3.Connection) -> None:
    """Spell out the short names of version 1 (a rename: no row is rewritten)."""
    for table, old, new in (
        ("series", "sn", "series_no"),
        ("series", "sid", "series_id"),
        ("chunk", "sn", "series_no"),
        ("chunk", "b0", "first_hour"),
        ("chunk", "b1", "last_hour"),
    ):
        conn.execute(f"ALTER TABLE {table} RENAME COLUMN {old} TO {new}")


def _v3(conn: sqlite3.Connection) -> None:
    """Markers (events): sealed rows per source and UTC day (an addition: nothing is rewritten)."""
    for statement in (
        "CREATE TABLE marker ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " source_id BLOB NOT NULL,"
        " day INTEGER NOT NULL,"
        " key_id INTEGER NOT NULL,"
        " sealed BLOB NOT NULL)",
        "CREATE INDEX marker_day ON marker(day, id)",
        "CREATE INDEX marker_source ON marker(source_id, day)",
    ):
        conn.execute(statement)


def _v4(conn: sqlite3.Connection) -> None:
    """Sample chunks in codec v3 (zstd) and series tails with ``meta['chunk_ends']``.

    Nothing to rewrite: version 4 code reads every older chunk. The number exists so that an
    edgetwin that knows only version 3 refuses this file as too new (a precise error) instead
    of reporting every v3 chunk as damage.
    """
    del conn


# version reached -> migration from the version before it
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _v1, 2: _v2, 3: _v3, 4: _v4}


def schema_version(conn: sqlite3.Connection) -> int:
    """The ``user_version`` of the open database."""
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def migrate(conn: sqlite3.Connection, where: str) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION` in one transaction; returns the old version.

    Raises SchemaTooNew (and changes nothing) when the file is newer than this code.
    The connection must be in autocommit mode (``isolation_level=None``).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = schema_version(conn)
        if current > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{where} has schema version {current}; this edgetwin knows up to {SCHEMA_VERSION}",
                hint="upgrade edgetwin; the file was not changed",
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[version](conn)
        if current != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return current
