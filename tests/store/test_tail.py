"""A series' description is re-sealed only when its layouts or meta change or its tail (the
chunks written since) reaches RESEAL_TAIL; readers, a second connection, a reopened twin
and verify count the tail in, and meta['chunk_ends'] makes a deleted newest chunk show."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgetwin.errors import DataCorrupt
from edgetwin.store import Secret, TwinStore
from edgetwin.store.tails import RESEAL_TAIL
from tests.store.helpers import T0, all_samples, batch


def _sealed(store: TwinStore) -> dict[int, bytes]:
    rows = store._conn.execute("SELECT series_no, sealed FROM series").fetchall()
    return {int(sn): bytes(blob) for sn, blob in rows}


def _counts(store: TwinStore) -> dict[str, tuple[int, int, float | None, float | None]]:
    return {s.name: (s.samples, s.chunks, s.first_t, s.last_t) for s in store.streams()}


def _write(store: TwinStore, stream: str, commits: int, start: int = 0) -> None:
    for k in range(start, start + commits):
        store.append_samples(batch(stream, T0 + 10 * k, 10, ("a", "b"), seed=k))
        store.commit()


def test_a_description_is_resealed_for_new_layouts_and_after_a_long_tail_only(
    store: TwinStore,
) -> None:
    _write(store, "s", 1)
    first = _sealed(store)
    _write(store, "s", 5, start=1)
    assert _sealed(store) == first  # five commits, no re-seal
    assert _counts(store)["s"] == (60, 6, T0, T0 + 59)
    store.append_samples(batch("s", T0 + 60, 10, ("a", "b", "c")))  # a new layout
    store.commit()
    after_layout = _sealed(store)
    assert after_layout != first
    _write(store, "s", RESEAL_TAIL - 1, start=7)
    assert _sealed(store) == after_layout
    _write(store, "s", 1, start=7 + RESEAL_TAIL - 1)
    assert _sealed(store) != after_layout  # the tail reached RESEAL_TAIL chunks


def test_counts_with_a_tail_match_a_reopen_and_a_second_connection(
    twin_home: Path, secret: Secret
) -> None:
    with TwinStore.create(twin_home, secret) as a:
        _write(a, "s", 7)
        _write(a, "other", 3)
        expect = _counts(a)
        assert expect["s"] == (70, 7, T0, T0 + 69)
        with TwinStore.open(twin_home, secret) as b:
            assert _counts(b) == expect
            _write(b, "s", 2, start=7)  # b continues the numbering of a's tail
        _write(a, "s", 2, start=9)  # a sees b's commits (its caches are dropped)
        t, _v = all_samples(a, "s")
        assert np.array_equal(np.sort(t), T0 + np.arange(110.0))
        assert _counts(a)["s"] == (110, 11, T0, T0 + 109)
        report = a.verify()
        assert report.ok, [str(p) for p in report.problems]
    with TwinStore.open(twin_home, secret) as c:
        assert _counts(c)["s"] == (110, 11, T0, T0 + 109)


def test_deleting_the_newest_chunk_of_a_tail_is_reported(
    twin_home: Path, secret: Secret
) -> None:
    with TwinStore.create(twin_home, secret) as s:
        _write(s, "s", 4)
        _write(s, "later", 2)  # commits after the deleted chunk's
    conn = sqlite3.connect(twin_home / "twin.db", isolation_level=None)
    sn = conn.execute("SELECT series_no FROM chunk WHERE seq = 3").fetchone()[0]
    conn.execute("DELETE FROM chunk WHERE series_no = ? AND seq = 3", (sn,))
    conn.close()
    with TwinStore.open(twin_home, secret) as s:
        (p,) = s.verify().problems
        assert p.stream == "s" and "missing" in p.detail and "expected 4 chunks" in p.detail
        _write(s, "s", 1, start=10)  # the next chunk does not take the deleted one's number
        seqs = [int(r[0]) for r in s._conn.execute(
            "SELECT seq FROM chunk WHERE series_no = ? ORDER BY seq", (sn,))]
        assert seqs == [0, 1, 2, 4]


def test_an_altered_chunk_ends_row_is_damage(twin_home: Path, secret: Secret) -> None:
    with TwinStore.create(twin_home, secret) as s:
        _write(s, "s", 3)
    conn = sqlite3.connect(twin_home / "twin.db", isolation_level=None)
    (blob,) = conn.execute("SELECT v FROM meta WHERE k = 'chunk_ends'").fetchone()
    altered = bytearray(blob)
    altered[16] ^= 1  # the first entry's next chunk number
    conn.execute("UPDATE meta SET v = ? WHERE k = 'chunk_ends'", (bytes(altered),))
    conn.close()
    with TwinStore.open(twin_home, secret) as s:
        with pytest.raises(DataCorrupt, match="chunk_ends"):
            s.streams()
        assert any("chunk_ends" in p.detail for p in s.verify().problems)
        t, _v = all_samples(s, "s")  # the samples themselves stay readable
        assert t.shape[0] == 30


def test_forgetting_a_stream_with_a_tail_and_writing_it_again_is_clean(
    store: TwinStore,
) -> None:
    _write(store, "s", 5)
    _write(store, "keep", 1)
    store.forget(stream="s")
    _write(store, "s", 2, start=20)
    assert _counts(store)["s"] == (20, 2, T0 + 200, T0 + 219)
    report = store.verify()
    assert report.ok, [str(p) for p in report.problems]


def test_forgetting_the_newest_days_of_a_tail_leaves_no_false_gap(store: TwinStore) -> None:
    day = 86400.0
    for k in range(4):
        store.append_samples(batch("s", T0 + k * day, 5, seed=k))
        store.commit()
    store.forget(before=T0 + 2 * day)
    assert _counts(store)["s"][:2] == (10, 2)
    _write(store, "s", 1, start=int(3 * day / 10) + 1)
    report = store.verify()
    assert report.ok, [str(p) for p in report.problems]


def test_frames_and_predictions_tails_are_counted_too(twin_home: Path, secret: Secret) -> None:
    from edgetwin.types import FeatureFrame, Prediction

    ones = np.ones(3)
    with TwinStore.create(twin_home, secret) as s:
        for k in range(3):
            s.append_frames([FeatureFrame(T0 + 10 * k + i, ones, ones, ones < 0, 1)
                             for i in range(2)])
            s.append_predictions([Prediction(T0 + 10 * k, "hr", 5.0, (60.0,), ((55.0, 65.0),),
                                             (1.0,), (), "m")])
            s.commit()
        assert s.series_counts() == {"frames": 6, "predictions": 3}
    with TwinStore.open(twin_home, secret) as s:
        assert s.series_counts() == {"frames": 6, "predictions": 3}
        assert len(s.read_predictions()) == 3
        report = s.verify()
        assert report.ok, [str(p) for p in report.problems]
    conn = sqlite3.connect(twin_home / "twin.db", isolation_level=None)
    conn.execute("DELETE FROM chunk WHERE seq = 2")  # the newest frames and predictions chunks
    conn.close()
    with TwinStore.open(twin_home, secret) as s:
        problems = s.verify().problems
        assert len(problems) == 2 and all("missing" in p.detail for p in problems)


Counts = dict[str, tuple[int, int, float | None, float | None]]


def _views_during_commits(
    store: TwinStore, caplog: pytest.LogCaptureFixture, view: Callable[[], Counts],
    commits: int, start: int = 0,
) -> list[Counts]:
    """``view()`` over and over in a thread while ``commits`` commits of 10 rows land; no
    "chunks missing" may be logged meanwhile."""
    import threading

    stop = threading.Event()
    seen: list[Counts] = []

    def status_reads() -> None:
        while not stop.is_set():
            seen.append(view())

    thread = threading.Thread(target=status_reads)
    caplog.set_level("WARNING", logger="edgetwin.store.tails")
    thread.start()
    try:
        _write(store, "s", commits, start=start)
    finally:
        stop.set()
        thread.join()
    assert len(seen) > 10
    assert not [r for r in caplog.records if "missing" in r.getMessage()]
    return seen


def test_a_status_read_during_commits_never_sees_chunks_missing(
    store: TwinStore, caplog: pytest.LogCaptureFixture
) -> None:
    # The daemon's status read opens every series in a thread while the writer commits. The
    # tail and the record of where it ends were read under two holds of the store's lock, so a
    # commit between them looked like deleted chunks ("chunks 433..433 are missing" in the
    # soak) and was counted as chunks of unknown rows
    seen = _views_during_commits(store, caplog, lambda: _counts(store), 300)
    # every view is a moment of the twin: whole commits of 10 rows, one chunk each
    for view in seen:
        if "s" in view:
            samples, chunks, _, _ = view["s"]
            assert samples == 10 * chunks
    assert _counts(store)["s"][:2] == (3000, 300)


def test_a_reader_on_its_own_connection_during_commits_never_sees_chunks_missing(
    store: TwinStore, caplog: pytest.LogCaptureFixture
) -> None:
    # The same race through reader(), as the daemon's status reads since 0c490f9: its own
    # connection does not share the writer's lock, and in autocommit each SELECT was its
    # own snapshot (the 50-minute soak still logged two "chunks missing")
    def through_a_reader() -> Counts:
        with store.reader() as reader:
            return _counts(reader)

    _write(store, "s", 1)
    seen = _views_during_commits(store, caplog, through_a_reader, 400, start=1)
    for view in seen:
        samples, chunks, _, _ = view["s"]
        assert samples == 10 * chunks
    assert _counts(store)["s"][:2] == (4010, 401)


def test_a_reader_sees_what_is_committed_without_waiting_for_the_writer(
    store: TwinStore,
) -> None:
    # issue 18 item 1: reads from another thread on their own SQLite connection (WAL)
    import threading

    from edgetwin.errors import EdgetwinError

    _write(store, "s", 3)
    store.append_samples(batch("s", T0 + 1000, 10, ("a", "b")))  # buffered, not committed
    with store.reader() as reader:
        assert _counts(reader)["s"][:2] == (30, 3)
        assert reader.pending_rows() == 0
        reader.append_samples(batch("r", T0, 5))
        with pytest.raises((EdgetwinError, sqlite3.Error)):  # query_only: it never writes
            reader.commit()
        seen: dict[str, object] = {}
        with store.transaction():  # the writer holds its lock, as a long forget does
            t_reader = threading.Thread(target=lambda: seen.update(r=_counts(reader)))
            t_main = threading.Thread(target=lambda: seen.update(m=_counts(store)))
            t_reader.start()
            t_main.start()
            t_reader.join(30)
            assert "r" in seen  # the reader answered while the writer held the store
            assert t_main.is_alive()  # the writer's own handle waits for its lock
        t_main.join(30)
        assert seen["r"] == {"s": (30, 3, T0, T0 + 29)}
    store.commit()
    with store.reader() as reader:  # a new reader sees the new commit
        assert _counts(reader)["s"][:2] == (40, 4)


def test_readers_sharing_tail_counts_see_what_a_fresh_reader_sees_and_decode_only_new_chunks(
    store: TwinStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgetwin.store.tails import TailCounts

    decoded: list[int] = []
    real = TwinStore._chunk_times

    def counting(self: TwinStore, series: object, row: object) -> object:
        decoded.append(1)
        return real(self, series, row)  # type: ignore[arg-type]

    monkeypatch.setattr(TwinStore, "_chunk_times", counting)
    counts = TailCounts()

    def both() -> tuple[Counts, Counts, int]:
        decoded.clear()
        with store.reader(tail_counts=counts) as r:
            kept = {s.name: (s.samples, s.chunks, s.first_t, s.last_t) for s in r.streams()}
        n = len(decoded)
        with store.reader() as r:
            fresh = {s.name: (s.samples, s.chunks, s.first_t, s.last_t) for s in r.streams()}
        return kept, fresh, n

    _write(store, "s", 5)
    _write(store, "gone", 3)
    kept, fresh, n = both()
    # each stream's first commit re-sealed its description (a new layout): tails of 4 and 2
    assert kept == fresh and kept["s"] == (50, 5, T0, T0 + 49) and n == 6
    _write(store, "s", 2, start=5)
    kept, fresh, n = both()
    assert kept == fresh and kept["s"] == (70, 7, T0, T0 + 69)
    assert n == 2  # only the two chunks written since the last read
    kept, fresh, n = both()
    assert kept == fresh and n == 0
    # a re-seal (the tail reached RESEAL_TAIL) changes the description: opened afresh
    _write(store, "s", RESEAL_TAIL, start=7)
    kept, fresh, n = both()
    assert kept == fresh and kept["s"][1] == 7 + RESEAL_TAIL
    # forget: the stream goes, and so do its name and counts from the carried counts
    store.forget(stream="gone")
    kept, fresh, n = both()
    assert kept == fresh and "gone" not in kept and len(counts) == 1
    # a forget of days re-seals what it changes: no stale count survives it
    store.forget(before=T0 + 300)
    kept, fresh, n = both()
    assert kept == fresh and kept["s"][0] == 10 * (7 + RESEAL_TAIL) - 300


def test_a_writer_never_takes_carried_tail_counts(store: TwinStore) -> None:
    from edgetwin.store.tails import TailCounts

    counts = TailCounts()
    _write(store, "s", 3)
    with store.reader(tail_counts=counts) as r:
        r.streams()
    assert len(counts) == 1 and store._tail_counts is None
    _write(store, "s", RESEAL_TAIL - 3, start=3)  # the writer's own tail count decides
    sealed = _sealed(store)
    _write(store, "s", 1, start=RESEAL_TAIL)
    assert _sealed(store) != sealed  # re-sealed after exactly RESEAL_TAIL chunks
