"""The daemon's writer: one dedicated thread that runs blocking work in submission order.

SQLite in WAL mode allows one writer at a time, and the daemon's store handle
buffers appends between commits, so every call that touches it (appends, commits,
forget, retention) and the feature pipeline and engine whose state goes with it run
here, one after another, exactly in the order the loop submitted them. The loop
only awaits the results: a slow fsync or a long forget delays the writer, never
BLE notifications or serial reads.

A job whose awaiting task is cancelled still runs to the end (its data is already
on its way to the store); only a job that has not started when :meth:`close` is
called is refused.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

# a job this long held back every append and commit behind it: said in the log, so that a
# gap in the data can be put down to it (the hub's queues hold ~100 s of the reference load)
SLOW_JOB_S = 5.0

_Job = tuple[str, Callable[[], Any], "concurrent.futures.Future[Any]"]


class WorkerClosed(RuntimeError):
    """A job was submitted to a writer that has been closed."""


class Writer:
    """A single thread with a FIFO queue of jobs."""

    def __init__(self, name: str = "edgetwin-writer",
                 after_job: Callable[[], None] | None = None) -> None:
        """``after_job`` runs on the thread after every job: a place to take a reading of
        what the jobs keep (the store's buffer) that the loop can then look at without a
        lock."""
        self.name = name
        self._after_job = after_job
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._closed = False
        self._started = False
        self.jobs = 0
        self.busy_s = 0.0
        self.longest: tuple[str, float] | None = None  # (what, seconds) of the longest job
        self._current: tuple[str, float] | None = None

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def submit(
        self, fn: Callable[..., T], *args: Any, what: str = ""
    ) -> concurrent.futures.Future[T]:
        """Queue ``fn(*args)``; its future. Jobs run one at a time, in submission order."""
        if self._closed:
            raise WorkerClosed(f"the {self.name} thread is closed; {what or fn!r} was not run")
        self.start()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((what or getattr(fn, "__name__", "job"), lambda: fn(*args), future))
        return future

    async def run(self, fn: Callable[..., T], *args: Any, what: str = "") -> T:
        """Run ``fn(*args)`` on the writer and wait for it without blocking the loop.

        Shielded: cancelling the caller does not un-queue the job (a batch handed to
        the writer is stored even if its consumer is abandoned at shutdown).
        """
        future = asyncio.wrap_future(self.submit(fn, *args, what=what))
        return await asyncio.shield(future)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Refuse new jobs; the thread ends after the jobs already queued."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)

    async def aclose(self) -> None:
        """Close and wait (off the loop) for the queued jobs to finish."""
        self.close()
        if self._started:
            await asyncio.to_thread(self._thread.join)

    def stats(self) -> dict[str, Any]:
        """For ``status``: jobs done, waiting, and how long the running one has taken."""
        current = self._current
        return {
            "jobs": self.jobs,
            "queued": self._queue.qsize(),
            "busy_s": round(self.busy_s, 3),
            "running": current[0] if current else None,
            "running_for_s": round(time.monotonic() - current[1], 3) if current else None,
            "longest": self.longest[0] if self.longest else None,
            "longest_s": round(self.longest[1], 3) if self.longest else None,
        }

    def _main(self) -> None:
        while (job := self._queue.get()) is not None:
            what, call, future = job
            if not future.set_running_or_notify_cancel():
                continue
            started = time.monotonic()
            self._current = (what, started)
            try:
                result = call()
            except BaseException as exc:  # noqa: BLE001 - the awaiting task gets it, decides
                future.set_exception(exc)
            else:
                future.set_result(result)
            finally:
                self._current = None
                took = time.monotonic() - started
                self.jobs += 1
                self.busy_s += took
                if self.longest is None or took > self.longest[1]:
                    self.longest = (what, took)
                if took >= SLOW_JOB_S:
                    _LOGGER.warning("the %s thread spent %.1f s on %s; what the sources sent "
                                    "meanwhile waited in the hub's queues", self.name, took, what)
            if self._after_job is not None:
                try:
                    self._after_job()
                except Exception:  # a reading must not stop the writer
                    _LOGGER.debug("after-job reading failed", exc_info=True)
        # closed: anything queued after the sentinel (none: submit refuses) is dropped
        _LOGGER.debug("%s thread ended after %d jobs", self.name, self.jobs)
