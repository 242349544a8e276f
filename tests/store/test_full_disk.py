"""A full disk during writes: StoreFull, nothing committed lost, pending work kept for a retry.

The portable variant (SQLite's max_page_count) is in test_twin.py; here the disk
really fills: a 3 MiB tmpfs when this user may mount one (root, as in CI's
container), and an ENOSPC from the kernel's write() for the keystore otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest

from edgetwin.errors import StoreFull
from edgetwin.store import Secret, TwinStore, chunks
from edgetwin.store import keys as keys_module
from edgetwin.types import SampleBatch
from tests.store.helpers import T0, all_samples, batch


@pytest.fixture
def small_disk(tmpfs: Callable[[int], Path]) -> Path:
    return tmpfs(3)


def _commit_until_full(store: TwinStore) -> tuple[int, int, str]:
    """Commit 10 s batches of 4-channel EEG until the disk is full: the rows committed, the
    index of the batch whose commit failed (it stays pending) and the error."""
    committed = 0
    for i in range(200):
        b = batch("eeg", T0 + i * 10, 2560, ("eeg_a", "eeg_b", "eeg_c", "eeg_d"),
                  rate=256.0, seed=i)
        store.append_samples(b)
        try:
            store.commit()
        except StoreFull as exc:
            return committed, i, str(exc)
        committed += len(b)
    pytest.fail("3 MiB never filled up")


@contextlib.contextmanager
def _twin_on_small_disk(small_disk: Path, secret: Secret) -> Iterator[tuple[TwinStore, Path]]:
    """A new twin on the small disk and 512 KiB of filler beside it (unlink it to make room);
    closed afterwards, then reopened and verified whole."""
    home = small_disk / "twin"
    store = TwinStore.create(home, secret)
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (512 * 1024))
    try:
        yield store, filler
    finally:
        store.close()
    with TwinStore.open(home, secret) as again:
        assert again.verify().ok


def test_real_full_disk(small_disk: Path, secret: Secret) -> None:
    with _twin_on_small_disk(small_disk, secret) as (store, filler):
        committed, _, error = _commit_until_full(store)
        assert "disk is full" in error
        assert committed > 0
        assert store.pending_rows() == 2560  # the failed batch is kept
        # what was committed is intact, in this handle and in a fresh one
        assert len(all_samples(store, "eeg")[0]) == committed
        filler.unlink()
        store.commit()
        assert store.pending_rows() == 0
        assert len(all_samples(store, "eeg")[0]) == committed + 2560
    with TwinStore.open(small_disk / "twin", secret) as again:
        assert again.streams()[0].samples == committed + 2560


def test_shedding_drops_the_oldest_batches_across_streams_and_keeps_the_rest(
    store: TwinStore,
) -> None:
    """A daemon whose commits keep failing bounds its buffer: the oldest batches go first,
    whichever stream they belong to, and what is kept commits as ever."""
    store.append_samples(batch("hr", T0 - 100, 10))  # committed before: never touched
    store.commit()
    for i in range(6):  # eeg at T0, T0+10, ...; hr at T0+5, T0+15, ...: interleaved
        store.append_samples(batch("eeg", T0 + 10 * i, 10, ("a", "b"), seed=i))
        store.append_samples(batch("hr", T0 + 10 * i + 5, 10, seed=i))
    one_eeg, one_hr = 10 * 8 * 3, 10 * 8 * 2  # t and values, float64
    held = store.pending_sample_bytes()
    assert held == 6 * (one_eeg + one_hr)
    assert store.shed_oldest_samples(held) == {}  # within the bound: nothing dropped
    keep = 3 * (one_eeg + one_hr)
    shed = store.shed_oldest_samples(keep)
    assert shed == {"eeg": 30, "hr": 30}
    assert store.pending_sample_bytes() == keep
    assert store.pending_rows() == 60
    store.commit()
    eeg_t, eeg_v = all_samples(store, "eeg")
    hr_t, _ = all_samples(store, "hr")
    assert eeg_t[0] == T0 + 30 and len(eeg_t) == 30  # the newest three of each
    np.testing.assert_array_equal(eeg_v[:10], batch("eeg", T0 + 30, 10, ("a", "b"), seed=3).values)
    assert hr_t[0] == T0 - 100 and len(hr_t) == 10 + 30
    assert hr_t[10] == T0 + 35
    assert store.verify().ok
    store.append_samples(batch("eeg", T0 + 100, 10, ("a", "b")))
    assert store.shed_oldest_samples(0) == {"eeg": 10}  # everything, if asked
    assert store.pending_rows() == 0 and store.pending_sample_bytes() == 0
    store.commit()  # nothing to write
    assert len(all_samples(store, "eeg")[0]) == 30


def test_a_real_full_disk_shed_to_a_bound_then_freed(small_disk: Path, secret: Secret) -> None:
    with _twin_on_small_disk(small_disk, secret) as (store, filler):
        committed, failed_at, _ = _commit_until_full(store)
        for j in range(failed_at + 1, failed_at + 4):  # more arrives while the disk is full
            store.append_samples(batch("eeg", T0 + j * 10, 2560,
                                       ("eeg_a", "eeg_b", "eeg_c", "eeg_d"), rate=256.0, seed=j))
            with pytest.raises(StoreFull):
                store.commit()
        # each failed commit packed what it could not write: the four batches are held
        # packed, one apiece (random values pack little smaller than raw)
        held = store.pending_sample_bytes()
        assert 0 < held <= 4 * 2560 * 8 * 5
        assert store.shed_oldest_samples(held // 2) == {"eeg": 2 * 2560}
        filler.unlink()
        store.commit()
        t, _ = all_samples(store, "eeg")
        assert len(t) == committed + 2 * 2560
        assert t[committed] == T0 + (failed_at + 2) * 10  # the two newest batches were kept


def _adc_batch(t0: float, n: int, seed: int, channels: tuple[str, ...] = ("c0", "c1", "c2")
               ) -> SampleBatch:
    """Counts of a 12-bit ADC scaled to volts, as the serial bridge sends them, with a NaN,
    a -0.0 and an inf where a channel has none: all must come back bit for bit."""
    rng = np.random.default_rng(seed)
    scale = [3.3 / 4096] * len(channels)
    counts = rng.integers(1800, 2300, size=(n, len(channels)))
    values = counts * np.array(scale) + 0.0
    values[n // 3, 0] = np.nan
    values[n // 2, 1] = -0.0
    values[n - 1, -1] = np.inf
    return SampleBatch.build("bridge", list(channels), T0 + t0 + np.arange(n) / 100.0, values,
                             meta={"adc_scale": scale, "adc_offset": [0.0] * len(channels)})


def test_what_waits_for_a_full_disk_is_packed_and_commits_bit_for_bit(
    small_disk: Path, secret: Secret, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While commits fail, the buffered samples are held packed with the chunk codec, far
    smaller than their float64 arrays, in arrival order (packed and new raw batches mixed,
    a change of channels between them), and commit exactly as they arrived once the disk
    has room again: a pack of the stream's first layout sealed as it is, without decoding
    and encoding it again."""
    with _twin_on_small_disk(small_disk, secret) as (store, filler):
        committed, _, _ = _commit_until_full(store)
        sent = [_adc_batch(0, 1000, 0), _adc_batch(10, 1000, 1)]
        for b in sent:
            store.append_samples(b)
        raw = sum(b.t.nbytes + b.values.nbytes for b in sent)
        assert store.pending_sample_bytes() > raw  # the failed eeg batch is in there too
        with pytest.raises(StoreFull):
            store.commit()
        packed = store.pending_sample_bytes()
        eeg_raw = 2560 * 8 * 5
        assert packed < eeg_raw + raw / 3  # ADC counts: a third of their arrays, or less
        # more arrives while the disk stays full: another layout, then the first again
        later = [_adc_batch(20, 500, 2, ("c0", "c1")), _adc_batch(25, 500, 3)]
        for b in later:
            store.append_samples(b)
        with pytest.raises(StoreFull):
            store.commit()
        assert store.pending_rows() == 2560 + 3000
        unpacked: list[tuple[str, ...]] = []
        real_unpack = chunks.PackedSamples.unpack

        def unpack(pack: chunks.PackedSamples) -> SampleBatch:
            unpacked.append(pack.channels)
            return real_unpack(pack)

        monkeypatch.setattr(chunks.PackedSamples, "unpack", unpack)
        filler.unlink()
        store.commit()
        # only the pack of the second layout (its chunk names layout 1, the pack layout 0)
        assert unpacked == [("c0", "c1")]
        assert store.pending_rows() == 0 and store.pending_sample_bytes() == 0
        got = list(store.read_samples("bridge"))
        want = [*sent, *later]
        t = np.concatenate([g.t for g in got])
        np.testing.assert_array_equal(t, np.concatenate([b.t for b in want]))
        by_width: dict[int, list[np.ndarray]] = {}
        for g in got:
            by_width.setdefault(g.values.shape[1], []).append(g.values)
        for width in (3, 2):
            stored = np.concatenate(by_width[width])
            sent_w = np.concatenate([b.values for b in want if b.values.shape[1] == width])
            assert stored.view("<i8").tolist() == sent_w.view("<i8").tolist()  # bit for bit
        assert len(all_samples(store, "eeg")[0]) == committed + 2560


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


