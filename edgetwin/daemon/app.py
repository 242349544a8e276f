"""Wire a twin home into a runnable ``Daemon``: the only place that knows every layer.

Heavy layers (features, inference, sync) are imported here, lazily, so the
CLI's other commands stay light.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetwin.config import Config
from edgetwin.daemon import memory
from edgetwin.daemon.supervisor import (
    ENGINE_STATE_RECORD,
    Daemon,
    PeriodicJob,
    Pipeline,
    persist_frames,
)
from edgetwin.disk import disk_status
from edgetwin.errors import EdgetwinError, StoreFull
from edgetwin.sources.base import Source
from edgetwin.types import FeatureFrame, Marker, Prediction, SampleBatch, channel_markers

if TYPE_CHECKING:  # the real layers, named for the type checker only: importing them is lazy
    from edgetwin.features.pipeline import FeaturePipeline
    from edgetwin.inference.engine import InferenceEngine
    from edgetwin.inference.serving import ServingEngine
    from edgetwin.interop.lsl_outlets import LslPublisher
    from edgetwin.store.twin import TwinStore

_LOGGER = logging.getLogger(__name__)

PAIRING = "pairing"


class _Load:
    """The type of :data:`LOAD`."""


LOAD = _Load()  # build_daemon(engine=LOAD) loads the models; None runs without them
RETENTION_INTERVAL_S = 3600.0
# Free heap pages go back to the kernel this often. Between trims the heap's free pages stay
# resident: every 60 s that was a ~10 MiB sawtooth on the RSS; a trim costs ~0.25 ms.
TRIM_INTERVAL_S = 10.0
# how often the room on the twin's disk is checked (a statvfs; the database only when low):
# the reference load writes ~6 MiB a minute
ROOM_INTERVAL_S = 60.0


def sources_from_pairings(store: TwinStore) -> list[Source]:
    """One source per pairing record; a broken record is logged and skipped."""
    from edgetwin.sources.registry import build_source

    out: list[Source] = []
    for name, record in sorted(store.list_records(PAIRING).items()):
        try:
            out.append(build_source(name, record))
        except (EdgetwinError, ImportError) as exc:
            _LOGGER.error("source %s skipped: %s", name, exc)
    return out


def load_engine(store: TwinStore, config: Config) -> ServingEngine | None:
    """The engine as the twin serves it (personal heads, baseline fallback) with the person's
    baseline restored, or None if disabled/missing."""
    engine = load_models(config)
    return None if engine is None else serve_engine(store, engine)


def load_models(config: Config) -> InferenceEngine | None:
    """The ONNX models (no store involved: any thread), or None if disabled/missing."""
    if not config.inference.enabled:
        return None
    try:
        from edgetwin.inference.engine import InferenceEngine
    except ImportError:
        _LOGGER.warning("inference is not available in this build; running without forecasts")
        return None
    try:
        return InferenceEngine.load(
            precision=config.inference.precision,
            threads=config.inference.intra_op_threads,
            step_s=config.twin.step_s,
        )
    except EdgetwinError as exc:
        _LOGGER.error("models cannot be loaded (%s); running without forecasts", exc)
        return None


def serve_engine(store: TwinStore, engine: InferenceEngine) -> ServingEngine:
    """``engine`` with the person's stored baseline and personal model (reads the store)."""
    state = store.get_record(*ENGINE_STATE_RECORD)
    if state:
        try:
            engine.restore(state)
        except (EdgetwinError, KeyError, ValueError, TypeError):  # restore raises DataCorrupt
            _LOGGER.warning("the stored baseline does not fit these models; starting afresh")
    from edgetwin.inference.serving import ServingEngine, load_policy

    serving = ServingEngine(engine, store=store)
    try:
        load_policy(store, serving)
    except EdgetwinError as exc:  # a damaged record: serve the global model, refit later
        _LOGGER.warning("stored personal model not loaded (%s); serving the global model", exc)
    return serving


def make_pipeline(config: Config) -> FeaturePipeline:
    from edgetwin.features.pipeline import FeaturePipeline

    return FeaturePipeline(step_s=config.twin.step_s)


