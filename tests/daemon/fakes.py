"""Scripted sources and an in-memory store for testing the daemon's wiring.

The real store is tested on its own and with the daemon in
tests/daemon/test_daemon_e2e.py; these keep the supervisor's unit tests
independent of disk and crypto.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetwin.errors import SourceError, TransientSourceError
from edgetwin.sources.base import Source
from edgetwin.types import FeatureFrame, Prediction, SampleBatch

_LINK_LOST = TransientSourceError("link lost")


class ScriptedSource(Source):
    """Yields ``batches_per_session`` batches per connection, then fails as told."""

    kind = "scripted"

    def __init__(
        self,
        name: str,
        *,
        connect_errors: Sequence[SourceError] = (),
        batches_per_session: int = 3,
        end_with: SourceError | None = _LINK_LOST,
        silent_after: int | None = None,
        interval_s: float = 0.0,
        rows: int = 10,
        max_sessions: int | None = None,
    ) -> None:
        super().__init__(name)
        # after this many sessions connect() hangs (a device that went away for good), so a
        # test's view of the counters cannot be outrun by thousands of instant reconnects
        self._max_sessions = max_sessions
        self._connect_errors = list(connect_errors)
        self._per_session = batches_per_session
        self._end_with = end_with
        self._silent_after = silent_after
        self._interval = interval_s
        self._rows = rows
        self.connects = 0
        self.closes = 0
        self.open = False
        self.t = 1_700_000_000.0

    async def connect(self) -> None:
        if self._connect_errors:
            raise self._connect_errors.pop(0)
        if self._max_sessions is not None and self.connects >= self._max_sessions:
            await asyncio.sleep(3600)
        self.connects += 1
        self.open = True

    async def stream(self) -> AsyncIterator[SampleBatch]:
        for i in range(self._per_session):
            if self._silent_after is not None and i >= self._silent_after:
                await asyncio.sleep(3600)
            await asyncio.sleep(self._interval)
            t = self.t + np.arange(self._rows) * 0.01
            self.t = float(t[-1]) + 0.01
            yield SampleBatch.build(f"{self.name}.x", ("hr",), t, np.full(self._rows, 60.0))
        if self._end_with is not None:
            raise self._end_with

    async def close(self) -> None:
        self.closes += 1
        self.open = False


async def started(daemon: Any, home: Path) -> asyncio.Task[None]:
    """``daemon.run()`` as a task, once its control socket answers (sources started)."""
    from edgetwin.daemon import control

    run = asyncio.create_task(daemon.run())
    while not control.socket_path(home).exists():
        await asyncio.sleep(0.01)
    return run


@dataclass
class Info:
    name: str
    samples: int
    first_t: float
    last_t: float


class MemoryStore:
    """Keeps what the daemon appends; ``committed`` counts only what commit() sealed."""

    def __init__(self) -> None:
        self.pending: list[SampleBatch] = []
        self.committed: list[SampleBatch] = []
        self.frames: list[FeatureFrame] = []
        self.preds: list[Prediction] = []
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        self.commits = 0

    def append_samples(self, batch: SampleBatch) -> None:
        self.pending.append(batch)

    def append_frames(self, frames: Sequence[FeatureFrame]) -> None:
        self.frames.extend(frames)

    def append_predictions(self, preds: Sequence[Prediction]) -> None:
        self.preds.extend(preds)

    def commit(self) -> None:
        self.committed.extend(self.pending)
        self.pending.clear()
        self.commits += 1

    def pending_rows(self) -> int:
        return sum(len(b) for b in self.pending)

    def pending_sample_bytes(self) -> int:
        return sum(b.t.nbytes + b.values.nbytes for b in self.pending)

    def shed_oldest_samples(self, keep_bytes: int) -> dict[str, int]:
        shed: dict[str, int] = {}
        while self.pending and sum(b.t.nbytes + b.values.nbytes for b in self.pending) > keep_bytes:
            oldest = self.pending.pop(0)
            shed[oldest.stream] = shed.get(oldest.stream, 0) + len(oldest)
        return shed

    def streams(self) -> list[Info]:
        out: dict[str, Info] = {}
        for b in self.committed:
            info = out.setdefault(b.stream, Info(b.stream, 0, b.first_t, b.last_t))
            info.samples += len(b)
            info.last_t = b.last_t
        return list(out.values())

    def put_record(self, kind: str, key: str, value: dict[str, Any]) -> None:
        self.records[(kind, key)] = value

    def read_predictions(
        self, last: int | None = None, t0: float | None = None
    ) -> list[Prediction]:
        return self.preds[-last:] if last else list(self.preds)
