from __future__ import annotations

import asyncio
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgetwin.config import Config, DaemonConfig
from edgetwin.daemon import control
from edgetwin.daemon.lock import DaemonLock, holder_pid
from edgetwin.daemon.supervisor import Daemon
from edgetwin.errors import DaemonAlreadyRunning, DaemonNotRunning, HomeError
from edgetwin.types import FeatureFrame, Prediction, SampleBatch

from .fakes import MemoryStore, ScriptedSource

CFG = Config(daemon=DaemonConfig(flush_interval_s=0.05, backoff_initial_s=0.01, backoff_max_s=0.02))


class CountingPipeline:
    """One frame per batch; records flush()."""

    def __init__(self) -> None:
        self.flushed = False

    def push(self, batch: SampleBatch) -> list[FeatureFrame]:
        return [FeatureFrame(batch.last_t, np.zeros(13), np.ones(13), np.zeros(13, bool), 1)]

    def flush(self) -> list[FeatureFrame]:
        self.flushed = True
        return [FeatureFrame(0.0, np.zeros(13), np.ones(13), np.zeros(13, bool), 1)]


class EchoEngine:
    def observe(self, frame: FeatureFrame) -> tuple[FeatureFrame, list[Prediction]]:
        pred = Prediction(frame.t, "hr", 5.0, (60.0,), ((55.0, 65.0),), (1.0,), (), "test")
        return frame, [pred]

    def observe_many(
        self, frames: list[FeatureFrame]
    ) -> list[tuple[FeatureFrame, list[Prediction]]]:
        return [self.observe(f) for f in frames]

    def state(self) -> dict[str, object]:
        return {"n": 1}


async def test_one_failing_source_never_stops_the_others(home: Path) -> None:
    store = MemoryStore()
    good = ScriptedSource("good", batches_per_session=1000, interval_s=0.001)
    bad = ScriptedSource("bad", batches_per_session=1, end_with=RuntimeError("boom"))  # type: ignore[arg-type]
    daemon = Daemon(home, CFG, store, [good, bad], seed=1)
    await daemon.run(duration=0.4)
    status = {s["name"]: s for s in daemon.status()["sources"]}
    assert status["good"]["samples"] > 100
    assert status["bad"]["failures"] >= 2
    total = status["good"]["samples"] + status["bad"]["samples"]
    assert sum(len(b) for b in store.committed) == total


async def test_shutdown_drains_flushes_and_commits(home: Path) -> None:
    store = MemoryStore()
    pipeline = CountingPipeline()
    daemon = Daemon(
        home, CFG, store, [ScriptedSource("s", batches_per_session=50, end_with=None)],
        pipeline=pipeline, engine=EchoEngine(),
    )
    await daemon.run(duration=0.3)
    assert store.pending == []
    assert sum(len(b) for b in store.committed) == 500
    assert pipeline.flushed
    assert len(store.frames) == 51
    assert len(store.preds) == 51
    assert store.records[("inference", "state")] == {"n": 1}
    assert not (home / "control.sock").exists()
    assert holder_pid(home) is None


