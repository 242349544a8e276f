"""Tampering and damage: every change is detected, named, and the rest stays readable."""

from __future__ import annotations

import hashlib
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgetwin.errors import DataCorrupt, SchemaTooNew, WrongKey
from edgetwin.store import Secret, TwinStore
from edgetwin.types import FeatureFrame, Prediction
from tests.store.helpers import all_samples, batch

HOUR = 3600.0
T0 = 1_699_923_600.0  # 2023-11-14 01:00:00Z: one chunk per hour, no day boundary


@pytest.fixture
def filled(twin_home: Path, secret: Secret) -> Path:
    """A closed twin with two streams over three hours, frames, predictions, records, audit."""
    with TwinStore.create(twin_home, secret) as s:
        for h in range(3):
            s.append_samples(batch("hr", T0 + h * HOUR, 60, rate=1 / 60, seed=h))
            s.append_samples(batch("eda", T0 + h * HOUR, 240, ("eda",), rate=1 / 15, seed=10 + h))
            s.commit()
        ones = np.ones(3)
        s.append_frames([FeatureFrame(T0 + 5 * i, ones, ones, ones < 0, 1) for i in range(9)])
        p = Prediction(T0, "hr", 5.0, (1.0,), ((0.0, 2.0),), (1.0,), (), "m")
        s.append_predictions([p, p])
        s.commit()
        s.put_record("pairing", "strap", {"address": "AA:BB"})
        s.put_record("consent", "hr_mean", {"granted": True})
        s.audit("export", output="bundle.age")
        s.audit("sync_release", metric="hr_mean")
    return twin_home


@pytest.fixture
def db(filled: Path) -> Iterator[sqlite3.Connection]:
    """A raw connection to the twin's database, as an attacker with the file would have."""
    conn = sqlite3.connect(filled / "twin.db", isolation_level=None)
    yield conn
    conn.close()


def _flip(blob: bytes, at: int) -> bytes:
    b = bytearray(blob)
    b[at % len(b)] ^= 0x01
    return bytes(b)


def _sn(store: TwinStore, stream: str) -> int:
    sid = store._sid("samples", stream)
    return int(store._conn.execute(
        "SELECT series_no FROM series WHERE series_id = ?", (sid,)
    ).fetchone()[0])


def _problems(store: TwinStore) -> list[str]:
    return [str(p) for p in store.verify().problems]


def _hr_sn(filled: Path, secret: Secret) -> int:
    with TwinStore.open(filled, secret) as s:
        return _sn(s, "hr")


@pytest.mark.parametrize("column", ["sealed", "first_hour", "last_hour", "seq", "key_id"])
def test_changed_chunk_is_named_with_its_stream_and_hour(
    filled: Path, db: sqlite3.Connection, secret: Secret, column: str
) -> None:
    sn = _hr_sn(filled, secret)
    if column == "sealed":
        (blob,) = db.execute(
            "SELECT sealed FROM chunk WHERE series_no = ? AND seq = 1", (sn,)
        ).fetchone()
        db.execute(
            "UPDATE chunk SET sealed = ? WHERE series_no = ? AND seq = 1",
            (_flip(blob, 40), sn),
        )
    elif column == "seq":
        db.execute("UPDATE chunk SET seq = 7 WHERE series_no = ? AND seq = 1", (sn,))
    elif column == "key_id":
        other = db.execute("SELECT MAX(id) FROM dek").fetchone()[0]
        db.execute("UPDATE chunk SET key_id = ? WHERE series_no = ? AND seq = 1", (other, sn))
    elif column == "first_hour":
        db.execute(
            "UPDATE chunk SET first_hour = first_hour - 1 WHERE series_no = ? AND seq = 1",
            (sn,),
        )
    else:
        db.execute(
            "UPDATE chunk SET last_hour = last_hour + 1 WHERE series_no = ? AND seq = 1",
            (sn,),
        )
    with TwinStore.open(filled, secret) as s:
        with pytest.raises(DataCorrupt, match=r"stream 'hr': data between 2023-11-14 0[12]:00"):
            list(s.read_samples("hr"))
        # everything else stays readable: the other hours of hr, the other stream, records
        # a moved bucket makes the chunk claim its neighbours
        if column not in ("first_hour", "last_hour"):
            t, _ = all_samples(s, "hr", T0 + 2 * HOUR)
            assert len(t) == 60
        assert len(all_samples(s, "eda")[0]) == 720
        assert s.get_record("pairing", "strap") == {"address": "AA:BB"}
        assert sum(len(b) for b in s.read_samples("hr", on_corrupt="skip")) == 120
        problems = _problems(s)
        assert problems and all("'hr'" in p for p in problems)


