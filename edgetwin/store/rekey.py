"""Re-keying: re-encrypt a day of a series or a kind of records under fresh keys
and destroy the old ones (what forget, retention and key rotation build on).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edgetwin.errors import DataCorrupt
from edgetwin.store import codec
from edgetwin.store.audit import AuditChain
from edgetwin.store.chunks import Chunks
from edgetwin.store.records import Records
from edgetwin.store.reports import ForgetReport
from edgetwin.store.series import (
    BUCKET_S,
    BUCKETS_PER_PERIOD,
    KIND_FRAMES,
    KIND_SAMPLES,
    ChunkRow,
    SeriesInfo,
)

_LOGGER = logging.getLogger(__name__)

_DELETE_CHUNK = "DELETE FROM chunk WHERE series_no = ? AND seq = ?"


class Rekeying(Chunks, Records, AuditChain):
    """Rotate keys; re-encrypt days and records under fresh keys."""

    def rotate_keys(self, *, reencrypt: bool = False) -> ForgetReport:
        """Retire every data key: new writes get fresh keys.

        Without ``reencrypt`` old rows stay under their retired keys (still
        readable) until retention or a forget destroys them. With it, every
        chunk and record is re-encrypted under the new keys and the retired
        keys are destroyed.
        """
        report = ForgetReport()
        with self.transaction():
            self._conn.execute("UPDATE dek SET active = 0 WHERE active = 1")
            self._active.clear()
            for series in self._all_series_for_write():
                self._save_series(series)  # info re-sealed under a new info key
            if reencrypt:
                report = self._reencrypt_all()
            # retired info keys protect nothing now
            self._destroy_unused_keys(report, period=-1)
            self._append_audit(
                time.time(), "key_change", {"action": "rotate", "reencrypt": reencrypt}
            )
        return report

    def _rekey_day(
        self,
        series: SeriesInfo,
        day: int,
        *,
        keep_from: float | None,
        edit: Callable[[list[Any]], list[Any]] | None = None,
        gone: Callable[[ChunkRow], bool] | None = None,
    ) -> ForgetReport:
        """Re-encrypt one day of a series under a fresh key, dropping rows before
        ``keep_from`` (frames and predictions: keeping what ``edit`` returns for each
        chunk; a chunk ``gone`` picks is dropped undecoded); then destroy the day's old
        keys."""
        report = ForgetReport()
        old_keys = [
            int(r[0])
            for r in self._conn.execute(
                "SELECT id FROM dek WHERE scope = ? AND period = ?", (series.sid, day)
            )
        ]
        # retire the old keys so _key_for_write makes a fresh one
        self._conn.execute(
            "UPDATE dek SET active = 0 WHERE scope = ? AND period = ?", (series.sid, day)
        )
        self._active.pop((series.sid, day), None)
        lo, hi = day * BUCKETS_PER_PERIOD, (day + 1) * BUCKETS_PER_PERIOD - 1
        rows = [
            ChunkRow(int(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]), bytes(r[5]))
            for r in self._conn.execute(
                "SELECT series_no, seq, key_id, first_hour, last_hour, sealed FROM chunk "
                "WHERE series_no = ? AND first_hour >= ? AND first_hour <= ? ORDER BY seq",
                (series.sn, lo, hi),
            )
        ]
        stats = [0, 0, math.inf, -math.inf]
        widths = [len(c) for c, _ in series.layouts]
        for row in rows:
            if gone is not None and gone(row):
                self._conn.execute(_DELETE_CHUNK, (row.sn, row.seq))
                report.chunks_deleted += 1
                continue
            try:
                plain = self._open_chunk(series, row)
            except DataCorrupt as exc:
                plain = None
                _LOGGER.warning("%s; dropped while re-keying", exc.message)
            if plain is None:
                # damaged, or its key already gone: it cannot be carried over
                self._conn.execute(_DELETE_CHUNK, (row.sn, row.seq))
                report.chunks_deleted += 1
                continue
            if series.kind == KIND_SAMPLES:
                layout, t, values = codec.decode_samples(plain, widths)
                keep = np.ones(t.shape[0], dtype=bool) if keep_from is None else t >= keep_from
                n_keep = int(keep.sum())
                if n_keep and not keep.all():
                    plain = codec.encode_samples(layout, t[keep], values[keep])
                kept_t = t[keep]
            elif series.kind == KIND_FRAMES:
                frames = codec.decode_frames(plain)
                kept_f = _kept(frames, keep_from, edit, lambda f: f.t)
                n_keep = len(kept_f)
                if n_keep and kept_f is not frames:
                    plain = codec.encode_frames(kept_f)
                kept_t = np.array([f.t for f in kept_f])
            else:
                preds = codec.decode_predictions(plain)
                kept_p = _kept(preds, keep_from, edit, lambda p: p.t)
                n_keep = len(kept_p)
                if n_keep and kept_p is not preds:
                    plain = codec.encode_predictions(kept_p)
                kept_t = np.array([p.t for p in kept_p])
            if n_keep == 0:
                self._conn.execute(_DELETE_CHUNK, (row.sn, row.seq))
                report.chunks_deleted += 1
                continue
            key_id, aead = self._key_for_write(series.sid, day)
            t_min, t_max = float(kept_t.min()), float(kept_t.max())
            b0, b1 = math.floor(t_min / BUCKET_S), math.floor(t_max / BUCKET_S)
            sealed = codec.seal(
                aead, plain, codec.chunk_ad(self._keys.twin_id, series.sid, row.seq, key_id, b0, b1)
            )
            self._conn.execute(
                "UPDATE chunk SET key_id = ?, first_hour = ?, last_hour = ?, sealed = ?"
                " WHERE series_no = ? AND seq = ?",
                (key_id, b0, b1, sealed, row.sn, row.seq),
            )
            report.chunks_reencrypted += 1
            stats[0] += 1
            stats[1] += n_keep
            stats[2] = min(stats[2], t_min)
            stats[3] = max(stats[3], t_max)
        old_rows = int(series.periods.get(day, [0, 0])[1])
        self._count_rows(report, series.kind, old_rows - int(stats[1]))
        if stats[0]:
            series.periods[day] = stats
        else:
            series.periods.pop(day, None)
        report.keys_destroyed += self._destroy_keys(old_keys)
        return report

    def _rekey_records(self, kh: bytes) -> ForgetReport:
        """Re-seal the records of one kind under a fresh key and destroy the old ones."""
        report = ForgetReport()
        old = [int(r[0]) for r in self._conn.execute("SELECT id FROM dek WHERE scope = ?", (kh,))]
        self._conn.execute("UPDATE dek SET active = 0 WHERE scope = ?", (kh,))
        self._active.pop((kh, -1), None)
        rows = self._conn.execute(
            "SELECT rid, key_id, sealed FROM record WHERE kh = ?", (kh,)
        ).fetchall()
        for rid, key_id, sealed in rows:
            try:
                doc = self._open_record(bytes(rid), kh, int(key_id), bytes(sealed), "?")
            except DataCorrupt:
                doc = None
            if doc is None:  # unreadable: it cannot be carried over
                self._conn.execute("DELETE FROM record WHERE rid = ?", (rid,))
                report.records_deleted += 1
                continue
            new_id, aead = self._key_for_write(kh, -1)
            ad = codec.record_ad(self._keys.twin_id, bytes(rid), kh, new_id)
            self._conn.execute(
                "UPDATE record SET key_id = ?, sealed = ? WHERE rid = ?",
                (new_id, codec.seal(aead, codec.encode_json(doc), ad), rid),
            )
        report.keys_destroyed += self._destroy_keys(old)
        return report

    def _reencrypt_all(self) -> ForgetReport:
        report = ForgetReport()
        for series in self._all_series_for_write():
            for day in sorted(series.periods):
                report.merge(self._rekey_day(series, day, keep_from=None))
            self._save_series(series)
        rows = self._conn.execute("SELECT rid, kh, key_id, sealed FROM record").fetchall()
        for rid, kh, key_id, sealed in rows:
            doc = self._open_record(bytes(rid), bytes(kh), int(key_id), bytes(sealed), "?")
            if doc is None:
                continue
            new_id, aead = self._key_for_write(bytes(kh), -1)
            ad = codec.record_ad(self._keys.twin_id, bytes(rid), bytes(kh), new_id)
            resealed = codec.seal(aead, codec.encode_json(doc), ad)
            self._conn.execute(
                "UPDATE record SET key_id = ?, sealed = ? WHERE rid = ?", (new_id, resealed, rid)
            )
        self._destroy_unused_keys(report, period=None)
        return report

    def _count_rows(self, report: ForgetReport, kind: str, rows: int) -> None:
        if kind == KIND_SAMPLES:
            report.samples_deleted += rows
        elif kind == KIND_FRAMES:
            report.frames_deleted += rows
        else:
            report.predictions_deleted += rows


def _kept(
    items: list[Any],
    keep_from: float | None,
    edit: Callable[[list[Any]], list[Any]] | None,
    t_of: Callable[[Any], float],
) -> list[Any]:
    """What a re-keyed chunk keeps: ``items`` itself (the same list) when unchanged."""
    if edit is not None:
        items = edit(items)
    if keep_from is None or all(t_of(x) >= keep_from for x in items):
        return items
    return [x for x in items if t_of(x) >= keep_from]