async def test_status_and_predictions_over_the_control_socket(home: Path) -> None:
    store = MemoryStore()
    daemon = Daemon(
        home, CFG, store, [ScriptedSource("s", batches_per_session=10**6, interval_s=0.005)],
        pipeline=CountingPipeline(), engine=EchoEngine(),
    )
    task = asyncio.create_task(daemon.run())
    sock = home / "control.sock"
    while not sock.exists():
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    status = await asyncio.to_thread(control.request, home, {"cmd": "status"})
    assert status["daemon"]["running"] is True
    assert status["daemon"]["pid"] == os.getpid()
    assert status["daemon"]["rss_bytes"] > 0
    mem = status["daemon"]["memory"]
    assert mem["anon_bytes"] > 0 and mem["file_bytes"] > 0 and mem["py_blocks"] > 1000
    assert mem["anon_bytes"] + mem["file_bytes"] <= status["daemon"]["rss_bytes"] * 1.1
    threads = status["daemon"]["threads_cpu_s"]  # the loop's and the writer's CPU, apart
    assert {"MainThread", "edgetwin-writer"} <= threads.keys()
    assert all(v >= 0 for v in threads.values())
    handles = status["daemon"]["handles"]
    assert handles["open_fds"] > 3 and handles["threads"] >= 2
    # the loop's own tasks: the loop-lag probe, the source, the store's consumer, the flusher
    assert handles["asyncio_tasks"] >= 4
    (src,) = status["sources"]
    assert {"name", "kind", "state", "samples", "drops", "last_sample_t"} <= src.keys()
    assert src["state"] == "streaming"
    assert status["store"]["streams"][0]["name"] == "s.x"
    preds = await asyncio.to_thread(control.request, home, {"cmd": "predictions", "last": 2})
    assert len(preds["predictions"]) == 2
    daemon.stop()
    await task
    with pytest.raises(DaemonNotRunning):
        control.request(home, {"cmd": "status"})


async def test_a_second_daemon_on_the_same_home_is_refused(home: Path) -> None:
    lock = DaemonLock(home)
    lock.acquire()
    try:
        daemon = Daemon(home, CFG, MemoryStore(), [])
        with pytest.raises(DaemonAlreadyRunning, match=f"pid {os.getpid()}"):
            await daemon.run(duration=0.1)
    finally:
        lock.release()


async def test_stale_lock_and_socket_from_a_killed_daemon_are_recovered(home: Path) -> None:
    # A real process takes the lock and binds the socket, then dies by SIGKILL.
    code = (
        "import socket,sys,os,time\n"
        "from pathlib import Path\n"
        "from edgetwin.daemon.lock import DaemonLock\n"
        f"h=Path({str(home)!r}); DaemonLock(h).acquire()\n"
        "s=socket.socket(socket.AF_UNIX); s.bind(str(h/'control.sock')); s.listen()\n"
        "print('ready', flush=True); time.sleep(60)\n"
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert holder_pid(home) == proc.pid
        proc.kill()
        proc.wait()
    assert (home / "control.sock").exists()
    store = MemoryStore()
    daemon = Daemon(home, CFG, store, [ScriptedSource("s", batches_per_session=2, end_with=None)])
    await daemon.run(duration=0.2)
    assert sum(len(b) for b in store.committed) == 20


async def test_a_non_socket_in_the_way_is_not_deleted(home: Path) -> None:
    (home / "control.sock").write_text("precious")
    daemon = Daemon(home, CFG, MemoryStore(), [])
    with pytest.raises(HomeError, match="not a socket"):
        await daemon.run(duration=0.1)
    assert (home / "control.sock").read_text() == "precious"


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a client as another user")
async def test_control_socket_refuses_other_users_even_if_the_mode_is_opened() -> None:
    # The file mode is the first fence; SO_PEERCRED is the second. Open the first on purpose
    # (world-traversable home, 0666 socket) and check that another uid still gets nothing.
    import shutil
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="edgetwin-peercred-", dir="/tmp"))
    try:
        home.chmod(0o755)
        daemon = Daemon(
            home, CFG, MemoryStore(),
            [ScriptedSource("s", batches_per_session=10**6, interval_s=0.01)],
        )
        task = asyncio.create_task(daemon.run())
        sock = home / "control.sock"
        while not sock.exists():
            await asyncio.sleep(0.01)
        sock.chmod(0o666)
        code = (
            "import os,socket,sys\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "s=socket.socket(socket.AF_UNIX)\n"
            f"s.connect({str(sock)!r})\n"
            "try:\n"
            "    s.sendall(b'{\"cmd\": \"status\"}\\n')\n"
            "    sys.stdout.write(repr(s.recv(100)))\n"
            "except (ConnectionResetError, BrokenPipeError):\n"
            "    sys.stdout.write('reset')\n"
        )
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True,
            timeout=20,
        )
        # The owner still gets an answer.
        ok = await asyncio.to_thread(control.request, home, {"cmd": "ping"})
        daemon.stop()
        await task
        assert result.returncode == 0, result.stderr
        assert result.stdout in ("b''", "reset")  # closed without a byte of status
        assert ok == {"ok": True}
        assert daemon._control.refused == 1
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("in_thread", [True, False])
async def test_a_slow_periodic_job_does_not_stall_the_sources(home: Path, in_thread: bool) -> None:
    """Threaded or on the writer thread (retention), a slow job leaves the loop free."""
    import time as _time

    from edgetwin.daemon.supervisor import PeriodicJob

    seen: list[tuple[int, int]] = []
    daemon: Daemon

    def slow_upload() -> None:
        before = daemon.runners[0].samples
        _time.sleep(0.4)  # an upload waiting on a slow collector
        seen.append((before, daemon.runners[0].samples))

    daemon = Daemon(
        home, CFG, MemoryStore(),
        [ScriptedSource("s", batches_per_session=10**6, interval_s=0.01)],
        periodic=[PeriodicJob("sync", 10.0, slow_upload, in_thread=in_thread)],
    )
    daemon.start_grace_s = 0.0
    await daemon.run(duration=0.8)
    (before, after) = seen[0]
    assert after - before >= 100  # samples kept flowing during the job


