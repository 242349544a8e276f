"""The hub between sources and consumers, with bounded queues.

Backpressure policy: sources are never blocked (a blocked BLE or BrainFlow
reader would overflow the device's own buffer, losing data silently).
Instead each consumer has its own bounded queue of batches; when a consumer
falls behind and its queue is full, the **oldest** batch in that queue is
dropped, counted per consumer and per stream, and shown in ``status``. The
newest data wins because the twin is a live view: a forecast from fresh data
beats a complete but stale one.

A queue is bounded twice: by batches, and by the bytes its batches hold. The
bytes are what a small machine cares about, and they let the queue ride out a
long stall of its consumer (a slow fsync, a busy host): sources deliver tens of
small batches a second, so a bound in batches alone would be seconds of data.
Memory is bounded by ``consumers x queue_bytes``.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from dataclasses import dataclass, field

from edgetwin.types import SampleBatch

# what a batch costs beyond its arrays: the object, two array headers, its tuples
BATCH_OVERHEAD_BYTES = 512


def batch_bytes(batch: SampleBatch) -> int:
    """The memory a queued batch holds, for the queue's byte bound."""
    return int(batch.t.nbytes + batch.values.nbytes) + BATCH_OVERHEAD_BYTES


@dataclass
class ConsumerQueue:
    """A FIFO of batches for one consumer, bounded in batches and in bytes."""

    name: str
    maxlen: int
    max_bytes: int | None = None
    queued_bytes: int = 0
    dropped_batches: int = 0
    dropped_samples: int = 0
    dropped_by_stream: dict[str, int] = field(default_factory=dict)
    # each batch with its size (batch_bytes), taken once when the hub published it
    _items: collections.deque[tuple[SampleBatch, int]] = field(default_factory=collections.deque)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _closed: bool = False

    def put(self, batch: SampleBatch, size: int) -> None:
        """Queue ``batch`` of ``size`` bytes (:func:`batch_bytes`), dropping the oldest past
        either bound."""
        self._items.append((batch, size))
        self.queued_bytes += size
        # the newest batch always stays, even alone over the byte bound
        while len(self._items) > 1 and (
            len(self._items) > self.maxlen
            or (self.max_bytes is not None and self.queued_bytes > self.max_bytes)
        ):
            old = self._pop()
            self.dropped_batches += 1
            self.dropped_samples += len(old)
            self.dropped_by_stream[old.stream] = self.dropped_by_stream.get(old.stream, 0) + len(
                old
            )
        self._ready.set()

    async def get(self) -> SampleBatch | None:
        """The next batch, or None once the hub is closed and the queue drained."""
        while not self._items:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._pop()

    def drain(self, max_bytes: int | None = None) -> Iterator[SampleBatch]:
        """What is queued, without waiting: everything, or the oldest batches while they sum
        to at most ``max_bytes`` (:func:`batch_bytes`; at least one)."""
        taken = 0
        while self._items:
            if max_bytes is not None and taken and taken + self._items[0][1] > max_bytes:
                return
            taken += self._items[0][1]
            yield self._pop()

    def _pop(self) -> SampleBatch:
        batch, size = self._items.popleft()
        self.queued_bytes -= size
        return batch

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    def __len__(self) -> int:
        return len(self._items)


class Hub:
    """Fan-out of every published batch to every consumer queue."""

    def __init__(self, queue_batches: int, queue_bytes: int | None = None) -> None:
        self._queue_batches = queue_batches
        self._queue_bytes = queue_bytes
        self._queues: dict[str, ConsumerQueue] = {}
        self._outlets: set[str] = set()  # consumers whose drops lose no twin data
        self.published_batches = 0
        self.published_samples = 0
        self.published_bytes = 0  # what the byte bound counts: the load's rate, in status
        self.closed = False

    def subscribe(self, name: str, *, outlet: bool = False) -> ConsumerQueue:
        """A bounded queue of every batch published from now on.

        ``outlet``: the consumer only passes data on (LSL, a web page); what it drops is
        counted in :meth:`stats` but is not a loss of the twin's data, so a slow LSL
        inlet never shows as sensor drops in ``status``.
        """
        queue = ConsumerQueue(name, self._queue_batches, self._queue_bytes)
        self._queues[name] = queue
        if outlet:
            self._outlets.add(name)
        return queue

    def publish(self, batch: SampleBatch) -> None:
        """Hand a batch to every consumer; never blocks, never raises on a full queue."""
        self.published_batches += 1
        self.published_samples += len(batch)
        size = batch_bytes(batch)
        self.published_bytes += size
        for queue in self._queues.values():
            queue.put(batch, size)

    def close(self) -> None:
        self.closed = True
        for queue in self._queues.values():
            queue.close()

    def drops_by_stream(self) -> dict[str, int]:
        """Samples the twin lost per stream: dropped by the store or features consumers."""
        out: dict[str, int] = {}
        for queue in self._queues.values():
            if queue.name in self._outlets:
                continue
            for stream, n in queue.dropped_by_stream.items():
                out[stream] = out.get(stream, 0) + n
        return out

    def drops_by_source(self, source: str) -> int:
        """Samples dropped from a source's streams (named ``<source>.<stream>``)."""
        prefix = source + "."
        return sum(
            n for stream, n in self.drops_by_stream().items()
            if stream == source or stream.startswith(prefix)
        )

    def stats(self) -> dict[str, object]:
        return {
            "published_batches": self.published_batches,
            "published_samples": self.published_samples,
            "published_bytes": self.published_bytes,
            "consumers": {
                q.name: {
                    "queued": len(q),
                    "capacity": q.maxlen,
                    "queued_bytes": q.queued_bytes,
                    "capacity_bytes": q.max_bytes,
                    "dropped_batches": q.dropped_batches,
                    "dropped_samples": q.dropped_samples,
                }
                for q in self._queues.values()
            },
        }
