"""A Lab Streaming Layer stream on the network as a source (``pair add lsl``).

The pairing record holds the query that found the stream and the stream's
metadata at pairing time::

    {"kind": "lsl", "query": {"prop": "name", "value": "OpenBCI-EEG"},
     "stream": {"name": ..., "type": "EEG", "source_id": ..., "hostname": ...,
                "channel_count": 8, "nominal_srate": 250.0, "channel_format": "float32",
                "channels": [{"label": "Fp1", "unit": "microvolts", "type": "EEG"}, ...]},
     "channels": ["eeg_fp1", ...], "units": ["uV", ...]}

Channel names follow the twin's CSV contract (``edgetwin.types``): an EEG
label ``Fp1`` becomes ``eeg_fp1`` as BrainFlow's ``eeg_names`` do, ECG/EMG/EOG
become ``ecg_<label>``..., accelerometer axes ``accel_x|y|z``; values in a
convertible unit (volts, millivolts, m/s², seconds for RR) are scaled to the
twin's unit. A numeric stream of type ``Markers`` (event codes) becomes a
``marker`` channel: the daemon stores each nonzero code as a marker too (a code
0 is "no event", as on BrainFlow's marker channel). A string stream (the usual
LSL marker stream) is read as events: each sample becomes a ``Marker`` from
``lsl:<stream name>`` (text escaped by ``escape_marker_text``, channels joined by
`` | ``), handed to ``marker_sink``, which the daemon points at its store.
A channel of a type the twin does not know, or in a unit it cannot
convert, is kept as a raw channel ``<type>_<label>`` (``raw_<...>`` when the
type would read as a twin kind), stored but ignored by the features.

Clocks: the inlet applies liblsl's clock-offset correction and dejitter
(``proc_clocksync | proc_dejitter | proc_monotonize``; no dejitter for an
irregular stream), so timestamps arrive on this machine's ``local_clock()``;
they are mapped to epoch seconds with ``t = ts - local_clock() + time.time()``
(the offset is re-read every pull and only followed when it moves by more than
5 ms, i.e. when the wall clock is stepped, so consecutive batches never jitter
backwards). A lost stream (``LostError``: its outlet went away) ends the
session with ``TransientSourceError``; the runner's backoff re-resolves it.
A stream that comes back with another channel count, channel labels, format or
nominal rate is refused with ``PairingRefused`` naming both values: data in a
layout the pairing did not describe is never stored under its names. A stream
whose samples arrive more than 20 % off its nominal rate (over 10 s of sample
time) is still stored with its own timestamps, and named once in the log and in
``status`` (``effective_rate_hz``, ``rate_warning``).

Networks: liblsl finds streams by multicast and broadcast on every interface.
On a host with only loopback (a container, a laptop offline) or across subnets,
give liblsl a config through ``LSLAPICFG=/path/lsl_api.cfg``, e.g.::

    [multicast]
    ResolveScope = machine
    [lab]
    KnownPeers = {127.0.0.1}

(``KnownPeers`` may list other hosts, ``SessionID = NAME`` keeps a lab's streams
apart; the tests use both). Without a config of the person's own, liblsl's own
INFO logging is turned down to warnings (see :func:`pylsl_module`).

Sources never import the store; the tables below are shared with
``edgetwin.interop.lsl_outlets`` (the outlets' channel types and units).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetwin.errors import (
    DeviceNotFound,
    DriverMissing,
    PairingRefused,
    SourceError,
    TransientSourceError,
    UsageError,
)
from edgetwin.sources.base import Source
from edgetwin.types import (
    CHANNEL_UNITS,
    MARKER_SOURCE_MAX,
    Marker,
    SampleBatch,
    channel_kind,
    escape_marker_text,
)

_LOGGER = logging.getLogger(__name__)

QUERY_PROPS = ("name", "type", "source_id")
RESOLVE_TIMEOUT_S = 3.0
_POLL_HZ = 20.0
_MAX_PULL = 8192
# A wall-clock step larger than this moves the epoch mapping; smaller wobble is ignored.
_OFFSET_STEP_S = 0.005
# An irregular stream (events) may be silent for long: the watchdog waits this long.
_IRREGULAR_SILENCE_S = 24 * 3600.0
# The effective rate is checked over this many seconds of sample time, against this tolerance.
_RATE_WINDOW_S = 10.0
_RATE_TOLERANCE = 0.2

# twin channel kind -> the LSL/XDF channel type written by the outlets
KIND_TO_LSL_TYPE: dict[str, str] = {
    "eeg": "EEG", "ecg": "ECG", "emg": "EMG", "eog": "EOG", "ppg": "PPG", "eda": "EDA",
    "hr": "HR", "rr": "RR", "spo2": "SpO2", "temp": "TEMP", "accel": "ACC", "gyro": "GYRO",
    "mag": "MAG", "fnirs": "NIRS", "resp": "RESP", "battery": "BATTERY", "marker": "Markers",
}
# twin unit -> the unit name written in the outlets' metadata (XDF: "microvolts")
UNIT_TO_LSL: dict[str, str] = {
    "uV": "microvolts", "mV": "millivolts", "uS": "microsiemens", "degC": "celsius",
    "ms": "milliseconds", "%": "percent", "deg/s": "degrees/second", "bpm": "bpm", "g": "g",
    "uM": "micromolar", "ohm": "ohms", "a.u.": "a.u.",
}

# LSL channel/stream type (lower-case) -> twin kind
_LSL_TYPE_TO_KIND: dict[str, str] = {
    "eeg": "eeg", "ecg": "ecg", "ekg": "ecg", "emg": "emg", "eog": "eog", "ppg": "ppg",
    "eda": "eda", "gsr": "eda", "hr": "hr", "heartrate": "hr", "heart_rate": "hr",
    "rr": "rr", "ibi": "rr", "spo2": "spo2", "temp": "temp", "temperature": "temp",
    "acc": "accel", "accel": "accel", "accelerometer": "accel", "gyro": "gyro",
    "gyroscope": "gyro", "resp": "resp", "respiration": "resp",
    # a numeric marker stream (event codes): a ``marker`` channel, which the daemon also
    # stores as markers (``edgetwin.types.channel_markers``: every nonzero code)
    "markers": "marker", "marker": "marker",
}
_VOLT = {"": 1.0, "uv": 1.0, "µv": 1.0, "microvolt": 1.0, "microvolts": 1.0,
         "mv": 1e3, "millivolt": 1e3, "millivolts": 1e3, "v": 1e6, "volt": 1e6, "volts": 1e6}
# kind -> accepted unit spellings (lower-case) -> factor to the twin's unit
_UNIT_SCALE: dict[str, dict[str, float]] = {
    "eeg": _VOLT, "ecg": _VOLT, "emg": _VOLT, "eog": _VOLT,
    "accel": {"": 1.0, "g": 1.0, "m/s^2": 1 / 9.80665, "m/s2": 1 / 9.80665,
              "m/s/s": 1 / 9.80665, "meters/second^2": 1 / 9.80665},
    "gyro": {"": 1.0, "deg/s": 1.0, "dps": 1.0, "degrees/second": 1.0,
             "rad/s": 180.0 / math.pi},
    "temp": {"": 1.0, "c": 1.0, "degc": 1.0, "°c": 1.0, "celsius": 1.0},
    "hr": {"": 1.0, "bpm": 1.0, "1/min": 1.0, "beats/min": 1.0},
    "spo2": {"": 1.0, "%": 1.0, "percent": 1.0},
    "eda": {"": 1.0, "us": 1.0, "µs": 1.0, "microsiemens": 1.0},
    "rr": {"": 1.0, "ms": 1.0, "milliseconds": 1.0, "s": 1e3, "seconds": 1e3},
}
_SINGLE = ("hr", "rr", "spo2", "temp", "eda", "ppg", "resp", "marker")  # no suffix when one
_SANE = re.compile(r"[^a-z0-9]+")
_CONFIGURED = False


@dataclass(frozen=True)
class ChannelMap:
    """How the LSL channels become twin channels: names, units and scale factors."""

    names: tuple[str, ...]
    units: tuple[str, ...]
    scale: tuple[float, ...]

    @property
    def stream_suffix(self) -> str:
        """``eeg`` when every channel is EEG, else ``lsl``."""
        kinds = {channel_kind(n) for n in self.names}
        kind = next(iter(kinds)) if len(kinds) == 1 else ""
        return kind if kind in CHANNEL_UNITS else "lsl"


def pylsl_module() -> Any:
    """The ``pylsl`` module; ``DriverMissing`` when it or its liblsl cannot load.

    Without an ``lsl_api.cfg`` of the person's own (``LSLAPICFG``, ``./lsl_api.cfg``,
    ``~/lsl_api/lsl_api.cfg``, ``/etc/lsl_api/lsl_api.cfg``) liblsl is told to log warnings
    and errors only: its INFO lines would clutter every command's stderr.
    """
    global _CONFIGURED  # noqa: PLW0603 - liblsl reads its config once per process
    try:
        import pylsl
    except (ImportError, OSError, RuntimeError) as exc:
        raise DriverMissing(
            f"the Lab Streaming Layer library cannot be loaded: {exc}",
            hint="pip install pylsl (its wheel ships liblsl for x86_64 and aarch64)",
        ) from exc
    if not _CONFIGURED:
        _CONFIGURED = True
        own = [os.environ.get("LSLAPICFG", ""), "lsl_api.cfg",
               str(Path("~/lsl_api/lsl_api.cfg").expanduser()), "/etc/lsl_api/lsl_api.cfg"]
        if not any(p and Path(p).is_file() for p in own):
            with contextlib.suppress(Exception):  # an old liblsl without the call: noisy only
                pylsl.set_config_content("[log]\nlevel = -2\n")
    return pylsl


def sanitize(text: str) -> str:
    """``"Fp1 "`` -> ``fp1``: lower-case letters, digits and single underscores."""
    return _SANE.sub("_", text.strip().lower()).strip("_")


def map_channels(stream: Mapping[str, Any]) -> ChannelMap:
    """Twin channel names, units and scale factors for a stream's metadata (``stream_metadata``)."""
    count = int(stream["channel_count"])
    chans = list(stream.get("channels") or [])
    stream_type = str(stream.get("type") or "")
    infos = [chans[i] if i < len(chans) else {} for i in range(count)]
    kinds: list[str | None] = []
    for info in infos:
        ctype = str(info.get("type") or stream_type).strip().lower()
        kind = _LSL_TYPE_TO_KIND.get(ctype) or _LSL_TYPE_TO_KIND.get(sanitize(ctype))
        unit = str(info.get("unit") or "").strip().lower()
        if kind is not None and kind in _UNIT_SCALE and unit not in _UNIT_SCALE[kind]:
            kind = None  # a unit we cannot convert: keep the values as they are, raw
        kinds.append(kind)
    names: list[str] = []
    units: list[str] = []
    scale: list[float] = []
    per_kind = {k: kinds.count(k) for k in set(kinds) if k is not None}
    seen: dict[str, int] = {}
    for i, (info, kind) in enumerate(zip(infos, kinds, strict=True)):
        label = sanitize(str(info.get("label") or ""))
        unit = str(info.get("unit") or "").strip()
        if kind is None:
            ctype = sanitize(str(info.get("type") or stream_type)) or "raw"
            prefix = f"raw_{ctype}" if ctype in CHANNEL_UNITS or ctype == "raw" else ctype
            name = f"{prefix}_{label or i + 1}"
            names.append(name)
            units.append(unit)
            scale.append(1.0)
            continue
        if kind in ("accel", "gyro"):
            axis = label[-1] if label and label[-1] in "xyz" else ""
            name = f"{kind}_{axis or seen.get(kind, 0) + 1}"
        elif kind in _SINGLE:
            name = kind if per_kind[kind] == 1 else f"{kind}_{label or seen.get(kind, 0) + 1}"
        else:  # eeg/ecg/emg/eog: the site or lead from the label
            site = label.removeprefix(f"{kind}_") if label else ""
            name = f"{kind}_{site or seen.get(kind, 0) + 1}"
        seen[kind] = seen.get(kind, 0) + 1
        names.append(name)
        units.append(CHANNEL_UNITS.get(kind, unit))
        scale.append(_UNIT_SCALE.get(kind, {}).get(unit.lower(), 1.0))
    return ChannelMap(_unique(names), tuple(units), tuple(scale))