@pytest.mark.parametrize("in_thread", [True, False])
async def test_periodic_jobs_first_run_after_the_start_grace(home: Path, in_thread: bool) -> None:
    """A (re)start's first seconds go to the sources: no job runs before the grace ends."""
    import time as _time

    from edgetwin.daemon.supervisor import PeriodicJob

    runs: list[tuple[float, int]] = []
    daemon: Daemon

    def job() -> None:
        runs.append((_time.monotonic(), daemon.runners[0].samples))

    daemon = Daemon(
        home, CFG, MemoryStore(),
        [ScriptedSource("s", batches_per_session=10**6, interval_s=0.01)],
        periodic=[PeriodicJob("retention", 0.2, job, in_thread=in_thread)],
    )
    daemon.start_grace_s = 0.5
    started = _time.monotonic()
    await daemon.run(duration=1.2)
    assert runs, "the job never ran"
    assert runs[0][0] - started >= 0.5
    assert runs[0][1] > 0  # the source was streaming before the first run
    assert len(runs) >= 2  # then on its interval


async def test_a_job_with_a_first_delay_waits_it_beyond_the_grace(home: Path) -> None:
    """A job that a restart need not redo (the refit, when the stored one is recent) first
    runs its delay after the start grace, then on its interval."""
    import time as _time

    from edgetwin.daemon.supervisor import PeriodicJob

    runs: list[float] = []
    daemon = Daemon(
        home, CFG, MemoryStore(),
        [ScriptedSource("s", batches_per_session=10**6, interval_s=0.01)],
        periodic=[PeriodicJob("personal", 0.1, lambda: runs.append(_time.monotonic()),
                              in_thread=True, first_delay_s=0.6)],
    )
    daemon.start_grace_s = 0.1
    started = _time.monotonic()
    await daemon.run(duration=1.2)
    assert runs, "the job never ran"
    assert runs[0] - started >= 0.7
    assert len(runs) >= 2


