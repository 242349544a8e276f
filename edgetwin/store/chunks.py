"""Chunks: time series buffered in memory, sealed per series and UTC day into
``chunk`` rows at :meth:`Chunks.commit`, and read back a page of rows at a time.
How often a series' description is re-sealed: :mod:`edgetwin.store.tails`.
"""
from __future__ import annotations

import functools
import heapq
import itertools
import logging
import math
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, cast

import numpy as np
from cryptography.exceptions import InvalidTag

from edgetwin.errors import DataCorrupt, MalformedInput, UsageError
from edgetwin.store import codec
from edgetwin.store.core import OnCorrupt
from edgetwin.store.keys import Keystore, MasterKeys
from edgetwin.store.reports import fmt_time
from edgetwin.store.series import (
    BUCKET_S,
    BUCKETS_PER_PERIOD,
    KIND_FRAMES,
    KIND_PREDICTIONS,
    KIND_SAMPLES,
    MAX_CHUNK_CELLS,
    MAX_CHUNK_ROWS,
    PAGE,
    PERIOD_S,
    PREDICTIONS_PER_CHUNK,
    ChunkDamage,
    ChunkRow,
    SeriesInfo,
    day_of,
)
from edgetwin.store.tails import SeriesTails
from edgetwin.types import (
    EARLIEST_T,
    LATEST_T,
    FeatureFrame,
    FloatArray,
    Prediction,
    SampleBatch,
    time_out_of_range,
)

_LOGGER = logging.getLogger(__name__)

_minimum, _maximum, _dot = np.minimum.reduce, np.maximum.reduce, np.dot
assert EARLIEST_T == -LATEST_T
_SCALE = 1e-160  # (t * _SCALE) ** 2 neither overflows nor loses precision near 1e11
_SQUARES_OK = 0.99 * (LATEST_T * _SCALE) ** 2  # a sum of squares at most this: |t| < 1e11
# A commit inserts its sealed chunks in one statement, or, once they pass this size (a
# catch-up after a stall, the wait of a full disk), as they pass it: so it never holds a
# second copy of a long wait (SQLite keeps ~2 MiB of pages in its cache and writes the rest to
# the WAL as they come, which on a full disk fails there, before the rest is sealed).
_INSERT_AT_BYTES = 1 << 20


def _held_bytes(batch: SampleBatch | PackedSamples) -> int:
    """Memory a buffered batch holds in its arrays (times and values), or packed."""
    if isinstance(batch, PackedSamples):
        return batch.nbytes
    return batch.t.nbytes + batch.values.nbytes


class PackedSamples:
    """Consecutive buffered batches of one stream, packed with the chunk codec (lossless) while
    commits fail: a full disk can last hours, and what waits for it in memory is then a
    fraction of the raw float64 arrays (the serial bridge's ADC counts ~4x smaller, noise-like
    EEG less). The blob is a chunk's plaintext for the stream's first layout: a try to commit
    seals it as it is (:meth:`Chunks._packed_rows`), without decoding and encoding again."""

    __slots__ = ("blob", "channels", "first_t", "meta", "rows", "stream", "t_max", "t_min",
                 "units")

    def __init__(self, batches: Sequence[SampleBatch]) -> None:
        """``batches``: consecutive ones of one stream with the same channels, units and meta."""
        first = batches[0]
        self.stream, self.channels, self.units = first.stream, first.channels, first.units
        self.meta = first.meta
        if len(batches) == 1:
            t, values = first.t, first.values
        else:
            t = np.concatenate([b.t for b in batches])
            values = np.concatenate([b.values for b in batches])
        affine = adc_affine(first) if first.meta else None
        self.blob = codec.encode_samples(0, t, values, affine)
        self.rows = int(t.shape[0])
        self.first_t = float(t[0])
        self.t_min, self.t_max = float(_minimum(t)), float(_maximum(t))

    def __len__(self) -> int:
        return self.rows

    @property
    def nbytes(self) -> int:
        return len(self.blob)

    def unpack(self) -> SampleBatch:
        _, t, values = codec.decode_samples(self.blob, [len(self.channels)])
        return SampleBatch(self.stream, self.channels, self.units, t, values, self.meta)


