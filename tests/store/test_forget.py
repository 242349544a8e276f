"""Crypto-shredding: forgotten data cannot be read, not even from a copy taken before."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgetwin.config import RetentionConfig
from edgetwin.errors import UsageError
from edgetwin.features.schema import INDEX, NAMES, SCHEMA_VERSION
from edgetwin.store import Secret, TwinStore, codec
from edgetwin.store.keys import Keystore
from edgetwin.types import FeatureFrame, Prediction
from tests.store.helpers import T0, all_samples, batch

DAY = 86400.0
MIDNIGHT = 1_699_920_000.0  # 2023-11-14 00:00:00Z


def _fill(store: TwinStore, days: int = 4) -> None:
    for d in range(days):
        base = MIDNIGHT + d * DAY + 3600
        store.append_samples(batch("hr", base, 120, rate=1 / 60, seed=d))
        store.append_samples(batch("secret_stream", base, 120, ("eda",), rate=1 / 60, seed=50 + d))
        store.append_frames([_frame(base + 5 * i) for i in range(6)])
        store.append_predictions([_pred(base + 5 * i) for i in range(3)])
        store.commit()
    store.put_record("pairing", "strap", {"address": "AA:BB:CC:DD:EE:FF"})


def _frame(t: float) -> FeatureFrame:
    """hr fed by the "hr" stream, eda_tonic by "secret_stream"; the rest missing."""
    values = np.full(len(NAMES), np.nan)
    values[INDEX["hr"]], values[INDEX["eda_tonic"]] = 60.0, 2.0
    quality = np.where(np.isfinite(values), 1.0, 0.0)
    return FeatureFrame(t, values, quality, np.zeros(len(NAMES), bool), SCHEMA_VERSION)


def _pred(t: float) -> Prediction:
    return Prediction(t, "hr", 5.0, (1.0,), ((0.0, 2.0),), (1.0,), (), "m")


def _copy_db(home: Path, dest: Path) -> Path:
    """Copy twin.db (+ WAL) the way a backup tool or a thief would, while the twin is live."""
    dest.mkdir()
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(home / "twin.db") + suffix)
        if src.exists():
            shutil.copy2(src, Path(str(dest / "twin.db") + suffix))
    return dest / "twin.db"


def _decryptable_chunks(db_file: Path, keystore: Keystore, store: TwinStore, sid: bytes) -> int:
    """Try every data key in ``keystore`` on every chunk of series ``sid`` in ``db_file``."""
    keys = store._keys
    aeads = []
    for key_id in keystore.deks:
        got = keystore.unwrap_dek(keys, key_id)
        assert got is not None
        aeads.append(AESGCM(got[0]))
    conn = sqlite3.connect(db_file)
    try:
        row = conn.execute("SELECT series_no FROM series WHERE series_id = ?", (sid,)).fetchone()
        assert row is not None, "the copy must still hold the forgotten stream's rows"
        rows = conn.execute(
            "SELECT seq, key_id, first_hour, last_hour, sealed FROM chunk"
            " WHERE series_no = ?", (row[0],)
        ).fetchall()
    finally:
        conn.close()
    assert rows
    opened = 0
    for seq, key_id, b0, b1, sealed in rows:
        ad = codec.chunk_ad(keys.twin_id, sid, seq, key_id, b0, b1)
        for aead in aeads:
            try:
                codec.open_sealed(aead, sealed, ad)
            except InvalidTag:
                continue
            opened += 1
            break
    return opened


def test_forgotten_stream_is_unrecoverable_from_a_pre_forget_copy(
    twin_home: Path, store: TwinStore, secret: Secret, tmp_path: Path
) -> None:
    _fill(store)
    whole_home_copy = tmp_path / "home-copy"
    shutil.copytree(twin_home, whole_home_copy)
    db_copy = _copy_db(twin_home, tmp_path / "db-copy")
    sid_secret = store._sid("samples", "secret_stream")
    sid_hr = store._sid("samples", "hr")

    report = store.forget(stream="secret_stream")
    assert report.streams_removed == ["secret_stream"]
    # 4 days + the stream's description key; and the 4 days of frames (which lose the
    # stream's eda_tonic) and of forecasts (which read it), re-keyed
    assert report.keys_destroyed == 5 + 4 + 4
    assert [s.name for s in store.streams()] == ["hr"]
    with pytest.raises(UsageError):
        store.read_samples("secret_stream")

    # The attacker has: the old database copy, today's keystore, and the passphrase.
    keystore_now = Keystore.load(twin_home / "keystore.json")
    assert _decryptable_chunks(db_copy, keystore_now, store, sid_secret) == 0
    # ...while the same procedure does open what was not forgotten, so the check is real
    assert _decryptable_chunks(db_copy, keystore_now, store, sid_hr) == 4
    # and opening the old copy as a twin with today's keystore gives nothing either
    attacker = tmp_path / "attacker"
    attacker.mkdir()
    shutil.copy2(db_copy, attacker / "twin.db")
    for suffix in ("-wal", "-shm"):
        if Path(str(db_copy) + suffix).exists():
            shutil.copy2(Path(str(db_copy) + suffix), Path(str(attacker / "twin.db") + suffix))
    shutil.copy2(twin_home / "keystore.json", attacker / "keystore.json")
    with TwinStore.open(attacker, secret) as old:
        assert sum(len(b) for b in old.read_samples("hr")) == 480
        # the description key is gone too: not even the name is readable
        assert [s.name for s in old.streams(on_corrupt="skip")] == ["hr"]
        with pytest.raises(Exception):  # noqa: B017 - DataCorrupt or nothing readable
            list(old.read_samples("secret_stream"))

    # What is inherent (documented): a copy of the WHOLE home from before, with the
    # passphrase, still reads what it held then.
    with TwinStore.open(whole_home_copy, secret) as before:
        assert sum(len(b) for b in before.read_samples("secret_stream")) == 480


def test_forget_before_is_exact_and_shreds_the_boundary_day(
    twin_home: Path, store: TwinStore, tmp_path: Path
) -> None:
    _fill(store)
    db_copy = _copy_db(twin_home, tmp_path / "db-copy")
    cutoff = MIDNIGHT + 2 * DAY + 3600 + 30 * 60  # in the middle of day 2's hour of data
    old_day2_keys = {
        int(r[0])
        for r in store._conn.execute(
            "SELECT id FROM dek WHERE period = ?", (int(cutoff // DAY),)
        )
    }
    report = store.forget(before=cutoff)
    assert report.samples_deleted == 2 * (240 + 30)
    assert report.chunks_reencrypted > 0
    for name in ("hr", "secret_stream"):
        t, _ = all_samples(store, name)
        assert t.min() >= cutoff
        assert len(t) == 90 + 120  # day 2 from 01:30, and day 3
    assert all(f.t >= cutoff for f in store.read_frames())
    assert all(p.t >= cutoff for p in store.read_predictions())
    assert store.get_record("pairing", "strap") is not None  # records are not time series
    # the boundary day's old keys are gone: the old copy of that day cannot be opened
    keystore_now = Keystore.load(twin_home / "keystore.json")
    assert not old_day2_keys & set(keystore_now.deks)
    # of the copy's four daily hr chunks only day 3's (not forgotten) still opens
    assert _decryptable_chunks(db_copy, keystore_now, store, store._sid("samples", "hr")) == 1
    assert store.verify().ok
    (entry,) = [e for e in store.audit_entries() if e["event"] == "forget"]
    assert entry["details"]["scope"] == "before"


def test_forget_all(store: TwinStore) -> None:
    _fill(store)
    report = store.forget(everything=True)
    assert sorted(report.streams_removed) == ["hr", "secret_stream"]
    assert report.records_deleted == 1
    assert store.streams() == []
    assert list(store.read_frames()) == []
    assert store.read_predictions() == []
    assert store.list_records("pairing") == {}
    assert store._ks.deks == {}
    assert store._conn.execute("SELECT COUNT(*) FROM dek").fetchone()[0] == 0
    # the twin goes on working, and the audit log survives
    store.append_samples(batch("hr", T0, 5))
    store.commit()
    assert store.streams()[0].samples == 5
    assert [e["event"] for e in store.audit_entries()] == ["init", "forget"]
    assert store.verify().ok


def test_forget_needs_exactly_one_scope(store: TwinStore) -> None:
    with pytest.raises(UsageError):
        store.forget()
    with pytest.raises(UsageError):
        store.forget(stream="hr", everything=True)
    with pytest.raises(UsageError, match="no stream"):
        store.forget(stream="nope")


def test_retention_destroys_whole_days_past_the_limits(store: TwinStore) -> None:
    _fill(store, days=4)
    now = MIDNIGHT + 4 * DAY + 12 * 3600  # day 4, noon
    # raw: 2 days -> cutoff day 2 noon -> days 0 and 1 go, day 2 stays whole
    limits = RetentionConfig(raw_days=2, features_days=1, predictions_days=0)
    report = store.apply_retention(now, limits)
    assert report.samples_deleted == 2 * 2 * 120
    assert report.chunks_reencrypted == 0
    assert min(all_samples(store, "hr")[0]) == MIDNIGHT + 2 * DAY + 3600
    assert min(f.t for f in store.read_frames()) == MIDNIGHT + 3 * DAY + 3600
    assert len(store.read_predictions()) == 12  # 0 keeps forever
    assert [e["event"] for e in store.audit_entries()][-1] == "retention"
    n = len(store.audit_entries())
    again = store.apply_retention(now, RetentionConfig(raw_days=2, features_days=1))
    assert again.empty
    assert len(store.audit_entries()) == n  # nothing destroyed, nothing audited
    assert store.verify().ok


def test_interrupted_forget_is_finished_at_next_unlock(
    twin_home: Path, store: TwinStore, secret: Secret, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows deleted and committed, then a crash before the keystore rewrite."""
    _fill(store, days=1)
    # the forget saves fresh keys (for the re-keyed frames) before its commit; the crash
    # comes at the keystore rewrite after it
    monkeypatch.setattr(
        TwinStore, "_prune_keystore", lambda self: (_ for _ in ()).throw(SystemExit)
    )
    with pytest.raises(SystemExit):
        store.forget(stream="secret_stream")
    monkeypatch.undo()
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")
    left = Keystore.load(twin_home / "keystore.json")
    db_ids = {int(r[0]) for r in store._conn.execute("SELECT id FROM dek")}
    assert set(left.deks) - db_ids  # the keys are still there
    store.close()
    with TwinStore.open(twin_home, secret) as again:
        now = Keystore.load(twin_home / "keystore.json")
        assert set(now.deks) == db_ids
        assert again.verify().ok
