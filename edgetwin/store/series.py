"""Series: the streams, the feature frames and the predictions, each a row of the
``series`` table holding its sealed description (name, channel layouts, per-day counts).
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgetwin.errors import DataCorrupt
from edgetwin.store import codec
from edgetwin.store.core import OnCorrupt
from edgetwin.store.datakeys import DataKeys
from edgetwin.store.keys import KEYSTORE_FILE, Keystore, MasterKeys
from edgetwin.store.reports import StreamInfo

_LOGGER = logging.getLogger(__name__)

PERIOD_S = 86400  # one data key per series per UTC day
BUCKET_S = 3600  # clear time granularity of a chunk row
BUCKETS_PER_PERIOD = PERIOD_S // BUCKET_S
MAX_CHUNK_ROWS = 65536
MAX_CHUNK_CELLS = 1 << 18  # rows x channels per chunk: ~2 MiB of float64
# Forecasts per chunk (~2 KB of JSON each, ~4 KB as objects): a reader streams chunk by
# chunk, so a bulk append (an ingested day: 86,400) must not become one chunk.
PREDICTIONS_PER_CHUNK = 256
PAGE = 8  # chunk rows per query: each up to ~2 MiB sealed, so reads stay flat in memory

KIND_SAMPLES = "samples"
KIND_FRAMES = "frames"
KIND_PREDICTIONS = "predictions"
KINDS = (KIND_SAMPLES, KIND_FRAMES, KIND_PREDICTIONS)


@dataclass
class SeriesInfo:
    """A series' decrypted info (kept sealed in the ``series`` table)."""

    sn: int  # series number (local integer id)
    sid: bytes  # series id: keyed hash of (kind, name)
    kind: str
    name: str
    layouts: list[tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    next_seq: int = 0
    # UTC day -> [chunks, rows, first_t, last_t]
    periods: dict[int, list[float]] = field(default_factory=dict)
    # day -> (its stats, their JSON): a description is re-sealed at every commit, and
    # after a year it lists 365 days of which only today's changed
    _day_json: dict[int, tuple[tuple[float, ...], str]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def copy(self) -> SeriesInfo:
        """An independent copy (its layouts, meta and per-day counts not shared)."""
        return SeriesInfo(sn=self.sn, sid=self.sid, kind=self.kind, name=self.name,
                          layouts=list(self.layouts), meta=dict(self.meta),
                          next_seq=self.next_seq,
                          periods={d: list(v) for d, v in self.periods.items()})

    def to_json_text(self) -> str:
        """``json.dumps(self.to_json())`` (compact), re-encoding only the days that changed."""
        head = json.dumps(
            {
                "kind": self.kind,
                "name": self.name,
                "layouts": [[list(c), list(u)] for c, u in self.layouts],
                "meta": self.meta,
                "next_seq": self.next_seq,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )
        cache = self._day_json
        if len(cache) > 2 * len(self.periods) + 8:  # days forgotten since
            cache.clear()
        parts = []
        for day, stats in self.periods.items():
            key = tuple(stats)
            hit = cache.get(day)
            if hit is None or hit[0] != key:
                hit = cache[day] = (key, json.dumps(stats, separators=(",", ":")))
            parts.append(f'"{day}":{hit[1]}')
        return head[:-1] + ',"periods":{' + ",".join(parts) + "}}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "layouts": [[list(c), list(u)] for c, u in self.layouts],
            "meta": self.meta,
            "next_seq": self.next_seq,
            "periods": {str(d): v for d, v in self.periods.items()},
        }

    @classmethod
    def from_json(cls, sn: int, sid: bytes, obj: dict[str, Any]) -> SeriesInfo:
        return cls(
            sn=sn,
            sid=sid,
            kind=str(obj["kind"]),
            name=str(obj["name"]),
            layouts=[(tuple(c), tuple(u)) for c, u in obj["layouts"]],
            meta=dict(obj["meta"]),
            next_seq=int(obj["next_seq"]),
            periods={int(d): list(v) for d, v in obj["periods"].items()},
        )

    def layout_index(self, channels: tuple[str, ...], units: tuple[str, ...]) -> int:
        for i, layout in enumerate(self.layouts):
            if layout == (channels, units):
                return i
        self.layouts.append((channels, units))
        return len(self.layouts) - 1

    def totals(self) -> tuple[int, int, float | None, float | None]:
        chunks = sum(int(v[0]) for v in self.periods.values())
        rows = sum(int(v[1]) for v in self.periods.values())
        firsts = [v[2] for v in self.periods.values() if v[1]]
        lasts = [v[3] for v in self.periods.values() if v[1]]
        return chunks, rows, (min(firsts) if firsts else None), (max(lasts) if lasts else None)

    def add(self, day: int, rows: int, t_min: float, t_max: float) -> None:
        stats = self.periods.setdefault(day, [0, 0, math.inf, -math.inf])
        stats[0] += 1
        stats[1] += rows
        stats[2] = min(stats[2], t_min)
        stats[3] = max(stats[3], t_max)


class ChunkDamage(DataCorrupt):
    """A damaged chunk; ``short`` says what, without the stream and span."""

    def __init__(self, message: str, *, hint: str, short: str) -> None:
        super().__init__(message, hint=hint)
        self.short = short


@dataclass
class ChunkRow:
    """A ``chunk`` row as stored (column meanings: :mod:`edgetwin.store.schema`)."""

    sn: int  # series number
    seq: int  # chunk number within the series
    key_id: int  # data key that sealed it
    b0: int  # first Unix hour of its timestamps
    b1: int  # last Unix hour of its timestamps
    sealed: bytes


def day_of(t: float) -> int:
    """The UTC day number of a time: the period of its data key."""
    return math.floor(t / PERIOD_S)


class SeriesRows(DataKeys):
    """Find, create, open and re-seal series descriptions (cached for writes)."""

    def __init__(
        self, home: Path, keystore: Keystore, keys: MasterKeys, conn: sqlite3.Connection
    ) -> None:
        super().__init__(home, keystore, keys, conn)
        self._series_cache: dict[bytes, SeriesInfo] = {}
        self._sids: dict[tuple[str, str], bytes] = {}

    def _drop_caches(self) -> None:
        super()._drop_caches()
        self._series_cache.clear()

    def streams(self, *, on_corrupt: OnCorrupt = "raise") -> list[StreamInfo]:
        """Every stream with its channels, units, sample count and time range, by name."""
        out: list[StreamInfo] = []
        for series in self._all_series(on_corrupt):
            if series.kind != KIND_SAMPLES:
                continue
            chunks, rows, first_t, last_t = series.totals()
            channels, units = series.layouts[-1] if series.layouts else ((), ())
            out.append(
                StreamInfo(
                    name=series.name,
                    channels=channels,
                    units=units,
                    samples=rows,
                    first_t=first_t,
                    last_t=last_t,
                    meta=dict(series.meta),
                    chunks=chunks,
                )
            )
        out.sort(key=lambda s: s.name)
        return out

    def series_counts(self) -> dict[str, int]:
        """Stored feature frames and predictions: ``{"frames": n, "predictions": n}``."""
        counts = {KIND_FRAMES: 0, KIND_PREDICTIONS: 0}
        for kind in counts:
            series = self._read_series(kind, "")
            if series is not None:
                counts[kind] = series.totals()[1]
        return counts

    def _sid(self, kind: str, name: str) -> bytes:
        # a keyed hash under a key that never changes for this twin: computed once per name
        sid = self._sids.get((kind, name))
        if sid is None:
            if len(self._sids) >= 4096:
                self._sids.clear()
            sid = self._sids[(kind, name)] = self._keys.keyed_id(b"series:" + kind.encode(), name)
        return sid

    def _open_series_row(self, sn: int, sid: bytes, key_id: int, sealed: bytes) -> SeriesInfo:
        aead = self._aead_for(key_id)
        if aead is None:
            raise DataCorrupt(
                f"the info key of series #{sn} is missing from {KEYSTORE_FILE}",
                hint="restore the keystore from a backup",
            )
        try:
            ad = codec.series_ad(self._keys.twin_id, sid, key_id)
            plain = codec.open_sealed(aead, sealed, ad)
            return SeriesInfo.from_json(sn, sid, codec.decode_json(plain))
        except (InvalidTag, codec.Undecodable, KeyError, TypeError, ValueError) as exc:
            raise DataCorrupt(
                f"the description of series #{sn} failed authentication",
                hint="run 'edgetwin verify'; this stream's name and counts cannot be trusted",
            ) from exc

    def _read_series(self, kind: str, name: str) -> SeriesInfo | None:
        return self._read_series_via(kind, name, self._open_series_row)

    def _read_series_via(
        self, kind: str, name: str, open_row: Callable[[int, bytes, int, bytes], SeriesInfo]
    ) -> SeriesInfo | None:
        """The description of one series, opened by ``open_row`` (a layer above may open it
        without what it adds, e.g. the tails' counts)."""
        sid = self._sid(kind, name)
        with self._lock, self._db("reading a stream"):
            row = self._conn.execute(
                "SELECT series_no, key_id, sealed FROM series WHERE series_id = ?", (sid,)
            ).fetchone()
        if row is None:
            return None
        try:
            series = open_row(int(row[0]), sid, int(row[1]), bytes(row[2]))
        except DataCorrupt as exc:
            label = f"stream {name!r}" if kind == KIND_SAMPLES else f"the {kind}"
            raise DataCorrupt(
                f"{label}: its description failed authentication", hint=exc.hint
            ) from exc
        if series.kind != kind or series.name != name:
            raise DataCorrupt(f"stream {name!r}: its description belongs to another stream")
        return series

    def _all_series(self, on_corrupt: OnCorrupt) -> list[SeriesInfo]:
        with self._lock, self._db("listing streams"):
            rows = self._conn.execute(
                "SELECT series_no, series_id, key_id, sealed FROM series ORDER BY series_no"
            ).fetchall()
        out = []
        for sn, sid, key_id, sealed in rows:
            try:
                out.append(self._open_series_row(int(sn), bytes(sid), int(key_id), bytes(sealed)))
            except DataCorrupt:
                if on_corrupt == "raise":
                    raise
                _LOGGER.warning("series #%d is damaged; skipped", sn)
        return out

    def _all_series_for_write(self) -> list[SeriesInfo]:
        out = []
        for series in self._all_series("raise"):
            cached = self._series_cache.get(series.sid)
            out.append(cached if cached is not None else series)
            self._series_cache[series.sid] = out[-1]
        return out

    def _load_series_for_write(self, kind: str, name: str, *, create: bool) -> SeriesInfo | None:
        sid = self._sid(kind, name)
        cached = self._series_cache.get(sid)
        if cached is not None:
            return cached
        row = self._conn.execute(
            "SELECT series_no, key_id, sealed FROM series WHERE series_id = ?", (sid,)
        ).fetchone()
        if row is not None:
            series = self._open_series_row(int(row[0]), sid, int(row[1]), bytes(row[2]))
        elif not create:
            return None
        else:
            key_id, aead = self._key_for_write(sid, -1)
            series = SeriesInfo(sn=0, sid=sid, kind=kind, name=name)
            cur = self._conn.execute(
                "INSERT INTO series (series_id, key_id, sealed) VALUES (?, ?, ?)",
                (sid, key_id, self._seal_series(series, key_id, aead)),
            )
            series.sn = int(cur.lastrowid or 0)
        self._series_cache[sid] = series
        return series

    def _seal_series(self, series: SeriesInfo, key_id: int, aead: AESGCM) -> bytes:
        return codec.seal(
            aead,
            codec.deflate_json_text(series.to_json_text()),
            codec.series_ad(self._keys.twin_id, series.sid, key_id),
        )

    def _save_series(self, series: SeriesInfo) -> None:
        self._conn.execute(
            "UPDATE series SET key_id = ?, sealed = ? WHERE series_no = ?",
            self._series_update(series),
        )

    def _series_update(self, series: SeriesInfo) -> tuple[int, bytes, int]:
        """Parameters of the UPDATE that re-seals ``series`` under its current info key."""
        key_id, aead = self._key_for_write(series.sid, -1)
        return key_id, self._seal_series(series, key_id, aead), series.sn
