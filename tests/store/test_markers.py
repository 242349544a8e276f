"""Markers in the store: sealed per source and day, durable at commit, deduplicated,
refused when hostile, forgotten (keys destroyed), re-keyed, verified, migrated."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edgetwin.errors import DataCorrupt, MalformedInput, UsageError
from edgetwin.store import Secret, TwinStore, schema
from edgetwin.store import markers as markers_module
from edgetwin.store.keys import KEYSTORE_FILE, Keystore
from edgetwin.types import MARKER_TEXT_MAX, Marker, escape_marker_text, marker_problem
from tests.store.helpers import T0, batch

DAY = 86400.0


def _marker_keys(store: TwinStore) -> set[int]:
    return {int(r[0]) for r in store._conn.execute("SELECT DISTINCT key_id FROM marker")}


def _keystore_ids(home: Path) -> set[int]:
    return set(Keystore.load(home / KEYSTORE_FILE).deks)


def test_markers_round_trip_by_time_and_source_after_commit(
    store: TwinStore, twin_home: Path, secret: Secret
) -> None:
    ms = [
        Marker(T0 + 5.0, "eyes closed", "cli"),
        Marker(T0 + 1.5, "stim 1", "xdf:Markers"),
        Marker(T0 + DAY + 2.0, "next day", "cli"),
        Marker(T0 + 3.25, "naïve ünïcode ✓", "lsl:Events"),
    ]
    store.append_markers(ms)
    assert store.read_markers() == []  # buffered, not yet durable
    assert store.pending_rows() == 4
    store.commit()
    assert store.pending_rows() == 0
    got = store.read_markers()
    assert got == sorted(ms, key=lambda m: m.t)
    assert store.read_markers(T0 + 2.0, T0 + 10.0) == [ms[3], ms[0]]
    assert store.read_markers(source="cli") == [ms[0], ms[2]]
    store.close()
    with TwinStore.open(twin_home, secret) as again:
        assert again.read_markers() == got


def test_the_same_marker_twice_is_stored_once(store: TwinStore) -> None:
    m = Marker(T0, "start", "xdf:M")
    store.append_markers([m, m])
    store.commit()
    store.append_markers([m, Marker(T0, "start", "cli"), Marker(T0 + 0.001, "start", "xdf:M")])
    store.commit()
    assert len(store.read_markers()) == 3


def test_rows_hold_at_most_row_max_markers(
    store: TwinStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(markers_module, "ROW_MAX", 3)
    for k in range(4):  # four commits of two: rows fill up, then a new row starts
        store.append_markers([Marker(T0 + 2 * k + j, f"m{2 * k + j}", "cli") for j in range(2)])
        store.commit()
    rows = store._conn.execute("SELECT COUNT(*) FROM marker").fetchone()[0]
    assert rows == 3  # 8 markers, 3 per row
    assert [m.text for m in store.read_markers()] == [f"m{i}" for i in range(8)]


@pytest.mark.parametrize(
    ("marker", "match"),
    [
        (Marker(T0, "bell\x07", "cli"), r"control character U\+0007 .* at position 5"),
        (Marker(T0, "a\x1b[31mred", "cli"), r"U\+001B .* at position 2"),
        (Marker(T0, "ok\u202eevil", "cli"), r"U\+202E"),
        (Marker(T0, "line\nbreak", "cli"), r"U\+000A"),
        (Marker(T0, "   ", "cli"), "empty"),
        (Marker(T0, "x" * (MARKER_TEXT_MAX + 1), "cli"), f"at most {MARKER_TEXT_MAX}"),
        (Marker(float("nan"), "t", "cli"), "not a finite"),
        (Marker(T0, "fine", "bad\x00source"), "marker source holds the control character"),
    ],
)
def test_hostile_markers_are_refused_and_nothing_is_buffered(
    store: TwinStore, marker: Marker, match: str
) -> None:
    with pytest.raises(MalformedInput, match=match):
        store.append_markers([Marker(T0 - 1, "good", "cli"), marker])
    assert store.pending_rows() == 0
    store.commit()
    assert store.read_markers() == []


def test_machine_text_is_escaped_not_refused() -> None:
    text = escape_marker_text("  a\tb\x1b[0m\u202e\x85c  ")
    assert text == "a\\x09b\\x1b[0m\\u202e\\x85c"
    assert marker_problem(text) is None
    long = escape_marker_text("y" * 5000)
    kept, _, note = long.partition("...[+")
    assert len(long) <= MARKER_TEXT_MAX and marker_problem(long) is None
    assert set(kept) == {"y"} and note == f"{5000 - len(kept)}]"
    assert escape_marker_text(" \r\n ") == ""


def test_forget_all_destroys_marker_keys_and_rows(store: TwinStore, twin_home: Path) -> None:
    store.append_markers([Marker(T0, "secret event", "cli"), Marker(T0 + DAY, "b", "xdf:M")])
    store.commit()
    keys = _marker_keys(store)
    assert keys and keys <= _keystore_ids(twin_home)
    report = store.forget(everything=True)
    assert report.keys_destroyed >= len(keys)
    assert store.read_markers() == []
    assert store._conn.execute("SELECT COUNT(*) FROM marker").fetchone()[0] == 0
    assert not keys & _keystore_ids(twin_home)  # shredded: the keystore no longer holds them


def test_forget_a_marker_source_keeps_the_others(store: TwinStore, twin_home: Path) -> None:
    store.append_markers([Marker(T0, "a", "cli"), Marker(T0 + 1, "b", "xdf:Markers")])
    store.append_samples(batch("hr", T0, 10))
    store.commit()
    xdf_keys = {int(r[0]) for r in store._conn.execute(
        "SELECT key_id FROM marker WHERE source_id = ?",
        (store._marker_source_id("xdf:Markers"),))}
    report = store.forget(stream="xdf:Markers")
    assert report.keys_destroyed == len(xdf_keys) == 1
    assert store.read_markers() == [Marker(T0, "a", "cli")]
    assert not xdf_keys & _keystore_ids(twin_home)
    assert [s.name for s in store.streams()] == ["hr"]
    assert store.audit_entries()[-1]["event"] == "forget"
    with pytest.raises(UsageError, match="no stream or marker source named 'xdf:Markers'"):
        store.forget(stream="xdf:Markers")


def test_forget_a_stream_takes_markers_of_the_same_name(store: TwinStore) -> None:
    store.append_samples(batch("eeg", T0, 10, channels=("eeg_fz",)))
    store.append_markers([Marker(T0, "a", "eeg"), Marker(T0, "b", "cli")])
    store.commit()
    store.forget(stream="eeg")
    assert store.read_markers() == [Marker(T0, "b", "cli")]


def test_forget_before_is_exact_and_rekeys_the_cut_day(store: TwinStore, twin_home: Path) -> None:
    day0 = (T0 // DAY) * DAY
    ms = [Marker(day0 - 10, "yesterday", "cli"), Marker(day0 + 100, "early", "cli"),
          Marker(day0 + 500, "late", "cli"), Marker(day0 + 600, "late too", "xdf:M")]
    store.append_markers(ms)
    store.commit()
    old = _marker_keys(store)
    store.forget(before=day0 + 300)
    assert store.read_markers() == ms[2:]
    assert not old & _keystore_ids(twin_home)  # the cut day was re-sealed under fresh keys
    assert _marker_keys(store) and not _marker_keys(store) & old


def test_retention_drops_whole_old_days_of_markers(store: TwinStore) -> None:
    from edgetwin.config import RetentionConfig

    store.append_markers([Marker(T0 - 10 * DAY, "old", "cli"), Marker(T0, "new", "cli")])
    store.commit()
    store.apply_retention(T0, RetentionConfig(raw_days=0, features_days=5, predictions_days=0))
    assert [m.text for m in store.read_markers()] == ["new"]


def test_rotation_with_reencryption_keeps_markers_under_new_keys(
    store: TwinStore, twin_home: Path
) -> None:
    store.append_markers([Marker(T0, "a", "cli"), Marker(T0 + DAY, "b", "lsl:E")])
    store.commit()
    old = _marker_keys(store)
    store.rotate_keys(reencrypt=True)
    assert [m.text for m in store.read_markers()] == ["a", "b"]
    assert not old & _marker_keys(store)
    assert not old & _keystore_ids(twin_home)
    store.append_markers([Marker(T0 + 1, "c", "cli")])  # appends after rotation still work
    store.commit()
    assert [m.text for m in store.read_markers()] == ["a", "c", "b"]


def test_plain_rotation_keeps_old_marker_keys_readable(store: TwinStore) -> None:
    store.append_markers([Marker(T0, "a", "cli")])
    store.commit()
    store.rotate_keys()
    store.append_markers([Marker(T0 + 1, "b", "cli")])
    store.commit()
    assert [m.text for m in store.read_markers()] == ["a", "b"]


def test_a_swapped_marker_row_fails_authentication_and_verify_lists_it(
    store: TwinStore
) -> None:
    store.append_markers([Marker(T0, "a", "cli"), Marker(T0, "b", "xdf:M")])
    store.commit()
    assert store.verify().ok
    rows = store._conn.execute("SELECT id, sealed FROM marker ORDER BY id").fetchall()
    store._conn.execute("UPDATE marker SET sealed = ? WHERE id = ?", (rows[1][1], rows[0][0]))
    with pytest.raises(DataCorrupt, match=r"markers of .* failed authentication"):
        store.read_markers()
    assert store.read_markers(on_corrupt="skip") == [Marker(T0, "b", "xdf:M")]
    problems = [p for p in store.verify().problems if p.area == "marker"]
    assert len(problems) == 1 and "failed authentication" in problems[0].detail


def test_markers_are_not_stored_in_clear(store: TwinStore, twin_home: Path) -> None:
    store.append_markers([Marker(T0, "PLAINTEXT-CANARY-42", "SOURCE-CANARY")])
    store.commit()
    store.close()
    for name in ("twin.db", "twin.db-wal"):
        path = twin_home / name
        if path.exists():
            data = path.read_bytes()
            assert b"PLAINTEXT-CANARY" not in data and b"SOURCE-CANARY" not in data


def test_a_version_2_file_gains_the_marker_table_on_open(twin_home: Path, secret: Secret) -> None:
    with TwinStore.create(twin_home, secret) as store:
        store.append_samples(batch("hr", T0, 5))
        store.commit()
    conn = sqlite3.connect(twin_home / "twin.db")
    conn.execute("DROP TABLE marker")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with TwinStore.open(twin_home, secret) as store:
        assert schema.schema_version(store._conn) == schema.SCHEMA_VERSION >= 3
        store.append_markers([Marker(T0, "after migration", "cli")])
        store.commit()
        assert store.read_markers()[0].text == "after migration"
        assert store.verify().ok


def test_a_failed_commit_keeps_buffered_markers_for_the_retry(store: TwinStore) -> None:
    from edgetwin.errors import StoreFull

    store.append_markers([Marker(T0, "first", "cli")])
    store.commit()
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")
    many = [Marker(T0 + i, f"event {i} " + "x" * 200, "lsl:E") for i in range(3000)]
    store.append_markers(many)
    store.append_samples(batch("hr", T0, 5000))
    with pytest.raises(StoreFull):
        store.commit()
    assert store.pending_rows() == 3000 + 5000
    assert [m.text for m in store.read_markers()] == ["first"]
    store._conn.execute("PRAGMA max_page_count = 1073741823")
    store.commit()
    assert len(store.read_markers()) == 3001
    assert store.pending_rows() == 0
    assert store.verify().ok


def test_a_second_handle_sees_markers_and_appends_after_a_forget_elsewhere(
    store: TwinStore, twin_home: Path, secret: Secret
) -> None:
    store.append_markers([Marker(T0, "daemon", "lsl:E")])
    store.commit()
    with TwinStore.open(twin_home, secret) as cli:
        assert [m.text for m in cli.read_markers()] == ["daemon"]
        cli.forget(stream="lsl:E")
    # the daemon's handle cached the (source, day) rows: the other process's forget must win
    store.append_markers([Marker(T0 + 1, "after", "lsl:E")])
    store.commit()
    assert [m.text for m in store.read_markers()] == ["after"]
    assert store.verify().ok