ChunkRowValues = tuple[int, int, int, int, int, bytes]  # series_no, seq, key_id, b0, b1, sealed


class _ChunkRows:
    """A commit's sealed chunks on their way into the chunk table: inserted in one statement
    at the end, or, once they pass :data:`_INSERT_AT_BYTES`, as they pass it (between packs
    and streams)."""

    __slots__ = ("_conn", "count", "held", "rows")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.rows: list[ChunkRowValues] = []
        self.held = 0  # bytes sealed and not yet inserted
        self.count = 0  # rows appended in all

    def append(self, row: ChunkRowValues) -> None:
        self.rows.append(row)
        self.held += len(row[5])
        self.count += 1

    def let_go_if_large(self) -> None:
        if self.held > _INSERT_AT_BYTES:
            self.insert()

    def insert(self) -> None:
        self._conn.executemany(
            "INSERT INTO chunk (series_no, seq, key_id, first_hour, last_hour, sealed)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            self.rows,
        )
        self.rows, self.held = [], 0


class Chunks(SeriesTails):
    """Append and read samples, feature frames and predictions."""

    def __init__(
        self, home: Path, keystore: Keystore, keys: MasterKeys, conn: sqlite3.Connection
    ) -> None:
        super().__init__(home, keystore, keys, conn)
        # a stream's buffered batches in arrival order; packed ones (commits failed) first
        self._pending: dict[str, list[SampleBatch | PackedSamples]] = {}
        self._pending_frames: list[FeatureFrame] = []
        self._pending_preds: list[Prediction] = []

    def append_samples(self, batch: SampleBatch) -> None:
        """Buffer a batch; durable after the next :meth:`commit`."""
        if not batch.stream:
            raise MalformedInput("a sample batch has an empty stream name")
        t = batch.t
        if t.shape[0] == 0:
            return
        # Cheap on the hot path (appends run a few thousand times a second): the sum of
        # squares bounds every |t| (NaN and inf fail the comparison; scaled down first so
        # no square overflows); the exact checks, and which error, only when it does not
        # settle it (more than ~3,400 rows of today's times).
        if t.dtype.kind != "f" or not float(_dot(u := t * _SCALE, u)) <= _SQUARES_OK:
            lo, hi = float(_minimum(t)), float(_maximum(t))
            if not (lo >= EARLIEST_T and hi <= LATEST_T):
                self._refuse_times(batch, lo, hi)
        with self._lock:
            got = self._pending.get(batch.stream)
            if got is None:
                self._pending[batch.stream] = [batch]
            else:
                got.append(batch)

    @staticmethod
    def _refuse_times(batch: SampleBatch, lo: float, hi: float) -> NoReturn:
        if not np.isfinite(batch.t).all():
            raise MalformedInput(
                f"stream {batch.stream!r}: a batch holds non-finite timestamps",
                hint="fix the source or the recording",
            )
        bad = lo if lo < EARLIEST_T else hi
        raise MalformedInput(
            f"stream {batch.stream!r}: a batch holds a time outside the years -1200..5138 "
            f"(±1e11 s): {bad!r} s; none of it was stored",
            hint="the source's clock or the recording's time column is broken",
        )

    def append_frames(self, frames: Sequence[FeatureFrame]) -> None:
        """Buffer feature frames; durable after the next :meth:`commit`."""
        for f in frames:
            if time_out_of_range(f.t):
                raise MalformedInput(f"a feature frame's time {f.t!r} is not finite or not "
                                     "within the years -1200..5138 (±1e11 s); no frame of "
                                     "this call was stored")
        with self._lock:
            self._pending_frames.extend(frames)

    def append_predictions(self, preds: Sequence[Prediction]) -> None:
        """Buffer predictions; durable after the next :meth:`commit`."""
        for p in preds:
            if time_out_of_range(p.t):
                raise MalformedInput(f"a prediction's time {p.t!r} is not finite or not "
                                     "within the years -1200..5138 (±1e11 s); no prediction "
                                     "of this call was stored")
        with self._lock:
            self._pending_preds.extend(preds)

    def pending_rows(self) -> int:
        """Samples, frames and predictions buffered but not yet committed."""
        with self._lock:
            return (
                sum(len(b) for bs in self._pending.values() for b in bs)
                + len(self._pending_frames)
                + len(self._pending_preds)
            )

    def pending_sample_bytes(self) -> int:
        """Memory held by buffered, uncommitted sample batches (times and values)."""
        with self._lock:
            return sum(_held_bytes(b) for bs in self._pending.values() for b in bs)

    def shed_oldest_samples(self, keep_bytes: int) -> dict[str, int]:
        """Drop the oldest buffered sample batches, across streams, until at most
        ``keep_bytes`` remain; the rows dropped, by stream.

        For a daemon whose commits keep failing (a disk full for hours): without a bound the
        buffer grows by ~490 MB an hour at the reference load until the kernel kills the
        daemon, and then everything buffered is lost. Frames, predictions and markers, a few
        per step, are kept.
        """
        with self._lock:
            pending = self._pending
            held = sum(_held_bytes(b) for bs in pending.values() for b in bs)
            heap = [(bs[0].first_t, name) for name, bs in pending.items() if bs]
            heapq.heapify(heap)
            cut: dict[str, int] = {}  # batches dropped from the front, by stream
            shed: dict[str, int] = {}
            while held > keep_bytes and heap:
                _, name = heapq.heappop(heap)
                batches, i = pending[name], cut.get(name, 0)
                oldest = batches[i]
                held -= _held_bytes(oldest)
                shed[name] = shed.get(name, 0) + len(oldest)
                cut[name] = i + 1
                if i + 1 < len(batches):
                    heapq.heappush(heap, (batches[i + 1].first_t, name))
            for name, n in cut.items():
                if n < len(pending[name]):
                    pending[name] = pending[name][n:]
                else:
                    del pending[name]
            return shed

    def commit(self) -> None:
        """Make every buffered append durable in one transaction.

        On failure (e.g. StoreFull) nothing is written and the buffer is kept,
        so a later commit can retry; its sample batches are packed meanwhile
        (:class:`PackedSamples`).
        """
        with self._lock:
            if not (self._pending or self._pending_frames or self._pending_preds):
                return
            try:
                with self.transaction():
                    self._write_pending()
            except Exception:
                self._pack_pending()
                raise

    def _pack_pending(self) -> None:
        """Pack each stream's raw batches, consecutive ones that share channels, units and meta
        together; the packed ones are always the oldest (packed at an earlier failure), so
        only the raw tail is new. On any failure to pack, the raw batches stay as they were."""
        for name, batches in list(self._pending.items()):
            raw_from = _packed_prefix(batches)
            if raw_from == len(batches):
                continue
            raw = cast("list[SampleBatch]", batches[raw_from:])
            try:
                packed = batches[:raw_from] + [
                    PackedSamples(list(run))
                    for _, run in itertools.groupby(raw, key=lambda b: (b.channels, b.units,
                                                                        b.meta))
                ]
            except Exception:  # packing only saves memory: never lose data to it
                _LOGGER.exception("packing the buffered samples of %s failed; kept raw", name)
                continue
            self._pending[name] = packed

    def read_samples(
        self,
        stream: str,
        t0: float | None = None,
        t1: float | None = None,
        *,
        on_corrupt: OnCorrupt = "raise",
    ) -> Iterator[SampleBatch]:
        """Committed batches of ``stream`` with ``t0 <= t <= t1``, one per stored chunk.

        Chunks come in order of their first hour, then of writing. A damaged
        chunk raises DataCorrupt naming the stream and time span, or is
        skipped (logged) with ``on_corrupt="skip"``.
        """
        series = self._read_series_for_chunks(KIND_SAMPLES, stream)
        if series is None:
            known = ", ".join(s.name for s in self.streams(on_corrupt="skip")) or "none"
            raise UsageError(f"no stream named {stream!r} in this twin", hint=f"streams: {known}")
        return self._iter_samples(series, t0, t1, on_corrupt)

    def read_frames(
        self, t0: float | None = None, t1: float | None = None, *, on_corrupt: OnCorrupt = "raise"
    ) -> Iterator[FeatureFrame]:
        """Committed feature frames with ``t0 <= t <= t1``, oldest hour first."""
        series = self._read_series_for_chunks(KIND_FRAMES, "")
        if series is None:
            return iter(())
        return self._iter_decoded(
            series, t0, t1, on_corrupt, codec.decode_frames, lambda f: f.t
        )

    def iter_frame_columns(
        self, t0: float | None = None, t1: float | None = None, *, on_corrupt: OnCorrupt = "raise"
    ) -> Iterator[codec.FrameColumns]:
        """Committed feature frames with ``t0 <= t <= t1`` as arrays, one block per stored
        chunk, oldest hour first: :meth:`read_frames` without an object per frame (a month
        at 1 Hz is 2.6 M frames), for charts and reports."""
        series = self._read_series_for_chunks(KIND_FRAMES, "")
        if series is None:
            return
        for row in self._chunk_rows(series.sn, t0, t1):
            cols = self._decode_row(series, row, on_corrupt, codec.decode_frame_columns)
            if cols is None:
                continue
            keep = np.ones(cols.t.shape[0], dtype=bool)
            if t0 is not None:
                keep &= cols.t >= t0
            if t1 is not None:
                keep &= cols.t <= t1
            if keep.any():
                yield cols if keep.all() else cols.rows(keep)

    def read_predictions(
        self, last: int | None = None, t0: float | None = None, *, on_corrupt: OnCorrupt = "raise"
    ) -> list[Prediction]:
        """Committed predictions with ``t >= t0``, oldest first; only the newest ``last``."""
        series = self._read_series_for_chunks(KIND_PREDICTIONS, "")
        if series is None:
            return []
        if last is None:
            return list(
                self._iter_decoded(
                    series, t0, None, on_corrupt, codec.decode_predictions, lambda p: p.t
                )
            )
        if last <= 0:
            return []
        found: list[Prediction] = []
        for row in self._chunk_rows(series.sn, t0, None, descending=True):
            if len(found) >= last:
                # later rows start no later than this one and end within its day
                found.sort(key=lambda p: p.t)
                found = found[-last:]
                if row.b0 + BUCKETS_PER_PERIOD < math.floor(found[0].t / BUCKET_S):
                    break
            preds = self._decode_row(series, row, on_corrupt, codec.decode_predictions)
            if preds is None:
                continue
            found.extend(p for p in preds if t0 is None or p.t >= t0)
        found.sort(key=lambda p: p.t)
        return found[-last:]

    def iter_predictions(
        self,
        t0: float | None = None,
        t1: float | None = None,
        *,
        on_corrupt: OnCorrupt = "raise",
        explained: bool = True,
    ) -> Iterator[Prediction]:
        """Committed predictions with ``t0 <= t <= t1``, chunk by chunk (flat memory).
        ``explained=False``: without attention, influence and imputed spans (cheaper)."""
        series = self._read_series_for_chunks(KIND_PREDICTIONS, "")
        if series is None:
            return iter(())
        decode = codec.decode_predictions
        if not explained:
            decode = functools.partial(codec.decode_predictions, explained=False)
        return self._iter_decoded(series, t0, t1, on_corrupt, decode, lambda p: p.t)

    def _write_pending(self) -> None:
        pending, frames, preds = self._pending, self._pending_frames, self._pending_preds
        self._pending, self._pending_frames, self._pending_preds = {}, [], []

        def restore() -> None:
            for name, batches in pending.items():
                self._pending[name] = batches + self._pending.get(name, [])
            self._pending_frames[:0] = frames
            self._pending_preds[:0] = preds

        self._on_rollback.append(restore)
        rows = _ChunkRows(self._conn)
        reseal: list[SeriesInfo] = []
        grown: list[SeriesInfo] = []
        with self._db("writing samples"):
            for name, batches in pending.items():
                series = self._load_series_for_write(KIND_SAMPLES, name, create=True)
                assert series is not None
                n_layouts, written = len(series.layouts), rows.count
                # packs wait only after a failed commit; the usual list starts raw
                n_packed = (_packed_prefix(batches)
                            if batches and isinstance(batches[0], PackedSamples) else 0)
                for pack in cast("list[PackedSamples]", batches[:n_packed]):
                    self._packed_rows(series, pack, rows)
                    rows.let_go_if_large()
                for layout_key, t, values, affine in _group_batches(
                    cast("list[SampleBatch]", batches[n_packed:])
                ):
                    self._encoded_rows(series, layout_key, t, values, affine, rows)
                # a description must be sealed before a chunk needs its new layout or meta
                changed = len(series.layouts) != n_layouts
                meta = batches[-1].meta
                if meta and meta != series.meta:
                    series.meta = dict(meta)
                    changed = True
                self._grow_tail(series, rows.count - written, changed, reseal, grown)
                rows.let_go_if_large()
            if frames:
                series = self._load_series_for_write(KIND_FRAMES, "", create=True)
                assert series is not None
                written = rows.count
                for group in _frame_groups(frames):
                    ts = [f.t for f in group]
                    plain = codec.encode_frames(group)
                    rows.append(self._seal_chunk(
                        series, day_of(ts[0]), plain, len(group), min(ts), max(ts)
                    ))
                self._grow_tail(series, rows.count - written, False, reseal, grown)
            if preds:
                series = self._load_series_for_write(KIND_PREDICTIONS, "", create=True)
                assert series is not None
                written = rows.count
                for pgroup in _day_groups(preds, lambda p: p.t, PREDICTIONS_PER_CHUNK):
                    ts = [p.t for p in pgroup]
                    plain = codec.encode_predictions(pgroup)
                    rows.append(self._seal_chunk(
                        series, day_of(ts[0]), plain, len(pgroup), min(ts), max(ts)
                    ))
                self._grow_tail(series, rows.count - written, False, reseal, grown)
            rows.insert()
            if reseal:
                self._conn.executemany(
                    "UPDATE series SET key_id = ?, sealed = ? WHERE series_no = ?",
                    [self._series_update(series) for series in reseal],
                )
            self._update_ends(grown, reseal)

    def _encoded_rows(
        self,
        series: SeriesInfo,
        layout_key: tuple[tuple[str, ...], tuple[str, ...]],
        t: FloatArray,
        values: FloatArray,
        affine: Affine | None,
        rows: _ChunkRows,
    ) -> None:
        """Encode and seal samples of one layout as chunks (one per day, bounded), into
        ``rows``."""
        layout = series.layout_index(*layout_key)
        n, n_ch = values.shape
        lo, hi = float(_minimum(t)), float(_maximum(t))
        day = _single_chunk_day(n, n_ch, lo, hi)
        if day is not None:  # the usual case
            pt = codec.encode_samples(layout, t, values, affine)
            rows.append(self._seal_chunk(series, day, pt, n, lo, hi))
            return
        for day, a, b, t_min, t_max in _day_spans(t, _max_chunk_rows(n_ch), lo, hi):
            pt = codec.encode_samples(layout, t[a:b], values[a:b], affine)
            rows.append(self._seal_chunk(series, day, pt, b - a, t_min, t_max))

    def _packed_rows(
        self, series: SeriesInfo, pack: PackedSamples, rows: _ChunkRows
    ) -> None:
        """A packed wait as chunks, into ``rows``: its blob sealed as it is when it is the
        chunk the usual path would write (the series' first layout, one day, within the chunk
        bounds), so a try to commit after a failure costs a seal, not a decode and an encode
        of all that waits (and their arrays); else decoded and encoded as arrived."""
        layout = series.layout_index(pack.channels, pack.units)
        day = _single_chunk_day(pack.rows, len(pack.channels), pack.t_min, pack.t_max)
        if layout == 0 and day is not None:
            rows.append(self._seal_chunk(series, day, pack.blob, pack.rows, pack.t_min,
                                         pack.t_max))
            return
        batch = pack.unpack()
        affine = adc_affine(batch) if batch.meta else None
        self._encoded_rows(series, (batch.channels, batch.units), batch.t, batch.values, affine,
                           rows)

    def _chunk_times(self, series: SeriesInfo, row: ChunkRow) -> FloatArray | None:
        plain = self._open_chunk(series, row)
        if plain is None:
            return None
        if series.kind == KIND_SAMPLES:
            widths = [len(c) for c, _ in series.layouts]
            return codec.decode_samples(plain, widths)[1]
        if series.kind == KIND_FRAMES:
            return codec.decode_frame_columns(plain).t
        preds = codec.decode_predictions(plain, explained=False)
        return np.array([p.t for p in preds], dtype=np.float64)

    def _seal_chunk(
        self, series: SeriesInfo, day: int, plain: bytes, n: int, t_min: float, t_max: float
    ) -> ChunkRowValues:
        key_id, aead = self._key_for_write(series.sid, day)
        b0, b1 = math.floor(t_min / BUCKET_S), math.floor(t_max / BUCKET_S)
        seq = series.next_seq
        series.next_seq += 1
        series.add(day, n, t_min, t_max)
        self._newest_day[series.sn] = day
        sealed = codec.seal(
            aead, plain, codec.chunk_ad(self._keys.twin_id, series.sid, seq, key_id, b0, b1)
        )
        return series.sn, seq, key_id, b0, b1, sealed

    def _chunk_rows(
        self, sn: int, t0: float | None, t1: float | None, *, descending: bool = False
    ) -> Iterator[ChunkRow]:
        """Rows overlapping [t0, t1] in (first hour, seq) order, fetched a page at a time."""
        lo = math.floor(t0 / BUCKET_S) if t0 is not None else None
        hi = math.floor(t1 / BUCKET_S) if t1 is not None else None
        where = ["series_no = ?"]
        args: list[Any] = [sn]
        if lo is not None:
            where.append("last_hour >= ?")
            args.append(lo)
        if hi is not None:
            where.append("first_hour <= ?")
            args.append(hi)
        order = "DESC" if descending else "ASC"
        cmp = "<" if descending else ">"
        cursor: tuple[int, int] | None = None
        while True:
            page_where = list(where)
            page_args = list(args)
            if cursor is not None:
                # keyset pagination: the index (series_no, first_hour, seq) seeks straight
                # to the next page
                page_where.append(f"(first_hour, seq) {cmp} (?, ?)")
                page_args += list(cursor)
            if lo is not None and (descending or cursor is None):
                # a chunk never spans two days, so it starts at most a day before it ends
                page_where.append("first_hour >= ?")
                page_args.append(lo - BUCKETS_PER_PERIOD)
            sql = (
                "SELECT series_no, seq, key_id, first_hour, last_hour, sealed FROM chunk WHERE "  # noqa: S608
                + " AND ".join(page_where)
                + f" ORDER BY first_hour {order}, seq {order} LIMIT {PAGE}"
            )
            with self._lock, self._db("reading chunks"):
                page = self._conn.execute(sql, page_args).fetchall()
            for r in page:
                yield ChunkRow(int(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]), bytes(r[5]))
            if len(page) < PAGE:
                return
            cursor = (int(page[-1][3]), int(page[-1][1]))

    def _open_chunk(self, series: SeriesInfo, row: ChunkRow) -> bytes | None:
        """Plaintext of a chunk; None if its key was forgotten meanwhile; DataCorrupt if bad."""
        with self._lock:
            aead = self._aead_for(row.key_id)
            if aead is None:
                if not self._key_known_to_db(row.key_id):
                    return None  # forgotten by another process while we read
                raise self._chunk_damage(series, row, "its data key is missing from the keystore")
        try:
            return codec.open_sealed(
                aead,
                row.sealed,
                codec.chunk_ad(self._keys.twin_id, series.sid, row.seq, row.key_id, row.b0, row.b1),
            )
        except InvalidTag:
            raise self._chunk_damage(
                series, row, "failed authentication (altered, moved or truncated)"
            ) from None

    def _chunk_damage(self, series: SeriesInfo, row: ChunkRow, what: str) -> DataCorrupt:
        label = f"stream {series.name!r}" if series.kind == KIND_SAMPLES else f"the {series.kind}"
        span = f"{fmt_time(row.b0 * BUCKET_S)} .. {fmt_time((row.b1 + 1) * BUCKET_S)}"
        return ChunkDamage(
            f"{label}: data between {span} (chunk {row.seq}) {what}",
            hint="run 'edgetwin verify' to list all damage; everything else stays readable",
            short=f"chunk {row.seq} {what}",
        )

    def _decode_row(
        self,
        series: SeriesInfo,
        row: ChunkRow,
        on_corrupt: OnCorrupt,
        decode: Callable[[bytes], Any],
    ) -> Any:
        try:
            plain = self._open_chunk(series, row)
            if plain is None:
                return None
            try:
                return decode(plain)
            except codec.Undecodable as exc:
                raise self._chunk_damage(series, row, f"does not decode: {exc}") from exc
        except DataCorrupt as exc:
            if on_corrupt == "raise":
                raise
            _LOGGER.warning("%s; skipped", exc.message)
            return None

    def _iter_samples(
        self, series: SeriesInfo, t0: float | None, t1: float | None, on_corrupt: OnCorrupt
    ) -> Iterator[SampleBatch]:
        widths = [len(c) for c, _ in series.layouts]
        for row in self._chunk_rows(series.sn, t0, t1):
            got = self._decode_row(
                series, row, on_corrupt, lambda pt: codec.decode_samples(pt, widths)
            )
            if got is None:
                continue
            layout, t, values = got
            if t0 is not None or t1 is not None:
                mask = np.ones(t.shape[0], dtype=bool)
                if t0 is not None:
                    mask &= t >= t0
                if t1 is not None:
                    mask &= t <= t1
                if not mask.any():
                    continue
                if not mask.all():
                    t, values = t[mask], values[mask]
            channels, units = series.layouts[layout]
            yield SampleBatch(series.name, channels, units, t, values, dict(series.meta))

    def _iter_decoded(
        self,
        series: SeriesInfo,
        t0: float | None,
        t1: float | None,
        on_corrupt: OnCorrupt,
        decode: Callable[[bytes], list[Any]],
        t_of: Callable[[Any], float],
    ) -> Iterator[Any]:
        for row in self._chunk_rows(series.sn, t0, t1):
            items = self._decode_row(series, row, on_corrupt, decode)
            if items is None:
                continue
            for item in items:
                t = t_of(item)
                if (t0 is None or t >= t0) and (t1 is None or t <= t1):
                    yield item


