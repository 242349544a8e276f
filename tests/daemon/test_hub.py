from __future__ import annotations

import asyncio

import numpy as np

from edgetwin.daemon.hub import Hub
from edgetwin.types import SampleBatch


def _batch(stream: str, n: int, t0: float = 0.0) -> SampleBatch:
    return SampleBatch.build(stream, ("hr",), t0 + np.arange(n), np.zeros(n))


async def test_every_consumer_gets_every_batch() -> None:
    hub = Hub(queue_batches=8)
    a, b = hub.subscribe("a"), hub.subscribe("b")
    hub.publish(_batch("s.x", 3))
    got_a, got_b = await a.get(), await b.get()
    assert got_a is got_b
    assert len(got_a) == 3  # type: ignore[arg-type]


async def test_full_queue_drops_oldest_and_counts_it() -> None:
    hub = Hub(queue_batches=2)
    q = hub.subscribe("slow")
    for i in range(5):
        hub.publish(_batch("dev.eeg", 10, t0=i * 10))
    assert q.dropped_batches == 3
    assert q.dropped_samples == 30
    assert hub.drops_by_stream() == {"dev.eeg": 30}
    assert hub.drops_by_source("dev") == 30
    assert hub.drops_by_source("de") == 0
    first = await q.get()
    assert first is not None and first.first_t == 30.0  # the newest two survive


async def test_close_wakes_a_waiting_consumer_after_draining() -> None:
    hub = Hub(queue_batches=4)
    q = hub.subscribe("c")
    waiter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    hub.publish(_batch("s.x", 1))
    assert await waiter is not None
    hub.publish(_batch("s.x", 1))
    hub.close()
    assert await q.get() is not None
    assert await q.get() is None


def test_memory_is_bounded_under_a_flood() -> None:
    hub = Hub(queue_batches=16)
    q = hub.subscribe("c")
    for i in range(10_000):
        hub.publish(_batch("s.x", 1, t0=i))
    assert len(q) == 16
    assert hub.published_samples == 10_000
    assert q.dropped_samples == 10_000 - 16


def test_an_outlets_drops_are_not_the_twins_losses() -> None:
    hub = Hub(queue_batches=2)
    store = hub.subscribe("store")
    lsl = hub.subscribe("lsl", outlet=True)
    for i in range(5):
        hub.publish(_batch("dev.eeg", 10, t0=i * 10))
        list(store.drain())  # the store keeps up; the outlet does not
    assert lsl.dropped_samples == 30
    assert hub.stats()["consumers"]["lsl"]["dropped_samples"] == 30  # counted, shown
    assert hub.drops_by_source("dev") == 0  # but no sample of the twin was lost


def test_a_queue_is_bounded_by_the_bytes_it_holds() -> None:
    from edgetwin.daemon.hub import batch_bytes

    one = batch_bytes(_batch("dev.eeg", 10))
    hub = Hub(queue_batches=1000, queue_bytes=3 * one)
    q = hub.subscribe("store")
    for i in range(5):
        hub.publish(_batch("dev.eeg", 10, t0=i * 10))
    assert len(q) == 3 and q.queued_bytes == 3 * one
    assert hub.published_bytes == 5 * one
    assert q.dropped_samples == 20  # the oldest two
    stats = hub.stats()["consumers"]["store"]
    assert stats["queued_bytes"] == 3 * one and stats["capacity_bytes"] == 3 * one
    assert [b.first_t for b in q.drain()] == [20.0, 30.0, 40.0]
    assert q.queued_bytes == 0


def test_a_batch_larger_than_the_byte_bound_is_still_delivered() -> None:
    hub = Hub(queue_batches=10, queue_bytes=1)
    q = hub.subscribe("store")
    hub.publish(_batch("dev.eeg", 10))
    hub.publish(_batch("dev.eeg", 10, t0=10))
    assert len(q) == 1 and q.dropped_samples == 10  # the newest stays, alone


def test_a_drain_can_take_the_oldest_batches_up_to_a_bound() -> None:
    from edgetwin.daemon.hub import batch_bytes

    one = batch_bytes(_batch("dev.eeg", 10))
    hub = Hub(queue_batches=1000)
    q = hub.subscribe("store")
    for i in range(7):
        hub.publish(_batch("dev.eeg", 10, t0=i * 10))
    assert [b.first_t for b in q.drain(3 * one)] == [0.0, 10.0, 20.0]
    assert len(q) == 4 and q.queued_bytes == 4 * one
    assert [b.first_t for b in q.drain(one // 2)] == [30.0]  # at least one, even over the bound
    assert [b.first_t for b in q.drain()] == [40.0, 50.0, 60.0] and q.queued_bytes == 0
