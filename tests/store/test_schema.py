"""Schema migrations: an older file opens and is brought up to date in one transaction,
or, when a step fails, is left exactly as it was (the path a column rename will take)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from edgetwin.store import Secret, TwinStore, schema
from edgetwin.store import twin as twin_module
from tests.store.helpers import T0, all_samples, batch


def _tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()


def _version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def _pretend_newer_code(monkeypatch: pytest.MonkeyPatch, step: object) -> None:
    """Code one schema version ahead of the file, with ``step`` as the migration to it."""
    nxt = schema.SCHEMA_VERSION + 1
    monkeypatch.setattr(schema, "SCHEMA_VERSION", nxt)
    monkeypatch.setattr(twin_module, "SCHEMA_VERSION", nxt)
    monkeypatch.setitem(schema.MIGRATIONS, nxt, step)


@pytest.fixture
def old_twin(twin_home: Path, secret: Secret) -> Path:
    with TwinStore.create(twin_home, secret) as store:
        store.append_samples(batch("hr", T0, 20))
        store.commit()
        store.put_record("settings", "a", {"v": 1})
    return twin_home / "twin.db"


def test_an_old_version_file_opens_and_migrates(
    old_twin: Path, secret: Secret, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _version(old_twin)

    def step(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE added_by_step (x INTEGER)")
        conn.execute("CREATE INDEX chunk_by_key ON chunk(key_id)")

    _pretend_newer_code(monkeypatch, step)
    with TwinStore.open(old_twin.parent, secret) as store:
        t, _ = all_samples(store, "hr")
        np.testing.assert_array_equal(t, T0 + np.arange(20.0))
        assert store.get_record("settings", "a") == {"v": 1}
        assert store.verify().ok
    assert _version(old_twin) == old + 1
    assert {"added_by_step", "chunk_by_key"} <= _tables(old_twin)


def test_a_failing_migration_leaves_the_file_as_it_was(
    old_twin: Path, secret: Secret, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _version(old_twin)
    before = _tables(old_twin)

    def step(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE added_by_step (x INTEGER)")
        conn.execute("ALTER TABLE chunk RENAME COLUMN first_hour TO hour0")
        raise RuntimeError("migration step failed half-way")

    with monkeypatch.context() as m:
        _pretend_newer_code(m, step)
        with pytest.raises(RuntimeError, match="half-way"):
            TwinStore.open(old_twin.parent, secret)
    # nothing of the half-done step is left: same version, same tables, same columns
    assert _version(old_twin) == old
    assert _tables(old_twin) == before
    with TwinStore.open(old_twin.parent, secret) as store:
        assert all_samples(store, "hr")[0].shape[0] == 20
        assert store.verify().ok


# -- version 1 -> 2: the short column names spelled out ------------------------------------

_RENAMED = (
    ("series", "series_no", "sn"),
    ("series", "series_id", "sid"),
    ("chunk", "series_no", "sn"),
    ("chunk", "first_hour", "b0"),
    ("chunk", "last_hour", "b1"),
)


def _columns(path: Path, table: str) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
    finally:
        conn.close()


def _schema_sql(conn: sqlite3.Connection) -> set[str]:
    return {
        " ".join(str(r[0]).split())
        for r in conn.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL")
    }


@pytest.fixture
def version_1_twin(old_twin: Path) -> Path:
    """A twin with data whose file is exactly what version 1 wrote (names put back)."""
    conn = sqlite3.connect(old_twin, isolation_level=None)
    conn.execute("DROP TABLE marker")  # version 3's addition
    for table, new, old in _RENAMED:
        conn.execute(f"ALTER TABLE {table} RENAME COLUMN {new} TO {old}")
    conn.execute("PRAGMA user_version = 1")
    fresh = sqlite3.connect(":memory:")
    schema.MIGRATIONS[1](fresh)
    assert _schema_sql(conn) == _schema_sql(fresh)  # the same schema version 1 creates
    fresh.close()
    conn.close()
    return old_twin


def test_a_version_1_file_opens_and_migrates_to_named_columns(
    version_1_twin: Path, secret: Secret
) -> None:
    with TwinStore.open(version_1_twin.parent, secret) as store:
        t, v = all_samples(store, "hr")
        np.testing.assert_array_equal(t, T0 + np.arange(20.0))
        assert v.shape == (20, 1)
        assert store.get_record("settings", "a") == {"v": 1}
        store.append_samples(batch("hr", T0 + 20, 5))  # and it takes new writes
        store.commit()
        assert store.verify().ok
    assert _version(version_1_twin) == schema.SCHEMA_VERSION
    assert _columns(version_1_twin, "series") == ["series_no", "series_id", "key_id", "sealed"]
    assert _columns(version_1_twin, "chunk") == [
        "series_no", "seq", "key_id", "first_hour", "last_hour", "sealed"
    ]


def test_a_version_1_file_is_left_as_it_was_when_the_rename_fails_half_way(
    version_1_twin: Path, secret: Secret, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_step = schema.MIGRATIONS[2]

    class FailingConnection:
        """Lets three renames through, then fails (a crash or I/O error half-way)."""

        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn, self.calls = conn, 0

        def execute(self, sql: str) -> sqlite3.Cursor:
            self.calls += 1
            if self.calls > 3:
                raise RuntimeError("rename interrupted")
            return self.conn.execute(sql)

    def half_way(conn: sqlite3.Connection) -> None:
        real_step(FailingConnection(conn))  # type: ignore[arg-type]

    monkeypatch.setitem(schema.MIGRATIONS, 2, half_way)
    with pytest.raises(RuntimeError, match="rename interrupted"):
        TwinStore.open(version_1_twin.parent, secret)
    assert _version(version_1_twin) == 1
    assert _columns(version_1_twin, "chunk") == ["sn", "seq", "key_id", "b0", "b1", "sealed"]
    assert _columns(version_1_twin, "series") == ["sn", "sid", "key_id", "sealed"]
    monkeypatch.setitem(schema.MIGRATIONS, 2, real_step)
    with TwinStore.open(version_1_twin.parent, secret) as store:
        assert all_samples(store, "hr")[0].shape[0] == 20
        assert store.verify().ok