def test_chunk_swapped_between_streams_or_replayed_is_detected(
    filled: Path, db: sqlite3.Connection, secret: Secret
) -> None:
    with TwinStore.open(filled, secret) as s:
        hr, eda = _sn(s, "hr"), _sn(s, "eda")
    (blob,) = db.execute(
        "SELECT sealed FROM chunk WHERE series_no = ? AND seq = 0", (hr,)
    ).fetchone()
    # replay hr's chunk 0 over its chunk 2, and move eda's chunk 0 into hr
    db.execute("UPDATE chunk SET sealed = ? WHERE series_no = ? AND seq = 2", (blob, hr))
    db.execute(
        "UPDATE chunk SET series_no = ?, seq = 100 WHERE series_no = ? AND seq = 0",
        (hr, eda),
    )
    with TwinStore.open(filled, secret) as s:
        problems = _problems(s)
        assert any("'hr'" in p and "chunk 2" in p for p in problems)
        assert any("'hr'" in p and "chunk 100" in p for p in problems)
        assert any("'eda'" in p and "missing" in p for p in problems)


def test_deleted_chunk_is_reported_missing(
    filled: Path, db: sqlite3.Connection, secret: Secret
) -> None:
    sn = _hr_sn(filled, secret)
    db.execute("DELETE FROM chunk WHERE series_no = ? AND seq = 2", (sn,))
    with TwinStore.open(filled, secret) as s:
        (p,) = s.verify().problems
        assert p.stream == "hr" and "missing" in p.detail


def test_truncated_blob_is_detected(filled: Path, db: sqlite3.Connection, secret: Secret) -> None:
    sn = _hr_sn(filled, secret)
    (blob,) = db.execute(
        "SELECT sealed FROM chunk WHERE series_no = ? AND seq = 0", (sn,)
    ).fetchone()
    db.execute("UPDATE chunk SET sealed = ? WHERE series_no = ? AND seq = 0", (blob[:-5], sn))
    with TwinStore.open(filled, secret) as s, pytest.raises(DataCorrupt, match=r"'hr'.*chunk 0"):
        list(s.read_samples("hr"))


def test_changed_stream_description_is_detected(
    filled: Path, db: sqlite3.Connection, secret: Secret
) -> None:
    sn = _hr_sn(filled, secret)
    (blob,) = db.execute("SELECT sealed FROM series WHERE series_no = ?", (sn,)).fetchone()
    db.execute("UPDATE series SET sealed = ? WHERE series_no = ?", (_flip(blob, 30), sn))
    with TwinStore.open(filled, secret) as s:
        with pytest.raises(DataCorrupt, match="stream 'hr'"):
            s.read_samples("hr")
        with pytest.raises(DataCorrupt):
            s.streams()
        assert [i.name for i in s.streams(on_corrupt="skip")] == ["eda"]
        assert len(all_samples(s, "eda")[0]) == 720
        assert any("series" in p for p in _problems(s))


def test_changed_or_moved_record_is_detected(
    filled: Path, db: sqlite3.Connection, secret: Secret
) -> None:
    rows = db.execute("SELECT rid, sealed FROM record").fetchall()
    (rid_a, blob_a), (rid_b, _) = rows
    db.execute("UPDATE record SET sealed = ? WHERE rid = ?", (blob_a, rid_b))  # moved
    db.execute("UPDATE record SET sealed = ? WHERE rid = ?", (_flip(blob_a, 20), rid_a))  # edited
    with TwinStore.open(filled, secret) as s:
        with pytest.raises(DataCorrupt, match="record"):
            s.get_record("pairing", "strap")
        with pytest.raises(DataCorrupt, match="record"):
            s.get_record("consent", "hr_mean")
        assert len([p for p in _problems(s) if "record" in p]) == 2
        assert len(all_samples(s, "hr")[0]) == 180


def test_audit_edit_delete_reorder_and_tail_cut_are_detected(
    filled: Path, db: sqlite3.Connection, secret: Secret
) -> None:
    with TwinStore.open(filled, secret) as s:
        assert s.verify_audit() == []
        n = len(s.audit_entries())
    assert n == 3
    # edit entry 2
    (blob,) = db.execute("SELECT sealed FROM audit WHERE seq = 2").fetchone()
    db.execute("UPDATE audit SET sealed = ? WHERE seq = 2", (_flip(blob, 33),))
    with TwinStore.open(filled, secret) as s:
        assert any("entry 2" in str(p) for p in s.verify_audit())
    db.execute("UPDATE audit SET sealed = ? WHERE seq = 2", (blob,))
    # reorder 2 and 3 (whole rows, macs included)
    rows = {seq: (sealed, mac) for seq, sealed, mac in db.execute("SELECT * FROM audit")}
    db.execute("UPDATE audit SET sealed = ?, mac = ? WHERE seq = 2", rows[3])
    db.execute("UPDATE audit SET sealed = ?, mac = ? WHERE seq = 3", rows[2])
    with TwinStore.open(filled, secret) as s:
        assert any("reordered" in str(p) for p in s.verify_audit())
    db.execute("UPDATE audit SET sealed = ?, mac = ? WHERE seq = 2", rows[2])
    db.execute("UPDATE audit SET sealed = ?, mac = ? WHERE seq = 3", rows[3])
    with TwinStore.open(filled, secret) as s:
        assert s.verify_audit() == []
    # delete from the middle, then from the end
    db.execute("DELETE FROM audit WHERE seq = 2")
    with TwinStore.open(filled, secret) as s:
        assert any("missing" in str(p) for p in s.verify_audit())
    db.execute("INSERT INTO audit VALUES (2, ?, ?)", rows[2])
    db.execute("DELETE FROM audit WHERE seq = 3")
    with TwinStore.open(filled, secret) as s:
        assert any("deleted from the end" in str(p) for p in s.verify_audit())


