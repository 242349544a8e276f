"""Store fixtures: cheap KDF parameters (the real ones are checked in test_keys.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgetwin.store import Secret, TwinStore
from tests.store.helpers import PASS


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


@pytest.fixture
def secret() -> Secret:
    return Secret.passphrase(PASS)


@pytest.fixture
def twin_home(tmp_path: Path) -> Path:
    return tmp_path / "twin"


@pytest.fixture
def store(twin_home: Path, secret: Secret) -> Iterator[TwinStore]:
    s = TwinStore.create(twin_home, secret)
    yield s
    s.close()