def build_daemon(
    home: Path,
    config: Config,
    store: TwinStore,
    *,
    sources: Sequence[Source] | None = None,
    on_prediction: Callable[[Prediction], None] | None = None,
    pipeline: FeaturePipeline | None = None,
    engine: ServingEngine | InferenceEngine | _Load | None = LOAD,
    lsl: bool | None = None,
) -> Daemon:
    """A daemon over the paired sources (or the given ones) with features and inference;
    with ``lsl`` (default: ``[lsl] enabled``) it publishes LSL outlets: run it with
    :func:`run_daemon`."""
    # before the daemon's threads exist: they then share two malloc arenas, not one each
    memory.tune_malloc()
    periodic = [
        PeriodicJob("retention", RETENTION_INTERVAL_S, lambda: _retention(store, config)),
        # on the writer: a day it destroys must not race the appends of that stream
        *([PeriodicJob("room", ROOM_INTERVAL_S, _room_job(store, config))]
          if config.retention.min_free_mib > 0 else []),
        # free pages inside the heap go back to the kernel (on the writer, between commits)
        PeriodicJob("trim", TRIM_INTERVAL_S, _trim),
        # Uploads wait on the network: off the loop, so sensors keep flowing meanwhile.
        PeriodicJob("sync", config.sync.interval_s, _sync_job(store, config), in_thread=True),
    ]
    # With LOAD the models load once the sources run (see _load_after_start): a start, and a
    # restart after a crash, loses the sensors' data until they run.
    served = None if isinstance(engine, _Load) else engine
    if served is not None:
        from edgetwin.inference.serving import ServingEngine
    if served is not None and isinstance(served, ServingEngine):
        periodic.append(_personal_job(store, served))
    publisher = _lsl_publisher(config) if (config.lsl.enabled if lsl is None else lsl) else None
    pipe: Pipeline = pipeline if pipeline is not None else make_pipeline(config)
    lsl_status: Callable[[], dict[str, Any]] = dict
    if publisher is not None:
        pipe = _TappedPipeline(pipe, publisher.offer_frames)
        on_prediction = _tap_predictions(on_prediction, publisher)
        _tap_markers(store, publisher)
        lsl_status = lambda: {"lsl": publisher.stats()}  # noqa: E731 - one-line status part
    _clock_not_before_stored(store)
    chosen = list(sources) if sources is not None else sources_from_pairings(store)
    _give_markers_a_home(chosen, store)
    _give_locations_their_settings(chosen, store, config)
    daemon = Daemon(
        home,
        config,
        store,
        chosen,
        pipeline=pipe,
        engine=served,
        on_prediction=on_prediction,
        periodic=periodic,
        extra_status=lambda: {
            "budget": budget_status(store, config), **_score_status(daemon.engine),
            **lsl_status(),
            "disk": disk_status(store.home, config.retention.min_free_mib),
        },
    )
    if publisher is not None:
        _PUBLISHERS[daemon] = publisher
    if isinstance(engine, _Load) and config.inference.enabled:
        daemon.after_start(_load_after_start(daemon, store, config))
    return daemon


def _personal_job(store: TwinStore, served: ServingEngine) -> PeriodicJob:
    """Refit personal heads and choose sources from the last day: off the loop (a second or
    two of numpy every half hour), the store's lock held only per read; after a restart, when
    the stored refit is due (not again minutes after the last one). Reads the store."""
    from edgetwin.inference.serving import REFIT_INTERVAL_S, refit_due_in

    due_in = refit_due_in(store, served)
    if due_in > 0:
        _LOGGER.info("personal model refitted %.0f min ago; next refit in %.0f min",
                     (REFIT_INTERVAL_S - due_in) / 60, due_in / 60)
    return PeriodicJob("personal", REFIT_INTERVAL_S, _refit_job(store, served),
                       in_thread=True, first_delay_s=due_in)


