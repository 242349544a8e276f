"""Room on the twin's disk: below ``[retention] min_free_mib`` the oldest whole days of raw
samples go, never today's or yesterday's, never features, forecasts or records.

The free space *on the disk* is the outermost edge and is given by the test; the free pages
inside ``twin.db``, which deleting a day creates, are SQLite's own (a real file on disk)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgetwin.config import Config, ConfigError, RetentionConfig, parse_config
from edgetwin.daemon.app import ROOM_INTERVAL_S, _room_job, build_daemon
from edgetwin.disk import disk_free_bytes, disk_status
from edgetwin.errors import StoreFull
from edgetwin.features.schema import INDEX, NAMES, SCHEMA_VERSION
from edgetwin.store import Secret, TwinStore
from edgetwin.types import FeatureFrame, Prediction, SampleBatch
from tests.store.helpers import all_samples

DAY = 86400.0
MIDNIGHT = 1_699_920_000.0  # 2023-11-14 00:00:00Z
NOW = MIDNIGHT + 4 * DAY + 12 * 3600  # day 4 (2023-11-18), noon
ROWS = 20_000  # a day of 4 channels of white noise: ~640 KB of chunks that do not compress
MIB = 2**20


def _fill(store: TwinStore, days: int = 5) -> None:
    rng = np.random.default_rng(7)
    for d in range(days):
        t = MIDNIGHT + d * DAY + 3600 + np.arange(ROWS) * 2.0
        store.append_samples(SampleBatch.build("eeg", ["a", "b", "c", "d"], t,
                                               rng.normal(size=(ROWS, 4))))
        values = np.full(len(NAMES), np.nan)
        values[INDEX["hr"]] = 60.0
        store.append_frames([FeatureFrame(float(t[0]), values, np.ones(len(NAMES)),
                                          np.zeros(len(NAMES), bool), SCHEMA_VERSION)])
        store.append_predictions([Prediction(float(t[0]), "hr", 5.0, (1.0,), ((0.0, 2.0),),
                                             (1.0,), (), "m")])
        store.commit()


def _days(store: TwinStore) -> list[int]:
    t, _ = all_samples(store, "eeg")
    return sorted({int((x - MIDNIGHT) // DAY) for x in t})


def _day_bytes(store: TwinStore) -> int:
    """Bytes of one day's sealed chunks (every day holds the same rows)."""
    row = store._conn.execute("SELECT SUM(length(sealed)) FROM chunk").fetchone()
    return int(row[0]) // 5


def test_the_oldest_raw_days_go_until_the_floor_is_met(store: TwinStore) -> None:
    _fill(store)
    floor, day = 64 * MIB, _day_bytes(store)
    on_disk = floor - int(1.5 * day)  # a day and a half short
    before = len(store.audit_entries())
    report = store.make_room(NOW, floor, disk_free=lambda _p: on_disk)
    # day 0 freed ~a day of pages, still short; day 1 made it; days 2-4 stay whole
    assert report.days == ["2023-11-14", "2023-11-15"]
    assert _days(store) == [2, 3, 4]
    assert len(all_samples(store, "eeg")[0]) == 3 * ROWS
    assert report.free_before < floor <= report.free_after
    assert report.free_after - on_disk >= int(1.5 * day)  # pages twin.db now holds free
    assert not report.short
    # features, forecasts and records are never destroyed for room
    assert len(list(store.read_frames())) == 5 and len(store.read_predictions()) == 5
    entries = store.audit_entries()[before:]
    assert [e["event"] for e in entries] == ["retention", "retention"]
    assert [e["details"]["raw_day"] for e in entries] == report.days
    assert all(e["details"]["reason"] == "disk space" for e in entries)
    # each was taken while still short of the floor
    assert all(e["details"]["free_bytes"] < floor for e in entries)
    assert store.verify().ok


def test_today_and_yesterday_are_never_destroyed_for_room(store: TwinStore) -> None:
    _fill(store)
    report = store.make_room(NOW, 10**15, disk_free=lambda _p: 0)
    assert report.short
    assert report.days == ["2023-11-14", "2023-11-15", "2023-11-16"]
    assert _days(store) == [3, 4]
    assert len(list(store.read_frames())) == 5
    # asked again: nothing more to take, nothing audited
    n = len(store.audit_entries())
    again = store.make_room(NOW, 10**15, disk_free=lambda _p: 0)
    assert again.short and again.days == []
    assert len(store.audit_entries()) == n
    assert store.verify().ok


def test_with_room_enough_nothing_goes(store: TwinStore) -> None:
    _fill(store)
    n = len(store.audit_entries())
    report = store.make_room(NOW, 64 * MIB, disk_free=lambda _p: 64 * MIB)
    assert report.days == [] and not report.short
    assert _days(store) == [0, 1, 2, 3, 4]
    assert len(store.audit_entries()) == n


def test_status_counts_the_free_pages_the_floor_counts(store: TwinStore) -> None:
    _fill(store)
    day = _day_bytes(store)
    store.make_room(NOW, 10**15, disk_free=lambda _p: 0)  # three days go
    freed = store._room(lambda _p: 0)
    assert freed > 2.5 * day
    # read without the key, through its own read-only connection, the daemon still running
    assert disk_status(store.home, 1024)["twin_db_free_bytes"] == freed


