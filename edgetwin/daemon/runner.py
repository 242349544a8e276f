"""Runs one source forever: connect, stream into the hub, reconnect with backoff.

Each source gets its own runner task, so one failing source never stops the
others. A source that stays silent for ``watchdog_s`` is treated as a dropped
link (BrainFlow boards and BLE links are known to go quiet without an error).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from edgetwin.daemon.backoff import Backoff, SourceState, describe_error, is_permanent
from edgetwin.daemon.hub import Hub
from edgetwin.errors import TransientSourceError
from edgetwin.sources.base import Source
from edgetwin.types import EARLIEST_T, LATEST_T, SampleBatch

_LOGGER = logging.getLogger(__name__)

# A stream that stayed healthy this long resets the backoff to its initial delay.
_HEALTHY_AFTER_S = 30.0
# A watchdog window whose end fell inside a hold of the loop at least this long, or in which
# the loop-lag monitor saw one (the whole process paused: SIGSTOP, a cgroup freeze, a debugger
# or profiler; README, "A paused daemon is not a silent sensor"), says nothing about the
# source: it gets a new window instead of a reconnect, which would throw away what its
# device, BrainFlow's ring buffer or the kernel buffered meanwhile. Ten times the loop's
# worst lag in the soaks.
LOOP_HELD_S = 0.5
# The check runs just before the window's end, so that after a freeze it runs before the
# expired window cancels the read (asyncio runs expired timers in order of their time).
_CHECK_LEAD_S = 0.001


class SourceRunner:
    """The supervisor's handle on one source and its reconnect state."""

    def __init__(
        self,
        source: Source,
        hub: Hub,
        *,
        watchdog_s: float,
        backoff: Backoff,
        clock: Any = time.time,
        loop_held_s: Callable[[float], float] | None = None,
    ) -> None:
        """``loop_held_s(seconds)``: the longest the loop was held in the last ``seconds``
        (:meth:`LoopLag.longest_within`), so a frozen daemon is not taken for a silent source."""
        self.source = source
        self.hub = hub
        self.watchdog_s = watchdog_s
        self.backoff = backoff
        self._clock = clock
        self._loop_held_s = loop_held_s
        self.held_windows = 0  # watchdog windows renewed because the loop itself was held
        self.state = SourceState.IDLE
        self.samples = 0
        self.batches = 0
        self.connects = 0
        self.failures = 0
        self.last_sample_t: float | None = None
        self.last_error: str | None = None
        self.refused_batches = 0  # batches with times the twin cannot hold, never published
        self.next_attempt_t: float | None = None
        self._rate_window: list[tuple[float, int]] = []

    async def run(self) -> None:
        """Loop until cancelled or until the source ends its stream on purpose."""
        try:
            while True:
                error = await self._one_session()
                if error is None:
                    self.state = SourceState.STOPPED
                    _LOGGER.info("source %s finished its stream", self.source.name)
                    return
                self.failures += 1
                self.last_error = describe_error(error)
                if is_permanent(error):
                    self.state = SourceState.FAILED
                    _LOGGER.error("source %s cannot run: %s", self.source.name, self.last_error)
                    return
                delay = self.backoff.next_delay(error)
                # First failure is news; repeats of a flapping device are noise.
                log = _LOGGER.warning if self.failures == 1 else _LOGGER.debug
                log("source %s: %s; retrying in %.1f s", self.source.name, self.last_error, delay)
                self.state = SourceState.BACKOFF
                self.next_attempt_t = self._clock() + delay
                await self._wait_to_retry(delay)
        finally:
            if self.state not in (SourceState.FAILED, SourceState.STOPPED):
                self.state = SourceState.STOPPED

    def _renew_if_held(self, window: asyncio.Timeout, seconds: float) -> _WindowCheck:
        """Just before ``window`` ends: a new window if the loop was held ``LOOP_HELD_S`` or
        more at its end (this check runs that late) or within it (the loop-lag monitor saw
        it)."""
        loop = asyncio.get_running_loop()
        check = _WindowCheck()
        due = 0.0  # when the check runs

        def renew() -> None:
            held = loop.time() - due
            if self._loop_held_s is not None:
                held = max(held, self._loop_held_s(seconds))
            if held < LOOP_HELD_S:
                return  # the source was silent on a running loop: the window ends
            self.held_windows += 1
            _LOGGER.info("source %s: the daemon itself was held for %.1f s; not counted as "
                         "the source's silence", self.source.name, held)
            window.reschedule(loop.time() + seconds)
            arm()

        def arm() -> None:
            nonlocal due
            when = window.when()
            assert when is not None
            due = when - _CHECK_LEAD_S
            check.handle = loop.call_at(due, renew)

        arm()
        return check

    async def _wait_to_retry(self, delay: float) -> None:
        """The backoff's delay, cut short when the source sees its device back (a replug:
        without this a 10 s unplug could cost 20 s of data, the backoff having grown)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + delay  # monotonic: a step of the host's clock changes nothing
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancel that lands as the
            # watch finishes, and the runner reconnected instead of stopping
            async with asyncio.timeout(delay):
                await self.source.until_back()
        except TimeoutError:
            return
        except Exception:  # a broken watch must not end the runner
            _LOGGER.debug("source %s: watching for its device failed", self.source.name,
                          exc_info=True)
            await asyncio.sleep(max(0.0, until - loop.time()))  # the backoff, as ever
            return
        _LOGGER.info("source %s: the device is back; reconnecting now", self.source.name)

    def status(self) -> dict[str, Any]:
        """The DESIGN.md ``status`` entry for this source."""
        counters = self.source.counters
        return {
            "name": self.source.name,
            "kind": self.source.kind,
            "state": str(self.state),
            "samples": self.samples,
            "batches": self.batches,
            "drops": counters.drops + self.hub.drops_by_source(self.source.name),
            "bad_packets": counters.bad_packets,
            "refused_batches": self.refused_batches,
            "held_windows": self.held_windows,
            "gaps": counters.gaps,
            "last_sample_t": self.last_sample_t,
            "rate_hz": self.rate_hz(),
            "connects": self.connects,
            "failures": self.failures,
            "last_error": self.last_error,
            "next_attempt_t": self.next_attempt_t if self.state == SourceState.BACKOFF else None,
            **self.source.describe(),
        }

    def rate_hz(self) -> float:
        """Samples per second over the last ~10 s."""
        if len(self._rate_window) < 2:
            return 0.0
        (t0, _), (t1, _) = self._rate_window[0], self._rate_window[-1]
        n = sum(count for _, count in self._rate_window[1:])
        return n / (t1 - t0) if t1 > t0 else 0.0

    # -- private -------------------------------------------------------------

    async def _one_session(self) -> BaseException | None:
        """Connect and stream once; the error that ended it, or None on a clean end."""
        self.state = SourceState.CONNECTING
        try:
            await self.source.connect()
        except Exception as exc:  # noqa: BLE001 - any failure of one source is contained
            await self._close_quietly()
            return exc
        self.connects += 1
        self.state = SourceState.STREAMING
        self.next_attempt_t = None
        started = self._clock()
        watchdog_s = max(self.watchdog_s, self.source.silence_tolerance_s or 0.0)
        iterator = self.source.stream().__aiter__()
        try:
            while True:
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that
                    # lands as its inner step finishes, which for a source that is behind and
                    # never suspends (the simulator under emulation) is every time, so the
                    # daemon could not stop (the aarch64 smoke's hang); it also saves a task
                    # per batch
                    async with asyncio.timeout(watchdog_s) as window:
                        check = self._renew_if_held(window, watchdog_s)
                        try:
                            batch = await anext(iterator)
                        finally:
                            check.cancel()
                except StopAsyncIteration:
                    return None
                except TimeoutError:
                    return TransientSourceError(
                        f"source {self.source.name} sent nothing for {watchdog_s:g} s",
                        hint="reconnecting",
                    )
                if _times_out_of_range(batch):
                    # a broken clock or a hostile packet: 1e300 s would poison the feature
                    # bins and the store; refuse the batch, keep the link
                    self.refused_batches += 1
                    self.last_error = (f"refused a batch of {batch.stream} with a time outside "
                                       "the years -1200..5138 (±1e11 s): the device's clock "
                                       "or data is broken")
                    if self.refused_batches == 1:
                        _LOGGER.warning("source %s: %s", self.source.name, self.last_error)
                    continue
                self._count(batch)
                self.hub.publish(batch)
                # one turn of the loop per batch: a source that never suspends (behind its
                # schedule) must not starve the other sources, the writer's results or a stop
                await asyncio.sleep(0)
                if self.backoff.attempt and self._clock() - started > _HEALTHY_AFTER_S:
                    self.backoff.reset()
                    self.failures = 0
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - contained; logged by run()
            return exc
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:  # a broken generator must not block close
                    _LOGGER.debug("closing stream of %s failed", self.source.name, exc_info=True)
            await self._close_quietly()

    def _count(self, batch: Any) -> None:
        n = len(batch)
        self.samples += n
        self.batches += 1
        if n:
            self.last_sample_t = batch.last_t
        now = self._clock()
        self._rate_window.append((now, n))
        while self._rate_window and now - self._rate_window[0][0] > 10.0:
            self._rate_window.pop(0)

    async def _close_quietly(self) -> None:
        try:
            await self.source.close()
        except Exception:  # best effort; the next connect starts clean
            _LOGGER.debug("closing %s failed", self.source.name, exc_info=True)


def _times_out_of_range(batch: SampleBatch) -> bool:
    t = batch.t
    return bool(len(t)) and not bool(((t >= EARLIEST_T) & (t <= LATEST_T)).all())


class _WindowCheck:
    """The pending check of a watchdog window (re-armed when the window is renewed)."""

    __slots__ = ("handle",)

    def __init__(self) -> None:
        self.handle: asyncio.TimerHandle | None = None

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
