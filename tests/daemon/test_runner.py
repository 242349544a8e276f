from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import numpy as np

from edgetwin.daemon.backoff import Backoff, SourceState
from edgetwin.daemon.hub import Hub
from edgetwin.daemon.runner import SourceRunner
from edgetwin.errors import DeviceNotFound, DriverMissing, TransientSourceError
from edgetwin.types import SampleBatch

from .fakes import ScriptedSource


def _runner(source: ScriptedSource, hub: Hub, watchdog_s: float = 5.0) -> SourceRunner:
    return SourceRunner(
        source, hub, watchdog_s=watchdog_s,
        backoff=Backoff(initial_s=0.001, max_s=0.01, rng=random.Random(0)),
    )


async def test_reconnects_after_connect_failures_and_link_drops() -> None:
    hub = Hub(64)
    q = hub.subscribe("c")
    src = ScriptedSource(
        "strap",
        connect_errors=[DeviceNotFound("not there"), TransientSourceError("timeout")],
        batches_per_session=2,
        max_sessions=3,
    )
    runner = _runner(src, hub)
    task = asyncio.create_task(runner.run())

    async def three_sessions_delivered() -> None:
        # The fourth connect hangs, so the counters stop here: on a loaded CI machine an
        # unbounded source reconnected ~1,000 times before this poll woke, overflowing the
        # queue (and, at 1,024 failures, the backoff: see test_backoff)
        while runner.samples < 3 * 2 * 10 or src.closes < 2 + 3:  # 2 failed connects, 3 sessions
            await asyncio.sleep(0.005)

    await asyncio.wait_for(three_sessions_delivered(), 30)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert src.connects == runner.connects == 3
    assert runner.failures == 5  # two connect failures and three dropped links
    assert len(q) == runner.batches == 6
    assert src.closes >= src.connects  # every session closed, including failed connects
    assert runner.state == SourceState.STOPPED
    assert "link lost" in (runner.last_error or "")


async def test_missing_driver_fails_without_retrying() -> None:
    hub = Hub(8)
    src = ScriptedSource("eeg", connect_errors=[DriverMissing("no native library for aarch64")])
    runner = _runner(src, hub)
    await asyncio.wait_for(runner.run(), 2)
    assert runner.state == SourceState.FAILED
    assert src.connects == 0
    assert runner.status()["last_error"] == "no native library for aarch64"


async def test_watchdog_turns_silence_into_a_reconnect() -> None:
    hub = Hub(8)
    src = ScriptedSource("quiet", batches_per_session=5, silent_after=1)
    runner = _runner(src, hub, watchdog_s=0.05)
    task = asyncio.create_task(runner.run())
    while src.connects < 2 or runner.batches < 2:  # the second session's one batch too
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert "sent nothing for 0.05 s" in (runner.last_error or "")
    assert runner.batches >= 2


async def test_clean_end_of_stream_stops_the_runner() -> None:
    hub = Hub(8)
    src = ScriptedSource("replay", batches_per_session=3, end_with=None)
    runner = _runner(src, hub)
    await asyncio.wait_for(runner.run(), 2)
    assert runner.state == SourceState.STOPPED
    assert runner.samples == 30
    assert runner.status()["samples"] == 30
    assert not src.open


async def test_unexpected_exception_in_a_source_is_contained() -> None:
    class Broken(ScriptedSource):
        async def connect(self) -> None:
            raise RuntimeError("driver bug")

    hub = Hub(8)
    runner = _runner(Broken("b"), hub)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0.05)
    assert runner.failures >= 1
    assert runner.state in (SourceState.BACKOFF, SourceState.CONNECTING)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_source_that_is_quiet_by_nature_is_not_reconnected_early() -> None:
    hub = Hub(8)
    src = ScriptedSource("thermo", batches_per_session=3, interval_s=0.15, end_with=None)
    src.silence_tolerance_s = 1.0  # longer than the gaps between its readings
    runner = _runner(src, hub, watchdog_s=0.05)
    await asyncio.wait_for(runner.run(), 5)
    assert runner.connects == 1
    assert runner.failures == 0
    assert runner.samples == 30