def stream_metadata(info: Any) -> dict[str, Any]:
    """The JSON-able facts of a (full) ``pylsl.StreamInfo``, channels from its desc."""
    pylsl = pylsl_module()
    fmt_names = {pylsl.cf_float32: "float32", pylsl.cf_double64: "double64",
                 pylsl.cf_string: "string", pylsl.cf_int32: "int32", pylsl.cf_int16: "int16",
                 pylsl.cf_int8: "int8", pylsl.cf_int64: "int64"}
    channels: list[dict[str, str]] = []
    ch = info.desc().child("channels").child("channel")
    while not ch.empty() and len(channels) < info.channel_count():
        channels.append({key: ch.child_value(key) for key in ("label", "unit", "type")})
        ch = ch.next_sibling("channel")
    return {
        "name": info.name(),
        "type": info.type(),
        "source_id": info.source_id(),
        "hostname": info.hostname(),
        "channel_count": int(info.channel_count()),
        "nominal_srate": float(info.nominal_srate()),
        "channel_format": fmt_names.get(info.channel_format(), str(info.channel_format())),
        "channels": channels,
    }


def describe_stream(meta: Mapping[str, Any]) -> str:
    """One line naming a stream for a person: name, type, source id, host, layout."""
    rate = float(meta.get("nominal_srate") or 0.0)
    return (f"{meta.get('name')!r} type {meta.get('type')!r} source_id "
            f"{meta.get('source_id') or '(none)'!r} on {meta.get('hostname') or '?'}: "
            f"{meta.get('channel_count')} ch {meta.get('channel_format')} at "
            f"{_rate_text(rate)}")


