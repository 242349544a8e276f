"""Reconnect policy: capped exponential backoff with full jitter.

A named-state machine keeps the supervisor's view of each source legible in
``status``: ``idle -> connecting -> streaming -> backoff -> connecting ...``,
with ``failed`` for errors no retry can fix (a missing native driver) and
``stopped`` after shutdown.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

from edgetwin.errors import DriverMissing, PairingRefused, SourceError

# 2**64 exceeds any max_s / initial_s ratio a config can hold; past it the cap is max_s.
_MAX_EXPONENT = 64


class SourceState(enum.StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    STREAMING = "streaming"
    BACKOFF = "backoff"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass
class Backoff:
    """Delay before the next attempt; ``reset`` after a healthy stream."""

    initial_s: float = 1.0
    max_s: float = 60.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self, error: BaseException | None = None) -> float:
        """The wait before the next attempt, given the error that ended the last one."""
        if isinstance(error, PairingRefused):
            # A refused pairing or a bad key will not fix itself soon: wait the longest.
            self.attempt += 1
            return self.max_s
        # The exponent stops at 64: a device that flapped 1,024 times in a row reached
        # factor**1024, a float OverflowError that killed its runner for good.
        cap = min(self.max_s, self.initial_s * self.factor ** min(self.attempt, _MAX_EXPONENT))
        self.attempt += 1
        # Full jitter (AWS architecture blog): uniform over [0, cap), which spreads the
        # reconnect storm after a shared outage best; the growing cap keeps the mean rising.
        return cap * self.rng.random()

    def reset(self) -> None:
        self.attempt = 0


def is_permanent(error: BaseException) -> bool:
    """Errors that no reconnect can fix; the source goes to ``failed``."""
    return isinstance(error, DriverMissing)


def describe_error(error: BaseException) -> str:
    """One line for logs and ``status``; never includes secrets."""
    if isinstance(error, SourceError):
        return str(error)
    return f"{type(error).__name__}: {error}"