def _load_after_start(
    daemon: Daemon, store: TwinStore, config: Config
) -> Callable[[], Awaitable[None]]:
    """The models load in a thread of their own while samples flow; the person's baseline is
    restored on the writer, which then serves them: frames persisted before that (the first
    comes a step after the start) are stored without forecasts."""

    async def load() -> None:
        engine = await asyncio.to_thread(load_models, config)
        if engine is None:
            return

        def serve() -> tuple[ServingEngine, PeriodicJob]:
            served = serve_engine(store, engine)
            daemon.engine = served  # on the writer: in order with the frames it persists
            return served, _personal_job(store, served)

        served, job = await daemon.on_writer(serve, "load the models")
        daemon.add_periodic(job)
        _LOGGER.info("models loaded: %s", served.model_id)

    return load


async def run_daemon(daemon: Daemon, duration: float | None = None) -> None:
    """``daemon.run`` with what :func:`build_daemon` attached beside it (the LSL outlets:
    a hub consumer task, ended when the daemon closes its hub) and, when ``[dashboard]
    enabled``, the dashboard served in this loop."""
    from edgetwin.daemon.dashboard import dashboard_for

    # Sources first: the dashboard's import and start (~0.3 s) would otherwise come before
    # the first sample of every start, and of every restart after a crash.
    run = asyncio.create_task(_run_with_outlets(daemon, duration), name="daemon")
    started = asyncio.create_task(daemon.sources_started.wait())
    await asyncio.wait({run, started}, return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    if run.done():  # it could not start (another daemon holds the twin) or was told to stop
        await run
        return
    try:
        async with dashboard_for(daemon):
            await asyncio.shield(run)
    finally:
        if not run.done():  # cancelled from outside (Ctrl-C in a test's loop): end it too
            daemon.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await run


async def _run_with_outlets(daemon: Daemon, duration: float | None) -> None:
    publisher = _PUBLISHERS.pop(daemon, None)
    if publisher is None:
        await daemon.run(duration)
        return
    # subscribed here, not in build_daemon: a daemon run without this never fills the queue
    queue = daemon.hub.subscribe("lsl", outlet=True)
    publisher.start()
    consumer = asyncio.create_task(publisher.consume(queue), name="consumer:lsl")
    try:
        await daemon.run(duration)
        # the hub is closed: what is queued is pushed, then the consumer ends
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(consumer), 10.0)
    finally:
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await consumer
        await asyncio.to_thread(publisher.close)


# daemon -> its LSL publisher, until run_daemon starts it
_PUBLISHERS: weakref.WeakKeyDictionary[Daemon, LslPublisher] = weakref.WeakKeyDictionary()


def _lsl_publisher(config: Config) -> LslPublisher:
    from edgetwin.interop.lsl_outlets import LslPublisher

    return LslPublisher(config.lsl, step_s=config.twin.step_s)


