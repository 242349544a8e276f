"""Each part of the split store on its own: db, series, chunks, core, audit, rekey, and the
public API the daemon and CLI rely on (names and signatures of TwinStore)."""

from __future__ import annotations

import inspect
import json
import math
import os
import sqlite3
import stat
from pathlib import Path

import numpy as np
import pytest

from edgetwin.errors import DataCorrupt, HomeError, StoreFull
from edgetwin.store import Secret, TwinStore
from edgetwin.store.audit import PENDING_FAILURES_FILE, record_failed_unlock
from edgetwin.store.chunks import _day_runs, _group_batches
from edgetwin.store.db import connect, translate_error
from edgetwin.store.rekey import _kept
from edgetwin.store.series import PERIOD_S, SeriesInfo
from edgetwin.types import SampleBatch
from tests.store.helpers import PASS, T0, all_samples, batch

# -- db.py ---------------------------------------------------------------------------------


def test_connect_makes_a_private_wal_file_with_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    conn = connect(path, create=True)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        conn.close()


def test_translate_error_names_busy_full_and_damaged_files(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    holder = connect(path, create=True)
    holder.execute("CREATE TABLE t (v BLOB)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    with pytest.raises(sqlite3.OperationalError) as busy:
        other.execute("BEGIN IMMEDIATE")
    assert isinstance(translate_error(busy.value, path, "testing"), HomeError)
    holder.execute("ROLLBACK")
    pages = holder.execute("PRAGMA page_count").fetchone()[0]
    holder.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(sqlite3.Error) as full:
        holder.execute("INSERT INTO t VALUES (zeroblob(1000000))")
    err = translate_error(full.value, path, "testing")
    assert isinstance(err, StoreFull) and "disk is full while testing" in err.message
    other.close()
    holder.close()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 300)
    conn = sqlite3.connect(junk)
    with pytest.raises(sqlite3.DatabaseError) as bad:
        conn.execute("SELECT * FROM sqlite_master").fetchall()
    assert isinstance(translate_error(bad.value, junk, "testing"), DataCorrupt)
    conn.close()


# -- series.py -------------------------------------------------------------------------------


def test_series_info_round_trips_and_reuses_layouts() -> None:
    s = SeriesInfo(sn=3, sid=b"s" * 16, kind="samples", name="hr")
    assert s.layout_index(("hr",), ("bpm",)) == 0
    assert s.layout_index(("rr",), ("ms",)) == 1
    assert s.layout_index(("hr",), ("bpm",)) == 0
    s.add(19675, 10, T0, T0 + 9)
    s.add(19675, 5, T0 - 3, T0 + 2)
    s.add(19676, 1, T0 + PERIOD_S, T0 + PERIOD_S)
    back = SeriesInfo.from_json(3, b"s" * 16, s.to_json())
    assert back == s
    assert back.totals() == (3, 16, T0 - 3, T0 + PERIOD_S)


def test_series_json_text_follows_every_change_of_its_days() -> None:
    s = SeriesInfo(sn=1, sid=b"s" * 16, kind="samples", name="ÉEG \"x\"")
    s.layout_index(("a",), ("uV",))
    s.meta = {"device": "muse"}
    for day in range(19000, 19010):
        s.add(day, 5, day * PERIOD_S + 1.5, day * PERIOD_S + 9.25)
    assert json.loads(s.to_json_text()) == s.to_json()
    s.add(19009, 3, 19009 * PERIOD_S + 0.5, 19009 * PERIOD_S + 20.0)  # today changes
    s.periods.pop(19000)  # a forgotten day
    s.periods[19003] = [0, 0, math.inf, -math.inf]  # a re-keyed day left empty
    s.next_seq = 42
    assert json.loads(s.to_json_text()) == s.to_json()
    back = SeriesInfo.from_json(1, b"s" * 16, json.loads(s.to_json_text()))
    assert back == s


# -- chunks.py -------------------------------------------------------------------------------


def test_day_runs_cut_at_utc_midnight_and_at_the_row_limit() -> None:
    midnight = float((int(T0) // PERIOD_S + 1) * PERIOD_S)
    one_day = midnight - 10 + np.arange(5.0)
    assert list(_day_runs(one_day, 2)) == [(int(T0) // PERIOD_S, 0, 2),
                                          (int(T0) // PERIOD_S, 2, 4),
                                          (int(T0) // PERIOD_S, 4, 5)]
    day = int(midnight) // PERIOD_S
    across = np.array([midnight - 2, midnight - 1, midnight, midnight + 1, midnight - 0.5])
    assert list(_day_runs(across, 10)) == [(day - 1, 0, 2), (day, 2, 4), (day - 1, 4, 5)]


def test_group_batches_joins_only_neighbours_with_the_same_channels() -> None:
    a1, a2 = batch("x", T0, 3, ("a",)), batch("x", T0 + 3, 2, ("a",))
    b1 = batch("x", T0 + 5, 1, ("b",))
    a3 = batch("x", T0 + 6, 1, ("a",))
    groups = list(_group_batches([a1, a2, b1, a3]))
    assert [(k[0], t.shape[0]) for k, t, _, _ in groups] == [
        (("a",), 5), (("b",), 1), (("a",), 1)
    ]
    np.testing.assert_array_equal(groups[0][2], np.concatenate([a1.values, a2.values]))


def test_a_batch_across_midnight_is_sealed_under_two_day_keys(store: TwinStore) -> None:
    midnight = float((int(T0) // PERIOD_S + 1) * PERIOD_S)
    b = batch("hr", midnight - 5, 10)
    store.append_samples(b)
    store.commit()
    keys = {int(r[0]) for r in store._conn.execute("SELECT key_id FROM chunk")}
    assert len(keys) == 2
    t, v = all_samples(store, "hr")
    np.testing.assert_array_equal(t, b.t)
    np.testing.assert_array_equal(v, b.values)


def test_commit_keeps_every_series_description_in_step(twin_home: Path, secret: Secret) -> None:
    with TwinStore.create(twin_home, secret) as store:
        for i in range(3):
            store.append_samples(batch("hr", T0 + 10 * i, 10))
            store.append_samples(batch("eda", T0 + 10 * i, 20, ("eda",), rate=2.0))
            store.commit()
    with TwinStore.open(twin_home, secret) as store:
        got = {s.name: (s.samples, s.chunks) for s in store.streams()}
        assert got == {"eda": (60, 3), "hr": (30, 3)}
        assert store.verify().ok


# -- core.py ---------------------------------------------------------------------------------


def test_a_failed_transaction_undoes_nested_writes_and_new_keys(store: TwinStore) -> None:
    keys_before = set(store._ks.deks)

    def nested_then_fail() -> None:
        with store.transaction():
            store.put_record("settings", "a", {"v": 1})
            with store.transaction():
                store.put_record("other-kind", "b", {"v": 2})
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        nested_then_fail()
    assert store.get_record("settings", "a") is None
    assert store.get_record("other-kind", "b") is None
    assert set(store._ks.deks) == keys_before
    store.put_record("settings", "a", {"v": 3})
    assert store.get_record("settings", "a") == {"v": 3}


def test_a_forget_by_another_connection_is_seen_before_the_next_append(
    twin_home: Path, secret: Secret
) -> None:
    with TwinStore.create(twin_home, secret) as daemon:
        daemon.append_samples(batch("hr", T0, 5))
        daemon.commit()
        with TwinStore.open(twin_home, secret) as cli:
            cli.forget(stream="hr")
        daemon.append_samples(batch("hr", T0 + 100, 5))
        daemon.commit()  # its cached series is stale: must not write into the forgotten one
        t, _ = all_samples(daemon, "hr")
        np.testing.assert_array_equal(t, T0 + 100 + np.arange(5.0))
        assert daemon.verify().ok


# -- audit.py --------------------------------------------------------------------------------


def test_audit_entries_of_two_connections_form_one_valid_chain(
    twin_home: Path, secret: Secret
) -> None:
    with TwinStore.create(twin_home, secret) as a, TwinStore.open(twin_home, secret) as b:
        a.audit("one")
        b.audit("two")
        a.audit("three")
        events = [e["event"] for e in b.audit_entries()]
        assert events[-3:] == ["one", "two", "three"]
        assert a.verify_audit() == []


def test_failed_unlocks_noted_outside_enter_the_chain_at_next_unlock(
    twin_home: Path, secret: Secret
) -> None:
    TwinStore.create(twin_home, secret).close()
    record_failed_unlock(twin_home, "passphrase")
    assert (twin_home / PENDING_FAILURES_FILE).exists()
    with TwinStore.open(twin_home, Secret.passphrase(PASS)) as store:
        last = store.audit_entries()[-1]
        assert last["event"] == "unlock_failed"
        assert last["details"]["secret"] == "passphrase"
        assert store.verify_audit() == []
    assert not (twin_home / PENDING_FAILURES_FILE).exists()


# -- rekey.py --------------------------------------------------------------------------------


def test_kept_returns_the_same_list_when_nothing_changes() -> None:
    items = [1.0, 2.0, 3.0]
    assert _kept(items, None, None, float) is items
    assert _kept(items, 0.5, None, float) is items
    assert _kept(items, 2.0, None, float) == [2.0, 3.0]
    assert _kept(items, None, lambda xs: xs[:1], float) == [1.0]


def test_rotate_with_reencrypt_leaves_no_chunk_under_an_old_key(store: TwinStore) -> None:
    store.append_samples(batch("hr", T0, 50))
    store.commit()
    old = {int(r[0]) for r in store._conn.execute("SELECT key_id FROM chunk")}
    store.rotate_keys(reencrypt=True)
    new = {int(r[0]) for r in store._conn.execute("SELECT key_id FROM chunk")}
    assert new and not new & old
    assert not old & set(store._ks.deks)
    t, _ = all_samples(store, "hr")
    assert t.shape[0] == 50


# -- the public API --------------------------------------------------------------------------

# What the daemon, the CLI and the bundle code call: the split must keep it as it was.
PUBLIC_API = {
    "append_frames": "(self, frames: 'Sequence[FeatureFrame]') -> 'None'",
    "append_markers": "(self, markers: 'Sequence[Marker]') -> 'None'",
    "has_marker_source": "(self, source: 'str') -> 'bool'",
    # added for issue 18: reads on their own connection; tail_counts (optional) carries the
    # counted tails from one status reader to the next
    "reader": "(self, *, tail_counts: 'TailCounts | None' = None) -> 'TwinStore'",
    # issue 18: a read-only handle in a child process (the daemon's refit), keys over a pipe
    "handoff": "(self) -> 'dict[str, str]'",
    "from_handoff": "(doc: 'dict[str, str]') -> 'TwinStore'",
    "read_markers": "(self, t0: 'float | None' = None, t1: 'float | None' = None, *,"
    " source: 'str | None' = None, on_corrupt: 'OnCorrupt' = 'raise') -> 'list[Marker]'",
    "append_predictions": "(self, preds: 'Sequence[Prediction]') -> 'None'",
    "append_samples": "(self, batch: 'SampleBatch') -> 'None'",
    "apply_retention": "(self, now: 'float', retention: 'RetentionConfig') -> 'ForgetReport'",
    "audit": "(self, event: 'str', **details: 'Any') -> 'None'",
    "audit_entries": "(self, *, on_corrupt: 'OnCorrupt' = 'raise') -> 'list[dict[str, Any]]'",
    "change_secret": "(self, new: 'Secret', *, kdf: 'KdfParams | None' = None) -> 'None'",
    "close": "(self) -> 'None'",
    "commit": "(self) -> 'None'",
    "control_proof": "(self, message: 'bytes') -> 'bytes'",
    "create": "(home: 'Path', secret: 'Secret', *, kdf: 'KdfParams | None' = None)"
    " -> 'TwinStore'",
    "delete_record": "(self, kind: 'str', key: 'str') -> 'bool'",
    "forget": "(self, *, stream: 'str | None' = None, before: 'float | None' = None,"
    " everything: 'bool' = False) -> 'ForgetReport'",
    "get_record": "(self, kind: 'str', key: 'str') -> 'dict[str, Any] | None'",
    "iter_predictions": "(self, t0: 'float | None' = None, t1: 'float | None' = None, *,"
    " on_corrupt: 'OnCorrupt' = 'raise', explained: 'bool' = True) -> 'Iterator[Prediction]'",
    "iter_frame_columns": "(self, t0: 'float | None' = None, t1: 'float | None' = None, *,"
    " on_corrupt: 'OnCorrupt' = 'raise') -> 'Iterator[codec.FrameColumns]'",
    "kdf_params": "(self) -> 'KdfParams | None'",
    "list_records": "(self, kind: 'str') -> 'dict[str, dict[str, Any]]'",
    # a full disk does not stop the twin: the oldest raw days go first
    "make_room": "(self, now: 'float', min_free_bytes: 'int', *, "
                 "disk_free: 'Callable[[Path], int] | None' = None) -> 'RoomReport'",
    "open": "(home: 'Path', secret: 'Secret', *, strict: 'bool' = True) -> 'TwinStore'",
    "pending_rows": "(self) -> 'int'",
    # added for issue 18: a daemon whose commits keep failing bounds what it buffers
    "pending_sample_bytes": "(self) -> 'int'",
    "shed_oldest_samples": "(self, keep_bytes: 'int') -> 'dict[str, int]'",
    "put_record": "(self, kind: 'str', key: 'str', value: 'dict[str, Any]') -> 'None'",
    "read_frames": "(self, t0: 'float | None' = None, t1: 'float | None' = None, *,"
    " on_corrupt: 'OnCorrupt' = 'raise') -> 'Iterator[FeatureFrame]'",
    "read_predictions": "(self, last: 'int | None' = None, t0: 'float | None' = None, *,"
    " on_corrupt: 'OnCorrupt' = 'raise') -> 'list[Prediction]'",
    "read_samples": "(self, stream: 'str', t0: 'float | None' = None,"
    " t1: 'float | None' = None, *, on_corrupt: 'OnCorrupt' = 'raise')"
    " -> 'Iterator[SampleBatch]'",
    "remove_slot": "(self, kind: 'str') -> 'None'",
    "rotate_keys": "(self, *, reencrypt: 'bool' = False) -> 'ForgetReport'",
    "series_counts": "(self) -> 'dict[str, int]'",
    "slots": "(self) -> 'list[str]'",
    "streams": "(self, *, on_corrupt: 'OnCorrupt' = 'raise') -> 'list[StreamInfo]'",
    "transaction": "(self) -> 'Iterator[None]'",
    "verify": "(self) -> 'VerifyReport'",
    "verify_audit": "(self) -> 'list[Problem]'",
}


def test_twin_store_keeps_its_public_methods_and_signatures() -> None:
    got = {
        name: str(inspect.signature(getattr(TwinStore, name)))
        for name in dir(TwinStore)
        if not name.startswith("_") and callable(getattr(TwinStore, name))
    }
    assert got == PUBLIC_API


def test_sample_batches_with_meta_keep_the_newest_meta(store: TwinStore) -> None:
    b = batch("hr", T0, 3)
    store.append_samples(SampleBatch(b.stream, b.channels, b.units, b.t, b.values, {"dev": "a"}))
    store.commit()
    assert store.streams()[0].meta == {"dev": "a"}
