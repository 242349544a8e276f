"""The twin store: encrypted time series, records and the audit chain in one SQLite file.

Layout of a twin home::

    twin.db, twin.db-wal, twin.db-shm   SQLite (WAL); only opaque ids, hour buckets, blobs
    keystore.json                       slots wrapping the master key; wrapped data keys
    unlock-failures.jsonl               failed unlocks waiting to enter the audit chain
    config.toml                         behaviour only (written by ``edgetwin init``)

The store is split by job; :class:`TwinStore` puts the parts together::

    db.py        opening the SQLite file, translating its errors
    core.py      the connection, the lock, transactions kept in step with the keystore
    datakeys.py  data keys: make, cache, destroy
    series.py    series descriptions (streams, frames, predictions)
    chunks.py    appends and reads of time series
    records.py   sealed JSON records
    markers.py   markers (events), sealed per source and UTC day
    audit.py     the audit chain
    rekey.py     re-encryption under fresh keys, key rotation
    forget.py    forget and retention
    verify.py    walking the twin for damage

Writes of time series and markers are buffered in memory and become durable together at
:meth:`TwinStore.commit` (one SQLite transaction, ``synchronous=FULL``).

Concurrency: one process (the daemon) appends; other processes may read and
write records at the same time (see :mod:`edgetwin.store.core`).
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import logging
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from edgetwin.errors import DataCorrupt, HomeError, SchemaTooNew, WrongKey
from edgetwin.store import codec
from edgetwin.store.audit import PENDING_FAILURES_FILE, record_failed_unlock
from edgetwin.store.core import OnCorrupt
from edgetwin.store.db import DB_FILE, connect, make_home, translate_error
from edgetwin.store.derived import upgraded_columns, upgraded_frames
from edgetwin.store.forget import Forgetting
from edgetwin.store.keys import KEYSTORE_FILE, KdfParams, Keystore, MasterKeys, Secret
from edgetwin.store.reports import VerifyReport
from edgetwin.store.schema import SCHEMA_VERSION, migrate, schema_version
from edgetwin.store.series import (
    BUCKET_S,
    KIND_FRAMES,
    KIND_PREDICTIONS,
    KIND_SAMPLES,
    MAX_CHUNK_CELLS,
    MAX_CHUNK_ROWS,
    PERIOD_S,
)
from edgetwin.store.tails import TailCounts
from edgetwin.store.verify import Verification
from edgetwin.types import FeatureFrame

_LOGGER = logging.getLogger(__name__)


class TwinStore(Forgetting, Verification):
    """One unlocked twin: append, read, records, audit, verify and forget."""

    # -- lifecycle ---------------------------------------------------------------

    @classmethod
    def create(cls, home: Path, secret: Secret, *, kdf: KdfParams | None = None) -> TwinStore:
        """Make a new twin in ``home`` (created with mode 0700); HomeError if one exists."""
        home = Path(home)
        make_home(home)
        db_path = home / DB_FILE
        ks_path = home / KEYSTORE_FILE
        for p in (db_path, ks_path):
            if p.exists():
                raise HomeError(
                    f"a twin already exists in {home} ({p.name} is there)",
                    hint="use another --home, or 'edgetwin forget --all' to empty this one",
                )
        twin_id = secrets.token_bytes(16)
        created: list[Path] = []
        try:
            keystore, keys = Keystore.create(ks_path, twin_id, secret, kdf or KdfParams.from_env())
            created.append(ks_path)
            created.append(db_path)
            conn = connect(db_path, create=True)
            try:
                migrate(conn, str(db_path))
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    "INSERT INTO meta (k, v) VALUES (?, ?)",
                    [
                        ("twin_id", twin_id),
                        ("check", _make_check(keys)),
                    ],
                )
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.close()
                raise translate_error(exc, db_path, "creating the database") from exc
            store = cls(home, keystore, keys, conn)
            params = keystore.kdf_params()
            store.audit(
                "init",
                slot=secret.kind,
                kdf=params.to_json() if params is not None else None,
                schema=SCHEMA_VERSION,
            )
        except BaseException:
            for p in created:
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(OSError):
                        Path(str(p) + suffix).unlink()
            raise
        _LOGGER.info("created twin %s in %s", store.twin_id[:8], home)
        return store

    @classmethod
    def open(cls, home: Path, secret: Secret, *, strict: bool = True) -> TwinStore:
        """Unlock the twin in ``home``: WrongKey, DataCorrupt, SchemaTooNew or HomeError.

        ``strict=False`` opens a twin whose database fails its authentication
        check, so that :meth:`verify` can list the damage.
        """
        home = Path(home)
        db_path = home / DB_FILE
        ks_path = home / KEYSTORE_FILE
        if not db_path.exists() and not ks_path.exists():
            raise HomeError(
                f"{home} holds no twin",
                hint="run 'edgetwin init' first, or point --home / EDGETWIN_HOME at a twin",
            )
        if not db_path.exists():
            raise DataCorrupt(
                f"{db_path} is missing but {ks_path.name} is there",
                hint="restore twin.db from a backup or import an export bundle",
            )
        keystore = Keystore.load(ks_path)
        try:
            keys = keystore.unlock(secret)
        except WrongKey:
            record_failed_unlock(home, secret.kind)
            raise
        conn = connect(db_path, create=False)
        try:
            version = schema_version(conn)
            if version == 0:
                raise DataCorrupt(
                    f"{db_path} is empty or was truncated (no schema)",
                    hint="restore twin.db from a backup or import an export bundle",
                )
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{db_path} has schema version {version}; this edgetwin knows up to "
                    f"{SCHEMA_VERSION}",
                    hint="upgrade edgetwin; the file was not changed",
                )
            if version < SCHEMA_VERSION:
                migrate(conn, str(db_path))
            store = cls(home, keystore, keys, conn)
            try:
                store._check_twin()
            except DataCorrupt:
                if strict:
                    raise
        except sqlite3.Error as exc:
            conn.close()
            raise translate_error(exc, db_path, "opening the database") from exc
        except BaseException:
            conn.close()
            raise
        try:
            store._finish_pending_shreds()
            store._fold_failed_unlocks()
        except (HomeError, sqlite3.OperationalError) as exc:
            # read-only media or a busy writer: the twin is still readable
            _LOGGER.warning("could not tidy the twin on unlock: %s", exc)
        return store

    def reader(self, *, tail_counts: TailCounts | None = None) -> TwinStore:
        """A read-only handle on this twin for another thread: its own SQLite connection
        (WAL: it reads what is committed while this handle writes, and neither waits for the
        other), its own copy of the keystore and caches, none of this handle's locks. It never
        sees this handle's buffered appends. Close it when done; a short-lived one also keeps
        no key of a stream forgotten meanwhile. ``tail_counts`` carries the streams' counted
        tails from one reader to the next (see :class:`~edgetwin.store.tails.TailCounts`)."""
        reader = self._read_only(self.home, self._keys)
        reader._tail_counts = tail_counts
        return reader

    def handoff(self) -> dict[str, str]:
        """What a child process of this package needs to open a read-only handle on this twin
        (:meth:`from_handoff`): the home and, in base64, the master key and twin id. Hand it
        over a pipe only: it unlocks the twin without its passphrase."""
        master, twin_id = self._keys.for_child()
        return {"home": str(self.home), "master": base64.b64encode(master).decode(),
                "twin_id": twin_id.hex()}

    @classmethod
    def from_handoff(cls, doc: dict[str, str]) -> TwinStore:
        """A read-only handle (as :meth:`reader`) from :meth:`handoff`'s document, in a child
        process; DataCorrupt if the key does not open this twin."""
        home = Path(doc["home"])
        keys = MasterKeys(base64.b64decode(doc["master"], validate=True),
                          bytes.fromhex(doc["twin_id"]))
        return cls._read_only(home, keys, check=True)

    @classmethod
    def _read_only(cls, home: Path, keys: MasterKeys, *, check: bool = False) -> TwinStore:
        """A handle on a query-only connection of its own with a fresh copy of the keystore;
        ``check``: the twin's authentication check too (for keys from outside this process)."""
        conn = connect(home / DB_FILE, create=False)
        try:
            conn.execute("PRAGMA query_only = ON")
            store = cls(home, Keystore.load(home / KEYSTORE_FILE), keys, conn)
            if check:
                store._check_twin()
        except BaseException:
            conn.close()
            raise
        return store

    def close(self) -> None:
        """Close the database; uncommitted appends are dropped (call commit() first)."""
        with self._lock:
            if self._closed:
                return
            if self.pending_rows():
                _LOGGER.warning("closing with %d uncommitted rows", self.pending_rows())
            self._closed = True
            self._aead.clear()
            self._conn.close()

    def __enter__(self) -> TwinStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TwinStore({str(self.home)!r}, twin={self.twin_id[:8]})"

    # -- feature frames, as the current feature schema -----------------------------

    def read_frames(
        self, t0: float | None = None, t1: float | None = None, *, on_corrupt: OnCorrupt = "raise"
    ) -> Iterator[FeatureFrame]:
        """Committed feature frames with ``t0 <= t <= t1``, oldest hour first, as the current
        feature schema: frames stored at an older one (v1) come back with the features it
        lacks missing (quality 0); stored chunks stay as written."""
        return upgraded_frames(super().read_frames(t0, t1, on_corrupt=on_corrupt), on_corrupt)

    def iter_frame_columns(
        self, t0: float | None = None, t1: float | None = None, *, on_corrupt: OnCorrupt = "raise"
    ) -> Iterator[codec.FrameColumns]:
        """:meth:`read_frames` as arrays, one block per stored chunk (current schema too)."""
        return upgraded_columns(
            super().iter_frame_columns(t0, t1, on_corrupt=on_corrupt), on_corrupt
        )

    def verify(self) -> VerifyReport:
        """Walk the whole twin, decrypting everything (markers too); list all damage found."""
        report = super().verify()
        self._verify_markers(report)
        return report

    # -- key changes ----------------------------------------------------------------------------

    def control_proof(self, message: bytes) -> bytes:
        """HMAC-SHA256 of ``message`` under a key derived from the master key: a CLI that
        unlocked this twin proves it to the daemon's control socket (``forget``)."""
        key = self._keys.keyed_id(b"control-proof", "v1")
        return hmac.new(key, message, "sha256").digest()

    def change_secret(self, new: Secret, *, kdf: KdfParams | None = None) -> None:
        """Re-wrap the master key for a new passphrase (or key file); data untouched.

        Replaces the slot of the new secret's kind; other slots stay.
        """
        with self.transaction():
            self._ks.set_slot(self._keys, new, kdf or KdfParams.from_env())
            self._ks.save()
            self._append_audit(time.time(), "key_change", {"action": f"set_{new.kind}"})

    def remove_slot(self, kind: str) -> None:
        """Stop accepting one kind of secret (``passphrase`` or ``keyfile``)."""
        with self.transaction():
            self._ks.remove_slot(kind)
            self._ks.save()
            self._append_audit(time.time(), "key_change", {"action": f"remove_{kind}"})

    def slots(self) -> list[str]:
        """The kinds of secret that unlock this twin."""
        return [s["kind"] for s in self._ks.slots]

    def kdf_params(self) -> KdfParams | None:
        """The Argon2id parameters of the passphrase slot."""
        return self._ks.kdf_params()


def _make_check(keys: MasterKeys) -> bytes:
    return codec.seal(keys.check, b"edgetwin", b"edgetwin/check/v1")


__all__ = [
    "BUCKET_S",
    "DB_FILE",
    "KIND_FRAMES",
    "KIND_PREDICTIONS",
    "KIND_SAMPLES",
    "MAX_CHUNK_CELLS",
    "MAX_CHUNK_ROWS",
    "PENDING_FAILURES_FILE",
    "PERIOD_S",
    "OnCorrupt",
    "TwinStore",
]