def test_database_from_another_twin_or_altered_meta(
    filled: Path, tmp_path: Path, db: sqlite3.Connection, secret: Secret
) -> None:
    other = tmp_path / "other"
    TwinStore.create(other, secret).close()
    (other / "keystore.json").replace(filled / "keystore.json")
    with pytest.raises(DataCorrupt, match="different twins"):
        TwinStore.open(filled, secret)


def test_meta_check_flip(filled: Path, db: sqlite3.Connection, secret: Secret) -> None:
    (blob,) = db.execute("SELECT v FROM meta WHERE k = 'check'").fetchone()
    db.execute("UPDATE meta SET v = ? WHERE k = 'check'", (_flip(blob, 20),))
    with pytest.raises(DataCorrupt, match="authentication check"):
        TwinStore.open(filled, secret)
    with TwinStore.open(filled, secret, strict=False) as s:
        assert any("authentication check" in p for p in _problems(s))
        assert len(all_samples(s, "hr")[0]) == 180


def _digest(home: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(home.iterdir())
        if p.name.startswith(("twin.db", "keystore"))
    }


def test_wrong_passphrase_changes_nothing(filled: Path, secret: Secret) -> None:
    before = _digest(filled)
    with pytest.raises(WrongKey, match="does not unlock"):
        TwinStore.open(filled, Secret.passphrase("not it"))
    assert _digest(filled) == before
    with TwinStore.open(filled, secret) as s:
        (last,) = [e for e in s.audit_entries() if e["event"] == "unlock_failed"]
        assert last["details"]["secret"] == "passphrase"
        assert s.verify_audit() == []


def test_truncated_and_zeroed_database(filled: Path, secret: Secret) -> None:
    path = filled / "twin.db"
    data = path.read_bytes()
    path.write_bytes(b"")
    with pytest.raises(DataCorrupt, match="empty or was truncated"):
        TwinStore.open(filled, secret)
    path.write_bytes(b"\x00" * len(data))
    with pytest.raises(DataCorrupt, match="damaged"):
        TwinStore.open(filled, secret)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataCorrupt):
        _open_verify_and_read(filled, secret)


def _open_verify_and_read(home: Path, secret: Secret) -> None:
    with TwinStore.open(home, secret) as s:
        report = s.verify()
        if not report.ok:
            raise DataCorrupt(str(report.problems[0]))
        for stream in ("hr", "eda"):
            list(s.read_samples(stream))


def test_newer_schema_is_refused_and_left_alone(filled: Path, db: sqlite3.Connection,
                                                secret: Secret) -> None:
    db.execute("PRAGMA user_version = 99")
    before = list(db.iterdump())
    with pytest.raises(SchemaTooNew, match="schema version 99"):
        TwinStore.open(filled, secret)
    assert SchemaTooNew.exit_code == 4
    assert db.execute("PRAGMA user_version").fetchone()[0] == 99
    assert list(db.iterdump()) == before


def test_damaged_keystore(filled: Path, secret: Secret) -> None:
    ks = filled / "keystore.json"
    text = ks.read_text()
    ks.write_text(text.replace('"generation"', '"generatiom"'))
    with pytest.raises(DataCorrupt, match=r"keystore\.json is damaged"):
        TwinStore.open(filled, secret)
    ks.write_text("{")
    with pytest.raises(DataCorrupt, match="not valid JSON"):
        TwinStore.open(filled, secret)


def test_random_byte_flips_never_return_wrong_data(filled: Path, secret: Secret) -> None:
    """Flip single bytes anywhere in the file: either an error names the damage, or the
    twin reads back exactly what was written."""
    with TwinStore.open(filled, secret) as s:
        want = {name: all_samples(s, name) for name in ("hr", "eda")}
        want_records = s.list_records("pairing")
    path = filled / "twin.db"
    pristine = path.read_bytes()
    rng = random.Random(1234)
    detected = 0
    for _ in range(40):
        at = rng.randrange(len(pristine))
        path.write_bytes(_flip(pristine, at))
        for suffix in ("-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        try:
            with TwinStore.open(filled, secret) as s:
                report = s.verify()
                if not report.ok:
                    detected += 1
                    continue
                for name, (t, v) in want.items():
                    got_t, got_v = all_samples(s, name)
                    np.testing.assert_array_equal(got_t, t)
                    np.testing.assert_array_equal(got_v, v)
                assert s.list_records("pairing") == want_records
        except DataCorrupt:
            detected += 1
    assert detected > 0


def test_altered_key_row_is_reported(filled: Path, db: sqlite3.Connection, secret: Secret) -> None:
    db.execute("UPDATE dek SET period = period + 1 WHERE id = (SELECT MIN(id) FROM dek)")
    with TwinStore.open(filled, secret) as s:
        assert any("was altered" in p for p in _problems(s))
