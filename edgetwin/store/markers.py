"""Markers: events on the timeline (``edgetwin mark``, XDF / LSL marker streams, board
marker channels), sealed per source and UTC day in the ``marker`` table.

Each row seals a deflated JSON document ``{"source", "day", "markers": [[t, text], ...]}``
under the data key of (source, day), so forgetting a source destroys its keys
and forgetting before a date destroys whole days, exactly as for time series.
In the clear are only the row number, an opaque keyed hash of the source and
the day. The associated data binds the twin, the row number, the source hash,
the day and the key id: a row moved, swapped or replayed fails authentication.

Appends are buffered and become durable at :meth:`MarkerRows.commit`, with the
samples. A marker identical (time, text, source) to a stored one is skipped, so
ingesting a file twice or importing a bundle over its own twin adds nothing.
A row holds at most :data:`ROW_MAX` markers; a commit adds to the last row of
its (source, day) while it has room (re-sealed), so a day of frequent markers
is a few rows, not one per commit.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag

from edgetwin.errors import DataCorrupt, MalformedInput
from edgetwin.store import codec
from edgetwin.store.core import OnCorrupt
from edgetwin.store.keys import Keystore, MasterKeys
from edgetwin.store.rekey import Rekeying
from edgetwin.store.reports import ForgetReport, Problem, VerifyReport, fmt_time
from edgetwin.store.series import PERIOD_S, day_of
from edgetwin.types import Marker

_LOGGER = logging.getLogger(__name__)

ROW_MAX = 4096  # markers sealed in one row
_SOURCE_LABEL = b"marker-source"
_GROUPS_CACHED = 64  # (source, day) groups kept decrypted for appends


@dataclass
class _Row:
    """A decrypted marker row."""

    id: int
    source_id: bytes
    day: int
    key_id: int
    source: str
    markers: list[tuple[float, str]] = field(default_factory=list)


def marker_ad(twin_id: bytes, row_id: int, source_id: bytes, day: int, key_id: int) -> bytes:
    """Associated data of a marker row."""
    return (
        b"edgetwin/marker/v1\x00" + twin_id + source_id + struct.pack("<qqq", row_id, day, key_id)
    )


class MarkerRows(Rekeying):
    """Append, read, forget, re-key and verify markers."""

    def __init__(
        self, home: Path, keystore: Keystore, keys: MasterKeys, conn: sqlite3.Connection
    ) -> None:
        super().__init__(home, keystore, keys, conn)
        self._pending_markers: list[Marker] = []
        # (source id, day) -> its decrypted rows, for appends (dropped with the other caches)
        self._marker_groups: dict[tuple[bytes, int], list[_Row]] = {}

    def _drop_caches(self) -> None:
        super()._drop_caches()
        self._marker_groups.clear()

    # -- public API ----------------------------------------------------------------------

    def append_markers(self, markers: Sequence[Marker]) -> None:
        """Buffer markers; durable after the next :meth:`commit`.

        Each is checked first (:meth:`edgetwin.types.Marker.problem`): MalformedInput
        naming the marker and what is wrong, and nothing of the call is buffered.
        """
        checked = []
        for i, m in enumerate(markers):
            if not isinstance(m, Marker):
                raise MalformedInput(f"marker {i + 1}: not a Marker but {type(m).__name__}")
            problem = m.problem()
            if problem is not None:
                raise MalformedInput(
                    f"marker {i + 1} ({_brief_text(m.text)!r} from {_brief_text(m.source)!r}): "
                    f"{problem}",
                    hint="machine sources pass their text through escape_marker_text",
                )
            checked.append(Marker(float(m.t), m.text, m.source))
        with self._lock:
            self._pending_markers.extend(checked)

    def pending_rows(self) -> int:
        """Samples, frames, predictions and markers buffered but not yet committed."""
        with self._lock:
            return super().pending_rows() + len(self._pending_markers)

    def commit(self) -> None:
        """Make every buffered append (markers included) durable in one transaction."""
        with self._lock:
            if not self._pending_markers:
                super().commit()
                return
            with self.transaction():
                self._write_pending_markers()
                super().commit()

    def read_markers(
        self,
        t0: float | None = None,
        t1: float | None = None,
        *,
        source: str | None = None,
        on_corrupt: OnCorrupt = "raise",
    ) -> list[Marker]:
        """Committed markers with ``t0 <= t <= t1`` (of one ``source`` if given), by time.

        A damaged row raises DataCorrupt naming its day, or is skipped (logged)
        with ``on_corrupt="skip"``.
        """
        where: list[str] = []
        args: list[int | bytes] = []
        if t0 is not None:
            where.append("day >= ?")
            args.append(day_of(t0))
        if t1 is not None:
            where.append("day <= ?")
            args.append(day_of(t1))
        if source is not None:
            where.append("source_id = ?")
            args.append(self._marker_source_id(source))
        sql = "SELECT id, source_id, day, key_id, sealed FROM marker"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock, self._db("reading markers"):
            rows = self._conn.execute(sql + " ORDER BY day, id", args).fetchall()
        out: list[Marker] = []
        for row_id, sid, day, key_id, sealed in rows:
            try:
                row = self._open_marker_row(
                    int(row_id), bytes(sid), int(day), int(key_id), bytes(sealed)
                )
            except DataCorrupt as exc:
                if on_corrupt == "raise":
                    raise
                _LOGGER.warning("%s; skipped", exc.message)
                continue
            if row is None:
                continue
            out.extend(
                Marker(t, text, row.source)
                for t, text in row.markers
                if (t0 is None or t >= t0) and (t1 is None or t <= t1)
            )
        out.sort(key=lambda m: (m.t, m.source, m.text))
        return out

    def has_marker_source(self, source: str) -> bool:
        """Whether any marker of ``source`` is stored."""
        with self._lock, self._db("reading markers"):
            row = self._conn.execute(
                "SELECT 1 FROM marker WHERE source_id = ? LIMIT 1",
                (self._marker_source_id(source),),
            ).fetchone()
        return row is not None

    # -- writing -------------------------------------------------------------------------

    def _marker_source_id(self, source: str) -> bytes:
        return self._keys.keyed_id(_SOURCE_LABEL, source)

    def _write_pending_markers(self) -> None:
        """Seal the buffered markers (inside a transaction); restored on rollback."""
        pending, self._pending_markers = self._pending_markers, []

        def restore() -> None:
            self._pending_markers[:0] = pending

        self._on_rollback.append(restore)
        groups: dict[tuple[str, int], list[tuple[float, str]]] = {}
        for m in pending:
            groups.setdefault((m.source, day_of(m.t)), []).append((m.t, m.text))
        with self._db("writing markers"):
            for (source, day), items in groups.items():
                self._add_to_group(source, day, items)

    def _add_to_group(self, source: str, day: int, items: list[tuple[float, str]]) -> None:
        sid = self._marker_source_id(source)
        rows = self._group_rows(sid, day)
        seen = {(t, text) for r in rows for t, text in r.markers}
        fresh: list[tuple[float, str]] = []
        for item in sorted(items):
            if item not in seen:
                seen.add(item)
                fresh.append(item)
        while fresh:
            if rows and len(rows[-1].markers) < ROW_MAX:
                row = rows[-1]
                room = ROW_MAX - len(row.markers)
                row.markers.extend(fresh[:room])
                fresh = fresh[room:]
                self._reseal_marker_row(row)
            else:
                cur = self._conn.execute(
                    "INSERT INTO marker (source_id, day, key_id, sealed) VALUES (?, ?, 0, x'')",
                    (sid, day),
                )
                rows.append(_Row(int(cur.lastrowid or 0), sid, day, 0, source))

    def _group_rows(self, sid: bytes, day: int) -> list[_Row]:
        """The decrypted rows of (source, day), cached for the writes of this connection."""
        cached = self._marker_groups.get((sid, day))
        if cached is not None:
            return cached
        if len(self._marker_groups) >= _GROUPS_CACHED:
            self._marker_groups.clear()  # a long-running daemon touches a new day every day
        rows: list[_Row] = []
        for row_id, key_id, sealed in self._conn.execute(
            "SELECT id, key_id, sealed FROM marker WHERE source_id = ? AND day = ? ORDER BY id",
            (sid, day),
        ).fetchall():
            row = self._open_marker_row(int(row_id), sid, day, int(key_id), bytes(sealed))
            if row is not None:
                rows.append(row)
        self._marker_groups[(sid, day)] = rows
        return rows

    def _reseal_marker_row(self, row: _Row) -> None:
        """Seal ``row`` under the active key of its (source, day) and write it."""
        key_id, aead = self._key_for_write(row.source_id, row.day)
        row.key_id = key_id
        plain = codec.encode_json(
            {"source": row.source, "day": row.day, "markers": [list(m) for m in row.markers]}
        )
        sealed = codec.seal(
            aead, plain, marker_ad(self._keys.twin_id, row.id, row.source_id, row.day, key_id)
        )
        self._conn.execute(
            "UPDATE marker SET key_id = ?, sealed = ? WHERE id = ?", (key_id, sealed, row.id)
        )

    # -- reading -------------------------------------------------------------------------

    def _open_marker_row(
        self, row_id: int, sid: bytes, day: int, key_id: int, sealed: bytes
    ) -> _Row | None:
        """A row decrypted and checked; None if its key was forgotten meanwhile."""
        where = f"markers of {fmt_time(day * PERIOD_S)[:10]} (row {row_id})"
        with self._lock:
            aead = self._aead_for(key_id)
            if aead is None:
                if not self._key_known_to_db(key_id):
                    return None
                raise DataCorrupt(
                    f"{where}: the data key is missing from the keystore",
                    hint="restore the keystore from a backup; other markers stay readable",
                )
        try:
            plain = codec.open_sealed(
                aead, sealed, marker_ad(self._keys.twin_id, row_id, sid, day, key_id)
            )
            doc = codec.decode_json(plain)
            source = doc["source"]
            items = [(float(t), str(text)) for t, text in doc["markers"]]
            if not isinstance(source, str) or int(doc["day"]) != day:
                raise ValueError("the row's source or day does not match its document")
        except InvalidTag as exc:
            raise DataCorrupt(
                f"{where} failed authentication (altered, moved or truncated)",
                hint="run 'edgetwin verify'; other markers stay readable",
            ) from exc
        except (codec.Undecodable, KeyError, TypeError, ValueError) as exc:
            raise DataCorrupt(
                f"{where} does not decode: {exc}", hint="run 'edgetwin verify'"
            ) from exc
        if self._marker_source_id(source) != sid:
            raise DataCorrupt(f"{where} belongs to another source", hint="run 'edgetwin verify'")
        if any(not math.isfinite(t) or day_of(t) != day for t, _ in items):
            raise DataCorrupt(
                f"{where} holds a marker outside its day", hint="run 'edgetwin verify'"
            )
        return _Row(row_id, sid, day, key_id, source, items)

    # -- forget, retention, rotation, verification ---------------------------------------

    def _forget_markers(
        self,
        *,
        source: str | None = None,
        before: float | None = None,
        exact: bool = True,
    ) -> ForgetReport:
        """Inside a transaction: destroy the keys and rows of all markers, of one ``source``,
        or of the days before ``before`` (with ``exact``, the markers of the day holding
        ``before`` that lie before it go too: the rest is re-sealed under a fresh key).
        Deleted marker rows count as records in the report."""
        report = ForgetReport()
        if source is not None:
            sid = self._marker_source_id(source)
            keys = [int(r[0]) for r in self._conn.execute(
                "SELECT id FROM dek WHERE scope = ?", (sid,))]
            cur = self._conn.execute("DELETE FROM marker WHERE source_id = ?", (sid,))
        elif before is not None:
            cut_day = math.floor(before / PERIOD_S)
            keys = [int(r[0]) for r in self._conn.execute(
                "SELECT id FROM dek WHERE period >= 0 AND period < ?"
                " AND scope IN (SELECT DISTINCT source_id FROM marker)", (cut_day,))]
            cur = self._conn.execute("DELETE FROM marker WHERE day < ?", (cut_day,))
            if exact and before > cut_day * PERIOD_S:
                report.merge(self._rekey_marker_day(cut_day, keep_from=before))
        else:
            keys = [int(r[0]) for r in self._conn.execute(
                "SELECT id FROM dek WHERE scope IN (SELECT DISTINCT source_id FROM marker)")]
            cur = self._conn.execute("DELETE FROM marker")
        report.records_deleted += cur.rowcount
        report.keys_destroyed += self._destroy_keys(keys)
        self._marker_groups.clear()
        return report

    def _rekey_marker_day(self, day: int, *, keep_from: float | None) -> ForgetReport:
        """Re-seal every marker row of ``day`` under fresh keys (dropping markers before
        ``keep_from``), then destroy the day's old keys."""
        report = ForgetReport()
        rows = self._conn.execute(
            "SELECT id, source_id, key_id, sealed FROM marker WHERE day = ? ORDER BY id", (day,)
        ).fetchall()
        sids = {bytes(r[1]) for r in rows}
        old_keys: list[int] = []
        for sid in sids:
            old_keys += [int(r[0]) for r in self._conn.execute(
                "SELECT id FROM dek WHERE scope = ? AND period = ?", (sid, day))]
            self._conn.execute(
                "UPDATE dek SET active = 0 WHERE scope = ? AND period = ?", (sid, day))
            self._active.pop((sid, day), None)
        for row_id, sid, key_id, sealed in rows:
            try:
                row = self._open_marker_row(
                    int(row_id), bytes(sid), day, int(key_id), bytes(sealed)
                )
            except DataCorrupt as exc:
                _LOGGER.warning("%s; dropped while re-keying", exc.message)
                row = None
            if row is not None and keep_from is not None:
                row.markers = [m for m in row.markers if m[0] >= keep_from]
            if row is None or not row.markers:
                self._conn.execute("DELETE FROM marker WHERE id = ?", (int(row_id),))
                report.records_deleted += 1
                continue
            self._reseal_marker_row(row)
        report.keys_destroyed += self._destroy_keys(old_keys)
        self._marker_groups.clear()
        return report

    def _reencrypt_all(self) -> ForgetReport:
        """Key rotation with re-encryption: markers first (their retired keys then protect
        nothing and go with the others)."""
        report = ForgetReport()
        days = [int(r[0]) for r in self._conn.execute("SELECT DISTINCT day FROM marker")]
        for day in days:
            report.merge(self._rekey_marker_day(day, keep_from=None))
        report.merge(super()._reencrypt_all())
        return report

    def _verify_markers(self, report: VerifyReport) -> None:
        try:
            with self._lock, self._db("reading markers"):
                rows = self._conn.execute(
                    "SELECT id, source_id, day, key_id, sealed FROM marker"
                ).fetchall()
        except DataCorrupt as exc:
            report.problems.append(Problem("marker", exc.message))
            return
        for row_id, sid, day, key_id, sealed in rows:
            report.count("marker_rows")
            try:
                row = self._open_marker_row(
                    int(row_id), bytes(sid), int(day), int(key_id), bytes(sealed)
                )
            except DataCorrupt as exc:
                report.problems.append(
                    Problem("marker", exc.message, t0=float(day * PERIOD_S),
                            t1=float((day + 1) * PERIOD_S))
                )
                continue
            if row is not None:
                report.count("markers", len(row.markers))


def _brief_text(text: object, limit: int = 40) -> str:
    s = str(text)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def sources_of(markers: Iterable[Marker]) -> list[str]:
    """The distinct sources of ``markers``, sorted."""
    return sorted({m.source for m in markers})
