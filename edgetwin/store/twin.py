"""The twin store: encrypted time series, records and the audit chain in one SQLite file.

Layout of a twin home::

    twin.db, twin.db-wal, twin.db-shm   SQLite (WAL); only opaque ids, hour buckets, blobs
    keystore.json                       slots wrapping the master key; wrapped data keys
    unlock-failures.jsonl               failed unlocks waiting to enter the audit chain
    config.toml                         behaviour only (written by ``edgetwin init``)

Writes of time series are buffered in memory and become durable together at
:meth:`TwinStore.commit` (one SQLite transaction, ``synchronous=FULL``). A
new data key is written to the keystore (atomically, fsynced) before the
transaction that first uses it commits; destroyed keys leave the keystore
right after the transaction that deleted their rows commits, and any key the
database no longer knows is dropped from the keystore at every unlock, so a
crash between the two steps is finished on the next start.

Concurrency: one process (the daemon) appends; other processes may read and
write records at the same time. Every write transaction starts with
``BEGIN IMMEDIATE`` and compares ``PRAGMA data_version``: when another
connection committed since, the cached series and keys are dropped, so a
forget or rotation elsewhere is seen before the next write.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import itertools
import json
import logging
import math
import os
import secrets
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgetwin.config import RetentionConfig
from edgetwin.errors import (
    DataCorrupt,
    EdgetwinError,
    HomeError,
    MalformedInput,
    SchemaTooNew,
    StoreFull,
    UsageError,
    WrongKey,
)
from edgetwin.store import codec
from edgetwin.store.derived import (
    DERIVED_RECORD_KINDS,
    IMPUTE_REACH_S,
    Taint,
    stale_record,
    stream_spans,
)
from edgetwin.store.keys import KEYSTORE_FILE, KdfParams, Keystore, MasterKeys, Secret
from edgetwin.store.reports import ForgetReport, Problem, StreamInfo, VerifyReport, fmt_time
from edgetwin.store.schema import SCHEMA_VERSION, migrate, schema_version
from edgetwin.types import FeatureFrame, FloatArray, Prediction, SampleBatch

_LOGGER = logging.getLogger(__name__)

DB_FILE = "twin.db"
PENDING_FAILURES_FILE = "unlock-failures.jsonl"
PERIOD_S = 86400  # one data key per series per UTC day
BUCKET_S = 3600  # clear time granularity of a chunk row
_BUCKETS_PER_PERIOD = PERIOD_S // BUCKET_S
MAX_CHUNK_ROWS = 65536
MAX_CHUNK_CELLS = 1 << 18  # rows x channels per chunk: ~2 MiB of float64
_PAGE = 8  # chunk rows per query: each up to ~2 MiB sealed, so reads stay flat in memory

KIND_SAMPLES = "samples"
KIND_FRAMES = "frames"
KIND_PREDICTIONS = "predictions"
_KINDS = (KIND_SAMPLES, KIND_FRAMES, KIND_PREDICTIONS)
OnCorrupt = Literal["raise", "skip"]

_CHAIN_GENESIS = bytes(32)


@dataclass
class _Series:
    """A series' decrypted info (kept sealed in the ``series`` table)."""

    sn: int
    sid: bytes
    kind: str
    name: str
    layouts: list[tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    next_seq: int = 0
    # UTC day -> [chunks, rows, first_t, last_t]
    periods: dict[int, list[float]] = field(default_factory=dict)

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
    def from_json(cls, sn: int, sid: bytes, obj: dict[str, Any]) -> _Series:
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


class _ChunkDamage(DataCorrupt):
    """A damaged chunk; ``short`` says what, without the stream and span."""

    def __init__(self, message: str, *, hint: str, short: str) -> None:
        super().__init__(message, hint=hint)
        self.short = short


@dataclass
class _ChunkRow:
    sn: int
    seq: int
    key_id: int
    b0: int
    b1: int
    sealed: bytes


class TwinStore:
    """One unlocked twin: append, read, records, audit, verify and forget."""

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
        self._series_cache: dict[bytes, _Series] = {}
        self._active: dict[tuple[bytes, int], int] = {}
        self._aead: dict[int, AESGCM] = {}
        self._pending: dict[str, list[SampleBatch]] = {}
        self._pending_frames: list[FeatureFrame] = []
        self._pending_preds: list[Prediction] = []
        self._records_cutoff_day: int | None = None  # retention's last derived-record check
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------

    @classmethod
    def create(cls, home: Path, secret: Secret, *, kdf: KdfParams | None = None) -> TwinStore:
        """Make a new twin in ``home`` (created with mode 0700); HomeError if one exists."""
        home = Path(home)
        _make_home(home)
        db_path = home / DB_FILE
        ks_path = home / KEYSTORE_FILE
        for p in (db_path, ks_path):
            if p.exists():
                raise HomeError(
                    f"a twin already exists in {home} ({p.name} is there)",
                    hint="use another --home, or 'edgetwin forget --all' to empty this one",
                )
        twin_id = secrets.token_bytes(16)
        created: list[Path] = []
        try:
            keystore, keys = Keystore.create(ks_path, twin_id, secret, kdf or KdfParams.from_env())
            created.append(ks_path)
            created.append(db_path)
            conn = _connect(db_path, create=True)
            try:
                migrate(conn, str(db_path))
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    "INSERT INTO meta (k, v) VALUES (?, ?)",
                    [
                        ("twin_id", twin_id),
                        ("check", _make_check(keys)),
                    ],
                )
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.close()
                raise _translate(exc, db_path, "creating the database") from exc
            store = cls(home, keystore, keys, conn)
            params = keystore.kdf_params()
            store.audit(
                "init",
                slot=secret.kind,
                kdf=params.to_json() if params is not None else None,
                schema=SCHEMA_VERSION,
            )
        except BaseException:
            for p in created:
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(OSError):
                        Path(str(p) + suffix).unlink()
            raise
        _LOGGER.info("created twin %s in %s", store.twin_id[:8], home)
        return store

    @classmethod
    def open(cls, home: Path, secret: Secret, *, strict: bool = True) -> TwinStore:
        """Unlock the twin in ``home``: WrongKey, DataCorrupt, SchemaTooNew or HomeError.

        ``strict=False`` opens a twin whose database fails its authentication
        check, so that :meth:`verify` can list the damage.
        """
        home = Path(home)
        db_path = home / DB_FILE
        ks_path = home / KEYSTORE_FILE
        if not db_path.exists() and not ks_path.exists():
            raise HomeError(
                f"{home} holds no twin",
                hint="run 'edgetwin init' first, or point --home / EDGETWIN_HOME at a twin",
            )
        if not db_path.exists():
            raise DataCorrupt(
                f"{db_path} is missing but {ks_path.name} is there",
                hint="restore twin.db from a backup or import an export bundle",
            )
        keystore = Keystore.load(ks_path)
        try:
            keys = keystore.unlock(secret)
        except WrongKey:
            _record_failed_unlock(home, secret.kind)
            raise
        conn = _connect(db_path, create=False)
        try:
            version = schema_version(conn)
            if version == 0:
                raise DataCorrupt(
                    f"{db_path} is empty or was truncated (no schema)",
                    hint="restore twin.db from a backup or import an export bundle",
                )
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{db_path} has schema version {version}; this edgetwin knows up to "
                    f"{SCHEMA_VERSION}",
                    hint="upgrade edgetwin; the file was not changed",
                )
            if version < SCHEMA_VERSION:
                migrate(conn, str(db_path))
            store = cls(home, keystore, keys, conn)
            try:
                store._check_twin()
            except DataCorrupt:
                if strict:
                    raise
        except sqlite3.Error as exc:
            conn.close()
            raise _translate(exc, db_path, "opening the database") from exc
        except BaseException:
            conn.close()
            raise
        try:
            store._finish_pending_shreds()
            store._fold_failed_unlocks()
        except (HomeError, sqlite3.OperationalError) as exc:
            # read-only media or a busy writer: the twin is still readable
            _LOGGER.warning("could not tidy the twin on unlock: %s", exc)
        return store

    def close(self) -> None:
        """Close the database; uncommitted appends are dropped (call commit() first)."""
        with self._lock:
            if self._closed:
                return
            if self.pending_rows():
                _LOGGER.warning("closing with %d uncommitted rows", self.pending_rows())
            self._closed = True
            self._aead.clear()
            self._conn.close()

    def __enter__(self) -> TwinStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TwinStore({str(self.home)!r}, twin={self.twin_id[:8]})"

    # -- time series: appends ----------------------------------------------------------

    def append_samples(self, batch: SampleBatch) -> None:
        """Buffer a batch; durable after the next :meth:`commit`."""
        if not batch.stream:
            raise MalformedInput("a sample batch has an empty stream name")
        if len(batch) == 0:
            return
        if not np.isfinite(batch.t).all():
            raise MalformedInput(
                f"stream {batch.stream!r}: a batch holds non-finite timestamps",
                hint="fix the source or the recording",
            )
        with self._lock:
            self._pending.setdefault(batch.stream, []).append(batch)

    def append_frames(self, frames: Sequence[FeatureFrame]) -> None:
        """Buffer feature frames; durable after the next :meth:`commit`."""
        for f in frames:
            if not math.isfinite(f.t):
                raise MalformedInput("a feature frame has a non-finite time")
        with self._lock:
            self._pending_frames.extend(frames)

    def append_predictions(self, preds: Sequence[Prediction]) -> None:
        """Buffer predictions; durable after the next :meth:`commit`."""
        for p in preds:
            if not math.isfinite(p.t):
                raise MalformedInput("a prediction has a non-finite time")
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

    def commit(self) -> None:
        """Make every buffered append durable in one transaction.

        On failure (e.g. StoreFull) nothing is written and the buffer is kept,
        so a later commit can retry.
        """
        with self._lock:
            if not (self._pending or self._pending_frames or self._pending_preds):
                return
            with self.transaction():
                self._write_pending()

    # -- time series: reads ---------------------------------------------------------------

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
        series = self._read_series(KIND_SAMPLES, stream)
        if series is None:
            known = ", ".join(s.name for s in self.streams(on_corrupt="skip")) or "none"
            raise UsageError(f"no stream named {stream!r} in this twin", hint=f"streams: {known}")
        return self._iter_samples(series, t0, t1, on_corrupt)

    def read_frames(
        self, t0: float | None = None, t1: float | None = None, *, on_corrupt: OnCorrupt = "raise"
    ) -> Iterator[FeatureFrame]:
        """Committed feature frames with ``t0 <= t <= t1``, oldest hour first."""
        series = self._read_series(KIND_FRAMES, "")
        if series is None:
            return iter(())
        return self._iter_decoded(
            series, t0, t1, on_corrupt, codec.decode_frames, lambda f: f.t
        )

    def read_predictions(
        self, last: int | None = None, t0: float | None = None, *, on_corrupt: OnCorrupt = "raise"
    ) -> list[Prediction]:
        """Committed predictions with ``t >= t0``, oldest first; only the newest ``last``."""
        series = self._read_series(KIND_PREDICTIONS, "")
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
                if row.b0 + _BUCKETS_PER_PERIOD < math.floor(found[0].t / BUCKET_S):
                    break
            preds = self._decode_row(series, row, on_corrupt, codec.decode_predictions)
            if preds is None:
                continue
            found.extend(p for p in preds if t0 is None or p.t >= t0)
        found.sort(key=lambda p: p.t)
        return found[-last:]

    def iter_predictions(
        self, t0: float | None = None, t1: float | None = None, *, on_corrupt: OnCorrupt = "raise"
    ) -> Iterator[Prediction]:
        """Committed predictions with ``t0 <= t <= t1``, chunk by chunk (flat memory)."""
        series = self._read_series(KIND_PREDICTIONS, "")
        if series is None:
            return iter(())
        return self._iter_decoded(
            series, t0, t1, on_corrupt, codec.decode_predictions, lambda p: p.t
        )

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

    # -- records ------------------------------------------------------------------------------

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

    # -- audit chain ------------------------------------------------------------------------------

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

    # -- verification -------------------------------------------------------------------------

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

    # -- forgetting -------------------------------------------------------------------------

    def control_proof(self, message: bytes) -> bytes:
        """HMAC-SHA256 of ``message`` under a key derived from the master key: a CLI that
        unlocked this twin proves it to the daemon's control socket (``forget``)."""
        key = self._keys.keyed_id(b"control-proof", "v1")
        return hmac.new(key, message, "sha256").digest()

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
            if self.pending_rows():
                self._write_pending()
            if everything:
                report = self._forget_everything()
                self._append_audit(time.time(), "forget", {"scope": "all", **_brief(report)})
            elif stream is not None:
                sid = self._sid(KIND_SAMPLES, stream)
                row = self._conn.execute("SELECT sn FROM series WHERE sid = ?", (sid,)).fetchone()
                if row is None:
                    raise UsageError(f"no stream named {stream!r} in this twin")
                try:
                    series = self._load_series_for_write(KIND_SAMPLES, stream, create=False)
                except DataCorrupt:
                    series = None  # damaged description: forget it all the same
                taint = self._stream_taint(int(row[0]), series)
                rows = series.totals()[1] if series is not None else 0
                report = self._forget_series(int(row[0]), sid, KIND_SAMPLES, rows)
                report.streams_removed.append(stream)
                report.merge(self._forget_derived(taint))
                self._append_audit(
                    time.time(),
                    "forget",
                    {"scope": "stream", "stream_ref": sid.hex()[:16], **_brief(report)},
                )
            else:
                assert before is not None
                for kind in _KINDS:
                    report.merge(self._forget_before(kind, before, exact=True))
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

    # -- key changes ----------------------------------------------------------------------------

    def change_secret(self, new: Secret, *, kdf: KdfParams | None = None) -> None:
        """Re-wrap the master key for a new passphrase (or key file); data untouched.

        Replaces the slot of the new secret's kind; other slots stay.
        """
        with self.transaction():
            self._ks.set_slot(self._keys, new, kdf or KdfParams.from_env())
            self._ks.save()
            self._append_audit(time.time(), "key_change", {"action": f"set_{new.kind}"})

    def remove_slot(self, kind: str) -> None:
        """Stop accepting one kind of secret (``passphrase`` or ``keyfile``)."""
        with self.transaction():
            self._ks.remove_slot(kind)
            self._ks.save()
            self._append_audit(time.time(), "key_change", {"action": f"remove_{kind}"})

    def slots(self) -> list[str]:
        """The kinds of secret that unlock this twin."""
        return [s["kind"] for s in self._ks.slots]

    def kdf_params(self) -> KdfParams | None:
        """The Argon2id parameters of the passphrase slot."""
        return self._ks.kdf_params()

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

    # ======================================================================================
    # private: transactions and caches
    # ======================================================================================

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
            raise _translate(exc, self.home / DB_FILE, what) from exc

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
            self._prune_keystore()

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
        self._series_cache.clear()
        self._active.clear()
        self._aead.clear()

    def _sync_keystore(self) -> None:
        if self._ks.changed_on_disk():
            self._ks.reload()

    # -- keys -------------------------------------------------------------------------------

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

    # -- series -----------------------------------------------------------------------------

    def _sid(self, kind: str, name: str) -> bytes:
        return self._keys.keyed_id(b"series:" + kind.encode(), name)

    def _open_series_row(self, sn: int, sid: bytes, key_id: int, sealed: bytes) -> _Series:
        aead = self._aead_for(key_id)
        if aead is None:
            raise DataCorrupt(
                f"the info key of series #{sn} is missing from {KEYSTORE_FILE}",
                hint="restore the keystore from a backup",
            )
        try:
            ad = codec.series_ad(self._keys.twin_id, sid, key_id)
            plain = codec.open_sealed(aead, sealed, ad)
            return _Series.from_json(sn, sid, codec.decode_json(plain))
        except (InvalidTag, codec.Undecodable, KeyError, TypeError, ValueError) as exc:
            raise DataCorrupt(
                f"the description of series #{sn} failed authentication",
                hint="run 'edgetwin verify'; this stream's name and counts cannot be trusted",
            ) from exc

    def _read_series(self, kind: str, name: str) -> _Series | None:
        sid = self._sid(kind, name)
        with self._lock, self._db("reading a stream"):
            row = self._conn.execute(
                "SELECT sn, key_id, sealed FROM series WHERE sid = ?", (sid,)
            ).fetchone()
        if row is None:
            return None
        try:
            series = self._open_series_row(int(row[0]), sid, int(row[1]), bytes(row[2]))
        except DataCorrupt as exc:
            label = f"stream {name!r}" if kind == KIND_SAMPLES else f"the {kind}"
            raise DataCorrupt(
                f"{label}: its description failed authentication", hint=exc.hint
            ) from exc
        if series.kind != kind or series.name != name:
            raise DataCorrupt(f"stream {name!r}: its description belongs to another stream")
        return series

    def _all_series(self, on_corrupt: OnCorrupt) -> list[_Series]:
        with self._lock, self._db("listing streams"):
            rows = self._conn.execute(
                "SELECT sn, sid, key_id, sealed FROM series ORDER BY sn"
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

    def _all_series_for_write(self) -> list[_Series]:
        out = []
        for series in self._all_series("raise"):
            cached = self._series_cache.get(series.sid)
            out.append(cached if cached is not None else series)
            self._series_cache[series.sid] = out[-1]
        return out

    def _load_series_for_write(self, kind: str, name: str, *, create: bool) -> _Series | None:
        sid = self._sid(kind, name)
        cached = self._series_cache.get(sid)
        if cached is not None:
            return cached
        row = self._conn.execute(
            "SELECT sn, key_id, sealed FROM series WHERE sid = ?", (sid,)
        ).fetchone()
        if row is not None:
            series = self._open_series_row(int(row[0]), sid, int(row[1]), bytes(row[2]))
        elif not create:
            return None
        else:
            key_id, aead = self._key_for_write(sid, -1)
            series = _Series(sn=0, sid=sid, kind=kind, name=name)
            cur = self._conn.execute(
                "INSERT INTO series (sid, key_id, sealed) VALUES (?, ?, ?)",
                (sid, key_id, self._seal_series(series, key_id, aead)),
            )
            series.sn = int(cur.lastrowid or 0)
        self._series_cache[sid] = series
        return series

    def _seal_series(self, series: _Series, key_id: int, aead: AESGCM) -> bytes:
        return codec.seal(
            aead,
            codec.encode_json(series.to_json()),
            codec.series_ad(self._keys.twin_id, series.sid, key_id),
        )

    def _save_series(self, series: _Series) -> None:
        key_id, aead = self._key_for_write(series.sid, -1)
        self._conn.execute(
            "UPDATE series SET key_id = ?, sealed = ? WHERE sn = ?",
            (key_id, self._seal_series(series, key_id, aead), series.sn),
        )

    # -- writing chunks ------------------------------------------------------------------------

    def _write_pending(self) -> None:
        pending, frames, preds = self._pending, self._pending_frames, self._pending_preds
        self._pending, self._pending_frames, self._pending_preds = {}, [], []

        def restore() -> None:
            for name, batches in pending.items():
                self._pending[name] = batches + self._pending.get(name, [])
            self._pending_frames[:0] = frames
            self._pending_preds[:0] = preds

        self._on_rollback.append(restore)
        rows: list[tuple[int, int, int, int, int, bytes]] = []
        touched: dict[bytes, _Series] = {}
        with self._db("writing samples"):
            for name, batches in pending.items():
                series = self._load_series_for_write(KIND_SAMPLES, name, create=True)
                assert series is not None
                touched[series.sid] = series
                for layout_key, t, values in _group_batches(batches):
                    layout = series.layout_index(*layout_key)
                    n_ch = values.shape[1]
                    step = max(1, min(MAX_CHUNK_ROWS, MAX_CHUNK_CELLS // max(1, n_ch)))
                    for day, a, b in _day_runs(t, step):
                        pt = codec.encode_samples(layout, t[a:b], values[a:b])
                        rows.append(self._seal_chunk(series, day, pt, b - a, t[a:b]))
                meta = batches[-1].meta
                if meta and meta != series.meta:
                    series.meta = dict(meta)
            if frames:
                series = self._load_series_for_write(KIND_FRAMES, "", create=True)
                assert series is not None
                touched[series.sid] = series
                for group in _frame_groups(frames):
                    t = np.array([f.t for f in group])
                    rows.append(
                        self._seal_chunk(
                            series, _day(group[0].t), codec.encode_frames(group), len(group), t
                        )
                    )
            if preds:
                series = self._load_series_for_write(KIND_PREDICTIONS, "", create=True)
                assert series is not None
                touched[series.sid] = series
                for pgroup in _day_groups(preds, lambda p: p.t):
                    t = np.array([p.t for p in pgroup])
                    plain = codec.encode_predictions(pgroup)
                    rows.append(self._seal_chunk(series, _day(pgroup[0].t), plain, len(pgroup), t))
            self._conn.executemany(
                "INSERT INTO chunk (sn, seq, key_id, b0, b1, sealed) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            for series in touched.values():
                self._save_series(series)

    def _seal_chunk(
        self, series: _Series, day: int, plain: bytes, n: int, t: FloatArray
    ) -> tuple[int, int, int, int, int, bytes]:
        key_id, aead = self._key_for_write(series.sid, day)
        t_min, t_max = float(t.min()), float(t.max())
        b0, b1 = math.floor(t_min / BUCKET_S), math.floor(t_max / BUCKET_S)
        seq = series.next_seq
        series.next_seq += 1
        series.add(day, n, t_min, t_max)
        sealed = codec.seal(
            aead, plain, codec.chunk_ad(self._keys.twin_id, series.sid, seq, key_id, b0, b1)
        )
        return series.sn, seq, key_id, b0, b1, sealed

    # -- reading chunks --------------------------------------------------------------------------

    def _chunk_rows(
        self, sn: int, t0: float | None, t1: float | None, *, descending: bool = False
    ) -> Iterator[_ChunkRow]:
        """Rows overlapping [t0, t1] in (b0, seq) order, fetched a page at a time."""
        lo = math.floor(t0 / BUCKET_S) if t0 is not None else None
        hi = math.floor(t1 / BUCKET_S) if t1 is not None else None
        where = ["sn = ?"]
        args: list[Any] = [sn]
        if lo is not None:
            where.append("b1 >= ?")
            args.append(lo)
        if hi is not None:
            where.append("b0 <= ?")
            args.append(hi)
        order = "DESC" if descending else "ASC"
        cmp = "<" if descending else ">"
        cursor: tuple[int, int] | None = None
        while True:
            page_where = list(where)
            page_args = list(args)
            if cursor is not None:
                # keyset pagination: the index (sn, b0, seq) seeks straight to the next page
                page_where.append(f"(b0, seq) {cmp} (?, ?)")
                page_args += list(cursor)
            if lo is not None and (descending or cursor is None):
                # a chunk never spans two days, so it starts at most a day before it ends
                page_where.append("b0 >= ?")
                page_args.append(lo - _BUCKETS_PER_PERIOD)
            sql = (
                "SELECT sn, seq, key_id, b0, b1, sealed FROM chunk WHERE "  # noqa: S608 - fixed fragments
                + " AND ".join(page_where)
                + f" ORDER BY b0 {order}, seq {order} LIMIT {_PAGE}"
            )
            with self._lock, self._db("reading chunks"):
                page = self._conn.execute(sql, page_args).fetchall()
            for r in page:
                yield _ChunkRow(int(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]), bytes(r[5]))
            if len(page) < _PAGE:
                return
            cursor = (int(page[-1][3]), int(page[-1][1]))

    def _open_chunk(self, series: _Series, row: _ChunkRow) -> bytes | None:
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

    def _chunk_damage(self, series: _Series, row: _ChunkRow, what: str) -> DataCorrupt:
        label = f"stream {series.name!r}" if series.kind == KIND_SAMPLES else f"the {series.kind}"
        span = f"{fmt_time(row.b0 * BUCKET_S)} .. {fmt_time((row.b1 + 1) * BUCKET_S)}"
        return _ChunkDamage(
            f"{label}: data between {span} (chunk {row.seq}) {what}",
            hint="run 'edgetwin verify' to list all damage; everything else stays readable",
            short=f"chunk {row.seq} {what}",
        )

    def _decode_row(
        self,
        series: _Series,
        row: _ChunkRow,
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
        self, series: _Series, t0: float | None, t1: float | None, on_corrupt: OnCorrupt
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
        series: _Series,
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

    # -- records ------------------------------------------------------------------------------

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

    # -- audit -------------------------------------------------------------------------------

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

    # -- forgetting ------------------------------------------------------------------------------

    def _destroy_keys(self, key_ids: Sequence[int]) -> int:
        if not key_ids:
            return 0
        self._conn.executemany("DELETE FROM dek WHERE id = ?", [(k,) for k in key_ids])
        self._ks_removed.update(key_ids)
        for cache_key, key_id in list(self._active.items()):
            if key_id in self._ks_removed:
                del self._active[cache_key]
        return len(key_ids)

    def _forget_series(self, sn: int, sid: bytes, kind: str, rows: int) -> ForgetReport:
        report = ForgetReport()
        keys = [int(r[0]) for r in self._conn.execute("SELECT id FROM dek WHERE scope = ?", (sid,))]
        report.keys_destroyed = self._destroy_keys(keys)
        cur = self._conn.execute("DELETE FROM chunk WHERE sn = ?", (sn,))
        report.chunks_deleted = cur.rowcount
        self._count_rows(report, kind, rows)
        self._conn.execute("DELETE FROM series WHERE sn = ?", (sn,))
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

    def _count_rows(self, report: ForgetReport, kind: str, rows: int) -> None:
        if kind == KIND_SAMPLES:
            report.samples_deleted += rows
        elif kind == KIND_FRAMES:
            report.frames_deleted += rows
        else:
            report.predictions_deleted += rows

    # -- forgetting what was computed from forgotten data (policy: store/derived.py) --------

    def _stream_taint(self, sn: int, series: _Series | None) -> Taint:
        """What a stream could have fed, and when: its channels and its chunks' spans."""
        hours = [
            (int(b0), int(b1))
            for b0, b1 in self._conn.execute("SELECT b0, b1 FROM chunk WHERE sn = ?", (sn,))
        ]
        if series is None:  # unreadable description: every feature, hour precision
            return Taint.of_stream(None, stream_spans(hours, None))
        channels = {c for layout, _ in series.layouts for c in layout}
        return Taint.of_stream(channels, stream_spans(hours, series.periods))

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
        def every_forecast(row: _ChunkRow) -> bool:
            # the chunk's clear hours, narrowed to its day's first and last forecast
            assert preds is not None
            lo, hi = float(row.b0 * BUCKET_S), float((row.b1 + 1) * BUCKET_S)
            stats = preds.periods.get(row.b0 // _BUCKETS_PER_PERIOD)
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

    def _days_within(self, series: _Series, lo: float, hi: float) -> list[int]:
        return sorted(
            day for day, (_c, rows, first, last) in series.periods.items()
            if rows and first <= hi and last >= lo
        )

    def _day_items(
        self, series: _Series, day: int, decode: Callable[[bytes], list[Any]]
    ) -> Iterator[list[Any]]:
        """The decoded chunks of one day, one list each (damaged ones skipped, logged)."""
        lo, hi = day * _BUCKETS_PER_PERIOD, (day + 1) * _BUCKETS_PER_PERIOD - 1
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
                    "DELETE FROM chunk WHERE sn = ? AND b0 < ?",
                    (series.sn, cut_day * _BUCKETS_PER_PERIOD),
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

    def _rekey_day(
        self,
        series: _Series,
        day: int,
        *,
        keep_from: float | None,
        edit: Callable[[list[Any]], list[Any]] | None = None,
        gone: Callable[[_ChunkRow], bool] | None = None,
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
        lo, hi = day * _BUCKETS_PER_PERIOD, (day + 1) * _BUCKETS_PER_PERIOD - 1
        rows = [
            _ChunkRow(int(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]), bytes(r[5]))
            for r in self._conn.execute(
                "SELECT sn, seq, key_id, b0, b1, sealed FROM chunk "
                "WHERE sn = ? AND b0 >= ? AND b0 <= ? ORDER BY seq",
                (series.sn, lo, hi),
            )
        ]
        stats = [0, 0, math.inf, -math.inf]
        widths = [len(c) for c, _ in series.layouts]
        for row in rows:
            if gone is not None and gone(row):
                self._conn.execute("DELETE FROM chunk WHERE sn = ? AND seq = ?", (row.sn, row.seq))
                report.chunks_deleted += 1
                continue
            try:
                plain = self._open_chunk(series, row)
            except DataCorrupt as exc:
                plain = None
                _LOGGER.warning("%s; dropped while re-keying", exc.message)
            if plain is None:
                # damaged, or its key already gone: it cannot be carried over
                self._conn.execute("DELETE FROM chunk WHERE sn = ? AND seq = ?", (row.sn, row.seq))
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
                self._conn.execute("DELETE FROM chunk WHERE sn = ? AND seq = ?", (row.sn, row.seq))
                report.chunks_deleted += 1
                continue
            key_id, aead = self._key_for_write(series.sid, day)
            t_min, t_max = float(kept_t.min()), float(kept_t.max())
            b0, b1 = math.floor(t_min / BUCKET_S), math.floor(t_max / BUCKET_S)
            sealed = codec.seal(
                aead, plain, codec.chunk_ad(self._keys.twin_id, series.sid, row.seq, key_id, b0, b1)
            )
            self._conn.execute(
                "UPDATE chunk SET key_id = ?, b0 = ?, b1 = ?, sealed = ? WHERE sn = ? AND seq = ?",
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

    def _destroy_unused_keys(self, report: ForgetReport, *, period: int | None) -> None:
        """Destroy retired keys that no row references any more."""
        sql = (
            "SELECT id FROM dek WHERE active = 0"
            " AND id NOT IN (SELECT key_id FROM chunk)"
            " AND id NOT IN (SELECT key_id FROM record)"
            " AND id NOT IN (SELECT key_id FROM series)"
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

    # -- checks --------------------------------------------------------------------------------

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
                rows = self._conn.execute("SELECT sn, sid, key_id, sealed FROM series").fetchall()
                known_sn = {int(r[0]) for r in rows}
                stray = self._conn.execute(
                    "SELECT sn, COUNT(*), MIN(b0), MAX(b1) FROM chunk GROUP BY sn"
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

    def _verify_chunks(self, series: _Series, report: VerifyReport) -> None:
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
                    if isinstance(exc, _ChunkDamage):
                        detail = exc.short
                    elif isinstance(exc, DataCorrupt):
                        detail = exc.message
                    else:
                        detail = f"chunk {row.seq} does not decode: {exc}"
                    report.problems.append(Problem("chunk", detail, label, t0, t1))
                    day = row.b0 // _BUCKETS_PER_PERIOD
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
                day = _day(float(t.min())) if t.size else row.b0 // _BUCKETS_PER_PERIOD
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


# ======================================================================================
# module helpers
# ======================================================================================


def _make_home(home: Path) -> None:
    try:
        existed = home.exists()
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not existed or not any(home.iterdir()):
            home.chmod(0o700)
        probe = home / f".probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise HomeError(
            f"cannot use {home} as a twin home: {exc.strerror}",
            hint="choose a directory you can write (--home or EDGETWIN_HOME)",
        ) from exc


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    uri = path.absolute().as_uri() + ("?mode=rwc" if create else "?mode=rw")
    try:
        conn = sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False, timeout=10.0
        )
    except sqlite3.Error as exc:
        raise _translate(exc, path, "opening the database") from exc
    try:
        if create:
            path.chmod(0o600)
        conn.execute("PRAGMA journal_mode = WAL").fetchone()
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA cell_size_check = ON")
        conn.execute("PRAGMA trusted_schema = OFF")
        conn.execute("PRAGMA foreign_keys = OFF")
    except sqlite3.Error as exc:
        conn.close()
        raise _translate(exc, path, "opening the database") from exc
    return conn


# primary SQLite result codes we translate
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN = 10, 11, 13, 14
_SQLITE_FORMAT, _SQLITE_NOTADB = 24, 26


def _translate(exc: sqlite3.Error, path: Path, what: str) -> EdgetwinError:
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary == _SQLITE_FULL:
        return StoreFull(
            f"{path}: the disk is full while {what}",
            hint="free some space; committed data is intact and pending data is kept for a retry",
        )
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB, _SQLITE_FORMAT):
        return DataCorrupt(
            f"{path} is damaged ({exc}) while {what}",
            hint="run 'edgetwin verify'; restore from a backup or an export bundle",
        )
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return HomeError(
            f"{path} stayed locked by another process while {what}",
            hint="another edgetwin command holds the twin; retry in a moment",
        )
    if primary in (_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_CANTOPEN):
        return HomeError(
            f"cannot write {path} while {what} ({exc})",
            hint="check the permissions and free space of the twin home",
        )
    if primary == _SQLITE_IOERR:
        return HomeError(
            f"I/O error on {path} while {what} ({exc})",
            hint="check the disk; committed data is intact",
        )
    return DataCorrupt(
        f"{path}: unexpected database error while {what} ({exc})",
        hint="run 'edgetwin verify'",
    )


def _make_check(keys: MasterKeys) -> bytes:
    return codec.seal(keys.check, b"edgetwin", b"edgetwin/check/v1")


def _record_failed_unlock(home: Path, kind: str) -> None:
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


def _day(t: float) -> int:
    return math.floor(t / PERIOD_S)


def _group_batches(
    batches: list[SampleBatch],
) -> Iterator[tuple[tuple[tuple[str, ...], tuple[str, ...]], FloatArray, FloatArray]]:
    """Consecutive batches with the same channels, concatenated."""
    i = 0
    while i < len(batches):
        key = (batches[i].channels, batches[i].units)
        j = i + 1
        while j < len(batches) and (batches[j].channels, batches[j].units) == key:
            j += 1
        group = batches[i:j]
        if len(group) == 1:
            yield key, group[0].t, group[0].values
        else:
            t = np.concatenate([b.t for b in group])
            yield key, t, np.concatenate([b.values for b in group])
        i = j


def _day_runs(t: FloatArray, max_rows: int) -> Iterator[tuple[int, int, int]]:
    """(day, start, stop) runs of rows within one UTC day, at most ``max_rows`` long."""
    days = np.floor(t / PERIOD_S).astype(np.int64)
    n = t.shape[0]
    if n and days[0] == days[-1] and (days == days[0]).all():
        cuts = [0, n]
    else:
        cuts = [0, *(np.flatnonzero(np.diff(days)) + 1).tolist(), n]
    for a, b in itertools.pairwise(cuts):
        for start in range(a, b, max_rows):
            yield int(days[start]), start, min(b, start + max_rows)


def _frame_groups(frames: list[FeatureFrame]) -> Iterator[list[FeatureFrame]]:
    def key(f: FeatureFrame) -> tuple[int, int, int]:
        return f.schema_version, int(f.values.shape[0]), _day(f.t)

    yield from _runs(frames, key)


def _day_groups(items: list[Any], t_of: Callable[[Any], float]) -> Iterator[list[Any]]:
    yield from _runs(items, lambda x: _day(t_of(x)))


def _runs(items: list[Any], key: Callable[[Any], Any]) -> Iterator[list[Any]]:
    i = 0
    while i < len(items):
        k = key(items[i])
        j = i + 1
        while j < len(items) and key(items[j]) == k and j - i < MAX_CHUNK_ROWS:
            j += 1
        yield items[i:j]
        i = j


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str, allow_nan=True))


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


def _brief(report: ForgetReport) -> dict[str, Any]:
    return {
        "keys_destroyed": report.keys_destroyed,
        "chunks_deleted": report.chunks_deleted,
        "records_deleted": report.records_deleted,
        "frames_shredded": report.frames_shredded,
        "predictions_deleted": report.predictions_deleted,
    }
