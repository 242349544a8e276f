"""TwinStore round trips: samples, frames, predictions, records, transactions, concurrency."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from edgetwin.errors import HomeError, MalformedInput, StoreFull, UsageError
from edgetwin.features.schema import NAMES as FEATURE_NAMES
from edgetwin.features.schema import SCHEMA_VERSION as FEATURE_SCHEMA
from edgetwin.store import Secret, TwinStore
from edgetwin.store.schema import SCHEMA_VERSION
from edgetwin.store.twin import BUCKET_S, PERIOD_S
from edgetwin.types import FeatureFrame, Prediction, SampleBatch
from tests.store.helpers import PASS, T0, all_samples, batch


def test_samples_round_trip_exactly(store: TwinStore) -> None:
    eeg = batch("muse", T0, 2560, ("eeg_af7", "eeg_af8", "eeg_tp9", "eeg_tp10"), rate=256.0)
    store.append_samples(eeg)
    hr = SampleBatch.build("hr", ["hr"], [T0, T0 + 1, T0 + 2], [[60.0], [np.nan], [62.5]])
    store.append_samples(hr)
    store.commit()
    t, v = all_samples(store, "muse")
    np.testing.assert_array_equal(t, eeg.t)
    np.testing.assert_array_equal(v, eeg.values)
    t, v = all_samples(store, "hr")
    np.testing.assert_array_equal(t, hr.t)
    assert v[0, 0] == 60.0 and math.isnan(v[1, 0]) and v[2, 0] == 62.5
    got = next(iter(store.read_samples("muse")))
    assert got.channels == ("eeg_af7", "eeg_af8", "eeg_tp9", "eeg_tp10")
    assert got.units == ("uV",) * 4


def test_nothing_is_visible_before_commit_and_commit_is_idempotent(store: TwinStore) -> None:
    store.append_samples(batch("hr", T0, 5))
    assert store.pending_rows() == 5
    assert store.streams() == []
    store.commit()
    store.commit()
    assert store.pending_rows() == 0
    assert [s.samples for s in store.streams()] == [5]


def test_streams_report_counts_ranges_meta_and_latest_layout(store: TwinStore) -> None:
    store.append_samples(batch("hr", T0, 10))
    store.commit()
    store.append_samples(
        SampleBatch.build("hr", ["hr", "rr"], [T0 + 20], [[61.0, 980.0]], meta={"device": "strap"})
    )
    store.commit()
    (info,) = store.streams()
    assert info.name == "hr"
    assert info.samples == 11
    assert info.first_t == T0 and info.last_t == T0 + 20
    assert info.channels == ("hr", "rr")
    assert info.meta == {"device": "strap"}
    assert info.to_json()["samples"] == 11
    # both layouts come back as they were written
    layouts = [b.channels for b in store.read_samples("hr")]
    assert layouts == [("hr",), ("hr", "rr")]


def test_time_range_reads_cut_chunks_and_cross_hours_and_days(store: TwinStore) -> None:
    # 3 days at one sample per minute, written as one batch: split by day into chunks
    n = 3 * 24 * 60
    b = batch("temp", T0, n, ("temp",), rate=1 / 60)
    store.append_samples(b)
    store.commit()
    assert store.streams()[0].chunks >= 3
    lo, hi = T0 + 36 * 3600 + 30, T0 + 40 * 3600 + 59
    t, v = all_samples(store, "temp", lo, hi)
    mask = (b.t >= lo) & (b.t <= hi)
    np.testing.assert_array_equal(t, b.t[mask])
    np.testing.assert_array_equal(v, b.values[mask])
    t, _ = all_samples(store, "temp", t0=T0 + 2 * PERIOD_S)
    np.testing.assert_array_equal(t, b.t[b.t >= T0 + 2 * PERIOD_S])
    t, _ = all_samples(store, "temp", t1=T0 + BUCKET_S)
    np.testing.assert_array_equal(t, b.t[b.t <= T0 + BUCKET_S])


def test_streaming_iteration_pages_through_many_chunks(store: TwinStore) -> None:
    for i in range(300):  # one chunk per commit, like the daemon's flush loop
        store.append_samples(batch("ppg", T0 + i, 64, ("ppg",), rate=64.0, seed=i))
        store.commit()
    chunks = list(store.read_samples("ppg"))
    assert len(chunks) == 300
    assert sum(len(c) for c in chunks) == 300 * 64
    assert all(np.all(np.diff(c.t) > 0) for c in chunks)
    assert [c.t[0] for c in chunks] == sorted(c.t[0] for c in chunks)


def test_unknown_stream_is_a_usage_error_naming_the_known_ones(store: TwinStore) -> None:
    store.append_samples(batch("hr", T0, 3))
    store.commit()
    with pytest.raises(UsageError, match=r"'hrv'.*hr"):
        store.read_samples("hrv")


def test_bad_batches_are_refused(store: TwinStore) -> None:
    with pytest.raises(MalformedInput, match="non-finite"):
        store.append_samples(SampleBatch.build("hr", ["hr"], [T0, np.nan], [[1.0], [2.0]]))
    store.append_samples(SampleBatch.build("hr", ["hr"], [], np.zeros((0, 1))))
    assert store.pending_rows() == 0


def _frame(t: float, k: int = len(FEATURE_NAMES), version: int = FEATURE_SCHEMA) -> FeatureFrame:
    # frames of the current feature schema: reads give every stored frame as that schema
    return FeatureFrame(
        t=t,
        values=np.arange(k, dtype=float) + t % 7,
        quality=np.linspace(0, 1, k),
        imputed=np.array([i % 2 == 0 for i in range(k)]),
        schema_version=version,
    )


def test_frames_round_trip_and_range(store: TwinStore) -> None:
    frames = [_frame(T0 + 5 * i) for i in range(100)]
    frames[3].values[1] = np.nan
    store.append_frames(frames[:50])
    store.commit()
    store.append_frames(frames[50:])
    store.commit()
    got = list(store.read_frames())
    assert len(got) == 100
    for a, b in zip(frames, got, strict=True):
        assert a.t == b.t and a.schema_version == b.schema_version
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_array_equal(a.quality, b.quality)
        np.testing.assert_array_equal(a.imputed, b.imputed)
    mid = list(store.read_frames(T0 + 100, T0 + 200))
    assert [f.t for f in mid] == [T0 + 5 * i for i in range(20, 41)]
    assert store.series_counts() == {"frames": 100, "predictions": 0}
    # the same frames as columns, a block per stored chunk, the range cut inside a chunk
    blocks = list(store.iter_frame_columns(T0 + 100, T0 + 300))
    assert len(blocks) == 2  # the two commits' chunks
    t = np.concatenate([b.t for b in blocks])
    assert t.tolist() == [T0 + 5 * i for i in range(20, 61)]
    values = np.concatenate([b.values for b in blocks])
    np.testing.assert_array_equal(values, np.stack([f.values for f in frames[20:61]]))
    assert all(b.schema_version == frames[0].schema_version for b in blocks)
    assert list(store.iter_frame_columns(T0 + 1000, T0 + 2000)) == []


def _pred(t: float, target: str = "hr") -> Prediction:
    return Prediction(
        t=t, target=target, step_s=5.0, horizon=(1.0, 2.0), band=((0.5, 1.5), (1.0, 3.0)),
        attention=(0.25, 0.75), imputed=((t - 10, t - 5),), model="forecaster-int8",
        anomaly=t % 2 == 0,
    )


def test_predictions_last_and_since(store: TwinStore) -> None:
    assert store.read_predictions(last=3) == []
    preds = [_pred(T0 + 5 * i, "hr" if i % 2 else "rmssd") for i in range(40)]
    for i in range(0, 40, 7):
        store.append_predictions(preds[i : i + 7])
        store.commit()
    assert store.read_predictions() == preds
    assert store.read_predictions(last=5) == preds[-5:]
    assert store.read_predictions(last=0) == []
    assert store.read_predictions(t0=T0 + 150) == preds[30:]
    assert store.read_predictions(last=2, t0=T0 + 150) == preds[-2:]


def test_predictions_last_across_days(store: TwinStore) -> None:
    preds = [_pred(T0 + i * 6 * 3600) for i in range(20)]  # 5 days, 4 a day
    for p in preds:
        store.append_predictions([p])
        store.commit()
    assert store.read_predictions(last=9) == preds[-9:]



def test_a_bulk_append_of_predictions_is_split_into_bounded_chunks(store: TwinStore) -> None:
    """An ingested day appends ~10^5 forecasts at once; a reader streams chunk by chunk, so
    no chunk may hold more than PREDICTIONS_PER_CHUNK of them (memory stays at one chunk)."""
    from edgetwin.store.series import PREDICTIONS_PER_CHUNK

    n = 3 * PREDICTIONS_PER_CHUNK + 17
    preds = [_pred(T0 + 5 * i, "hr" if i % 2 else "rmssd") for i in range(n)]
    store.append_predictions(preds)
    store.commit()
    with sqlite3.connect(store.home / "twin.db") as db:  # the only series in this twin
        (chunks,) = db.execute("SELECT COUNT(*) FROM chunk").fetchone()
    assert chunks == 4
    assert list(store.iter_predictions()) == preds
    assert store.read_predictions(last=20) == preds[-20:]

def test_records_crud(store: TwinStore) -> None:
    assert store.get_record("pairing", "strap") is None
    store.put_record("pairing", "strap", {"address": "C0:FF:EE:00:11:22", "profile": "hr"})
    store.put_record("pairing", "muse", {"board": "MUSE_S"})
    store.put_record("consent", "hr_mean", {"granted": True})
    assert store.get_record("pairing", "strap") == {"address": "C0:FF:EE:00:11:22", "profile": "hr"}
    assert list(store.list_records("pairing")) == ["muse", "strap"]
    store.put_record("pairing", "strap", {"address": "C0:FF:EE:00:11:23"})
    assert store.get_record("pairing", "strap") == {"address": "C0:FF:EE:00:11:23"}
    assert store.delete_record("pairing", "strap") is True
    assert store.delete_record("pairing", "strap") is False
    assert store.list_records("pairing") == {"muse": {"board": "MUSE_S"}}
    assert store.list_records("nothing") == {}
    with pytest.raises(TypeError):
        store.put_record("pairing", "x", ["not", "a", "dict"])  # type: ignore[arg-type]


def test_transaction_is_atomic(store: TwinStore) -> None:
    store.put_record("budget", "2024-01-01", {"spent": 0.5})
    def fails() -> None:
        with store.transaction():
            store.put_record("budget", "2024-01-01", {"spent": 1.0})
            store.put_record("outbox", "r1", {"payload": 1})
            store.audit("sync_release", metric="hr_mean")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fails()
    assert store.get_record("budget", "2024-01-01") == {"spent": 0.5}
    assert store.get_record("outbox", "r1") is None
    assert [e["event"] for e in store.audit_entries()] == ["init"]
    with store.transaction():
        store.put_record("budget", "2024-01-01", {"spent": 1.0})
        store.audit("sync_release", metric="hr_mean")
    assert store.get_record("budget", "2024-01-01") == {"spent": 1.0}
    assert store.verify().ok


def test_reopen_sees_everything(twin_home: Path, store: TwinStore, secret: Secret) -> None:
    store.append_samples(batch("hr", T0, 10))
    store.append_frames([_frame(T0)])
    store.append_predictions([_pred(T0)])
    store.put_record("pairing", "strap", {"address": "AA"})
    store.commit()
    store.close()
    with TwinStore.open(twin_home, secret) as again:
        assert again.streams()[0].samples == 10
        assert len(list(again.read_frames())) == 1
        assert again.read_predictions() == [_pred(T0)]
        assert again.get_record("pairing", "strap") == {"address": "AA"}
        assert again.verify().ok


def test_create_refuses_an_existing_twin_and_an_unwritable_home(
    tmp_path: Path, store: TwinStore, twin_home: Path, secret: Secret
) -> None:
    with pytest.raises(HomeError, match="already exists"):
        TwinStore.create(twin_home, secret)
    # a path through a regular file cannot become a directory, even for root
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(HomeError, match="cannot use"):
        TwinStore.create(blocker / "home", secret)


def test_home_and_files_are_private(store: TwinStore, twin_home: Path) -> None:
    assert twin_home.stat().st_mode & 0o777 == 0o700
    for name in ("twin.db", "keystore.json"):
        assert (twin_home / name).stat().st_mode & 0o077 == 0


def test_open_on_an_empty_home_is_a_home_error(tmp_path: Path, secret: Secret) -> None:
    with pytest.raises(HomeError, match="holds no twin"):
        TwinStore.open(tmp_path, secret)


def test_a_failed_commit_keeps_the_buffer(store: TwinStore) -> None:
    """Full disk (SQLITE_FULL via max_page_count): precise error, nothing committed lost."""
    store.append_samples(batch("hr", T0, 100))
    store.commit()
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")
    big = batch("eeg", T0, 20000, ("eeg_a", "eeg_b", "eeg_c", "eeg_d"), rate=256.0, seed=3)
    store.append_samples(big)
    with pytest.raises(StoreFull, match="disk is full"):
        store.commit()
    assert store.pending_rows() == 20000
    assert [s.name for s in store.streams()] == ["hr"]
    np.testing.assert_array_equal(all_samples(store, "hr")[0], T0 + np.arange(100))
    store._conn.execute("PRAGMA max_page_count = 1073741823")
    store.commit()
    assert store.pending_rows() == 0
    _, v = all_samples(store, "eeg")
    np.testing.assert_array_equal(v, big.values)
    assert store.verify().ok


def test_two_handles_daemon_and_cli(twin_home: Path, store: TwinStore, secret: Secret) -> None:
    """One handle appends while another writes records and forgets a stream."""
    cli = TwinStore.open(twin_home, secret)
    try:
        store.append_samples(batch("hr", T0, 10))
        store.append_samples(batch("spo2", T0, 10, ("spo2",)))
        store.commit()
        cli.put_record("pairing", "strap", {"address": "AA"})
        assert store.get_record("pairing", "strap") == {"address": "AA"}
        cli.forget(stream="hr")
        # the appender's cached keys for "hr" are stale now; its next commit starts afresh
        store.append_samples(batch("hr", T0 + 100, 5))
        store.append_samples(batch("spo2", T0 + 100, 5, ("spo2",)))
        store.commit()
        t, _ = all_samples(cli, "hr")
        np.testing.assert_array_equal(t, T0 + 100 + np.arange(5))
        assert {s.name: s.samples for s in cli.streams()} == {"hr": 5, "spo2": 15}
        assert cli.verify().ok
    finally:
        cli.close()


def test_sqlite_settings(store: TwinStore) -> None:
    conn: sqlite3.Connection = store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4


def test_repr_hides_secrets(store: TwinStore) -> None:
    assert PASS not in repr(Secret.passphrase(PASS))
    assert "TwinStore" in repr(store)


def test_a_time_beyond_1e11_s_is_refused_at_append_and_never_blocks_later_commits(
    store: TwinStore,
) -> None:
    """A hostile clock (t = 1e300) once passed append and then failed every commit with an
    OverflowError, so nothing of any stream was ever stored again."""
    for t in (1e300, -1e300, 2e11, -2e11):
        with pytest.raises(MalformedInput, match=r"outside the years -1200\.\.5138"):
            store.append_samples(SampleBatch.build("evil", ["hr"], [T0, t], [[60.0], [61.0]]))
    frame = FeatureFrame(1e300, np.zeros(3), np.ones(3), np.zeros(3, bool), 1)
    with pytest.raises(MalformedInput, match=r"-1200\.\.5138"):
        store.append_frames([frame])
    pred = Prediction(1e300, "hr", 5.0, (60.0,), ((55.0, 65.0),), (1.0,), (), "test")
    with pytest.raises(MalformedInput, match=r"-1200\.\.5138"):
        store.append_predictions([pred])
    assert store.pending_rows() == 0
    store.append_samples(SampleBatch.build("good", ["hr"], [T0], [[60.0]]))
    store.commit()
    assert [s.name for s in store.streams()] == ["good"]