async def test_a_job_meeting_a_full_disk_says_so_in_one_line_and_runs_again(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The refit's record write in the soak's disk-full minute logged "periodic job personal
    failed" with a traceback: a full disk is an expected state, said in one line."""
    from edgetwin.daemon.supervisor import PeriodicJob
    from edgetwin.errors import StoreFull

    runs: list[int] = []

    def job() -> None:
        runs.append(1)
        raise StoreFull("twin.db: the disk is full while writing a record")

    daemon = Daemon(
        home, CFG, MemoryStore(),
        [ScriptedSource("s", batches_per_session=10**6, interval_s=0.01)],
        periodic=[PeriodicJob("personal", 0.2, job, in_thread=True)],
    )
    daemon.start_grace_s = 0.1

    async def stop_after_two() -> None:  # not a fixed duration: a loaded machine runs fewer
        while daemon.errors["periodic:personal"] < 2:
            await asyncio.sleep(0.01)
        daemon.stop()

    with caplog.at_level(logging.WARNING, logger="edgetwin.daemon.supervisor"):
        watcher = asyncio.create_task(stop_after_two())
        await asyncio.wait_for(daemon.run(), 60)
        await watcher
    said = [r for r in caplog.records if "periodic job personal" in r.getMessage()]
    assert len(said) >= 2 and len(runs) >= len(said)  # it ran again after the first
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in said)
    assert said[0].getMessage() == ("periodic job personal could not write: twin.db: the disk "
                                    "is full while writing a record")
    assert daemon.errors["periodic:personal"] == len(said)  # each counted once, said once


class FullDiskStore(MemoryStore):
    """Commits fail with StoreFull until ``space`` is set, as SQLite does on a full disk
    (the real SQLITE_FULL path is in tests/store/test_full_disk.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.space = False
        self.failed = 0

    def commit(self) -> None:
        from edgetwin.errors import StoreFull

        if not self.space:
            self.failed += 1
            raise StoreFull("twin.db: the disk is full while writing samples")
        super().commit()


async def test_a_slow_failing_commit_is_retried_less_often(home: Path) -> None:
    """Each try re-encodes all that waits, which grows with the outage: the wait before the
    next try is at least COMMIT_RETRY_DUTY times the last failed try, so failed tries take a
    bounded share of the time however much waits (here past the fixed 8 s cap)."""
    from edgetwin.daemon.supervisor import COMMIT_RETRY_DUTY, COMMIT_RETRY_MAX_S

    class SlowFullDisk(FullDiskStore):
        def commit(self) -> None:
            time.sleep(0.95)  # what re-encoding a long outage's data costs on a small machine
            super().commit()

    store = SlowFullDisk()
    daemon = Daemon(home, CFG, store,
                    [ScriptedSource("s", batches_per_session=10**6, interval_s=0.01)], seed=1)
    seen: dict[str, Any] = {}

    async def watch() -> None:
        try:
            while store.failed == 0:
                await asyncio.sleep(0.01)
            while not (daemon.status()["daemon"]["commit_failing"] or {}).get("last_try_s"):
                await asyncio.sleep(0.01)
            seen.update(daemon.status()["daemon"]["commit_failing"])
        finally:
            daemon.stop()

    watcher = asyncio.create_task(watch())
    await asyncio.wait_for(daemon.run(), 60)
    await asyncio.wait_for(watcher, 1)
    assert seen["last_try_s"] >= 0.95
    assert seen["next_try_in_s"] >= COMMIT_RETRY_DUTY * seen["last_try_s"] - 0.01
    assert seen["next_try_in_s"] > COMMIT_RETRY_MAX_S  # the old schedule tried again at 2 s


async def test_a_full_disk_shows_in_status_since_when_and_nothing_buffered_is_lost(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Also: the failing commits are said in one WARNING line each, without a traceback (a
    full disk is expected on a small card; the soak's log showed an ERROR and 30 lines)."""
    store = FullDiskStore()
    daemon = Daemon(home, CFG, store,
                    [ScriptedSource("s", batches_per_session=10**6, interval_s=0.005)], seed=1)
    seen: dict[str, object] = {}

    async def watch() -> None:
        # The watcher stops the daemon, not a fixed duration: on a loaded machine the daemon
        # could end before the third failed try, and the watcher would then wait forever.
        try:
            while store.failed < 3:
                await asyncio.sleep(0.01)
            st = daemon.status()["daemon"]
            seen.update(failing=st["commit_failing"], rows=st["uncommitted_rows"])
            store.space = True
            while store.commits == 0:
                await asyncio.sleep(0.01)
            seen["after"] = daemon.status()["daemon"]["commit_failing"]
        finally:
            daemon.stop()

    watcher = asyncio.create_task(watch())
    with caplog.at_level(logging.WARNING, logger="edgetwin.daemon.supervisor"):
        await asyncio.wait_for(daemon.run(), 60)
    await asyncio.wait_for(watcher, 1)
    said = [r for r in caplog.records if "commit" in r.getMessage()]
    assert said[0].getMessage() == ("committing to the store failed: twin.db: the disk is full "
                                    "while writing samples; retrying with backoff")
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in said)
    assert said[-1].getMessage().startswith("commits work again after")
    failing = seen["failing"]
    assert isinstance(failing, dict) and "disk is full" in failing["error"]
    assert failing["since"] > 0 and isinstance(seen["rows"], int) and seen["rows"] > 0
    assert seen["after"] is None
    received = {s["name"]: s for s in daemon.status()["sources"]}["s"]["samples"]
    assert store.pending == [] and sum(len(b) for b in store.committed) == received


