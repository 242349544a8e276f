"""The twin's clock: wall-clock time that never steps backward.

Sources stamp what they receive with the host's time. The host's wall clock can
step: NTP setting a Raspberry Pi (no real-time clock) after boot, a person
changing the time, a VM resumed. A step forward only leaves a gap. A step back
made new samples older than stored ones: BrainFlow's source dropped them as
out of order and the serial bridges pinned them to the last time, so the soak's
30 s clock step lost 16-36 s of every stream.

This clock follows the wall clock forward at once. After a step back it keeps
counting on the monotonic clock, slowed by ``slew`` (1 %), until the wall clock
has caught up, the way NTP slews small corrections: times stay increasing,
nothing overlaps, and a 30 s step is absorbed in 50 minutes with sample spacing
off by 1 % meanwhile. On a restart the daemon raises the floor to the newest
stored sample, so a step back followed by a crash does not overlap either.

Timestamps made elsewhere from the wall clock (BrainFlow's native library,
LSL's mapping) are carried onto this clock with :meth:`TwinClock.from_wall`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import numpy as np

# Differences below this are the two clocks read a moment apart, not a step.
_STEP_S = 1.0

A = TypeVar("A", float, "np.ndarray[Any, Any]")


class TwinClock:
    """Wall time, never backward; thread-safe (sources stamp from their reader threads)."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        slew: float = 0.01,
    ) -> None:
        if not 0.0 < slew < 1.0:
            raise ValueError(f"slew is {slew}; use a fraction between 0 and 1")
        self._wall = wall
        self._monotonic = monotonic
        self.slew = slew
        self._lock = threading.Lock()
        self._t = -math.inf  # the last time handed out
        self._mono = monotonic()
        self._last_wall = -math.inf
        self._offset = 0.0  # _t - wall at the last reading: 0.0 unless a step is being absorbed
        self.steps_back = 0
        self.steps_forward = 0
        self.largest_step_back_s = 0.0
        self.jumped_s = 0.0

    def now(self) -> float:
        """Seconds since the epoch: the wall clock, except while absorbing a step back."""
        with self._lock:
            wall, mono = self._wall(), self._monotonic()
            elapsed = max(0.0, mono - self._mono)
            step = (wall - self._last_wall) - elapsed  # what the wall clock did beyond time
            if math.isfinite(step) and step > _STEP_S:
                self.steps_forward += 1
            elif math.isfinite(step) and step < -_STEP_S:
                self.steps_back += 1
                self.largest_step_back_s = max(self.largest_step_back_s, -step)
            self._mono, self._last_wall = mono, wall
            counted = self._t + elapsed
            ahead = counted - wall
            if ahead <= elapsed * self.slew:
                # in step, stepped forward, or the gap closes within this reading's slew
                if math.isfinite(counted) and -ahead > _STEP_S:
                    self.jumped_s += -ahead
                self._t = wall
            else:
                self._t = counted - elapsed * self.slew
            self._offset = self._t - wall
            return self._t

    def offset(self) -> float:
        """How far this clock is ahead of the wall clock (0.0 unless absorbing a step back)."""
        self.now()
        return self._offset

    def from_wall(self, t: A) -> A:
        """Timestamps taken from the wall clock just now, carried onto this clock."""
        offset = self.offset()
        return t if offset == 0.0 else t + offset

    def jumped_forward_s(self) -> float:
        """The sum of this clock's own forward jumps (steps of the wall clock it followed), read
        now: whoever fits host against device time shifts its fit by the change."""
        self.now()
        return self.jumped_s

    def hold_at_least(self, t: float) -> None:
        """Never hand out a time before ``t`` (the newest stored sample, after a restart)."""
        with self._lock:
            if not math.isfinite(t) or t <= self._t:
                return
            wall = self._wall()
            if t > wall:  # ahead of the wall clock: count on from t, slewed as after a step
                self._t, self._mono, self._offset = t, self._monotonic(), t - wall

    def stats(self) -> dict[str, Any]:
        """For ``status``: how far ahead of the wall clock, and the steps seen."""
        return {
            "offset_s": round(self.offset(), 3),
            "steps_back": self.steps_back,
            "steps_forward": self.steps_forward,
            "largest_step_back_s": round(self.largest_step_back_s, 3),
            "slew": self.slew,
        }


CLOCK = TwinClock()


def now() -> float:
    """The process's :class:`TwinClock` time: what sources stamp samples with."""
    return CLOCK.now()


def bracketed_offset(outer: Callable[[], float], inner: Callable[[], float], *,
                     tries: int = 3, tight_s: float = 50e-6) -> float:
    """``outer() - inner()`` of two clocks, ``inner`` read between two reads of ``outer``
    and the tightest of a few such brackets kept: read as a plain pair, a thread preempted
    between the two reads (a loaded machine) carries the whole delay into the offset."""
    best_width, best = math.inf, 0.0
    for _ in range(tries):
        a = outer()
        mid = inner()
        b = outer()
        if b - a < best_width:
            best_width, best = b - a, (a + b) / 2 - mid
        if best_width <= tight_s:
            break
    return best
