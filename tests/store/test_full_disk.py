"""A full disk during writes: StoreFull, nothing committed lost, pending work kept for a retry.

The portable variant (SQLite's max_page_count) is in test_twin.py; here the disk
really fills: a 3 MiB tmpfs when this user may mount one (root, as in CI's
container), and an ENOSPC from the kernel's write() for the keystore otherwise.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgetwin.errors import StoreFull
from edgetwin.store import Secret, TwinStore
from edgetwin.store import keys as keys_module
from tests.store.helpers import T0, all_samples, batch


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root; test_twin.py covers SQLITE_FULL portably")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True, check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_full_disk(small_disk: Path, secret: Secret) -> None:
    home = small_disk / "twin"
    store = TwinStore.create(home, secret)
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (512 * 1024))  # freed later, to make room
    committed = 0
    try:
        for i in range(200):
            b = batch("eeg", T0 + i * 10, 2560, ("eeg_a", "eeg_b", "eeg_c", "eeg_d"),
                      rate=256.0, seed=i)
            store.append_samples(b)
            try:
                store.commit()
            except StoreFull as exc:
                error = str(exc)
                break
            committed += len(b)
        else:
            pytest.fail("3 MiB never filled up")
        assert "disk is full" in error
        assert committed > 0
        assert store.pending_rows() == 2560  # the failed batch is kept
        # what was committed is intact, in this handle and in a fresh one
        assert len(all_samples(store, "eeg")[0]) == committed
        filler.unlink()
        store.commit()
        assert store.pending_rows() == 0
        assert len(all_samples(store, "eeg")[0]) == committed + 2560
    finally:
        store.close()
    with TwinStore.open(home, secret) as again:
        assert again.verify().ok
        assert again.streams()[0].samples == committed + 2560


def test_keystore_write_failing_with_enospc(
    twin_home: Path, store: TwinStore, secret: Secret, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new stream needs a new key; the keystore cannot be written: nothing half-done."""
    store.append_samples(batch("hr", T0, 10))
    store.commit()
    keystore_before = (twin_home / "keystore.json").read_bytes()
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keys_module.os, "write", full)
    store.append_samples(batch("spo2", T0, 10, ("spo2",)))
    with pytest.raises(StoreFull, match=r"no space left to write .*keystore\.json"):
        store.commit()
    monkeypatch.setattr(keys_module.os, "write", real_write)
    assert (twin_home / "keystore.json").read_bytes() == keystore_before
    assert not list(twin_home.glob(".keystore.json.*"))  # no temp file left behind
    assert store.pending_rows() == 10
    assert [s.name for s in store.streams()] == ["hr"]
    store.commit()
    assert {s.name: s.samples for s in store.streams()} == {"hr": 10, "spo2": 10}
    store.close()
    with TwinStore.open(twin_home, secret) as again:
        assert again.verify().ok
        np.testing.assert_array_equal(all_samples(again, "spo2")[0], T0 + np.arange(10))
