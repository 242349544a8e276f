"""Records: small JSON documents (settings, outbox, model state) sealed one per
row of the ``record`` table, addressed by keyed hashes of their kind and key.
"""

from __future__ import annotations

from typing import Any

from cryptography.exceptions import InvalidTag

from edgetwin.errors import DataCorrupt
from edgetwin.store import codec
from edgetwin.store.datakeys import DataKeys


class Records(DataKeys):
    """Put, get, list and delete records."""

    def put_record(self, kind: str, key: str, value: dict[str, Any]) -> None:
        """Store (or replace) a small JSON record, sealed; durable on return (or at the
        end of the enclosing :meth:`transaction`)."""
        if not isinstance(value, dict):
            raise TypeError(f"record {kind}/{key}: value must be a dict")
        plain = codec.encode_json({"kind": kind, "key": key, "value": value})
        with self.transaction():
            kh = self._keys.keyed_id(b"record-kind", kind)
            rid = self._keys.keyed_id(b"record", f"{kind}\x00{key}")
            key_id, aead = self._key_for_write(kh, -1)
            sealed = codec.seal(aead, plain, codec.record_ad(self._keys.twin_id, rid, kh, key_id))
            self._conn.execute(
                "INSERT OR REPLACE INTO record (rid, kh, key_id, sealed) VALUES (?, ?, ?, ?)",
                (rid, kh, key_id, sealed),
            )

    def get_record(self, kind: str, key: str) -> dict[str, Any] | None:
        """The record's value, or None."""
        rid = self._keys.keyed_id(b"record", f"{kind}\x00{key}")
        kh = self._keys.keyed_id(b"record-kind", kind)
        with self._lock, self._db("reading a record"):
            row = self._conn.execute(
                "SELECT key_id, sealed FROM record WHERE rid = ?", (rid,)
            ).fetchone()
        if row is None:
            return None
        doc = self._open_record(rid, kh, int(row[0]), bytes(row[1]), f"{kind}/{key}")
        if doc is None:
            return None
        if doc.get("kind") != kind or doc.get("key") != key:
            raise DataCorrupt(f"record {kind}/{key} holds another record's contents")
        value: dict[str, Any] = doc["value"]
        return value

    def list_records(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every record of a kind: ``{key: value}``."""
        kh = self._keys.keyed_id(b"record-kind", kind)
        with self._lock, self._db("listing records"):
            rows = self._conn.execute(
                "SELECT rid, key_id, sealed FROM record WHERE kh = ?", (kh,)
            ).fetchall()
        out: dict[str, dict[str, Any]] = {}
        for rid, key_id, sealed in rows:
            doc = self._open_record(bytes(rid), kh, int(key_id), bytes(sealed), f"{kind}/?")
            if doc is None:
                continue
            key = str(doc.get("key"))
            if doc.get("kind") != kind or self._keys.keyed_id(b"record", f"{kind}\x00{key}") != rid:
                raise DataCorrupt(f"a record of kind {kind!r} was moved from another row")
            out[key] = doc["value"]
        return dict(sorted(out.items()))

    def delete_record(self, kind: str, key: str) -> bool:
        """Remove a record; whether it existed."""
        rid = self._keys.keyed_id(b"record", f"{kind}\x00{key}")
        with self.transaction():
            cur = self._conn.execute("DELETE FROM record WHERE rid = ?", (rid,))
            return cur.rowcount > 0

    def _open_record(
        self, rid: bytes, kh: bytes, key_id: int, sealed: bytes, label: str
    ) -> dict[str, Any] | None:
        with self._lock:
            aead = self._aead_for(key_id)
            if aead is None:
                if not self._key_known_to_db(key_id):
                    return None
                raise DataCorrupt(f"record {label}: its data key is missing from the keystore")
        try:
            ad = codec.record_ad(self._keys.twin_id, rid, kh, key_id)
            plain = codec.open_sealed(aead, sealed, ad)
            doc = codec.decode_json(plain)
        except (InvalidTag, codec.Undecodable) as exc:
            raise DataCorrupt(
                f"record {label} failed authentication (altered or moved)",
                hint="run 'edgetwin verify'; other records stay readable",
            ) from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("value"), dict):
            raise DataCorrupt(f"record {label} does not decode")
        return doc
