"""Data keys: one per scope (a series, a record kind) and UTC day, made on first
write, cached unwrapped, destroyed to crypto-shred what they sealed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgetwin.errors import DataCorrupt
from edgetwin.store.core import StoreCore
from edgetwin.store.db import DB_FILE
from edgetwin.store.keys import KEYSTORE_FILE
from edgetwin.store.reports import ForgetReport


class DataKeys(StoreCore):
    """Make, find and destroy data keys (the ``dek`` table and the keystore's wrapped keys)."""

    def _key_for_write(self, scope: bytes, period: int) -> tuple[int, AESGCM]:
        """The active key for (scope, period), made (and recorded) when missing."""
        cached = self._active.get((scope, period))
        if cached is not None:
            aead = self._aead_for(cached)
            if aead is not None:
                return cached, aead
        row = self._conn.execute(
            "SELECT id FROM dek WHERE scope = ? AND period = ? AND active = 1", (scope, period)
        ).fetchone()
        if row is not None:
            key_id = int(row[0])
            aead = self._aead_for(key_id)
            if aead is None:
                raise DataCorrupt(
                    f"data key {key_id} is recorded in {DB_FILE} but missing from {KEYSTORE_FILE}",
                    hint="restore the keystore from a backup",
                )
        else:
            cur = self._conn.execute(
                "INSERT INTO dek (scope, period, active) VALUES (?, ?, 1)", (scope, period)
            )
            key_id = int(cur.lastrowid or 0)
            dek = self._ks.add_dek(self._keys, key_id, scope, period)
            self._ks_added = True
            aead = AESGCM(dek)
            self._aead[key_id] = aead
            # make sure nothing sealed under it survives a rollback in the cache
            self._on_rollback.append(functools.partial(self._aead.pop, key_id, None))
        self._active[(scope, period)] = key_id
        return key_id, aead

    def _aead_for(self, key_id: int) -> AESGCM | None:
        aead = self._aead.get(key_id)
        if aead is not None:
            return aead
        got = self._ks.unwrap_dek(self._keys, key_id)
        if got is None and self._ks.changed_on_disk():
            self._ks.reload()
            got = self._ks.unwrap_dek(self._keys, key_id)
        if got is None:
            return None
        aead = AESGCM(got[0])
        self._aead[key_id] = aead
        return aead

    def _key_known_to_db(self, key_id: int) -> bool:
        with self._db("reading data keys"):
            row = self._conn.execute("SELECT 1 FROM dek WHERE id = ?", (key_id,)).fetchone()
        return row is not None

    def _destroy_keys(self, key_ids: Sequence[int]) -> int:
        if not key_ids:
            return 0
        self._conn.executemany("DELETE FROM dek WHERE id = ?", [(k,) for k in key_ids])
        self._ks_removed.update(key_ids)
        for cache_key, key_id in list(self._active.items()):
            if key_id in self._ks_removed:
                del self._active[cache_key]
        return len(key_ids)

    def _destroy_unused_keys(self, report: ForgetReport, *, period: int | None) -> None:
        """Destroy retired keys that no row references any more."""
        sql = (
            "SELECT id FROM dek WHERE active = 0"
            " AND id NOT IN (SELECT key_id FROM chunk)"
            " AND id NOT IN (SELECT key_id FROM record)"
            " AND id NOT IN (SELECT key_id FROM series)"
            " AND id NOT IN (SELECT key_id FROM marker)"
        )
        args: tuple[Any, ...] = ()
        if period is not None:
            sql += " AND period = ?"
            args = (period,)
        keys = [int(r[0]) for r in self._conn.execute(sql, args)]
        report.keys_destroyed += self._destroy_keys(keys)

    def _finish_pending_shreds(self) -> None:
        """Drop keystore keys the database no longer knows (an interrupted forget)."""
        with self._lock, self._db("reading data keys"):
            known = {int(r[0]) for r in self._conn.execute("SELECT id FROM dek")}
        if any(k not in known for k in self._ks.deks):
            self._prune_keystore()