def test_free_bytes_of_the_real_disk(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    assert disk_free_bytes(tmp_path) == st.f_bavail * st.f_frsize
    assert 0 < disk_free_bytes(tmp_path) <= st.f_blocks * st.f_frsize


def test_the_floor_is_configured_and_checked() -> None:
    assert Config().retention.min_free_mib == 1024
    assert parse_config("[retention]\nmin_free_mib = 0\n").retention.min_free_mib == 0
    with pytest.raises(ConfigError, match=r"retention\.min_free_mib"):
        parse_config("[retention]\nmin_free_mib = -1\n")


def test_the_daemon_checks_room_every_minute_unless_turned_off(
    store: TwinStore, tmp_path: Path
) -> None:
    on = build_daemon(tmp_path, Config(), store, sources=[], engine=None)
    assert [j.interval_s for j in on._periodic if j.name == "room"] == [ROOM_INTERVAL_S]
    off = Config(retention=RetentionConfig(min_free_mib=0))
    assert "room" not in [j.name for j in build_daemon(tmp_path, off, store, sources=[],
                                                       engine=None)._periodic]


def test_the_daemon_says_once_when_only_protected_days_are_left(
    store: TwinStore, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(store)
    monkeypatch.setattr("edgetwin.daemon.app.time.time", lambda: NOW)
    # a floor no disk has: every unprotected day goes, then it is short
    job = _room_job(store, Config(retention=RetentionConfig(min_free_mib=2**40)))
    with caplog.at_level(logging.INFO, logger="edgetwin.daemon.app"):
        job()
        job()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "destroyed the raw samples of 2023-11-14, 2023-11-15, 2023-11-16" in warnings[0]
    assert "only today's and yesterday's raw samples are left" in warnings[1]
    assert _days(store) == [3, 4]


def test_a_disk_too_full_even_to_delete_is_said_once(
    store: TwinStore, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*_a: object, **_k: object) -> None:
        raise StoreFull("the disk holding /twin is full", hint="free space")

    monkeypatch.setattr(store, "make_room", full)
    job = _room_job(store, Config())
    with caplog.at_level(logging.WARNING, logger="edgetwin.daemon.app"):
        job()
        job()
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["making room on the twin's disk: the disk holding /twin is full "
                        "(free space)"]


def test_destroying_a_day_does_not_write_it_again(store: TwinStore, twin_home: Path) -> None:
    # crypto-shredded rows need no zero-filling: with SQLite's secure_delete on (Debian's
    # default) a delete writes every page it frees through the WAL, as much as it deletes
    _fill(store, days=2)
    day = _day_bytes(store) * 5 // 2
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.apply_retention(MIDNIGHT + 2.5 * DAY, RetentionConfig(raw_days=1, features_days=0,
                                                                predictions_days=0))
    assert _days(store) == [1]
    wal = twin_home / "twin.db-wal"
    assert wal.stat().st_size < day / 10, (wal.stat().st_size, day)


def test_the_wal_goes_back_to_its_limit_after_a_big_transaction(
    twin_home: Path, secret: Secret, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("edgetwin.store.db.WAL_SIZE_LIMIT", 256 * 1024)
    rng = np.random.default_rng(3)
    with TwinStore.create(twin_home, secret) as store:
        t = MIDNIGHT + np.arange(ROWS * 5) * 0.5
        store.append_samples(SampleBatch.build("eeg", ["a", "b"], t, rng.normal(size=(t.size, 2))))
        store.commit()  # ~1.6 MB in one transaction
        wal = twin_home / "twin.db-wal"
        big = wal.stat().st_size
        assert big > 1_000_000
        store._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        store.append_samples(SampleBatch.build("eeg", ["a", "b"], t[-1:] + 1, np.zeros((1, 2))))
        store.commit()  # the first write after the checkpoint starts the WAL over, truncated
        assert wal.stat().st_size <= 256 * 1024
        assert len(all_samples(store, "eeg")[0]) == t.size + 1


def test_on_a_disk_that_really_filled_the_oldest_days_make_room_for_today(
    tmpfs: Callable[[int], Path], secret: Secret
) -> None:
    # the daemon acts below the floor, before commits fail: a disk so full that even the
    # keystore cannot be rewritten leaves the destroyed days' keys for the next unlock
    home = tmpfs(32) / "twin"
    rng = np.random.default_rng(11)

    def eeg(day: int, hour: int = 1) -> SampleBatch:  # ~1.3 MB that does not compress
        t = MIDNIGHT + day * DAY + hour * 3600 + np.arange(40_000) * 0.05
        return SampleBatch.build("eeg", ["a", "b", "c", "d"], t, rng.normal(size=(t.size, 4)))

    with TwinStore.create(home, secret) as store:
        days = 0
        while disk_free_bytes(home) > 6 * MIB:  # past days fill the disk
            store.append_samples(eeg(days))
            store.commit()
            days += 1
        on_disk = disk_free_bytes(home)
        now = MIDNIGHT + (days + 2) * DAY + 3600
        report = store.make_room(now, 20 * MIB)
        assert report.days and not report.short
        assert report.free_after >= 20 * MIB > report.free_before
        gone = len(report.days)
        for hour in range(1, 13):  # ~16 MB today, committed as it comes: more than the disk
            store.append_samples(eeg(days + 2, hour))  # had left; it goes into the pages the
            store.commit()  # old days freed (the WAL is checkpointed into them as it fills)
        assert on_disk < 8 * 1_300_000
        t, _ = all_samples(store, "eeg")
        kept = sorted({int((x - MIDNIGHT) // DAY) for x in t})
        assert kept == [*range(gone, days), days + 2]  # the oldest went, nothing else
        assert len(t) == (days - gone + 12) * 40_000
        assert store.verify().ok