def resolve(prop: str, value: str, timeout_s: float, *, want_all: bool = True) -> list[Any]:
    """Every stream whose ``prop`` equals ``value`` seen within ``timeout_s``.

    With ``want_all`` the whole timeout is spent looking for a second match (so a duplicate
    name is noticed); otherwise it returns at the first.
    """
    if prop not in QUERY_PROPS:
        raise UsageError(f"cannot look up LSL streams by {prop!r}",
                         hint=f"use one of {', '.join(QUERY_PROPS)}")
    pylsl = pylsl_module()
    try:
        found = pylsl.resolve_byprop(prop, value, 2 if want_all else 1, timeout_s)
    except (RuntimeError, ValueError) as exc:
        raise TransientSourceError(f"resolving LSL streams with {prop}={value!r} failed: {exc}",
                                   hint="check the network interface LSL uses") from exc
    # one outlet is announced on IPv4 and IPv6: the same uid twice is one stream
    unique: dict[str, Any] = {}
    for info in found:
        unique.setdefault(info.uid(), info)
    return list(unique.values())


def full_metadata(info: Any, timeout_s: float) -> dict[str, Any]:
    """The metadata of a resolved stream including its desc (which needs a connection)."""
    pylsl = pylsl_module()
    inlet = None
    try:
        inlet = pylsl.StreamInlet(info, max_buflen=1, recover=False)
        full = inlet.info(timeout_s)
    except (pylsl.util.TimeoutError, pylsl.util.LostError, RuntimeError) as exc:
        raise TransientSourceError(
            f"LSL stream {info.name()!r} did not send its description within {timeout_s:g} s",
            hint="is its outlet still running? try again",
        ) from exc
    finally:
        if inlet is not None:
            inlet.close_stream()
            del inlet
    return stream_metadata(full)