class _TappedPipeline:
    """The feature pipeline, handing each new frame to the LSL outlets too (never blocking)."""

    def __init__(self, inner: Pipeline, tap: Callable[[list[FeatureFrame]], None]) -> None:
        self._inner = inner
        self._tap = tap

    def push(self, batch: SampleBatch) -> list[FeatureFrame]:
        frames = self._inner.push(batch)
        self._tap(frames)
        return frames

    def flush(self) -> list[FeatureFrame]:
        frames = self._inner.flush()
        self._tap(frames)
        return frames

    def drop_buffers(self, stream: str | None = None) -> None:
        self._inner.drop_buffers(stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# A stored sample further ahead of the wall clock than this is not a step of the host's clock
# being absorbed (a simulator at 10x speed runs ahead on purpose): the clock ignores it.
CLOCK_FLOOR_MAX_AHEAD_S = 300.0


def _clock_not_before_stored(store: TwinStore) -> None:
    """After a step of the host's clock back and a restart, new samples must still come after
    the stored ones: the twin's clock counts on from the newest (see edgetwin.clock)."""
    import edgetwin.clock as twin_clock

    limit = time.time() + CLOCK_FLOOR_MAX_AHEAD_S
    newest = [s.last_t for s in store.streams() if s.last_t is not None and s.last_t <= limit]
    if newest:
        twin_clock.CLOCK.hold_at_least(max(newest))


def _give_markers_a_home(sources: Sequence[Source], store: TwinStore) -> None:
    """Sources of events (an LSL string stream) hand their markers to the store directly: the
    store is thread-safe and buffers them until the flusher's next commit."""
    from edgetwin.sources.lsl import LslSource

    for source in sources:
        if isinstance(source, LslSource) and source.is_markers:
            # called after _tap_markers: LSL events reach the markers outlet as well
            source.marker_sink = store.append_markers


def _give_locations_their_settings(
    sources: Sequence[Source], store: TwinStore, config: Config
) -> None:
    """gpsd sources get the person's ``[location]`` settings and their place memory, a record
    sealed in the store (the source never imports the store)."""
    from edgetwin.sources.gpsd import GpsdSource, RecordPlaceMemory

    for source in sources:
        if isinstance(source, GpsdSource):
            loc = config.location
            source.configure(precision_m=loc.precision_m, exact=loc.exact,
                             regular_days=loc.regular_days,
                             memory=RecordPlaceMemory(store, source.name))


def _tap_markers(store: TwinStore, publisher: LslPublisher) -> None:
    """Every marker this store accepts from now on (the daemon's control socket, sources) is
    published on the LSL markers outlet too; a refused one raises as before, unpublished.
    Markers read back from our own markers outlet (paired by mistake) are not re-published:
    that would echo them forever."""
    inner = store.append_markers
    own = f"lsl:{publisher.config.prefix}.markers"

    def append_markers(markers: Sequence[Marker]) -> None:
        inner(markers)
        publisher.offer_markers([(m.t, m.text) for m in markers if m.source != own])

    store.append_markers = append_markers  # type: ignore[method-assign]


def _tap_predictions(
    inner: Callable[[Prediction], None] | None, publisher: LslPublisher
) -> Callable[[Prediction], None]:
    def on_prediction(pred: Prediction) -> None:
        publisher.offer_predictions([pred])
        if inner is not None:
            inner(pred)

    return on_prediction


def _refit_job(store: TwinStore, served: ServingEngine) -> Callable[[], None]:
    from edgetwin.inference.refit_process import refit_out_of_process

    def job() -> None:
        # a day of forecasts and frames, read and fitted in a child process on a connection
        # of its own: the writer is not held up, and the refit's ~20 MiB peak is the
        # child's, handed back to the kernel when it exits
        report = refit_out_of_process(store, served)
        child = report.get("child", {})
        _LOGGER.info("personal model refitted in child %s: %.1f s of CPU, peak %.0f MiB",
                     child.get("pid"), child.get("cpu_s", math.nan),
                     child.get("peak_rss_mib", math.nan))

    return job


def _score_status(engine: object) -> dict[str, Any]:
    """``status``'s ``score``: the last refit's score and its one-line summary, when the
    daemon serves a :class:`ServingEngine` (none before the models load)."""
    if engine is None:
        return {}
    from edgetwin.inference.serving import ServingEngine

    doc = engine.score if isinstance(engine, ServingEngine) else None
    if not doc:
        return {}
    from edgetwin.inference.scoring import summary_line

    return {"score": {"summary": summary_line(doc), **doc}}


@dataclass
class OfflineReport:
    """What an offline pass (``ingest``, the demo's history) stored."""

    samples: int = 0
    batches: int = 0
    frames: int = 0
    predictions: int = 0
    markers: int = 0  # from the batches' marker channels (BrainFlow boards)
    streams: set[str] = field(default_factory=set)


def process_offline(
    store: TwinStore,
    batches: Iterable[SampleBatch],
    pipeline: FeaturePipeline,
    engine: ServingEngine | InferenceEngine | None,
    *,
    on_batch: Callable[[SampleBatch], None] | None = None,
    commit_every: int = 256,
    flush: bool = True,
) -> OfflineReport:
    """Push recorded batches through the daemon's own path: store, features, inference.

    Occlusion explanations are skipped here (they cost about ten model runs a step); the
    live daemon attaches them.
    """
    report = OfflineReport()
    explain = getattr(engine, "explain", None)
    if explain:
        engine.explain = False  # type: ignore[union-attr]
    try:
        _offline(store, batches, pipeline, engine, report, on_batch, commit_every, flush)
    finally:
        if explain:
            engine.explain = explain  # type: ignore[union-attr]
    return report


def _offline(
    store: TwinStore,
    batches: Iterable[SampleBatch],
    pipeline: FeaturePipeline,
    engine: ServingEngine | InferenceEngine | None,
    report: OfflineReport,
    on_batch: Callable[[SampleBatch], None] | None,
    commit_every: int,
    flush: bool,
) -> None:

    def frames_out(frames: list[FeatureFrame]) -> None:
        if frames:
            report.predictions += len(persist_frames(store, engine, frames))
            report.frames += len(frames)

    for batch in batches:
        store.append_samples(batch)
        marks = channel_markers(batch)  # a board's marker channel: markers too
        if marks:
            store.append_markers(marks)
            report.markers += len(marks)
        report.samples += len(batch)
        report.batches += 1
        report.streams.add(batch.stream)
        frames_out(pipeline.push(batch))
        if on_batch is not None:
            on_batch(batch)
        if report.batches % commit_every == 0:
            store.commit()
    if flush:  # a recording is complete; a live continuation (the demo) keeps the last step open
        frames_out(pipeline.flush())
    if engine is not None:
        store.put_record(*ENGINE_STATE_RECORD, engine.state())
    store.commit()


def budget_status(store: TwinStore, config: Config) -> dict[str, Any]:
    """The DESIGN.md ``budget`` object for ``status``."""
    from edgetwin.privacy.accountant import status

    result: dict[str, Any] = status(store, config.privacy, time.time()).to_json()
    return result


def _retention(store: TwinStore, config: Config) -> None:
    store.apply_retention(time.time(), config.retention)


def _room_job(store: TwinStore, config: Config) -> Callable[[], None]:
    """Keep ``[retention] min_free_mib`` free on the twin's disk (oldest raw days first);
    say so once when only the protected days are left, and again once room is back."""
    floor = config.retention.min_free_mib * 2**20
    short = False

    def run() -> None:
        nonlocal short
        try:
            report = store.make_room(time.time(), floor)
        except StoreFull as exc:  # too full even to delete (a delete writes to the WAL first)
            if not short:
                _LOGGER.warning("making room on the twin's disk: %s", exc)
            short = True
            return
        if report.days:
            _LOGGER.warning(
                "the twin's disk had %.0f MiB free, under [retention] min_free_mib = %d: "
                "destroyed the raw samples of %s (%d chunks); %.0f MiB free now",
                report.free_before / 2**20, config.retention.min_free_mib,
                ", ".join(report.days), report.forgot.chunks_deleted, report.free_after / 2**20)
        if report.short and not short:
            _LOGGER.warning(
                "the twin's disk has %.0f MiB free, under [retention] min_free_mib = %d, and "
                "only today's and yesterday's raw samples are left (never destroyed for room): "
                "free space on the disk, or lower raw_days", report.free_after / 2**20,
                config.retention.min_free_mib)
        elif short and not report.short:
            _LOGGER.info("the twin's disk has room again: %.0f MiB free",
                         report.free_after / 2**20)
        short = report.short

    return run


def _sync_job(store: TwinStore, config: Config) -> Callable[[], None]:
    """Release what is due for consented metrics, then drain the outbox.

    Runs in a worker thread; the store's lock is held only for the short database steps
    (claims use leases), never across an upload.
    """

    def job() -> None:
        # imported here, in the job's thread: ~40 ms that no longer delay the sources' start
        from edgetwin.privacy.noise_process import opendp_out_of_process
        from edgetwin.privacy.secagg import prepare_due
        from edgetwin.sync.service import drain_outbox, run_due_releases

        now = time.time()
        # OpenDP (~17 MiB resident) lives in a child only while releases and shares are made
        with opendp_out_of_process():
            # a day of frames per window is read on a connection of its own (as the refit's)
            with store.reader() as reader:
                run_due_releases(store, config, now, reader=reader)
            if config.secagg.modes:
                # metrics in secure-aggregation mode: a sealed share per due period, charged
                # now and sent when this device joins a Flower round
                shares = prepare_due(store, config, now)
                for reason in shares.refused:
                    _LOGGER.warning("secure-aggregation share refused: %s", reason)
        drain_outbox(store, config)

    return job


def _trim() -> None:
    memory.trim()
