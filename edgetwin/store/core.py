"""Transactions of the twin store: one SQLite connection, one lock, and the keystore
kept in step with the database.

A new data key is written to the keystore (atomically, fsynced) before the
transaction that first uses it commits; destroyed keys leave the keystore right
after the transaction that deleted their rows commits (:meth:`StoreCore._prune_keystore`),
and any key the database no longer knows is dropped from the keystore at every
unlock, so a crash between the two steps is finished on the next start.

Every write transaction starts with ``BEGIN IMMEDIATE`` and compares ``PRAGMA
data_version``: when another connection committed since, the caches are dropped,
so a forget or rotation elsewhere is seen before the next write.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgetwin.errors import EdgetwinError, StoreFull, UsageError
from edgetwin.store.db import DB_FILE, translate_error
from edgetwin.store.keys import Keystore, MasterKeys

_LOGGER = logging.getLogger(__name__)


OnCorrupt = Literal["raise", "skip"]  # a damaged row: raise DataCorrupt, or log and skip it


class StoreCore:
    """The connection, the lock, the keystore and the transaction protocol."""

    def __init__(
        self, home: Path, keystore: Keystore, keys: MasterKeys, conn: sqlite3.Connection
    ) -> None:
        self.home = home
        self.twin_id = keys.twin_id.hex()
        self._ks = keystore
        self._keys = keys
        self._conn = conn
        self._lock = threading.RLock()
        self._tx_depth = 0
        self._ks_added = False  # keys created in this transaction (save before COMMIT)
        self._ks_removed: set[int] = set()  # keys destroyed in it (save after COMMIT)
        self._on_rollback: list[Callable[[], object]] = []
        # PRAGMA data_version our caches belong to: it moves when another connection commits
        self._data_version: int | None = None
        # data keys: (scope, period) -> active key id; key id -> unwrapped cipher
        self._active: dict[tuple[bytes, int], int] = {}
        self._aead: dict[int, AESGCM] = {}
        self._closed = False

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """An atomic group of writes (``BEGIN IMMEDIATE``); nested uses join the outer one."""
        with self._lock:
            self._check_open()
            if self._tx_depth:
                self._tx_depth += 1
                try:
                    yield
                finally:
                    self._tx_depth -= 1
                return
            self._begin()
            self._tx_depth = 1
            try:
                yield
                self._commit_tx()
            except BaseException:
                self._rollback_tx()
                raise
            finally:
                self._tx_depth = 0

    @contextlib.contextmanager
    def _read_snapshot(self) -> Iterator[None]:
        """Reads that must see one commit: autocommit gives each SELECT its own snapshot, so
        a reader on its own connection could see a commit land between two of them. Inside
        a transaction already (a writer's), its view is one snapshot anyway."""
        with self._lock:
            if self._conn.in_transaction:
                yield
                return
            with self._db("starting a read"):
                self._conn.execute("BEGIN")
            try:
                yield
            finally:
                with self._db("ending a read"):
                    self._conn.execute("COMMIT")

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("the twin store is closed")

    @contextlib.contextmanager
    def _db(self, what: str) -> Iterator[None]:
        self._check_open()
        try:
            yield
        except sqlite3.Error as exc:
            if isinstance(exc, sqlite3.ProgrammingError | sqlite3.InterfaceError):
                raise
            raise translate_error(exc, self.home / DB_FILE, what) from exc

    def _begin(self) -> None:
        with self._db("starting a write"):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                row = self._conn.execute("PRAGMA data_version").fetchone()
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        version = int(row[0])
        if version != self._data_version:
            self._drop_caches()  # another process wrote: its forget or appends invalidate ours
            self._data_version = version
        # another process may have changed slots or keys: never save over its work
        self._sync_keystore()
        self._ks_added = False
        self._ks_removed = set()
        self._on_rollback = []

    def _commit_tx(self) -> None:
        with self._db("committing"):
            if self._ks_added:
                self._ks.save()  # keys durable before anything they seal
                self._ks_added = False
            self._conn.execute("COMMIT")
        self._on_rollback = []
        if self._ks_removed:
            removed, self._ks_removed = self._ks_removed, set()
            for key_id in removed:
                self._aead.pop(key_id, None)
            # The rows are gone; now the keys. A crash before this is finished at the
            # next unlock, which prunes every key the database no longer knows.
            try:
                self._prune_keystore()
            except StoreFull as exc:  # a disk too full even for the keystore's new copy
                raise StoreFull(
                    f"the data is deleted, but {len(removed)} of its data keys are still in "
                    f"{self._ks.path}: {exc.message}",
                    hint="free some disk space; the next unlock, forget or retention "
                    "finishes destroying them",
                ) from exc

    def _rollback_tx(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("ROLLBACK")
        for undo in reversed(self._on_rollback):
            undo()
        self._on_rollback = []
        self._drop_caches()
        self._data_version = None
        self._ks_removed = set()
        if self._ks_added:
            self._ks_added = False
            with contextlib.suppress(EdgetwinError):
                self._ks.reload()  # forget keys made for the rolled-back work

    def _drop_caches(self) -> None:
        # layers with caches of their own extend this
        self._active.clear()
        self._aead.clear()

    def _sync_keystore(self) -> None:
        if self._ks.changed_on_disk():
            self._ks.reload()

    def _prune_keystore(self) -> int:
        """Rewrite the keystore without keys absent from the ``dek`` table.

        Runs under the database's write lock (its own ``BEGIN IMMEDIATE``), which
        every keystore writer holds, so no other process's new key can be lost.
        """
        with self._lock, self._db("destroying data keys"):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._sync_keystore()
                known = {int(r[0]) for r in self._conn.execute("SELECT id FROM dek")}
                orphans = [k for k in self._ks.deks if k not in known]
                if orphans:
                    for key_id in orphans:
                        del self._ks.deks[key_id]
                        self._aead.pop(key_id, None)
                    self._ks.save()
            except BaseException:
                self._conn.execute("ROLLBACK")
                with contextlib.suppress(EdgetwinError):
                    self._ks.reload()
                raise
            self._conn.execute("COMMIT")
        if orphans:
            _LOGGER.info("destroyed %d data keys", len(orphans))
        return len(orphans)
