"""The daemon's Lab Streaming Layer outlets: raw streams, features, forecasts, markers.

What is published (names start with ``[lsl] prefix``, default ``edgetwin``):

- ``<prefix>.<stream>``: each raw source stream (``<prefix>.muse.default``), created
  on its first batch, ``double64``, the stream's nominal rate (``meta
  ["sampling_rate_hz"]`` or ``["rate_hz"]``) or ``IRREGULAR_RATE``; the desc follows the XDF/LSL
  metadata conventions: ``desc/channels/channel/{label,unit,type}`` (label = the
  twin's channel name, unit e.g. ``microvolts``, type e.g. ``EEG``). A stream
  whose channels change gets a new outlet. Location streams (``<name>.location``)
  never get one: location stays on the device.
- ``<prefix>.features``: the feature timeline, one channel per feature of the
  versioned schema at ``1/step_s`` Hz; NaN where the step had no usable data. The
  values are the pipeline's, before imputation (the imputer's fills stay in the
  store's timeline, marked imputed).
- ``<prefix>.forecast.<target>``: one outlet per forecast target, irregular rate,
  three channels per horizon step: ``<target>@+<s>s``, ``..._lo``, ``..._hi``
  (the forecast and its band); the sample's time is the forecast's ``t`` (the last
  frame it saw).
- ``<prefix>.markers``: type ``Markers``, one ``string`` channel, irregular.

Source ids are ``<prefix>:<host>:<stream>`` so an inlet (LabRecorder) recovers
the stream after a daemon restart.

Timestamps: a twin time ``t`` (epoch seconds) is pushed as ``t - time.time() +
local_clock()`` with the offset read afresh at every push, so inlets that apply
LSL's clock correction align the twin's streams with the lab's.

Backpressure: every liblsl call (outlet creation, pushes) runs on one worker
thread. Raw batches come from the daemon's hub through a bounded consumer queue
that drops its oldest batch when the worker falls behind (the hub counts it);
frames, forecasts and markers are few and wait in a bounded queue of their own
(``_MAX_PENDING`` jobs; past it they are dropped and counted). Nothing here can
block a source or the writer thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from edgetwin.clock import bracketed_offset
from edgetwin.config import LslConfig
from edgetwin.features.schema import FEATURES, INDEX, LOCATION, SCHEMA_VERSION
from edgetwin.sources.lsl_meta import KIND_TO_LSL_TYPE, UNIT_TO_LSL, pylsl_module
from edgetwin.types import CHANNEL_UNITS, FeatureFrame, Prediction, SampleBatch, channel_kind

_LOGGER = logging.getLogger(__name__)
# The features outlet carries every feature but where the person is: LSL streams are seen by
# any program on the network, and location never leaves the device (schema.LOCATION).
_OUTLET_FEATURES = tuple(f for f in FEATURES if f.name not in LOCATION)
_OUTLET_COLS = [INDEX[f.name] for f in _OUTLET_FEATURES]

_MAX_PENDING = 256  # queued frame/forecast/marker jobs before new ones are dropped


class BatchQueue(Protocol):
    """What the publisher needs of the hub's ``ConsumerQueue``."""

    async def get(self) -> SampleBatch | None: ...
    def drain(self) -> Iterable[SampleBatch]: ...


@dataclass
class OutletStats:
    """Counters of one outlet, for ``status``."""

    name: str
    samples: int = 0
    pushes: int = 0
    errors: int = 0
    push_s: float = 0.0  # time spent in liblsl pushes
    consumers: bool = False


@dataclass
class _Outlet:
    outlet: Any
    layout: tuple[Any, ...]
    stats: OutletStats
    checked: float = -math.inf  # when have_consumers() was last asked (monotonic)


@dataclass
class _Pending:
    count: int = 0
    dropped: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def lsl_time(
    t: Sequence[float] | np.ndarray[Any, Any], local_clock: Callable[[], float]
) -> list[float]:
    """Twin times (epoch seconds) on LSL's clock, with the offset read now."""
    # the wall clock read between two local_clock reads: a push preempted between two plain
    # reads (a loaded machine) put that whole delay, 4 ms once, on every time of its chunk
    offset = bracketed_offset(local_clock, time.time)
    return (np.asarray(t, dtype=np.float64) + offset).tolist()  # type: ignore[no-any-return]