def test_a_forget_on_a_disk_too_full_for_the_keystore_says_what_it_did(
    small_disk: Path, secret: Secret
) -> None:
    """The rows go (the delete reuses the WAL's space), the keystore's new copy does not fit:
    the error says the data is deleted and its keys are not yet (it said "nothing already saved
    was lost"); the next unlock finishes."""
    home = small_disk / "twin"
    store = TwinStore.create(home, secret)
    try:
        store.append_samples(batch("hr", T0, 10))
        for i in range(4):  # ~0.4 MB through the WAL, which keeps its size for reuse
            store.append_samples(batch("eeg", T0 + i * 10, 2560,
                                       ("eeg_a", "eeg_b", "eeg_c", "eeg_d"), rate=256.0, seed=i))
        store.commit()
        store._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        keys_before = len(keys_module.Keystore.load(home / "keystore.json").deks)
        filler = small_disk / "filler"
        with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):  # full to the byte
            while True:
                f.write(b"\0" * 4096)
        with pytest.raises(StoreFull, match=r"the data is deleted, but \d+ of its data keys "
                           r"are still in .*keystore\.json") as err:
            store.forget(stream="eeg")
        pending = int(str(err.value).split("but ")[1].split()[0])
        assert [s.name for s in store.streams()] == ["hr"]
        assert len(keys_module.Keystore.load(home / "keystore.json").deks) == keys_before
        filler.unlink()
    finally:
        store.close()
    with TwinStore.open(home, secret) as again:  # the unlock destroys the orphaned keys
        left = len(keys_module.Keystore.load(home / "keystore.json").deks)
        assert pending > 0 and left == keys_before - pending
        assert [s.name for s in again.streams()] == ["hr"]
        assert again.verify().ok


