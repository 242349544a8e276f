"""The audit chain: sealed entries, each MAC-chained to the one before, with an
authenticated head in ``meta`` so entries deleted from the end are noticed.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import struct
import time
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag

from edgetwin.errors import DataCorrupt, HomeError
from edgetwin.store import codec
from edgetwin.store.core import OnCorrupt, StoreCore
from edgetwin.store.reports import Problem

_LOGGER = logging.getLogger(__name__)

PENDING_FAILURES_FILE = "unlock-failures.jsonl"
_CHAIN_GENESIS = bytes(32)


class AuditChain(StoreCore):
    """Append, read and verify the audit chain."""

    def audit(self, event: str, **details: Any) -> None:
        """Append an authenticated, hash-chained entry; committed at once (or with the
        enclosing transaction)."""
        with self.transaction():
            self._append_audit(time.time(), event, details)

    def audit_entries(self, *, on_corrupt: OnCorrupt = "raise") -> list[dict[str, Any]]:
        """Every entry, oldest first: ``{"seq", "t", "event", "details"}``."""
        out: list[dict[str, Any]] = []
        for seq, sealed, _mac in self._audit_rows():
            try:
                entry = self._open_audit(seq, sealed)
            except DataCorrupt:
                if on_corrupt == "raise":
                    raise
                _LOGGER.warning("audit entry %d is damaged; skipped", seq)
                continue
            out.append(entry)
        return out

    def verify_audit(self) -> list[Problem]:
        """Check the audit chain: every entry authentic, none missing, none reordered."""
        problems: list[Problem] = []
        try:
            rows = self._audit_rows()
        except DataCorrupt as exc:
            return [Problem("audit", f"the audit table cannot be read: {exc}")]
        prev_mac = _CHAIN_GENESIS
        prev_seq = 0
        for seq, sealed, mac in rows:
            if seq != prev_seq + 1:
                problems.append(
                    Problem("audit", f"entries {prev_seq + 1}..{seq - 1} are missing")
                )
            expect = self._chain_mac(seq, prev_mac, sealed)
            if not hmac.compare_digest(expect, mac):
                problems.append(
                    Problem("audit", f"entry {seq} was altered, moved or reordered (MAC mismatch)")
                )
            else:
                try:
                    self._open_audit(seq, sealed)
                except DataCorrupt as exc:
                    problems.append(Problem("audit", f"entry {seq}: {exc.message}"))
            prev_mac, prev_seq = mac, seq
        with self._lock, self._db("reading the audit head"):
            row = self._conn.execute("SELECT v FROM meta WHERE k = 'audit_head'").fetchone()
        head = bytes(row[0]) if row is not None else None
        if head is None and prev_seq:
            problems.append(Problem("audit", "the audit head is missing"))
        elif head is not None and not hmac.compare_digest(head, self._head_mac(prev_seq, prev_mac)):
            problems.append(
                Problem("audit", f"the log ends at entry {prev_seq} but its head says otherwise: "
                        "entries were deleted from the end or the head was altered")
            )
        return problems

    def _chain_mac(self, seq: int, prev: bytes, sealed: bytes) -> bytes:
        msg = b"".join(
            (b"edgetwin/audit-chain/v1\x00", self._keys.twin_id, struct.pack("<q", seq), prev)
        ) + sealed
        return hmac.new(self._keys.audit_mac, msg, "sha256").digest()

    def _head_mac(self, seq: int, mac: bytes) -> bytes:
        msg = b"edgetwin/audit-head/v1\x00" + self._keys.twin_id + struct.pack("<q", seq) + mac
        return hmac.new(self._keys.audit_mac, msg, "sha256").digest()

    def _append_audit(self, t: float, event: str, details: dict[str, Any]) -> None:
        entry = {"t": t, "event": event, "details": _jsonable(details), "pid": os.getpid()}
        with self._db("appending to the audit log"):
            row = self._conn.execute(
                "SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            seq, prev = (int(row[0]) + 1, bytes(row[1])) if row is not None else (1, _CHAIN_GENESIS)
            entry["seq"] = seq
            ad = codec.audit_ad(self._keys.twin_id, seq)
            sealed = codec.seal(self._keys.audit_seal, codec.encode_json(entry), ad)
            mac = self._chain_mac(seq, prev, sealed)
            self._conn.execute(
                "INSERT INTO audit (seq, sealed, mac) VALUES (?, ?, ?)", (seq, sealed, mac)
            )
            self._conn.execute(
                "INSERT OR REPLACE INTO meta (k, v) VALUES ('audit_head', ?)",
                (self._head_mac(seq, mac),),
            )

    def _audit_rows(self) -> list[tuple[int, bytes, bytes]]:
        with self._lock, self._db("reading the audit log"):
            rows = self._conn.execute("SELECT seq, sealed, mac FROM audit ORDER BY seq").fetchall()
        return [(int(s), bytes(b), bytes(m)) for s, b, m in rows]

    def _audit_rows_safe(self) -> list[tuple[int, bytes, bytes]]:
        try:
            return self._audit_rows()
        except DataCorrupt:
            return []

    def _open_audit(self, seq: int, sealed: bytes) -> dict[str, Any]:
        try:
            plain = codec.open_sealed(
                self._keys.audit_seal, sealed, codec.audit_ad(self._keys.twin_id, seq)
            )
            entry = codec.decode_json(plain)
        except (InvalidTag, codec.Undecodable) as exc:
            raise DataCorrupt(
                f"audit entry {seq} failed authentication",
                hint="run 'edgetwin audit --verify' to see the whole chain",
            ) from exc
        if not isinstance(entry, dict) or entry.get("seq") != seq:
            raise DataCorrupt(f"audit entry {seq} holds another entry's contents")
        return {
            "seq": seq,
            "t": entry.get("t"),
            "event": entry.get("event"),
            "details": entry.get("details", {}),
        }

    def _fold_failed_unlocks(self) -> None:
        """Move failed unlocks noted while locked into the authenticated chain."""
        path = self.home / PENDING_FAILURES_FILE
        claimed = path.with_name(f"{path.name}.{os.getpid()}")
        try:
            path.replace(claimed)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise HomeError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            lines = claimed.read_text(encoding="utf-8", errors="replace").splitlines()
            with self.transaction():
                for line in lines:
                    try:
                        item = json.loads(line)
                        t = float(item["t"])
                        kind = str(item.get("kind", "?"))[:32]
                    except (ValueError, KeyError, TypeError):
                        t, kind = time.time(), "unreadable note"
                    details = {"secret": kind, "noted": "unauthenticated"}
                    self._append_audit(t, "unlock_failed", details)
        except BaseException:
            with contextlib.suppress(OSError):
                claimed.replace(path)
            raise
        claimed.unlink(missing_ok=True)


def record_failed_unlock(home: Path, kind: str) -> None:
    """Note a failed unlock outside the database (which stays untouched)."""
    line = json.dumps({"t": time.time(), "kind": kind}) + "\n"
    try:
        fd = os.open(
            home / PENDING_FAILURES_FILE,
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
            0o600,
        )
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)
    except OSError as exc:
        _LOGGER.warning("could not note the failed unlock: %s", exc.strerror)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str, allow_nan=True))