def _group_batches(
    batches: list[SampleBatch],
) -> Iterator[
    tuple[tuple[tuple[str, ...], tuple[str, ...]], FloatArray, FloatArray, Affine | None]
]:
    """Consecutive batches with the same channels and ADC scaling, concatenated."""
    i, n = 0, len(batches)
    while i < n:
        first = batches[i]
        key = (first.channels, first.units)
        affine = adc_affine(first) if first.meta else None
        j = i + 1
        while j < n:
            b = batches[j]
            if (b.channels, b.units) != key or not _same_affine(
                adc_affine(b) if b.meta else None, affine
            ):
                break
            j += 1
        if j == i + 1:
            yield key, first.t, first.values, affine
        else:
            group = batches[i:j]
            t = np.concatenate([b.t for b in group])
            yield key, t, np.concatenate([b.values for b in group]), affine
        i = j


Affine = tuple[FloatArray, FloatArray]


def adc_affine(batch: SampleBatch) -> Affine | None:
    """``(scale, offset)`` per channel when the source says its values are
    ``adc_int * scale + offset`` (meta ``adc_scale``/``adc_offset``), else None.

    Only a hint: the codec checks every value and stores what does not fit exactly
    another way, so a wrong hint costs space, never data.
    """
    scale, offset = batch.meta.get("adc_scale"), batch.meta.get("adc_offset")
    n = len(batch.channels)
    if not (isinstance(scale, list) and isinstance(offset, list)):
        return None
    if len(scale) != n or len(offset) != n:
        return None
    try:
        s = np.asarray(scale, dtype=np.float64)
        o = np.asarray(offset, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if not (np.isfinite(s).all() and np.isfinite(o).all()) or (s == 0).any():
        return None
    return s, o


def _same_affine(a: Affine | None, b: Affine | None) -> bool:
    if a is None or b is None:
        return a is b
    return bool(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]))


