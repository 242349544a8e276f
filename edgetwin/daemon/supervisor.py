"""The daemon's core: sources -> hub -> (store, features -> inference -> store).

Every background job is a named task kept in ``self._tasks``; ``stop()``
cancels the sources first, lets the consumers drain what is in flight,
flushes the feature pipeline, commits the store and only then returns.

The event loop only waits. Everything that blocks (store appends, commits and
their fsync, forget, retention, feature DSP, inference) runs on one writer thread
(:mod:`edgetwin.daemon.worker`) in the order the loop hands it over; jobs that wait
on a network run in threads of their own. The loop keeps sources, the hub, the
control socket and the bookkeeping, and measures its own wake-up lag
(:mod:`edgetwin.daemon.looplag`), shown in ``status``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import resource
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import edgetwin.clock as twin_clock
from edgetwin.config import Config
from edgetwin.daemon import procstats
from edgetwin.daemon.backoff import Backoff
from edgetwin.daemon.control import ControlServer
from edgetwin.daemon.hub import ConsumerQueue, Hub
from edgetwin.daemon.lock import DaemonLock
from edgetwin.daemon.looplag import LoopLag
from edgetwin.daemon.runner import SourceRunner
from edgetwin.daemon.worker import Writer
from edgetwin.errors import StoreFull
from edgetwin.sources.base import Source
from edgetwin.store.tails import TailCounts
from edgetwin.types import FeatureFrame, Marker, Prediction, SampleBatch, channel_markers

_LOGGER = logging.getLogger(__name__)

# Record under which the inference engine's running baseline survives restarts.
ENGINE_STATE_RECORD = ("inference", "state")
# How long shutdown waits for sources (closing a device) and consumers (draining) to finish.
_SHUTDOWN_WAIT_S = 10.0
# How long ``status`` waits for the store's part (a forget holds the store); then the last one.
_STATUS_STORE_WAIT_S = 2.0
# How long a consumer lets batches gather before one writer trip takes them all: adds at most
# this to a forecast's delay and to what a SIGKILL loses (well inside flush_interval_s).
GATHER_S = 0.1
# A writer held up (a disk stall, a long forget) comes back to up to hub_queue_mib of queued
# batches. Taken whole, the catch-up held their concatenations, their sealed chunks and their
# features beside them (the soak's 60 s stall: a high-water mark ~15 MiB over the stall's
# own). Taken in slices of this many bytes (~8 s of the reference load), each committed
# before the next is taken, it holds one slice more than the queues do.
CATCH_UP_SLICE_BYTES = 1 << 20
# Periodic jobs (retention, the refit, sync) first run this long after a (re)start: until
# then the sources have the CPU (a restart after a crash loses data until they connect).
START_GRACE_S = 5.0
# While commits fail (a full disk), each try re-encodes everything buffered since the first
# failure (the soak's minute of full disk: 30k rows, a core's tenth every second). Tries
# come at flush_interval_s x 2**n, up to this; a commit asked for (a mark, the last one)
# is always tried. Data waits in memory meanwhile, as before.
COMMIT_RETRY_MAX_S = 8.0
# ... and each wait is at least this many times the last failed try: a try re-encodes all that
# waits, which grows with the outage (held packed, 64 MiB is ~25 minutes of the reference
# load), so failed tries take at most a tenth of the time, on a Pi as on a laptop.
COMMIT_RETRY_DUTY = 9.0


T = TypeVar("T")


class Store(Protocol):
    """What the daemon needs of ``edgetwin.store.TwinStore``."""

    def append_samples(self, batch: SampleBatch) -> None: ...
    def append_frames(self, frames: Sequence[FeatureFrame]) -> None: ...
    def append_predictions(self, preds: Sequence[Prediction]) -> None: ...
    def append_markers(self, markers: Sequence[Marker]) -> None: ...
    def commit(self) -> None: ...
    def pending_rows(self) -> int: ...
    def pending_sample_bytes(self) -> int: ...
    def shed_oldest_samples(self, keep_bytes: int) -> dict[str, int]: ...
    def streams(self) -> Sequence[Any]: ...
    def put_record(self, kind: str, key: str, value: dict[str, Any]) -> None: ...
    def control_proof(self, message: bytes) -> bytes: ...
    def forget(
        self, *, stream: str | None = None, before: float | None = None, everything: bool = False
    ) -> Any: ...
    def read_predictions(
        self, last: int | None = None, t0: float | None = None
    ) -> list[Prediction]: ...


class Pipeline(Protocol):
    def push(self, batch: SampleBatch) -> list[FeatureFrame]: ...
    def flush(self) -> list[FeatureFrame]: ...
    def drop_buffers(self, stream: str | None = None) -> None: ...


class Engine(Protocol):
    def observe_many(
        self, frames: Sequence[FeatureFrame]
    ) -> list[tuple[FeatureFrame, list[Prediction]]]: ...
    def state(self) -> dict[str, Any]: ...
    def restore(self, state: dict[str, Any]) -> None: ...
    def reset(self) -> None: ...


@dataclass(frozen=True)
class PeriodicJob:
    """Housekeeping run every ``interval_s``: on the writer thread, in order with the
    appends and commits, or with ``in_thread`` in a thread of its own (jobs that wait on a
    network, which must not hold up the writer).

    A threaded job shares the store with the writer: TwinStore serialises calls with its own
    lock, and the job must hold it only for short database work, never across I/O.
    """

    name: str
    interval_s: float
    run: Callable[[], None]
    in_thread: bool = False
    # the first run waits this much more than the start grace (work a restart need not redo)
    first_delay_s: float = 0.0


class Daemon:
    """One twin's running daemon."""

    def __init__(
        self,
        home: Path,
        config: Config,
        store: Store,
        sources: Sequence[Source],
        *,
        pipeline: Pipeline | None = None,
        engine: Engine | None = None,
        on_prediction: Callable[[Prediction], None] | None = None,
        periodic: Sequence[PeriodicJob] = (),
        extra_status: Callable[[], dict[str, Any]] | None = None,
        seed: int | None = None,
    ) -> None:
        self.home = home
        self.config = config
        self.store = store
        self.pipeline = pipeline
        self.engine = engine
        self.on_prediction = on_prediction
        # called on the loop with each batch of new frames and forecasts (the dashboard)
        self.publish_listeners: list[Callable[[list[FeatureFrame], list[Prediction]], None]] = []
        self.hub = Hub(config.daemon.hub_queue_batches,
                       int(config.daemon.hub_queue_mib * 2**20))
        self.loop_lag = LoopLag()  # before the runners: their watchdogs ask it
        rng = random.Random(seed)
        self.runners = [
            SourceRunner(
                source,
                self.hub,
                watchdog_s=config.daemon.watchdog_s,
                loop_held_s=self.loop_lag.longest_within,
                backoff=Backoff(
                    config.daemon.backoff_initial_s,
                    config.daemon.backoff_max_s,
                    rng=random.Random(rng.random()),
                ),
            )
            for source in sources
        ]
        self._periodic = list(periodic)
        self._after_start: list[Callable[[], Awaitable[None]]] = []
        self._extra_status = extra_status
        self._store_queue = self.hub.subscribe("store")
        self._feature_queue = self.hub.subscribe("features") if pipeline is not None else None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self.sources_started = asyncio.Event()  # set once run() has started every source
        self.start_grace_s = START_GRACE_S
        self._lock = DaemonLock(home)
        # forget over the socket must prove the secret this daemon's store was unlocked with
        self._control = ControlServer(home, self._handle_request, prover=self._prove)
        self._started = time.time()
        self._running = False
        self._followers: set[asyncio.Queue[dict[str, Any]]] = set()
        self.recent_predictions: collections.deque[Prediction] = collections.deque(maxlen=64)
        self.last_frame_t: float | None = None
        self.frames = 0
        self.predictions = 0
        self.commits = 0
        self.forgets = 0
        self.errors: collections.Counter[str] = collections.Counter()
        # while commits fail (a full disk): since when and why; the data waits in memory
        self.commit_failing: dict[str, Any] | None = None
        # raw samples dropped, oldest first, to bound the buffer while commits failed; by stream
        self.shed_samples: collections.Counter[str] = collections.Counter()
        self._commit_retry_at = 0.0  # time.monotonic() before which the flusher does not try
        # rows buffered but not committed, as the writer last counted them: status reads this
        # on the loop, and asking the store would wait for its lock, held for seconds by a
        # catch-up commit after a full disk, a day's delete for room, or a forget
        self._uncommitted_rows = 0
        self._writer = self._new_writer()
        self._status_read: asyncio.Future[dict[str, Any]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop run() runs on
        self._store_status_cache: dict[str, Any] = {"store": {"streams": []}}
        self._tail_counts = TailCounts()  # what status readers counted, for the next one

    def _new_writer(self) -> Writer:
        return Writer(after_job=self._count_uncommitted)

    def _count_uncommitted(self) -> None:
        """On the writer thread, after each job: the store's buffer, for status."""
        self._uncommitted_rows = self.store.pending_rows()

    async def run(self, duration: float | None = None) -> None:
        """Run until SIGTERM/SIGINT, ``stop()``, or ``duration`` seconds have passed."""
        self._lock.acquire()
        self._running = True
        if self._writer.closed:  # a second run: a fresh writer, no read of the last loop's
            self._writer = self._new_writer()
            self._status_read = None
        self._loop = asyncio.get_running_loop()
        lag = asyncio.create_task(self.loop_lag.run(), name="looplag")
        try:
            await self._control.start()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self.stop)
            self._started = time.time()
            for runner in self.runners:
                self._spawn(f"source:{runner.source.name}", runner.run())
            self.sources_started.set()
            self._spawn("consumer:store", self._store_consumer(self._store_queue))
            if self._feature_queue is not None:
                self._spawn("consumer:features", self._feature_consumer(self._feature_queue))
            self._spawn("flusher", self._flusher())
            for job in self._periodic:
                self._spawn(f"periodic:{job.name}", self._every(job))
            for k, after in enumerate(self._after_start):
                self._spawn(f"after-start:{k}", after())
            _LOGGER.info("daemon started on %s with %d sources", self.home, len(self.runners))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), duration)
            await self._shutdown()
        finally:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            await self._control.close()
            await self._writer.aclose()
            lag.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag
            self._lock.release()
            self._running = False

    def after_start(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``fn()`` on the loop once every source has started (the models load then: a
        start, and a restart after a crash, reaches the sensors first)."""
        self._after_start.append(fn)

    def add_periodic(self, job: PeriodicJob) -> None:
        """Another periodic job; it starts at once when the daemon runs (call on the loop)."""
        self._periodic.append(job)
        if self._running and not self._stop.is_set():
            self._spawn(f"periodic:{job.name}", self._every(job))

    def stop(self) -> None:
        """Ask for an orderly shutdown (safe from a signal handler)."""
        self._stop.set()

    def status(self) -> dict[str, Any]:
        """The DESIGN.md ``status`` document; reads the store in the calling thread (use
        :meth:`status_async` on the loop)."""
        return self._status_doc(self._store_status())

    async def status_async(self) -> dict[str, Any]:
        """``status`` without blocking the loop: the store is read in a thread. While the
        store is held longer than a moment (a forget), its last known part, marked stale."""
        if self._status_read is None or self._status_read.done():
            self._status_read = asyncio.ensure_future(asyncio.to_thread(self._store_status))
            self._status_read.add_done_callback(self._keep_store_status)
        done, _ = await asyncio.wait({self._status_read}, timeout=_STATUS_STORE_WAIT_S)
        if done:
            return self._status_doc(self._status_read.result())
        stale = dict(self._store_status_cache)
        stale["store"] = {**stale.get("store", {}), "stale": True}
        return self._status_doc(stale)

    def _keep_store_status(self, read: asyncio.Future[dict[str, Any]]) -> None:
        if not read.cancelled() and read.exception() is None:
            self._store_status_cache = read.result()

    def _store_status(self) -> dict[str, Any]:
        """The parts of ``status`` that read the store (blocking). The streams are read
        through a reader of their own (a second SQLite connection) where the store offers one,
        so this read neither waits for the writer's commits or a forget nor delays them."""
        open_reader = getattr(self.store, "reader", None)
        if open_reader is None:
            streams = self.store.streams()
        else:
            # the streams' counted tails carry over from the last status read, so this one
            # decodes only the chunks committed since
            with open_reader(tail_counts=self._tail_counts) as reader:
                streams = reader.streams()
        out: dict[str, Any] = {"store": {"streams": [stream_json(s) for s in streams]}}
        if self._extra_status is not None:
            try:
                out.update(self._extra_status())
            except Exception:  # a status add-on must never break status itself
                _LOGGER.debug("extra status failed", exc_info=True)
        return out

    def _status_doc(self, store_part: dict[str, Any]) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        last = self.recent_predictions[-1] if self.recent_predictions else None
        out: dict[str, Any] = {
            "daemon": {
                "running": self._running,
                "pid": os.getpid(),
                "uptime_s": round(time.time() - self._started, 3),
                "rss_bytes": procstats.rss_bytes(),
                # what the RSS is made of, to tell heap growth from mapped files
                "memory": procstats.memory_parts(),
                # CPU seconds per thread: the loop, the writer, each source's reader, ...
                "threads_cpu_s": procstats.thread_cpu_s(),
                # descriptors, threads and the loop's tasks: what a reconnect could leak
                "handles": {**procstats.handles(), "asyncio_tasks": self._task_count()},
                "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
                # the refit's and OpenDP's short-lived children, once ended: the daemon's work
                "children_cpu_s": round(children.ru_utime + children.ru_stime, 3),
                "frames": self.frames,
                "predictions": self.predictions,
                "last_frame_t": self.last_frame_t,
                "commits": self.commits,
                "forgets": self.forgets,
                "errors": dict(self.errors),
                "loop_lag_ms": self.loop_lag.snapshot(),
                "writer": self._writer.stats(),
                "commit_failing": dict(self.commit_failing) if self.commit_failing else None,
                "uncommitted_rows": self._uncommitted_rows,
                "shed_samples": dict(self.shed_samples),
                # the time samples are stamped with (edgetwin.clock): ahead of the wall clock
                # only while absorbing a step of the host's clock back
                "clock": twin_clock.CLOCK.stats(),
            },
            "sources": [runner.status() for runner in self.runners],
            "hub": self.hub.stats(),
            "last_prediction": last.to_json() if last else None,
        }
        out.update(store_part)
        return out

    def _task_count(self) -> int | None:
        """The loop's live tasks; None before it runs (``status`` from another thread reads
        the loop it ran on last)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return None
        try:
            return len(asyncio.all_tasks(loop))
        except RuntimeError:  # the set changed size while another thread iterated it
            return None

    # -- tasks ---------------------------------------------------------------

    def _spawn(self, name: str, coro: Any) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks[name] = task
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.errors[task.get_name()] += 1
            _LOGGER.error("task %s died: %r", task.get_name(), exc, exc_info=exc)

    async def _store_consumer(self, queue: ConsumerQueue) -> None:
        while (batch := await queue.get()) is not None:
            await self._gather()
            # what waits goes in one trip, a slice at a time after the writer was held up;
            # while the writer is busy the hub's bounded queue holds (and, past its size,
            # drops) what arrives
            batches = [batch, *queue.drain(CATCH_UP_SLICE_BYTES)]
            behind = len(queue) > 0
            await self._writer.run(self._persist_all, batches, behind, what="append")

    async def _feature_consumer(self, queue: ConsumerQueue) -> None:
        while (batch := await queue.get()) is not None:
            await self._gather()
            batches = [batch, *queue.drain(CATCH_UP_SLICE_BYTES)]
            frames, preds = await self._writer.run(self._features, batches, what="features")
            self._publish(frames, preds)

    async def _gather(self) -> None:
        """Let the batches of the next moment join the one that woke a consumer: one writer
        trip for ~GATHER_S of data instead of one per batch (sources deliver tens a second)."""
        if not self.hub.closed:
            await asyncio.sleep(GATHER_S)

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self.config.daemon.flush_interval_s)
            if time.monotonic() >= self._commit_retry_at:
                await self._writer.run(self._commit, what="commit")

    async def _every(self, job: PeriodicJob) -> None:
        # not at once: a (re)start's first seconds belong to the sources' connects
        await asyncio.sleep(self.start_grace_s + job.first_delay_s)
        while True:
            try:
                if job.in_thread:
                    await asyncio.to_thread(job.run)
                else:
                    await self._writer.run(job.run, what=job.name)
            except asyncio.CancelledError:
                raise
            except StoreFull as exc:  # a full disk is news, not a bug: no traceback
                self.errors[f"periodic:{job.name}"] += 1
                _LOGGER.warning("periodic job %s could not write: %s", job.name, exc)
            except Exception:  # a failing housekeeping job is logged, the daemon keeps going
                self.errors[f"periodic:{job.name}"] += 1
                _LOGGER.exception("periodic job %s failed", job.name)
            await asyncio.sleep(job.interval_s)

    async def _shutdown(self) -> None:
        _LOGGER.info("daemon stopping")
        source_tasks = [t for n, t in self._tasks.items() if n.startswith("source:")]
        other = [
            t for n, t in self._tasks.items()
            if n.startswith(("periodic:", "flusher", "after-start:"))
        ]
        for task in source_tasks + other:
            task.cancel()
        await self._await_tasks(source_tasks + other, "sources")
        # Sources are closed: nothing new arrives. Let the consumers drain what is in flight.
        self.hub.close()
        consumers = [t for n, t in self._tasks.items() if n.startswith("consumer:")]
        await self._await_tasks(consumers, "consumers")
        frames, preds = await self._writer.run(self._final_commit, what="final commit")
        self._publish(frames, preds)
        for follower in self._followers:
            follower.put_nowait({"end": True})
        _LOGGER.info("daemon stopped")

    async def _await_tasks(self, tasks: list[asyncio.Task[None]], what: str) -> None:
        """Wait for tasks to end; a stuck one is named in the log and abandoned, not waited on."""
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=_SHUTDOWN_WAIT_S)
        for task in pending:
            self.errors[f"shutdown:{task.get_name()}"] += 1
            _LOGGER.error("%s task %s did not stop within %.0f s; abandoning it",
                          what, task.get_name(), _SHUTDOWN_WAIT_S)
            task.cancel()

    # -- work ----------------------------------------------------------------

    def _persist_all(self, batches: list[SampleBatch], behind: bool = False) -> None:
        """Buffer ``batches``; ``behind`` (more wait in the queue: a catch-up) commits them
        too, unless commits are failing and not due, so each slice is let go before the next."""
        for batch in batches:
            self._persist(batch)
        if behind and time.monotonic() >= self._commit_retry_at:
            self._commit()

    def _persist(self, batch: SampleBatch) -> None:
        try:
            self.store.append_samples(batch)
            marks = channel_markers(batch)  # a board's marker channel: markers too
            if marks:
                self.store.append_markers(marks)
        except Exception:  # keep serving other streams; the error is visible in status
            self.errors["store"] += 1
            _LOGGER.exception("storing a batch of %s failed", batch.stream)

    def _features(
        self, batches: list[SampleBatch]
    ) -> tuple[list[FeatureFrame], list[Prediction]]:
        """DSP, inference and their appends for queued batches (writer thread)."""
        assert self.pipeline is not None
        frames = [frame for batch in batches for frame in self.pipeline.push(batch)]
        return frames, persist_frames(self.store, self.engine, frames) if frames else []

    def _final_commit(self) -> tuple[list[FeatureFrame], list[Prediction]]:
        """The last step's frames, the engine's baseline, the last commit (writer thread)."""
        frames = self.pipeline.flush() if self.pipeline is not None else []
        preds = persist_frames(self.store, self.engine, frames) if frames else []
        if self.engine is not None:
            self.store.put_record(*ENGINE_STATE_RECORD, self.engine.state())
        self._commit()
        return frames, preds

    def _frames(self, frames: list[FeatureFrame]) -> None:
        """Store and publish ``frames`` in the calling thread (offline use and tests)."""
        if frames:
            self._publish(frames, persist_frames(self.store, self.engine, frames))

    def _publish(self, frames: list[FeatureFrame], preds: list[Prediction]) -> None:
        """The loop's side of new frames: counters, recent forecasts, followers, callback."""
        if not frames:
            return
        self.last_frame_t = frames[-1].t
        self.frames += len(frames)
        self.predictions += len(preds)
        for pred in preds:
            self.recent_predictions.append(pred)
            for follower in self._followers:
                if follower.qsize() < 256:
                    follower.put_nowait(pred.to_json())
            if self.on_prediction is not None:
                self.on_prediction(pred)
        for listener in self.publish_listeners:
            listener(frames, preds)

    # -- for in-process front ends (the dashboard) ------------------------------

    def status_from_memory(self) -> dict[str, Any]:
        """``status`` with the store's part as last read: no store access, never waits."""
        return self._status_doc(self._store_status_cache)

    async def on_writer(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn`` on the writer thread, in order with appends and commits."""
        return await self._writer.run(fn, what=what)

    def commit_now(self) -> None:
        """Commit what is buffered (call on the writer thread, e.g. from :meth:`on_writer`)."""
        self._commit()

    async def request(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """A control-socket request handled in process, exactly as over the socket."""
        return await self._handle_request(request, cast("asyncio.StreamWriter", None))

    def _commit(self) -> None:
        started = time.monotonic()
        try:
            self.store.commit()
            self.commits += 1
        except Exception as exc:  # e.g. a full disk: keep running, keep the batch buffered, say so
            try_s = time.monotonic() - started
            self.errors["commit"] += 1
            if self.commit_failing is None:
                self.commit_failing = {"since": time.time(), "error": str(exc), "tries": 0}
                if isinstance(exc, StoreFull):  # expected on a small card: its message says it all
                    _LOGGER.warning("committing to the store failed: %s; retrying with backoff",
                                    exc)
                else:  # anything else is a bug or a damaged disk: keep the traceback
                    _LOGGER.exception("committing to the store failed; retrying with backoff")
            else:  # once per failure streak with its traceback; then one line
                self.commit_failing["error"] = str(exc)
                _LOGGER.warning("commit still failing: %s", exc)
            tries = self.commit_failing["tries"] = self.commit_failing["tries"] + 1
            delay = min(self.config.daemon.flush_interval_s * 2.0**tries, COMMIT_RETRY_MAX_S)
            delay = max(delay, COMMIT_RETRY_DUTY * try_s)
            self.commit_failing["last_try_s"] = round(try_s, 3)
            self.commit_failing["next_try_in_s"] = round(delay, 2)
            self._commit_retry_at = time.monotonic() + delay
            self._bound_the_buffer()
        else:
            if self.commit_failing is not None:
                shed = self.commit_failing.get("shed_samples", 0)
                _LOGGER.warning("commits work again after %.1f s of failures%s",
                                time.time() - self.commit_failing["since"],
                                f"; {shed} buffered samples were dropped meanwhile" if shed
                                else "")
                self.commit_failing = None
                self._commit_retry_at = 0.0

    def _bound_the_buffer(self) -> None:
        """While commits fail, keep at most ``max_uncommitted_mib`` of raw samples in memory,
        shedding the oldest: a disk full for hours must not grow the daemon until the kernel
        kills it, which would lose all that was buffered."""
        assert self.commit_failing is not None
        cap_mib = self.config.daemon.max_uncommitted_mib
        shed = self.store.shed_oldest_samples(int(cap_mib * 2**20))
        # what the wait holds (packed after a failed commit) against the cap, in status
        held = self.store.pending_sample_bytes()
        self.commit_failing.update(held_mib=round(held / 2**20, 3), cap_mib=cap_mib)
        if not shed:
            return
        n = sum(shed.values())
        self.shed_samples.update(shed)
        first = "shed_samples" not in self.commit_failing
        self.commit_failing["shed_samples"] = self.commit_failing.get("shed_samples", 0) + n
        (_LOGGER.warning if first else _LOGGER.debug)(
            "commits have failed for %.0f s: dropped the oldest %d buffered samples (%s) to "
            "keep at most %g MiB in memory; free disk space to stop the loss",
            time.time() - self.commit_failing["since"], n,
            ", ".join(f"{k} {v}" for k, v in sorted(shed.items())), cap_mib)

    # -- control socket ------------------------------------------------------

    async def _handle_request(
        self, request: dict[str, Any], writer: asyncio.StreamWriter
    ) -> dict[str, Any] | None:
        cmd = request.get("cmd")
        if cmd == "ping":
            return {"ok": True}
        if cmd == "status":
            return await self.status_async()
        if cmd == "predictions":
            last = request.get("last")
            preds = list(self.recent_predictions)
            if isinstance(last, int) and last >= 0:
                preds = preds[-last:] if last else []
            return {"predictions": [p.to_json() for p in preds]}
        if cmd == "forget":
            # on the writer: after every batch handed over before it, before any after it
            result = await self._writer.run(self._forget, request, what="forget")
            self.recent_predictions.clear()  # any forecast published while it ran
            return {"forget": result}
        if cmd == "mark":
            # on the writer, in order with the samples; committed before the reply
            return await self._writer.run(self._mark, request, what="mark")
        if cmd == "follow":
            await self._follow(writer)
            return None
        return {"error": f"unknown command {cmd!r}"}

    def _mark(self, request: dict[str, Any]) -> dict[str, Any]:
        """Store a marker for ``edgetwin mark`` (writer thread); durable before the reply (or
        the reply says it waits in memory because commits fail)."""
        t, text, source = request.get("t"), request.get("text"), request.get("source", "cli")
        if not isinstance(t, int | float) or not isinstance(text, str) or not isinstance(
            source, str
        ):
            return {"error": "bad request: mark needs a number 't' and strings 'text', 'source'"}
        marker = Marker(float(t), text, source)
        problem = marker.problem()
        if problem is not None:
            return {"error": f"bad marker: {problem}"}
        self.store.append_markers([marker])
        self._commit()
        if self.commit_failing is not None:  # e.g. a full disk: it waits with the samples
            return {"error": "the marker is held in memory and written when commits work "
                             f"again ({self.commit_failing['error']})"}
        return {"mark": marker.to_json()}

    def _prove(self, message: bytes) -> bytes:
        """The control-socket proof, looked up only when a destructive command arrives."""
        return self.store.control_proof(message)

    def _forget(self, request: dict[str, Any]) -> dict[str, Any]:
        """Crypto-shred on behalf of ``edgetwin forget`` (which has already unlocked the twin);
        blocking, run on the writer thread."""
        before = request.get("before")
        stream = request.get("stream")
        self._commit()  # buffered samples of the stream are sealed first, then destroyed with it
        report = self.store.forget(
            stream=stream if isinstance(stream, str) else None,
            before=float(before) if isinstance(before, int | float) else None,
            everything=request.get("all") is True,
        )
        self._forget_in_memory(stream if isinstance(stream, str) else None)
        self.forgets += 1
        result: dict[str, Any] = report.to_json()
        return result

    def _forget_in_memory(self, stream: str | None) -> None:
        """Drop what the daemon holds computed from stored data, as the store just did: the
        stream's buffered samples (all of them for a date or --all), the engine's baseline,
        context and last forecasts (they rebuild), the recent forecasts it serves."""
        if self.pipeline is not None:
            self.pipeline.drop_buffers(stream)
        if self.engine is not None:
            self.engine.reset()
            # a wrapper (the serving engine) re-reads what it keeps beside the engine
            self.engine.restore(self.engine.state())
        self.recent_predictions.clear()

    async def _follow(self, writer: asyncio.StreamWriter) -> None:
        import json

        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._followers.add(queue)
        try:
            while True:
                item = await queue.get()
                writer.write(json.dumps(item).encode() + b"\n")
                await writer.drain()
                if item.get("end"):
                    return
        finally:
            self._followers.discard(queue)


def persist_frames(
    store: Store, engine: Engine | None, frames: Sequence[FeatureFrame]
) -> list[Prediction]:
    """Impute and forecast ``frames`` in one batched engine call, store both; the new forecasts.

    The daemon and offline passes (``ingest``, the demo's history) share this path.
    """
    if engine is None:
        store.append_frames(frames)
        return []
    results = engine.observe_many(frames)
    store.append_frames([frame for frame, _ in results])
    preds = [pred for _, new in results for pred in new]
    if preds:
        store.append_predictions(preds)
    return preds


def stream_json(info: Any) -> dict[str, Any]:
    """A stored stream as the DESIGN.md ``status`` entry."""
    return {
        "name": info.name,
        "samples": info.samples,
        "first_t": info.first_t,
        "last_t": info.last_t,
    }

