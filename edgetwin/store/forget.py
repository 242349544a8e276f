"""Forget and retention: destroy the keys and rows of a stream, of everything
before a time, or of all data, and with them what was computed from it (the
policy is in :mod:`edgetwin.store.derived`).
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgetwin.config import RetentionConfig
from edgetwin.disk import disk_free_bytes, freelist_bytes
from edgetwin.errors import DataCorrupt, UsageError
from edgetwin.store import codec
from edgetwin.store.derived import (
    DERIVED_RECORD_KINDS,
    IMPUTE_REACH_S,
    Taint,
    stale_record,
    stream_spans,
)
from edgetwin.store.keys import Keystore, MasterKeys
from edgetwin.store.markers import MarkerRows
from edgetwin.store.reports import ForgetReport, RoomReport, fmt_time
from edgetwin.store.series import (
    BUCKET_S,
    BUCKETS_PER_PERIOD,
    KIND_FRAMES,
    KIND_PREDICTIONS,
    KIND_SAMPLES,
    KINDS,
    PERIOD_S,
    ChunkRow,
    SeriesInfo,
)

# make_room() never destroys the raw samples of today or yesterday (UTC): at least a day
PROTECTED_RAW_DAYS = 2


class Forgetting(MarkerRows):
    """forget(), apply_retention() and make_room()."""

    def __init__(
        self, home: Path, keystore: Keystore, keys: MasterKeys, conn: sqlite3.Connection
    ) -> None:
        super().__init__(home, keystore, keys, conn)
        self._records_cutoff_day: int | None = None  # retention's last derived-record check

    def forget(
        self, *, stream: str | None = None, before: float | None = None, everything: bool = False
    ) -> ForgetReport:
        """Destroy the data keys of a stream, of everything before a time, or of all
        data; then the rows. Exactly one of the three.

        What was computed from the forgotten data goes in the same transaction
        (:mod:`edgetwin.store.derived`): its feature values are shredded from the
        frames, the forecasts and derived records that used them are deleted, and
        the days of frames and forecasts that changed are re-encrypted under fresh
        keys so the old ciphertext cannot be opened. Buffered appends are committed
        first, so nothing buffered outlives the forget either.
        """
        chosen = sum((stream is not None, before is not None, everything))
        if chosen != 1:
            raise UsageError("forget needs exactly one of: a stream, a date, or everything")
        if before is not None and not math.isfinite(before):
            raise UsageError("forget --before needs a finite time")
        report = ForgetReport()
        with self.transaction():
            if self._pending_markers:
                self._write_pending_markers()
            if self.pending_rows():
                self._write_pending()
            if everything:
                markers = self._forget_markers()
                report = self._forget_everything()
                report.merge(markers)
                self._append_audit(time.time(), "forget", {"scope": "all", **_brief(report)})
            elif stream is not None:
                sid = self._sid(KIND_SAMPLES, stream)
                row = self._conn.execute(
                    "SELECT series_no FROM series WHERE series_id = ?", (sid,)
                ).fetchone()
                # a marker source (cli, xdf:<stream>, lsl:<name>) is forgotten by its name too
                marked = self.has_marker_source(stream)
                if row is None and not marked:
                    raise UsageError(f"no stream or marker source named {stream!r} in this twin")
                if row is None:
                    report = self._forget_markers(source=stream)
                    self._append_audit(
                        time.time(),
                        "forget",
                        {"scope": "stream", "stream_ref": sid.hex()[:16], **_brief(report)},
                    )
                    return report
                try:
                    series = self._load_series_for_write(KIND_SAMPLES, stream, create=False)
                except DataCorrupt:
                    series = None  # damaged description: forget it all the same
                taint = self._stream_taint(int(row[0]), series)
                rows = series.totals()[1] if series is not None else 0
                report = self._forget_series(int(row[0]), sid, KIND_SAMPLES, rows)
                report.streams_removed.append(stream)
                report.merge(self._forget_derived(taint))
                if marked:
                    report.merge(self._forget_markers(source=stream))
                self._append_audit(
                    time.time(),
                    "forget",
                    {"scope": "stream", "stream_ref": sid.hex()[:16], **_brief(report)},
                )
            else:
                assert before is not None
                for kind in KINDS:
                    report.merge(self._forget_before(kind, before, exact=True))
                report.merge(self._forget_markers(before=before, exact=True))
                taint = Taint.of(None, [(-math.inf, before)], frames_gone=True)
                report.merge(self._forget_derived(taint))
                self._append_audit(
                    time.time(), "forget", {"scope": "before", "before": before, **_brief(report)}
                )
        return report

    def apply_retention(self, now: float, retention: RetentionConfig) -> ForgetReport:
        """Destroy whole days older than the configured limits (0 keeps forever).

        A day goes once all of it is older than the limit, so data lives at
        most one day past it. Each tier keeps its own limit (features are the
        summary meant to outlive raw samples); derived records without a tier of
        their own (DP summaries, a stale inference state) go with the feature
        days they were computed from. Audited only when something was destroyed.
        """
        report = ForgetReport()
        limits = (
            (KIND_SAMPLES, retention.raw_days),
            (KIND_FRAMES, retention.features_days),
            (KIND_PREDICTIONS, retention.predictions_days),
        )
        with self.transaction():
            for kind, days in limits:
                if days > 0:
                    report.merge(self._forget_before(kind, now - days * 86400.0, exact=False))
            if retention.features_days > 0:  # markers annotate the timeline: its tier
                cutoff_m = now - retention.features_days * 86400.0
                report.merge(self._forget_markers(before=cutoff_m, exact=False))
            day = math.floor((now - retention.features_days * 86400.0) / PERIOD_S)
            if retention.features_days > 0 and day != self._records_cutoff_day:
                # the same whole-day rule as the frames: the day must lie wholly before;
                # checked once per cutoff day (every derived record is decrypted)
                cutoff = float(day * PERIOD_S)
                report.merge(self._drop_records(lambda k, v: stale_record(k, v, cutoff)))
            if not report.empty:
                self._append_audit(time.time(), "retention", _brief(report))
        if retention.features_days > 0:
            self._records_cutoff_day = day  # committed
        return report

    def make_room(
        self, now: float, min_free_bytes: int, *,
        disk_free: Callable[[Path], int] | None = None,
    ) -> RoomReport:
        """Destroy the oldest whole days of raw samples, one day per transaction, while the
        twin has less than ``min_free_bytes`` to grow into: free space on its disk plus the
        pages ``twin.db`` holds free (a deleted row frees pages inside the file, which new
        rows reuse; the file never shrinks). A day goes as retention takes it (keys, then
        rows), audited as ``retention`` with the reason. Today's and yesterday's raw samples
        (UTC) are never destroyed for room, nor any feature, forecast or record: ``short``
        says when only those are left and the disk is still under the floor. ``disk_free``
        (default :func:`disk_free_bytes`) tells the free space of the disk holding a path."""
        disk_free = disk_free_bytes if disk_free is None else disk_free
        on_disk = disk_free(self.home)
        if on_disk >= min_free_bytes:  # the usual case: no need to ask the database
            return RoomReport(min_free_bytes, on_disk, on_disk)
        free = self._room(disk_free)
        report = RoomReport(min_free_bytes, free, free)
        newest_allowed = math.floor(now / PERIOD_S) - PROTECTED_RAW_DAYS
        while free < min_free_bytes:
            with self.transaction():
                days = [d for s in self._all_series_for_write() if s.kind == KIND_SAMPLES
                        for d in s.periods]
                day = min(days, default=None)
                if day is None or day > newest_allowed:
                    report.short = True
                    break
                sub = self._forget_before(KIND_SAMPLES, (day + 1) * PERIOD_S, exact=False)
                label = fmt_time(day * PERIOD_S)[:10]
                self._append_audit(time.time(), "retention", {
                    "reason": "disk space", "raw_day": label, "free_bytes": free,
                    "min_free_bytes": min_free_bytes, **_brief(sub)})
            report.days.append(label)
            report.forgot.merge(sub)
            free = self._room(disk_free)
        report.free_after = free
        return report

    def _room(self, disk_free: Callable[[Path], int]) -> int:
        """Free bytes on the twin's disk plus those of the free pages inside ``twin.db``."""
        with self._lock, self._db("reading the free pages"):
            free_pages = freelist_bytes(self._conn)
        return disk_free(self.home) + free_pages

    def _forget_series(self, sn: int, sid: bytes, kind: str, rows: int) -> ForgetReport:
        report = ForgetReport()
        keys = [int(r[0]) for r in self._conn.execute("SELECT id FROM dek WHERE scope = ?", (sid,))]
        report.keys_destroyed = self._destroy_keys(keys)
        cur = self._conn.execute("DELETE FROM chunk WHERE series_no = ?", (sn,))
        report.chunks_deleted = cur.rowcount
        self._count_rows(report, kind, rows)
        self._conn.execute("DELETE FROM series WHERE series_no = ?", (sn,))
        self._series_cache.pop(sid, None)
        return report

    def _forget_everything(self) -> ForgetReport:
        report = ForgetReport()
        for series in self._all_series("skip"):
            sub = self._forget_series(series.sn, series.sid, series.kind, series.totals()[1])
            if series.kind == KIND_SAMPLES:
                sub.streams_removed.append(series.name)
            report.merge(sub)
        self._series_cache.clear()
        cur = self._conn.execute("DELETE FROM record")
        report.records_deleted = cur.rowcount
        # record keys, orphans of interrupted work: every remaining key goes
        keys = [int(r[0]) for r in self._conn.execute("SELECT id FROM dek")]
        report.keys_destroyed += self._destroy_keys(keys)
        self._conn.execute("DELETE FROM chunk")
        self._conn.execute("DELETE FROM series")
        return report

    def _stream_taint(self, sn: int, series: SeriesInfo | None) -> Taint:
        """What a stream could have fed, and when: its channels and its chunks' spans."""
        hours = [
            (int(b0), int(b1))
            for b0, b1 in self._conn.execute(
                "SELECT first_hour, last_hour FROM chunk WHERE series_no = ?", (sn,)
            )
        ]
        if series is None:  # unreadable description: every feature, hour precision
            return Taint.of_stream(None, stream_spans(hours, None))
        channels = {c for layout, _ in series.layouts for c in layout}
        return Taint.of_stream(channels, stream_spans(hours, series.periods), series.name)

    def _forget_derived(self, taint: Taint) -> ForgetReport:
        """Shred what ``taint`` fed from the frames, drop the forecasts and derived records
        that read it; every day that may have changed is re-encrypted under a fresh key."""
        report = ForgetReport()
        if taint.empty:
            return report
        frames = self._load_series_for_write(KIND_FRAMES, "", create=False)
        hits: list[float] = []
        if frames is not None:
            lo, hi = taint.reach()
            for day in self._days_within(frames, lo, hi):
                for chunk in self._day_items(frames, day, codec.decode_frames):
                    hits.extend(taint.fed_times(chunk))
        taint = taint.with_hits(hits)
        report.frames_shredded = len(taint.hits)
        preds = self._load_series_for_write(KIND_PREDICTIONS, "", create=False)
        def every_forecast(row: ChunkRow) -> bool:
            # the chunk's clear hours, narrowed to its day's first and last forecast
            assert preds is not None
            lo, hi = float(row.b0 * BUCKET_S), float((row.b1 + 1) * BUCKET_S)
            stats = preds.periods.get(row.b0 // BUCKETS_PER_PERIOD)
            if stats is not None:
                lo, hi = max(lo, float(stats[2])), min(hi, float(stats[3]))
            return taint.feeds_every_forecast(lo, hi)

        for series, edit, gone, reach in (
            (frames, taint.shred_frames, None, IMPUTE_REACH_S),
            # a forecast's context is at most a day here
            (preds, taint.drop_forecasts, every_forecast, IMPUTE_REACH_S + PERIOD_S),
        ):
            if series is None:
                continue
            # the days holding a fed value or whose model inputs may have read one: each is
            # decoded once and re-keyed (one that turns out unchanged just gets a fresh key)
            days = [
                day for day, (_c, rows, first, last) in sorted(series.periods.items())
                if rows and taint.read_by_model(first - reach, last)
            ]
            for day in days:
                report.merge(self._rekey_day(series, day, keep_from=None, edit=edit, gone=gone))
            if days:
                self._save_series(series)
        report.merge(self._drop_records(taint.fed_record))
        return report

    def _days_within(self, series: SeriesInfo, lo: float, hi: float) -> list[int]:
        return sorted(
            day for day, (_c, rows, first, last) in series.periods.items()
            if rows and first <= hi and last >= lo
        )

    def _day_items(
        self, series: SeriesInfo, day: int, decode: Callable[[bytes], list[Any]]
    ) -> Iterator[list[Any]]:
        """The decoded chunks of one day, one list each (damaged ones skipped, logged)."""
        lo, hi = day * BUCKETS_PER_PERIOD, (day + 1) * BUCKETS_PER_PERIOD - 1
        for row in self._chunk_rows(series.sn, lo * BUCKET_S, (hi + 1) * BUCKET_S - 1):
            if lo <= row.b0 <= hi:
                items = self._decode_row(series, row, "skip", decode)
                if items is not None:
                    yield items

    def _drop_records(self, drop: Callable[[str, dict[str, Any]], bool]) -> ForgetReport:
        """Delete the derived records ``drop`` picks (damaged ones too: they cannot be
        checked), then re-key their kind so the deleted ciphertext cannot be opened."""
        report = ForgetReport()
        for kind in DERIVED_RECORD_KINDS:
            kh = self._keys.keyed_id(b"record-kind", kind)
            rows = self._conn.execute(
                "SELECT rid, key_id, sealed FROM record WHERE kh = ?", (kh,)
            ).fetchall()
            gone = []
            for rid, key_id, sealed in rows:
                try:
                    doc = self._open_record(bytes(rid), kh, int(key_id), bytes(sealed), f"{kind}/?")
                except DataCorrupt:
                    doc = {"value": None}
                if doc is None:
                    continue
                value = doc.get("value")
                if not isinstance(value, dict) or drop(kind, value):
                    gone.append(bytes(rid))
            if not gone:
                continue
            self._conn.executemany("DELETE FROM record WHERE rid = ?", [(r,) for r in gone])
            report.records_deleted += len(gone)
            report.merge(self._rekey_records(kh))
        return report

    def _forget_before(self, kind: str, cutoff: float, *, exact: bool) -> ForgetReport:
        """Destroy the days of every ``kind`` series wholly before ``cutoff``; with
        ``exact``, re-encrypt the surviving part of the day holding ``cutoff`` under a
        fresh key and destroy the old one."""
        report = ForgetReport()
        cut_day = math.floor(cutoff / PERIOD_S)
        for series in self._all_series_for_write():
            if series.kind != kind:
                continue
            changed = False
            keys = [
                int(r[0])
                for r in self._conn.execute(
                    "SELECT id FROM dek WHERE scope = ? AND period >= 0 AND period < ?",
                    (series.sid, cut_day),
                )
            ]
            if keys:
                report.keys_destroyed += self._destroy_keys(keys)
                cur = self._conn.execute(
                    "DELETE FROM chunk WHERE series_no = ? AND first_hour < ?",
                    (series.sn, cut_day * BUCKETS_PER_PERIOD),
                )
                report.chunks_deleted += cur.rowcount
                changed = True
            for day in [d for d in series.periods if d < cut_day]:
                self._count_rows(report, kind, int(series.periods.pop(day)[1]))
                changed = True
            if exact and cutoff > cut_day * PERIOD_S and cut_day in series.periods:
                sub = self._rekey_day(series, cut_day, keep_from=cutoff)
                report.merge(sub)
                changed = True
            if changed:
                self._save_series(series)
        return report


def _brief(report: ForgetReport) -> dict[str, Any]:
    return {
        "keys_destroyed": report.keys_destroyed,
        "chunks_deleted": report.chunks_deleted,
        "records_deleted": report.records_deleted,
        "frames_shredded": report.frames_shredded,
        "predictions_deleted": report.predictions_deleted,
    }