async def test_a_batch_with_an_impossible_time_is_refused_and_the_link_kept() -> None:
    """A broken device clock (t = 1e300) never reaches the hub: the feature bins and the
    store would choke on it. The batches before and after it do."""
    hub = Hub(64)
    q = hub.subscribe("c")
    src = ScriptedSource("strap", batches_per_session=3, end_with=None, rows=2)
    src.t = 1e300  # the first batch's times
    real_stream = src.stream

    async def stream():  # type: ignore[no-untyped-def]
        async for batch in real_stream():
            yield batch
            src.t = 1_700_000_000.0  # the device's clock recovers after one batch

    src.stream = stream  # type: ignore[method-assign]
    runner = _runner(src, hub)
    await asyncio.wait_for(runner.run(), 30)
    assert runner.refused_batches == 1
    assert runner.batches == 2 and len(q) == 2
    assert all(float(b.t.max()) < 2e9 for b in q.drain())
    assert runner.connects == 1 and "-1200..5138" in (runner.last_error or "")
    assert runner.status()["refused_batches"] == 1


class _BehindSource(ScriptedSource):
    """A stream that never suspends, like the simulator when it falls behind its schedule."""

    async def stream(self) -> AsyncIterator[SampleBatch]:
        while True:
            self.t += 0.1
            yield SampleBatch.build(f"{self.name}.x", ("hr",), np.array([self.t]), np.array([60.0]))


async def test_a_source_that_never_suspends_neither_starves_the_loop_nor_ignores_a_stop() -> None:
    # On Python 3.11 asyncio.wait_for swallowed a cancel whose inner step had just finished:
    # with a source that never suspends that was every cancel, and under qemu the aarch64
    # smoke's daemon (the simulator behind its schedule) never stopped
    hub = Hub(8)
    runner = _runner(_BehindSource("busy"), hub)
    task = asyncio.create_task(runner.run())
    ticks = 0
    for _ in range(5):  # the loop still turns: timers fire while the source runs flat out
        await asyncio.sleep(0.01)
        ticks += 1
    assert runner.batches > 0
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done == {task} and task.cancelled()
    assert ticks == 5
    assert runner.state == SourceState.STOPPED


class _ComesBack(ScriptedSource):
    """A device whose return the source can see (a replugged serial port)."""

    def __init__(self, name: str, *, watch_fails: bool = False) -> None:
        super().__init__(name, batches_per_session=1, max_sessions=2)
        self.back = asyncio.Event()
        self.watches = 0
        self._watch_fails = watch_fails

    async def until_back(self) -> None:
        self.watches += 1
        if self._watch_fails:
            raise OSError("udev went away")
        await self.back.wait()


