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
        conn.execute("ALTER TABLE chunk RENAME COLUMN b0 TO first_hour")
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