def test_a_try_to_commit_a_long_wait_holds_little_beside_it(
    tmpfs: Callable[[int], Path], secret: Secret
) -> None:
    """Ten minutes of the serial bridge's 32 channels wait for a full disk, tried every 8 s
    as the daemon does. A try seals the packed wait as it is and hands it to SQLite a MiB at
    a time: it holds a fraction of the wait beside it, where decoding, re-encoding and
    sealing all of it held several times the wait. Freed, the wait commits bit for bit."""
    import tracemalloc

    disk = tmpfs(32)
    home = disk / "twin"
    store = TwinStore.create(home, secret)
    try:
        store.append_samples(_adc_batch(-10, 100, 0, CH32))
        store.commit()
        filler = _fill(disk)
        sent = []
        for s in range(600):
            b = _adc_batch(s, 100, s + 1, CH32)
            store.append_samples(b)
            sent.append(b)
            if s % 8 == 7:
                with pytest.raises(StoreFull):
                    store.commit()
        held = store.pending_sample_bytes()
        assert held > 3 * 2**20  # packed: ~a quarter of the 15.4 MB of arrays
        tracemalloc.start()
        try:
            with pytest.raises(StoreFull):
                store.commit()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # measured: ~1.3 MiB beside 3.7 MiB waiting; decoding and re-encoding all of it: 52 MB
        assert peak < held / 2, (peak, held)
        filler.unlink()
        store.commit()
        got = list(store.read_samples("bridge", T0))
        t = np.concatenate([g.t for g in got])
        np.testing.assert_array_equal(t, np.concatenate([b.t for b in sent]))
        stored = np.concatenate([g.values for g in got])
        assert stored.view("<i8").tolist() == np.concatenate(
            [b.values for b in sent]).view("<i8").tolist()
    finally:
        store.close()
    with TwinStore.open(home, secret) as again:
        assert again.verify().ok


CH32 = tuple(f"c{i}" for i in range(32))


def _fill(disk: Path) -> Path:
    """Fill ``disk`` to the last block with one file; unlink it to make room."""
    filler = disk / "filler"
    block = b"\0" * 65536
    with filler.open("wb", buffering=0) as f, pytest.raises(OSError) as full:
        _write_forever(f, block)
    assert full.value.errno == errno.ENOSPC
    return filler


def _write_forever(f: BinaryIO, block: bytes) -> None:
    while True:
        f.write(block)
