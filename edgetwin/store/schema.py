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
- ``audit``: sequence numbers and MACs.

Everything else — names, channels, units, values, timestamps, counts, record
contents, audit details — is inside AES-256-GCM blobs.

Column names, short because they are in every statement (read them as):

========  ======================  ==================================================
column    table(s)                meaning
========  ======================  ==================================================
sn        series, chunk           series number: the local integer id of a series
sid       series                  series id: 16-byte keyed hash of (kind, name)
seq       chunk                   chunk number within its series, from 0, never reused
b0, b1    chunk                   first and last Unix *hour* (bucket) of the chunk's
                                  timestamps: ``floor(t / 3600)``; the clear time index
key_id    series, chunk, record   ``dek.id`` of the data key that sealed the row
sealed    every data table        ``nonce | AES-256-GCM ciphertext | tag``
scope     dek                     what a key serves: a ``sid`` or a record ``kh``
period    dek                     UTC day number of the data it seals (-1: no day)
rid       record                  record id: keyed hash of (kind, key)
kh        record                  keyed hash of the record kind
========  ======================  ==================================================

Renaming them (``series_no``, ``series_id``, ``first_hour``, ``last_hour``) is a
future migration: the stored format and the tests that tamper with rows use
these names.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from edgetwin.errors import SchemaTooNew

SCHEMA_VERSION = 1


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


# version reached -> migration from the version before it
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _v1}


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