class LslPublisher:
    """Publishes the daemon's streams as LSL outlets; see the module docstring."""

    def __init__(self, config: LslConfig, *, step_s: float, host: str | None = None) -> None:
        self.config = config
        self.step_s = step_s
        self.host = host or socket.gethostname()
        self._pylsl = pylsl_module()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lsl")
        self._raw: dict[str, _Outlet] = {}
        self._forecasts: dict[str, _Outlet] = {}
        self._features: _Outlet | None = None
        self._markers: _Outlet | None = None
        self._pending = _Pending()
        self._stats: dict[str, OutletStats] = {}  # kept across recreated and closed outlets
        self._closed = False
        self.errors = 0

    # -- inputs (any thread, never blocking) -----------------------------------

    def start(self) -> None:
        """Create the fixed outlets (features, markers) so inlets can find them at once."""
        self._submit(self._open_fixed)

    async def consume(self, queue: BatchQueue) -> None:
        """The hub consumer: push raw batches on the worker thread until the hub closes."""
        loop = asyncio.get_running_loop()
        while (batch := await queue.get()) is not None:
            batches = [batch, *queue.drain()]
            if self.config.raw and not self._closed:
                await loop.run_in_executor(self._executor, self._push_raw, batches)

    def offer_frames(self, frames: Sequence[FeatureFrame]) -> None:
        if frames and self.config.features:
            self._submit(self._push_frames, list(frames))

    def offer_predictions(self, preds: Sequence[Prediction]) -> None:
        if preds and self.config.forecasts:
            self._submit(self._push_predictions, list(preds))

    def offer_markers(self, markers: Sequence[tuple[float, str]]) -> None:
        """Markers as ``(t, text)``; published in time order of arrival."""
        if markers and self.config.markers:
            self._submit(self._push_markers, list(markers))

    def close(self) -> None:
        """Finish queued pushes, then destroy every outlet (inlets see the streams end)."""
        if self._closed:
            return
        self._closed = True
        self._executor.submit(self._destroy_all)
        self._executor.shutdown(wait=True)

    def stats(self) -> dict[str, Any]:
        """``status``'s ``lsl`` object: per-outlet counters and dropped jobs."""
        outlets = list(self._stats.values())
        return {
            "outlets": [
                {"name": s.name, "samples": s.samples, "pushes": s.pushes, "errors": s.errors,
                 "push_ms_total": round(s.push_s * 1e3, 3), "consumers": s.consumers}
                for s in outlets
            ],
            "dropped_jobs": self._pending.dropped,
            "errors": self.errors,
        }

    # -- worker thread ---------------------------------------------------------

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        if self._closed:
            return
        with self._pending.lock:
            if self._pending.count >= _MAX_PENDING:
                self._pending.dropped += 1
                return
            self._pending.count += 1
        try:
            self._executor.submit(self._run_job, fn, *args)
        except RuntimeError:  # shut down meanwhile
            with self._pending.lock:
                self._pending.count -= 1

    def _run_job(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - a failing push must not stop the others; counted
            self.errors += 1
            log = _LOGGER.warning if self.errors == 1 else _LOGGER.debug
            log("LSL publishing failed", exc_info=True)
        finally:
            with self._pending.lock:
                self._pending.count -= 1

    def _open_fixed(self) -> None:
        pylsl = self._pylsl
        if self.config.features and self._features is None:
            info = self._info("features", "Features", len(_OUTLET_FEATURES), 1.0 / self.step_s,
                              pylsl.cf_double64)
            chans = info.desc().append_child("channels")
            for feat in _OUTLET_FEATURES:
                self._channel(chans, feat.name, UNIT_TO_LSL.get(feat.unit, feat.unit), "Feature")
            twin = info.desc().append_child("edgetwin")
            twin.append_child_value("schema_version", str(SCHEMA_VERSION))
            twin.append_child_value("step_s", f"{self.step_s:g}")
            self._features = self._open("features", info, (SCHEMA_VERSION,))
        if self.config.markers and self._markers is None:
            info = self._info("markers", "Markers", 1, pylsl.IRREGULAR_RATE, pylsl.cf_string)
            self._channel(info.desc().append_child("channels"), "marker", "", "Marker")
            self._markers = self._open("markers", info, ())

    def _push_raw(self, batches: list[SampleBatch]) -> None:
        for batch in batches:
            # LSL is visible to any program on the network: location never gets an outlet
            if not len(batch) or batch.stream.endswith(".location"):
                continue
            try:
                out = self._raw_outlet(batch)
                self._push(out, batch.values, batch.t)
            except Exception:  # noqa: BLE001 - one bad stream must not stop the others
                self.errors += 1
                log = _LOGGER.warning if self.errors == 1 else _LOGGER.debug
                log("LSL outlet for %s failed", batch.stream, exc_info=True)

    def _push_frames(self, frames: list[FeatureFrame]) -> None:
        if self._features is None:
            self._open_fixed()
        assert self._features is not None
        values = np.stack([np.asarray(f.values, dtype=np.float64) for f in frames])
        if values.shape[1] != len(FEATURES):
            raise ValueError(f"frames have {values.shape[1]} features, the schema "
                             f"{len(FEATURES)} (v{SCHEMA_VERSION})")
        self._push(self._features, values[:, _OUTLET_COLS], [f.t for f in frames])

    def _push_predictions(self, preds: list[Prediction]) -> None:
        for pred in preds:
            out = self._forecast_outlet(pred)
            row = np.array([[x for k, v in enumerate(pred.horizon)
                             for x in (v, *pred.band[k])]], dtype=np.float64)
            self._push(out, row, [pred.t])

    def _push_markers(self, markers: list[tuple[float, str]]) -> None:
        if self._markers is None:
            self._open_fixed()
        assert self._markers is not None
        out = self._markers
        start = time.perf_counter()
        stamps = lsl_time([t for t, _ in markers], self._pylsl.local_clock)
        out.outlet.push_chunk([[text] for _, text in markers], stamps)
        self._count(out, len(markers), time.perf_counter() - start)

    def _push(self, out: _Outlet, values: Any, t: Any) -> None:
        start = time.perf_counter()
        out.outlet.push_chunk(values, lsl_time(t, self._pylsl.local_clock))
        self._count(out, len(values), time.perf_counter() - start)

    @staticmethod
    def _count(out: _Outlet, n: int, took: float) -> None:
        out.stats.samples += n
        out.stats.pushes += 1
        out.stats.push_s += took
        now = time.monotonic()
        if now - out.checked >= 2.0:  # a cheap call, but not at every push
            out.checked = now
            out.stats.consumers = bool(out.outlet.have_consumers())

    def _raw_outlet(self, batch: SampleBatch) -> _Outlet:
        rate = _nominal_rate(batch.meta)
        layout = (batch.channels, batch.units, rate)
        out = self._raw.get(batch.stream)
        if out is not None and out.layout == layout:
            return out
        if out is not None:
            _LOGGER.info("stream %s changed its channels; its LSL outlet is recreated",
                         batch.stream)
            del self._raw[batch.stream]
            del out
        pylsl = self._pylsl
        kinds = {channel_kind(c) for c in batch.channels}
        stream_type = (KIND_TO_LSL_TYPE.get(next(iter(kinds)), "MISC") if len(kinds) == 1
                       else "Physio")
        info = self._info(batch.stream, stream_type, len(batch.channels),
                          rate if rate > 0 else pylsl.IRREGULAR_RATE, pylsl.cf_double64)
        desc = info.desc()
        chans = desc.append_child("channels")
        for name, unit in zip(batch.channels, batch.units, strict=True):
            kind = channel_kind(name)
            self._channel(chans, name, UNIT_TO_LSL.get(unit, unit),
                          KIND_TO_LSL_TYPE.get(kind, kind.upper() if kind in CHANNEL_UNITS
                                               else "MISC"))
        desc.append_child("acquisition").append_child_value("manufacturer", "edgetwin")
        created = self._open(batch.stream, info, layout)
        self._raw[batch.stream] = created
        return created

    def _forecast_outlet(self, pred: Prediction) -> _Outlet:
        layout = (len(pred.horizon), pred.step_s)
        out = self._forecasts.get(pred.target)
        if out is not None and out.layout == layout:
            return out
        unit = next((f.unit for f in FEATURES if f.name == pred.target), "")
        info = self._info(f"forecast.{pred.target}", "Forecast", 3 * len(pred.horizon),
                          self._pylsl.IRREGULAR_RATE, self._pylsl.cf_double64)
        chans = info.desc().append_child("channels")
        for k in range(len(pred.horizon)):
            label = f"{pred.target}@+{(k + 1) * pred.step_s:g}s"
            for suffix in ("", "_lo", "_hi"):
                self._channel(chans, label + suffix, UNIT_TO_LSL.get(unit, unit), "Forecast")
        twin = info.desc().append_child("edgetwin")
        twin.append_child_value("target", pred.target)
        twin.append_child_value("step_s", f"{pred.step_s:g}")
        twin.append_child_value("horizon", str(len(pred.horizon)))
        created = self._open(f"forecast.{pred.target}", info, layout)
        self._forecasts[pred.target] = created
        return created

    def _info(self, suffix: str, stream_type: str, count: int, rate: float, fmt: int) -> Any:
        name = f"{self.config.prefix}.{suffix}"
        return self._pylsl.StreamInfo(name, stream_type, count, rate, fmt,
                                      f"{self.config.prefix}:{self.host}:{suffix}")

    @staticmethod
    def _channel(parent: Any, label: str, unit: str, kind: str) -> None:
        ch = parent.append_child("channel")
        ch.append_child_value("label", label)
        ch.append_child_value("unit", unit)
        ch.append_child_value("type", kind)

    def _open(self, what: str, info: Any, layout: tuple[Any, ...]) -> _Outlet:
        outlet = self._pylsl.StreamOutlet(info, 0, self.config.max_buffered_s)
        _LOGGER.info("LSL outlet %s.%s open (%d channels)", self.config.prefix, what,
                     info.channel_count())
        name = f"{self.config.prefix}.{what}"
        stats = self._stats.setdefault(name, OutletStats(name))
        return _Outlet(outlet, layout, stats)

    def _destroy_all(self) -> None:
        self._raw.clear()
        self._forecasts.clear()
        self._features = self._markers = None


def _nominal_rate(meta: dict[str, Any]) -> float:
    """A stream's nominal rate from its batches' meta (BrainFlow and the simulator say
    ``sampling_rate_hz``, the serial bridge ``rate_hz``); 0 (irregular) when none is said."""
    for key in ("sampling_rate_hz", "rate_hz"):
        value = meta.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
    return 0.0
