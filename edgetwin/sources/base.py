"""The contract every source fulfils, and what the supervisor knows of it.

A source is a small object with three coroutines: ``connect`` (open the link;
on failure leave no state behind and raise a ``SourceError``), ``stream``
(an async iterator of ``SampleBatch`` until the link ends: it raises
``TransientSourceError`` when the link drops), and ``close`` (idempotent).
Blocking libraries run in a worker thread and feed a bounded queue.

Sources never import the store, the features or the daemon. They report
counters through ``SourceCounters`` so ``status`` can show them.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from edgetwin.types import SampleBatch


@dataclass
class SourceCounters:
    """Live counters of one source; mutated only by that source."""

    samples: int = 0
    batches: int = 0
    drops: int = 0  # samples or packets the source itself discarded
    bad_packets: int = 0  # malformed frames, notifications or rows
    gaps: int = 0  # detected holes in the device's sequence
    last_sample_t: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def count(self, batch: SampleBatch) -> None:
        self.samples += len(batch)
        self.batches += 1
        if len(batch):
            self.last_sample_t = batch.last_t


class Source(abc.ABC):
    """A sensor connection that yields ``SampleBatch`` objects."""

    kind: str = "source"
    # Longest silence that is normal for this device (a thermometer may speak once a minute);
    # the daemon's watchdog waits at least this long before calling the link dead.
    silence_tolerance_s: float | None = None

    def __init__(self, name: str) -> None:
        self.name = name
        self.counters = SourceCounters()

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the link; raise a ``SourceError`` and leave nothing open on failure."""

    @abc.abstractmethod
    def stream(self) -> AsyncIterator[SampleBatch]:
        """Yield batches until the link ends; raise ``TransientSourceError`` if it drops."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the link; safe to call twice and after a failed connect."""

    def describe(self) -> dict[str, Any]:
        """Non-secret facts for ``status`` (never addresses or keys)."""
        return {}

    async def until_back(self) -> None:
        """Return once a device that went away is seen back (a cable plugged in again), so
        the reconnect need not wait out its backoff. The daemon races this against the
        backoff's delay and cancels it when the delay ends first. Sources that cannot tell
        never return: the backoff alone decides."""
        await asyncio.Event().wait()
