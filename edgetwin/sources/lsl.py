"""A Lab Streaming Layer stream on the network as a source (``pair add lsl``).

The pairing record holds the query that found the stream and the stream's
metadata at pairing time::

    {"kind": "lsl", "query": {"prop": "name", "value": "OpenBCI-EEG"},
     "stream": {"name": ..., "type": "EEG", "source_id": ..., "hostname": ...,
                "channel_count": 8, "nominal_srate": 250.0, "channel_format": "float32",
                "channels": [{"label": "Fp1", "unit": "microvolts", "type": "EEG"}, ...]},
     "channels": ["eeg_fp1", ...], "units": ["uV", ...]}

Channel names and units: :mod:`edgetwin.sources.lsl_meta` (``eeg_fp1`` for an EEG
label ``Fp1``, units converted, unknown types kept raw). A numeric stream of type
``Markers`` (event codes) becomes a ``marker`` channel: the daemon stores each
nonzero code as a marker too (a code 0 is "no event", as on BrainFlow's marker
channel). A string stream (the usual LSL marker stream) is read as events: each
sample becomes a ``Marker`` from ``lsl:<stream name>`` (text escaped by
``escape_marker_text``, channels joined by `` | ``), handed to ``marker_sink``,
which the daemon points at its store.

Clocks: the inlet applies liblsl's clock-offset correction and dejitter
(``proc_clocksync | proc_dejitter | proc_monotonize``; no dejitter for an
irregular stream), so timestamps arrive on this machine's ``local_clock()``;
they are mapped to epoch seconds with ``t = ts - local_clock() + now``, ``now`` on
the twin's clock (:mod:`edgetwin.clock`, which never steps back), read between two
reads of ``local_clock`` so a preempted reader thread does not skew it (the offset is
re-read every pull and only followed when it moves by more than
5 ms, i.e. when the wall clock is stepped, so consecutive batches never jitter
backwards). A lost stream (``LostError``: its outlet went away) ends the
session with ``TransientSourceError``; the runner's backoff re-resolves it.
A stream that comes back with another channel count, channel labels, format or
nominal rate is refused with ``PairingRefused`` naming both values: data in a
layout the pairing did not describe is never stored under its names. A stream
whose samples arrive more than 20 % off its nominal rate (over 10 s of sample
time) is still stored with its own timestamps, and named once in the log and in
``status`` (``effective_rate_hz``, ``rate_warning``).

Networks (a loopback-only host needs ``LSLAPICFG``): see :mod:`edgetwin.sources.lsl_meta`.

Sources never import the store: markers leave through ``marker_sink``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import numpy as np

import edgetwin.clock as twin_clock
from edgetwin.errors import DeviceNotFound, PairingRefused, SourceError, TransientSourceError
from edgetwin.sources.base import Source
from edgetwin.sources.lsl_meta import (
    QUERY_PROPS,
    RESOLVE_TIMEOUT_S,
    ChannelMap,
    describe_stream,
    full_metadata,
    layout_problem,
    map_channels,
    pylsl_module,
    resolve,
    sanitize,
    stream_metadata,
)
from edgetwin.types import MARKER_SOURCE_MAX, Marker, SampleBatch, escape_marker_text

# the metadata helpers are re-exported: XDF ingestion maps channels as this source does
__all__ = [
    "ChannelMap",
    "LslSource",
    "describe_stream",
    "full_metadata",
    "layout_problem",
    "map_channels",
    "resolve",
    "sanitize",
    "stream_metadata",
]

_LOGGER = logging.getLogger(__name__)

_POLL_HZ = 20.0
_MAX_PULL = 8192
# A wall-clock step larger than this moves the epoch mapping; smaller wobble is ignored.
_OFFSET_STEP_S = 0.005
# An irregular stream (events) may be silent for long: the watchdog waits this long.
_IRREGULAR_SILENCE_S = 24 * 3600.0
# The effective rate is checked over this many seconds of sample time, against this tolerance.
_RATE_WINDOW_S = 10.0
_RATE_TOLERANCE = 0.2


class LslSource(Source):
    """A stream from the Lab Streaming Layer, pulled off the event loop."""

    kind = "lsl"

    def __init__(
        self,
        name: str,
        query: Mapping[str, str],
        stream: Mapping[str, Any],
        *,
        resolve_timeout_s: float = RESOLVE_TIMEOUT_S,
        poll_hz: float = _POLL_HZ,
        queue_batches: int = 64,
    ) -> None:
        super().__init__(name)
        self.prop = str(query["prop"])
        self.value = str(query["value"])
        if self.prop not in QUERY_PROPS:
            raise ValueError(f"query prop {self.prop!r} is not one of {QUERY_PROPS}")
        self.paired = dict(stream)
        # a string stream carries events: they become markers, handed to ``marker_sink``
        self.is_markers = self.paired.get("channel_format") == "string"
        self.marker_sink: Callable[[list[Marker]], None] | None = None
        self.marker_source = escape_marker_text(f"lsl:{self.paired.get('name')}",
                                                limit=MARKER_SOURCE_MAX)
        self.channel_map = map_channels(self.paired)
        self.stream_name = (f"{name}.markers" if self.is_markers
                            else f"{name}.{self.channel_map.stream_suffix}")
        self.nominal_srate = float(self.paired["nominal_srate"])
        self.resolve_timeout_s = resolve_timeout_s
        self.poll_hz = poll_hz
        self.queue_batches = queue_batches
        if self.nominal_srate <= 0:
            self.silence_tolerance_s = _IRREGULAR_SILENCE_S
        self._inlet: Any = None
        self._live: dict[str, Any] = {}
        self._rate_t0: float | None = None
        self._rate_n = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_record(cls, name: str, record: Mapping[str, Any], **kwargs: Any) -> LslSource:
        """A source from a ``pair add lsl`` record (see the module docstring)."""
        return cls(name, dict(record["query"]), dict(record["stream"]), **kwargs)

    def describe(self) -> dict[str, Any]:
        return {
            "lsl_stream": self.paired.get("name"),
            "lsl_type": self.paired.get("type"),
            "nominal_rate_hz": self.nominal_srate,
            "streams": [self.stream_name],
            **{k: v for k, v in self.counters.extra.items()
               if k in ("effective_rate_hz", "rate_warning", "markers")},
        }

    async def connect(self) -> None:
        """Resolve the paired stream and open an inlet on it; nothing stays open on failure."""
        pylsl_module()
        if self._inlet is not None:
            return
        await asyncio.to_thread(self._open)

    async def stream(self) -> AsyncIterator[SampleBatch]:
        """Batches pulled from the inlet until the stream is lost."""
        if self._inlet is None:
            raise TransientSourceError(f"source {self.name!r} is not connected",
                                       hint="call connect() first")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[SampleBatch | SourceError] = asyncio.Queue(self.queue_batches)
        self._stop = stop = threading.Event()
        thread = threading.Thread(target=self._pull_loop, args=(loop, queue, stop),
                                  name=f"lsl:{self.name}", daemon=True)
        self._thread = thread
        thread.start()
        try:
            while True:
                item = await queue.get()
                if isinstance(item, SourceError):
                    raise item
                self.counters.count(item)
                yield item
        finally:
            stop.set()

    async def close(self) -> None:
        """Stop pulling and drop the inlet; safe to call twice."""
        self._stop.set()
        await asyncio.to_thread(self._shutdown)

    # -- worker thread ---------------------------------------------------------

    def _open(self) -> None:
        pylsl = pylsl_module()
        source_id = str(self.paired.get("source_id") or "")
        # without a source id to tell them apart, look for a second match (the whole timeout)
        found = resolve(self.prop, self.value, self.resolve_timeout_s, want_all=not source_id)
        if source_id and self.prop != "source_id":
            found = [f for f in found if f.source_id() == source_id] or found
        if not found:
            raise DeviceNotFound(
                f"no LSL stream with {self.prop}={self.value!r} on the network "
                f"(waited {self.resolve_timeout_s:g} s)",
                hint="start its outlet; the daemon keeps looking",
            )
        if len(found) > 1:
            listed = "; ".join(describe_stream(stream_metadata(f)) for f in found)
            raise PairingRefused(
                f"{len(found)} LSL streams match {self.prop}={self.value!r}: {listed}",
                hint=f"stop one, or re-pair with --source-id: 'edgetwin pair remove {self.name}'",
            )
        info = found[0]
        flags = pylsl.proc_clocksync | pylsl.proc_monotonize
        if self.nominal_srate > 0:
            flags |= pylsl.proc_dejitter
        inlet = None
        try:
            inlet = pylsl.StreamInlet(info, max_buflen=60, recover=False, processing_flags=flags)
            live = stream_metadata(inlet.info(self.resolve_timeout_s))
            problem = layout_problem(self.paired, live)
            if problem is not None:
                raise PairingRefused(
                    problem, hint=f"re-pair it: 'edgetwin pair remove {self.name}' then "
                    f"'edgetwin pair add lsl --{self.prop.replace('_', '-')} {self.value}'")
            inlet.open_stream(self.resolve_timeout_s)
            # the first clock-offset estimate, so the first batch is already corrected
            inlet.time_correction(self.resolve_timeout_s)
        except (pylsl.util.TimeoutError, pylsl.util.LostError, RuntimeError) as exc:
            self._drop(inlet)
            raise TransientSourceError(
                f"LSL stream {info.name()!r} could not be opened: {type(exc).__name__}: {exc}",
                hint="reconnecting",
            ) from exc
        except BaseException:
            self._drop(inlet)
            raise
        with self._lock:
            self._inlet = inlet
            self._live = live
            self._rate_t0, self._rate_n = None, 0
        _LOGGER.info("LSL stream %s opened for %s", describe_stream(live), self.name)

    def _pull_loop(
        self,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[SampleBatch | SourceError],
        stop: threading.Event,
    ) -> None:
        if self.is_markers:
            self._pull_markers(loop, queue, stop)
            return
        pylsl = pylsl_module()
        period = 1.0 / self.poll_hz
        offset = -twin_clock.bracketed_offset(pylsl.local_clock, twin_clock.now)
        last_t = -math.inf
        scale = np.asarray(self.channel_map.scale, dtype=np.float64)
        meta = {"lsl_stream": self.paired.get("name")}
        if self.nominal_srate > 0:
            meta["sampling_rate_hz"] = self.nominal_srate
        while not stop.wait(period):
            with self._lock:
                inlet = self._inlet
                if inlet is None:
                    return
                try:
                    values, stamps = inlet.pull_chunk(0.0, _MAX_PULL, as_numpy=True)
                except pylsl.util.LostError as exc:
                    self._deliver(loop, queue, stop, TransientSourceError(
                        f"LSL stream {self.paired.get('name')!r} of source {self.name!r} was "
                        f"lost: {exc}", hint="its outlet went away; re-resolving"))
                    return
            if stamps is None or len(stamps) == 0:
                continue
            now_offset = -twin_clock.bracketed_offset(pylsl.local_clock, twin_clock.now)
            if abs(now_offset - offset) > _OFFSET_STEP_S:
                offset = now_offset
            t = np.asarray(stamps, dtype=np.float64) + offset
            v = np.asarray(values, dtype=np.float64).reshape(len(t), -1) * scale
            keep = t >= last_t  # monotonized already; a stepped wall clock must not go back
            if not keep.all():
                self.counters.drops += int((~keep).sum())
                t, v = t[keep], v[keep]
            if not len(t):
                continue
            last_t = float(t[-1])
            self._check_rate(t)
            batch = SampleBatch.build(self.stream_name, self.channel_map.names, t, v,
                                      units=self.channel_map.units, meta=meta)
            if not self._deliver(loop, queue, stop, batch):
                return

    def _pull_markers(
        self,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[SampleBatch | SourceError],
        stop: threading.Event,
    ) -> None:
        """A string stream: each sample is a marker (channels joined by `` | ``), its text
        escaped (``escape_marker_text``), from ``lsl:<stream name>``, handed to the sink."""
        pylsl = pylsl_module()
        period = 1.0 / self.poll_hz
        while not stop.wait(period):
            with self._lock:
                inlet = self._inlet
                if inlet is None:
                    return
                try:
                    values, stamps = inlet.pull_chunk(0.0, 1024)
                except pylsl.util.LostError as exc:
                    self._deliver(loop, queue, stop, TransientSourceError(
                        f"LSL stream {self.paired.get('name')!r} of source {self.name!r} was "
                        f"lost: {exc}", hint="its outlet went away; re-resolving"))
                    return
            if not stamps:
                continue
            offset = -twin_clock.bracketed_offset(pylsl.local_clock, twin_clock.now)
            markers = []
            for sample, stamp in zip(values, stamps, strict=True):
                text = escape_marker_text(" | ".join(str(v) for v in sample if str(v).strip()))
                if not text:
                    self.counters.bad_packets += 1  # an empty event: nothing to keep
                    continue
                markers.append(Marker(float(stamp) + offset, text, self.marker_source))
            self._hand_over(markers)

    def _hand_over(self, markers: list[Marker]) -> None:
        if not markers:
            return
        sink = self.marker_sink
        if sink is None:
            self.counters.drops += len(markers)
            _LOGGER.warning("source %s has nowhere to put %d markers", self.name, len(markers))
            return
        try:
            sink(markers)
        except Exception as exc:  # noqa: BLE001 - a refused marker is counted, the stream goes on
            self.counters.bad_packets += len(markers)
            _LOGGER.warning("markers of source %s refused: %s", self.name, exc)
            return
        self.counters.samples += len(markers)
        self.counters.extra["markers"] = self.counters.extra.get("markers", 0) + len(markers)
        self.counters.last_sample_t = markers[-1].t

    def _check_rate(self, t: np.ndarray[Any, Any]) -> None:
        """Compare the stream's sample times with its nominal rate over ``_RATE_WINDOW_S``.

        A stream that runs more than 20 % off its nominal rate is still stored (its own
        timestamps say when each sample was taken) but named in the log once per session
        and in ``status`` (``effective_rate_hz``, ``rate_warning``): the features assume
        the nominal rate.
        """
        if self.nominal_srate <= 0:
            return
        if self._rate_t0 is None:  # intervals are counted from the first sample on
            self._rate_t0, self._rate_n = float(t[0]), len(t) - 1
        else:
            self._rate_n += len(t)
        span = float(t[-1]) - self._rate_t0
        if span < _RATE_WINDOW_S:
            return
        rate = self._rate_n / span
        self.counters.extra["effective_rate_hz"] = round(rate, 3)
        self._rate_t0, self._rate_n = float(t[-1]), 0
        if abs(rate - self.nominal_srate) > _RATE_TOLERANCE * self.nominal_srate:
            message = (f"LSL stream {self.paired.get('name')!r} of source {self.name!r} "
                       f"runs at {rate:.4g} Hz, its nominal rate is "
                       f"{self.nominal_srate:g} Hz (over the last {span:.0f} s)")
            if "rate_warning" not in self.counters.extra:
                _LOGGER.warning("%s; stored with its own timestamps", message)
            self.counters.extra["rate_warning"] = message
        else:
            self.counters.extra.pop("rate_warning", None)

    @staticmethod
    def _deliver(
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[SampleBatch | SourceError],
        stop: threading.Event,
        item: SampleBatch | SourceError,
    ) -> bool:
        """Put into the bounded queue, waiting while it is full (the inlet buffers meanwhile)."""
        try:
            fut = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        except RuntimeError:  # the loop is closed
            return False
        while True:
            try:
                fut.result(timeout=0.25)
            except concurrent.futures.TimeoutError:
                if stop.is_set():
                    fut.cancel()
                    return False
            except concurrent.futures.CancelledError:
                return False
            else:
                return True

    def _shutdown(self) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        self._thread = None
        with self._lock:
            inlet, self._inlet = self._inlet, None
        self._drop(inlet)

    @staticmethod
    def _drop(inlet: Any) -> None:
        if inlet is None:
            return
        with contextlib.suppress(Exception):  # best effort: the stream may be gone already
            inlet.close_stream()


