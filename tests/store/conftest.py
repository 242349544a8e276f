"""Store fixtures: cheap KDF parameters (the real ones are checked in test_keys.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
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


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """``tmpfs(mib)`` mounts a tmpfs of that size and returns it: a disk that really fills.
    Skips where this user may not mount one (root may, as in CI's container)."""
    mounted: list[Path] = []

    def mount(mib: int) -> Path:
        mnt = tmp_path / f"tmpfs{len(mounted)}"
        mnt.mkdir()
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a tmpfs needs root; test_twin.py covers SQLITE_FULL portably")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0700", "tmpfs", str(mnt)],
            capture_output=True, check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