async def test_while_commits_fail_they_are_retried_with_backoff_not_at_every_flush(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each try re-encodes all that is buffered: a full disk must not cost one try per
    flush. Tries come at flush x 2**n (capped); a commit asked for is still tried at once, and
    once space is back everything buffered is committed."""
    import edgetwin.daemon.supervisor as supervisor

    monkeypatch.setattr(supervisor, "COMMIT_RETRY_MAX_S", 0.4)
    store = FullDiskStore()
    daemon = Daemon(home, CFG, store,
                    [ScriptedSource("s", batches_per_session=10**6, interval_s=0.005)], seed=1)
    seen: dict[str, object] = {}

    async def watch() -> None:
        await asyncio.sleep(1.6)  # 32 flushes of 0.05 s; backoff: 0.1, 0.2, 0.4, 0.4, 0.4
        seen["tries"] = store.failed
        seen["status"] = dict(daemon.status()["daemon"]["commit_failing"])
        before = store.failed
        await daemon.on_writer(daemon.commit_now, "asked")  # as a forget or a mark asks
        seen["asked_tries"] = store.failed - before
        store.space = True

    watcher = asyncio.create_task(watch())
    await daemon.run(duration=2.6)
    await watcher
    assert isinstance(seen["tries"], int) and 3 <= seen["tries"] <= 8
    status = seen["status"]
    assert isinstance(status, dict) and status["tries"] == seen["tries"]
    assert status["next_try_in_s"] == 0.4
    assert seen["asked_tries"] == 1  # tried at once, whatever the backoff
    assert daemon.status()["daemon"]["commit_failing"] is None
    received = {s["name"]: s for s in daemon.status()["sources"]}["s"]["samples"]
    assert store.pending == [] and sum(len(b) for b in store.committed) == received


async def test_while_commits_fail_the_buffer_is_bounded_and_the_oldest_samples_shed(
    home: Path,
) -> None:
    """A disk full for hours must not grow the daemon until the kernel kills it (losing all
    it buffered): past ``max_uncommitted_mib`` the oldest samples are dropped, counted in
    status, and once space is back the newest are committed."""
    import dataclasses

    from edgetwin.cli.daemon import render_status

    cap_mib = 0.01  # 10,485 bytes: ~65 of the scripted source's 160-byte batches
    cfg = dataclasses.replace(CFG, daemon=dataclasses.replace(CFG.daemon,
                                                              max_uncommitted_mib=cap_mib))
    store = FullDiskStore()
    daemon = Daemon(home, cfg, store,
                    [ScriptedSource("s", batches_per_session=10**6, interval_s=0.002)], seed=1)
    after_tries: list[int] = []
    shed_oldest = store.shed_oldest_samples

    def shed_and_measure(keep_bytes: int) -> dict[str, int]:
        shed = shed_oldest(keep_bytes)
        after_tries.append(sum(b.t.nbytes + b.values.nbytes for b in store.pending))
        return shed

    store.shed_oldest_samples = shed_and_measure  # type: ignore[method-assign]
    seen: dict[str, object] = {}

    async def watch() -> None:
        try:  # the watcher stops the daemon: a fixed duration races a loaded machine
            while not daemon.shed_samples:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            seen["status"] = daemon.status()["daemon"]
            seen["text"] = render_status(daemon.status(), home)
            store.space = True
            while store.commits == 0:
                await asyncio.sleep(0.01)
            seen["after"] = daemon.status()
        finally:
            daemon.stop()

    watcher = asyncio.create_task(watch())
    await asyncio.wait_for(daemon.run(), 60)
    await asyncio.wait_for(watcher, 1)
    assert after_tries and max(after_tries) <= cap_mib * 2**20  # bounded after every try
    status = seen["status"]
    assert isinstance(status, dict)
    shed = status["shed_samples"]["s.x"]
    failing = status["commit_failing"]
    assert shed > 0 and failing["shed_samples"] == shed
    # what waits, against the cap (the fake store holds raw arrays), also in the text status
    assert failing["cap_mib"] == cap_mib and 0 < failing["held_mib"] <= cap_mib
    text = str(seen["text"])
    assert "NOT SAVING: commits have failed for" in text
    assert f"of {cap_mib:g} MiB of samples wait in memory" in text
    assert "were dropped to stay within it" in text
    after = seen["after"]  # commits work again: the loss stays said
    assert isinstance(after, dict)
    shed_since_start = after["daemon"]["shed_samples"]["s.x"]
    assert "NOT SAVING" not in render_status(after, home)
    assert (f"{shed_since_start} samples were dropped while commits failed"
            in render_status(after, home))
    received = {s["name"]: s for s in daemon.status()["sources"]}["s"]["samples"]
    total_shed = daemon.status()["daemon"]["shed_samples"]["s.x"]
    committed = np.concatenate([b.t for b in store.committed])
    assert len(committed) + total_shed == received  # each sample committed or counted shed
    assert committed[0] > 1_700_000_000.0  # the first samples were the ones shed
    assert np.all(np.diff(committed) > 0)


async def test_batches_arriving_together_take_one_writer_trip(home: Path) -> None:
    """A source delivering every few ms: the store consumer hands the writer a trip per
    gathering moment, not one per batch, and every batch is stored once, in order."""
    store = MemoryStore()
    daemon = Daemon(home, CFG, store,
                    [ScriptedSource("s", batches_per_session=60, interval_s=0.002, end_with=None)])
    trips: list[int] = []
    persist_all = daemon._persist_all

    def counted(batches: list[SampleBatch], behind: bool = False) -> None:
        trips.append(len(batches))
        persist_all(batches, behind)

    daemon._persist_all = counted  # type: ignore[method-assign]
    await daemon.run(duration=1.5)
    assert sum(trips) == 60
    assert len(trips) <= 20  # 60 batches over >= 0.12 s gathered 0.1 s at a time
    times = np.concatenate([b.t for b in store.committed])
    assert np.all(np.diff(times) > 0)


async def test_status_counts_the_cpu_of_the_daemons_ended_child_processes(home: Path) -> None:
    """The refit and OpenDP run in short-lived children: their CPU is the daemon's work too,
    shown beside its own rather than hidden."""
    from edgetwin.cli.daemon import render_status

    daemon = Daemon(home, CFG, MemoryStore(), [])
    run = asyncio.create_task(daemon.run(duration=30.0))
    while not control.socket_path(home).exists():
        await asyncio.sleep(0.01)
    before = (await daemon.request({"cmd": "status"}) or {})["daemon"]["children_cpu_s"]
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3:\n    pass"
    await asyncio.to_thread(subprocess.run, [sys.executable, "-c", burn], check=True)
    doc = await daemon.request({"cmd": "status"}) or {}
    daemon.stop()
    await run
    assert doc["daemon"]["children_cpu_s"] - before >= 0.25
    assert f"{doc['daemon']['children_cpu_s']:.1f} s in child processes" in render_status(doc, home)