def _day_runs(t: FloatArray, max_rows: int) -> Iterator[tuple[int, int, int]]:
    """(day, start, stop) runs of rows within one UTC day, at most ``max_rows`` long."""
    if t.shape[0]:
        for day, a, b, _lo, _hi in _day_spans(t, max_rows, float(t.min()), float(t.max())):
            yield day, a, b


def _max_chunk_rows(n_channels: int) -> int:
    """How many rows of ``n_channels`` one chunk may hold."""
    return max(1, min(MAX_CHUNK_ROWS, MAX_CHUNK_CELLS // max(1, n_channels)))


def _single_chunk_day(n: int, n_channels: int, t_min: float, t_max: float) -> int | None:
    """The UTC day of ``n`` rows that make one chunk as they are (one day, within the chunk
    bounds); None when they must be split."""
    day = math.floor(t_min / PERIOD_S)
    if n <= _max_chunk_rows(n_channels) and day == math.floor(t_max / PERIOD_S):
        return day
    return None


def _packed_prefix(batches: Sequence[SampleBatch | PackedSamples]) -> int:
    """How many of a stream's buffered batches are packed: they are always the oldest."""
    return next(
        (i for i, b in enumerate(batches) if not isinstance(b, PackedSamples)), len(batches)
    )


def _day_spans(
    t: FloatArray, max_rows: int, lo: float, hi: float
) -> Iterator[tuple[int, int, int, float, float]]:
    """(day, start, stop, first time, last time) of runs of rows within one UTC day, at
    most ``max_rows`` long; ``lo`` and ``hi`` are the first and last time of all of ``t``."""
    n = t.shape[0]
    first = math.floor(lo / PERIOD_S)
    if first == math.floor(hi / PERIOD_S):
        # the usual case, all rows in one day: no per-row day numbers needed
        if n <= max_rows:
            yield first, 0, n, lo, hi
            return
        cuts = [0, n]
        days = None
    else:
        days = np.floor(t / PERIOD_S).astype(np.int64)
        cuts = [0, *(np.flatnonzero(np.diff(days)) + 1).tolist(), n]
    for a, b in itertools.pairwise(cuts):
        for start in range(a, b, max_rows):
            stop = min(b, start + max_rows)
            seg = t[start:stop]
            day = first if days is None else int(days[start])
            yield day, start, stop, float(_minimum(seg)), float(_maximum(seg))


def _frame_groups(frames: list[FeatureFrame]) -> Iterator[list[FeatureFrame]]:
    def key(f: FeatureFrame) -> tuple[int, int, int]:
        return f.schema_version, int(f.values.shape[0]), day_of(f.t)

    yield from _runs(frames, key)


def _day_groups(
    items: list[Any], t_of: Callable[[Any], float], max_rows: int = MAX_CHUNK_ROWS
) -> Iterator[list[Any]]:
    yield from _runs(items, lambda x: day_of(t_of(x)), max_rows)


def _runs(
    items: list[Any], key: Callable[[Any], Any], max_rows: int = MAX_CHUNK_ROWS
) -> Iterator[list[Any]]:
    i = 0
    while i < len(items):
        k = key(items[i])
        j = i + 1
        while j < len(items) and key(items[j]) == k and j - i < max_rows:
            j += 1
        yield items[i:j]
        i = j