async def test_a_device_seen_back_is_reconnected_without_waiting_out_the_backoff() -> None:
    hub = Hub(64)
    hub.subscribe("c")
    src = _ComesBack("bridge")
    # a backoff of at least 10 minutes: only the device's return can bring the reconnect
    runner = SourceRunner(src, hub, watchdog_s=5.0,
                          backoff=Backoff(initial_s=1200.0, max_s=1200.0,
                                          rng=random.Random(0)))
    task = asyncio.create_task(runner.run())
    try:
        async def state(want: SourceState) -> None:
            while runner.state != want:
                await asyncio.sleep(0.005)

        await asyncio.wait_for(state(SourceState.BACKOFF), 10)  # the first link was lost
        assert runner.next_attempt_t is not None
        assert runner.next_attempt_t - runner._clock() > 500  # the long wait
        assert src.connects == 1 and src.watches == 1
        src.back.set()

        async def reconnected() -> None:
            while src.connects < 2:
                await asyncio.sleep(0.005)

        await asyncio.wait_for(reconnected(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_broken_watch_falls_back_to_the_backoff() -> None:
    hub = Hub(64)
    hub.subscribe("c")
    src = _ComesBack("bridge", watch_fails=True)
    runner = SourceRunner(src, hub, watchdog_s=5.0,
                          backoff=Backoff(initial_s=0.05, max_s=0.05, rng=random.Random(0)))
    task = asyncio.create_task(runner.run())
    try:
        async def reconnected() -> None:
            while src.connects < 2:
                await asyncio.sleep(0.005)

        await asyncio.wait_for(reconnected(), 10)  # the runner survived its source's watch
        assert src.watches >= 1
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class _BackOnCancel(_ComesBack):
    """A device whose return lands in the same turn of the loop as the daemon's stop."""

    async def until_back(self) -> None:
        self.watches += 1
        await self.back.wait()
        if self._watch_fails:
            raise OSError("udev went away")


async def test_a_stop_that_lands_as_the_device_comes_back_still_stops_the_runner() -> None:
    # On 3.11 asyncio.wait_for returns its inner result (or raises its error) when a cancel
    # lands as the inner step finishes: the cancel was lost, the runner reconnected, and a
    # daemon's stop (or CI's test) hung on a connect that never returns
    for watch_fails in (False, True):
        hub = Hub(64)
        hub.subscribe("c")
        src = _BackOnCancel("bridge", watch_fails=watch_fails)
        runner = SourceRunner(src, hub, watchdog_s=5.0,
                              backoff=Backoff(initial_s=1200.0, max_s=1200.0,
                                              rng=random.Random(0)))
        task = asyncio.create_task(runner.run())

        async def watching(src: _BackOnCancel = src) -> None:
            while src.watches < 1:
                await asyncio.sleep(0.005)

        await asyncio.wait_for(watching(), 10)
        await asyncio.sleep(0.01)  # the runner waits on the watch
        src.back.set()
        task.cancel()  # the same turn: the watch finishes as the cancel arrives
        done, _ = await asyncio.wait({task}, timeout=5.0)
        assert done, f"the runner ignored its cancel (watch_fails={watch_fails})"
        assert task.cancelled()
        assert src.connects == 1


async def test_a_frozen_daemon_is_not_taken_for_a_silent_source() -> None:
    """The whole process held past the watchdog (paused: README, "A paused daemon is not a
    silent sensor") is not the source's silence: its window is renewed and the
    link kept, so what the device buffered meanwhile still arrives. The old watchdog
    reconnected here."""
    import time

    from edgetwin.daemon.runner import LOOP_HELD_S

    hub = Hub(10_000)
    src = ScriptedSource("eeg", batches_per_session=10**6, interval_s=0.02, end_with=None)
    runner = _runner(src, hub, watchdog_s=0.5)
    task = asyncio.create_task(runner.run())
    while runner.batches < 5:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.005)  # the runner waits for the next batch, inside its window
    # the loop held past the window's end by more than LOOP_HELD_S, as by a profiler that
    # pauses the process
    time.sleep(0.5 + LOOP_HELD_S + 0.3)
    before = runner.batches
    while runner.batches < before + 5:
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert runner.held_windows >= 1
    assert src.connects == 1 and runner.failures == 0, runner.last_error


async def test_a_hold_the_loop_lag_saw_renews_the_window_once_then_silence_reconnects() -> None:
    """A hold that ended before the window did (the loop-lag monitor saw it) renews that
    window; a source that then stays silent on a running loop is reconnected one window on."""
    import time

    from edgetwin.daemon.looplag import LoopLag
    from edgetwin.daemon.runner import LOOP_HELD_S

    lag = LoopLag(interval_s=0.01)
    lag_task = asyncio.create_task(lag.run())
    hub = Hub(1000)
    src = ScriptedSource("strap", batches_per_session=10, silent_after=2, end_with=None,
                         max_sessions=2)
    runner = SourceRunner(
        src, hub, watchdog_s=LOOP_HELD_S + 1.0, loop_held_s=lag.longest_within,
        backoff=Backoff(initial_s=0.001, max_s=0.01, rng=random.Random(0)),
    )
    task = asyncio.create_task(runner.run())
    while runner.batches < 2:
        await asyncio.sleep(0.01)
    time.sleep(LOOP_HELD_S + 0.2)  # held, then running again well before the window ends
    while runner.failures < 1:
        await asyncio.sleep(0.01)
    task.cancel()
    lag_task.cancel()
    await asyncio.gather(task, lag_task, return_exceptions=True)
    assert runner.held_windows == 1
    assert "sent nothing" in (runner.last_error or "")
