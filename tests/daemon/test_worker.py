"""The writer thread: jobs in order, off the loop, never dropped by a cancelled caller."""

from __future__ import annotations

import asyncio
import threading

import pytest

from edgetwin.daemon.worker import WorkerClosed, Writer


async def test_jobs_run_one_at_a_time_in_submission_order_off_the_loop() -> None:
    writer = Writer()
    seen: list[tuple[int, str]] = []
    try:
        results = await asyncio.gather(
            *(writer.run(lambda i=i: seen.append((i, threading.current_thread().name)) or i)
              for i in range(50))
        )
    finally:
        await writer.aclose()
    assert results == list(range(50))
    assert [i for i, _ in seen] == list(range(50))
    assert {name for _, name in seen} == {"edgetwin-writer"}  # never the loop's thread
    assert writer.stats()["jobs"] == 50


async def test_a_cancelled_caller_does_not_drop_its_job() -> None:
    """A consumer abandoned at shutdown: the batch it handed over is still appended."""
    writer = Writer()
    gate = threading.Event()
    stored: list[str] = []
    blocker = asyncio.ensure_future(writer.run(gate.wait, 10.0))
    caller = asyncio.ensure_future(writer.run(stored.append, "batch"))
    await asyncio.sleep(0.05)
    caller.cancel()
    gate.set()
    await blocker
    await writer.aclose()  # waits for every job queued before the close
    assert caller.cancelled()
    assert stored == ["batch"]


async def test_an_error_reaches_the_caller_and_the_writer_goes_on() -> None:
    writer = Writer()

    def fail() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        await writer.run(fail)
    assert await writer.run(lambda: 7) == 7
    await writer.aclose()
    with pytest.raises(WorkerClosed, match="closed"):
        await writer.run(lambda: 8)


async def test_after_job_reads_on_the_writer_after_each_job_and_never_stops_it() -> None:
    """The daemon counts the store's buffer there, for a status that must not take the
    store's lock on the loop; a failing reading is not the job's failure."""
    buffer: list[int] = []
    readings: list[tuple[int, str]] = []

    def read() -> None:
        readings.append((len(buffer), threading.current_thread().name))
        if len(buffer) == 2:
            raise RuntimeError("a reading that fails")

    writer = Writer(after_job=read)
    try:
        for i in range(4):
            await writer.run(buffer.append, i)
    finally:
        await writer.aclose()
    assert readings == [(n, "edgetwin-writer") for n in (1, 2, 3, 4)]
    assert buffer == [0, 1, 2, 3]
