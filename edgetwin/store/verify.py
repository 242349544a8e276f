"""Verification: walk the whole twin, decrypting everything, and list the damage."""

from __future__ import annotations

import math

import numpy as np
from cryptography.exceptions import InvalidTag

from edgetwin.errors import DataCorrupt
from edgetwin.store import codec
from edgetwin.store.audit import AuditChain
from edgetwin.store.chunks import Chunks
from edgetwin.store.db import DB_FILE
from edgetwin.store.keys import KEYSTORE_FILE
from edgetwin.store.records import Records
from edgetwin.store.reports import Problem, VerifyReport
from edgetwin.store.series import (
    BUCKET_S,
    BUCKETS_PER_PERIOD,
    KIND_FRAMES,
    KIND_SAMPLES,
    PERIOD_S,
    ChunkDamage,
    SeriesInfo,
    day_of,
)


class Verification(Chunks, Records, AuditChain):
    """verify() and the twin's authentication check at unlock."""

    def verify(self) -> VerifyReport:
        """Walk the whole twin, decrypting everything; list all damage found."""
        report = VerifyReport()
        self._verify_database(report)
        self._verify_keys(report)
        self._verify_series(report)
        self._verify_records(report)
        report.problems.extend(self.verify_audit())
        report.count("audit_entries", len(self._audit_rows_safe()))
        return report

    def _check_twin(self) -> None:
        rows = dict(self._conn.execute("SELECT k, v FROM meta").fetchall())
        twin_id = rows.get("twin_id")
        if twin_id is None or "check" not in rows:
            raise DataCorrupt(
                f"{self.home / DB_FILE} lacks its twin id",
                hint="the database was damaged; restore it or import an export bundle",
            )
        if bytes(twin_id) != self._keys.twin_id:
            raise DataCorrupt(
                f"{DB_FILE} and {KEYSTORE_FILE} in {self.home} belong to different twins",
                hint="put back the keystore that was created with this database",
            )
        try:
            codec.open_sealed(self._keys.check, bytes(rows["check"]), b"edgetwin/check/v1")
        except InvalidTag as exc:
            raise DataCorrupt(
                f"{DB_FILE} failed its authentication check",
                hint="the database was altered; run 'edgetwin verify'",
            ) from exc

    def _verify_database(self, report: VerifyReport) -> None:
        try:
            with self._lock, self._db("checking the database"):
                rows = self._conn.execute("PRAGMA integrity_check").fetchall()
        except DataCorrupt as exc:
            report.problems.append(Problem("database", exc.message))
            return
        for (msg,) in rows:
            if msg != "ok":
                report.problems.append(Problem("database", f"sqlite integrity: {msg}"))
        try:
            with self._lock, self._db("checking the twin"):
                self._check_twin()
        except DataCorrupt as exc:
            report.problems.append(Problem("database", exc.message))

    def _verify_keys(self, report: VerifyReport) -> None:
        try:
            with self._lock, self._db("reading data keys"):
                rows = self._conn.execute("SELECT id, scope, period FROM dek").fetchall()
        except DataCorrupt as exc:
            report.problems.append(Problem("keys", exc.message))
            return
        with self._lock:
            self._sync_keystore()
            for key_id, scope, period in rows:
                report.count("keys")
                try:
                    got = self._ks.unwrap_dek(self._keys, int(key_id))
                except DataCorrupt as exc:
                    report.problems.append(Problem("keystore", exc.message))
                    continue
                if got is None:
                    detail = f"data key {key_id} is missing from {KEYSTORE_FILE}"
                    report.problems.append(Problem("keystore", detail))
                elif (got[1], got[2]) != (bytes(scope), int(period)):
                    detail = f"data key {key_id}: its row in {DB_FILE} was altered"
                    report.problems.append(Problem("keys", detail))

    def _verify_series(self, report: VerifyReport) -> None:
        try:
            with self._lock, self._db("listing series"):
                rows = self._conn.execute(
                    "SELECT series_no, series_id, key_id, sealed FROM series"
                ).fetchall()
                known_sn = {int(r[0]) for r in rows}
                stray = self._conn.execute(
                    "SELECT series_no, COUNT(*), MIN(first_hour), MAX(last_hour) FROM chunk"
                    " GROUP BY series_no"
                ).fetchall()
        except DataCorrupt as exc:
            report.problems.append(Problem("series", exc.message))
            return
        for sn, count, b0, b1 in stray:
            if int(sn) not in known_sn:
                report.problems.append(
                    Problem("chunk", f"{count} chunk(s) belong to no known stream (#{sn})",
                            t0=float(b0 * BUCKET_S), t1=float((b1 + 1) * BUCKET_S))
                )
        for sn, sid, key_id, sealed in rows:
            report.count("series")
            try:
                series = self._open_series_row(int(sn), bytes(sid), int(key_id), bytes(sealed))
            except DataCorrupt as exc:
                report.problems.append(Problem("series", exc.message))
                continue
            if self._sid(series.kind, series.name) != bytes(sid):
                report.problems.append(
                    Problem("series", "description moved from another stream", stream=series.name)
                )
                continue
            self._verify_chunks(series, report)

    def _verify_chunks(self, series: SeriesInfo, report: VerifyReport) -> None:
        label = series.name if series.kind == KIND_SAMPLES else f"<{series.kind}>"
        widths = [len(c) for c, _ in series.layouts]
        seen: dict[int, list[float]] = {}
        damaged_days: set[int] = set()  # their row counts are unknowable
        try:
            for row in self._chunk_rows(series.sn, None, None):
                report.count("chunks")
                t0, t1 = float(row.b0 * BUCKET_S), float((row.b1 + 1) * BUCKET_S)
                try:
                    plain = self._open_chunk(series, row)
                    if plain is None:
                        continue
                    if series.kind == KIND_SAMPLES:
                        _, t, _v = codec.decode_samples(plain, widths)
                    elif series.kind == KIND_FRAMES:
                        t = np.array([f.t for f in codec.decode_frames(plain)])
                    else:
                        t = np.array([p.t for p in codec.decode_predictions(plain)])
                except (DataCorrupt, codec.Undecodable) as exc:
                    if isinstance(exc, ChunkDamage):
                        detail = exc.short
                    elif isinstance(exc, DataCorrupt):
                        detail = exc.message
                    else:
                        detail = f"chunk {row.seq} does not decode: {exc}"
                    report.problems.append(Problem("chunk", detail, label, t0, t1))
                    day = row.b0 // BUCKETS_PER_PERIOD
                    damaged_days.add(day)
                    seen.setdefault(day, [0, 0])[0] += 1
                    continue
                if row.seq >= series.next_seq:
                    detail = f"chunk {row.seq} is beyond the stream's end"
                    report.problems.append(Problem("chunk", detail, label, t0, t1))
                if t.size and (
                    math.floor(float(t.min()) / BUCKET_S) != row.b0
                    or math.floor(float(t.max()) / BUCKET_S) != row.b1
                ):
                    detail = f"chunk {row.seq} lies outside its time bucket"
                    report.problems.append(Problem("chunk", detail, label, t0, t1))
                day = day_of(float(t.min())) if t.size else row.b0 // BUCKETS_PER_PERIOD
                stats = seen.setdefault(day, [0, 0])
                stats[0] += 1
                stats[1] += int(t.size)
                report.count(series.kind, int(t.size))
        except DataCorrupt as exc:
            report.problems.append(Problem("chunk", exc.message, label))
            return
        for day, (chunks, rows, first_t, last_t) in sorted(series.periods.items()):
            got = seen.get(day, [0, 0])
            if int(chunks) != got[0] or (int(rows) != got[1] and day not in damaged_days):
                report.problems.append(
                    Problem(
                        "chunk",
                        f"{int(chunks) - got[0]} chunk(s) / {int(rows) - got[1]} row(s) missing "
                        f"(expected {int(chunks)} chunks, found {got[0]})",
                        label,
                        float(first_t),
                        float(last_t),
                    )
                )
        for day in seen:
            if day not in series.periods:
                report.problems.append(
                    Problem("chunk", "chunks present for a day the stream never wrote", label,
                            float(day * PERIOD_S), float((day + 1) * PERIOD_S))
                )

    def _verify_records(self, report: VerifyReport) -> None:
        try:
            with self._lock, self._db("reading records"):
                rows = self._conn.execute("SELECT rid, kh, key_id, sealed FROM record").fetchall()
        except DataCorrupt as exc:
            report.problems.append(Problem("record", exc.message))
            return
        for rid, kh, key_id, sealed in rows:
            report.count("records")
            try:
                doc = self._open_record(bytes(rid), bytes(kh), int(key_id), bytes(sealed), "?")
            except DataCorrupt as exc:
                report.problems.append(Problem("record", exc.message))
                continue
            if doc is None:
                continue
            kind, key = str(doc.get("kind")), str(doc.get("key"))
            if (
                self._keys.keyed_id(b"record", f"{kind}\x00{key}") != bytes(rid)
                or self._keys.keyed_id(b"record-kind", kind) != bytes(kh)
            ):
                report.problems.append(Problem("record", f"record {kind}/{key} was moved"))