def layout_problem(paired: Mapping[str, Any], live: Mapping[str, Any]) -> str | None:
    """Why ``live`` cannot be ingested under a pairing made for ``paired``; None if it can."""
    what = f"LSL stream {live.get('name')!r}"
    if int(live["channel_count"]) != int(paired["channel_count"]):
        return (f"{what} now has {live['channel_count']} channels; it was paired with "
                f"{paired['channel_count']}")
    live_rate, paired_rate = float(live["nominal_srate"]), float(paired["nominal_srate"])
    if not math.isclose(live_rate, paired_rate, rel_tol=1e-6, abs_tol=1e-9):
        return (f"{what} now runs at {_rate_text(live_rate)}; it was paired at "
                f"{_rate_text(paired_rate)}")
    if live.get("channel_format") != paired.get("channel_format"):
        return (f"{what} now sends {live.get('channel_format')} values; it was paired with "
                f"{paired.get('channel_format')}")
    live_labels = [c.get("label", "") for c in live.get("channels") or []]
    paired_labels = [c.get("label", "") for c in paired.get("channels") or []]
    if live_labels != paired_labels:
        changed = next((i for i, (a, b) in enumerate(zip(live_labels, paired_labels,
                                                          strict=False)) if a != b),
                       min(len(live_labels), len(paired_labels)))
        return (f"{what} channel labels changed at channel {changed + 1}: now "
                f"{live_labels[changed:changed + 3]}, paired {paired_labels[changed:changed + 3]}")
    return None


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
        found = resolve(self.prop, self.value, self.resolve_timeout_s, want_all=False)
        source_id = str(self.paired.get("source_id") or "")
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
        offset = time.time() - pylsl.local_clock()
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
            now_offset = time.time() - pylsl.local_clock()
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
            offset = time.time() - pylsl.local_clock()
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


def _unique(names: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for name in names:
        candidate, i = name, 2
        while candidate in out:
            candidate = f"{name}_{i}"
            i += 1
        out.append(candidate)
    return tuple(out)


def _rate_text(rate: float) -> str:
    return f"{rate:g} Hz" if rate > 0 else "an irregular rate"
