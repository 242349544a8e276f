"""How late the event loop wakes up: the daemon's measure of "the loop only waits".

A task sleeps ``interval_s`` again and again and records how much later than
scheduled it woke. Anything that holds the loop (a commit's fsync, a forget, DSP
run inline) shows up as lag, and so does every sensor read it delayed. ``status``
reports p50/p99/max over the last ``window_s`` seconds, in milliseconds.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable

INTERVAL_S = 0.05
WINDOW_S = 60.0


class LoopLag:
    """Wake-up lag samples of the running loop over a sliding window."""

    def __init__(
        self,
        interval_s: float = INTERVAL_S,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.window_s = window_s
        self._clock = clock
        self._samples: collections.deque[tuple[float, float]] = collections.deque()

    async def run(self) -> None:
        """Measure until cancelled."""
        while True:
            due = self._clock() + self.interval_s
            await asyncio.sleep(self.interval_s)
            now = self._clock()
            self.record(now, max(0.0, now - due))

    def record(self, now: float, lag_s: float) -> None:
        self._samples.append((now, lag_s))
        while self._samples and now - self._samples[0][0] > self.window_s:
            self._samples.popleft()

    def longest_within(self, seconds: float) -> float:
        """The longest lag (s) recorded in the last ``seconds``: how long the loop was held."""
        since = self._clock() - seconds
        return max((lag for t, lag in self._samples if t >= since), default=0.0)

    def snapshot(self) -> dict[str, float | int | None]:
        """``{"p50", "p99", "max"}`` in ms over the window (None before the first sample)."""
        lags = sorted(lag for _, lag in self._samples)
        if not lags:
            return {"p50": None, "p99": None, "max": None, "samples": 0}
        return {
            "p50": _ms(_rank(lags, 0.50)),
            "p99": _ms(_rank(lags, 0.99)),
            "max": _ms(lags[-1]),
            "samples": len(lags),
        }


def _rank(ordered: list[float], q: float) -> float:
    """The nearest-rank quantile of an ascending list."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)
